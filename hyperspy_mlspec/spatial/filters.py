"""Blind-spot Gaussian filters over the navigation axes, chosen per coordinate by Noise2Self.

A *coordinate* is one value per pixel (a principal-component score, a channel...), held as a
map of the navigation shape. For a coordinate ``z`` with independent noise from pixel to
pixel, the blind-spot prediction

``m_i = sum_{j != i} w_ij z_j / sum_{j != i} w_ij``  (Gaussian weights ``w`` of width ``sigma``)

never uses ``z_i`` itself (it is *J-invariant*, Batson & Royer 2019), so the Noise2Self loss
``mean((m - z)^2)`` equals the error of ``m`` against the noise-free coordinate plus the
noise variance: it can be minimised on the noisy data alone. :func:`select` picks, per
coordinate, the width whose prediction explains the most of ``z`` (``sigma = inf`` is the
map mean), the least-squares scale ``beta`` of that prediction (shrunk towards 0 unless the
explained power is well above what noise alone explains: a James-Stein-type positive part),
and how much of the pixel's own value to keep: with ``tau^2`` the error of the prediction
(estimated as ``mean((z - beta m)^2) - var``) the combination
``alpha z + (1 - alpha) beta m``, ``alpha = tau^2 / (tau^2 + var)``, is the posterior mean of
a Gaussian model (as in Laine et al. 2019): where neighbours predict a coordinate well the
pixel's noise is averaged away, where they do not (edges, rare pixels) its own value stays.

Boundaries follow ``scipy.ndimage``'s ``mode="reflect"`` (half-sample symmetric), and
masked pixels (``valid == False``) take no part in any prediction (normalised convolution).
Filtering happens in the DCT-II domain (exact for reflect boundaries) for whole maps and with
``scipy.ndimage.gaussian_filter`` for blocks of lazy maps; both give the same numbers.

Arrays only: no HyperSpy here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage

#: widths (pixels) tried for every coordinate; ``inf`` is the map mean
DEFAULT_SIGMAS = (0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0, 5.6, 8.0, 11.0, 16.0, math.inf)
_TRUNCATE = 4.0  # kernel radius in widths, as scipy.ndimage.gaussian_filter


def kernel_1d(sigma: float) -> np.ndarray:
    """The normalised, truncated Gaussian taps of ``scipy.ndimage.gaussian_filter1d``."""
    radius = int(_TRUNCATE * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
    """Half-sample symmetric reflection of indices into ``[0, n)`` (period ``2 n``)."""
    index = np.mod(index, 2 * n)
    return np.where(index >= n, 2 * n - 1 - index, index)


def dct_response(n: int, sigma: float) -> np.ndarray:
    """DCT-II multipliers of the reflect-boundary Gaussian filter on ``n`` samples.

    For a symmetric kernel ``k`` and half-sample symmetric extension the orthonormal DCT-II
    diagonalises the convolution with eigenvalues ``sum_m k_m cos(pi f m / n)``.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import fft, ndimage
    >>> z = np.random.default_rng(0).normal(size=32)
    >>> via_dct = fft.idct(fft.dct(z, norm="ortho") * dct_response(32, 2.0), norm="ortho")
    >>> bool(np.allclose(via_dct, ndimage.gaussian_filter1d(z, 2.0, mode="reflect")))
    True
    """
    if not np.isfinite(sigma):
        return (np.arange(n) == 0).astype(np.float64)
    k = kernel_1d(sigma)
    radius = len(k) // 2
    # sum_m k_m cos(pi f m / n): the real DFT of the kernel wrapped onto 2n samples
    wrapped = np.zeros(2 * n)
    np.add.at(wrapped, np.arange(-radius, radius + 1) % (2 * n), k)
    return np.fft.rfft(wrapped).real[:n]


def self_weight_1d(n: int, sigma: float, start: int = 0, length: int | None = None
                   ) -> np.ndarray:
    """Weight that each sample gets from itself in the reflect-boundary Gaussian filter.

    ``k_0`` in the interior; near a border the mirrored copies of the sample add to it.
    ``start``/``length`` select the samples ``start .. start + length - 1`` of an axis of
    ``n`` samples (a block of a larger map).
    """
    length = n - start if length is None else length
    i = np.arange(start, start + length)
    if not np.isfinite(sigma):
        return np.full(length, 1.0 / n)
    k = kernel_1d(sigma)
    radius = len(k) // 2
    # k_0 in the interior; within a radius of a border the mirrored taps that land on the
    # sample itself add (all taps at once, border samples only)
    out = np.full(length, k[radius])
    border = (i < radius) | (i >= n - radius)
    if border.any():
        ib = i[border]
        taps = np.arange(-radius, radius + 1)
        hits = _reflect(ib[None, :] + taps[:, None], n) == ib[None, :]
        out[border] = (k[:, None] * hits).sum(axis=0)
    return out


def _separable_self_weight(nav_shape: Sequence[int], sigmas: Sequence[float],
                           starts: Sequence[int] | None = None,
                           lengths: Sequence[int] | None = None) -> np.ndarray:
    starts = starts or [0] * len(nav_shape)
    lengths = lengths or list(nav_shape)
    out = np.ones(tuple(lengths))
    for axis, (n, s, a, length) in enumerate(zip(nav_shape, sigmas, starts, lengths,
                                                 strict=True)):
        shape = [1] * len(nav_shape)
        shape[axis] = length
        out = out * self_weight_1d(n, s, a, length).reshape(shape)
    return out


@dataclass
class FilterChoice:
    """Per-coordinate blind-spot filters chosen by :func:`select`.

    Attributes
    ----------
    sigma_index
        Index into ``sigmas`` of each coordinate's width.
    beta
        Scale of each coordinate's blind-spot prediction (0 drops it).
    tau2
        Error variance of each coordinate's scaled prediction (0 when not significant).
    mean
        Map mean of each coordinate (the prediction for ``sigma = inf``).
    sigmas
        The widths, in pixels, in units of the first navigation axis' pixels.
    axis_scale
        Per navigation axis, pixels of that axis per pixel of the reference axis (the
        widths along axis ``a`` are ``sigma * axis_scale[a]``).
    """

    sigma_index: np.ndarray
    beta: np.ndarray
    tau2: np.ndarray
    mean: np.ndarray
    sigmas: tuple[float, ...]
    axis_scale: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"sigma_index": self.sigma_index.tolist(), "beta": self.beta.tolist(),
                "tau2": self.tau2.tolist(), "mean": self.mean.tolist(),
                "sigmas": [float(s) if np.isfinite(s) else "inf" for s in self.sigmas],
                "axis_scale": list(self.axis_scale)}

    @classmethod
    def from_dict(cls, d: dict) -> FilterChoice:
        return cls(np.asarray(d["sigma_index"], dtype=int), np.asarray(d["beta"]),
                   np.asarray(d["tau2"]), np.asarray(d["mean"]),
                   tuple(math.inf if s == "inf" else float(s) for s in d["sigmas"]),
                   tuple(float(a) for a in d["axis_scale"]))

    @property
    def width(self) -> np.ndarray:
        """Chosen width of each coordinate in pixels (``inf``: the map mean; NaN: dropped)."""
        w = np.asarray(self.sigmas, dtype=np.float64)[self.sigma_index]
        return np.where(self.beta > 0, w, np.nan)


def _axis_sigmas(sigma: float, axis_scale: Sequence[float]) -> list[float]:
    return [sigma * a for a in axis_scale]


def _dct(a: np.ndarray, nav_ndim: int) -> np.ndarray:
    return sp_fft.dctn(a, type=2, norm="ortho", axes=tuple(range(nav_ndim)), workers=1)


def _idct(a: np.ndarray, nav_ndim: int) -> np.ndarray:
    return sp_fft.idctn(a, type=2, norm="ortho", axes=tuple(range(nav_ndim)), workers=1)


def _response(nav_shape: Sequence[int], sigma: float, axis_scale: Sequence[float]
              ) -> np.ndarray:
    out = np.ones(tuple(nav_shape))
    for axis, (n, s) in enumerate(zip(nav_shape, _axis_sigmas(sigma, axis_scale),
                                      strict=True)):
        shape = [1] * len(nav_shape)
        shape[axis] = n
        out = out * dct_response(n, s).reshape(shape)
    return out


def blind_spot(maps: np.ndarray, sigma: float, valid: np.ndarray | None = None,
               axis_scale: Sequence[float] | None = None,
               spectra: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Blind-spot Gaussian prediction of every pixel from its neighbours (whole maps).

    Parameters
    ----------
    maps
        ``nav_shape + (q,)`` coordinates.
    sigma
        Width in pixels (``inf``: mean of all other pixels).
    valid
        Boolean ``nav_shape`` mask of the pixels that may be used (None: all).
    axis_scale
        Per navigation axis, width multiplier (default 1 for every axis).
    spectra
        Precomputed ``(DCT of maps * valid, DCT of valid)`` (speed).

    Returns
    -------
    ndarray of the shape of ``maps``; prediction at pixel ``i`` independent of ``maps[i]``.

    Examples
    --------
    >>> import numpy as np
    >>> z = np.random.default_rng(0).normal(size=(8, 8, 1))
    >>> m = blind_spot(z, 1.0)
    >>> z2 = z.copy(); z2[3, 4] += 100.0
    >>> bool(np.isclose(blind_spot(z2, 1.0)[3, 4, 0], m[3, 4, 0]))   # J-invariant
    True
    """
    nav_shape = maps.shape[:-1]
    nd = len(nav_shape)
    axis_scale = tuple(axis_scale or (1.0,) * nd)
    v = np.ones(nav_shape) if valid is None else valid.astype(np.float64)
    zv = maps * v[..., None]
    if not np.isfinite(sigma):
        total = zv.sum(axis=tuple(range(nd)))
        count = v.sum()
        num = total - zv
        den = (count - v)[..., None]
        return num / np.maximum(den, 1e-12)
    if spectra is None:
        spectra = (_dct(zv, nd), _dct(v, nd))
    resp = _response(nav_shape, sigma, axis_scale)
    fz = _idct(spectra[0] * resp[..., None], nd)
    fv = _idct(spectra[1] * resp, nd)
    selfw = _separable_self_weight(nav_shape, _axis_sigmas(sigma, axis_scale))
    num = fz - selfw[..., None] * zv
    den = fv - selfw * v
    return num / np.maximum(den, 1e-12)[..., None]


