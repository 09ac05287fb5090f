"""Per-spectrum (and per-channel) normalisation, inverted exactly on output.

A normalised spectrum is ``x_n[i, j] = x[i, j] / (r[i] * c[j])``: ``r`` is a per-spectrum scale
computed from the spectrum itself (so it needs no state and works on new data), ``c`` a
per-channel scale fitted once on training data. Models see ``x_n``; their outputs are mapped
back with the same factors, so every result is in the units of the input.

kinds
-----
none
    ``r = 1``; ``c`` is one global constant bringing the data to order one.
sum
    ``r`` = mean counts per channel of the spectrum: models learn spectral shape, intensity
    (thickness, dose) is carried by ``r``.
max
    ``r`` = largest absolute value of the spectrum.
poisson
    ``r = sqrt(row mean)``, ``c = sqrt(channel mean)``: the Keenan-Kotula weighting that makes
    Poisson noise roughly homoscedastic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

KINDS = ("none", "sum", "max", "poisson")


@dataclass
class Normalizer:
    """Per-spectrum normalisation with a fitted per-channel scale.

    Parameters
    ----------
    kind
        One of ``"none"``, ``"sum"``, ``"max"``, ``"poisson"``.

    Examples
    --------
    >>> import numpy as np, torch
    >>> X = np.abs(np.random.default_rng(0).normal(size=(50, 8))) + 1
    >>> norm = Normalizer("sum").fit(X)
    >>> Xn, m = norm.forward(torch.as_tensor(X, dtype=torch.float32))
    >>> bool(torch.allclose(Xn * m, torch.as_tensor(X, dtype=torch.float32)))
    True
    """

    kind: str = "sum"
    channel_scale: np.ndarray | None = field(default=None, repr=False)
    row_floor: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"normalization must be one of {KINDS}, got {self.kind!r}")

    def _row_raw(self, X):
        lib = torch if isinstance(X, torch.Tensor) else np
        if self.kind == "none":
            return lib.ones_like(X[:, :1])
        if self.kind == "max":
            return abs(X).max(1, keepdims=True) if lib is np else X.abs().amax(1, keepdim=True)
        mean = X.mean(1, keepdims=True) if lib is np else X.mean(1, keepdim=True)
        return lib.sqrt(mean.clip(0)) if self.kind == "poisson" else mean

    def fit(self, X: np.ndarray) -> Normalizer:
        """Fit the channel scale on a sample of rows (numpy array)."""
        X = np.asarray(X, dtype=np.float64)
        r = self._row_raw(X)
        positive = r[r > 0]
        self.row_floor = float(1e-3 * positive.mean()) if positive.size else 1.0
        r = np.maximum(r, self.row_floor)
        if self.kind == "poisson":
            c = np.sqrt(np.clip(X.mean(0), 0, None))
            positive_c = c[c > 0]
            c = np.maximum(c, 1e-3 * positive_c.mean() if positive_c.size else 1.0)
        else:
            c = np.ones(X.shape[1])
        g = float(np.mean(np.abs(X / (r * c))))
        self.channel_scale = (c * (g if g > 0 and np.isfinite(g) else 1.0)).astype(np.float32)
        return self

    def row_scale(self, X: torch.Tensor) -> torch.Tensor:
        """Per-spectrum scale ``r`` of shape ``(n, 1)`` (floored to avoid division by zero)."""
        return self._row_raw(X).clamp_min(self.row_floor if self.row_floor > 0 else 1e-12)

    def multiplier(self, r: torch.Tensor) -> torch.Tensor:
        """Return ``r[i] * c[j]``, the factor mapping normalised values back to data units."""
        c = torch.as_tensor(self.channel_scale, device=r.device, dtype=r.dtype)
        return r * c

    def forward(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(X / m, m)`` with ``m = r c`` the per-element multiplier."""
        m = self.multiplier(self.row_scale(X))
        return X / m, m

    def to_dict(self) -> dict:
        """JSON-able state (the channel scale travels with the weights)."""
        return {"kind": self.kind, "row_floor": self.row_floor}
