"""Synthetic STEM-EDS spectrum images with ground truth."""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.special import erf

from ._common import (
    _KEY_DRIFT,
    _KEY_GRAINS,
    _KEY_RARE,
    _KEY_THICKNESS,
    GroundTruth,
    IdentityPropagator,
    NavigationGeometry,
    SpectrumImageGenerator,
    build_signal,
    check_energy_range,
    check_n_channels,
    check_navigation_shape,
    check_positive,
    check_rare_fraction,
    drift_field,
    grain_fractions,
    make_truth,
    mix_rare_phase,
    rare_blobs,
    resolve_seed,
    rng_for,
    thickness_field,
)

if TYPE_CHECKING:
    from exspy.signals import EDSTEMSpectrum

__all__ = ["eds_map"]

BEAM_ENERGY_KV = 200.0
#: Detector resolution at Mn Ka, in eV.
ENERGY_RESOLUTION_MNKA_EV = 130.0
ELEVATION_ANGLE_DEG = 18.0
#: Range of the relative mass thickness with thickness=True.
THICKNESS_RANGE = (0.2, 1.0)
_MN_KA_KEV = 5.8987
_DEFAULT_RANGE = (0.0, 10.24)
#: Kramers constant, relative to the characteristic line intensities (sets peak/background).
_KRAMERS = 2.0e-5
#: Low-energy cut-off of the detector window, in keV: efficiency exp(-(E_c / E)^3).
_WINDOW_CUTOFF_KEV = 0.3
#: Mass absorption of the specimen at unit mass thickness: mu(E) = _MU_1KEV * E^-2.8.
_MU_1KEV = 0.15
# fluorescence yield omega = Z^4 / (a + Z^4) and shell occupancy per line family
_FAMILY = {"K": (1.0e6, 2.0), "L": (3.0e8, 6.0), "M": (3.0e9, 10.0)}


@dataclass(frozen=True)
class _EDSPhase:
    name: str
    composition: dict  # element -> atomic fraction


def _phases(rare: bool) -> list[_EDSPhase]:
    phases = [
        _EDSPhase(
            "Austenite (Fe-18Cr-10Ni)",
            {"Fe": 0.69, "Cr": 0.19, "Ni": 0.095, "Mn": 0.015, "Si": 0.01},
        ),
        _EDSPhase("Cr23C6 carbide", {"Cr": 0.60, "Fe": 0.14, "Mo": 0.05, "C": 0.21}),
        _EDSPhase("Ni3(Al,Ti) precipitate", {"Ni": 0.72, "Al": 0.13, "Ti": 0.11, "Fe": 0.04}),
    ]
    if rare:
        phases.append(_EDSPhase("Cu precipitate (rare)", {"Cu": 0.88, "Fe": 0.08, "Ni": 0.04}))
    return phases


@functools.lru_cache(maxsize=64)
def _element_data(element: str) -> tuple[int, float, tuple[tuple[str, float, float], ...]]:
    """Z, atomic weight and ``(line, energy keV, weight)`` from exspy's database."""
    from exspy.material import elements

    props = elements.as_dictionary()[element]
    general = props["General_properties"]
    lines = tuple(
        (name, float(v["energy (keV)"]), float(v["weight"]))
        for name, v in props["Atomic_properties"]["Xray_lines"].items()
    )
    return int(general["Z"]), float(general["atomic_weight"]), lines


def fwhm_kev(energy: np.ndarray | float) -> np.ndarray:
    """Detector FWHM (keV) at `energy` (keV): FWHM^2 = FWHM_MnKa^2 + 2.5 (E - E_MnKa) eV.

    The Fiori & Newbury model used by exspy's ``get_FWHM_at_Energy``.
    """
    e_ev = 1000.0 * np.asarray(energy, dtype=float)
    fwhm2 = ENERGY_RESOLUTION_MNKA_EV**2 + 2.5 * (e_ev - 1000.0 * _MN_KA_KEV)
    return np.sqrt(np.maximum(fwhm2, 30.0**2)) / 1000.0


def _line_intensities(composition: dict, e_max: float) -> list[tuple[float, float]]:
    """``(energy, intensity)`` of every X-ray line below `e_max` keV.

    Intensity per line: atomic fraction x fluorescence yield x shell occupancy x
    ionisation cross-section (Bethe, ~ ln(U) / E_c at fixed beam energy) x the line's
    relative weight in its family.
    """
    out = []
    for element, fraction in composition.items():
        z, _, lines = _element_data(element)
        families: dict[str, list[tuple[float, float]]] = {}
        for name, energy, weight in lines:
            families.setdefault(name[0], []).append((energy, weight))
        for family, members in families.items():
            if family not in _FAMILY:
                continue
            a, occupancy = _FAMILY[family]
            omega = z**4 / (a + z**4)
            e_c = 1.1 * max(e for e, _ in members)
            if e_c >= BEAM_ENERGY_KV:
                continue
            sigma = occupancy * np.log(BEAM_ENERGY_KV / e_c) / e_c
            for energy, weight in members:
                if energy <= e_max:
                    out.append((energy, fraction * omega * sigma * weight))
    return out


