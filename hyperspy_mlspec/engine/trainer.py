"""The training loop shared by every estimator.

Estimators supply a module and a ``step_loss(batch, training)`` closure (their noise model,
masking, KL term...); the loop owns minibatching, Adam, learning-rate decay on plateaus, early
stopping on the held-out split, reproducible seeding, progress reporting, the loss history
and Ctrl-C handling (the best weights so far are kept). Under ``torchrun`` (a
``torch.distributed`` process group of several processes) the same loop trains data-parallel:
see :mod:`hyperspy_mlspec.engine.distributed`.

What keeps it fast (measured in ``benchmarks/bench_speed.py``):

* in-memory rows become one float32 tensor once per fit (:class:`~hyperspy_mlspec.engine.
  sources.InMemoryRows`); an epoch is a permutation and a gather per minibatch, never a copy
  of the data; lazy data stream through the shuffle buffer as before;
* the budget can be given in spectra (``max_samples``) and the loss is evaluated on the
  held-out split once per *round* (an epoch, or ``eval_every`` spectra on large data), a
  forward pass over a capped split: a few per cent of a round;
* the best weights are copied in place into buffers allocated once, losses are summed on the
  device and read once per round (one synchronisation, which matters on a GPU);
* Adam runs fused (one kernel over all parameters, :mod:`hyperspy_mlspec.engine.optim`),
  and neither it nor the plateau schedule imports ``torch._dynamo`` (seconds);
* optional: fewer threads for the run (tiny networks lose more to thread synchronisation
  than they gain), ``torch.compile`` of the step (pays only on long runs: compiling takes
  tens of seconds on a CPU), bf16 autocast on a GPU (``amp``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from hyperspy_mlspec.engine.distributed import Group
from hyperspy_mlspec.engine.optim import Adam
from hyperspy_mlspec.engine.progress import Observers, progress
from hyperspy_mlspec.engine.sources import InMemoryRows, RowSource

_logger = logging.getLogger(__name__)

StepLoss = Callable[[torch.Tensor, bool], torch.Tensor]


@dataclass
class TrainResult:
    """What a call to :func:`train` did.

    Attributes
    ----------
    history
        One dict per round (an epoch unless ``eval_every`` is given): ``epoch`` (the round's
        number), ``train_loss``, ``val_loss`` (None without a validation split),
        ``learning_rate``, ``seconds``, ``samples`` (training rows seen so far) and
        ``passes`` (epochs done so far, a float).
    best_epoch
        Round whose weights were kept.
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


def _mean_loss(step_loss: StepLoss, batches, device: torch.device, group: Group | None = None,
               autocast=contextlib.nullcontext) -> float:
    """Mean of ``step_loss`` over batches (weighted by rows); the same on every process.

    A ``step_loss`` with a ``validation_seed`` attribute is evaluated with torch's random
    stream reset to that seed: random draws inside the validation loss (a binomial split
    of the counts, masks) are then the same at every round, so rounds compare like with
    like.
    """
    group = group or Group()
    total, n = None, 0
    seed = getattr(step_loss, "validation_seed", None)
    fixed = (contextlib.nullcontext() if seed is None else
             torch.random.fork_rng(devices=[device] if device.type == "cuda" else []))
    # random validation losses: every process evaluates every row itself (the draws then do
    # not depend on how rows are shared out: one process and several agree); the split is
    # small, so the repeated work costs little
    shard = seed is None and group.active
    with torch.no_grad(), fixed:
        if seed is not None:
            torch.manual_seed(int(seed))
        for batch in batches:
            if shard:
                batch = batch[group.shard(len(batch))]  # this process's rows
            if not len(batch):
                continue
            with autocast():
                loss = step_loss(_as_tensor(batch, device), False).detach().float()
            total = loss * len(batch) if total is None else total + loss * len(batch)
            n += len(batch)
    total = float(total) if total is not None else 0.0
    if shard:  # the same mean on every process: identical plateau / stopping decisions
        total, n = group.all_reduce([total, n])
    return total / n if n else math.nan


def _as_tensor(batch, device: torch.device) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return torch.from_numpy(batch).to(device, non_blocking=True)


def make_optimizer(params, learning_rate: float, weight_decay: float = 0.0) -> Adam:
    """The loop's optimiser: :class:`~hyperspy_mlspec.engine.optim.Adam` (fused, and
    constructed without importing ``torch._dynamo`` as ``torch.optim`` does).

    Examples
    --------
    >>> opt = make_optimizer(torch.nn.Linear(2, 2).parameters(), 1e-3)
    >>> type(opt).__name__
    'Adam'
    """
    return Adam(params, lr=learning_rate, weight_decay=weight_decay)


