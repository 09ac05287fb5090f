"""The training loop shared by every estimator.

Estimators supply a module and a ``step_loss(batch, training)`` closure (their noise model,
masking, KL term...); the loop owns minibatching, Adam, learning-rate decay on plateaus, early
stopping on the held-out split, reproducible seeding, progress reporting, the loss history
and Ctrl-C handling (the best weights so far are kept).
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
    n_samples_seen
        Training rows processed (all epochs).
    """

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    interrupted: bool = False
    n_samples_seen: int = 0


def show_progress(show_progressbar: bool | None) -> bool:
    """Resolve ``show_progressbar=None`` to HyperSpy's preference."""
    if show_progressbar is None:
        from hyperspy.defaults_parser import preferences

        return bool(preferences.General.show_progressbar)
    return bool(show_progressbar)


def progress(total: int | None, desc: str, show_progressbar: bool | None, unit: str = "it"):
    """HyperSpy's notebook-aware progress bar, honouring ``show_progressbar``."""
    from hyperspy.external.progressbar import progressbar

    return progressbar(total=total, desc=desc, unit=unit,
                       disable=not show_progress(show_progressbar), leave=False)


def _mean_loss(step_loss: StepLoss, source: RowSource, split: str, batch_size: int,
               device: torch.device) -> float:
    total, n = 0.0, 0
    with torch.no_grad():
        for batch in source.batches(batch_size, split=split):
            loss = step_loss(torch.from_numpy(batch).to(device), False)
            total += float(loss) * len(batch)
            n += len(batch)
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
        None follows ``hs.preferences.General.show_progressbar``.
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
    rng = np.random.default_rng(seed)
    if optimizer is None:
        optimizer = torch.optim.Adam(module.parameters(), lr=learning_rate,
                                     weight_decay=weight_decay)
    plateau = max(2, (patience or 10) // 3)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5,
                                                           patience=plateau)
    has_val = source.count("val") > 0
    result = TrainResult()
    best_loss, best_state, bad_epochs = math.inf, None, 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(rng.integers(2**31)))
        bar = progress(epochs, desc, show_progressbar, unit="epoch")
        try:
            for epoch in range(epochs):
                t0 = time.perf_counter()
                module.train()
                total, n = 0.0, 0
                for batch in source.batches(batch_size, split="train", rng=rng,
                                            drop_last=True):
                    x = torch.from_numpy(batch).to(device, non_blocking=True)
                    loss = step_loss(x, True)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"the training loss became {float(loss)} at epoch {epoch}; "
                            "lower learning_rate or check the data for extreme values"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    if after_step is not None:
                        after_step()
                    total += float(loss.detach()) * len(batch)
                    n += len(batch)
                module.eval()
                train_loss = total / max(n, 1)
                val_loss = (_mean_loss(step_loss, source, "val", max(batch_size, 1024), device)
                            if has_val else None)
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
        except KeyboardInterrupt:
            result.interrupted = True
            _logger.warning("Training interrupted: keeping the best weights so far "
                            "(epoch %d).", result.best_epoch)
        finally:
            bar.close()
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return result