def _mean_z(composition: dict) -> float:
    """Mass-weighted mean atomic number."""
    data = {el: _element_data(el) for el in composition}
    mass = {el: composition[el] * data[el][1] for el in composition}
    total = sum(mass.values())
    return sum(mass[el] / total * data[el][0] for el in composition)


def detector_efficiency(energy: np.ndarray) -> np.ndarray:
    """Window/dead-layer transmission: exp(-(E_c / E)^3), 0 at E <= 0."""
    e = np.maximum(energy, 1e-3)
    return np.where(energy > 0, np.exp(-((_WINDOW_CUTOFF_KEV / e) ** 3)), 0.0)


def _phase_spectrum(phase: _EDSPhase, edges: np.ndarray) -> np.ndarray:
    """Channel-integrated spectrum (per keV units x channel width) between `edges`."""
    centres = 0.5 * (edges[1:] + edges[:-1])
    width = np.diff(edges)
    e = np.maximum(centres, 1e-3)
    continuum = np.clip(BEAM_ENERGY_KV - centres, 0, None) / e * width
    out = _KRAMERS * _mean_z(phase.composition) * np.where(centres > 0, continuum, 0.0)
    for energy, intensity in _line_intensities(phase.composition, edges[-1] + 1.0):
        sigma = fwhm_kev(energy) / 2.3548
        cdf = 0.5 * (1 + erf((edges - energy) / (np.sqrt(2) * sigma)))
        out += intensity * np.diff(cdf)
    return out * detector_efficiency(centres)


class ThinFilmAbsorption:
    """Self-absorption of a film of relative mass thickness t: (1 - exp(-x)) / x, x = t mu.

    ``mu(E) = 0.15 E^-2.8`` (E in keV) is a composition-independent mass absorption
    (no absorption edges): at t = 1, about 35 % of O Ka and 80 % of C Ka are absorbed.
    """

    def __init__(self, energy: np.ndarray) -> None:
        self.mu = _MU_1KEV * np.maximum(energy, 0.05) ** -2.8

    def __call__(self, spectra: np.ndarray, thickness: np.ndarray) -> np.ndarray:
        x = np.maximum(thickness[:, None] * self.mu[None, :], 1e-12)
        return spectra * (-np.expm1(-x) / x)