class _Plateau:
    """Halve the learning rate after ``patience`` rounds without a relative improvement
    of 1e-4 (``torch.optim.lr_scheduler.ReduceLROnPlateau``'s defaults, for any optimiser
    with ``param_groups``)."""

    def __init__(self, optimizer, patience: int, factor: float = 0.5) -> None:
        self.optimizer, self.patience, self.factor = optimizer, int(patience), factor
        self.best, self.bad = math.inf, 0

    def step(self, value: float) -> None:
        if value < self.best * (1 - 1e-4) if self.best > 0 else value < self.best:
            self.best, self.bad = value, 0
            return
        self.bad += 1
        if self.bad > self.patience:
            for g in self.optimizer.param_groups:
                new = g["lr"] * self.factor
                if g["lr"] - new > 1e-8:
                    g["lr"] = new
            self.bad = 0


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Use ``n`` torch intra-op threads inside the block (None: unchanged), then restore.

    Set even when torch reports ``n`` already: its OpenMP setting is per thread but its
    MKL one process-wide, and after a change from another thread they can differ (the
    stream's thread then ran MKL on 2 threads while reporting 1)."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def resolve_amp(amp: bool | str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``amp`` on ``device``: ``"auto"`` is bf16 on a GPU that
    supports it and nothing on the CPU (the estimators ask for bf16 on CPUs with native
    bf16 instructions, :func:`~hyperspy_mlspec.engine.budget.amp_pays`); True forces bf16;
    False/None disables."""
    if amp in (False, None):
        return None
    if amp == "auto":
        if device.type == "cuda" and torch.cuda.is_available() and \
                torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if amp is True or amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    raise ValueError(f"amp must be 'auto', True, False, 'bf16' or 'fp16', got {amp!r}")


class _BestWeights:
    """The best state so far, copied in place into buffers allocated at the first copy."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.saved: list[torch.Tensor] | None = None

    def save(self) -> None:
        current = list(self.module.state_dict().values())
        with torch.no_grad():
            if self.saved is None:
                self.saved = [t.detach().clone() for t in current]
            else:
                for dst, src in zip(self.saved, current, strict=True):
                    dst.copy_(src)

    def restore(self) -> None:
        if self.saved is None:
            return
        with torch.no_grad():
            for dst, src in zip(self.module.state_dict().values(), self.saved, strict=True):
                dst.copy_(src)


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
    optimizer=None,
    show_progressbar: bool | None = None,
    desc: str = "Training",
    after_step: Callable[[], None] | None = None,
    on_epoch_end: Callable[[dict], None] | None = None,
    max_samples: int | None = None,
    eval_every: int | None = None,
    num_threads: int | None = None,
    compile: bool = False,
    amp: bool | str | None = "auto",
    schedule: str = "plateau",
    min_delta: float = 1e-4,
    keep_start: bool = False,
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
        Rounds without improvement of the monitored loss (validation if any, else
        training) before stopping; None disables early stopping.
    device
        Device the batches are moved to.
    seed
        Seeds batch order and any randomness inside ``step_loss`` (torch RNG), so the same
        seed gives the same result on the CPU.
    optimizer
        An optimizer to continue with (``partial_fit``); a new (fused) Adam otherwise.
    show_progressbar
        None follows the user's preference (``hs.preferences.General.show_progressbar``
        once ``hyperspy_mlspec`` is imported; see :mod:`hyperspy_mlspec.engine.progress`).
    desc
        Progress-bar label.
    after_step
        Called after each optimiser step (e.g. to project weights onto a constraint).
    on_epoch_end
        Called with the round's history row after each round (e.g. to save a
        checkpoint); the module then holds the current, not the best, weights.
    max_samples
        Most training rows to process in all (the budget in spectra seen); None:
        ``epochs`` passes.
    eval_every
        Training rows per round (validation, plateau schedule, early stopping, history
        row); None: one epoch. Rounds never span the end of the budget.
    num_threads
        torch intra-op threads during the run (restored after); None leaves them.
    compile
        Run full training batches through ``torch.compile(step_loss)`` (same results up
        to float rounding; compiling costs tens of seconds on a CPU, so only long runs
        gain).
    amp
        Mixed precision: ``"auto"`` (bf16 autocast on a GPU that supports it, none on the
        CPU), True/``"bf16"``, ``"fp16"``, or False. Losses of the package compute in
        float32 inside autocast.
    schedule
        ``"plateau"``: halve the learning rate after ``patience // 3`` rounds without
        improvement; ``"cosine"``: warm up over 5 % of the steps, then cosine decay to 1 %
        over the budget (``max_samples`` or ``epochs``).
    min_delta
        Relative improvement of the monitored loss that counts as one (best weights,
        patience).
    keep_start
        Score the starting weights on the held-out split before the first step and keep
        them unless a round beats them (a closed-form start, e.g. PCA, that training may
        only improve on); ``best_epoch`` is then -1 when they were kept.

    Returns
    -------
    TrainResult
        History and stopping information; the module holds the best weights.

    Training observers attached with :func:`hyperspy_mlspec.engine.progress.observe` are
    told when the run begins, after every round and when it ends, and can stop it.

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
    n_train, n_val = source.count("train"), source.count("val")
    if group.active:
        group.check_same(n_train=n_train, n_val=n_val, n_features=source.n_features,
                         epochs=epochs, batch_size=batch_size, seed=seed,
                         max_samples=-1 if max_samples is None else max_samples,
                         eval_every=-1 if eval_every is None else eval_every)
        group.broadcast_module(module)  # identical start everywhere (as DDP does)
        show_progressbar = show_progressbar if group.is_main else False
    rng = np.random.default_rng(seed)
    if optimizer is None:
        optimizer = make_optimizer(module.parameters(), learning_rate, weight_decay)
    if schedule not in ("plateau", "cosine"):
        raise ValueError(f"schedule must be 'plateau' or 'cosine', got {schedule!r}")
    plateau = max(2, (patience or 10) // 3)
    scheduler = _Plateau(optimizer, plateau)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    rows = source.in_memory()
    if rows is not None:
        rows = _place(rows, device)
    has_val = n_val > 0
    steps_per_epoch = max(1, n_train // batch_size) if n_train >= batch_size else 1
    rows_per_step = min(batch_size, max(n_train, 1))
    max_steps = int(epochs) * steps_per_epoch
    if max_samples is not None:
        max_steps = min(max_steps, max(1, math.ceil(int(max_samples) / rows_per_step)))
    round_steps = (steps_per_epoch if eval_every is None
                   else max(1, round(int(eval_every) / rows_per_step)))
    n_rounds = math.ceil(max_steps / round_steps)
    warmup = max(1, max_steps // 20)

    def set_lr(step: int) -> None:
        """Warm-up over 5 % of the steps, then cosine decay to 1 % of the rate."""
        if step < warmup:
            f = 0.1 + 0.9 * step / warmup
        else:
            u = (step - warmup) / max(1, max_steps - warmup)
            f = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, u)))
        for g, lr in zip(optimizer.param_groups, base_lrs, strict=True):
            g["lr"] = lr * f
    dtype = resolve_amp(amp, device)
    autocast = (contextlib.nullcontext if dtype is None else
                (lambda: torch.autocast(device_type=device.type, dtype=dtype)))
    train_step = torch.compile(step_loss, dynamic=False) if compile else step_loss
    val_size = max(batch_size, 4096)
    result = TrainResult()
    observers = Observers()
    observers.notify("on_train_begin", {"desc": desc, "epochs": n_rounds,
                                        "batch_size": batch_size, "n_train": n_train,
                                        "n_val": n_val, "max_steps": max_steps})
    best = _BestWeights(module)
    best_loss, bad_rounds = math.inf, 0
    if keep_start and has_val:
        module.eval()
        start_batches = (rows.batches(val_size, "val") if rows is not None
                         else source.batches(val_size, split="val"))
        best_loss = _mean_loss(step_loss, start_batches, device, group, autocast)
        best.save()
        result.best_epoch = -1

    def stream():
        """Training batches, epoch after epoch (a new order each epoch)."""
        while True:
            if rows is not None:
                yield from rows.batches(batch_size, "train", rng, drop_last=True)
            else:
                yield from source.batches(batch_size, split="train", rng=rng, drop_last=True)

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            torch_threads(num_threads):
        # one random stream per process: different rows get independent draws
        torch.manual_seed(int(rng.integers(2**31)) + group.rank)
        bar = progress(n_rounds, desc, show_progressbar,
                       unit="epoch" if eval_every is None else "round")
        batches = stream()
        step = 0
        try:
            for round_index in range(n_rounds):
                t0 = time.perf_counter()
                module.train()
                total, n = None, 0
                fingerprint = 0.0  # of the batches seen; processes must see the same ones
                for _ in range(min(round_steps, max_steps - step)):
                    batch = next(batches)
                    if schedule == "cosine":
                        set_lr(step)
                    step += 1
                    if group.active:
                        fingerprint += step * float(_as_tensor(batch, torch.device("cpu"))
                                                    .sum(dtype=torch.float64))
                        loss_value, n_batch = _gradients(step_loss, optimizer, group, batch,
                                                         device, autocast)
                        loss_value = torch.tensor(loss_value)
                    else:
                        x = _as_tensor(batch, device)
                        fn = train_step if len(x) == batch_size else step_loss
                        optimizer.zero_grad(set_to_none=True)
                        with autocast():
                            loss = fn(x, True)
                        loss.backward()
                        loss_value, n_batch = loss.detach().float(), len(x)
                    optimizer.step()
                    if after_step is not None:
                        after_step()
                    total = (loss_value * n_batch if total is None
                             else total + loss_value * n_batch)
                    n += n_batch
                    if observers and observers.stop_requested():
                        result.stopped = True
                        break
                if group.active:  # a clear error, not a silently wrong model
                    group.check_same(batch_fingerprint=fingerprint)
                train_loss = float(total) / max(n, 1) if total is not None else math.nan
                if not math.isfinite(train_loss):
                    raise FloatingPointError(
                        f"the training loss became {train_loss} in round {round_index}; "
                        "lower learning_rate or check the data for extreme values")
                module.eval()
                val_loss = None
                if has_val:
                    val_batches = (rows.batches(val_size, "val") if rows is not None
                                   else source.batches(val_size, split="val"))
                    val_loss = _mean_loss(step_loss, val_batches, device, group, autocast)
                monitored = val_loss if has_val else train_loss
                if schedule == "plateau":
                    scheduler.step(monitored)
                result.n_samples_seen += n
                result.history.append({
                    "epoch": round_index, "train_loss": train_loss, "val_loss": val_loss,
                    "learning_rate": optimizer.param_groups[0]["lr"],
                    "seconds": time.perf_counter() - t0,
                    "samples": result.n_samples_seen,
                    "passes": result.n_samples_seen / max(n_train, 1),
                })
                if on_epoch_end is not None:
                    on_epoch_end(result.history[-1])
                observers.notify("on_epoch_end", dict(result.history[-1]))
                bar.update(1)
                bar.set_postfix(loss=f"{train_loss:.4g}",
                                **({"val": f"{val_loss:.4g}"} if has_val else {}))
                if best.saved is None or monitored < best_loss - min_delta * abs(best_loss):
                    best_loss, bad_rounds, result.best_epoch = monitored, 0, round_index
                    best.save()
                else:
                    bad_rounds += 1
                    if patience is not None and bad_rounds >= patience:
                        result.stopped_early = True
                        break
                if result.stopped:
                    _logger.info("Training stopped on request: keeping the best weights "
                                 "(round %d).", result.best_epoch)
                    break
        except KeyboardInterrupt:
            if group.active:  # processes stop at different steps: let torchrun end them all
                raise
            result.interrupted = True
            _logger.warning("Training interrupted: keeping the best weights so far "
                            "(round %d).", result.best_epoch)
        finally:
            bar.close()
            batches.close()
            if schedule == "cosine":  # a later partial_fit starts from the base rate
                for g, lr in zip(optimizer.param_groups, base_lrs, strict=True):
                    g["lr"] = lr
    best.restore()
    group.broadcast_module(module)  # bit-identical models on every process
    module.eval()
    observers.notify("on_train_end", result)
    return result


