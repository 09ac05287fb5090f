"""Energy drift: per-pixel shifts of the spectral axis, estimated on pooled low-rank spectra.

:func:`estimate_shift` returns the shift of every pixel's spectrum (in channels) relative to
the map's common energy frame; :func:`shift_spectra` moves spectra by given shifts (aligning
is ``shift_spectra(X, -shift)``, undoing it ``shift_spectra(aligned, shift)``). Both work on
arrays of spectra on a regular navigation grid; the denoiser, and the decomposition and
clustering workflows, use them to remove drift before pooling or comparing pixels.

How the shift is estimated (Gauss-Newton on a spatially pooled template)
------------------------------------------------------------------------
1. Coarse: the spectra pooled over a few pixels are cross-correlated, as energy
   derivatives (edges), with the map's mean spectrum over integer shifts up to
   ``max_shift`` (parabolic refinement).
2. Fine, iterated: every pixel's spectrum, aligned by the current shifts and high-passed
   along the energy axis (edges and fine structure carry the shift, not the smooth
   background), is fitted by a few components of the aligned map (its chemistry and
   thickness) plus the energy derivative of that fit (its residual shift), with Poisson
   weights. Eliminating the amplitudes leaves, per pixel, a shift estimate and its
   information ``h`` (the inverse variance). The new shift field is the ``h``-weighted
   average of these estimates over neighbours, either in space (a Gaussian over the
   navigation axes) or along the acquisition order (a Gaussian over the flat raster index:
   scan drift is smooth in time, and rows that follow each other in time are neighbours),
   with the kind and width chosen from the data (Noise2Self): the blind-spot average of the
   neighbours must predict each pixel's own estimate (a pixel's noise enters only its own).
   At low dose a single spectrum holds little information on its shift, so the estimate is
   the smooth part of the drift (what neighbours share); at high dose the width shrinks
   towards single pixels.
3. The mean shift over the map is set to 0 (the common frame is the map's own).

Arrays only: no HyperSpy here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hyperspy_mlspec.arrays.counts import MIN_GAIN_ROWS, count_gain, is_unit_gain
from hyperspy_mlspec.spatial import filters

_SHIFT_SIGMAS = (0.7, 1.0, 1.4, 2.0, 2.8, 4.0, 5.6, 8.0, 11.0, 16.0, math.inf)


def shift_spectra(X: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Move every spectrum along its last axis by ``shift`` channels (linear interpolation).

    ``out[..., c] = X[..., c - shift]``: a positive shift moves features to higher channels.
    Values beyond the ends repeat the end channels.

    Parameters
    ----------
    X
        ``(..., n_channels)`` spectra.
    shift
        Shifts in channels, broadcastable to ``X.shape[:-1]``.

    Returns
    -------
    ndarray of the shape of ``X`` (float64, or float32 for float32 input)

    Examples
    --------
    >>> import numpy as np
    >>> shift_spectra(np.array([[0.0, 1.0, 4.0, 9.0]]), np.array([1.0]))
    array([[0., 0., 1., 4.]])
    >>> shift_spectra(np.array([[0.0, 1.0, 4.0, 9.0]]), np.array([-0.5]))
    array([[0.5, 2.5, 6.5, 9. ]])
    """
    X = np.asarray(X)
    dtype = np.float32 if X.dtype == np.float32 else np.float64
    n = X.shape[-1]
    s = np.broadcast_to(np.asarray(shift, dtype=np.float64), X.shape[:-1])
    flat = X.reshape(-1, n)
    s_flat = s.reshape(-1)
    out = np.empty(flat.shape, dtype=dtype)
    if n == 1:
        out[:] = flat
        return out.reshape(X.shape)
    # s = m + f (m whole channels, 0 <= f < 1): out[c] = f X[c - m - 1] + (1 - f) X[c - m];
    # rows are grouped by m and read as slices of the edge-padded spectra (a gather per
    # element is several times slower); shifts beyond the spectrum read only its ends
    whole = np.clip(np.floor(s_flat), -n - 1, n + 1).astype(np.int64)
    frac = np.clip(s_flat - whole, 0.0, 1.0).astype(dtype)
    for m in np.unique(whole):
        idx = np.flatnonzero(whole == m)
        pad = int(abs(m)) + 1
        for start in range(0, len(idx), 4096):  # bounded temporaries
            sub = idx[start:start + 4096]
            rows = np.pad(flat[sub].astype(dtype, copy=False), ((0, 0), (pad, pad)),
                          mode="edge")
            lo = pad - int(m)
            f = frac[sub, None]
            out[sub] = f * rows[:, lo - 1:lo - 1 + n] + (1 - f) * rows[:, lo:lo + n]
    return out.reshape(X.shape)