def eds_map(
    navigation_shape: int | tuple[int, ...] = (64, 64),
    n_channels: int = 1024,
    dose: float = 20.0,
    *,
    energy_range: tuple[float, float] | None = None,
    thickness: bool = True,
    drift: float = 0.0,
    rare_phase: bool = False,
    rare_fraction: float = 0.005,
    random_state: int | np.random.Generator | None = 0,
    lazy: bool = False,
    return_truth: bool = False,
) -> EDSTEMSpectrum | tuple[EDSTEMSpectrum, GroundTruth]:
    """Synthetic STEM-EDS spectrum image of a stainless steel with ground truth.

    The sample is made of soft-edged Voronoi grains of austenite (Fe-18Cr-10Ni), a Cr-rich
    M23C6 carbide (with C and Mo) and a Ni-rich Ni3(Al,Ti) precipitate phase, optionally
    with Cu-rich precipitates as a rare phase. Each pixel spectrum (200 kV) is

    * a Kramers bremsstrahlung continuum ``Zbar (E0 - E) / E`` plus the characteristic
      lines of exspy's X-ray database (energies and relative weights; family intensities
      from fluorescence yields and Bethe cross-sections), as Gaussians whose FWHM follows
      the detector model ``FWHM^2 = 130^2 + 2.5 (E - E_MnKa)`` eV^2, all times the
      detector efficiency (window cut-off below ~0.3 keV), mixed linearly with the phase
      abundances;
    * scaled by the relative mass thickness and attenuated by thin-film self-absorption
      (low-energy lines absorbed more in thicker regions, ``thickness=True``);
    * shifted in energy by `drift` (optional);
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
        ``(low, high)`` energy of the window in keV; None means (0, 10.24). The axis offset
        is `low` and its scale ``(high - low) / n_channels``.
    thickness
        If True, the relative mass thickness varies smoothly between 0.2 and 1.0 and
        self-absorption is simulated. If False, it is 1 everywhere without absorption (a
        linear mixing model when ``drift=0``).
    drift
        RMS of the per-pixel energy jitter, in keV; a slow drift along the scan bounded by
        ``2 * drift`` is added. 0 (default) disables all shifts.
    rare_phase
        If True, add Cu-rich precipitates in 1 to 3 compact blobs covering `rare_fraction`
        of the pixels (at least one pixel), with an abundance of at least 0.55 there.
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
    signal : exspy.signals.EDSTEMSpectrum or exspy.signals.LazyEDSTEMSpectrum
        Integer counts stored as float32 (so that arithmetic behaves as for real data).
    truth : GroundTruth
        Only if `return_truth`. Its ``extra`` holds ``"phase_compositions"`` (atomic
        fractions per phase) and ``"intensity_scale"``.

    Raises
    ------
    ValueError
        For a non-positive dose, fewer than 16 channels, a reversed energy range, a
        negative drift, `rare_fraction` outside (0, 0.5) or a bad `navigation_shape`.

    Examples
    --------
    >>> from hyperspy_mlspec.data import eds_map
    >>> s = eds_map((32, 32), dose=5)
    >>> s.axes_manager[-1].units
    'keV'
    >>> s, truth = eds_map((16, 16), n_channels=512, rare_phase=True, return_truth=True)
    >>> truth.phase_names[-1]
    'Cu precipitate (rare)'
    >>> s.get_lines_intensity()  # doctest: +SKIP
    """
    shape = check_navigation_shape(navigation_shape)
    n_channels = check_n_channels(n_channels)
    dose = check_positive("dose", dose)
    lo, hi = check_energy_range(_DEFAULT_RANGE if energy_range is None else energy_range)
    if hi > BEAM_ENERGY_KV:
        raise ValueError(
            f"energy_range must end below the beam energy ({BEAM_ENERGY_KV} keV), got {hi}."
        )
    drift = check_positive("drift", drift, allow_zero=True)
    rare_fraction = check_rare_fraction(rare_fraction)
    seed = resolve_seed(random_state)
    scale = (hi - lo) / n_channels

    geometry = NavigationGeometry.from_shape(shape)
    n_pix = geometry.n_pixels
    abundances = grain_fractions(geometry, (0.5, 0.25, 0.25), rng_for(seed, _KEY_GRAINS))
    rare_mask = np.zeros(n_pix, dtype=bool)
    if rare_phase:
        rare_mask, strength = rare_blobs(shape, rare_fraction, rng_for(seed, _KEY_RARE))
        abundances = mix_rare_phase(abundances, strength)
    if thickness:
        t = thickness_field(geometry, rng_for(seed, _KEY_THICKNESS), THICKNESS_RANGE)
    else:
        t = np.ones(n_pix)
    shift_kev = drift_field(n_pix, drift, rng_for(seed, _KEY_DRIFT))

    margin = int(np.ceil(np.abs(shift_kev).max() / scale)) + 3
    n_ext = n_channels + 2 * margin
    edges = lo + (np.arange(n_ext + 1) - margin - 0.5) * scale
    centres = 0.5 * (edges[1:] + edges[:-1])
    phases = _phases(rare_phase)
    spectra_ext = np.stack([_phase_spectrum(p, edges) for p in phases])
    propagator = ThinFilmAbsorption(centres) if thickness else IdentityPropagator()
    generator = SpectrumImageGenerator(
        spectra_ext,
        margin,
        n_channels,
        abundances,
        t,
        shift_kev / scale,
        propagator,
        shape,
        dose,
        seed,
    )

    data = generator.to_dask(noisy=True) if lazy else generator.compute(noisy=True)
    import exspy

    signal_class = exspy.signals.LazyEDSTEMSpectrum if lazy else exspy.signals.EDSTEMSpectrum
    names = [p.name for p in phases]
    synthetic = {
        "generator": "hyperspy_mlspec.data.eds_map",
        "navigation_shape": str(shape),
        "n_channels": n_channels,
        "dose": dose,
        "energy_range_low": lo,
        "energy_range_high": hi,
        "thickness": bool(thickness),
        "drift": drift,
        "rare_phase": bool(rare_phase),
        "rare_fraction": rare_fraction,
        "random_state": seed,
        "phases": "; ".join(names),
    }
    signal = build_signal(
        data,
        signal_class,
        shape,
        {"name": "Energy", "size": n_channels, "offset": lo, "scale": scale, "units": "keV"},
        f"Synthetic EDS map (dose={dose:g})",
        synthetic,
    )
    signal.metadata.set_item("Acquisition_instrument.TEM.beam_energy", BEAM_ENERGY_KV)
    signal.set_microscope_parameters(
        tilt_stage=0.0,
        azimuth_angle=0.0,
        elevation_angle=ELEVATION_ANGLE_DEG,
        energy_resolution_MnKa=ENERGY_RESOLUTION_MNKA_EV,
    )
    elements = sorted({el for p in phases for el in p.composition})
    signal.add_elements(elements)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        signal.add_lines()
    if not return_truth:
        return signal

    truth = make_truth(
        generator, lazy, abundances, names, spectra_ext[:, margin : margin + n_channels],
        rare_mask, t, shift_kev, shape,
        {"phase_compositions": {p.name: dict(p.composition) for p in phases}},
    )
    return signal, truth
