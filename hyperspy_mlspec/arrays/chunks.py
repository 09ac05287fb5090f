"""How many spectra a lazy block holds: row blocks sized from a memory budget.

A lazy computation holds, per block in flight, the block read from disk, the model's
output block (float32), the model's temporaries and what the worker thread's allocator
keeps: measured about ``BLOCK_COPIES`` times the block in float32
(``benchmarks/bench_out_of_core.py --issue14``). dask runs one block per worker thread,
so the row count of a block is chosen as::

    rows = memory_budget() / (workers * BLOCK_COPIES * n_channels * 4 bytes)

at least one row (the caller rounds up to whole map lines). The budget (``MEMORY_BUDGET``,
256 MiB, for all blocks in flight together) is set with dask's configuration, e.g.
``dask.config.set({"mlspec.memory-budget": "1GiB"})``; the number of workers is the one
dask's scheduler will use (``num_workers``, the thread pool, the threads of a
``dask.distributed`` worker). Nothing here imports HyperSpy.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["BLOCK_COPIES", "MEMORY_BUDGET", "block_rows", "dask_workers", "distributed_client",
           "memory_budget", "source_array"]

#: bytes for all lazy blocks in flight together (with the ~420 MiB that Python, torch,
#: HyperSpy and exspy take, a whole process stays well under 1 GiB)
MEMORY_BUDGET = 256 * 2**20
#: float32 copies of a block held per task: input, output and model temporaries (3-4),
#: plus what each worker thread's allocator keeps between blocks (measured 6-8 in all)
BLOCK_COPIES = 6
_CONFIG_KEY = "mlspec.memory-budget"


def memory_budget() -> int:
    """Bytes for the lazy blocks in flight: ``dask.config`` key ``"mlspec.memory-budget"``
    (bytes or a string such as ``"512MiB"``), else :data:`MEMORY_BUDGET`.

    Examples
    --------
    >>> import dask
    >>> with dask.config.set({"mlspec.memory-budget": "64MiB"}):
    ...     memory_budget()
    67108864
    """
    import dask
    from dask.utils import parse_bytes

    value = dask.config.get(_CONFIG_KEY, None)
    if value is None:
        return MEMORY_BUDGET
    try:
        budget = int(parse_bytes(value)) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        budget = 0
    if budget <= 0:
        raise ValueError(f"dask config {_CONFIG_KEY!r} must be a positive number of bytes "
                         f"or a size such as '512MiB', got {value!r}")
    return budget


def dask_workers() -> int:
    """Blocks dask computes at once in one process with the current configuration."""
    import dask

    scheduler = dask.config.get("scheduler", None)
    if scheduler in ("sync", "synchronous", "single-threaded"):
        return 1
    client = distributed_client(scheduler)
    if client is not None:  # blocks in flight per worker process
        try:
            return max(1, max(client.nthreads().values(), default=1))
        except Exception:  # a closed or unusual client: fall back to the local rule
            pass
    n = dask.config.get("num_workers", None)
    if n:
        return max(1, int(n))
    pool = dask.config.get("pool", None)
    if pool is not None and getattr(pool, "_max_workers", None):
        return max(1, int(pool._max_workers))
    try:
        from dask.system import CPU_COUNT
    except ImportError:  # pragma: no cover - dask always has it
        CPU_COUNT = os.cpu_count() or 1
    return max(1, int(CPU_COUNT))


def distributed_client(scheduler: Any = None):
    """The dask.distributed client computations go to under ``scheduler`` (default: the
    current dask configuration), or None."""
    if scheduler is None:
        import dask

        scheduler = dask.config.get("scheduler", None)
    if hasattr(scheduler, "submit"):  # a Client given as the scheduler
        return scheduler
    if scheduler not in (None, "dask.distributed"):
        return None
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def block_rows(n_channels: int, *, workers: int | None = None,
               budget: int | None = None, itemsize: int = 4) -> int:
    """Spectra per lazy block so that every block in flight fits the memory budget.

    Parameters
    ----------
    n_channels
        Channels per spectrum (the values of a row).
    workers
        Blocks in flight; None: :func:`dask_workers`.
    budget
        Bytes for all of them; None: :func:`memory_budget`.
    itemsize
        Bytes per value of the data (at least float32 is counted: outputs are float32).

    Returns
    -------
    int
        At least 1.

    Examples
    --------
    >>> block_rows(2048, workers=2, budget=256 * 2**20)
    2730
    >>> block_rows(2048, workers=16, budget=256 * 2**20)
    341
    """
    workers = dask_workers() if workers is None else max(1, int(workers))
    budget = memory_budget() if budget is None else int(budget)
    row_bytes = max(1, int(n_channels)) * max(4, int(itemsize))
    return max(1, int(budget // (workers * BLOCK_COPIES * row_bytes)))


def source_array(data):
    """The array-like a dask array reads directly (``da.from_array`` of an h5py dataset,
    a :class:`~hyperspy_mlspec.signals.files.HDF5Slicer`, a zarr array...), or None when
    ``data`` is derived from it (sliced, computed on). Re-reading it with other chunks
    reads only what each new block needs, where ``rechunk`` would read whole old chunks.
    """
    graph = data.__dask_graph__()
    layers = getattr(graph, "layers", None)
    if layers is None or len(layers) > 2:
        return None
    key = f"original-{data.name}"
    if len(layers) != 2 or key not in layers:
        return None
    values = list(dict(layers[key]).values())
    if len(values) != 1:
        return None
    source = values[0]
    shape = getattr(source, "shape", None)
    if shape is None or tuple(shape) != tuple(data.shape) or np.dtype(
            getattr(source, "dtype", None) or "O") != data.dtype:
        return None
    return source
