"""Signal helpers shared by the anomaly, latent-map and batch workflows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hyperspy_mlspec import signals as sio
from hyperspy_mlspec.arrays import AxisInfo
from hyperspy_mlspec.scoring.scores import METRICS
from hyperspy_mlspec.signals.outputs import axis_dict


def title_of(signal) -> str:
    return str(signal.metadata.General.title or "signal")


def nav_ndim(signal) -> int:
    return int(signal.axes_manager.navigation_dimension)


def nonfinite_rows(signal) -> np.ndarray:
    """Flat boolean array (array order): True where a spectrum holds NaN or infinity."""
    rows = sio.rows_of(signal)
    if np.issubdtype(rows.dtype, np.integer):
        return np.zeros(rows.shape[0], dtype=bool)
    if sio.is_lazy(signal):
        import dask.array as da

        return ~np.asarray(da.isfinite(rows).all(axis=1).compute())
    return ~np.isfinite(rows).all(axis=1)


def excluded_pixels(signal, navigation_mask, nonfinite: np.ndarray | None) -> np.ndarray:
    """Flat mask of pixels left out (user mask, non-finite spectra); clear error if all are."""
    n_nav = int(np.prod(signal.data.shape[: nav_ndim(signal)], dtype=np.int64))
    user = sio.navigation_mask_array(signal, navigation_mask) if nav_ndim(signal) else None
    mask = np.zeros(n_nav, dtype=bool) if user is None else user.copy()
    if nonfinite is not None:
        mask |= nonfinite
    if mask.all():
        raise ValueError(
            "no spectrum is left to analyse: every pixel is excluded by navigation_mask or "
            f"holds NaN/infinity ({int(0 if nonfinite is None else nonfinite.sum())} "
            "non-finite). True in navigation_mask marks pixels to EXCLUDE.")
    return mask


def mask_arg(signal, flat: np.ndarray) -> np.ndarray | None:
    """Navigation mask array (array order) for :mod:`signal_io`, None when nothing is out."""
    if not flat.any():
        return None
    return flat.reshape(signal.data.shape[: nav_ndim(signal)])


def resolve_metric(metric: str, model, signal) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if metric != "auto":
        return metric
    loss = getattr(model, "loss_", None)
    if loss is not None:
        return "deviance" if loss == "poisson" else "mse"
    from hyperspy_mlspec.estimators.base import looks_like_counts

    sample = sio.rows_of(signal)[:256]  # the first block only, when lazy
    sample = np.asarray(sample.compute() if hasattr(sample, "compute") else sample)
    sample = sample[np.isfinite(sample).all(axis=1)]
    return "deviance" if looks_like_counts(sample) else "mse"


def full_grid(n: int, index: np.ndarray | None, values: np.ndarray, fill=np.nan) -> np.ndarray:
    """Values of the table rows put back on the flat navigation grid."""
    values = np.asarray(values)
    out = np.full((n,) + values.shape[1:], fill, dtype=np.float64)
    if index is None:
        out[:] = values
    else:
        out[index] = values
    return out


def anomaly_record(signal) -> dict:
    """The last ``anomaly_map`` entry of ``metadata.MLSpec`` (empty dict if none)."""
    if not signal.metadata.has_item("MLSpec"):
        return {}
    found: dict = {}
    for entry in signal.metadata.MLSpec.as_dictionary().values():
        if isinstance(entry, dict) and entry.get("operation") == "anomaly_map":
            found = entry
    return found


def check_ndim(signal, what: str) -> None:
    if nav_ndim(signal) > 2:
        raise ValueError(f"{what} supports navigation dimensions 0, 1 and 2; this signal has "
                         f"{nav_ndim(signal)}. Fold or slice it first (s.inav[...]).")


def spectra_signal(signal, data: np.ndarray, title: str, axis: AxisInfo | None = None,
                    nav_name: str | None = None, nav_values: Sequence | None = None):
    """Small in-memory signal of the class of ``signal`` holding one spectrum (``data`` 1-D)
    or a stack of spectra along a navigation axis ``nav_name`` (``data`` 2-D)."""
    from hyperspy.signals import BaseSignal

    sig_axis = signal.axes_manager.signal_axes[0]
    if axis is None:
        sig_dict = dict(sig_axis.get_axis_dictionary(), navigate=False)
    else:
        units = sig_axis.units if sig_axis.units not in (None, "<undefined>") else None
        sig_dict = axis_dict(axis, units)
    axes = []
    data = np.asarray(data)
    if data.ndim == 2:
        axes.append({"name": nav_name or "index", "size": int(data.shape[0]), "offset": 0.0,
                     "scale": 1.0, "units": "<undefined>", "navigate": True})
    for key in ("_type", "is_binned"):
        sig_dict.pop(key, None)
    axes.append(sig_dict)
    metadata = signal.metadata.as_dictionary()
    metadata.pop("MLSpec", None)
    out = BaseSignal(data, axes=axes, metadata=metadata)
    out.axes_manager.signal_axes[0].is_binned = sig_axis.is_binned
    out._assign_subclass()
    out.metadata.General.title = title
    return out


def nav_axes_array_order(signal) -> list:
    return list(signal.axes_manager.navigation_axes)[::-1]


def calibrated(signal, index: Sequence[float]) -> tuple[float, ...]:
    """Calibrated position (HyperSpy order, x first) of a fractional array-order index."""
    out = []
    for ax, i in zip(nav_axes_array_order(signal), index, strict=True):
        values = np.asarray(ax.axis, dtype=np.float64)
        out.append(float(np.interp(i, np.arange(values.size), values)))
    return tuple(out[::-1])


def navigation_stack(signal, data: np.ndarray, title: str, quantity: str, name: str,
                     values: Sequence[float], units: str = "<undefined>"):
    """A stack of navigation-shaped maps (``data`` is ``(n, *navigation)``): navigation axis
    ``name`` with ``values``, signal axes = the navigation axes of ``signal``."""
    from hyperspy import signals

    first = sio.navigation_image(signal, data[0], title, quantity)
    axes = [{"name": name, "axis": np.asarray(values, dtype=np.float64), "units": units,
             "navigate": True}]
    axes += [dict(ax.get_axis_dictionary(), navigate=False) for ax in first.axes_manager._axes]
    cls = signals.Signal2D if data.ndim == 3 else signals.Signal1D
    out = cls(np.asarray(data), axes=axes)
    out.metadata.General.title = title
    out.metadata.set_item("Signal.quantity", quantity)
    return out
