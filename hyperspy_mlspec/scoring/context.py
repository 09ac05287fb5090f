"""Anomaly scores with spatial context: dual-window expected spectra, multi-scale scores.

A spectrum image is a map: a pixel's neighbours share its phase mixture, thickness and
drift, while a rare inclusion is absent from its surroundings. The expected spectrum of a
pixel is therefore fitted on its **surroundings, never on itself** (the dual window of
hyperspectral anomaly detection): a ring of pixels between a guard window (Chebyshev
radius ``guard``) and an outer window (radius ``outer``) is split into sectors (4 sides and
4 corners in 2-D, 2 sides on a line), and the pixel is modelled as the ring mean plus a
combination of the sectors' deviations from it (so that a pixel at a phase boundary is
explained by the sectors on its own side) plus the energy derivative of the ring mean (a
sub-channel drift between the pixel and its surroundings). The coefficients are a weighted
least-squares fit, Poisson weights for counts. An inclusion smaller than the guard window is
in no sector, so no coefficient can reproduce it.

The residuals (``x - expected``, divided by the Poisson standard deviation) are whitened per
channel by their robust spread over the map: channels at strong edges, where small drift
and thickness misfits remain, weigh less, channels where the ordinary spectra are smooth
(where an unexpected edge or peak stands out) weigh fully. They are then reduced to the
energy scales that carry signal: a new edge or peak spans several to hundreds of channels,
white noise does not, so the score of each energy scale ``w`` is the mean square of the
residuals summed over windows of ``w`` channels (normalised to 1 for white noise). Each
pixel is scored at several spatial **footprints** (its own residual, and the residual
summed over the 3x3 pixels around it, which multiplies the signal of an inclusion of a few
pixels by up to 3 and leaves the noise at 1): pooled scores find weak inclusions, the
unpooled score keeps single-pixel features that pooling would dilute. Each (footprint,
energy scale) map is turned into a robust normal score (median and MAD of the log score
over the map); energy scales are averaged per footprint, and the final score is the largest
footprint score, so pooling never erases an unpooled feature.

Everything here works on numpy arrays shaped ``navigation + (channels,)`` (2-D maps; line
scans are maps one row high) and on dask arrays through :func:`dask.array.map_overlap`; no
HyperSpy.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hyperspy_mlspec.scoring.scores import MAD_TO_SIGMA

__all__ = [
    "ContextScores",
    "DualWindowModel",
    "ContextSettings",
    "combine_scales",
    "context_residuals",
    "context_scores",
    "energy_widths",
    "scale_scores",
]

#: residuals beyond this many standard deviations are clipped when the channel noise is
#: estimated, so that rare pixels cannot inflate it (blockwise, no global quantile needed)
_CLIP = 4.0
#: pixels per block of the in-memory path: bounded temporaries (about 40 float32 values per
#: channel and pixel: sectors, design matrix, residuals)
_BLOCK_VALUES = 2**24
#: in-memory maps whose float32 residuals fit in this many bytes are not recomputed
_KEEP_BYTES = 2**28
#: penalty of a sector deviation, in units of its expected noise energy
_SECTOR_RIDGE = 0.3


@dataclass(frozen=True)
class ContextSettings:
    """How the spatial-context score looks at a map.

    Attributes
    ----------
    guard
        Chebyshev radius of the guard window left out around a pixel (1: its 3x3
        neighbourhood). Inclusions up to about ``2 * guard + 1`` pixels across are in no
        sector of their own pixels.
    outer
        Chebyshev radius of the outer window (3: 7x7); the ring between the two windows
        predicts the pixel.
    footprints
        Chebyshev radii of the spatial footprints scored (0: the pixel alone, 1: 3x3).
    widths
        Energy-window widths in channels; None chooses powers of 4 up to a quarter of the
        spectrum (:func:`energy_widths`).
    poisson
        Poisson weights (counts); False weighs all channels alike (non-count data).
    """

    guard: int = 1
    outer: int = 3
    footprints: tuple[int, ...] = (0, 1)
    widths: tuple[int, ...] | None = None
    poisson: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.guard, (int, np.integer)) and self.guard >= 0):
            raise ValueError(f"guard must be an integer >= 0 (pixels), got {self.guard!r}")
        if not (isinstance(self.outer, (int, np.integer)) and self.outer > self.guard):
            raise ValueError(f"outer must be an integer > guard ({self.guard}), got "
                             f"{self.outer!r}")
        fps = tuple(int(f) for f in self.footprints)
        if not fps or min(fps) < 0:
            raise ValueError(f"footprints must be Chebyshev radii >= 0, got {self.footprints!r}")
        object.__setattr__(self, "footprints", tuple(sorted(set(fps))))
        if self.widths is not None:
            ws = tuple(sorted({int(w) for w in self.widths}))
            if not ws or ws[0] < 1:
                raise ValueError(f"widths must be positive channel counts, got {self.widths!r}")
            object.__setattr__(self, "widths", ws)

    @property
    def halo(self) -> int:
        """Pixels of context needed around a block to score its pixels."""
        return self.outer + max(self.footprints)


def energy_widths(n_channels: int) -> tuple[int, ...]:
    """Default energy-window widths: 1, 4, 16, ... channels up to a quarter of the spectrum.

    Examples
    --------
    >>> energy_widths(1024), energy_widths(128)
    ((1, 4, 16, 64, 256), (1, 4, 16, 32))
    """
    top = max(1, int(n_channels) // 4)
    widths = {4**k for k in range(16) if 4**k <= top} | {top}
    return tuple(sorted(widths))


def _sectors(guard: int, outer: int) -> list[tuple[int, int, int, int]]:
    """Rectangles ``(row0, row1, col0, col1)`` (inclusive offsets) tiling the ring
    ``guard < max(|dy|, |dx|) <= outer``: 4 sides, then 4 corners."""
    g, r = guard, outer
    sides = [(-r, -g - 1, -g, g), (g + 1, r, -g, g), (-g, g, -r, -g - 1), (-g, g, g + 1, r)]
    corners = [(-r, -g - 1, -r, -g - 1), (-r, -g - 1, g + 1, r), (g + 1, r, -r, -g - 1),
               (g + 1, r, g + 1, r)]
    return sides + corners


def _box_sums(values: np.ndarray, rects, rows: slice, pad: int,
              out: np.ndarray | None = None) -> np.ndarray:
    """Sums of ``values`` (``(ny, nx, ...)``, zero where invalid) over each rectangle
    around every pixel of the rows ``rows``; the map is zero outside. Returns (or fills
    ``out`` with) ``(len(rows), nx, ..., n_rects)``."""
    ny, nx = values.shape[:2]
    r0, r1 = rows.start, rows.stop
    lo, hi = max(0, r0 - pad), min(ny, r1 + pad)
    # integral image of the needed rows, padded so every rectangle is a plain slice
    buf = np.zeros((r1 - r0 + 2 * pad + 1, nx + 2 * pad + 1) + values.shape[2:],
                   dtype=np.float64)
    buf[lo - r0 + pad + 1: hi - r0 + pad + 1, pad + 1: pad + 1 + nx] = values[lo:hi]
    np.cumsum(buf, axis=0, out=buf)
    np.cumsum(buf, axis=1, out=buf)
    n = r1 - r0
    if out is None:
        out = np.empty((n, nx) + values.shape[2:] + (len(rects),), dtype=np.float32)
    for k, (a, b, c, d) in enumerate(rects):
        hr, lr = slice(b + pad + 1, b + pad + 1 + n), slice(a + pad, a + pad + n)
        hc, lc = slice(d + pad + 1, d + pad + 1 + nx), slice(c + pad, c + pad + nx)
        out[..., k] = buf[hr, hc] - buf[lr, hc] - buf[hr, lc] + buf[lr, lc]
    return out


def context_residuals(cube: np.ndarray, valid: np.ndarray, settings: ContextSettings,
                      rows: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Residuals of every pixel against its dual-window expected spectrum.

    Parameters
    ----------
    cube
        ``(ny, nx, n_channels)`` spectra (a line scan is ``(1, n, n_channels)``); values of
        invalid pixels are ignored.
    valid
        ``(ny, nx)`` boolean: pixels that may serve as context (False: masked, NaN, outside).
    settings
        Windows and noise model.
    rows
        The rows to compute (all by default); context is read from the whole ``cube``.

    Returns
    -------
    residual, expected
        float32 arrays ``(n_rows, nx, n_channels)``: the residual in noise units (Poisson
        standard deviation of the expected counts, or data units) and the expected spectra.
        Pixels without any valid context pixel get NaN.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> cube = rng.poisson(20.0, (12, 12, 64)).astype(float)
    >>> r, mu = context_residuals(cube, np.ones((12, 12), bool), ContextSettings())
    >>> r.shape, round(float(np.nanstd(r)), 1)
    ((12, 12, 64), 1.0)
    """
    ny, nx, n_ch = cube.shape
    rows = slice(0, ny) if rows is None else rows
    n = rows.stop - rows.start
    rects = _sectors(settings.guard, settings.outer)
    n_sec = len(rects)
    pad = settings.outer
    valid = np.asarray(valid, dtype=bool)
    lo, hi = max(0, rows.start - pad), min(ny, rows.stop + pad)
    part = np.where(valid[lo:hi, :, None], cube[lo:hi], 0.0)
    # design matrix per pixel: ring mean, sector deviations from it, its energy derivative
    design = np.empty((n, nx, n_ch, n_sec + 2), dtype=np.float32)
    sector = design[..., 1:n_sec + 1]
    _box_sums(part, rects, slice(rows.start - lo, rows.stop - lo), pad, out=sector)
    counts = _box_sums(valid[lo:hi].astype(np.float64), rects,
                       slice(rows.start - lo, rows.stop - lo), pad)
    counts = np.rint(counts).astype(np.float32)                  # (n, nx, S)
    total = counts.sum(-1)
    ring = design[..., 0]
    np.sum(sector, axis=-1, out=ring)
    ring /= np.maximum(total, 1.0)[..., None]
    sector /= np.maximum(counts, 1.0)[..., None, :]
    sector -= ring[..., None]
    sector *= (counts > 0)[..., None, :]                          # empty sectors drop out
    if n_ch > 1:
        design[..., -1] = np.gradient(ring, axis=-1)
    else:
        design[..., -1] = 0.0
    x = np.where(valid[rows][..., None], cube[rows], 0.0).astype(np.float32)
    if settings.poisson:
        level = _smooth_channels(ring)
        scale = x.sum(-1, keepdims=True) / np.maximum(ring.sum(-1, keepdims=True), 1e-12)
        var = np.maximum(level * np.clip(scale, 0.05, 20.0), 0.0)
        floor = 1e-3 * var.mean(-1, keepdims=True) + 1e-6
        weight = (1.0 / np.sqrt(np.maximum(var, floor))).astype(np.float32)
        # noise energy of a sector mean in weighted units: sum_c level_c / var_c per pixel
        noise_energy = (np.maximum(level, 0.0) * weight**2).sum(-1)
    else:
        weight = np.ones((n, nx, n_ch), dtype=np.float32)
        noise_energy = np.full((n, nx), n_ch * _noise_variance(x[valid[rows]]))
    p = n * nx
    dw = design.reshape(p, n_ch, -1)
    weight = weight.reshape(p, n_ch)
    dw *= weight[..., None]                                       # weighted, in place
    xw = x.reshape(p, n_ch) * weight
    dwt = np.ascontiguousarray(dw.transpose(0, 2, 1))
    gram = np.matmul(dwt, dw).astype(np.float64)
    rhs = np.matmul(dwt, xw[..., None]).astype(np.float64)
    k = gram.shape[-1]
    diag = np.einsum("pii->pi", gram)
    # sector deviations are noisy (a few pixels each): each is penalised by its expected
    # noise energy, so a deviation that is only noise is shrunk towards the plain ring mean
    # (it could otherwise fit part of an anomaly: 8 free columns on 100-200 channels),
    # while a real one (a phase boundary through the ring) is kept; a tiny ridge keeps
    # collinear columns solvable
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(counts > 0, 1.0 / np.maximum(counts, 1.0) - 1.0 / np.maximum(
            total, 1.0)[..., None], 0.0)
    penalty = np.zeros((p, k))
    penalty[:, 1:n_sec + 1] = (_SECTOR_RIDGE * noise_energy[..., None] * inv).reshape(p, -1)
    penalty += 1e-6 * diag.mean(-1, keepdims=True) + 1e-12
    gram[:, np.arange(k), np.arange(k)] += penalty
    coef = np.linalg.solve(gram, rhs).astype(np.float32)
    fitted = np.matmul(dw, coef)[..., 0]                          # weighted expected
    residual = xw - fitted
    expected = fitted / weight
    no_context = (total.reshape(p) == 0) | ~valid[rows].reshape(p)
    residual[no_context] = np.nan
    expected[no_context] = np.nan
    return residual.reshape(n, nx, n_ch), expected.reshape(n, nx, n_ch)


