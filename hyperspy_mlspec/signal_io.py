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


def table(signal, navigation_mask=None, signal_mask=None, signal_range=None,
          check_finite: bool = True) -> SpectraTable:
    """Rows of ``signal`` for fitting or applying a model (see :class:`SpectraTable`)."""
    check_signal(signal)
    am = signal.axes_manager
    nav_shape = tuple(signal.data.shape[: am.navigation_dimension])
    n_channels = am.signal_axes[0].size
    rows = signal.data.reshape((-1, n_channels))
    nav_flat = navigation_mask_array(signal, navigation_mask)
    channels = signal_channels(signal, signal_mask, signal_range)
    lazy = is_lazy(signal)
    nav_index = None if nav_flat is None or not nav_flat.any() else np.flatnonzero(~nav_flat)
    if nav_index is not None:
        rows = rows[nav_index]
    if channels is not None:
        rows = rows[:, channels]
    if lazy:
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
    from hyperspy_mlspec import __version__

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