def interpolation_variance_factor(shift: np.ndarray) -> np.ndarray:
    """Variance of linearly interpolated white noise relative to the original:
    ``(1 - f)^2 + f^2`` for the fractional part ``f`` of the shift."""
    f = np.mod(np.asarray(shift, dtype=np.float64), 1.0)
    return (1.0 - f) ** 2 + f**2


@dataclass
class ShiftEstimate:
    """Result of :func:`estimate_shift`.

    Attributes
    ----------
    shift
        Per-pixel shift in channels, navigation shape (NaN at invalid pixels). A pixel's
        spectrum is the common-frame spectrum moved by this many channels.
    uncertainty
        Standard error of ``shift`` in channels (from the pooled Poisson information).
    sigma
        Width of the pooling chosen by Noise2Self (``inf``: one shift for the whole map).
    n_iter
        Gauss-Newton iterations run.
    pooling
        ``"space"`` (Gaussian over the navigation axes, width in pixels) or ``"raster"``
        (Gaussian along the acquisition order, width in pixels of that order).
    neighbour_shift
        Each pixel's shift predicted from its neighbours only (never from its own spectrum;
        on binned maps, from the other bins): for honest comparisons of aligned and
        unaligned models.
    """

    shift: np.ndarray
    uncertainty: np.ndarray
    sigma: float
    n_iter: int
    pooling: str = "space"
    neighbour_shift: np.ndarray | None = None



#: candidate widths of the raster-order (time) pooling, in pixels of acquisition order
_RASTER_SIGMAS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0)
_HIGH_PASS = 8.0  # channels: width of the smooth background removed before fitting


@dataclass(frozen=True)
class _Pooling:
    kind: str  # "space" or "raster"
    sigma: float

    def describe(self) -> str:
        if not np.isfinite(self.sigma):
            return "one shift for the whole map"
        unit = "pixels" if self.kind == "space" else "pixels of acquisition order"
        return f"{self.kind} Gaussian of {self.sigma:g} {unit}"


def _pool(maps: np.ndarray, sigma: float, valid: np.ndarray, axis_scale) -> np.ndarray:
    """Normalised Gaussian pooling over the navigation axes, centre included."""
    nd = maps.ndim - 1
    v = valid.astype(np.float64)
    if not np.isfinite(sigma):
        tot = (maps * v[..., None]).sum(axis=tuple(range(nd)))
        return np.broadcast_to(tot / max(v.sum(), 1e-12), maps.shape).copy()
    resp = filters._response(maps.shape[:-1], sigma, axis_scale)
    num = filters._idct(filters._dct(maps * v[..., None], nd) * resp[..., None], nd)
    den = filters._idct(filters._dct(v, nd) * resp, nd)
    return num / np.maximum(den, 1e-12)[..., None]


def _raster(maps: np.ndarray, sigma: float, valid: np.ndarray, blind: bool) -> np.ndarray:
    """Normalised Gaussian pooling along the flat (acquisition) order of the pixels."""
    flat = maps.reshape(-1, maps.shape[-1])
    v = valid.reshape(-1)
    out = filters.blind_spot(flat, sigma, v) if blind else _pool(flat, sigma, v, (1.0,))
    return out.reshape(maps.shape)


def _apply_pooling(hs: np.ndarray, pooling: _Pooling, v: np.ndarray, axis_scale,
                   blind: bool = False) -> np.ndarray:
    if pooling.kind == "raster":
        return _raster(hs, pooling.sigma, v, blind)
    if blind:
        return filters.blind_spot(hs, pooling.sigma, v, axis_scale)
    return _pool(hs, pooling.sigma, v, axis_scale)


