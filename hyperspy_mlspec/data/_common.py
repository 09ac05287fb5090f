"""Shared machinery of the synthetic spectrum-image generators.

This module holds everything that does not depend on the spectroscopy: argument
validation, the navigation-level ground truth (grain geometry, thickness map, drift map,
rare-phase blobs), the block-wise spectral generator shared by the eager and lazy paths,
the Poisson noise draw and the construction of the HyperSpy signal.

Reproducibility
---------------
All random numbers derive from a single integer seed through
:class:`numpy.random.SeedSequence` with fixed ``spawn_key`` values: one stream per
navigation-level feature (grains, thickness, drift, rare phase) and one stream per
navigation block for the Poisson noise.  The navigation blocks are fixed by the navigation
shape only (whole rows, about ``_BLOCK_PIXELS`` pixels per block), so an eager and a lazy
call with the same ``random_state`` give exactly the same counts.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from scipy.ndimage import gaussian_filter1d

__all__ = ["GroundTruth"]

#: Pixel size of the synthetic maps, in nm.
PIXEL_SIZE_NM = 2.0
#: Target number of pixels per navigation block (whole rows are kept together).
_BLOCK_PIXELS = 2048
#: Number of thickness values of the tables used for the dose normalisation.
_N_T_TABLE = 65

# spawn keys of the independent random streams
_KEY_GRAINS = 1
_KEY_THICKNESS = 2
_KEY_DRIFT = 3
_KEY_RARE = 4
_KEY_PHASE = 5
_KEY_NOISE = 10


@dataclass(repr=False)
class GroundTruth:
    """Ground truth of a synthetic spectrum image.

    Attributes
    ----------
    clean
        Noise-free expected counts, same shape as the signal data (float64). The noisy data
        are a Poisson draw of this array. A dask array when the signal is lazy.
    phase_map
        Integer phase labels, navigation shape: the argmax of `abundances`. The rare phase,
        when present, is the last label.
    abundances
        Phase fractions, ``navigation_shape + (n_phases,)``; they sum to 1 in every pixel.
    phase_names
        Name of each phase, in label order.
    phase_spectra
        ``(n_phases, n_channels)`` reference spectrum of each pure phase, in the count scale
        of `clean`, at unit thickness, without drift and without thickness effects (thin
        film, single scattering). With ``thickness=False`` and ``drift=0`` the data follow
        exactly the linear mixing model ``clean = abundances @ phase_spectra``.
    rare_mask
        Boolean mask of the rare-phase pixels, navigation shape (all False without rare
        phase).
    thickness
        Relative thickness, navigation shape: t/lambda for EELS, a relative mass-thickness
        factor for EDS. All ones when the generator was called with ``thickness=False``.
    energy_shift
        Energy shift of every pixel in signal-axis units (eV for EELS, keV for EDS),
        navigation shape. A pixel spectrum is ``S(E - shift)``.
    extra
        Technique-specific truth, e.g. ``"fe3_fraction"`` (EELS) or
        ``"phase_compositions"`` (EDS), and ``"intensity_scale"``, the factor that turns
        the model's units into counts.

    Examples
    --------
    >>> from hyperspy_mlspec.data import eels_map
    >>> s, truth = eels_map((16, 16), n_channels=256, return_truth=True)
    >>> truth.abundances.shape
    (16, 16, 3)
    >>> truth.phase_names
    ['FeO (Fe2+)', 'Fe2O3 (Fe3+)', 'TiO2 (rutile)']
    """

    clean: Any
    phase_map: np.ndarray
    abundances: np.ndarray
    phase_names: list[str]
    phase_spectra: np.ndarray
    rare_mask: np.ndarray
    thickness: np.ndarray
    energy_shift: np.ndarray
    extra: dict = field(default_factory=dict)

    @property
    def n_phases(self) -> int:
        """Number of phases, rare phase included."""
        return len(self.phase_names)

    def __repr__(self) -> str:
        shape = tuple(self.clean.shape)
        return (
            f"<GroundTruth: data shape {shape}, phases {self.phase_names}, "
            f"{int(np.count_nonzero(self.rare_mask))} rare pixel(s)>"
        )


# ---------------------------------------------------------------------------------------
# argument validation
# ---------------------------------------------------------------------------------------


def check_navigation_shape(navigation_shape: int | Sequence[int]) -> tuple[int, ...]:
    """Return `navigation_shape` as a tuple of at most two positive ints."""
    if isinstance(navigation_shape, numbers.Integral):
        navigation_shape = (int(navigation_shape),)
    try:
        shape = tuple(navigation_shape)
    except TypeError:
        raise ValueError(
            f"navigation_shape must be a tuple of ints, got {navigation_shape!r}."
        ) from None
    if len(shape) > 2:
        raise ValueError(
            f"navigation_shape must have 0, 1 or 2 dimensions, got {len(shape)}: {shape}."
        )
    for n in shape:
        if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1:
            raise ValueError(f"navigation_shape entries must be positive integers, got {shape}.")
    return tuple(int(n) for n in shape)


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    """Return `value` as a float, raising ValueError unless it is finite and > 0."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}.") from None
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value}.")
    return value


