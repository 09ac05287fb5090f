"""How spectra reach the masked autoencoder: the pretraining pool and the model's grid.

Every input (arrays, signals, files: see :func:`hyperspy_mlspec.arrays.as_tables`) becomes
a table, is restricted to the common ``signal_range`` (if any) and resampled onto the
model's ``n_channels_`` bins (:class:`PoolInputs`, a mixin of
:class:`~hyperspy_mlspec.estimators.mae.MaskedAutoencoder`).

The grid (``n_channels="auto"``, ``patch_size="auto"``) comes from the data
(:func:`auto_grid`): the pool's own channel count (the largest item's, within
``signal_range``), rounded to a multiple of a patch width chosen for about
``AUTO_PATCHES`` patches, at most ``MAX_AUTO_CHANNELS`` bins. The cost of the encoder
grows with the number of patches (tokens), not with the channels, so a 162-channel map
and a 2048-channel map cost the same per spectrum, and no map is resampled onto many more
bins than it has (the former fixed 2048-bin grid did 12.6x the work on 162 channels).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.utils.validation import check_is_fitted

from hyperspy_mlspec.arrays import (
    AxisInfo,
    SpectraTable,
    alignment,
    as_tables,
    convert,
    parse_position,
)
from hyperspy_mlspec.engine import ArraySource, DaskSource, PoolSource
from hyperspy_mlspec.engine.sources import RowSource
from hyperspy_mlspec.estimators.base import is_dask


@dataclass
class _Item:
    """One entry of the pretraining pool: its rows and what was done to them."""

    source: RowSource
    transform: Callable[[np.ndarray], np.ndarray] | None
    record: dict


AUTO_PATCHES = 32
MAX_AUTO_CHANNELS = 4096


def auto_grid(n_data: int, n_channels: int | str = "auto",
              patch_size: int | str = "auto") -> tuple[int, int]:
    """``(n_channels, patch_size)`` of the model grid for spectra of ``n_data`` channels.

    ``"auto"`` patch width: about ``n / AUTO_PATCHES`` bins (at least 1); with an explicit
    ``n_channels`` the divisor of it nearest that width. ``"auto"`` channels: ``n_data``
    (at most ``MAX_AUTO_CHANNELS``) rounded to the nearest multiple of the patch width,
    at least two patches. Explicit integers are returned as given.

    Examples
    --------
    >>> auto_grid(162), auto_grid(512), auto_grid(1024), auto_grid(40)
    ((160, 5), (512, 16), (1024, 32), (40, 1))
    >>> auto_grid(20000), auto_grid(162, patch_size=8), auto_grid(162, 2048)
    ((4096, 128), (160, 8), (2048, 64))
    """
    n_data = int(n_data)
    if n_channels != "auto":
        n = int(n_channels)
        if patch_size != "auto":
            return n, int(patch_size)
        divisors = [p for p in range(1, n // 2 + 1) if n % p == 0]
        target = max(1.0, n / AUTO_PATCHES)
        return n, min(divisors, key=lambda p: (abs(math.log(p / target)), p))
    span = min(n_data, MAX_AUTO_CHANNELS)
    p = max(1, round(span / AUTO_PATCHES)) if patch_size == "auto" else int(patch_size)
    return max(2, round(span / p)) * p, p


def _as_list(X: Any) -> list:
    if isinstance(X, (list, tuple)):
        if X and isinstance(X[0], (list, tuple)) and X[0] and isinstance(
                X[0][0], numbers.Number):
            return [np.asarray(X)]  # a nested list of numbers is one array
        return list(X)
    return [X]


def _title(t: SpectraTable) -> str:
    return t.name.strip("'")


class PoolInputs:
    """Inputs of the masked autoencoder: pool building, grid and resampling (a mixin: the
    estimator supplies ``n_channels``, ``patch_size``, ``n_patches`` and ``signal_range``;
    the grid it fixes is ``n_channels_`` / ``patch_size_``)."""

    def _range_for(self, axis: AxisInfo, name: str) -> tuple[float, float]:
        """``(start, end)`` of the resampling grid of a spectrum on ``axis``."""
        lo_data, hi_data = float(axis.values.min()), float(axis.values.max())
        rng = getattr(self, "signal_range_", None)
        if rng is None:
            return lo_data, hi_data
        lo, hi, units = rng
        if axis.units is None:
            raise ValueError(f"{name}: signal_range={self.signal_range!r} needs a calibrated "
                             "signal axis, but this one has no units. Set the axis units "
                             "(s.axes_manager[-1].units = 'eV') or drop signal_range.")
        try:
            lo, hi = (float(v) for v in convert([lo, hi], units, axis.units))
        except ValueError:
            raise ValueError(
                f"{name}: its signal axis is in {axis.units!r}, which cannot be converted to "
                f"the pool's signal_range units {units!r}. Pretrain separately on signals "
                "of comparable units, or use signal_range=None (each spectrum over its own "
                "range).") from None
        return lo, hi

    def _resolve_range(self, tables: list[SpectraTable]) -> None:
        """Fix ``signal_range_`` = ``[start, end, units]`` from the parameter and the pool."""
        if self.signal_range is None:
            self.signal_range_ = None
            return
        units = next((t.axis.units for t in tables if t.axis.units is not None), None)
        if units is None:
            raise ValueError("signal_range needs calibrated signals (with axis units) in the "
                             "pool; none has units. Use signal_range=None.")
        lo, hi = (parse_position(v, units) for v in self.signal_range)
        if lo >= hi:
            raise ValueError(f"signal_range start {lo} is not below its end {hi}")
        self.signal_range_ = [float(lo), float(hi), units]

    def _resampler(self, axis: AxisInfo, name: str):
        """``(resample function or None, target axis)`` for spectra on ``axis``."""
        if axis.size < self.n_patches:
            raise ValueError(
                f"{name} has {axis.size} channels (n_features = {axis.size}), fewer than "
                f"the {self.n_patches} patches of the model (n_channels={self.n_channels_}, "
                f"patch_size={self.patch_size_}): "
                "resampling it would invent the spectral detail the model looks at. Use "
                "signals with more channels, or a model with fewer patches (smaller "
                "n_channels or larger patch_size).")
        lo, hi = self._range_for(axis, name)
        units = axis.units or "channel"  # same placeholder on both sides: no pint involved
        target = AxisInfo(axis.name, units, np.linspace(lo, hi, self.n_channels_))
        try:
            fn = alignment(AxisInfo(axis.name, units, axis.values), target)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        return fn, target

    def _grid(self, t: SpectraTable):
        """``(t restricted to the common signal_range, resampling function or None, the
        model's grid)``: how ``t`` reaches the model."""
        t = self._restrict(t)
        fn, target = self._resampler(t.axis, t.name)
        return t, fn, target

    def _restrict(self, t: SpectraTable) -> SpectraTable:
        """``t`` restricted to the common ``signal_range_`` (unchanged without one)."""
        rng = getattr(self, "signal_range_", None)
        if rng is not None:  # keep only channels in (a half-step around) the common range
            if t.axis.units is None and t.reassemble is None:
                raise ValueError(f"{t.name}: an array has no energy axis to apply "
                                 "signal_range to; wrap it in a HyperSpy signal with a "
                                 "calibrated axis, or use signal_range=None.")
            lo, hi = self._range_for(t.axis, t.name)
            values = t.axis.values
            half = 0.5 * float(np.median(np.abs(np.diff(values)))) if values.size > 1 else 0.0
            keep = np.flatnonzero((values >= lo - half) & (values <= hi + half))
            if keep.size < 2:
                raise ValueError(f"{t.name} covers {values.min():.4g}-{values.max():.4g} "
                                 f"{t.axis.units}, outside signal_range {lo:.4g}-{hi:.4g}")
            channels = keep if t.channels is None else t.channels[keep]
            t = t.with_rows(t.rows[:, keep], AxisInfo(t.axis.name, t.axis.units,
                                                      values[keep]), channels)
        return t

    def prepare_table(self, table: SpectraTable) -> SpectraTable:
        """``table`` as this model sees it: on its grid (resampled like the pretraining
        data). Used for every input, so ``s.mlspec.cluster(model=mae)`` and friends
        resample like :meth:`transform`."""
        check_is_fitted(self, "module_")
        t, fn, target = self._grid(table)
        return t.with_rows(t.rows if fn is None else t.map_rows(fn, self.n_channels_), target,
                           t.channels if fn is None else None)

    def _items(self, X, resolve: bool = True) -> list[_Item]:
        tables: list[SpectraTable] = []
        for k, obj in enumerate(_as_list(X)):
            name = f"item {k}"
            if is_dask(obj) or isinstance(obj, np.ndarray):
                name += f" (array {tuple(obj.shape)})"
            tables.extend(as_tables(obj, name))
        if not tables:
            raise ValueError("no spectra to fit: the list of signals is empty")
        if resolve:
            self._resolve_range(tables)
        restricted_tables = [self._restrict(t) for t in tables]
        if resolve:  # a new model: its grid from the pool (largest item)
            self.n_channels_, self.patch_size_ = auto_grid(
                max(t.axis.size for t in restricted_tables), self.n_channels, self.patch_size)
        items = []
        for t, restricted in zip(tables, restricted_tables, strict=True):
            kind = "array" if t.reassemble is None else (
                "signal" if t.name.startswith("item ") else "file")
            fn, _ = self._resampler(restricted.axis, restricted.name)
            if t.rows.shape[0] < 1:
                raise ValueError(f"{t.name} holds no spectra")
            span = restricted.axis.values
            rows = restricted.rows
            source = DaskSource(rows) if restricted.lazy else ArraySource(rows)
            record = {"name": t.name, "kind": kind, "n_spectra": int(rows.shape[0]),
                      "n_channels": int(t.axis.size),
                      "range": [float(span.min()), float(span.max())],
                      "units": t.axis.units,
                      "resampled": bool(fn is not None or t.axis.size != self.n_channels_),
                      "lazy": bool(restricted.lazy)}
            items.append(_Item(source, fn, record))
        return items

    def _pool(self, X, seed: int, resolve: bool = True) -> tuple[PoolSource, list[dict]]:
        """The pretraining pool of ``X``; ``resolve``: fix range and grid from it (a new
        model), else keep the fitted ones (resume, partial_fit)."""
        items = self._items(X, resolve)
        pool = PoolSource([it.source for it in items], [it.transform for it in items],
                          n_features=self.n_channels_, seed=seed)
        return pool, [it.record for it in items]

    def _table(self, X, navigation_mask=None) -> SpectraTable:
        """One table of ``X`` (array, signal...) on the model's grid."""
        check_is_fitted(self, "module_")
        tables = as_tables(X, "X", navigation_mask)
        if len(tables) != 1:
            raise ValueError(f"X holds {len(tables)} signals; give one signal or array")
        return self.prepare_table(tables[0])
