"""Row sources: where minibatches of spectra come from.

A source hands the training loop float32 minibatches of shape ``(batch, n_features)``.
:class:`ArraySource` wraps an in-memory array; :class:`DaskSource` streams navigation chunks
of a dask array in random order through a shuffle buffer, so memory is bounded by the chunk
and buffer sizes, never by the size of the data set.

The train/validation split is a deterministic hash of the global row index, so it is the same
for both kinds of source, needs no stored index, and is stable across epochs and processes.

In-memory sources can also hand the training loop :class:`InMemoryRows`: the rows converted
to one float32 tensor once per fit (no copy at all for float32 input), with the split as
index tensors, so an epoch costs one permutation and one gather per minibatch instead of
the block conversions, concatenations and shuffled copies of the streamed path.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

Split = Literal["train", "val", "all"]
RowCheck = Callable[[np.ndarray], None]


def validation_rows(index: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Return a boolean array: True where a global row index belongs to the validation split.

    Parameters
    ----------
    index
        Global row indices (integers).
    fraction
        Expected fraction of rows in the validation split (0 gives none).
    seed
        Changes which rows are picked.

    Examples
    --------
    >>> import numpy as np
    >>> validation_rows(np.arange(100_000), 0.1, 0).mean().round(2)
    np.float64(0.1)
    """
    if fraction <= 0:
        return np.zeros(index.shape, dtype=bool)
    # splitmix64 finaliser: a cheap, well-mixed hash of (index, seed)
    with np.errstate(over="ignore"):
        z = index.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / 2.0**53 < fraction


#: in-memory rows are converted to one float32 tensor up to this size (larger: streamed)
IN_MEMORY_BYTES = 2 * 2**30


