"""The training loop shared by every estimator.

Estimators supply a module and a ``step_loss(batch, training)`` closure (their noise model,
masking, KL term...); the loop owns minibatching, Adam, learning-rate decay on plateaus, early
stopping on the held-out split, reproducible seeding, progress reporting, the loss history
and Ctrl-C handling (the best weights so far are kept). Under ``torchrun`` (a
``torch.distributed`` process group of several processes) the same loop trains data-parallel:
see :mod:`hyperspy_mlspec.engine.distributed`.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from hyperspy_mlspec.engine.distributed import Group
from hyperspy_mlspec.engine.progress import Observers, progress
from hyperspy_mlspec.engine.sources import RowSource

_logger = logging.getLogger(__name__)

StepLoss = Callable[[torch.Tensor, bool], torch.Tensor]


@dataclass
class TrainResult:
    """What a call to :func:`train` did.

    Attributes
    ----------
    history
        One dict per epoch: ``epoch``, ``train_loss``, ``val_loss`` (None without a
        validation split), ``learning_rate`` and ``seconds``.
    best_epoch
        Epoch whose weights were kept.
    stopped_early
        True when the patience ran out.
    interrupted
        True when the user pressed Ctrl-C (the best weights so far were kept).
    stopped
        True when an observer asked the run to stop (a GUI's Stop button; the best
        weights so far were kept).
    n_samples_seen
        Training rows processed (all epochs).
    """

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    interrupted: bool = False
    stopped: bool = False
    n_samples_seen: int = 0


def _mean_loss(step_loss: StepLoss, source: RowSource, split: str, batch_size: int,
               device: torch.device, group: Group | None = None) -> float:
    group = group or Group()
    total, n = 0.0, 0
    with torch.no_grad():
        for batch in source.batches(batch_size, split=split):
            batch = batch[group.shard(len(batch))]  # this process's rows (all of them alone)
            if not len(batch):
                continue
            loss = step_loss(torch.from_numpy(batch).to(device), False)
            total += float(loss) * len(batch)
            n += len(batch)
    if group.active:  # the same mean on every process: identical plateau / stopping decisions
        total, n = group.all_reduce([total, n])
    return total / n if n else math.nan


def train(
    module: torch.nn.Module,
    step_loss: StepLoss,
    source: RowSource,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.0,
    patience: int | None = 10,
    device: torch.device | str = "cpu",
    seed: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    show_progressbar: bool | None = None,
    desc: str = "Training",
    after_step: Callable[[], None] | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train ``module`` by minimising ``step_loss`` over minibatches of ``source``.

    Parameters
    ----------
    module
        The torch module (already on ``device``).
    step_loss
        ``step_loss(batch, training)`` returns the scalar loss of a float32 batch on
        ``device``; ``training`` is False on the validation split.
    source
        Where rows come from (in memory or streamed); its validation fraction sets the
        held-out split used for early stopping.
    epochs
        Maximum number of passes over the training split.
    batch_size
        Rows per minibatch.
    learning_rate, weight_decay
        Adam settings.
    patience
        Epochs without improvement of the monitored loss (validation if any, else
        training) before stopping; None disables early stopping.
    device
        Device the batches are moved to.
    seed
        Seeds batch order and any randomness inside ``step_loss`` (torch RNG), so the same
        seed gives the same result on the CPU.
    optimizer
        An optimizer to continue with (``partial_fit``); a new Adam otherwise.
    show_progressbar
        None follows the user's preference (``hs.preferences.General.show_progressbar``
        once ``hyperspy_mlspec`` is imported; see :mod:`hyperspy_mlspec.engine.progress`).
    desc
        Progress-bar label.
    after_step
        Called after each optimiser step (e.g. to project weights onto a constraint).
    on_epoch_end
        Called with the epoch's history row after each epoch (e.g. to save a checkpoint);
        the module then holds the current, not the best, weights.

    Returns
    -------
    TrainResult
        History and stopping information; the module holds the best weights.

    Training observers attached with :func:`hyperspy_mlspec.engine.progress.observe` are
    told when the run begins, after every epoch and when it ends, and can stop it.

    Notes
    -----
    With an initialised ``torch.distributed`` process group of several processes (started
    by ``torchrun``, see :func:`hyperspy_mlspec.engine.distributed.init_from_env`), every
    process must call ``train`` with the same data and settings; each computes the loss on
    its slice of every global minibatch of ``batch_size`` rows, gradients and losses are
    all-reduced, and every step equals the single-process step up to float rounding when
    ``step_loss`` draws no random numbers (random draws, e.g. of denoising noise, differ per
    process); over many epochs the rounding differences grow as they do between any two
    float orders (see ``benchmarks/RESULTS.md``). Only rank 0 shows progress.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from hyperspy_mlspec.engine import ArraySource
    >>> lin = torch.nn.Linear(3, 3)
    >>> X = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    >>> res = train(lin, lambda b, t: ((lin(b) - b) ** 2).mean(), ArraySource(X),
    ...             epochs=5, batch_size=16, show_progressbar=False)
    >>> len(res.history)
    5
    """
    device = torch.device(device)
    group = Group.current()
    if group.active:
        group.check_same(n_train=source.count("train"), n_val=source.count("val"),
                         n_features=source.n_features, epochs=epochs, batch_size=batch_size,
                         seed=seed)
        group.broadcast_module(module)  # identical start everywhere (as DDP does)
        show_progressbar = show_progressbar if group.is_main else False
    rng = np.random.default_rng(seed)
    if optimizer is None:
        optimizer = torch.optim.Adam(module.parameters(), lr=learning_rate,
                                     weight_decay=weight_decay)
    plateau = max(2, (patience or 10) // 3)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5,
                                                           patience=plateau)
    has_val = source.count("val") > 0
    result = TrainResult()
    observers = Observers()
    observers.notify("on_train_begin", {"desc": desc, "epochs": epochs,
                                        "batch_size": batch_size,
                                        "n_train": source.count("train"),
                                        "n_val": source.count("val")})
    best_loss, best_state, bad_epochs = math.inf, None, 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        # one random stream per process: different rows get independent draws
        torch.manual_seed(int(rng.integers(2**31)) + group.rank)
        bar = progress(epochs, desc, show_progressbar, unit="epoch")
        try:
            for epoch in range(epochs):
                t0 = time.perf_counter()
                module.train()
                total, n = 0.0, 0
                fingerprint = 0.0  # of the batches seen; processes must see the same ones
                for step, batch in enumerate(source.batches(batch_size, split="train", rng=rng,
                                                            drop_last=True)):
                    if group.active:
                        fingerprint += (step + 1) * float(batch.sum(dtype=np.float64))
                    loss_value, n_batch = _gradients(step_loss, optimizer, group, batch,
                                                     device)
                    if not math.isfinite(loss_value):
                        raise FloatingPointError(
                            f"the training loss became {loss_value} at epoch {epoch}; "
                            "lower learning_rate or check the data for extreme values"
                        )
                    optimizer.step()
                    if after_step is not None:
                        after_step()
                    total += loss_value * n_batch
                    n += n_batch
                    if observers and observers.stop_requested():
                        result.stopped = True
                        break
                if group.active:  # a clear error, not a silently wrong model
                    group.check_same(batch_fingerprint=fingerprint)
                module.eval()
                train_loss = total / max(n, 1)
                val_loss = (_mean_loss(step_loss, source, "val", max(batch_size, 1024), device,
                                       group) if has_val else None)
                monitored = val_loss if has_val else train_loss
                scheduler.step(monitored)
                result.n_samples_seen += n
                result.history.append({
                    "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                    "learning_rate": optimizer.param_groups[0]["lr"],
                    "seconds": time.perf_counter() - t0,
                })
                if on_epoch_end is not None:
                    on_epoch_end(result.history[-1])
                observers.notify("on_epoch_end", dict(result.history[-1]))
                bar.update(1)
                bar.set_postfix(loss=f"{train_loss:.4g}",
                                **({"val": f"{val_loss:.4g}"} if has_val else {}))
                if best_state is None or monitored < best_loss - 1e-4 * abs(best_loss):
                    best_loss, bad_epochs, result.best_epoch = monitored, 0, epoch
                    best_state = copy.deepcopy(module.state_dict())
                else:
                    bad_epochs += 1
                    if patience is not None and bad_epochs >= patience:
                        result.stopped_early = True
                        break
                if result.stopped:
                    _logger.info("Training stopped on request: keeping the best weights "
                                 "(epoch %d).", result.best_epoch)
                    break
        except KeyboardInterrupt:
            if group.active:  # processes stop at different steps: let torchrun end them all
                raise
            result.interrupted = True
            _logger.warning("Training interrupted: keeping the best weights so far "
                            "(epoch %d).", result.best_epoch)
        finally:
            bar.close()
    if best_state is not None:
        module.load_state_dict(best_state)
    group.broadcast_module(module)  # bit-identical models on every process
    module.eval()
    observers.notify("on_train_end", result)
    return result


def _gradients(step_loss: StepLoss, optimizer: torch.optim.Optimizer, group: Group,
               batch: np.ndarray, device: torch.device) -> tuple[float, int]:
    """Set the gradients of one minibatch and return its mean loss and number of rows.

    With several processes each computes its slice of the batch and the gradients and
    losses are all-reduced (see :mod:`hyperspy_mlspec.engine.distributed`); the returned
    loss is then the same on every process, so a non-finite loss stops all of them.
    """
    local = batch[group.shard(len(batch))]  # the whole batch for a single process
    optimizer.zero_grad(set_to_none=True)
    loss = None
    if len(local):  # a slice can be empty when the batch has fewer rows than processes
        loss = step_loss(torch.from_numpy(local).to(device, non_blocking=True), True)
        loss.backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    return group.reduce_gradients(params, loss, len(local))
