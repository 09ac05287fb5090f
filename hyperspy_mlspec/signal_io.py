"""Data in/out layer between HyperSpy signals and estimators (used by every method).

In: a 1-D-signal HyperSpy signal becomes a table of rows (navigation flattened in array
order) restricted by ``navigation_mask``/``signal_mask``/``signal_range``, in memory or lazy.
Out: rows become signals again, keeping class, axes (names, scales, offsets, units,
non-uniform axes), and metadata, with a title saying what was done and the operation
recorded in ``metadata.MLSpec``. Inputs are never modified.
"""

from __future__ import annotations

import datetime
import json
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from hyperspy_mlspec.axis import AxisInfo, alignment, parse_position


def is_lazy(signal) -> bool:
    """True for a lazy (dask-backed) HyperSpy signal."""
    return bool(getattr(signal, "_lazy", False))


def check_signal(signal) -> None:
    """Refuse anything that is not a HyperSpy signal with one signal dimension."""
    from hyperspy.signal import BaseSignal

    if not isinstance(signal, BaseSignal):
        raise TypeError(f"expected a HyperSpy signal, got {type(signal).__name__}")
    dim = signal.axes_manager.signal_dimension
    if dim != 1:
        raise ValueError(
            f"hyperspy_mlspec works on spectra (signal dimension 1), but this "
            f"{type(signal).__name__} has signal dimension {dim}. Make the spectral axis the "
            "signal axis, e.g. s.as_signal1D(spectral_axis) or s.transpose(signal_axes=1).")
    if np.issubdtype(signal.data.dtype, np.complexfloating):
        raise ValueError("complex data are not supported: take the real part, modulus or "
                         "phase first (s.real, s.amplitude, s.phase).")


def _as_bool_array(mask, name: str) -> np.ndarray:
    from hyperspy.signal import BaseSignal

    if isinstance(mask, BaseSignal):
        mask = mask.data
    if hasattr(mask, "compute"):
        mask = mask.compute()
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise ValueError(f"{name} must be a boolean array (True = excluded), got dtype "
                         f"{mask.dtype}")
    return mask


@dataclass
class SpectraTable:
    """Rows of a signal ready for an estimator, and how to put results back.

    Attributes
    ----------
    rows
        ``(n_rows, n_channels)`` numpy or dask array (a view when possible: never written).
    nav_index
        Flat navigation indices (array order) of the rows, or None when all are used.
    nav_shape
        Navigation shape in array order.
    channels
        Integer indices of the signal channels used, or None for all.
    axis
        The signal axis of the rows (after channel selection or resampling).
    """

    rows: Any
    nav_index: np.ndarray | None
    nav_shape: tuple[int, ...]
    channels: np.ndarray | None
    axis: AxisInfo
    lazy: bool

    @property
    def n_nav(self) -> int:
        return int(np.prod(self.nav_shape, dtype=np.int64))

    def scatter(self, values, fill: float = np.nan):
        """Put per-row results back on the full navigation grid.

        ``values`` of shape ``(n_rows, k)`` give ``nav_shape + (k,)``; masked pixels get
        ``fill``. Dask in gives dask out.
        """
        k = values.shape[1]
        if self.nav_index is None:
            return values.reshape(self.nav_shape + (k,))
        if hasattr(values, "dask"):
            import dask.array as da

            full = da.full((self.n_nav, k), fill, dtype=values.dtype, chunks=(values.chunks[0][0],
                                                                               k))
            # dask supports assignment with an integer index array
            full[self.nav_index] = values
            return full.reshape(self.nav_shape + (k,))
        full = np.full((self.n_nav, k), fill, dtype=np.result_type(values.dtype, np.float32))
        full[self.nav_index] = values
        return full.reshape(self.nav_shape + (k,))