def check_n_channels(n_channels: int) -> int:
    """Return `n_channels` as an int, raising ValueError when < 16."""
    if not isinstance(n_channels, numbers.Integral) or isinstance(n_channels, bool):
        raise ValueError(f"n_channels must be an integer, got {n_channels!r}.")
    if n_channels < 16:
        raise ValueError(f"n_channels must be at least 16, got {n_channels}.")
    return int(n_channels)


def check_energy_range(
    energy_range: Sequence[float], *, minimum: float | None = None, units: str = ""
) -> tuple[float, float]:
    """Return `energy_range` as ``(lo, hi)`` floats with ``lo < hi``."""
    try:
        lo, hi = (float(v) for v in energy_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"energy_range must be a pair of numbers (low, high), got {energy_range!r}."
        ) from None
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"energy_range must be finite, got {(lo, hi)}.")
    if lo >= hi:
        raise ValueError(f"energy_range must be increasing (low < high), got {(lo, hi)}.")
    if minimum is not None and lo <= minimum:
        raise ValueError(f"energy_range must start above {minimum} {units}, got {(lo, hi)}.")
    return lo, hi


def check_rare_fraction(rare_fraction: float) -> float:
    """Return `rare_fraction` as a float, raising ValueError outside (0, 0.5)."""
    try:
        rare_fraction = float(rare_fraction)
    except (TypeError, ValueError):
        raise ValueError(f"rare_fraction must be a number, got {rare_fraction!r}.") from None
    if not 0.0 < rare_fraction < 0.5:
        raise ValueError(
            f"rare_fraction must be in the open interval (0, 0.5), got {rare_fraction}."
        )
    return rare_fraction


def resolve_seed(random_state: int | np.random.Generator | None) -> int:
    """Turn `random_state` into one non-negative integer seed.

    Parameters
    ----------
    random_state
        A non-negative int (used as is), a :class:`numpy.random.Generator` (one integer is
        drawn from it) or None (fresh OS entropy).

    Returns
    -------
    int
        The seed every random stream of the generator derives from.
    """
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> np.uint64(1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**63 - 1))
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        if random_state < 0:
            raise ValueError(f"random_state must be non-negative, got {random_state}.")
        return int(random_state)
    raise ValueError(
        "random_state must be a non-negative int, a numpy Generator or None, "
        f"got {random_state!r}."
    )


