"""Signal-axis descriptions, unit conversion (pint) and resampling between calibrations.

A model remembers the energy axis it was trained on (:class:`AxisInfo`). Applying it to a
signal with another calibration converts units (keV vs eV), resamples onto the model's
channels when the signal covers them, and refuses clearly otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

UNDEFINED = ("", "<undefined>", "undefined", None)  # what "no units" looks like


@lru_cache(maxsize=1)
def _registry():
    import pint

    return pint.UnitRegistry()


def convert(values: Any, from_units: str | None, to_units: str | None) -> np.ndarray:
    """Convert values between units with pint (identity when either is undefined).

    Examples
    --------
    >>> convert([0.6], "keV", "eV")
    array([600.])
    """
    values = np.asarray(values, dtype=np.float64)
    if from_units in UNDEFINED or to_units in UNDEFINED or from_units == to_units:
        return values
    ureg = _registry()
    try:
        return np.asarray((values * ureg(from_units)).to(to_units).magnitude, dtype=np.float64)
    except Exception as exc:  # pint raises several error types
        raise ValueError(f"cannot convert axis units {from_units!r} to {to_units!r}: "
                         f"{exc}") from None


def parse_position(value: Any, units: str | None) -> float:
    """A position on an axis: a number (axis units), a string like ``"0.6 keV"`` or a pint
    quantity, returned as a float in ``units``.

    Examples
    --------
    >>> parse_position("0.6 keV", "eV")
    600.0
    >>> parse_position(532, "eV")
    532.0
    """
    if isinstance(value, (int, float, np.number)):
        return float(value)
    ureg = _registry()
    quantity = ureg(value) if isinstance(value, str) else value
    if not hasattr(quantity, "to"):
        return float(quantity)
    if units in UNDEFINED:
        if quantity.dimensionless:
            return float(quantity.magnitude)
        raise ValueError(f"the signal axis has no units, so {value!r} cannot be placed on it; "
                         "give a plain number in axis units or set the axis units.")
    try:
        return float(quantity.to(units).magnitude)
    except Exception:
        raise ValueError(f"{value!r} cannot be converted to the axis units {units!r}") from None


@dataclass
class AxisInfo:
    """A 1-D signal axis: name, units and the channel positions.

    Examples
    --------
    >>> ax = AxisInfo("Energy", "eV", np.arange(4.0))
    >>> AxisInfo.from_dict(ax.to_dict()).values
    array([0., 1., 2., 3.])
    """

    name: str
    units: str | None
    values: np.ndarray

    @property
    def size(self) -> int:
        return int(self.values.size)

    def uniform(self) -> tuple[float, float] | None:
        """``(offset, scale)`` when channels are evenly spaced, else None."""
        if self.size < 2:
            return (float(self.values[0]), 1.0) if self.size else None
        steps = np.diff(self.values)
        if np.allclose(steps, steps[0], rtol=1e-6, atol=1e-12 * abs(steps[0])):
            return float(self.values[0]), float(steps[0])
        return None

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"name": self.name, "units": self.units, "size": self.size}
        u = self.uniform()
        if u is not None:
            d["offset"], d["scale"] = u
        else:
            d["values"] = self.values.tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AxisInfo:
        if "values" in d:
            values = np.asarray(d["values"], dtype=np.float64)
        else:
            values = d["offset"] + d["scale"] * np.arange(d["size"])
        return cls(d["name"], d.get("units"), values)


def alignment(data_axis: AxisInfo, model_axis: AxisInfo, max_outside: float = 0.05):
    """How to bring spectra on ``data_axis`` onto ``model_axis``.

    Returns None when the axes match (same channels), else a function resampling rows
    (``(n, data_size) -> (n, model_size)``, linear interpolation). Raises ValueError when the
    axes cannot be matched: incompatible units, or the data cover less of the model's range
    than ``1 - max_outside`` of its channels.
    """
    model_units = model_axis.units
    if (data_axis.units in UNDEFINED) != (model_units in UNDEFINED):
        if data_axis.size == model_axis.size:
            return None  # one side uncalibrated: trust the channel count
        raise ValueError(
            f"the model expects {model_axis.size} channels on a calibrated axis "
            f"({_describe(model_axis)}), but the signal has {data_axis.size} channels and "
            "no comparable calibration; calibrate the signal axis or crop it to the model's "
            "channels.")
    x = convert(data_axis.values, data_axis.units, model_units)
    target = model_axis.values
    if x.size == target.size and np.allclose(x, target, rtol=0, atol=1e-6 * _step(target)):
        return None
    if data_axis.units in UNDEFINED and x.size != target.size:
        raise ValueError(f"the model expects {target.size} channels but the signal has "
                         f"{x.size} and neither axis is calibrated.")
    order = np.argsort(x)
    x = x[order]
    half = 0.5 * _step(target)
    inside = (target >= x[0] - half) & (target <= x[-1] + half)
    if inside.mean() < 1 - max_outside:
        raise ValueError(
            f"the model was trained on {_describe(model_axis)} but the signal covers "
            f"{_describe(AxisInfo(data_axis.name, model_units, x))}: they overlap on "
            f"{inside.mean():.0%} of the model's channels. Use a signal that covers the "
            "model's energy range, or train a model on this range.")

    # counts per channel scale with the channel width: keep counts per unit energy
    width_ratio = np.float32(_step(target) / _step(x))
    idx = np.clip(np.searchsorted(x, target) - 1, 0, x.size - 2)
    w = ((target - x[idx]) / (x[idx + 1] - x[idx])).clip(0, 1).astype(np.float32)

    def resample(rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.float32)[:, order]
        out = rows[:, idx] * (1 - w) + rows[:, idx + 1] * w
        return out * width_ratio if width_ratio != 1 else out

    return resample


def _step(values: np.ndarray) -> float:
    return float(np.median(np.abs(np.diff(values)))) if values.size > 1 else 1.0


def _describe(ax: AxisInfo) -> str:
    units = ax.units or "channels"
    return f"{ax.values.min():.4g}-{ax.values.max():.4g} {units} ({ax.size} channels)"