def _choose_pooling(hs: np.ndarray, v: np.ndarray, sigmas, axis_scale) -> _Pooling:
    """Noise2Self choice of how to pool the per-pixel shift estimates: the blind-spot,
    information-weighted mean of the neighbours' estimates predicts each pixel's own;
    errors are weighted by the pixel's information ``h`` (its Gaussian log-likelihood).
    ``hs`` stacks ``h * estimate`` and ``h``."""
    nav = hs.shape[:-1]
    h = hs[..., 1]
    own = hs[..., 0] / np.maximum(h, 1e-300)
    ok = v & (h > 0)
    if len(nav) > 1:
        # on maps, drift is pooled along the acquisition order only: instrumental drift is
        # a function of time, while chemistry (a chemical shift looks like a drift on its
        # edge) is organised in space, and spatial pooling would pick it up
        n = int(np.prod(nav))
        candidates = [_Pooling("raster", s) for s in _RASTER_SIGMAS if s <= n / 4]
        candidates.append(_Pooling("space", math.inf))
    else:
        candidates = [_Pooling("space", float(s)) for s in sigmas
                      if not np.isfinite(s) or s * max(axis_scale) <= max(nav)]
    best, best_loss = _Pooling("space", math.inf), math.inf
    for pooling in candidates:
        m = _apply_pooling(hs, pooling, v, axis_scale, blind=True)
        pred = m[..., 0] / np.maximum(m[..., 1], 1e-300)
        loss = (h * (own - pred) ** 2)[ok].sum()
        if loss < best_loss:
            best, best_loss = pooling, loss
    return best


def _coarse(P: np.ndarray, valid: np.ndarray, max_shift: int) -> np.ndarray:
    """Integer-grid cross-correlation of pooled, high-passed spectra with the map mean's,
    with parabolic refinement."""
    nav = P.shape[:-1]
    D = P.shape[-1]
    P = P.reshape(-1, D)
    ref = P[valid.reshape(-1)].mean(axis=0)
    wgt = 1.0 / np.maximum(ref, 1e-12 * max(ref.max(), 1e-300))
    m = max_shift
    core = slice(m, D - m)
    target = (ref * wgt)[core]
    lags = np.arange(-m, m + 1)
    score = np.empty((len(P), len(lags)))
    for j, lag in enumerate(lags):
        # a pixel spectrum moved by +lag matches the reference: x(c) ~ ref(c - lag)
        score[:, j] = P[:, m + lag:D - m + lag] @ target
    best = score.argmax(axis=1)
    inner = np.clip(best, 1, len(lags) - 2)
    rows = np.arange(len(P))
    y0, y1, y2 = (score[rows, inner + d] for d in (-1, 0, 1))
    denom = y0 - 2 * y1 + y2
    safe = np.where(denom < 0, denom, -1.0)
    frac = np.where(denom < 0, 0.5 * (y0 - y2) / safe, 0.0)
    return (lags[inner] + np.clip(frac, -1, 1)).reshape(nav)


def _top_right_vectors(Y: np.ndarray, k: int) -> np.ndarray:
    """Leading ``k`` right singular vectors of ``Y`` (rows), from the smaller Gram matrix."""
    if Y.shape[0] <= Y.shape[1]:
        evals, u = np.linalg.eigh(Y @ Y.T)
        u = u[:, ::-1][:, :k]
        v = u.T @ Y
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-300)
    evals, v = np.linalg.eigh(Y.T @ Y)
    return v[:, ::-1][:, :k].T


