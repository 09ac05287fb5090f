"""Files: loading and saving signals for batch work, lazily and on dask.distributed.

:func:`load` is ``hs.load`` with clear errors and lazily read HDF5 files made picklable
(:class:`HDF5Slicer`), so dask graphs built on them run on worker processes; :func:`save`
also writes lazy results computed on a cluster. :func:`expand_paths` resolves paths and
globs; :func:`path_adapter` lets the numeric core take file paths where it takes arrays
(e.g. ``MaskedAutoencoder().fit(["lab/**/*.hspy"])``).
"""

from __future__ import annotations

import glob
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from hyperspy_mlspec.arrays.chunks import distributed_client
from hyperspy_mlspec.signals.table import is_lazy

_GLOB_CHARS = set("*?[")


class HDF5Slicer:
    """Array-like view of an HDF5 dataset given by file name and dataset path.

    Unlike an open ``h5py.Dataset`` it pickles (as its file name and path), so dask graphs
    built on it run on worker processes and ``dask.distributed`` clusters that see the same
    file system. Each process opens the file once per cache size, read-only.
    ``cache_bytes`` sizes HDF5's chunk cache (default: HDF5's 1 MiB): blocks smaller than
    the file's chunks then decompress each chunk once, not once per block.
    """

    _files: dict = {}
    _lock = threading.Lock()

    def __init__(self, filename: str, name: str, shape: tuple, dtype,
                 cache_bytes: int | None = None) -> None:
        self.filename, self.name = str(filename), str(name)
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)
        self.cache_bytes = None if cache_bytes is None else int(cache_bytes)

    def __reduce__(self):
        return (HDF5Slicer, (self.filename, self.name, self.shape, self.dtype.str,
                             self.cache_bytes))

    def __dask_tokenize__(self):
        return ("hyperspy_mlspec.HDF5Slicer", self.filename, self.name, self.shape,
                self.dtype.str, self.cache_bytes)

    def _dataset(self):
        """The open dataset (file opened once per process; the chunk cache is a property
        of the dataset access, so the same file serves several cache sizes)."""
        import h5py

        key = (self.filename, self.name, self.cache_bytes)
        dset = HDF5Slicer._files.get(key)
        if dset is not None and dset.id.valid:
            return dset
        f = HDF5Slicer._files.get(self.filename)
        if f is None or not f.id.valid:
            f = HDF5Slicer._files[self.filename] = h5py.File(self.filename, "r")
        if self.cache_bytes:  # a prime number of slots well above the chunks cached
            dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
            dapl.set_chunk_cache(10007, self.cache_bytes, 1.0)
            dset = h5py.Dataset(h5py.h5d.open(f.id, self.name.encode(), dapl=dapl))
        else:
            dset = f[self.name]
        HDF5Slicer._files[key] = dset
        return dset

    @property
    def chunks(self) -> tuple | None:
        """The HDF5 chunk shape of the dataset (None when contiguous)."""
        with HDF5Slicer._lock:
            return self._dataset().chunks

    def with_cache(self, cache_bytes: int | None) -> HDF5Slicer:
        """The same dataset read through a chunk cache of ``cache_bytes``."""
        return HDF5Slicer(self.filename, self.name, self.shape, self.dtype, cache_bytes)

    def __getitem__(self, index):
        with HDF5Slicer._lock:
            return self._dataset()[index]


def reread(data, chunks: tuple, budget: int):
    """``data`` with ``chunks``, read directly from the file or array it comes from when it
    is a plain ``da.from_array`` of one (so each block reads only its own spectra, where
    ``rechunk`` would read the old chunks whole and hold them), else ``data.rechunk``.

    HDF5 sources (an ``h5py.Dataset`` or :class:`HDF5Slicer`) whose chunks are taller than
    the new blocks are read through a chunk cache holding one row of the file's chunks when
    that fits in half of ``budget`` (bytes): HDF5 reads (and decodes) a whole chunk even for
    part of it, so without the cache every block thinner than the file's chunks would read
    the chunk again (measured 7 reads of a 128 MiB chunk for 7 blocks of 20 MiB).
    """
    import dask.array as da

    from hyperspy_mlspec.arrays.chunks import source_array

    source = source_array(data)
    if source is None:
        return data.rechunk(chunks)
    slicer = _as_slicer(source)
    if slicer is not None:
        file_chunks = slicer.chunks
        if file_chunks is not None and file_chunks[0] > chunks[0]:
            row = file_chunks[0] * int(np.prod(data.shape[1:], dtype=np.int64))
            row_bytes = row * data.dtype.itemsize
            if row_bytes <= budget // 2:
                slicer = slicer.with_cache(row_bytes + 2**20)
        source = slicer
    name = f"mlspec-rows-{data.name}-{'-'.join(str(c) for c in chunks)}"
    return da.from_array(source, chunks=chunks, name=name, asarray=True)


def _as_slicer(source) -> HDF5Slicer | None:
    if isinstance(source, HDF5Slicer):
        return source
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py comes with HyperSpy
        return None
    if isinstance(source, h5py.Dataset):
        return HDF5Slicer(source.file.filename, source.name, source.shape, source.dtype)
    return None