def navigation_mask_array(signal, navigation_mask) -> np.ndarray | None:
    """Navigation mask as a flat boolean array in array order (True = excluded)."""
    if navigation_mask is None:
        return None
    mask = _as_bool_array(navigation_mask, "navigation_mask")
    nav_shape = signal.data.shape[: signal.axes_manager.navigation_dimension]
    if mask.shape != nav_shape:
        if mask.shape == nav_shape[::-1] and mask.ndim > 1:
            mask = mask.T  # given in HyperSpy's navigation_shape order
        else:
            raise ValueError(f"navigation_mask has shape {mask.shape}; expected the "
                             f"navigation shape {nav_shape} (array order, True = excluded)")
    flat = mask.ravel()
    if flat.all():
        raise ValueError("navigation_mask excludes every pixel: nothing is left to analyse. "
                         "True marks pixels to EXCLUDE; invert the mask (~mask) if needed.")
    return flat


def signal_channels(signal, signal_mask=None, signal_range=None) -> np.ndarray | None:
    """Indices of the channels kept by ``signal_mask`` (True = excluded) and
    ``signal_range`` (``(start, end)`` in axis units, as numbers, strings like
    ``"0.6 keV"`` or pint quantities; either end may be None)."""
    axis = signal.axes_manager.signal_axes[0]
    keep = np.ones(axis.size, dtype=bool)
    if signal_mask is not None:
        mask = _as_bool_array(signal_mask, "signal_mask").ravel()
        if mask.size != axis.size:
            raise ValueError(f"signal_mask has {mask.size} values; the signal axis has "
                             f"{axis.size} channels")
        keep &= ~mask
    if signal_range is not None:
        if len(signal_range) != 2:
            raise ValueError(f"signal_range must be (start, end), got {signal_range!r}")
        lo, hi = (None if v is None else parse_position(v, axis.units) for v in signal_range)
        values = np.asarray(axis.axis)
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"signal_range start {lo} is above its end {hi}")
        if lo is not None:
            keep &= values >= lo - 1e-9 * max(1.0, abs(lo))
        if hi is not None:
            keep &= values <= hi + 1e-9 * max(1.0, abs(hi))
    if not keep.any():
        raise ValueError(f"signal_mask/signal_range exclude every channel of the signal axis "
                         f"({axis.axis[0]:.4g}-{axis.axis[-1]:.4g} {axis.units}).")
    if keep.sum() < 2:
        raise ValueError("at least two signal channels are needed after masking")
    return None if keep.all() else np.flatnonzero(keep)