def _high_pass(X: np.ndarray, width: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter1d

    return X - gaussian_filter1d(X, width, axis=-1, mode="nearest")


def estimate_shift(X: np.ndarray, valid: np.ndarray | None = None, *,
                   max_shift: float | None = None, n_components: int = 3,
                   sigmas: Sequence[float] = _SHIFT_SIGMAS,
                   axis_scale: Sequence[float] | None = None, n_iter: int = 9,
                   coarse: bool = False, max_pixels: int = 1024) -> ShiftEstimate:
    """Per-pixel energy shift (channels) of a spectrum image, regularised by its neighbours.

    Parameters
    ----------
    X
        ``nav_shape + (n_channels,)`` non-negative spectra (counts, or any intensities;
        weights assume Poisson-like noise), at least one navigation axis.
    valid
        Boolean ``nav_shape`` mask of pixels to use (None: all finite pixels).
    max_shift
        Largest shift searched by the coarse step, in channels (None: ``max(3, D / 128)``).
    n_components
        Components of the aligned map fitted with each spectrum (chemistry, thickness).
    sigmas
        Candidate widths (pixels) of the spatial pooling (raster-order widths are tried
        as well on maps).
    axis_scale
        Per navigation axis, width multiplier (anisotropic pixels).
    n_iter
        Largest number of Gauss-Newton iterations.
    coarse
        Start from an integer-grid cross-correlation with the map mean (off by default:
        the first iterations on energy-blurred spectra already capture shifts of
        ``max_shift / 2`` channels).
    max_pixels
        Larger grids are binned (counts summed over blocks of pixels) to at most this many
        pixels for the estimate, which is then interpolated back onto every pixel: at the
        doses where binning matters a pixel's own shift is not measurable anyway, and the
        estimate stays fast.

    Returns
    -------
    ShiftEstimate

    Examples
    --------
    >>> import numpy as np
    >>> c = np.arange(128.0)
    >>> true = np.linspace(-1.5, 1.5, 32)[:, None] * np.ones((1, 32))    # a drift ramp
    >>> peak = lambda s: 50 * np.exp(-0.5 * ((c - 64 - s) / 3) ** 2) + 20
    >>> lam = np.stack([[peak(s) for s in row] for row in true])
    >>> X = np.random.default_rng(0).poisson(lam).astype(float)
    >>> est = estimate_shift(X)
    >>> error = (est.shift - est.shift.mean()) - (true - true.mean())
    >>> bool(error.std() < 0.1)
    True
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim < 2:
        raise ValueError("estimate_shift needs spectra on a navigation grid: an array of "
                         f"shape nav_shape + (n_channels,), got shape {X.shape}")
    nav = X.shape[:-1]
    n = int(np.prod(nav))
    finite = np.isfinite(X).all(axis=-1)
    v = finite if valid is None else (np.asarray(valid, dtype=bool) & finite)
    # the Poisson weights (and so the shifts' precisions, which set how much each pixel
    # trusts its own estimate) are for counts whose variance equals their mean: data with a
    # detector gain are read in electrons
    valid_rows = np.flatnonzero(v.reshape(-1))
    gain = (count_gain(X.reshape(-1, X.shape[-1])[valid_rows[:: max(1, len(valid_rows) // 2000)]])
            if len(valid_rows) >= MIN_GAIN_ROWS else None)
    if not is_unit_gain(gain):
        X = X / gain
    if n <= max_pixels:
        return _estimate(X, v, max_shift=max_shift, n_components=n_components, sigmas=sigmas,
                         axis_scale=axis_scale, n_iter=n_iter, coarse=coarse)
    factor = int(math.ceil((n / max_pixels) ** (1.0 / len(nav))))
    Xb, vb = _bin(np.where(v[..., None], X, 0.0), v, factor)
    est = _estimate(Xb, vb, max_shift=max_shift, n_components=n_components, sigmas=sigmas,
                    axis_scale=axis_scale, n_iter=n_iter, coarse=coarse)
    shift = _upsample(est.shift, nav, factor)
    unc = _upsample(est.uncertainty, nav, factor)
    blind = _upsample(est.neighbour_shift, nav, factor)
    return ShiftEstimate(np.where(v, shift, np.nan), np.where(v, unc, np.nan),
                         est.sigma * (factor if est.pooling == "space" else factor**len(nav)),
                         est.n_iter, est.pooling, np.where(v, blind, np.nan))


def _bin(X: np.ndarray, v: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum counts over blocks of ``factor`` pixels along every navigation axis."""
    out, vo = X, v.astype(np.float64)
    for axis in range(v.ndim):
        starts = np.arange(0, v.shape[axis], factor)
        out = np.add.reduceat(out, starts, axis=axis)
        vo = np.add.reduceat(vo, starts, axis=axis)
    return out, vo > 0


def _upsample(values: np.ndarray, nav: tuple[int, ...], factor: int) -> np.ndarray:
    """Linear interpolation of a binned map back onto the full grid (NaN-safe)."""
    from scipy import ndimage

    ok = np.isfinite(values)
    filled = np.where(ok, values, np.nanmean(values) if ok.any() else 0.0)
    coords = np.meshgrid(*[(np.arange(m) + 0.5) / factor - 0.5 for m in nav], indexing="ij")
    return ndimage.map_coordinates(filled, coords, order=1, mode="nearest")


def _estimate(X: np.ndarray, v: np.ndarray, *, max_shift, n_components, sigmas, axis_scale,
              n_iter, coarse) -> ShiftEstimate:
    nav = X.shape[:-1]
    nd = len(nav)
    D = X.shape[-1]
    if D < 16:
        raise ValueError(f"estimating energy shifts needs at least 16 channels, got {D}")
    if not v.any():
        raise ValueError("no valid pixel to estimate shifts from")
    X = np.maximum(np.where(v[..., None], X, 0.0), 0.0)  # Poisson-like weights
    n = int(np.prod(nav))
    axis_scale = tuple(axis_scale or (1.0,) * nd)
    max_shift = int(max(3, round(D / 128))) if max_shift is None else int(math.ceil(max_shift))
    max_shift = int(min(max_shift, D // 4))
    hp = min(_HIGH_PASS, D / 8)
    P0 = _pool(X, 1.5, v, axis_scale).reshape(n, D)  # weights and templates
    HX = _high_pass(X, hp).reshape(n, D)
    vf = v.reshape(-1)
    # channels that carry information on a shift (edges), with a margin for shifting
    mean = P0[vf].mean(axis=0)
    info = np.gradient(_high_pass(mean, hp)) ** 2 / np.maximum(mean, 1e-12 * mean.max())
    order = np.argsort(info)[::-1]
    keep = np.zeros(D, dtype=bool)
    keep[order[:max(8, int(np.searchsorted(np.cumsum(info[order]) / info.sum(), 0.98)) + 1)]] \
        = True
    lo = max(0, int(np.flatnonzero(keep)[0]) - max_shift - 2)
    hi = min(D, int(np.flatnonzero(keep)[-1]) + max_shift + 3)
    sel = slice(lo, hi)
    used = keep[sel]
    if coarse and max_shift >= 1:
        Pc = _pool(_high_pass(X, hp), 4.0, v, axis_scale)[..., sel]
        s = _coarse(Pc, v, max_shift)
        s = np.where(v, s - s[v].mean(), 0.0)
    else:
        s = np.zeros(nav)
    step_sub = max(1, int(vf.sum()) // 256)  # pooled spectra used to fit the components
    pooling = _Pooling("space", math.inf)
    h = np.zeros(n)
    it = 0
    W = 1.0 / np.maximum(P0[:, sel][:, used], 1e-12 * mean.max())
    from scipy.ndimage import gaussian_filter1d

    # coarse to fine: spectra blurred along energy first (a capture range of several
    # channels for the linearisation), then sharp
    widths = [max_shift / 2.0, max_shift / 4.0, 0.0]
    HXs = HX[:, sel]
    HPs = _high_pass(P0[:, sel], hp)
    prev_width = None
    for it in range(1, n_iter + 1):
        width = widths[min(len(widths) - 1, (it - 1) * len(widths) // max(n_iter, 1))]
        if width != prev_width:
            HXw = gaussian_filter1d(HXs, width, axis=1, mode="nearest") if width > 0 else HXs
            HPw = gaussian_filter1d(HPs, width, axis=1, mode="nearest") if width > 0 else HPs
            prev_width = width
        sf = s.reshape(-1)
        HA = shift_spectra(HXw, -sf)[:, used]
        # components of the aligned, pooled, high-passed map (count units)
        sub = np.flatnonzero(vf)[::step_sub]
        Ps = shift_spectra(HPw[sub], -sf[sub])[:, used]
        scale_c = np.sqrt(np.maximum(P0[sub][:, sel][:, used].mean(axis=0), 1e-12))
        mu = Ps.mean(axis=0)
        k = int(max(0, min(n_components - 1, len(sub) - 1)))
        if k:
            # the components must not be able to move the fit: the energy derivative of the
            # mean (the signature of a shift, whitened) is projected out of them
            dmu = np.zeros(hi - lo)
            dmu[used] = mu
            dmu = np.gradient(dmu)[used] / scale_c
            dmu /= max(np.linalg.norm(dmu), 1e-300)
            Yc = (Ps - mu) / scale_c
            Yc = Yc - np.outer(Yc @ dmu, dmu)
            basis = np.vstack([mu, _top_right_vectors(Yc, k) * scale_c])
        else:
            basis = mu[None, :]
        full_basis = np.zeros((len(basis), hi - lo))
        full_basis[:, used] = basis
        dbasis = np.gradient(full_basis, axis=1)[:, used]
        WB = W[:, None, :] * basis[None, :, :]  # (n, k, c)
        G = WB @ basis.T
        ridge = 1e-9 * np.trace(G, axis1=1, axis2=2)[:, None, None] * np.eye(len(basis))
        Ginv = np.linalg.inv(G + ridge + 1e-300 * np.eye(len(basis)))
        a = (Ginv @ (WB @ HA[:, :, None]))[..., 0]
        resid = HA - a @ basis
        g = a @ dbasis  # d model / d (s - s_true)
        cross = (WB @ g[:, :, None])[..., 0]
        g = g - ((cross[:, None, :] @ Ginv)[:, 0, :]) @ basis  # amplitudes eliminated
        b = (g * W * resid).sum(axis=1)
        h = np.where(vf, (g * W * g).sum(axis=1), 0.0)
        # aligned x(c) ~ S(c + s - s_true) ~ fit + (s - s_true) fit': own estimate of s_true
        own = sf - b / np.maximum(h, 1e-300)
        hs = np.stack([h * np.where(vf, own, 0.0), h], axis=-1).reshape(nav + (2,))
        if it == 1 or width != widths[min(len(widths) - 1, (it - 2) * len(widths)
                                            // max(n_iter, 1))]:
            pooling = _choose_pooling(hs, v, sigmas, axis_scale)
        # neighbours' blind-spot prediction, then the posterior mean with the pixel's own
        # estimate: prior variance tau2 around the prediction (per-pixel jitter) estimated
        # from the excess scatter of the own estimates
        m = _apply_pooling(hs, pooling, v, axis_scale, blind=True)
        pred = (m[..., 0] / np.maximum(m[..., 1], 1e-300)).reshape(-1)
        ok = vf & (h > 0)
        excess = np.mean((h * (own - pred) ** 2)[ok]) - 1.0  # in units of the noise
        tau2 = max(excess, 0.0) / max(np.mean(h[ok]), 1e-300) if ok.any() else 0.0
        if excess < 3.0 * math.sqrt(2.0 / max(ok.sum(), 1)):
            tau2 = 0.0  # not significant: the neighbours' shift
        own_w = h * tau2 / (1.0 + h * tau2)
        new = np.where(ok, own_w * own + (1.0 - own_w) * pred, pred).reshape(nav)
        new = np.clip(new, s - 2.0, s + 2.0)
        centre = new[v].mean()
        new = np.where(v, new - centre, 0.0)
        neighbour = np.where(v, pred.reshape(nav) - centre, 0.0)
        step = float(np.abs(new - s)[v].max())
        s = new
        if step < 2e-3 and width == 0.0:
            break
    unc = _uncertainty(h.reshape(nav), v, pooling, axis_scale)
    return ShiftEstimate(np.where(v, s, np.nan), np.where(v, unc, np.nan), pooling.sigma,
                         it, pooling.kind, np.where(v, neighbour, np.nan))


def _uncertainty(h: np.ndarray, v: np.ndarray, pooling: _Pooling, axis_scale) -> np.ndarray:
    """Standard error of the pooled estimate ``sum w h s / sum w h``: with independent
    pixel estimates of variance ``1 / h``, ``Var = sum w^2 h / (sum w h)^2``."""
    from scipy import ndimage

    hv = np.where(v, h, 0.0)
    if not np.isfinite(pooling.sigma):
        return np.full(h.shape, 1.0 / math.sqrt(max(hv.sum(), 1e-300)))
    if pooling.kind == "raster":
        k = filters.kernel_1d(pooling.sigma)
        flat = hv.reshape(-1)
        wh = ndimage.correlate1d(flat, k, mode="reflect")
        w2h = ndimage.correlate1d(flat, k * k, mode="reflect")
        return (np.sqrt(np.maximum(w2h, 0.0)) / np.maximum(wh, 1e-300)).reshape(h.shape)
    wh, w2h = hv, hv
    for axis, a in enumerate(axis_scale):
        k = filters.kernel_1d(pooling.sigma * a)
        wh = ndimage.correlate1d(wh, k, axis=axis, mode="reflect")
        w2h = ndimage.correlate1d(w2h, k * k, axis=axis, mode="reflect")
    return np.sqrt(np.maximum(w2h, 0.0)) / np.maximum(wh, 1e-300)
