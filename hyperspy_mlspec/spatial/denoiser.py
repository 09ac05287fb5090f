"""Spatial-spectral denoiser: low-rank coordinates, each filtered over the map by Noise2Self.

How it works (every strength is chosen from the data, none by hand)
-----------------------------------------------------------------
1. *Whitening.* Counts are divided by ``sqrt(g_i h_c)`` (``g``: a pixel's total counts,
   pooled over its neighbours, relative to the map's; ``h``: the mean spectrum), so that
   Poisson noise has about unit variance everywhere (Keenan & Kotula), and the mean is
   subtracted. A detector gain (variance = gain x counts) is measured on the residuals and
   taken into account; data that are not counts get a per-channel Gaussian noise level.
2. *Coordinates.* The spectra are described in a basis found on the map pooled over a few
   pixels: the principal components that stand clearly above the noise (Marchenko-Pastur
   edge of the pooled noise) and, for the fine structure they miss, a few components of the
   remainder in short energy windows found at a larger spatial scale (weak but spatially
   coherent variations such as a chemical shift or a valence change are invisible to a
   global PCA at low dose, but not to a pooled, windowed one). Components beyond the edge
   are kept when those found on one binomial half of the counts still carry signal on the
   other half (an honest test: a basis found on the same pixels fits their noise). Counts
   with a detector gain ``g`` are split in electrons (``x / g``): halves of the data units
   would share most of their noise. Noise correlated between channels (a detector's
   point-spread function) is measured on the checkerboard residual (corrected for the
   projection) and taken into account: halves are then recorrupted pairs with noise of
   that correlation, the edges scale with the noise's largest power, each coordinate's
   noise variance is that of the correlated noise along it, and components are smoothed
   along energy where their noise is decorrelated.
   The global components are then denoised along the energy axis: a component estimated
   from n pixels carries noise of variance ``noise / sum(scores^2)`` in every channel,
   independent from channel to channel, which dominates the error of small maps and line
   scans; within short energy windows each component is predicted from its neighbouring
   channels (a blind-spot filter along energy, width and weight chosen by Noise2Self, so
   sharp edges and fine structure keep their own values). The mean spectrum, whose noise
   (``noise / n`` per channel) every reconstructed pixel inherits, is denoised the same way.
3. *Spatial filtering.* Each coordinate is a map with noise independent from pixel to
   pixel. A blind-spot Gaussian filter predicts it from the neighbours only, with the width
   and scale chosen per coordinate by the Noise2Self loss (J-invariance), and the result is
   the posterior combination of that prediction with the pixel's own value
   (:mod:`hyperspy_mlspec.spatial.filters`): smooth, weak coordinates are pooled over many
   pixels, sharp, strong ones keep the pixel's own value, pure noise is dropped.
4. The filtered coordinates are mapped back to spectra (negative counts clipped).

Arrays only (no HyperSpy): ``fit``/``transform`` take ``nav_shape + (n_channels,)``
arrays, numpy or dask (lazy input: the model is fitted on a central crop of at most
``max_fit_pixels`` pixels and applied block by block with halos, never loading the map).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from hyperspy_mlspec.arrays.counts import (
    MIN_GAIN_ROWS,
    channel_correlation,
    colour,
    count_offset,
    filter_along,
    is_unit_gain,
    noise_power,
    on_pedestal,
    photon_transfer,
    quadratic_noise,
    toeplitz,
)
from hyperspy_mlspec.spatial import filters

_BASIS_SIGMA = 1.5  # pixels: pooling of the map the global basis is found on
_MIN_POOLED_SIDE = 32  # smaller grids find their basis unpooled (pooling blurs what few
#                        pixels they have; measured on a 10-pixel real line scan)
_WINDOW_SIGMA = 4.0  # pixels: pooling of the remainder the window bases are found on
_SIGNIFICANCE = 2.0  # eigenvalues must exceed this multiple of the pooled-noise edge
_MIN_HONEST_SIDE = 8  # grids with fewer pixels along every axis skip the split-half tests


def _is_dask(x: Any) -> bool:
    return hasattr(x, "dask") and hasattr(x, "chunks")


def _looks_like_counts(sample: np.ndarray) -> bool:
    return bool(sample.size and sample.min() >= 0 and sample.max() > 0 and
                np.allclose(sample, np.round(sample), atol=1e-3))


def auto_noise(sample: np.ndarray) -> tuple[str, tuple[float, float] | None]:
    """The noise model ``noise="auto"`` picks for spectra like ``sample`` (rows), and the
    :func:`~hyperspy_mlspec.arrays.counts.photon_transfer` fit ``(g, c)`` of count data
    (None when not measured): ``"poisson"`` for non-negative integer counts, unless they
    sit on a pedestal (a dark level) above 30 % of the median count, whose variance
    ``g (x - b)`` Poisson whitening and splitting would get wrong; ``"gaussian"`` (noise
    measured per channel) otherwise."""
    sample = np.asarray(sample)
    if not _looks_like_counts(sample):
        return "gaussian", None
    if len(sample) < MIN_GAIN_ROWS:
        return "poisson", None
    fit = photon_transfer(sample)
    return ("gaussian" if on_pedestal(fit, sample) else "poisson"), fit


def _kernel_square_sum(sigma: float, axis_scale: Sequence[float]) -> float:
    """Sum of squared weights of the separable normalised Gaussian (noise reduction)."""
    out = 1.0
    for a in axis_scale:
        k = filters.kernel_1d(sigma * a)
        out *= float((k**2).sum())
    return out


def _smooth(maps: np.ndarray, sigma: float, valid: np.ndarray, axis_scale) -> np.ndarray:
    """Normalised Gaussian pooling over the navigation axes (centre included)."""
    nd = maps.ndim - 1
    v = valid.astype(maps.dtype)
    resp = filters._response(maps.shape[:-1], sigma, axis_scale).astype(maps.dtype)
    num = filters._idct(filters._dct(maps * v[..., None], nd) * resp[..., None], nd)
    den = filters._idct(filters._dct(v, nd) * resp, nd)
    return num / np.maximum(den, 1e-12)[..., None]


def _leading_eigh(cov: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest eigenvalues (descending) and their eigenvectors of a symmetric
    matrix (only those are computed: several times faster than the full decomposition)."""
    from scipy.linalg import eigh

    d = cov.shape[0]
    k = int(min(max(k, 1), d))
    evals, evecs = eigh(cov, subset_by_index=[d - k, d - 1])
    return evals[::-1], evecs[:, ::-1]


