"""A pool of row sources streamed as one: pretraining over many signals at once.

Each item (a numpy array or a dask array of one signal, file...) keeps its own source, with
an optional per-block ``transform`` (e.g. resampling onto a common channel count). Blocks of
all items are visited in one random order and go through the usual shuffle buffer of
:meth:`RowSource.batches`, so a minibatch mixes items and memory stays bounded by the block
and buffer sizes; dask items stream chunk by chunk (the next block is prefetched).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from hyperspy_mlspec.engine.sources import RowSource

BlockTransform = Callable[[np.ndarray], np.ndarray]


class PoolSource(RowSource):
    """Rows of several sources, all with ``n_features`` columns after their transform.

    Parameters
    ----------
    sources
        One :class:`RowSource` per item.
    transforms
        One callable (or None) per item, mapping a float32 block of that item to
        ``(rows, n_features)``.
    n_features
        Columns after the transforms.
    **kwargs
        Passed to :class:`RowSource` (validation fraction and seed of the whole pool).

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_mlspec.engine import ArraySource
    >>> pool = PoolSource([ArraySource(np.ones((5, 4))), ArraySource(np.zeros((3, 2)))],
    ...                   [None, lambda b: np.repeat(b, 2, axis=1)], n_features=4)
    >>> pool.n_rows, sum(len(b) for b in pool.batches(2, rng=np.random.default_rng(0)))
    (8, 8)
    """

    def __init__(self, sources: Sequence[RowSource],
                 transforms: Sequence[BlockTransform | None] | None = None, *,
                 n_features: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if not sources:
            raise ValueError("a pool needs at least one source")
        transforms = list(transforms) if transforms is not None else [None] * len(sources)
        if len(transforms) != len(sources):
            raise ValueError("one transform (or None) per source is needed")
        self.sources, self.transforms = list(sources), transforms
        self.n_features = int(n_features)
        for src, fn in zip(self.sources, self.transforms, strict=True):
            if fn is None and src.n_features != self.n_features:
                raise ValueError(f"a source has {src.n_features} columns, the pool "
                                 f"{self.n_features}, and no transform")
        self.row_offsets = np.concatenate([[0], np.cumsum([s.n_rows for s in sources])])
        self.n_rows = int(self.row_offsets[-1])
        # global block number -> (item, block of that item)
        self._index = [(i, b) for i, s in enumerate(self.sources) for b in range(s.n_blocks())]

    def n_blocks(self) -> int:
        return len(self._index)

    def _fetch(self, g: int) -> tuple[int, np.ndarray]:
        item, b = self._index[g]
        src = self.sources[item]
        start, block = next(iter(src.blocks([b])))
        fn = self.transforms[item]
        if fn is not None:
            block = np.asarray(fn(block), dtype=np.float32)
        if block.shape[1] != self.n_features:
            raise ValueError(f"item {item} gave blocks of {block.shape[1]} columns after its "
                             f"transform; the pool expects {self.n_features}")
        if self.check is not None:
            self.check(block)
        return int(self.row_offsets[item]) + start, block

    def blocks(self, order=None) -> Iterator[tuple[int, np.ndarray]]:
        order = list(range(self.n_blocks()) if order is None else order)
        if not order:
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(self._fetch, int(order[0]))
            for i in range(len(order)):
                start, block = future.result()
                if i + 1 < len(order):
                    future = pool.submit(self._fetch, int(order[i + 1]))
                yield start, block