def blind_spot_block(block: np.ndarray, sigma: float, nav_shape: Sequence[int],
                     starts: Sequence[int], valid: np.ndarray | None = None,
                     axis_scale: Sequence[float] | None = None,
                     depth: Sequence[int] | None = None) -> np.ndarray:
    """:func:`blind_spot` for a block of a larger map, given with ``depth`` pixels of halo
    on each side (already reflected at the map's borders, as ``dask``'s ``map_overlap``
    with ``boundary="reflect"`` does); returns the prediction on the block's interior.

    ``starts`` are the global indices of the interior's first pixel along each axis. The
    halo must be at least the kernel radius, ``int(4 sigma + 0.5)``.
    """
    nd = len(nav_shape)
    axis_scale = tuple(axis_scale or (1.0,) * nd)
    depth = tuple(depth or (0,) * nd)
    interior = tuple(slice(d, block.shape[a] - d) for a, d in enumerate(depth))
    v = np.ones(block.shape[:nd]) if valid is None else valid.astype(np.float64)
    zv = block * v[..., None]
    sig = _axis_sigmas(sigma, axis_scale)
    fz = ndimage.gaussian_filter(zv, sig + [0.0], mode="reflect", truncate=_TRUNCATE)
    fv = ndimage.gaussian_filter(v, sig, mode="reflect", truncate=_TRUNCATE)
    lengths = [block.shape[a] - 2 * depth[a] for a in range(nd)]
    selfw = _separable_self_weight(nav_shape, sig, starts, lengths)
    num = fz[interior] - selfw[..., None] * zv[interior]
    den = fv[interior] - selfw * v[interior]
    return num / np.maximum(den, 1e-12)[..., None]