@dataclass
class InMemoryRows:
    """Rows of a source as one float32 tensor with the train/validation split as indices.

    Attributes
    ----------
    data
        ``(n_rows, n_features)`` float32 tensor (shares memory with a float32 input).
    train_index, val_index
        int64 row indices of the two splits (on the device of ``data``).
    """

    data: torch.Tensor
    train_index: torch.Tensor
    val_index: torch.Tensor

    def count(self, split: Split) -> int:
        """Rows in a split."""
        if split == "all":
            return int(self.data.shape[0])
        return int((self.train_index if split == "train" else self.val_index).numel())

    def to(self, device: torch.device) -> InMemoryRows:
        """The same rows on ``device`` (a no-op on the device they are on)."""
        if self.data.device == torch.device(device):
            return self
        return InMemoryRows(self.data.to(device), self.train_index.to(device),
                            self.val_index.to(device))

    def batches(self, batch_size: int, split: Split = "train",
                rng: np.random.Generator | None = None,
                drop_last: bool = False) -> Iterator[torch.Tensor]:
        """Minibatches of one split (shuffled with ``rng``): one gather per batch.

        Examples
        --------
        >>> import numpy as np
        >>> rows = ArraySource(np.ones((10, 4)), validation_fraction=0.2).in_memory()
        >>> [b.shape[0] for b in rows.batches(4, "train")]
        [4, 3]
        """
        index = (torch.arange(self.data.shape[0], device=self.data.device) if split == "all"
                 else self.train_index if split == "train" else self.val_index)
        if rng is not None and index.numel() > 1:
            perm = torch.from_numpy(rng.permutation(index.numel())).to(index.device)
            index = index[perm]
        n = int(index.numel())
        stop = (n // batch_size) * batch_size if drop_last and n > batch_size else n
        for i in range(0, stop, batch_size):
            yield self.data.index_select(0, index[i:i + batch_size])


class RowSource(ABC):
    """Base class of row sources.

    Parameters
    ----------
    validation_fraction
        Fraction of rows held out for early stopping.
    seed
        Seed of the validation split.
    """

    n_rows: int
    n_features: int

    def __init__(self, validation_fraction: float = 0.0, seed: int = 0) -> None:
        self.validation_fraction = float(validation_fraction)
        self.seed = int(seed)
        self.check: RowCheck | None = None

    def _select(self, block: np.ndarray, start: int, split: Split) -> np.ndarray:
        if split == "all" or self.validation_fraction <= 0:
            return block if split != "val" else block[:0]
        is_val = validation_rows(np.arange(start, start + len(block)), self.validation_fraction,
                                 self.seed)
        return block[is_val] if split == "val" else block[~is_val]

    def count(self, split: Split) -> int:
        """Number of rows in a split."""
        if split == "all" or self.validation_fraction <= 0:
            return self.n_rows if split != "val" else 0
        n_val = int(validation_rows(np.arange(self.n_rows), self.validation_fraction,
                                    self.seed).sum())
        return n_val if split == "val" else self.n_rows - n_val

    @abstractmethod
    def blocks(self, order: np.ndarray | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start_row, float32 block)`` pairs, in ``order`` of block number if given."""

    @abstractmethod
    def n_blocks(self) -> int:
        """Number of blocks."""

    def batches(
        self,
        batch_size: int,
        split: Split = "train",
        rng: np.random.Generator | None = None,
        buffer_rows: int | None = None,
        drop_last: bool = False,
    ) -> Iterator[np.ndarray]:
        """Yield float32 minibatches of one split.

        Parameters
        ----------
        batch_size
            Rows per batch (the last one may be smaller unless ``drop_last``).
        split
            ``"train"``, ``"val"`` or ``"all"``.
        rng
            Shuffles blocks and rows; None keeps the data order.
        buffer_rows
            Rows gathered from random blocks before shuffling (bounds the memory); None
            uses about 64 MiB of float32 rows.
        drop_last
            Drop a final partial batch (keeps batch statistics stable when training).
        """
        if buffer_rows is None:
            buffer_rows = 2**24 // max(1, self.n_features)
        order = rng.permutation(self.n_blocks()) if rng is not None else None
        buffer: list[np.ndarray] = []
        n_buffered = 0
        for start, block in self.blocks(order):
            rows = self._select(block, start, split)
            if not len(rows):
                continue
            buffer.append(rows)
            n_buffered += len(rows)
            if n_buffered >= max(buffer_rows, batch_size):
                pool = np.concatenate(buffer)
                if rng is not None:
                    pool = pool[rng.permutation(len(pool))]
                n_full = (len(pool) // batch_size) * batch_size
                for i in range(0, n_full, batch_size):
                    yield pool[i : i + batch_size]
                buffer = [pool[n_full:]]
                n_buffered = len(buffer[0])
        if n_buffered:
            pool = np.concatenate(buffer)
            if rng is not None:
                pool = pool[rng.permutation(len(pool))]
            for i in range(0, len(pool), batch_size):
                batch = pool[i : i + batch_size]
                if drop_last and len(batch) < batch_size and i > 0:
                    break
                yield batch

    def in_memory(self, max_bytes: int = IN_MEMORY_BYTES) -> InMemoryRows | None:
        """The rows as one float32 tensor (see :class:`InMemoryRows`), or None for sources
        that stream (lazy data are never loaded whole) or that exceed ``max_bytes``."""
        return None

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Return up to ``n`` rows drawn from random blocks (for statistics)."""
        out: list[np.ndarray] = []
        got = 0
        for _, block in self.blocks(rng.permutation(self.n_blocks())):
            take = min(len(block), n - got)
            idx = rng.choice(len(block), size=take, replace=False)
            out.append(block[np.sort(idx)])
            got += take
            if got >= n:
                break
        return np.concatenate(out) if out else np.empty((0, self.n_features), np.float32)


class ArraySource(RowSource):
    """Rows of an in-memory 2-D array.

    Parameters
    ----------
    X
        Array of shape ``(n_rows, n_features)``; converted to float32 block by block.
    block_rows
        Rows per block (blocks are the unit of shuffling and of dtype conversion).
    **kwargs
        Passed to :class:`RowSource`.

    Examples
    --------
    >>> import numpy as np
    >>> src = ArraySource(np.ones((10, 4)))
    >>> [b.shape for b in src.batches(4)]
    [(4, 4), (4, 4), (2, 4)]
    """

    def __init__(self, X: np.ndarray, block_rows: int = 4096, **kwargs) -> None:
        super().__init__(**kwargs)
        if X.ndim != 2:
            raise ValueError(f"expected a 2-D array of spectra, got shape {X.shape}")
        self.X = X
        self.n_rows, self.n_features = X.shape
        self.block_rows = int(block_rows)

    def n_blocks(self) -> int:
        return max(1, -(-self.n_rows // self.block_rows))

    def blocks(self, order=None):
        order = range(self.n_blocks()) if order is None else order
        for b in order:
            start = int(b) * self.block_rows
            block = np.asarray(self.X[start : start + self.block_rows], dtype=np.float32)
            if self.check is not None:
                self.check(block)
            yield start, block

    def in_memory(self, max_bytes: int = IN_MEMORY_BYTES) -> InMemoryRows | None:
        X = self.X
        if not isinstance(X, np.ndarray):
            return None
        shares = X.dtype == np.float32 and X.flags.c_contiguous
        if not shares and self.n_rows * self.n_features * 4 > max_bytes:
            return None
        data = X if shares else np.ascontiguousarray(X, dtype=np.float32)
        if self.check is not None:  # the per-block checks, once per fit
            for start in range(0, self.n_rows, self.block_rows):
                self.check(data[start:start + self.block_rows])
        is_val = validation_rows(np.arange(self.n_rows), self.validation_fraction, self.seed)
        with warnings.catch_warnings():  # read-only input: the loop only reads the rows
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.from_numpy(data)
        return InMemoryRows(tensor, torch.from_numpy(np.flatnonzero(~is_val)),
                            torch.from_numpy(np.flatnonzero(is_val)))


class DaskSource(RowSource):
    """Rows of a 2-D dask array, streamed chunk by chunk.

    The signal axis is rechunked to one chunk; navigation chunks are computed one at a time
    (the next one is prefetched in a background thread while the current one is used).

    Parameters
    ----------
    X
        Dask array of shape ``(n_rows, n_features)``.
    **kwargs
        Passed to :class:`RowSource`.
    """

    def __init__(self, X, **kwargs) -> None:
        super().__init__(**kwargs)
        if X.ndim != 2:
            raise ValueError(f"expected a 2-D array of spectra, got shape {X.shape}")
        if len(X.chunks[1]) > 1:
            X = X.rechunk({1: -1})
        self.X = X
        self.n_rows, self.n_features = (int(s) for s in X.shape)
        self._starts = np.concatenate([[0], np.cumsum(X.chunks[0])]).astype(int)

    def n_blocks(self) -> int:
        return len(self.X.chunks[0])

    def _compute(self, b: int) -> np.ndarray:
        lo, hi = self._starts[b], self._starts[b + 1]
        block = np.asarray(self.X[lo:hi].compute(), dtype=np.float32)
        if self.check is not None:
            self.check(block)
        return block

    def blocks(self, order=None):
        order = list(range(self.n_blocks()) if order is None else order)
        if not order:
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(self._compute, int(order[0]))
            for i, b in enumerate(order):
                block = future.result()
                if i + 1 < len(order):
                    future = pool.submit(self._compute, int(order[i + 1]))
                yield int(self._starts[int(b)]), block


def as_source(X, validation_fraction: float = 0.0, seed: int = 0) -> RowSource:
    """Wrap an array (numpy or dask) or an existing source as a :class:`RowSource`.

    Examples
    --------
    >>> import numpy as np
    >>> as_source(np.zeros((3, 2))).n_rows
    3
    """
    if isinstance(X, RowSource):
        return X
    if hasattr(X, "dask") and hasattr(X, "chunks"):
        return DaskSource(X, validation_fraction=validation_fraction, seed=seed)
    return ArraySource(np.asarray(X), validation_fraction=validation_fraction, seed=seed)