def lazy_row_chunks(data, nav_ndim: int):
    """Rechunk a lazy ``nav + (channels,)`` array so that flattening the navigation gives
    row blocks of about the current chunk size.

    The signal axis becomes one chunk (a block holds whole spectra). Flattening in array
    order needs every navigation axis after the first to be whole within a block, so the
    first axis is chunked to keep about as many spectra per block as the largest current
    chunk (at least one line of the map). Without this, dask's reshape would merge chunks
    into blocks of whole map lines times the chunk height, or more.
    """
    if nav_ndim <= 1:
        return data.rechunk({data.ndim - 1: -1}) if len(data.chunks[-1]) > 1 else data
    per_block = max(int(np.prod([max(c) for c in data.chunks[:nav_ndim]], dtype=np.int64)), 1)
    inner = int(np.prod(data.shape[1:nav_ndim], dtype=np.int64))
    lead = max(1, per_block // max(inner, 1))
    whole = all(len(c) == 1 for c in data.chunks[1:])
    if whole and max(data.chunks[0]) <= lead:
        return data
    return data.rechunk((lead,) + (-1,) * (data.ndim - 1))


def rows_of(signal):
    """All spectra of a 1-D-signal signal as a 2-D ``(n_navigation, n_channels)`` array
    (navigation flattened in array order); lazy signals give bounded row blocks (see
    :func:`lazy_row_chunks`)."""
    am = signal.axes_manager
    data = signal.data
    if is_lazy(signal):
        data = lazy_row_chunks(data, am.navigation_dimension)
    return data.reshape((-1, am.signal_axes[0].size))


def table(signal, navigation_mask=None, signal_mask=None, signal_range=None,
          check_finite: bool = True) -> SpectraTable:
    """Rows of ``signal`` for fitting or applying a model (see :class:`SpectraTable`)."""
    check_signal(signal)
    am = signal.axes_manager
    nav_shape = tuple(signal.data.shape[: am.navigation_dimension])
    rows = rows_of(signal)
    nav_flat = navigation_mask_array(signal, navigation_mask)
    channels = signal_channels(signal, signal_mask, signal_range)
    lazy = is_lazy(signal)
    nav_index = None if nav_flat is None or not nav_flat.any() else np.flatnonzero(~nav_flat)
    if nav_index is not None:
        rows = rows[nav_index]
    if channels is not None:
        rows = rows[:, channels]
    if lazy:
        if len(rows.chunks[1]) > 1:
            rows = rows.rechunk({1: -1})
    elif check_finite:
        check_finite_rows(rows, nav_index)
    return SpectraTable(rows, nav_index, nav_shape, channels,
                        AxisInfo.from_axis(am.signal_axes[0], channels), lazy)


def check_finite_rows(rows: np.ndarray, nav_index: np.ndarray | None = None) -> None:
    """Clear error naming the bad pixels when rows hold NaN or infinity."""
    if np.issubdtype(rows.dtype, np.integer):
        return
    bad = ~np.isfinite(rows).all(axis=1)
    if bad.any():
        where = np.flatnonzero(bad)
        if nav_index is not None:
            where = nav_index[where]
        raise ValueError(
            f"the data contain NaN or infinity in {bad.sum()} spectra (flat navigation "
            f"indices {where[:5].tolist()}{'...' if bad.sum() > 5 else ''}). Exclude them with "
            "navigation_mask, or replace the values first (e.g. with np.nan_to_num).")


def table_for_model(signal, model, navigation_mask=None) -> SpectraTable:
    """Rows of ``signal`` on the channels a fitted model expects.

    Uses the model's recorded training axis: same channels are used directly, other
    calibrations are converted (pint) and resampled, incompatible axes are refused.
    """
    check_signal(signal)
    if hasattr(model, "table_for_signal"):  # models with their own resampling rule (MAE)
        return model.table_for_signal(signal, navigation_mask)
    axis_dict = getattr(model, "signal_axis_", None)
    n_expected = int(model.n_features_in_)
    if axis_dict is None:
        t = table(signal, navigation_mask)
        if t.axis.size != n_expected:
            raise ValueError(f"the model expects {n_expected} channels but the signal has "
                             f"{t.axis.size}; the model records no energy axis to resample "
                             "onto (fit it through s.mlspec to record one).")
        return t
    model_axis = AxisInfo.from_dict(axis_dict)
    t = table(signal, navigation_mask)
    resample = alignment(t.axis, model_axis)
    if resample is None:
        if t.axis.size != n_expected:
            raise ValueError(f"the model expects {n_expected} channels, got {t.axis.size}")
        return t
    if t.lazy:
        rows = t.rows.map_blocks(resample, chunks=(t.rows.chunks[0], (model_axis.size,)),
                                 dtype=np.float32)
    else:
        rows = resample(t.rows)
    return SpectraTable(rows, t.nav_index, t.nav_shape, None, model_axis, t.lazy)


# -- outputs --------------------------------------------------------------------------------
def record(signal, operation: str, **details: Any) -> None:
    """Append an operation to ``signal.metadata.MLSpec`` (scalars and strings only, so the
    signal still saves to .hspy/.zspy)."""
    from hyperspy_mlspec._version import __version__

    node = signal.metadata.get_item("MLSpec") if signal.metadata.has_item("MLSpec") else None
    n = len(node.as_dictionary()) if node is not None else 0
    entry = {"operation": operation, "package": f"hyperspy_mlspec {__version__}",
             "date": datetime.datetime.now().isoformat(timespec="seconds")}
    for key, value in details.items():
        entry[key] = value if isinstance(value, (str, int, float, bool)) else json.dumps(
            value, default=str)
    signal.metadata.set_item(f"MLSpec.operation_{n}", entry)


def signal_like(signal, data, title: str, axis: AxisInfo | None = None):
    """A signal of the same class, navigation axes and metadata as ``signal``.

    ``data`` has the navigation shape of ``signal`` plus the signal axis: the original one
    (``axis`` None or equal) or ``axis`` (e.g. a model's channels). Title is replaced.
    """
    am = signal.axes_manager
    sig_axis = am.signal_axes[0]
    same = axis is None or (axis.size == sig_axis.size and np.allclose(
        np.asarray(sig_axis.axis, dtype=np.float64),
        np.asarray(axis.values), rtol=0, atol=1e-9 * max(1.0, float(np.abs(axis.values).max()))))
    if same:
        out = signal._deepcopy_with_new_data(data)
    else:
        axes = [a.get_axis_dictionary() for a in am._axes if a.navigate]
        axes.append(axis.hyperspy_axis_dict(sig_axis.units if sig_axis.units not in (
            None, "<undefined>") else None))
        out = type(signal)(data, axes=axes, metadata=signal.metadata.as_dictionary(),
                           original_metadata=signal.original_metadata.as_dictionary())
    out.metadata.General.title = title
    return out


def vector_signal(signal, data, title: str, axis_name: str):
    """A Signal1D holding a vector per pixel (latent codes, embeddings) with the navigation
    axes of ``signal``; lazy when ``data`` is a dask array."""
    from hyperspy import signals

    axes = [a.get_axis_dictionary() for a in signal.axes_manager._axes if a.navigate]
    axes.append({"name": axis_name, "size": int(data.shape[-1]), "navigate": False,
                 "units": "<undefined>"})
    cls = signals.LazySignal1D if hasattr(data, "dask") else signals.Signal1D
    out = cls(data, axes=axes)
    out.metadata.General.title = title
    return out


def navigation_image(signal, data, title: str, quantity: str | None = None):
    """A navigation-shaped map (Signal2D for 2-D navigation, Signal1D for a line, BaseSignal
    for a single spectrum) with the navigation axes of ``signal``."""
    out = signal._get_navigation_signal(data=data)
    out.set_signal_type("")
    out.metadata.General.title = title
    if quantity:
        out.metadata.set_item("Signal.quantity", quantity)
    return out


# -- files ----------------------------------------------------------------------------------
class HDF5Slicer:
    """Array-like view of an HDF5 dataset given by file name and dataset path.

    Unlike an open ``h5py.Dataset`` it pickles (as its file name and path), so dask graphs
    built on it run on worker processes and ``dask.distributed`` clusters that see the same
    file system. Each process opens the file once, read-only.
    """

    _files: dict = {}
    _lock = threading.Lock()

    def __init__(self, filename: str, name: str, shape: tuple, dtype) -> None:
        self.filename, self.name = str(filename), str(name)
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)

    def __reduce__(self):
        return (HDF5Slicer, (self.filename, self.name, self.shape, self.dtype.str))

    def __getitem__(self, index):
        import h5py

        with HDF5Slicer._lock:
            f = HDF5Slicer._files.get(self.filename)
            if f is None or not f.id.valid:
                f = HDF5Slicer._files[self.filename] = h5py.File(self.filename, "r")
            return f[self.name][index]


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


def _distributed_client():
    """The dask.distributed client computations currently go to, or None."""
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


def save(signal, path, **kwargs: Any) -> None:
    """``signal.save(path, **kwargs)`` that also works for lazy results computed on a
    ``dask.distributed`` cluster.

    HyperSpy writes lazy data with ``dask.array.store`` into an open HDF5 dataset, which
    cannot travel to worker processes. With a distributed client active, each block is
    computed on the cluster and written here, one block at a time (memory stays bounded by
    the block size). Otherwise this is plain ``signal.save``.
    """
    client = _distributed_client() if is_lazy(signal) else None
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