def select(maps: np.ndarray, variance: np.ndarray, valid: np.ndarray | None = None,
           sigmas: Sequence[float] = DEFAULT_SIGMAS, axis_scale: Sequence[float] | None = None,
           shrink: bool = True) -> FilterChoice:
    """Choose each coordinate's blind-spot filter from the noisy maps (Noise2Self).

    Parameters
    ----------
    maps
        ``nav_shape + (q,)`` noisy coordinates whose noise is independent between pixels.
    variance
        Noise variance of each coordinate at each pixel (same shape as ``maps``) or of each
        coordinate (``(q,)``).
    valid
        Pixels to use (None: all).
    sigmas
        Candidate widths in pixels; widths larger than the map are skipped.
    axis_scale
        Per navigation axis, width multiplier.
    shrink
        Shrink the prediction scale towards 0 by the explained power's significance
        (positive-part James-Stein); False keeps the least-squares scale.

    Returns
    -------
    FilterChoice

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> yy, xx = np.mgrid[:48, :48]
    >>> smooth = np.stack([np.sin(xx / 8.0), np.zeros_like(xx, float)], -1)
    >>> choice = select(smooth + rng.normal(size=smooth.shape), np.ones(2))
    >>> choice.beta[0] > 0.8, choice.beta[1] == 0   # signal kept, pure noise dropped
    (np.True_, np.True_)
    """
    nav_shape = maps.shape[:-1]
    nd = len(nav_shape)
    q = maps.shape[-1]
    axis_scale = tuple(axis_scale or (1.0,) * nd)
    v = np.ones(nav_shape, dtype=bool) if valid is None else valid.astype(bool)
    n_valid = int(v.sum())
    var = np.broadcast_to(np.asarray(variance, dtype=np.float64), maps.shape)
    vbar = var[v].mean(axis=0) if n_valid else np.ones(q)
    z = np.where(v[..., None], maps, 0.0)
    mean = z[v].mean(axis=0) if n_valid else np.zeros(q)
    # widths whose kernel spans more than the map bring nothing over the map mean
    grid = tuple(float(s) for s in sigmas)
    if math.inf not in grid:
        grid = grid + (math.inf,)
    largest = max(nav_shape) if nav_shape else 1
    usable = [s for s in grid if not np.isfinite(s) or s * max(axis_scale) <= largest]
    spectra = (_dct(z * v[..., None], nd), _dct(v.astype(np.float64), nd))
    best_gain = np.full(q, -np.inf)
    idx = np.zeros(q, dtype=int)
    beta = np.zeros(q)
    for s in usable:
        m = blind_spot(z, s, v, axis_scale, spectra)
        mz = (m[v] * z[v]).sum(axis=0)
        mm = (m[v] ** 2).sum(axis=0)
        gain = mz**2 / np.maximum(mm, 1e-300) * (mz > 0)
        better = gain > best_gain
        best_gain[better] = gain[better]
        idx[better] = grid.index(s)
        beta[better] = (mz / np.maximum(mm, 1e-300))[better]
    beta = np.clip(beta, 0.0, 1.2)
    if shrink:
        # null distribution of the best explained power: vbar * (max of ~len(usable)
        # chi^2_1); shrink in proportion, so that pure-noise coordinates get beta ~ 0
        crit = 3.0 + 2.0 * math.log(len(usable))
        beta = beta * np.clip(1.0 - crit * vbar / np.maximum(best_gain, 1e-300), 0.0, 1.0)
    choice = FilterChoice(idx, beta, np.zeros(q), mean, grid, axis_scale)
    # error of the scaled prediction, kept when significant (3 standard errors)
    pred = predict(z, choice, v)
    excess = (((z - pred) ** 2)[v] - var[v]).mean(axis=0) if n_valid else np.zeros(q)
    se = math.sqrt(2.0 / max(n_valid, 1)) * vbar
    choice.tau2 = np.where(excess > 3.0 * se, excess, 0.0)
    return choice


