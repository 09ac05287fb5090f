"""Synthetic core-loss EELS spectrum images with ground truth."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import fft as sp_fft

from ._common import (
    _KEY_DRIFT,
    _KEY_GRAINS,
    _KEY_PHASE,
    _KEY_RARE,
    _KEY_THICKNESS,
    GroundTruth,
    IdentityPropagator,
    NavigationGeometry,
    SpectrumImageGenerator,
    binned,
    build_signal,
    check_energy_range,
    check_n_channels,
    check_navigation_shape,
    check_positive,
    check_rare_fraction,
    drift_field,
    front_fraction,
    gaussian,
    grain_fractions,
    lorentzian,
    make_truth,
    mix_rare_phase,
    rare_blobs,
    resolve_seed,
    rng_for,
    thickness_field,
)

if TYPE_CHECKING:
    from exspy.signals import EELSSpectrum

__all__ = ["eels_map"]

BEAM_ENERGY_KV = 200.0
CONVERGENCE_ANGLE_MRAD = 20.0
COLLECTION_ANGLE_MRAD = 30.0
#: Energy resolution (zero-loss peak FWHM) in eV.
ENERGY_RESOLUTION_EV = 1.0
#: Plasmon energy and width (Drude model) of the low-loss distribution, in eV.
PLASMON_ENERGY_EV = 22.0
PLASMON_WIDTH_EV = 5.0
#: Range of t/lambda with thickness=True.
THICKNESS_RANGE = (0.2, 1.0)
#: Energy below the window from which plural scattering is computed, in eV.
_PLURAL_PAD_EV = 150.0
_DEFAULT_RANGE = (400.0, 912.0)


def _ref_background(energy: np.ndarray | float) -> np.ndarray | float:
    """Reference power law E^-3 normalised at 400 eV; edge heights are relative to it."""
    return (np.asarray(energy) / 400.0) ** -3.0


@dataclass(frozen=True)
class _Step:
    """Edge continuum: arctan step at `onset` decaying as (E/onset)^-decay."""

    onset: float
    height: float  # relative to the reference background at the onset
    width: float = 0.8
    decay: float = 1.5

    def __call__(self, energy: np.ndarray) -> np.ndarray:
        step = 0.5 + np.arctan((energy - self.onset) / self.width) / np.pi
        decay = np.minimum(energy / self.onset, 10.0) ** -self.decay
        return (
            self.height
            * _ref_background(self.onset)
            * step
            * np.where(energy > self.onset, decay, 1.0)
        )


@dataclass(frozen=True)
class _Peak:
    """Near-edge peak (white line, ELNES feature), Lorentzian or Gaussian."""

    centre: float
    fwhm: float
    height: float  # relative to the reference background at the centre
    shape: str = "lorentz"

    def __call__(self, energy: np.ndarray) -> np.ndarray:
        func = lorentzian if self.shape == "lorentz" else gaussian
        return self.height * _ref_background(self.centre) * func(energy, self.centre, self.fwhm)


@dataclass(frozen=True)
class _Phase:
    name: str
    elements: tuple[str, ...]
    background: tuple[float, float]  # A, r of A * (E / 400)^-r
    features: tuple

    def __call__(self, energy: np.ndarray) -> np.ndarray:
        a, r = self.background
        out = a * (energy / 400.0) ** -r
        for feature in self.features:
            out = out + feature(energy)
        return out


def _o_k(
    pre_peaks: Sequence[tuple[float, float]],
    main: Sequence[tuple[float, float, float]],
    density: float,
) -> tuple:
    """O-K edge (onset ~532 eV): pre-peaks (centre, height), broad ELNES, sawtooth."""
    feats: list = [_Step(532.0, 0.22 * density, width=1.2, decay=1.2)]
    feats += [_Peak(c, 1.4, h * density) for c, h in pre_peaks]
    feats += [_Peak(c, w, h * density, "gauss") for c, w, h in main]
    return tuple(feats)


def _fe_l23(valence: int, shift: float, density: float) -> tuple:
    """Fe-L2,3 edge. Fe2+: L3 at 708.0 eV with a high-energy shoulder, L3/L2 ~ 4.6.
    Fe3+: onset and main L3 peak `shift` eV higher, pre-peak 1.5 eV below the main peak,
    L3/L2 ~ 5.5."""
    if valence == 2:
        s = 0.0
        peaks = [
            _Peak(708.0, 1.6, 0.85 * density),
            _Peak(709.8, 1.8, 0.28 * density),
            _Peak(720.9, 2.6, 0.18 * density),
        ]
    else:
        s = shift
        peaks = [
            _Peak(708.0 + s, 1.5, 0.95 * density),
            _Peak(708.0 + s - 1.5, 1.2, 0.28 * density),
            _Peak(721.0 + s, 2.0, 0.09 * density),
            _Peak(722.6 + s, 2.4, 0.065 * density),
        ]
    steps = [
        _Step(706.5 + s, 0.12 * density, decay=2.0),
        _Step(719.5 + s, 0.06 * density, decay=2.0),
    ]
    return tuple(steps + peaks)


def _phases(fe3_shift: float, rare: bool) -> list[_Phase]:
    """Phase library. Edge amplitudes scale with the element's atomic density relative to
    Fe in FeO (FeO 0.079, Fe2O3 0.066 Fe and 0.098 O, TiO2 0.106 O, NiO 0.089 mol/cm3)."""
    phases = [
        _Phase(
            "FeO (Fe2+)",
            ("Fe", "O"),
            (1.0, 3.0),
            _fe_l23(2, fe3_shift, 1.0)
            + _o_k([(532.6, 0.05)], [(538.5, 6.0, 0.22), (545.0, 8.0, 0.10)], 1.0),
        ),
        _Phase(
            "Fe2O3 (Fe3+)",
            ("Fe", "O"),
            (1.05, 3.05),
            _fe_l23(3, fe3_shift, 0.83)
            + _o_k([(530.6, 0.22), (532.0, 0.16)], [(540.0, 6.0, 0.22), (546.0, 8.0, 0.10)], 1.24),
        ),
        _Phase(
            "TiO2 (rutile)",
            ("Ti", "O"),
            (0.85, 2.85),
            (
                _Step(456.0, 0.10, decay=2.0),
                _Step(461.5, 0.05, decay=2.0),
                _Peak(457.8, 0.9, 0.35),
                _Peak(460.1, 2.0, 0.50),
                _Peak(463.1, 1.3, 0.30),
                _Peak(465.4, 2.5, 0.35),
            )
            + _o_k([(530.9, 0.26), (533.5, 0.22)], [(541.5, 5.0, 0.22), (545.5, 6.0, 0.14)], 1.33),
        ),
    ]
    if rare:
        phases.append(
            _Phase(
                "NiO (rare)",
                ("Ni", "O"),
                (1.1, 3.0),
                (
                    _Step(852.0, 0.15, decay=2.0),
                    _Step(869.5, 0.075, decay=2.0),
                    _Peak(853.2, 1.4, 1.5),
                    _Peak(855.2, 1.6, 0.3),
                    _Peak(870.6, 2.0, 0.45),
                    _Peak(872.3, 2.0, 0.18),
                )
                + _o_k([(532.0, 0.10)], [(537.5, 5.0, 0.2), (541.0, 6.0, 0.16)], 1.12),
            )
        )
    return phases


class PluralScattering:
    """Convolution with the low-loss distribution of thickness t/lambda.

    The low-loss distribution is the Poisson series ``sum_n P(n; t) P1^{*n}`` of a Drude
    plasmon peak ``P1`` (unit area); its Fourier transform is ``exp(t (P1_hat - 1))``,
    which is applied per spectrum.
    """

    def __init__(self, scale: float, n_ext: int) -> None:
        self.n_ext = n_ext
        self.n_fft = sp_fft.next_fast_len(n_ext + int(np.ceil(260.0 / scale)), real=True)
        e = np.arange(self.n_fft) * scale
        ep, gamma = PLASMON_ENERGY_EV, PLASMON_WIDTH_EV
        drude = e * ep**2 * gamma / ((e**2 - ep**2) ** 2 + (e * gamma) ** 2)
        drude[e > 150.0] = 0.0
        drude /= drude.sum()
        self.p1_minus_1 = sp_fft.rfft(drude) - 1.0

    def __call__(self, spectra: np.ndarray, thickness: np.ndarray) -> np.ndarray:
        f = sp_fft.rfft(spectra, n=self.n_fft, axis=-1)
        f *= np.exp(thickness[:, None] * self.p1_minus_1[None, :])
        return sp_fft.irfft(f, n=self.n_fft, axis=-1)[:, : self.n_ext]


def extended_spectra(
    phases: Sequence, lo: float, scale: float, n_channels: int, max_shift_ev: float,
    *, plural: bool,
) -> tuple[np.ndarray, int]:
    """Spectra of `phases` (callables of the energy) on the extended channel grid.

    Plural scattering draws intensity from below the window and energy shifts (up to
    `max_shift_ev` either way) from both sides, so the spectra are computed on a grid
    padded on both sides, binned and broadened by the energy resolution.

    Returns
    -------
    spectra_ext : numpy.ndarray
        ``(len(phases), n_ext)`` channel averages in model units.
    start : int
        Index of the first channel of the signal window in the extended grid.
    """
    margin = int(np.ceil(max_shift_ev / scale)) + 3
    pad_ev = min(_PLURAL_PAD_EV, 0.5 * lo) if plural else 0.0
    n_lo = margin + int(np.ceil(pad_ev / scale))
    n_ext = n_lo + n_channels + margin
    centres = lo + (np.arange(n_ext) - n_lo) * scale
    centres = np.maximum(centres, 0.25 * lo)

    def evaluate(energy: np.ndarray) -> np.ndarray:
        return np.stack([phase(energy) for phase in phases])

    return binned(evaluate, centres, scale, 0.1, blur_fwhm=ENERGY_RESOLUTION_EV), n_lo


def eels_signal(data, shape: tuple[int, ...], lo: float, scale: float, title: str,
                synthetic: dict, phases: Sequence[_Phase], *, lazy: bool = False):
    """The exspy EELS signal of synthetic `data`: calibrated energy-loss axis, microscope
    parameters and the elements of `phases`."""
    import exspy

    signal_class = exspy.signals.LazyEELSSpectrum if lazy else exspy.signals.EELSSpectrum
    n_channels = int(data.shape[-1])
    signal = build_signal(
        data,
        signal_class,
        shape,
        {"name": "Energy loss", "size": n_channels, "offset": lo, "scale": scale, "units": "eV"},
        title,
        synthetic,
    )
    signal.set_microscope_parameters(
        beam_energy=BEAM_ENERGY_KV,
        convergence_angle=CONVERGENCE_ANGLE_MRAD,
        collection_angle=COLLECTION_ANGLE_MRAD,
    )
    signal.add_elements(sorted({el for p in phases for el in p.elements}))
    return signal


def eels_map(
    navigation_shape: int | tuple[int, ...] = (64, 64),
    n_channels: int = 1024,
    dose: float = 50.0,
    *,
    energy_range: tuple[float, float] | None = None,
    thickness: bool = True,
    drift: float = 0.3,
    fe3_shift: float = 1.5,
    rare_phase: bool = False,
    rare_fraction: float = 0.005,
    random_state: int | np.random.Generator | None = 0,
    lazy: bool = False,
    return_truth: bool = False,
) -> EELSSpectrum | tuple[EELSSpectrum, GroundTruth]:
    """Synthetic core-loss EELS spectrum image of an iron/titanium oxide with ground truth.

    The sample is made of soft-edged Voronoi grains of iron oxide and rutile. An oxidation
    front crosses the map: iron oxide grains go from FeO (Fe2+) through a gradient of
    mixed valence to Fe2O3 (Fe3+). Each pixel spectrum is

    * a power-law background ``A E^-r`` (r ~ 3, phase dependent) plus the Ti-L2,3
      (456/462 eV), O-K (532 eV, with valence-dependent pre-peaks), Fe-L2,3 (708/721 eV,
      white lines on arctan-step continua; Fe3+ shifted by `fe3_shift` with a pre-peak
      1.5 eV below its L3 maximum and a larger L3/L2 ratio) and, optionally, Ni-L2,3
      (853/871 eV) edges, mixed linearly with the phase abundances and broadened by a
      1 eV energy resolution;
    * scaled by the thickness t/lambda and convolved with the low-loss distribution
      (Poisson series of a 22 eV Drude plasmon), which broadens edges and adds a
      plural-scattering tail (``thickness=True``);
    * shifted in energy by a slow drift along the scan plus per-pixel jitter;
    * scaled to the requested dose and drawn from a Poisson distribution.

    Parameters
    ----------
    navigation_shape
        Navigation shape in numpy order: ``(rows, cols)`` for a map, ``(n,)`` for a line
        scan, ``()`` for a single spectrum.
    n_channels
        Number of energy channels (at least 16).
    dose
        Mean counts per channel averaged over the whole map, so that the total number of
        counts is about ``dose * n_channels * n_pixels``. Must be > 0.
    energy_range
        ``(low, high)`` energy loss of the window in eV; None means (400, 912). The axis
        offset is `low` and its scale ``(high - low) / n_channels``.
    thickness
        If True, t/lambda varies smoothly between 0.2 and 1.0 and plural scattering is
        simulated. If False, t/lambda is 1 everywhere and plural scattering is neglected
        (single scattering: a linear mixing model when ``drift=0``).
    drift
        RMS of the per-pixel energy jitter in eV; a slow drift along the scan bounded by
        ``2 * drift`` is added. 0 disables all shifts.
    fe3_shift
        Shift in eV of the Fe3+ L2,3 onset and main L3 peak relative to Fe2+.
    rare_phase
        If True, add NiO in 1 to 3 compact blobs covering `rare_fraction` of the pixels
        (at least one pixel), with an abundance of at least 0.55 there.
    rare_fraction
        Fraction of rare-phase pixels, in the open interval (0, 0.5). Validated even when
        `rare_phase` is False.
    random_state
        Seed (non-negative int), :class:`numpy.random.Generator` or None. The same int
        gives the same data, lazy or not.
    lazy
        If True, return a lazy signal whose data are generated block by block of rows on
        computation; the whole spectrum image is never held in memory at once.
    return_truth
        If True, also return the :class:`GroundTruth`.

    Returns
    -------
    signal : exspy.signals.EELSSpectrum or exspy.signals.LazyEELSSpectrum
        Integer counts stored as float32 (so that arithmetic behaves as for real data).
    truth : GroundTruth
        Only if `return_truth`. Its ``extra`` holds ``"fe3_fraction"``, the per-pixel
        Fe3+/(Fe2+ + Fe3+) atomic fraction (NaN where there is no iron), and
        ``"intensity_scale"``.

    Raises
    ------
    ValueError
        For a non-positive dose, fewer than 16 channels, a reversed or non-positive energy
        range, a negative drift, `rare_fraction` outside (0, 0.5) or a bad
        `navigation_shape`.

    Examples
    --------
    >>> from hyperspy_mlspec.data import eels_map
    >>> s = eels_map((32, 32), n_channels=512, dose=20)
    >>> s.data.shape
    (32, 32, 512)
    >>> s, truth = eels_map((16, 16), n_channels=256, rare_phase=True, return_truth=True)
    >>> truth.phase_names[-1]
    'NiO (rare)'
    >>> s_lazy = eels_map((256, 256), lazy=True)  # nothing generated yet
    """
    shape = check_navigation_shape(navigation_shape)
    n_channels = check_n_channels(n_channels)
    dose = check_positive("dose", dose)
    lo, hi = check_energy_range(
        _DEFAULT_RANGE if energy_range is None else energy_range, minimum=0.0, units="eV"
    )
    drift = check_positive("drift", drift, allow_zero=True)
    fe3_shift = float(fe3_shift)
    if not np.isfinite(fe3_shift) or abs(fe3_shift) > 10:
        raise ValueError(f"fe3_shift must be finite and within +-10 eV, got {fe3_shift}.")
    rare_fraction = check_rare_fraction(rare_fraction)
    seed = resolve_seed(random_state)
    scale = (hi - lo) / n_channels

    # navigation-level truth
    geometry = NavigationGeometry.from_shape(shape)
    n_pix = geometry.n_pixels
    grains = grain_fractions(geometry, (0.6, 0.4), rng_for(seed, _KEY_GRAINS))
    oxidised = front_fraction(geometry, rng_for(seed, _KEY_PHASE))
    abundances = np.column_stack(
        [grains[:, 0] * (1 - oxidised), grains[:, 0] * oxidised, grains[:, 1]]
    )
    rare_mask = np.zeros(n_pix, dtype=bool)
    if rare_phase:
        rare_mask, strength = rare_blobs(shape, rare_fraction, rng_for(seed, _KEY_RARE))
        abundances = mix_rare_phase(abundances, strength)
    if thickness:
        t = thickness_field(geometry, rng_for(seed, _KEY_THICKNESS), THICKNESS_RANGE)
    else:
        t = np.ones(n_pix)
    shift_ev = drift_field(n_pix, drift, rng_for(seed, _KEY_DRIFT))
    fe2 = abundances[:, 0] * 1.0
    fe3 = abundances[:, 1] * 0.83
    with np.errstate(invalid="ignore", divide="ignore"):
        fe3_fraction = np.where(fe2 + fe3 > 0, fe3 / (fe2 + fe3), np.nan)

    phases = _phases(fe3_shift, rare_phase)
    spectra_ext, n_lo = extended_spectra(phases, lo, scale, n_channels,
                                         float(np.abs(shift_ev).max()), plural=thickness)
    n_ext = spectra_ext.shape[1]
    propagator = PluralScattering(scale, n_ext) if thickness else IdentityPropagator()
    generator = SpectrumImageGenerator(
        spectra_ext,
        n_lo,
        n_channels,
        abundances,
        t,
        shift_ev / scale,
        propagator,
        shape,
        dose,
        seed,
    )

    data = generator.to_dask(noisy=True) if lazy else generator.compute(noisy=True)
    names = [p.name for p in phases]
    synthetic = {
        "generator": "hyperspy_mlspec.data.eels_map",
        "navigation_shape": str(shape),
        "n_channels": n_channels,
        "dose": dose,
        "energy_range_low": lo,
        "energy_range_high": hi,
        "thickness": bool(thickness),
        "drift": drift,
        "fe3_shift": fe3_shift,
        "rare_phase": bool(rare_phase),
        "rare_fraction": rare_fraction,
        "random_state": seed,
        "phases": "; ".join(names),
        "energy_resolution_eV": ENERGY_RESOLUTION_EV,
        "plasmon_energy_eV": PLASMON_ENERGY_EV,
    }
    signal = eels_signal(data, shape, lo, scale, f"Synthetic EELS map (dose={dose:g})",
                         synthetic, phases, lazy=lazy)
    if not return_truth:
        return signal

    truth = make_truth(
        generator, lazy, abundances, names, spectra_ext[:, n_lo : n_lo + n_channels],
        rare_mask, t, shift_ev, shape, {"fe3_fraction": fe3_fraction.reshape(shape)},
    )
    return signal, truth
