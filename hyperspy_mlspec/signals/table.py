"""Signals in: a HyperSpy signal becomes a :class:`~hyperspy_mlspec.arrays.SpectraTable`.

Rows are the spectra with the navigation flattened in array order, restricted by
``navigation_mask`` / ``signal_mask`` / ``signal_range``, in memory or lazy (bounded row
blocks); the signal axis is read once into an :class:`~hyperspy_mlspec.arrays.AxisInfo`
(uncalibrated axes, non-uniform axes and odd units included). Integer counts stay integers
here (estimators convert rows as they read them), and nothing is ever written to the
signal's data. The table carries a :class:`~hyperspy_mlspec.signals.outputs.SignalOutputs`,
so the core can hand results back as signals.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hyperspy_mlspec.arrays import AxisInfo, SpectraTable, parse_position
from hyperspy_mlspec.arrays.axis import UNDEFINED


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


def lazy_row_chunks(data, nav_ndim: int, max_rows: int | None = None):
    """Rechunk a lazy ``nav + (channels,)`` array so that flattening the navigation gives
    row blocks that fit the memory budget.

    The signal axis becomes one chunk (a block holds whole spectra). A block holds about as
    many spectra as the largest current chunk, but at most ``max_rows`` (default:
    :func:`~hyperspy_mlspec.arrays.chunks.block_rows`, every block in flight within the
    memory budget, whatever the chunks of the file). Flattening in array order needs every
    navigation axis after the first to be whole within a block, so the first axis is
    chunked (at least one line of the map; a multiple of the current chunks when they are
    smaller). Without this, dask's reshape would merge chunks into blocks of whole map lines
    times the chunk height, or more. Arrays read straight from a file are re-read with the
    new chunks (:func:`~hyperspy_mlspec.signals.files.reread`), not rechunked.

    Examples
    --------
    >>> import dask.array as da
    >>> x = da.zeros((64, 32, 128), chunks=(32, 32, 128))
    >>> lazy_row_chunks(x, 2, max_rows=256).chunks[0][:2]  # 8 lines of 32 spectra
    (8, 8)
    """
    from hyperspy_mlspec.arrays.chunks import block_rows, memory_budget
    from hyperspy_mlspec.signals.files import reread

    n_values = int(np.prod(data.shape[nav_ndim:], dtype=np.int64))
    if max_rows is None:
        max_rows = block_rows(n_values, itemsize=data.dtype.itemsize)
    max_rows = max(1, int(max_rows))
    if nav_ndim == 0:
        return data.rechunk(-1) if len(data.chunks[-1]) > 1 else data
    inner = int(np.prod(data.shape[1:nav_ndim], dtype=np.int64))
    current = max(int(np.prod([max(c) for c in data.chunks[:nav_ndim]], dtype=np.int64)), 1)
    whole = all(len(c) == 1 for c in data.chunks[1:])
    height = max(data.chunks[0])
    lead = max(1, min(current, max_rows) // max(inner, 1))
    if height <= lead:
        if whole:
            return data  # whole lines and spectra, within the budget: as they are
        if nav_ndim == 1:
            return data.rechunk({data.ndim - 1: -1})
        lead = (lead // height) * height  # whole current chunks: each read once
    return reread(data, (lead,) + (-1,) * (data.ndim - 1), memory_budget())


def rows_of(signal):
    """All spectra of a 1-D-signal signal as a 2-D ``(n_navigation, n_channels)`` array
    (navigation flattened in array order); lazy signals give bounded row blocks (see
    :func:`lazy_row_chunks`)."""
    am = signal.axes_manager
    data = signal.data
    if is_lazy(signal):
        data = lazy_row_chunks(data, am.navigation_dimension)
    return data.reshape((-1, am.signal_axes[0].size))


def axis_info(axis, channels: np.ndarray | None = None) -> AxisInfo:
    """The core's description of a HyperSpy signal axis (uniform or not), optionally of
    selected channels only; undefined names and units become ``"channel"`` and None."""
    values = np.asarray(axis.axis, dtype=np.float64)
    if channels is not None:
        values = values[channels]
    units = axis.units if isinstance(axis.units, str) and axis.units not in UNDEFINED else None
    name = axis.name if isinstance(axis.name, str) and axis.name not in UNDEFINED else (
        "channel")
    return AxisInfo(name, units, values)


def table(signal, navigation_mask=None, signal_mask=None, signal_range=None,
          check_finite: bool = True) -> SpectraTable:
    """Rows of ``signal`` for fitting or applying a model.

    Parameters
    ----------
    signal
        A HyperSpy signal with one signal dimension (any navigation dimension, lazy or not).
    navigation_mask
        Boolean array or signal of the navigation shape; True excludes a pixel.
    signal_mask
        Boolean array over channels; True excludes a channel.
    signal_range
        ``(start, end)`` in axis units, as numbers, strings (``"0.6 keV"``) or pint
        quantities.
    check_finite
        Refuse NaN/inf in the kept rows (in memory; lazy blocks are checked as they are
        read).

    Returns
    -------
    SpectraTable
        With the signal's outputs attached (results come back as signals).

    Examples
    --------
    >>> import hyperspy.api as hs, numpy as np
    >>> t = table(hs.signals.Signal1D(np.zeros((3, 4, 16))))
    >>> t.rows.shape, t.nav_shape
    ((12, 16), (3, 4))
    """
    from hyperspy_mlspec.signals.outputs import SignalOutputs

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
    title = signal.metadata.get_item("General.title", "") or type(signal).__name__
    return SpectraTable(rows, nav_index, nav_shape, channels,
                        axis_info(am.signal_axes[0], channels), lazy, name=repr(title),
                        reassemble=SignalOutputs(signal), source=signal)


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
    """Rows of ``signal`` as a fitted model takes them: its own input rule when it has one
    (:class:`~hyperspy_mlspec.estimators.TakesTables`: resampling onto the model's energy
    axis, the MAE's grid), else the channels of its recorded training axis."""
    from hyperspy_mlspec.arrays.table import on_model_axis
    from hyperspy_mlspec.estimators.protocols import TakesTables

    t = table(signal, navigation_mask)
    if isinstance(model, TakesTables):
        return model.prepare_table(t)
    return on_model_axis(t, getattr(model, "signal_axis_", None), int(model.n_features_in_))


def signal_adapter(obj: Any, name: str, navigation_mask: Any) -> list[SpectraTable] | None:
    """:func:`~hyperspy_mlspec.arrays.as_tables` for HyperSpy signals (registered on
    import)."""
    from hyperspy.signal import BaseSignal

    if not isinstance(obj, BaseSignal):
        return None
    t = table(obj, navigation_mask)
    t.name = f"{name} ({t.name})" if name != "X" else t.name
    return [t]


def check_alignable(signal, lazy: bool, n_channels: int, what: str,
                    min_channels: int = 2) -> None:
    """Refuse, naming the fix, what cannot be aligned: spectra are moved by fractions of a
    channel in memory, so not a lazy signal (``lazy``: the caller would load it whole),
    not a non-uniform signal axis, not fewer than ``min_channels`` channels. ``what``
    names the request in the messages.

    Examples
    --------
    >>> import hyperspy_mlspec
    >>> s = hyperspy_mlspec.data.eels_map((2, 3), n_channels=16)
    >>> check_alignable(s, True, 16, "align=True")
    Traceback (most recent call last):
    ...
    ValueError: align=True aligns the spectra of the whole map in memory, ...
    """
    if lazy:
        raise ValueError(f"{what} aligns the spectra of the whole map in memory, which a "
                         "lazy signal would have to load; compute it first (s.compute()), "
                         "pass a crop (s.inav[...]) or use align=False.")
    if not getattr(signal.axes_manager.signal_axes[0], "is_uniform", True):
        raise ValueError(f"{what} moves spectra by fractions of a channel, which needs a "
                         "uniform signal axis; resample it first (s.interpolate_on_axis) or "
                         "use align=False.")
    if n_channels < min_channels:
        raise ValueError(f"{what} needs at least {min_channels} channels, got {n_channels}")


def is_shift_map(align: Any) -> bool:
    """Whether ``align`` is a shift map (a signal or an array) rather than a mode.

    Examples
    --------
    >>> is_shift_map("auto"), is_shift_map(True), is_shift_map(np.zeros((2, 3)))
    (False, False, True)
    """
    return not isinstance(align, (str, bool, np.bool_)) and align is not None


def shift_map_channels(align: Any, signal: Any, valid: np.ndarray, lazy: bool,
                       n_channels: int) -> np.ndarray:
    """A user's per-pixel energy shift in channels, relative to its mean over the valid
    pixels, with a clear error for every way it can be wrong.

    Parameters
    ----------
    align
        A navigation image or array of the navigation shape (array order), in the units
        of the signal axis (e.g. eV): the displacement of each pixel's spectrum, as
        ``return_shift=True`` gives it.
    signal
        The signal the shifts belong to (its signal axis gives the channel width).
    valid
        Boolean navigation-shape mask of the pixels used (the others may be NaN).
    lazy
        Whether the caller would have to load a lazy signal to align it (refused).
    n_channels
        Channels of the spectra.

    Examples
    --------
    >>> import hyperspy_mlspec
    >>> s = hyperspy_mlspec.data.eels_map((2, 3), n_channels=64)
    >>> shift_map_channels(np.full((2, 3), s.axes_manager[-1].scale), s,
    ...                    np.ones((2, 3), bool), False, 64)
    array([[0., 0., 0.],
           [0., 0., 0.]])
    """
    nav_shape = tuple(valid.shape)
    values = getattr(align, "data", align)
    values = values.compute() if hasattr(values, "compute") else values
    try:
        values = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"align must be 'auto', True, False or a shift map (a signal or an "
                        f"array of the navigation shape {nav_shape}), got "
                        f"{type(align).__name__}") from None
    if values.shape != nav_shape:
        raise ValueError(f"the shift map given as align has shape {values.shape}, but the "
                         f"signal's navigation (array order) is {nav_shape}: give one shift "
                         "per pixel (e.g. the output of return_shift=True, or the zero-loss "
                         "peak centres of the low-loss signal acquired with this map).")
    check_alignable(signal, lazy, n_channels, "a given shift map")
    axis = signal.axes_manager.signal_axes[0]
    bad = valid & ~np.isfinite(values)
    if bad.any():
        raise ValueError(f"the shift map given as align is NaN or infinite at {int(bad.sum())} "
                         "pixels that are used: give every pixel a shift, or exclude "
                         "those pixels with navigation_mask.")
    scale = float(axis.scale)
    shift = np.where(valid, values, 0.0) / scale
    shift = np.where(valid, shift - shift[valid].mean(), 0.0)
    if np.abs(shift).max() >= n_channels / 2:
        raise ValueError(f"the shift map given as align spans {np.ptp(shift[valid]):.3g} "
                         f"channels, more than half of the {n_channels} channels: shifts are "
                         f"in the units of the signal axis ({axis.units}), not in channels.")
    return shift