def predict(maps: np.ndarray, choice: FilterChoice, valid: np.ndarray | None = None
            ) -> np.ndarray:
    """``beta * m`` for every coordinate of whole maps (``m``: its chosen blind-spot
    prediction; the map mean for ``sigma = inf``)."""
    nd = maps.ndim - 1
    out = np.zeros_like(maps, dtype=np.float64)
    v = np.ones(maps.shape[:-1], dtype=bool) if valid is None else valid.astype(bool)
    z = np.where(v[..., None], maps, 0.0)
    spectra = None
    for j in np.unique(choice.sigma_index):
        sel = (choice.sigma_index == j) & (choice.beta > 0)
        if not sel.any():
            continue
        s = choice.sigmas[j]
        if not np.isfinite(s):
            out[..., sel] = choice.mean[sel]
            continue
        if spectra is None:
            spectra = (_dct(z * v[..., None], nd), _dct(v.astype(np.float64), nd))
        sub = (spectra[0][..., sel], spectra[1])
        out[..., sel] = blind_spot(z[..., sel], s, v, choice.axis_scale, sub)
    return out * choice.beta


def predict_block(block: np.ndarray, choice: FilterChoice, nav_shape: Sequence[int],
                  starts: Sequence[int], depth: Sequence[int],
                  valid: np.ndarray | None = None) -> np.ndarray:
    """:func:`predict` for a block with halo (see :func:`blind_spot_block`)."""
    nd = len(nav_shape)
    interior = tuple(slice(d, block.shape[a] - d) for a, d in enumerate(depth))
    out = np.zeros(block[interior].shape, dtype=np.float64)
    v = np.ones(block.shape[:nd], dtype=bool) if valid is None else valid.astype(bool)
    z = np.where(v[..., None], block, 0.0)
    for j in np.unique(choice.sigma_index):
        sel = (choice.sigma_index == j) & (choice.beta > 0)
        if not sel.any():
            continue
        s = choice.sigmas[j]
        if not np.isfinite(s):
            out[..., sel] = choice.mean[sel]
            continue
        out[..., sel] = blind_spot_block(z[..., sel], s, nav_shape, starts, v,
                                         choice.axis_scale, depth)
    return out * choice.beta


def halo(choice: FilterChoice) -> int:
    """Pixels of halo a block needs for :func:`predict_block` with ``choice``."""
    widths = [choice.sigmas[j] for j in np.unique(choice.sigma_index[choice.beta > 0])
              if np.isfinite(choice.sigmas[j])]
    if not widths:
        return 0
    return int(_TRUNCATE * max(widths) * max(choice.axis_scale) + 0.5)


def combine(maps: np.ndarray, prediction: np.ndarray, variance: np.ndarray,
            choice: FilterChoice) -> np.ndarray:
    """Posterior mean ``alpha z + (1 - alpha) beta m``, ``alpha = tau2 / (tau2 + var)``."""
    var = np.broadcast_to(np.asarray(variance, dtype=np.float64), maps.shape)
    alpha = choice.tau2 / np.maximum(choice.tau2 + var, 1e-300)
    return alpha * maps + (1.0 - alpha) * prediction