def portable(signal):
    """Make a lazy signal read from an HDF5 file (``.hspy``, ``.h5``...) usable on worker
    processes: its dask array reads through :class:`HDF5Slicer` (same chunks) instead of
    holding the open, unpicklable ``h5py`` dataset. Other signals are returned unchanged.
    The signal is changed in place (only ``signal.data``; values are identical) and returned.
    """
    if not is_lazy(signal):
        return signal
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py comes with HyperSpy
        return signal
    import dask.array as da

    data = signal.data
    graph = dict(data.__dask_graph__())
    sources = [v for v in graph.values() if isinstance(v, h5py.Dataset)]
    if len(sources) != 1 or sources[0].shape != data.shape:
        return signal  # derived arrays: leave them as they are
    dset = sources[0]
    slicer = HDF5Slicer(dset.file.filename, dset.name, dset.shape, dset.dtype)
    signal.data = da.from_array(slicer, chunks=data.chunks, name=f"hdf5-{data.name}",
                                asarray=True)
    return signal


def load(path, lazy: bool = False, **kwargs: Any):
    """``hyperspy.api.load`` with clear errors for command-line and batch work.

    Lazily loaded HDF5-based files are made :func:`portable` (they then also run on
    ``dask.distributed`` worker processes).

    Parameters
    ----------
    path
        A file HyperSpy reads.
    lazy
        Open lazily (data stay on disk and are read chunk by chunk).
    **kwargs
        Passed to ``hyperspy.api.load``.

    Returns
    -------
    BaseSignal or list of BaseSignal

    Raises
    ------
    ValueError
        When the file's format cannot be read lazily, saying what to do instead.

    Examples
    --------
    >>> s = load("map.hspy", lazy=True)  # doctest: +SKIP
    """
    import hyperspy.api as hs

    try:
        loaded = hs.load(str(path), lazy=lazy, **kwargs)
    except NotImplementedError as exc:
        if not lazy:
            raise
        raise ValueError(
            f"{path}: this file format cannot be read lazily ({exc}). Load it without "
            "lazy=True / --lazy if it fits in memory, or convert it once to a format that "
            "can (e.g. hs.load(path).save('file.hspy', chunks=...), or .zspy), then work "
            "on that file.") from None
    if lazy:
        for s in loaded if isinstance(loaded, list) else [loaded]:
            portable(s)
    return loaded


def save(signal, path, **kwargs: Any) -> None:
    """``signal.save(path, **kwargs)`` that also works for lazy results computed on a
    ``dask.distributed`` cluster.

    HyperSpy writes lazy data with ``dask.array.store`` into an open HDF5 dataset, which
    cannot travel to worker processes. With a distributed client active, each block is
    computed on the cluster and written here, one block at a time (memory stays bounded by
    the block size). Otherwise this is plain ``signal.save``.
    """
    client = distributed_client() if is_lazy(signal) else None
    if client is None:
        signal.save(path, **kwargs)
        return
    import dask
    import dask.array as da

    remote = signal.data

    def fetch(block_id=None):
        return client.compute(remote.blocks[block_id]).result()

    local = signal._deepcopy_with_new_data(
        da.map_blocks(fetch, chunks=remote.chunks, dtype=remote.dtype,
                      meta=np.empty((0,) * remote.ndim, remote.dtype)))
    local.metadata.General.title = signal.metadata.General.title
    with dask.config.set(scheduler="threads"):
        local.save(path, **kwargs)


def expand_paths(path: str | os.PathLike) -> list[Path]:
    """The files a path or glob (``"maps/**/*.hspy"``, recursive) names, sorted.

    Raises
    ------
    FileNotFoundError
        When nothing matches.
    """
    text = str(path)
    if _GLOB_CHARS & set(text):
        found = sorted(glob.glob(text, recursive=True))
        if not found:
            raise FileNotFoundError(f"no file matches {text!r}")
        return [Path(p) for p in found]
    if not Path(text).exists():
        raise FileNotFoundError(f"no such file: {text!r}")
    return [Path(text)]


def path_adapter(obj: Any, name: str, navigation_mask: Any):
    """:func:`~hyperspy_mlspec.arrays.as_tables` for file paths and globs: every file is
    opened lazily (read chunk by chunk, never whole) and each signal it holds is a table."""
    from hyperspy_mlspec.signals.table import table

    if not isinstance(obj, (str, os.PathLike)):
        return None
    if navigation_mask is not None:
        raise ValueError(f"{name}: navigation_mask applies to one signal, not to files")
    tables = []
    for path in expand_paths(obj):
        try:
            loaded = load(path, lazy=True)
        except Exception as exc:  # readers raise many types; the message is what matters
            raise ValueError(f"cannot read {path}: {exc}") from None
        signals = loaded if isinstance(loaded, list) else [loaded]
        for j, s in enumerate(signals):
            t = table(s)
            t.name = str(path) + (f"[{j}]" if len(signals) > 1 else "")
            tables.append(t)
    return tables
