"""Data-parallel training over several processes with :mod:`torch.distributed`.

:func:`~hyperspy_mlspec.engine.train` (the one training loop) trains in parallel by itself
whenever a ``torch.distributed`` process group with more than one process exists: start the
processes with ``torchrun`` and call :func:`init_from_env` (the ``hyperspy-mlspec train``
command does both). Without a process group every helper here is an identity, so the
single-process path is unchanged.

How a step is shared, and why it equals the single-process step
----------------------------------------------------------------
* Every process draws the **same** shuffled sequence of global minibatches (same seed, same
  data) and takes its own contiguous slice of each (:meth:`Group.shard`): the global
  ``batch_size`` is split between processes, so the optimiser sees the same batches as in a
  single process.
* After ``backward`` each process packs its gradients multiplied by its number of rows, plus
  its summed loss and row count, into one flat buffer; one ``all_reduce(SUM)`` and a
  division by the global row count give every process the gradient of the mean loss over
  the whole global batch (:meth:`Group.reduce_gradients`). For the row-mean losses of this
  package that is exactly the single-process gradient, up to the order of float additions,
  also when slices are uneven or empty. Adam then takes identical steps everywhere.
* This is the all-reduce that :class:`torch.nn.parallel.DistributedDataParallel` runs in its
  backward hooks, done explicitly after ``backward`` because the estimators' loss closures
  call the module's methods and submodules (``encode``, ``decode``, a normaliser...), not the
  wrapper's ``forward`` that DDP needs to synchronise, and because DDP averages ranks with
  equal weights, which is wrong for uneven slices. One flat buffer means one collective per
  step, as DDP's buckets do; overlapping it with ``backward`` (DDP's other trick) matters
  little for these small networks.
* Validation and training losses are all-reduced as sums and counts, so learning-rate decay
  and early stopping take the same decision on every process; the initial weights (and any
  data-derived state given to :meth:`Group.broadcast`) are broadcast from rank 0.

Backends: ``gloo`` on the CPU; with CUDA, ``"cpu:gloo,cuda:nccl"`` (NCCL for tensors on the
GPU, gloo for the rest). Each process uses GPU ``LOCAL_RANK``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "Group",
    "default_backend",
    "init_from_env",
    "is_main_process",
    "launched",
    "rank",
    "shutdown",
    "world_size",
]

#: environment variables torchrun sets for every worker
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    """Rank of this process (0 without a process group).

    Examples
    --------
    >>> rank()
    0
    """
    return torch.distributed.get_rank() if _initialized() else 0


def world_size() -> int:
    """Number of processes (1 without a process group).

    Examples
    --------
    >>> world_size()
    1
    """
    return torch.distributed.get_world_size() if _initialized() else 1


def is_main_process() -> bool:
    """True on rank 0, the process that shows progress, logs and writes files.

    Before :func:`init_from_env` this already follows torchrun's ``RANK`` variable, so
    messages printed before the process group exists also come from rank 0 only.
    """
    if _initialized():
        return rank() == 0
    return int(os.environ.get("RANK", "0") or 0) == 0


def default_backend(device: str | torch.device | None = None) -> str:
    """Backend for a device: ``"gloo"`` on the CPU, ``"cpu:gloo,cuda:nccl"`` with CUDA.

    ``device=None`` means CUDA when it is available. The mixed form keeps small CPU
    collectives (scalars, checks) on gloo when the model is on the GPU.

    Examples
    --------
    >>> default_backend("cpu")
    'gloo'
    """
    if device is None:
        use_cuda = torch.cuda.is_available()
    else:
        use_cuda = torch.device(device).type == "cuda"
    if use_cuda and torch.distributed.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def init_from_env(backend: str | None = None, device: str | torch.device | None = None,
                  timeout_s: float = 1800.0) -> bool:
    """Join the process group described by torchrun's environment variables.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``
    (set by ``torchrun``). Does nothing when ``WORLD_SIZE`` is unset or 1, or when a process
    group already exists.

    Parameters
    ----------
    backend
        ``"gloo"``, ``"nccl"``, ``"cpu:gloo,cuda:nccl"``...; None picks
        :func:`default_backend` for ``device``.
    device
        Training device (``"cpu"``, ``"cuda"``, ``"auto"``/None for CUDA when available);
        with CUDA each process is pinned to GPU ``LOCAL_RANK``.
    timeout_s
        How long collectives wait for the other processes before failing.

    Returns
    -------
    bool
        True when this call created the process group (call :func:`shutdown` at the end).

    Examples
    --------
    Under ``torchrun --nproc_per_node=2 script.py``::

        from hyperspy_mlspec.engine import distributed
        distributed.init_from_env()
        model = AutoencoderDecomposition(4, random_state=0).fit(X)   # trains on 2 processes
        if distributed.is_main_process():
            model.save("model.mlspec")
        distributed.shutdown()
    """
    n = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if n <= 1 or _initialized():
        return False
    if not torch.distributed.is_available():
        raise RuntimeError("this torch build has no torch.distributed support; "
                           "multi-process training is impossible with it")
    missing = [k for k in TORCHRUN_ENV if k not in os.environ and k != "LOCAL_RANK"]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={n} is set but {', '.join(missing)} not: start the processes with "
            "torchrun (e.g. 'torchrun --standalone --nproc_per_node=2 -m hyperspy_mlspec "
            "train ...'), which sets all of them")
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise RuntimeError(
                f"process LOCAL_RANK={local} has no GPU of its own (only "
                f"{torch.cuda.device_count()} visible): start at most that many processes "
                "per node, or train on the CPU")
        torch.cuda.set_device(local)  # 'cuda' (no index) now means this process's GPU
    torch.distributed.init_process_group(
        backend=backend or default_backend(device), init_method="env://",
        timeout=datetime.timedelta(seconds=timeout_s))
    return True


def shutdown() -> None:
    """Wait for every process, then leave the process group (no-op without one)."""
    if _initialized():
        try:
            torch.distributed.barrier()
        finally:
            torch.distributed.destroy_process_group()


@contextlib.contextmanager
def launched(backend: str | None = None, device: str | torch.device | None = None
             ) -> Iterator[Group]:
    """Context manager: :func:`init_from_env` on entry, :func:`shutdown` on a clean exit.

    On an exception the group is destroyed without the final barrier, so a failure on one
    process ends the run (torchrun then stops the others) instead of hanging.

    Examples
    --------
    >>> with launched() as group:   # a plain process: world size 1, nothing to set up
    ...     group.world_size
    1
    """
    created = init_from_env(backend=backend, device=device)
    try:
        yield Group.current()
    except BaseException:
        if created and _initialized():
            torch.distributed.destroy_process_group()
        raise
    if created:
        shutdown()


@dataclass(frozen=True)
class Group:
    """The processes training together; every method is an identity for one process.

    Use :meth:`current` to get the default process group (or a group of one when
    ``torch.distributed`` is not initialised).

    Attributes
    ----------
    rank
        This process's rank.
    world_size
        Number of processes.
    """

    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> Group:
        """The default process group, or a single-process group."""
        return cls(rank(), world_size())

    @property
    def active(self) -> bool:
        """True with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0

    # -- sharding ---------------------------------------------------------------------------
    def shard(self, n: int) -> slice:
        """This process's contiguous slice of a global batch of ``n`` rows.

        Slices of consecutive ranks tile ``range(n)``; sizes differ by at most one (and are
        0 on some ranks when ``n < world_size``).

        Examples
        --------
        >>> [Group(r, 3).shard(10) for r in range(3)]
        [slice(0, 3, None), slice(3, 6, None), slice(6, 10, None)]
        """
        return slice(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)

    # -- collectives ------------------------------------------------------------------------
    def _scalar_device(self) -> torch.device:
        # pure NCCL groups reduce GPU tensors only; mixed and gloo groups take CPU tensors
        if self.active and torch.distributed.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def all_reduce(self, values: Sequence[float], op: str = "sum") -> np.ndarray:
        """Sum (``op="sum"``), minimum or maximum of a few float64 scalars over processes.

        Examples
        --------
        >>> Group().all_reduce([1.0, 2.0])
        array([1., 2.])
        """
        out = np.asarray(values, dtype=np.float64)
        if not self.active:
            return out
        t = torch.as_tensor(out, device=self._scalar_device())
        ops = {"sum": torch.distributed.ReduceOp.SUM, "min": torch.distributed.ReduceOp.MIN,
               "max": torch.distributed.ReduceOp.MAX}
        torch.distributed.all_reduce(t, op=ops[op])
        return t.cpu().numpy()

    def check_same(self, **values: float) -> None:
        """Raise the same clear error on every process if a number differs between them.

        Run before training: processes fed different data would otherwise wait for each
        other forever at a collective one of them never reaches.

        Examples
        --------
        >>> Group().check_same(n_rows=100, batch_size=16)
        """
        if not self.active:
            return
        names = list(values)
        v = [float(values[k]) for k in names]
        low, high = self.all_reduce(v, "min"), self.all_reduce(v, "max")
        bad = [f"{k} ({low[i]:.10g} to {high[i]:.10g})" for i, k in enumerate(names)
               if low[i] != high[i]]
        if bad:
            raise ValueError(
                "the training processes disagree on " + ", ".join(bad) + ": every process "
                "must read the same data, in the same order, with the same settings (same "
                "files, seed and options)")

    def broadcast(self, tensors: Iterable[torch.Tensor], src: int = 0) -> None:
        """Overwrite ``tensors`` in place with their values on rank ``src``.

        Used for the initial weights (as DDP does at construction) and for data-derived
        state (normalisation), so that all processes start identical even if, e.g., a
        sample of the data was drawn differently.
        """
        if not self.active:
            return
        nccl = torch.distributed.get_backend() == "nccl"
        for t in tensors:
            if nccl and t.device.type != "cuda":
                tmp = t.detach().to(self._scalar_device())
                torch.distributed.broadcast(tmp, src=src)
                with torch.no_grad():
                    t.copy_(tmp.to(t.device))
            else:
                torch.distributed.broadcast(t.data, src=src)

    def broadcast_module(self, module: torch.nn.Module, src: int = 0) -> None:
        """Broadcast the parameters and buffers of ``module`` from rank ``src``."""
        self.broadcast(list(module.state_dict(keep_vars=True).values()), src=src)

    def broadcast_int(self, value: int, src: int = 0) -> int:
        """Rank ``src``'s value of an integer (e.g. a random seed drawn from entropy).

        Examples
        --------
        >>> Group().broadcast_int(7)
        7
        """
        if not self.active:
            return int(value)
        t = torch.tensor([int(value)], dtype=torch.int64, device=self._scalar_device())
        torch.distributed.broadcast(t, src=src)
        return int(t.item())

    def reduce_gradients(self, params: Sequence[torch.nn.Parameter],
                         loss: torch.Tensor | None, n_local: int) -> tuple[float, int]:
        """Turn local gradients into the gradient of the mean loss over all processes' rows.

        Call after ``loss.backward()`` on this process's slice of the global batch (skip
        ``backward`` and pass ``loss=None`` when the slice is empty). Afterwards every
        ``params[i].grad`` holds ``sum_r n_r * grad_r / sum_r n_r``, the same on every
        process; a parameter no process gave a gradient to keeps ``grad=None`` (as a single
        process would, so Adam skips it).

        Parameters
        ----------
        params
            The parameters the optimiser updates (same order on every process).
        loss
            This process's mean loss over its ``n_local`` rows.
        n_local
            Rows in this process's slice.

        Returns
        -------
        tuple
            ``(mean loss over all rows, total rows)``.

        Examples
        --------
        >>> lin = torch.nn.Linear(2, 1)
        >>> loss = lin(torch.ones(4, 2)).pow(2).mean()
        >>> loss.backward()
        >>> Group().reduce_gradients(list(lin.parameters()), loss, 4)[1]
        4
        """
        loss_value = float(loss.detach()) if loss is not None else 0.0
        if not self.active:
            return loss_value, n_local
        flat = pack_gradients(params, loss, n_local)
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        return unpack_gradients(params, flat)


