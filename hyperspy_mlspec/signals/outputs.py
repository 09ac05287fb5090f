"""Signals out: results become HyperSpy signals with the input's axes and metadata.

Outputs keep the class, navigation axes (names, scales, offsets, units, non-uniform axes)
and metadata of the input, get a title saying what was done, and record the operation in
``metadata.MLSpec`` (scalars and strings only, so they still save to .hspy/.zspy). The input
is never modified.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import numpy as np

from hyperspy_mlspec.arrays import AxisInfo, convert
from hyperspy_mlspec.arrays.axis import UNDEFINED


def axis_dict(axis: AxisInfo, units: str | None = None) -> dict:
    """A HyperSpy signal-axis dictionary for ``axis`` (converted to ``units`` if given)."""
    values = convert(axis.values, axis.units, units) if units else axis.values
    u = AxisInfo(axis.name, units or axis.units, values).uniform()
    d: dict[str, Any] = {"name": axis.name, "units": units or axis.units or "<undefined>",
                         "navigate": False}
    if u is not None:
        d.update(offset=u[0], scale=u[1], size=axis.size)
    else:
        d["axis"] = values
    return d


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
        axes.append(axis_dict(axis, sig_axis.units if isinstance(sig_axis.units, str) and
                              sig_axis.units not in UNDEFINED else None))
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


def shift_image(signal, shift, title: str, what: str = "Energy shift"):
    """A per-pixel energy shift measured in channels (``nav_shape`` array) as a navigation
    image in the units of ``signal``'s energy axis (channels when it has none).

    Examples
    --------
    >>> import numpy as np
    >>> import hyperspy_mlspec
    >>> s = hyperspy_mlspec.data.eels_map((4, 4), n_channels=64)
    >>> out = shift_image(s, np.ones((4, 4)), "shift")
    >>> out.metadata.Signal.quantity, float(out.data[0, 0]) == s.axes_manager[-1].scale
    ('Energy shift (eV)', True)
    """
    import numpy as np

    units = shift_units(signal)
    factor = float(signal.axes_manager.signal_axes[0].scale) if units != "channels" else 1.0
    data = (np.asarray(shift, dtype=np.float64) * factor).astype(np.float32)
    return navigation_image(signal, data, title, f"{what} ({units})")


def shift_units(signal) -> str:
    """Units of an energy shift on ``signal``: its energy axis' units, or ``"channels"``
    when the axis has none."""
    units = signal.axes_manager.signal_axes[0].units
    return units if isinstance(units, str) and units not in ("<undefined>", "") else "channels"


class SignalOutputs:
    """The :class:`~hyperspy_mlspec.arrays.Reassembler` of tables made from a signal: the
    core's full-grid results become signals with the navigation axes of ``signal``, their
    operation recorded in ``metadata.MLSpec``."""

    def __init__(self, signal) -> None:
        self.signal = signal

    def vectors(self, data, title: str, axis_name: str, **details: Any):
        out = vector_signal(self.signal, data, title, axis_name)
        _record_details(out, details)
        return out

    def image(self, data, title: str, quantity: str | None = None, **details: Any):
        out = navigation_image(self.signal, data, title, quantity)
        _record_details(out, details)
        return out

    def spectra(self, data, title: str, axis: AxisInfo, **details: Any):
        out = signal_like(self.signal, data, title, axis=axis)
        _record_details(out, details)
        return out


def _record_details(out, details: dict) -> None:
    if details:
        details = dict(details)
        record(out, details.pop("operation", "result"), **details)