def _noise_variance(x: np.ndarray) -> float:
    """Noise variance of non-count spectra from second differences along the channels
    (insensitive to smooth signal): median of squares / (6 * 0.4549)."""
    if x.shape[-1] < 3 or not x.size:
        return 1.0
    d2 = x[..., 2:] - 2.0 * x[..., 1:-1] + x[..., :-2]
    value = float(np.median(d2 * d2)) / (6.0 * 0.4549)
    return value if value > 0 else float(np.mean(d2 * d2)) / 6.0 or 1.0


def _smooth_channels(a: np.ndarray) -> np.ndarray:
    """Light [1, 2, 1] / 4 smoothing along the channels (a variance estimate, not data)."""
    if a.shape[-1] < 3:
        return a
    out = a * 0.5
    out[..., 1:] += 0.25 * a[..., :-1]
    out[..., :-1] += 0.25 * a[..., 1:]
    out[..., 0] += 0.25 * a[..., 0]
    out[..., -1] += 0.25 * a[..., -1]
    return out


def _channel_power(residual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel sum of clipped squared residuals and the number of finite pixels."""
    r = residual.reshape(-1, residual.shape[-1])
    finite = np.isfinite(r).all(axis=1)
    r = r[finite]
    return np.minimum(r * r, _CLIP**2).sum(0, dtype=np.float64), np.array([finite.sum()])


def _noise_scale(power: np.ndarray, count: float) -> np.ndarray:
    """Per-channel standard deviation of the residuals from the clipped power (a normal
    variable clipped at 4 sigma keeps 99.9 % of its variance)."""
    var = power / max(float(count), 1.0)
    var = np.where(var > 0, var, np.nan)
    fill = np.nanmedian(var) if np.isfinite(var).any() else 1.0
    return np.sqrt(np.where(np.isfinite(var), var, fill)).astype(np.float32)


def _pool(residual: np.ndarray, radius: int, rows: slice) -> np.ndarray:
    """Residuals summed over the ``(2 radius + 1)``-square footprint of each pixel of
    ``rows`` (NaN pixels count as missing), divided by the square root of the number of
    pixels summed so white noise keeps unit variance."""
    if radius == 0:
        return residual[rows]
    ny, nx = residual.shape[:2]
    finite = np.isfinite(residual).all(axis=-1)
    r = np.where(finite[..., None], residual, 0.0)
    rect = [(-radius, radius, -radius, radius)]
    sums = _box_sums(r, rect, rows, radius)[..., 0]
    count = _box_sums(finite.astype(np.float64), rect, rows, radius)[..., 0]
    out = sums / np.sqrt(np.maximum(count, 1.0))[..., None]
    out[~finite[rows]] = np.nan
    return out


def _window_energy(r: np.ndarray, widths: Sequence[int]) -> np.ndarray:
    """Residual energy at each energy scale: the residual summed over windows of ``w``
    channels and divided by ``sqrt(w)`` (unit variance for white noise), squared, then
    averaged over all window positions (a feature spread over the spectrum, e.g. the
    continuum of a new edge) and maximised over them (a localised one, e.g. a peak).
    Returns ``(..., 2, n_widths)``: means, then maxima."""
    n_ch = r.shape[-1]
    cum = np.zeros(r.shape[:-1] + (n_ch + 1,), dtype=np.float64)
    np.cumsum(r, axis=-1, out=cum[..., 1:])
    out = np.empty(r.shape[:-1] + (2, len(widths)), dtype=np.float64)
    for i, w in enumerate(widths):
        w = min(int(w), n_ch)
        box = cum[..., w:] - cum[..., :-w]
        box *= box
        out[..., 0, i] = box.mean(axis=-1) / w
        out[..., 1, i] = box.max(axis=-1) / w
    return out


def _block_energies(residual: np.ndarray, scale: np.ndarray, settings: ContextSettings,
                    widths: Sequence[int], rows: slice) -> np.ndarray:
    """Raw scale scores ``(n_footprints, 2, n_widths, n_rows, nx)`` of the rows ``rows``
    from the residuals of a block (rows around them included for pooling)."""
    white = residual / scale
    out = []
    for radius in settings.footprints:
        pooled = _pool(white, radius, rows)
        energy = _window_energy(np.nan_to_num(pooled), widths)
        energy[~np.isfinite(pooled).all(axis=-1)] = np.nan
        out.append(np.moveaxis(energy, (-2, -1), (0, 1)))
    return np.stack(out)


def scale_scores(values: np.ndarray) -> np.ndarray:
    """Robust standardisation ``(v - median) / (1.4826 MAD)`` of each map: over all axes
    but the first (the scales); NaN stays NaN and is ignored.

    Examples
    --------
    >>> import numpy as np
    >>> e = np.random.default_rng(0).chisquare(50, (1, 1000)) / 50
    >>> z = scale_scores(e)
    >>> abs(round(float(np.median(z)), 3)), 0.8 < float(np.std(z)) < 1.2
    (0.0, True)
    """
    values = np.asarray(values, dtype=np.float64)
    flat = values.reshape(values.shape[0], -1)
    if not np.isfinite(flat).any():
        return np.full(values.shape, np.nan)
    with np.errstate(invalid="ignore"):
        med = np.nanmedian(flat, axis=1, keepdims=True)
        mad = MAD_TO_SIGMA * np.nanmedian(np.abs(flat - med), axis=1, keepdims=True)
        spread = np.where(mad > 0, mad, np.nanstd(flat, axis=1, keepdims=True))
    spread = np.where(spread > 0, spread, 1.0)
    return ((flat - med) / spread).reshape(values.shape)


def combine_scales(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-footprint scores and the final score from the scores of every scale.

    For each footprint, the energy scales are averaged separately for the spread-out
    (mean) and the localised (max) statistics, each re-standardised, and the larger of the
    two kept; the final score is the largest footprint score, so that pooling never hides
    what a single pixel shows. Every step is robustly re-standardised over the map.

    Parameters
    ----------
    z
        ``(n_footprints, 2, n_widths, *navigation)`` from :func:`scale_scores`.

    Returns
    -------
    combined, per_footprint
        ``navigation`` and ``(n_footprints, *navigation)`` arrays.

    Examples
    --------
    >>> import numpy as np
    >>> z = np.random.default_rng(0).normal(size=(2, 2, 3, 4, 4))
    >>> z[0, :, :, 1, 1] += 9.0  # seen by the 1x1 footprint only
    >>> combined, per = combine_scales(z)
    >>> int(np.argmax(combined)), per.shape
    (5, (2, 4, 4))
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN (masked) pixels stay NaN
        n_fp = z.shape[0]
        per = []
        for f in range(n_fp):
            stats = scale_scores(np.nanmean(z[f], axis=1))        # (2, *navigation)
            per.append(scale_scores(np.nanmax(stats, axis=0)[None])[0])
        per = np.stack(per)
        combined = scale_scores(np.nanmax(per, axis=0)[None])[0] if n_fp > 1 else per[0]
    return combined, per


@dataclass
class ContextScores:
    """Result of :func:`context_scores` (navigation-shaped arrays, NaN where excluded).

    Attributes
    ----------
    score
        The final anomaly score: robust z-score, about standard normal for ordinary pixels.
    footprints
        ``(n_footprints, *navigation)`` per-footprint scores (energy scales combined).
    scales
        ``(n_footprints, 2, n_widths, *navigation)`` robust scores of every scale: the
        mean (spread-out features) and maximum (localised features) over window
        positions of the residual energy at each width.
    widths
        The energy-window widths (channels).
    settings
        The settings used.
    noise_scale
        Per-channel spread of the Poisson-normalised residuals (about 1 where the context
        model fits to the noise, larger at strong edges).
    """

    score: np.ndarray
    footprints: np.ndarray
    scales: np.ndarray
    widths: tuple[int, ...]
    settings: ContextSettings
    noise_scale: np.ndarray = field(repr=False)


@dataclass
class DualWindowModel:
    """The dual-window reference of a map: what :func:`context_scores` compares each
    pixel with, reusable to score another map with the same settings and channel noise,
    or to get expected spectra (e.g. mean residuals of anomalous regions).

    Attributes
    ----------
    settings
        Windows, footprints, energy scales and noise model.
    noise_scale
        Per-channel residual spread measured on the map it was made from (None: measure it
        on each map scored).
    """

    settings: ContextSettings = field(default_factory=ContextSettings)
    noise_scale: np.ndarray | None = field(default=None, repr=False)

    def expected(self, cube: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Expected spectrum of every pixel of an in-memory map from its surroundings
        (NaN where no context pixel is valid).

        Examples
        --------
        >>> import numpy as np
        >>> cube = np.random.default_rng(0).poisson(5.0, (9, 9, 32)).astype(float)
        >>> DualWindowModel().expected(cube).shape
        (9, 9, 32)
        """
        line = np.ndim(cube) == 2
        cube = _as_map(cube)
        valid = _valid(cube, valid)
        out = np.empty(cube.shape, dtype=np.float32)
        step = _rows_per_block(cube.shape[1], cube.shape[2], 8, self.settings.outer,
                               cube.shape[0])
        for r0 in range(0, cube.shape[0], step):
            r1 = min(cube.shape[0], r0 + step)
            out[r0:r1] = context_residuals(cube, valid, self.settings, slice(r0, r1))[1]
        return out[0] if line else out


def _valid(cube: np.ndarray, valid) -> np.ndarray:
    ny, nx = cube.shape[:2]
    if valid is None:
        valid = np.ones((ny, nx), dtype=bool)
    valid = np.asarray(valid, dtype=bool).reshape(ny, nx)
    if not np.issubdtype(cube.dtype, np.integer):
        valid = valid & np.isfinite(cube).all(axis=-1)
    return valid


def _rows_per_block(nx: int, n_ch: int, n_sectors: int, pad: int, ny: int) -> int:
    per_row = max(1, nx * n_ch * (n_sectors + 4))
    return int(np.clip(_BLOCK_VALUES // per_row, max(1, 2 * pad), max(ny, 1)))


def _as_map(cube: np.ndarray) -> np.ndarray:
    cube = np.asarray(cube)
    if cube.ndim == 2:      # a line scan: one row
        return cube[None]
    if cube.ndim != 3:
        raise ValueError(f"expected a (rows, columns, channels) map or a (pixels, channels) "
                         f"line, got shape {cube.shape}")
    return cube


def context_scores(cube, valid=None, settings: ContextSettings | None = None,
                   noise_scale: np.ndarray | None = None,
                   show_progressbar: bool | None = None) -> ContextScores:
    """Spatial-context anomaly scores of a map (numpy in memory, or dask).

    Parameters
    ----------
    cube
        ``(ny, nx, n_channels)`` map or ``(n, n_channels)`` line scan; numpy or dask.
    valid
        Boolean navigation mask of the pixels to use and score (True = use); None uses
        every pixel with finite values.
    settings
        :class:`ContextSettings` (defaults: guard 1, outer 3, footprints 1x1 and 3x3).
    noise_scale
        Per-channel residual spread to use instead of estimating it from this map.
    show_progressbar
        None follows the configured preference (HyperSpy's, once ``hyperspy_mlspec`` is
        imported); the bar counts rows of the in-memory path.

    Returns
    -------
    ContextScores

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> lam = np.full((24, 24, 64), 20.0); lam[10:12, 10:12, 30:40] += 12  # an inclusion
    >>> out = context_scores(rng.poisson(lam).astype(float))
    >>> bool(out.score[10:12, 10:12].min() > np.nanpercentile(out.score, 95))
    True
    """
    from hyperspy_mlspec.engine.progress import progress

    settings = ContextSettings() if settings is None else settings
    if hasattr(cube, "dask"):
        return _context_scores_dask(cube, valid, settings, noise_scale)
    line = np.ndim(cube) == 2
    cube = _as_map(cube)
    ny, nx, n_ch = cube.shape
    valid = _valid(cube, valid)
    widths = settings.widths or energy_widths(n_ch)
    pad = settings.outer
    step = _rows_per_block(nx, n_ch, 8, pad, ny)
    halo = max(settings.footprints)
    keep = cube.size * 4 <= _KEEP_BYTES
    bar = progress((1 if keep or noise_scale is not None else 2) * ny,
                   "Spatial-context anomaly scores", show_progressbar, unit="row")
    # pass 1: residuals and their channel noise (blocks of rows, context read around
    # them); the residuals are kept for pass 2 when they take little memory
    kept = np.empty((ny, nx, n_ch), dtype=np.float32) if keep else None
    if noise_scale is None or keep:
        power = np.zeros(n_ch)
        count = 0
        for r0 in range(0, ny, step):
            r1 = min(ny, r0 + step)
            res, _ = context_residuals(cube, valid, settings, slice(r0, r1))
            if keep:
                kept[r0:r1] = res
            p, c = _channel_power(res)
            power += p
            count += int(c[0])
            if not keep:
                bar.update(r1 - r0)
        if noise_scale is None:
            noise_scale = _noise_scale(power, count)
    noise_scale = np.asarray(noise_scale, dtype=np.float32)
    # pass 2: scores of each block from its residuals and those of the rows around it
    # that the footprints pool
    energies = np.full((len(settings.footprints), 2, len(widths), ny, nx), np.nan)
    for r0 in range(0, ny, step):
        r1 = min(ny, r0 + step)
        lo, hi = max(0, r0 - halo), min(ny, r1 + halo)
        if keep:
            res = kept[lo:hi]
        else:
            res, _ = context_residuals(cube, valid, settings, slice(lo, hi))
        energies[..., r0:r1, :] = _block_energies(res, noise_scale, settings, widths,
                                                slice(r0 - lo, r1 - lo))
        bar.update(r1 - r0)
    bar.close()
    energies[..., ~valid] = np.nan
    return _finish(energies, widths, settings, noise_scale, line)


def _finish(energies, widths, settings, noise_scale, line: bool) -> ContextScores:
    z = scale_scores(energies)
    score, per = combine_scales(z)
    if line:
        score, per, z = score[0], per[:, 0], z[..., 0, :]
    return ContextScores(score, per, z, tuple(int(w) for w in widths), settings, noise_scale)


def _chunks_at_least(chunks: tuple[int, ...], size: int, depth: int) -> tuple[int, ...]:
    """Chunk sizes along an axis, merged so that each is at least ``depth`` (dask's
    overlap needs it) and about as large as the largest given chunk."""
    if size <= depth:
        return (size,)
    rows = max(depth, max(chunks))
    n_blocks = max(1, size // rows)
    return tuple(int(s) for s in np.diff(np.linspace(0, size, n_blocks + 1).round()))


def _with_halos(x, depths: tuple[int, int], fill):
    """``x`` with halos of ``depths`` on the two navigation axes, the map edges padded with
    ``fill``. An axis held in one chunk is padded directly (dask's overlap refuses a depth
    larger than the axis, e.g. on a map one or two pixels wide); others overlap."""
    import dask.array as da

    overlap, pad = {2: 0}, [(0, 0)] * x.ndim
    for axis, d in enumerate(depths):
        if len(x.chunks[axis]) == 1:
            overlap[axis], pad[axis] = 0, (d, d)
        else:
            overlap[axis] = d
    if any(p != (0, 0) for p in pad):
        x = da.pad(x, pad, mode="constant", constant_values=fill)
        x = x.rechunk({a: -1 for a in (0, 1) if pad[a] != (0, 0)})  # one block again
    if any(overlap[a] for a in (0, 1)):
        x = da.overlap.overlap(x, depth=overlap,
                               boundary={0: fill, 1: fill, 2: "none"})
    return x


def _context_scores_dask(cube, valid, settings: ContextSettings,
                         noise_scale) -> ContextScores:
    """The same two passes over a dask array, block by block with overlapping halos on
    both navigation axes; only channel- and navigation-sized results are computed, the
    data are never loaded whole (each task holds one block and its halo)."""
    import dask.array as da

    line = cube.ndim == 2
    if line:
        cube = cube[None]
    ny, nx, n_ch = cube.shape
    widths = settings.widths or energy_widths(n_ch)
    depth = settings.outer + max(settings.footprints)
    halo = max(settings.footprints)
    cube = cube.rechunk((_chunks_at_least(cube.chunks[0], ny, depth),
                         _chunks_at_least(cube.chunks[1], nx, depth), -1))
    nav_chunks = cube.chunks[:2]
    if valid is None:
        valid_arr = da.ones((ny, nx), dtype=bool, chunks=nav_chunks)
    else:
        valid_arr = da.from_array(np.asarray(valid, dtype=bool).reshape(ny, nx),
                                  chunks=nav_chunks)
    if not np.issubdtype(cube.dtype, np.integer):
        valid_arr = valid_arr & da.isfinite(cube).all(axis=-1)
    dy = depth if len(nav_chunks[0]) > 1 or ny > 1 else 0
    dx = depth
    # halos: the data (and validity) of the context pixels travel with each block; the
    # map edges are padded with invalid pixels
    cube_h = _with_halos(cube.astype(np.float32), (dy, dx), 0)
    valid_h = _with_halos(valid_arr[..., None], (dy, dx), False)

    def block_power(c, v):
        res, _ = context_residuals(c, v[..., 0], settings, slice(dy, c.shape[0] - dy))
        p, n = _channel_power(res[:, dx:res.shape[1] - dx])
        return np.concatenate([p, n.astype(np.float64)])[None, None, :]

    if noise_scale is None:
        parts = da.map_blocks(block_power, cube_h, valid_h, dtype=np.float64,
                              chunks=((1,) * len(nav_chunks[0]), (1,) * len(nav_chunks[1]),
                                      (n_ch + 1,)))
        total = parts.sum(axis=(0, 1)).compute()
        noise_scale = _noise_scale(total[:-1], total[-1])
    noise_scale = np.asarray(noise_scale, dtype=np.float32)
    n_fp, n_w = len(settings.footprints), len(widths)

    def block_energy(c, v):
        n, m = c.shape[0] - 2 * dy, c.shape[1] - 2 * dx
        lo = max(0, dy - halo)
        res, _ = context_residuals(c, v[..., 0], settings, slice(lo, dy + n + min(halo, dy)))
        e = _block_energies(res, noise_scale, settings, widths, slice(dy - lo, dy - lo + n))
        e = e[..., dx:dx + m]
        e[..., ~v[dy:dy + n, dx:dx + m, 0]] = np.nan
        return np.moveaxis(e, (0, 1, 2), (2, 3, 4))  # (n, m, n_fp, 2, n_w)

    energies = da.map_blocks(block_energy, cube_h, valid_h, dtype=np.float64,
                             chunks=nav_chunks + ((n_fp,), (2,), (n_w,)),
                             new_axis=[3, 4]).compute()
    energies = np.moveaxis(energies, (2, 3, 4), (0, 1, 2))
    return _finish(energies, widths, settings, noise_scale, line)