def pack_gradients(params: Sequence[torch.nn.Parameter], loss: torch.Tensor | None,
                   n_local: int) -> torch.Tensor:
    """One flat buffer: ``n_local * grad`` of every parameter, a has-gradient flag per
    parameter, then ``n_local * loss`` and ``n_local``.

    Summing these buffers over processes and calling :func:`unpack_gradients` gives the
    gradient of the mean loss over all rows (see :meth:`Group.reduce_gradients`); the two
    functions are separate so the arithmetic can be tested in one process.
    """
    device = params[0].device if params else torch.device("cpu")
    parts = []
    for p in params:
        g = p.grad
        parts.append(g.detach().reshape(-1) * n_local if g is not None and n_local
                     else torch.zeros(p.numel(), device=device, dtype=torch.float32))
    flags = [1.0 if p.grad is not None and n_local else 0.0 for p in params]
    loss_sum = float(loss.detach()) * n_local if loss is not None and n_local else 0.0
    tail = torch.tensor(flags + [loss_sum, float(n_local)], device=device, dtype=torch.float32)
    # float32 throughout: the loss sum and row count are exact enough (counts < 2**24)
    return torch.cat([t.to(device=device, dtype=torch.float32) for t in parts] + [tail])


def unpack_gradients(params: Sequence[torch.nn.Parameter], flat: torch.Tensor
                     ) -> tuple[float, int]:
    """Inverse of :func:`pack_gradients` after the sum over processes: set each
    ``param.grad`` to the mean gradient and return ``(mean loss, total rows)``."""
    n_params = len(params)
    tail = flat[-(n_params + 2):].cpu().numpy().astype(np.float64)
    flags, loss_sum, n_total = tail[:n_params], tail[n_params], int(round(tail[n_params + 1]))
    scale = 1.0 / max(n_total, 1)
    offset = 0
    for p, flag in zip(params, flags, strict=True):
        k = p.numel()
        if flag > 0:
            p.grad = (flat[offset:offset + k] * scale).view_as(p).to(p.dtype)
        else:
            p.grad = None
        offset += k
    return (loss_sum / n_total if n_total else float("nan")), n_total