def _place(rows: InMemoryRows, device: torch.device) -> InMemoryRows:
    """In-memory rows on the training device when they fit comfortably (a quarter of the
    free GPU memory), else left on the host and moved batch by batch."""
    if device.type != "cuda":
        return rows
    nbytes = rows.data.numel() * rows.data.element_size()
    try:
        free, _ = torch.cuda.mem_get_info(device)
    except (RuntimeError, AssertionError):  # pragma: no cover - no usable GPU
        return rows
    if nbytes <= free // 4:
        return rows.to(device)
    with contextlib.suppress(RuntimeError):  # pinned host memory: asynchronous copies
        rows = InMemoryRows(rows.data.pin_memory(), rows.train_index, rows.val_index)
    return rows


def _gradients(step_loss: StepLoss, optimizer, group: Group,
               batch, device: torch.device,
               autocast=contextlib.nullcontext) -> tuple[float, int]:
    """Set the gradients of one minibatch and return its mean loss and number of rows.

    With several processes each computes its slice of the batch and the gradients and
    losses are all-reduced (see :mod:`hyperspy_mlspec.engine.distributed`); the returned
    loss is then the same on every process, so a non-finite loss stops all of them.
    """
    local = batch[group.shard(len(batch))]  # the whole batch for a single process
    optimizer.zero_grad(set_to_none=True)
    loss = None
    if len(local):  # a slice can be empty when the batch has fewer rows than processes
        with autocast():
            loss = step_loss(_as_tensor(local, device), True)
        loss.backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    return group.reduce_gradients(params, loss, len(local))