def rng_for(seed: int, *key: int) -> np.random.Generator:
    """Independent generator for the stream identified by `key`."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


# ---------------------------------------------------------------------------------------
# navigation-level geometry
# ---------------------------------------------------------------------------------------


@dataclass
class NavigationGeometry:
    """Pixel positions of a map in resolution-independent units.

    Positions are in units of the longest map side, so that the same seed gives the same
    microstructure at any resolution. A line scan samples the line ``y = 0.5`` of a
    ``1 x 0.3`` strip; a single spectrum samples the centre of a unit square.
    """

    shape: tuple[int, ...]
    points: np.ndarray  # (n_pixels, 2): y, x
    box: tuple[tuple[float, float], tuple[float, float]]  # (ymin, ymax), (xmin, xmax)

    @property
    def n_pixels(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def area(self) -> float:
        (y0, y1), (x0, x1) = self.box
        return (y1 - y0) * (x1 - x0)

    @classmethod
    def from_shape(cls, shape: tuple[int, ...]) -> NavigationGeometry:
        if len(shape) == 2:
            ny, nx = shape
            size = max(ny, nx)
            yy, xx = np.meshgrid(
                (np.arange(ny) + 0.5) / size, (np.arange(nx) + 0.5) / size, indexing="ij"
            )
            points = np.column_stack([yy.ravel(), xx.ravel()])
            box = ((0.0, ny / size), (0.0, nx / size))
        elif len(shape) == 1:
            (n,) = shape
            x = (np.arange(n) + 0.5) / n
            points = np.column_stack([np.full(n, 0.5), x])
            box = ((0.35, 0.65), (0.0, 1.0))
        else:
            points = np.array([[0.5, 0.5]])
            box = ((0.0, 1.0), (0.0, 1.0))
        return cls(shape=shape, points=points, box=box)


def smooth_field(
    points: np.ndarray, rng: np.random.Generator, *, n_waves: int = 8, k_max: float = 3.0
) -> np.ndarray:
    """Smooth random field at `points`, bounded in [-1, 1].

    A sum of `n_waves` random plane waves with wave numbers up to `k_max` cycles per unit
    length and amplitudes decaying with the wave number; it is resolution-independent.
    """
    k = rng.uniform(0.5, k_max, n_waves)
    angle = rng.uniform(0, 2 * np.pi, n_waves)
    phase = rng.uniform(0, 2 * np.pi, n_waves)
    amp = rng.normal(size=n_waves) / k
    wave_vectors = 2 * np.pi * k[:, None] * np.column_stack([np.sin(angle), np.cos(angle)])
    values = np.cos(points @ wave_vectors.T + phase) @ amp
    return values / np.abs(amp).sum()


def _poisson_disk_seeds(
    box: tuple[tuple[float, float], tuple[float, float]], n: int, rng: np.random.Generator
) -> np.ndarray:
    """About `n` random points in `box`, kept apart so no grain is tiny."""
    (y0, y1), (x0, x1) = box
    min_dist = 0.6 * np.sqrt((y1 - y0) * (x1 - x0) / n)
    seeds: list[np.ndarray] = []
    for _ in range(200 * n):
        p = np.array([rng.uniform(y0, y1), rng.uniform(x0, x1)])
        if all(np.hypot(*(p - q)) >= min_dist for q in seeds):
            seeds.append(p)
            if len(seeds) == n:
                break
    return np.array(seeds)


def grain_fractions(
    geometry: NavigationGeometry,
    type_fractions: Sequence[float],
    rng: np.random.Generator,
    *,
    grains_per_unit_area: float = 18.0,
    interface_width: float = 0.06,
) -> np.ndarray:
    """Fractions of each grain type: soft Voronoi grains with wavy, diffuse interfaces.

    Grain seeds are spread over the map, each grain gets a type (every type is used, in
    proportion to `type_fractions`), and each pixel belongs to the grains through a softmax
    of minus its squared distances to the seeds, after a smooth warp of the coordinates.
    Weights below 0.01 are cut so that grain cores are pure.

    Returns
    -------
    numpy.ndarray
        ``(n_pixels, n_types)``, rows sum to 1.
    """
    n_types = len(type_fractions)
    n_grains = max(n_types + 2, int(round(grains_per_unit_area * geometry.area)))
    seeds = _poisson_disk_seeds(geometry.box, n_grains, rng)
    n_grains = len(seeds)
    fractions = np.asarray(type_fractions, dtype=float)
    counts = np.maximum(1, np.floor(fractions / fractions.sum() * n_grains)).astype(int)
    while counts.sum() < n_grains:
        counts[np.argmax(fractions / fractions.sum() * n_grains - counts)] += 1
    while counts.sum() > n_grains:
        counts[np.argmax(counts)] -= 1
    types = rng.permutation(np.repeat(np.arange(n_types), counts))

    pts = geometry.points
    warp = 0.035 * np.column_stack(
        [smooth_field(pts, rng, k_max=5.0), smooth_field(pts, rng, k_max=5.0)]
    )
    warped = pts + warp
    spacing = 1.0 / np.sqrt(grains_per_unit_area)
    temperature = interface_width * spacing / 2.2
    membership = np.eye(n_types)[types]  # (n_grains, n_types)
    out = np.empty((len(pts), n_types))
    for i in range(0, len(pts), 65536):  # bounded memory for very large maps
        chunk = warped[i : i + 65536]
        d2 = ((chunk[:, None, :] - seeds[None, :, :]) ** 2).sum(-1)  # (n, n_grains)
        weights = np.exp(-(d2 - d2.min(axis=1, keepdims=True)) / temperature)
        weights /= weights.sum(axis=1, keepdims=True)
        weights[weights < 0.01] = 0.0
        weights /= weights.sum(axis=1, keepdims=True)
        out[i : i + 65536] = weights @ membership
    return out


def front_fraction(
    geometry: NavigationGeometry, rng: np.random.Generator, *, width: float = 0.45
) -> np.ndarray:
    """Smooth 0 -> 1 ramp across a straight, slightly wavy front (e.g. an oxidation front).

    The ramp runs along a random direction; it is exactly 0 on one side and 1 on the other,
    with a smoothstep profile over `width` (in map units) around the map centre.
    """
    angle = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.sin(angle), np.cos(angle)])
    (y0, y1), (x0, x1) = geometry.box
    centre = np.array([(y0 + y1) / 2, (x0 + x1) / 2])
    pts = geometry.points
    proj = (pts - centre) @ direction + 0.04 * smooth_field(pts, rng)
    x = np.clip(proj / width + 0.5, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def thickness_field(
    geometry: NavigationGeometry, rng: np.random.Generator, t_range: tuple[float, float]
) -> np.ndarray:
    """Smoothly varying thickness: a wedge plus smooth undulations, spanning `t_range`.

    The map minimum and maximum are `t_range` exactly (the midpoint for a single pixel).
    """
    angle = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.sin(angle), np.cos(angle)])
    (y0, y1), (x0, x1) = geometry.box
    corners = np.array([[y0, x0], [y0, x1], [y1, x0], [y1, x1]]) @ direction
    wedge = (geometry.points @ direction - corners.min()) / np.ptp(corners)
    bumps = smooth_field(geometry.points, rng, k_max=2.5)
    x = 0.7 * wedge + 0.3 * bumps
    lo, hi = t_range
    if np.ptp(x) == 0:  # a single pixel
        return np.full(len(x), 0.5 * (lo + hi))
    return lo + (hi - lo) * (x - x.min()) / np.ptp(x)


def drift_field(n_pixels: int, drift: float, rng: np.random.Generator) -> np.ndarray:
    """Per-pixel energy shift: slow drift along the scan (raster) order plus jitter.

    The slow component is a smooth function of the acquisition time (flat pixel index)
    bounded by ``2 * drift``; the jitter is white Gaussian noise with RMS `drift`.
    """
    tau = (np.arange(n_pixels) + 0.5) / n_pixels
    n_waves = 4
    freq = rng.uniform(0.3, 3.0, n_waves)
    phase = rng.uniform(0, 2 * np.pi, n_waves)
    amp = rng.normal(size=n_waves) / freq
    trend = rng.uniform(-1, 1)
    slow = np.sin(2 * np.pi * np.outer(tau, freq) + phase) @ amp + trend * (tau - 0.5)
    slow /= np.abs(amp).sum() + 0.5 * abs(trend)
    jitter = rng.normal(size=n_pixels)
    if drift == 0:
        return np.zeros(n_pixels)
    return drift * (2.0 * slow + jitter)


def rare_blobs(
    shape: tuple[int, ...], rare_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Compact clusters (1-3 blobs) covering `rare_fraction` of the pixels (at least one).

    Returns
    -------
    mask : numpy.ndarray
        Flat boolean mask of the rare pixels.
    strength : numpy.ndarray
        Flat array in [0, 1]: 1 at a blob centre, decreasing towards its rim, 0 elsewhere.
    """
    n_pix = int(np.prod(shape, dtype=np.int64))
    n_rare = int(min(n_pix, max(1, round(rare_fraction * n_pix))))
    n_blobs = int(min(rng.integers(1, 4), n_rare))
    sizes = np.full(n_blobs, n_rare // n_blobs)
    sizes[: n_rare % n_blobs] += 1
    grid = np.indices(shape if shape else (1,)).reshape(max(len(shape), 1), -1).T
    grid = grid.astype(float)
    extent = np.array(shape if shape else (1,), dtype=float)
    mask = np.zeros(n_pix, dtype=bool)
    strength = np.zeros(n_pix)
    tie_break = rng.uniform(0, 1e-3, n_pix)
    for size in sizes:
        margin = np.minimum(np.sqrt(size) + 1, (extent - 1) / 2)
        centre = margin + rng.uniform(0, 1, grid.shape[1]) * (extent - 1 - 2 * margin)
        d = np.sqrt(((grid - centre) ** 2).sum(axis=1)) + tie_break
        d[mask] = np.inf
        chosen = np.argsort(d, kind="stable")[:size]
        mask[chosen] = True
        strength[chosen] = 1.0 - np.arange(size) / max(size, 2)
    return mask, strength


def mix_rare_phase(
    abundances: np.ndarray, strength: np.ndarray, *, low: float = 0.55, high: float = 0.9
) -> np.ndarray:
    """Append a rare-phase column: abundance in [`low`, `high`] on the blobs, 0 elsewhere."""
    rare = np.where(strength > 0, low + (high - low) * strength, 0.0)
    out = np.empty((abundances.shape[0], abundances.shape[1] + 1))
    out[:, :-1] = abundances * (1.0 - rare)[:, None]
    out[:, -1] = rare
    return out


# ---------------------------------------------------------------------------------------
# spectral helpers
# ---------------------------------------------------------------------------------------


def binned(
    func: Callable[[np.ndarray], np.ndarray],
    centres: np.ndarray,
    scale: float,
    fine_step: float,
    *,
    blur_fwhm: float = 0.0,
) -> np.ndarray:
    """Channel averages of `func`, optionally blurred by a Gaussian of FWHM `blur_fwhm`.

    `func` maps an energy array of shape ``(m,)`` to values ``(..., m)``; it is evaluated on
    a grid `fine_step` fine (or finer) and averaged over each channel, so that narrow
    features keep their area whatever the channel width.
    """
    oversample = int(min(64, max(1, np.ceil(scale / fine_step))))
    offsets = (np.arange(oversample) + 0.5) / oversample - 0.5
    fine = (centres[:, None] + offsets[None, :] * scale).ravel()
    values = np.asarray(func(fine), dtype=float)
    if blur_fwhm > 0:
        sigma = blur_fwhm / 2.3548 / (scale / oversample)
        values = gaussian_filter1d(values, sigma, axis=-1, mode="nearest")
    return values.reshape(values.shape[:-1] + (len(centres), oversample)).mean(-1)


def lorentzian(energy: np.ndarray, centre: float, fwhm: float) -> np.ndarray:
    """Lorentzian of unit height."""
    return 1.0 / (1.0 + (2.0 * (energy - centre) / fwhm) ** 2)


def gaussian(energy: np.ndarray, centre: float, fwhm: float) -> np.ndarray:
    """Gaussian of unit height."""
    return np.exp(-4.0 * np.log(2.0) * ((energy - centre) / fwhm) ** 2)


class Propagator(Protocol):
    """Thickness effects of a technique: a map linear in the spectra, nonlinear in t."""

    def __call__(self, spectra: np.ndarray, thickness: np.ndarray) -> np.ndarray: ...


class IdentityPropagator:
    """No thickness effect beyond the intensity scaling (``thickness=False``)."""

    def __call__(self, spectra: np.ndarray, thickness: np.ndarray) -> np.ndarray:
        return spectra


def _cubic_weights(u: np.ndarray) -> tuple[np.ndarray, ...]:
    """Catmull-Rom weights of samples ``j-1, j, j+1, j+2`` for the position ``j + u``."""
    return (
        ((-0.5 * u + 1.0) * u - 0.5) * u,
        (1.5 * u - 2.5) * u * u + 1.0,
        ((-1.5 * u + 2.0) * u + 0.5) * u,
        (0.5 * u - 0.5) * u * u,
    )


def _shifted_window(
    coef: np.ndarray, table: np.ndarray, start: int, n_channels: int, shift: np.ndarray
) -> np.ndarray:
    """Spectra ``coef @ table`` evaluated at ``i - shift`` on the signal window.

    `shift` is in channels, one per row; the window is channels ``start .. start +
    n_channels`` of the extended grid. Catmull-Rom cubic interpolation, computed per group
    of rows sharing the same integer offset so that only contiguous slices are used. The
    result is clipped at zero (cubic overshoot near sharp peaks).
    """
    if not np.any(shift):
        return coef @ table[:, start : start + n_channels]
    pos = start - shift
    base = np.floor(pos).astype(np.intp)
    frac = pos - base
    out = np.empty((coef.shape[0], n_channels))
    n = n_channels
    for b in np.unique(base):
        rows = np.flatnonzero(base == b)
        spec = coef[rows] @ table[:, b - 1 : b + n + 2]
        w = _cubic_weights(frac[rows, None])
        res = w[1] * spec[:, 1 : n + 1]
        for k in (0, 2, 3):
            res += w[k] * spec[:, k : k + n]
        np.maximum(res, 0.0, out=res)
        out[rows] = res
    return out


class SpectrumImageGenerator:
    """Block-wise generator of clean and noisy spectra, shared by eager and lazy paths.

    The thickness effects (plural scattering, absorption) are linear in the spectra but
    nonlinear in the thickness: they are computed once per phase on a grid of
    ``_N_T_TABLE`` thickness values spanning the map, and each pixel interpolates linearly
    between the two nearest grid values (relative error below 1e-4, far under the Poisson
    noise). A pixel's spectrum is then ``t * sum_k a_k T_k(t)``, shifted by its drift.

    Parameters
    ----------
    phase_spectra_ext
        ``(n_phases, n_ext)`` single-phase spectra on the extended channel grid, in model
        units, at unit thickness and without thickness effects.
    start
        Index of the first channel of the signal window in the extended grid.
    n_channels
        Number of channels of the signal.
    abundances, thickness, shift
        Flat navigation arrays: ``(n_pixels, n_phases)``, ``(n_pixels,)`` and
        ``(n_pixels,)`` (shift in channels).
    propagator
        Thickness effects, applied to each phase spectrum at each tabulated thickness.
    navigation_shape
        Shape of the navigation space.
    dose
        Target mean counts per channel over the whole map.
    seed
        Seed of the Poisson-noise streams.
    """

    def __init__(
        self,
        phase_spectra_ext: np.ndarray,
        start: int,
        n_channels: int,
        abundances: np.ndarray,
        thickness: np.ndarray,
        shift: np.ndarray,
        propagator: Propagator,
        navigation_shape: tuple[int, ...],
        dose: float,
        seed: int,
    ) -> None:
        self.start = start
        self.n_channels = n_channels
        self.abundances = abundances
        self.thickness = thickness
        self.shift = shift
        self.navigation_shape = navigation_shape
        self.seed = seed
        self.blocks = self._block_slices(navigation_shape)
        t = thickness
        t_grid = np.linspace(t.min(), t.max(), _N_T_TABLE) if np.ptp(t) > 0 else t[:1]
        n_ph, n_ext = phase_spectra_ext.shape
        n_t = len(t_grid)
        spec = np.broadcast_to(phase_spectra_ext, (n_t, n_ph, n_ext)).reshape(-1, n_ext)
        table = propagator(np.ascontiguousarray(spec), np.repeat(t_grid, n_ph))
        self.tables = _Tables(table, t_grid, start, n_channels, 1.0, seed)
        self.tables.intensity_scale = dose * n_channels / self._mean_pixel_sum()

    @property
    def intensity_scale(self) -> float:
        """Factor from model units to counts."""
        return self.tables.intensity_scale

    @staticmethod
    def _block_slices(shape: tuple[int, ...]) -> list[slice]:
        n_pix = int(np.prod(shape, dtype=np.int64))
        if len(shape) == 2:
            step = max(1, _BLOCK_PIXELS // shape[1]) * shape[1]
        else:
            step = _BLOCK_PIXELS
        return [slice(i, min(i + step, n_pix)) for i in range(0, n_pix, step)]

    def _coefficients(self, sl: slice) -> np.ndarray:
        """``(n, n_t * n_phases)`` weights of the table rows for the pixels of `sl`."""
        return _coefficients(self.tables.t_grid, self.abundances[sl], self.thickness[sl])

    def _mean_pixel_sum(self) -> float:
        """Mean over pixels of the channel sum of the (unscaled) clean spectra.

        Exact (up to the clipping of cubic overshoots) and cheap: the window sum of a
        shifted spectrum is the same 4-tap cubic combination of the window sums of the
        table rows at neighbouring start channels, so no spectrum-image-sized array is
        formed.
        """
        n = self.n_channels
        table = self.tables.table
        cumsum = np.zeros((table.shape[0], table.shape[1] + 1))
        np.cumsum(table, axis=1, out=cumsum[:, 1:])
        window_sums = cumsum[:, n:] - cumsum[:, :-n]  # start channel s -> sum of s..s+n-1
        total = 0.0
        for sl in self.blocks:
            sums = self._coefficients(sl) @ window_sums
            shift = self.shift[sl]
            pos = self.start - shift
            base = np.floor(pos).astype(np.intp)
            u = pos - base
            weights = _cubic_weights(u[:, None]) if np.any(shift) else [0.0, 1.0, 0.0, 0.0]
            rows = np.arange(len(base))
            for k, w in enumerate(weights):
                if np.any(w):
                    total += float((np.ravel(w) * sums[rows, base + k - 1]).sum())
        return total / len(self.thickness)

    def clean_block(self, index: int) -> np.ndarray:
        """Expected counts of block `index`, shape ``(n_block_pixels, n_channels)``."""
        sl = self.blocks[index]
        return _block_clean(self.tables, self.abundances[sl], self.thickness[sl], self.shift[sl])

    def noisy_block(self, index: int) -> np.ndarray:
        """Poisson counts of block `index` as float32."""
        return _poisson(self.tables.seed, index, self.clean_block(index))

    def _block_shape(self, index: int) -> tuple[int, ...]:
        sl = self.blocks[index]
        n = sl.stop - sl.start
        if len(self.navigation_shape) == 2:
            return (n // self.navigation_shape[1], self.navigation_shape[1], self.n_channels)
        if len(self.navigation_shape) == 1:
            return (n, self.n_channels)
        return (self.n_channels,)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.navigation_shape + (self.n_channels,)

    def compute(self, *, noisy: bool) -> np.ndarray:
        """Whole array in memory (float32 counts if `noisy`, else float64 clean).

        Blocks are generated in a few threads (NumPy releases the GIL); the result does not
        depend on the number of threads.
        """
        dtype = np.float32 if noisy else np.float64
        out = np.empty((len(self.thickness), self.n_channels), dtype=dtype)
        func = self.noisy_block if noisy else self.clean_block

        def fill(i: int) -> None:
            out[self.blocks[i]] = func(i)

        n_workers = min(len(self.blocks), os.cpu_count() or 1, 4)
        if n_workers > 1:
            with ThreadPoolExecutor(n_workers) as pool:
                list(pool.map(fill, range(len(self.blocks))))
        else:
            for i in range(len(self.blocks)):
                fill(i)
        return out.reshape(self.shape)

    def to_dask(self, *, noisy: bool):
        """Lazy array built block by block (navigation chunks, whole signal axis).

        The tables are one shared task; each block task carries only its own slices of the
        navigation arrays, so the graph stays small and cheap to send to workers.
        """
        import uuid

        import dask
        import dask.array as da

        dtype = np.float32 if noisy else np.float64
        tables = dask.delayed(
            self.tables, name=f"mlspec-tables-{uuid.uuid4().hex}", traverse=False
        )
        parts = []
        for i, sl in enumerate(self.blocks):
            shape = self._block_shape(i)
            task = dask.delayed(_block_task)(
                tables, self.abundances[sl], self.thickness[sl], self.shift[sl], i, noisy, shape
            )
            parts.append(da.from_delayed(task, shape=shape, dtype=dtype))
        if len(self.navigation_shape) == 0:
            return parts[0]
        return da.concatenate(parts, axis=0)


@dataclass
class _Tables:
    """What every block needs besides its own navigation slices."""

    table: np.ndarray  # (n_t * n_phases, n_ext) propagated phase spectra
    t_grid: np.ndarray
    start: int
    n_channels: int
    intensity_scale: float
    seed: int

    def __post_init__(self) -> None:
        self.table = self.table.reshape(-1, self.table.shape[-1])


def _coefficients(t_grid: np.ndarray, a: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``(n, n_t * n_phases)`` weights of the table rows: linear interpolation in t, times t."""
    n, n_ph = a.shape
    n_t = len(t_grid)
    if n_t == 1:
        return a * t[:, None]
    pos = (t - t_grid[0]) / (t_grid[1] - t_grid[0])
    j = np.clip(np.floor(pos).astype(np.intp), 0, n_t - 2)
    w = np.clip(pos - j, 0.0, 1.0)[:, None]
    coef = np.zeros((n, n_t, n_ph))
    rows = np.arange(n)
    coef[rows, j] = (1.0 - w) * a
    coef[rows, j + 1] = w * a
    return coef.reshape(n, -1) * t[:, None]


def _block_clean(tables: _Tables, a: np.ndarray, t: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Expected counts ``(n, n_channels)`` of pixels with abundances, thickness and shift."""
    coef = _coefficients(tables.t_grid, a, t)
    out = _shifted_window(coef, tables.table, tables.start, tables.n_channels, shift)
    out *= tables.intensity_scale
    return out


def _poisson(seed: int, index: int, clean: np.ndarray) -> np.ndarray:
    """Poisson draw of block `index` with its own stream, as float32."""
    return rng_for(seed, _KEY_NOISE, index).poisson(clean).astype(np.float32)


def _block_task(
    tables: _Tables,
    a: np.ndarray,
    t: np.ndarray,
    shift: np.ndarray,
    index: int,
    noisy: bool,
    shape: tuple[int, ...],
) -> np.ndarray:
    clean = _block_clean(tables, a, t, shift)
    out = _poisson(tables.seed, index, clean) if noisy else clean
    return out.reshape(shape)


# ---------------------------------------------------------------------------------------
# signal construction
# ---------------------------------------------------------------------------------------


def navigation_axes(shape: tuple[int, ...]) -> list[dict]:
    """Axes dictionaries of the navigation dimensions, in array order."""
    names = ("y", "x") if len(shape) == 2 else ("x",)
    return [
        {
            "name": name,
            "size": n,
            "scale": PIXEL_SIZE_NM,
            "offset": 0.0,
            "units": "nm",
            "navigate": True,
        }
        for name, n in zip(names, shape, strict=False)
    ]


def build_signal(
    data: Any,
    signal_class: type,
    navigation_shape: tuple[int, ...],
    signal_axis: dict,
    title: str,
    synthetic: dict,
):
    """Create the signal with its axes, title, quantity and generator parameters."""
    axes = navigation_axes(navigation_shape) if navigation_shape else []
    axes.append(dict(signal_axis, navigate=False))
    metadata = {
        "General": {"title": title},
        "Signal": {"quantity": "Counts"},
        "Synthetic": synthetic,
    }
    return signal_class(data, axes=axes, metadata=metadata)


def phase_map_from(abundances: np.ndarray) -> np.ndarray:
    """Integer labels: argmax over the last axis."""
    return np.argmax(abundances, axis=-1).astype(np.intp)


def make_truth(generator, lazy: bool, abundances: np.ndarray, names: list[str],
               phase_spectra: np.ndarray, rare_mask: np.ndarray, thickness: np.ndarray,
               shift: np.ndarray, shape: tuple[int, ...], extra: dict) -> GroundTruth:
    """The :class:`GroundTruth` of a generated map (shared by the EELS and EDS generators)."""
    clean = generator.to_dask(noisy=False) if lazy else generator.compute(noisy=False)
    return GroundTruth(
        clean=clean,
        phase_map=phase_map_from(abundances).reshape(shape),
        abundances=abundances.reshape(shape + (len(names),)),
        phase_names=names,
        phase_spectra=phase_spectra * generator.intensity_scale,
        rare_mask=rare_mask.reshape(shape),
        thickness=thickness.reshape(shape),
        energy_shift=shift.reshape(shape),
        extra={**extra, "intensity_scale": generator.intensity_scale},
    )