def _windows(n_channels: int, width: int) -> list[tuple[int, int]]:
    if width >= n_channels:
        return [(0, n_channels)]
    step = max(1, width // 2)
    starts = list(range(0, n_channels - width + 1, step))
    if starts[-1] + width < n_channels:
        starts.append(n_channels - width)
    return [(a, a + width) for a in starts]


def _blend_weights(windows: list[tuple[int, int]], n_channels: int) -> list[np.ndarray]:
    """Hann weights of overlapping windows, normalised to sum to 1 on every channel."""
    raw = []
    for a, b in windows:
        w = np.hanning(b - a + 2)[1:-1]
        if a == 0:
            w[: (b - a) // 2] = 1.0
        if b == n_channels:
            w[(b - a) // 2:] = 1.0
        raw.append(w)
    total = np.zeros(n_channels)
    for (a, b), w in zip(windows, raw, strict=True):
        total[a:b] += w
    return [w / np.maximum(total[a:b], 1e-12) for (a, b), w in zip(windows, raw, strict=True)]


class SpatialDenoiser(TransformerMixin, BaseEstimator):
    """Denoise a spectrum image using both its spectra and its neighbourhoods.

    See the module docstring for the method. Unlike the per-pixel
    :class:`~hyperspy_mlspec.DenoisingAutoencoder`, this model is fitted on one map (its
    parameters describe that map's structure) and is meant to be applied to it:
    ``fit_transform(X)``. It trains no network (closed form), so it does not use the
    training engine.

    Parameters
    ----------
    noise
        ``"auto"`` (``"poisson"`` for non-negative integer counts, unless they sit on a
        pedestal (:func:`~hyperspy_mlspec.arrays.counts.count_offset`), else
        ``"gaussian"``),
        ``"poisson"`` (counts, possibly scaled by a detector gain, which is measured) or
        ``"gaussian"`` (any data: a noise level per channel, measured from differences of
        neighbouring pixels).
    max_components
        Largest number of global components (the number used is chosen from the data).
    window_components
        Largest number of components per energy window for the fine structure (0: none).
    window_width
        Channels per energy window, or ``"auto"`` (an eighth of the channels, 16-128).
    energy_smoothing
        Denoise the global components and the mean spectrum along the energy axis
        (Noise2Self within windows of ``n_channels / 32`` channels, 16-64); False keeps
        them as found.
    sigmas
        Candidate widths (pixels) of the spatial filters; ``inf`` is the map mean.
    axis_scale
        Per navigation axis, width multiplier (e.g. the ratio of pixel sizes); None: 1.
    max_fit_pixels
        Lazy (dask) input: the model is fitted on a central crop of at most this many
        pixels.
    random_state
        Seed of the noise split that finds the fine-structure components (None: 0); the
        same seed gives the same result.

    Attributes
    ----------
    n_components_ : int
        Global components used.
    n_window_components_ : int
        Window components used, all windows together.
    components_ : ndarray of shape (n_components, n_channels)
        Global components (whitened units).
    choice_ : FilterChoice
        Per coordinate: width, scale and error variance of its spatial filter (global
        components first, then the window components).
    noise_ : str
        Noise model used.
    gain_ : float
        Measured noise variance relative to Poisson (``"poisson"``; 1 for pure counts).
    count_offset_ : float
        Measured pedestal of count data (``noise="auto"``; data units, 0 when not
        measured): above 30 % of the median count the Gaussian noise model is used.
    noise_correlation_ : ndarray of shape (4,)
        Measured correlation of the noise between channels 1-4 apart (a detector's
        point-spread function; zeros when negligible). Used for the split-half tests (noise
        of that correlation, not count splitting, makes independent halves) and for the
        noise edges.
    mean_spectrum_ : ndarray of shape (n_channels,)
        Mean spectrum of the fitted map (the whitening scale ``h``).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> yy, xx = np.mgrid[:32, :32] / 32.0
    >>> a = np.stack([1 + np.sin(3 * xx), 1 + (yy > 0.5)], -1)       # two abundance maps
    >>> spectra = rng.random((2, 64)) + 0.2
    >>> clean = 5 * a @ spectra
    >>> noisy = rng.poisson(clean).astype(float)
    >>> d = SpatialDenoiser().fit_transform(noisy)
    >>> err = lambda x: float(np.mean((x - clean) ** 2 / clean))
    >>> err(d) < 0.05 * err(noisy)
    True
    """

    def __init__(self, noise: str = "auto", *, max_components: int = 16,
                 window_components: int = 4, window_width: int | str = "auto",
                 energy_smoothing: bool = True,
                 sigmas: Sequence[float] = filters.DEFAULT_SIGMAS,
                 axis_scale: Sequence[float] | None = None,
                 max_fit_pixels: int = 2**18, random_state: int | None = 0) -> None:
        self.noise = noise
        self.max_components = max_components
        self.window_components = window_components
        self.window_width = window_width
        self.energy_smoothing = energy_smoothing
        self.sigmas = sigmas
        self.axis_scale = axis_scale
        self.max_fit_pixels = max_fit_pixels
        self.random_state = random_state

    # -- validation ---------------------------------------------------------------------------
    def _check_params(self) -> None:
        if self.noise not in ("auto", "poisson", "gaussian"):
            raise ValueError(f"noise must be 'auto', 'poisson' or 'gaussian', got {self.noise!r}")
        for name in ("max_components", "window_components"):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Integral) and value >= 0):
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.max_components < 1:
            raise ValueError("max_components must be at least 1")
        if self.window_width != "auto" and not (
                isinstance(self.window_width, numbers.Integral) and self.window_width >= 4):
            raise ValueError(f"window_width must be 'auto' or an integer >= 4, got "
                             f"{self.window_width!r}")
        if not len(self.sigmas) or any(not (s > 0) for s in self.sigmas):
            raise ValueError(f"sigmas must be positive widths, got {self.sigmas!r}")
        if not isinstance(self.energy_smoothing, (bool, np.bool_)):
            raise ValueError(f"energy_smoothing must be True or False, got "
                             f"{self.energy_smoothing!r}")

    def _check_input(self, X, valid, reset: bool):
        if _is_dask(X):
            shape = tuple(int(n) for n in X.shape)
        else:
            X = np.asarray(X)
            shape = X.shape
        if len(shape) < 2:
            raise ValueError(
                "SpatialDenoiser needs spectra on a navigation grid, an array of shape "
                f"nav_shape + (n_channels,), got shape {shape}. A single spectrum has no "
                "neighbours: use the per-pixel DenoisingAutoencoder instead.")
        if np.iscomplexobj(np.empty(0, dtype=X.dtype)):
            raise ValueError("complex data are not supported: take the real part or modulus")
        nav = shape[:-1]
        if int(np.prod(nav)) < 4:
            raise ValueError(f"a navigation grid of {nav} pixels is too small for spatial "
                             "denoising (at least 4 pixels); use the per-pixel model")
        if valid is not None:
            valid = np.asarray(valid, dtype=bool)
            if valid.shape != nav:
                raise ValueError(f"valid has shape {valid.shape}; expected the navigation "
                                 f"shape {nav}")
        if not reset:
            check_is_fitted(self, "choice_")
            if shape[-1] != self.n_features_in_:
                raise ValueError(f"X has {shape[-1]} channels, but the model was fitted on "
                                 f"{self.n_features_in_}")
            if len(nav) != len(self.nav_shape_):
                raise ValueError(f"X has {len(nav)} navigation dimensions, the model was "
                                 f"fitted on {len(self.nav_shape_)}")
        return X, valid

    def _axis_scale(self, nd: int) -> tuple[float, ...]:
        if self.axis_scale is None:
            return (1.0,) * nd
        scale = tuple(float(a) for a in self.axis_scale)
        if len(scale) != nd or any(not (a > 0) for a in scale):
            raise ValueError(f"axis_scale must hold {nd} positive numbers, got "
                             f"{self.axis_scale!r}")
        return scale

    # -- fitting --------------------------------------------------------------------------------
    def fit(self, X, y=None, valid: np.ndarray | None = None):
        """Fit the model to a map.

        Parameters
        ----------
        X
            ``nav_shape + (n_channels,)`` numpy or dask array (dask: fitted on a central
            crop of at most ``max_fit_pixels`` pixels).
        y
            Ignored.
        valid
            Boolean ``nav_shape`` mask of pixels to use (None: every finite pixel).

        Returns
        -------
        self
        """
        self._check_params()
        X, valid = self._check_input(X, valid, reset=True)
        nav = tuple(int(n) for n in X.shape[:-1])
        if _is_dask(X) or int(np.prod(nav)) > self.max_fit_pixels:
            crop = self._crop(nav)
            Xc = np.asarray(X[crop + (slice(None),)])
            valid = None if valid is None else valid[crop]
        else:
            Xc = np.asarray(X)
        self.nav_shape_ = nav
        self._fit_array(Xc, valid)
        return self

    def _crop(self, nav: tuple[int, ...]) -> tuple[slice, ...]:
        """Central crop with at most ``max_fit_pixels`` pixels, the same fraction of every
        axis."""
        n = int(np.prod(nav))
        f = (self.max_fit_pixels / n) ** (1.0 / len(nav)) if n > self.max_fit_pixels else 1.0
        out = []
        for m in nav:
            size = int(max(1, min(m, math.floor(m * f))))
            start = (m - size) // 2
            out.append(slice(start, start + size))
        return tuple(out)

    def _whitening(self, X: np.ndarray, v: np.ndarray, axis_scale) -> np.ndarray:
        """Per-pixel scale ``sqrt(g_i)`` (Poisson) of the map ``X``."""
        if self.noise_ != "poisson":
            return np.ones(X.shape[:-1], dtype=np.float32)
        totals = X.sum(axis=-1, dtype=np.float64)[..., None]
        if not hasattr(self, "mean_total_"):  # fitting: the map's mean, kept for transform
            self.mean_total_ = max(float(totals[v].mean()), 1e-12)
            # small grids: each pixel's own total (pooling would blur what few pixels
            # there are); the choice is kept for the blocks of a lazy transform
            self.whitening_sigma_ = _BASIS_SIGMA if max(X.shape[:-1]) >= _MIN_POOLED_SIDE \
                else 0.0
        sigma = self.whitening_sigma_
        pooled = _smooth(totals, sigma, v, axis_scale)[..., 0] if sigma else totals[..., 0]
        return np.sqrt(np.maximum(pooled / self.mean_total_, 1e-3)).astype(np.float32)

    def _fit_array(self, X: np.ndarray, valid: np.ndarray | None) -> None:
        nav = X.shape[:-1]
        nd = len(nav)
        D = X.shape[-1]
        self.n_features_in_ = int(D)
        axis_scale = self._axis_scale(nd)
        X = np.asarray(X, dtype=np.float32)
        finite = np.isfinite(X).all(axis=-1)
        v = finite if valid is None else (valid & finite)
        if v.sum() < 4:
            raise ValueError("fewer than 4 valid pixels: nothing to learn the map's structure "
                             "from. Check navigation_mask (True excludes a pixel) and NaNs.")
        X = np.where(v[..., None], X, 0.0).astype(np.float32)
        sample = X[v][:: max(1, int(v.sum()) // 2000)]
        noise = self.noise
        fit = None  # photon-transfer fit of count data, once
        if noise == "auto":
            noise, fit = auto_noise(sample)
        self.count_offset_ = count_offset(fit) if fit else 0.0
        if noise == "poisson" and sample.min() < 0:
            raise ValueError("noise='poisson' needs non-negative counts; these data hold "
                             f"negative values (minimum {sample.min():.4g}). Use "
                             "noise='gaussian'.")
        if not np.any(sample):
            raise ValueError("every spectrum is zero: there is nothing to denoise")
        self.noise_ = noise
        self.__dict__.pop("mean_total_", None)  # refitting
        self.__dict__.pop("whitening_sigma_", None)
        n = int(np.prod(nav))
        vf = v.reshape(-1)
        if noise == "poisson":
            h = X.reshape(n, D)[vf].mean(axis=0).astype(np.float64)
            floor = 1e-3 * max(float(h.mean()), 1e-12)
            self.mean_spectrum_ = np.maximum(h, floor)
            col = np.sqrt(self.mean_spectrum_)
        else:
            self.mean_spectrum_ = X.reshape(n, D)[vf].mean(axis=0).astype(np.float64)
            col = self._gaussian_noise_level(X, v)
            if _looks_like_counts(sample) and len(sample) >= MIN_GAIN_ROWS:
                # integer data in the Gaussian model (counts on a pedestal, or the user's
                # choice): differences of discrete values make the median-based level
                # coarse; the photon-transfer fit, var = g h + c, gives it per channel
                g_pt, c_pt = fit or photon_transfer(sample)
                if g_pt > 0:
                    var = g_pt * self.mean_spectrum_ + c_pt
                    col = np.sqrt(np.maximum(var, 1e-3 * max(float(np.median(var)), 1e-12)))
        self.column_scale_ = col.astype(np.float64)
        g = self._whitening(X, v, axis_scale)
        Y = X / (g[..., None] * col.astype(np.float32))
        self.offset_ = Y.reshape(n, D)[vf].mean(axis=0).astype(np.float64)
        Y = np.where(v[..., None], Y - self.offset_.astype(np.float32), 0.0).astype(np.float32)

        # 1. global basis on the pooled map
        K = int(min(self.max_components, D - 1, max(1, int(v.sum()) - 1)))
        sigma_b = _BASIS_SIGMA if max(nav) >= _MIN_POOLED_SIDE else 0.0
        B = (_smooth(Y, sigma_b, v, axis_scale) if sigma_b else Y).reshape(n, D)[vf]
        cov = (B.T.astype(np.float64) @ B.astype(np.float64)) / len(B)
        evals, evecs = _leading_eigh(cov, K)
        nu = _kernel_square_sum(sigma_b, axis_scale) if sigma_b else 1.0
        n_eff = max(vf.sum() * nu, 1.0)
        # pooled unit noise: Marchenko-Pastur edge; its level is measured below (gain)
        edge = nu * (1.0 + math.sqrt(D / n_eff)) ** 2
        V = evecs[:, :K]
        Z = Y.reshape(n, D) @ V.astype(np.float32)
        level = self._noise_level(Y, v, axis_scale, K)
        self.gain_ = level if noise == "poisson" else 1.0
        noise_level = level
        self.noise_level_ = noise_level
        if self.energy_smoothing:
            # the mean spectrum carries noise of variance noise / n per channel, which every
            # reconstructed pixel inherits (a tenth of the error of a 40-pixel line scan)
            self.offset_ = self._smooth_along_energy(
                self.offset_[:, None], np.array([noise_level / max(int(vf.sum()), 1)]))[:, 0]
        # components: those above the pooled-noise edge, or found significant on the
        # checkerboard test (small maps, where the edge is very high), whichever is more
        # correlated noise: the pooled noise's eigenvalues reach the largest value of its
        # power spectrum along energy times the white edge
        edge *= float(noise_power(D, self.noise_correlation_).max())
        k_edge = int((evals[:K] > _SIGNIFICANCE * edge * noise_level).sum())
        k = int(np.clip(max(k_edge, self.__dict__.pop("_n_significant", 0)), 1, K))
        halves = None
        if nav and max(nav) >= _MIN_HONEST_SIDE:
            halves = self._split(X, v)
            k = max(k, self._honest_count(halves, g, v, axis_scale, K, sigma_b))
        self.n_components_ = k
        V = V[:, :k]
        if self.energy_smoothing:
            V = self._smooth_components(V, Z[vf, :k], noise_level)
        self.components_ = V.T.copy()

        # 2. window bases of the remainder, found on the map pooled at a larger scale
        width = self._width(D)
        self.windows_ = _windows(D, width)
        self.window_bases_ = [np.zeros((b - a, 0)) for a, b in self.windows_]
        if self.window_components > 0 and halves is not None:
            self.window_bases_ = self._honest_window_bases(halves, g, v, axis_scale)
        self.n_window_components_ = int(sum(U.shape[1] for U in self.window_bases_))

        # 3. per-coordinate spatial filters
        coords = self._coordinates(Y.reshape(n, D), vf)
        var = self._coordinate_variance(coords.shape[1])
        self.choice_ = filters.select(coords.reshape(nav + (-1,)), var, v,
                                      tuple(self.sigmas), axis_scale)
        self.fit_valid_fraction_ = float(v.mean())

    def _noise_level(self, Y: np.ndarray, v: np.ndarray, axis_scale, K: int) -> float:
        """Noise variance in whitened units (the detector gain for counts; about 1 for
        pure Poisson counts and for the Gaussian model).

        Measured on a checkerboard: components found on the pooled map of the "black"
        pixels describe the "white" ones, whose remainder is then noise (plus the little
        signal beyond ``K`` components); the median over channels of its variance, divided
        by the fraction of noise a projection leaves, is the level. A basis found on the
        same pixels would absorb their noise (badly so on small maps).
        """
        nav = v.shape
        n = int(np.prod(nav))
        D = Y.shape[-1]
        parity = np.indices(nav).sum(axis=0) % 2 == 0
        black, white = v & parity, v & ~parity
        if white.sum() < 2 or black.sum() < 2:
            black = white = v
        k = int(min(K, max(1, int(black.sum()) - 1), D - 1))
        sigma_b = _BASIS_SIGMA if max(nav) >= _MIN_POOLED_SIDE else 0.0
        pooled = _smooth(Y, sigma_b, black, axis_scale) if sigma_b else Y
        B = pooled.reshape(n, D)[black.reshape(-1)]
        B = B - B.mean(axis=0)
        cov = (B.T.astype(np.float64) @ B.astype(np.float64)) / len(B)
        V = _leading_eigh(cov, k)[1].astype(np.float32)
        Yw = Y.reshape(n, D)[white.reshape(-1)]
        Yw = Yw - Yw.mean(axis=0)
        Zw = Yw @ V
        R = Yw - Zw @ V.T
        level = float(np.median((R.astype(np.float64) ** 2).mean(axis=0)))
        frac = float(np.median(1.0 - (V.astype(np.float64) ** 2).sum(axis=1)))
        level = max(level / max(frac, 1e-6), 1e-12)
        self.noise_correlation_ = channel_correlation(R.astype(np.float64),
                                                       V.astype(np.float64))
        # honest significance of the leading components: their variance on pixels they were
        # not found on must exceed the noise's along them (by 3 standard errors); noise
        # correlated between channels (a detector's point-spread function) is stronger
        # along smooth directions
        var_w = (Zw.astype(np.float64) ** 2).mean(axis=0)
        noise_w = level * quadratic_noise(V.astype(np.float64), self.noise_correlation_)
        se = noise_w * math.sqrt(2.0 / max(len(Zw), 1))
        significant = var_w > noise_w + 3.0 * se
        self._n_significant = int(np.argmin(significant)) if not significant.all() else k
        return level

    def _whiten(self, X: np.ndarray, g: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Whitened, centred ``nav_shape + (D,)`` map (zero at invalid pixels)."""
        Y = X / (g[..., None] * self.column_scale_.astype(np.float32)) - \
            self.offset_.astype(np.float32)
        return np.where(v[..., None], Y, 0.0).astype(np.float32)

    def _honest_count(self, halves, g: np.ndarray, v: np.ndarray, axis_scale, K: int,
                      sigma_b: float) -> int:
        """Leading components found on one noisy half of the map whose scores on the other
        half the spatial filter still finds signal in (their scale ``beta > 0``)."""
        x1, x2, factor = halves
        nav = v.shape
        n, D = int(np.prod(nav)), x1.shape[-1]
        vf = v.reshape(-1)
        Y1 = self._whiten(x1, g, v)
        B = (_smooth(Y1, sigma_b, v, axis_scale) if sigma_b else Y1).reshape(n, D)[vf]
        cov = (B.T.astype(np.float64) @ B.astype(np.float64)) / len(B)
        V1 = _leading_eigh(cov, K)[1].astype(np.float32)
        Z2 = (self._whiten(x2, g, v).reshape(n, D) @ V1).astype(np.float64)
        Z2[~vf] = 0.0
        var = self.noise_level_ * factor * quadratic_noise(V1.astype(np.float64),
                                                            self.noise_correlation_)
        choice = filters.select(Z2.reshape(nav + (-1,)), var, v, tuple(self.sigmas),
                                axis_scale)
        signal = choice.beta > 0
        return int(np.argmin(signal)) if not signal.all() else K

    def _smooth_components(self, V: np.ndarray, Z: np.ndarray, noise_level: float
                           ) -> np.ndarray:
        """Components ``V`` (D, k) denoised along energy, orthonormalised again.

        The noise of a component found from scores ``Z`` is about ``noise_level /
        sum(Z^2)`` per channel, independent between channels (see
        :meth:`_smooth_along_energy`).
        """
        var = noise_level / np.maximum((Z.astype(np.float64) ** 2).sum(axis=0), 1e-300)
        out = self._smooth_along_energy(V, var)
        if out is V:
            return V
        Q, R = np.linalg.qr(out)
        return Q * np.where(np.diag(R) < 0, -1.0, 1.0)  # keep each component's sign

    def _smooth_along_energy(self, V: np.ndarray, var: np.ndarray) -> np.ndarray:
        """Columns of ``V`` (D, k), each with independent noise of variance ``var[j]`` per
        channel, denoised along energy: within overlapping windows of channels each column
        is predicted from its neighbouring channels only
        (:func:`~hyperspy_mlspec.spatial.filters.select` along the energy axis), the
        prediction combined with its own values by their posterior weights, and the
        windows blended. Returns ``V`` itself when it is too short for windows."""
        D, k = V.shape
        width = int(np.clip(D // 32, 16, 64))
        if D < 2 * width:
            return V
        windows = _windows(D, width)  # all of length ``width``: one call filters them all
        Vd = V.astype(np.float64)
        rho = self.noise_correlation_
        if np.any(rho):
            # the blind spot is one channel: filter where the noise is white (decorrelated
            # along energy), then correlate the result back
            Vd = filter_along(Vd, rho, -0.5)
        segs = np.concatenate([Vd[a:b] for a, b in windows], axis=1)  # (width, n_win * k)
        var_all = np.tile(np.asarray(var, dtype=np.float64), len(windows))
        choice = filters.select(segs, var_all, None, tuple(self.sigmas), (1.0,))
        smooth = filters.combine(segs, filters.predict(segs, choice), var_all, choice)
        out = np.zeros((D, k))
        for i, ((a, b), w) in enumerate(zip(windows, _blend_weights(windows, D), strict=True)):
            out[a:b] += smooth[:, i * k:(i + 1) * k] * w[:, None]
        return filter_along(out, rho, 0.5) if np.any(rho) else out

    def _width(self, D: int) -> int:
        if self.window_width == "auto":
            return int(np.clip(D // 8, 16, 128)) if D >= 32 else D
        return int(min(self.window_width, D))

    def _gaussian_noise_level(self, X: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Per-channel noise std of non-count data from differences of neighbouring pixels
        along every navigation axis (signal varies slowly between neighbours; the median
        keeps edges from inflating it)."""
        est = []
        for axis in range(X.ndim - 1):
            if X.shape[axis] < 2:
                continue
            a = np.take(X, range(1, X.shape[axis]), axis=axis)
            b = np.take(X, range(0, X.shape[axis] - 1), axis=axis)
            ok = np.take(v, range(1, X.shape[axis]), axis=axis) & \
                np.take(v, range(0, X.shape[axis] - 1), axis=axis)
            d = (a - b)[ok]
            if len(d):
                # MAD of a difference of two noises: std = 1.4826 MAD / sqrt(2)
                est.append(1.4826 * np.median(np.abs(d - np.median(d, axis=0)), axis=0)
                           / math.sqrt(2.0))
        if not est:
            return np.ones(X.shape[-1])
        level = np.median(np.stack(est), axis=0)
        floor = max(float(np.median(level)), 1e-12) * 1e-3
        return np.maximum(level, floor)

    def _split(self, X: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Two versions of the map with independent noise, and their noise variance
        relative to the map's: binomial halves of counts (Poisson thinning, in electrons
        for counts with a gain) or, for Gaussian noise and for noise correlated between
        channels, ``X + n'`` and ``X - n'`` with ``n'`` of the measured noise level and
        correlation (recorrupted pairs)."""
        seed = 0 if self.random_state is None else self.random_state
        z = np.random.default_rng(seed).standard_normal(X.shape, dtype=np.float32)
        correlated = bool(np.any(self.noise_correlation_))
        if self.noise_ == "poisson" and not correlated:
            # binomial halves of the electrons x / g by the rounded normal approximation
            # (right mean and variance, within 0.01 of the exact probabilities from 1 count;
            # 10x faster than exact). With a detector gain g halves of the data units would
            # share most of their noise (each electron's g units go to both), which the
            # split-half tests would take for signal; its electrons are not whole counts,
            # so they are split unrounded (halves independent, each of variance 2 g x)
            unit = is_unit_gain(self.gain_)
            g = np.float32(1.0 if unit else self.gain_)
            e = np.maximum(X, 0).astype(np.float32) / g
            if unit:
                e = np.rint(e)
            a = 0.5 * e + 0.5 * np.sqrt(e) * z
            a = np.clip(np.rint(a) if unit else a, 0.0, e)
            return 2 * g * a, 2 * g * (e - a), 2.0
        # recorrupted pairs X +- n' with n' of the measured variance (and correlation
        # between channels, where no split of the counts gives independent halves):
        # cov(N + n', N - n') = 0
        if correlated:
            z = colour(z, self.noise_correlation_)
        if self.noise_ == "poisson":
            scale = np.sqrt(np.float32(self.gain_) * np.maximum(X, 0).astype(np.float32))
        else:
            scale = self.column_scale_.astype(np.float32) * \
                np.float32(math.sqrt(self.noise_level_))
        extra = (scale * z).astype(np.float32)
        return X + extra, X - extra, 2.0

    def _remainder(self, X: np.ndarray, g: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Whitened, centred rows of ``X`` minus their global-component part."""
        n = int(np.prod(v.shape))
        Y = self._whiten(X, g, v).reshape(n, X.shape[-1])
        V = self.components_.T.astype(np.float32)
        return Y - (Y @ V) @ V.T

    def _honest_window_bases(self, halves, g: np.ndarray, v: np.ndarray, axis_scale
                             ) -> list[np.ndarray]:
        """Window bases found on one noisy version of the map and kept only where the
        spatial filter of the *other* version's coordinates finds signal: a basis fitted to
        a map's own noise would pass that noise on as structure."""
        x1, x2, factor = halves
        R1 = self._remainder(x1, g, v)
        bases = self._window_bases(R1, v, axis_scale, self.noise_level_ * factor)
        R2 = self._remainder(x2, g, v)
        cols, owners = [], []
        for w, ((a, b), U) in enumerate(zip(self.windows_, bases, strict=True)):
            if U.shape[1]:
                cols.append(R2[:, a:b] @ U.astype(np.float32))
                owners += [w] * U.shape[1]
        if not cols:
            return bases
        coords = np.concatenate(cols, axis=1).astype(np.float64)
        coords[~v.reshape(-1)] = 0.0
        rho = self.noise_correlation_
        var = self.noise_level_ * factor * np.concatenate(
            [quadratic_noise(U, rho) for U in bases if U.shape[1]])
        choice = filters.select(coords.reshape(v.shape + (-1,)), var, v, tuple(self.sigmas),
                                axis_scale)
        keep = choice.beta > 0
        out, i = [], 0
        for U in bases:
            m = keep[i:i + U.shape[1]]
            out.append(U[:, m].copy())
            i += U.shape[1]
        return out

    def _window_bases(self, R: np.ndarray, v: np.ndarray, axis_scale, noise_level: float
                      ) -> list[np.ndarray]:
        """Leading components of the remainder in each energy window, on the map pooled
        at a larger spatial scale (pooled noise floor subtracted)."""
        nav = v.shape
        nd = len(nav)
        n = int(np.prod(nav))
        sigma = min(_WINDOW_SIGMA, max(nav) / 4)
        resp = filters._response(nav, sigma, axis_scale).reshape(-1)
        keep_f = resp**2 > 1e-4 * (resp**2).max()
        Rm = np.where(v[..., None], R.reshape(nav + (-1,)), 0.0).astype(np.float32)
        Rh = filters._dct(Rm, nd).reshape(n, -1)[keep_f] * resp[keep_f, None]
        nv = max(int(v.sum()), 1)
        nu = float((resp[keep_f] ** 2).sum()) / n  # pooled noise variance per unit
        rho = self.noise_correlation_
        bases = []
        for a, b in self.windows_:
            C = Rh[:, a:b].T.astype(np.float64) @ Rh[:, a:b].astype(np.float64) / nv
            left = np.sqrt(np.clip(1.0 - (self.components_[:, a:b] ** 2).sum(axis=0),
                                   0.0, 1.0))
            noise = nu * noise_level * (left[:, None] * toeplitz(b - a, rho) * left[None])
            evals, evecs = np.linalg.eigh(C - noise)
            kw = int(min(self.window_components, b - a))
            bases.append(evecs[:, ::-1][:, :kw].copy())
        return bases

    def _coordinates(self, Y: np.ndarray, vf: np.ndarray | None = None) -> np.ndarray:
        """Global scores and window scores of whitened, centred rows ``Y`` (n, D)."""
        V = self.components_.T.astype(np.float32)
        Z = Y @ V
        parts = [Z.astype(np.float64)]
        if self.window_bases_:
            R = Y - Z @ V.T
            for (a, b), U in zip(self.windows_, self.window_bases_, strict=True):
                if U.shape[1]:
                    parts.append((R[:, a:b] @ U.astype(np.float32)).astype(np.float64))
        out = np.concatenate(parts, axis=1)
        if vf is not None:
            out[~vf] = 0.0
        return out

    def _coordinate_variance(self, q: int) -> np.ndarray:
        """Noise variance of each coordinate (whitened units: the measured noise level;
        window coordinates live in the remainder, orthogonal to the global components)."""
        rho = self.noise_correlation_
        var = np.full(q, self.noise_level_)
        k = self.n_components_
        var[:k] = self.noise_level_ * quadratic_noise(self.components_.T, rho)
        i = k
        for (a, b), U in zip(self.windows_, self.window_bases_, strict=True):
            if U.shape[1]:
                keep = np.clip(1.0 - (self.components_[:, a:b] ** 2).sum(axis=0), 0, 1)
                # correlated noise: the basis vectors' own noise factor (1 when white)
                corr = quadratic_noise(U, rho) / np.maximum((U**2).sum(0), 1e-300)
                var[i:i + U.shape[1]] = self.noise_level_ * ((U**2) * keep[:, None]).sum(0) \
                    * corr
                i += U.shape[1]
        return var

    def _reconstruct(self, coords: np.ndarray) -> np.ndarray:
        """Whitened, centred rows from (filtered) coordinates."""
        k = self.n_components_
        Y = coords[:, :k] @ self.components_
        if self.window_bases_:
            weights = _blend_weights(self.windows_, self.n_features_in_)
            i = k
            for (a, b), U, w in zip(self.windows_, self.window_bases_, weights, strict=True):
                if U.shape[1]:
                    Y[:, a:b] += (coords[:, i:i + U.shape[1]] @ U.T) * w
                    i += U.shape[1]
        return Y

    # -- transform ------------------------------------------------------------------------------
    def transform(self, X, valid: np.ndarray | None = None):
        """Denoised map, same shape as ``X``; masked or non-finite pixels are NaN.

        Parameters
        ----------
        X
            ``nav_shape + (n_channels,)`` numpy or dask array (dask in, dask out: blocks
            with a halo of neighbours).
        valid
            Boolean ``nav_shape`` mask of pixels to use (None: every finite pixel).

        Returns
        -------
        ndarray or dask array (float32)
        """
        X, valid = self._check_input(X, valid, reset=False)
        if _is_dask(X):
            return self._transform_dask(X, valid)
        return self._transform_array(np.asarray(X), valid)

    def fit_transform(self, X, y=None, valid: np.ndarray | None = None):
        """Fit on ``X`` and denoise it (see :meth:`fit` and :meth:`transform`)."""
        return self.fit(X, valid=valid).transform(X, valid=valid)

    def predict_blind(self, X, valid: np.ndarray | None = None) -> np.ndarray:
        """Every pixel predicted from its neighbours only (never from its own spectrum).

        The J-invariant part of the model: ``predict_blind(X)[i]`` does not change when
        ``X[i]`` does (but for the slowly varying whitening scale). Its difference from
        the data is what the Noise2Self loss measures.

        Returns
        -------
        ndarray of the shape of ``X``
        """
        X, valid = self._check_input(X, valid, reset=False)
        return self._transform_array(np.asarray(X), valid, blind=True)

    def _prepare(self, X: np.ndarray, v: np.ndarray, axis_scale):
        nav = X.shape[:-1]
        n = int(np.prod(nav))
        D = X.shape[-1]
        g = self._whitening(X, v, axis_scale)
        col = self.column_scale_.astype(np.float32)
        Y = X / (g[..., None] * col) - self.offset_.astype(np.float32)
        Y = np.where(v[..., None], Y, 0.0).astype(np.float32)
        coords = self._coordinates(Y.reshape(n, D), v.reshape(-1))
        return g, coords

    def _finish(self, filtered: np.ndarray, g: np.ndarray, v: np.ndarray) -> np.ndarray:
        nav = g.shape
        n = int(np.prod(nav))
        Y = self._reconstruct(filtered.reshape(n, -1)) + self.offset_
        out = Y * self.column_scale_ * g.reshape(n, 1)
        if self.noise_ == "poisson":
            out = np.maximum(out, 0.0)
        out = out.astype(np.float32).reshape(nav + (self.n_features_in_,))
        out[~v] = np.nan
        return out

    def _transform_array(self, X: np.ndarray, valid, blind: bool = False) -> np.ndarray:
        nav = X.shape[:-1]
        axis_scale = self._axis_scale(len(nav))
        X = np.asarray(X, dtype=np.float32)
        finite = np.isfinite(X).all(axis=-1)
        v = finite if valid is None else (valid & finite)
        X = np.where(v[..., None], X, 0.0).astype(np.float32)
        g, coords = self._prepare(X, v, axis_scale)
        maps = coords.reshape(nav + (-1,))
        pred = filters.predict(maps, self.choice_, v)
        if blind:
            filtered = pred
        else:
            var = self._coordinate_variance(maps.shape[-1])
            filtered = filters.combine(maps, pred, var, self.choice_)
        return self._finish(filtered, g, v)

    def _transform_dask(self, X, valid):
        import dask.array as da

        nav = tuple(int(n) for n in X.shape[:-1])
        nd = len(nav)
        axis_scale = self._axis_scale(nd)
        depth = filters.halo(self.choice_)
        depth = max(depth, int(4 * _BASIS_SIGMA * max(axis_scale) + 0.5))
        if X.chunks[-1] != (X.shape[-1],):
            X = X.rechunk({nd: -1})
        # blocks at least as wide as the halo (map_overlap needs it)
        X = X.rechunk({a: max(min(depth, nav[a]), max(X.chunks[a])) for a in range(nd)})
        if valid is None:
            vmask = da.ones(nav, dtype=bool, chunks=X.chunks[:nd])
        else:
            vmask = da.from_array(np.asarray(valid, dtype=bool), chunks=X.chunks[:nd])
        depths = {a: min(depth, nav[a] - 1) for a in range(nd)}
        depths[nd] = 0
        var = self._coordinate_variance(self.choice_.beta.shape[0])
        model = self

        chunks = X.chunks

        def block(x, m, block_info=None):
            # global index of the block's first interior pixel, from its position in the
            # grid of (non-overlapped) chunks
            idx = block_info[0]["chunk-location"]
            starts = [int(sum(chunks[a][:idx[a]])) for a in range(nd)]
            # the halo-extended block, with the map's borders reflected by map_overlap
            x = np.asarray(x, dtype=np.float32)
            finite = np.isfinite(x).all(axis=-1)
            vv = np.asarray(m[..., 0], dtype=bool) & finite
            x = np.where(vv[..., None], x, 0.0).astype(np.float32)
            g, coords = model._prepare(x, vv, axis_scale)
            maps = coords.reshape(x.shape[:-1] + (-1,))
            d = [depths[a] for a in range(nd)]
            inner = tuple(slice(d[a], x.shape[a] - d[a]) for a in range(nd))
            pred = filters.predict_block(maps, model.choice_, nav, starts, d, vv)
            filtered = filters.combine(maps[inner], pred, var, model.choice_)
            out = model._finish(filtered, g[inner], vv[inner])
            return np.pad(out, [(d[a], d[a]) for a in range(nd)] + [(0, 0)])

        m = vmask[..., None]
        return da.map_overlap(block, X, m, depth=depths, boundary="reflect",
                              trim=True, dtype=np.float32, align_arrays=False)
