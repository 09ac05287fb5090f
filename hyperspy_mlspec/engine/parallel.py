"""Inference over rows on several CPU threads, one batch per thread at a time.

Each worker thread runs whole batches with one torch intra-op thread (torch's setting is
per thread), so the threads never wait for each other inside an operation. On a machine
shared with other jobs this is what makes several threads pay: with torch's own threads,
every operation of a batch ends in a barrier that waits for the slowest (descheduled)
thread (measured on 2 shared cores at load 2.5: a 128-spectrum forward pass 20x slower on
2 threads than on 1). Measured on the default 1024-channel autoencoder, 65,536 spectra on
2 cores: ``transform`` 390k spectra/s against 332k with torch's 2 threads and 207k with 1;
``reconstruct`` 136k, 125k and 61k.

The number of workers is torch's thread setting of the caller (so ``torch.set_num_threads
(1)`` keeps inference on one thread); batches run in the caller's thread only on a GPU,
for small inputs, and in threads other than the main one (e.g. dask's workers, which
already run blocks in parallel).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

MIN_ROWS_PER_WORKER = 256  # below, one thread: a pool costs more than it gains


def inference_workers(n_rows: int, device: torch.device | str = "cpu") -> int:
    """Worker threads for inference over ``n_rows`` rows (see the module docstring).

    Examples
    --------
    >>> inference_workers(100)
    1
    """
    if torch.device(device).type != "cpu" or threading.current_thread() is not \
            threading.main_thread():
        return 1
    return max(1, min(torch.get_num_threads(), int(n_rows) // MIN_ROWS_PER_WORKER))


def _one_thread() -> None:
    torch.set_num_threads(1)


def map_batches(fn: Callable[[torch.Tensor], Any], X, batch: int,
                device: torch.device | str = "cpu", workers: int | None = None):
    """``fn`` (float32 tensor -> tensor, or tuple of tensors) over row batches of ``X``,
    under ``torch.inference_mode``, written into one preallocated float32 output per
    result (no list of pieces and concatenation).

    Parameters
    ----------
    fn
        Pure function of a batch (it runs in several threads at once).
    X
        Rows, an array (any dtype: each batch is converted to float32).
    batch
        Most rows per call of ``fn`` (smaller with several workers, so each gets work).
    device
        Where the batches go.
    workers
        Threads; None: :func:`inference_workers`.

    Returns
    -------
    ndarray, or a tuple of them when ``fn`` returns a tuple

    Examples
    --------
    >>> X = np.arange(12, dtype=np.float32).reshape(6, 2)
    >>> map_batches(lambda x: x.sum(1, keepdim=True), X, batch=4).ravel().tolist()
    [1.0, 5.0, 9.0, 13.0, 17.0, 21.0]
    >>> [a.shape for a in map_batches(lambda x: (x, x[:, :1]), X, batch=4)]
    [(6, 2), (6, 1)]
    """
    n = len(X)
    if workers is None:
        workers = inference_workers(n, device)
    if workers > 1:
        batch = max(1, min(int(batch), math.ceil(n / workers)))
    starts = list(range(0, n, batch))
    out: list[np.ndarray] = []
    tupled = False

    def run(i: int) -> tuple[np.ndarray, ...] | None:
        nonlocal tupled
        with torch.inference_mode():
            x = torch.as_tensor(np.asarray(X[i:i + batch], dtype=np.float32), device=device)
            y = fn(x)
            ys = tuple(t.cpu().numpy() for t in (y if isinstance(y, tuple) else (y,)))
        if i == 0:
            tupled = isinstance(y, tuple)
            return ys
        for o, v in zip(out, ys, strict=True):
            o[i:i + len(v)] = v
        return None

    if not starts:
        return np.empty((0, 0), dtype=np.float32)

    def allocate(first: tuple[np.ndarray, ...]) -> None:  # the first batch sizes them
        for v in first:
            out.append(np.empty((n,) + v.shape[1:], dtype=np.float32))
            out[-1][:len(v)] = v

    if workers > 1 and len(starts) > 1:
        # every batch in the pool, the first too: the caller's thread may run torch on
        # several intra-op threads, whose per-operation barriers this module avoids
        with ThreadPoolExecutor(max_workers=workers, initializer=_one_thread,
                                thread_name_prefix="mlspec-infer") as pool:
            allocate(pool.submit(run, 0).result())
            for _ in pool.map(run, starts[1:]):
                pass  # results are written in place; map re-raises a worker's error
    else:
        allocate(run(0))
        for i in starts[1:]:
            run(i)
    return tuple(out) if tupled else out[0]
