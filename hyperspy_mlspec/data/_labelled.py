"""Labelled synthetic EELS spectra for few-label learning (classification and regression).

The spectra use the physics of :func:`hyperspy_mlspec.data.eels_map` (the same FeO, Fe2O3
and TiO2 edge models, energy resolution, plural scattering and Poisson noise), but every
spectrum is an independent sample of a material class with its own nuisances: thickness,
energy shift, dose and background slope. What changes between classes (Fe valence, Ti
content) is small next to what changes within a class, as in real data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ._common import (
    SpectrumImageGenerator,
    _poisson,
    binned,
    check_energy_range,
    check_n_channels,
    check_positive,
    resolve_seed,
    rng_for,
)
from ._eels import (
    _DEFAULT_RANGE,
    ENERGY_RESOLUTION_EV,
    PLASMON_ENERGY_EV,
    PluralScattering,
    _Peak,
    _phases,
    eels_signal,
    extended_spectra,
)

if TYPE_CHECKING:
    from exspy.signals import EELSSpectrum

__all__ = ["LabelledSpectra", "labelled_spectra"]

#: Material classes: name, range of the Fe3+ atomic fraction of the iron, range of the
#: TiO2 abundance. Fe3O4 (magnetite) has 2/3 Fe3+; FeTiO3 (ilmenite) is Fe2+ with Ti.
CLASSES: tuple[tuple[str, tuple[float, float], tuple[float, float]], ...] = (
    ("FeO (Fe2+)", (0.0, 0.1), (0.0, 0.08)),
    ("Fe3O4-like (mixed Fe2+/Fe3+)", (0.5, 0.75), (0.0, 0.08)),
    ("Fe2O3 (Fe3+)", (0.9, 1.0), (0.0, 0.08)),
    ("FeTiO3-like (Fe2+ with Ti)", (0.0, 0.3), (0.3, 0.6)),
)
#: Fe atoms per volume of Fe2O3 relative to FeO (the phase library's edge amplitudes)
_FE2O3_FE_DENSITY = 0.83
#: Fe-L3 white lines: the near-edge peaks of the iron phases between these energies (eV)
FE_L3_WINDOW_EV = (700.0, 716.0)
#: Exponents of the two extra power-law background components (their mix sets the slope)
_BACKGROUND_EXPONENTS = (2.0, 4.0)

# spawn keys of this generator's random streams (distinct from eels_map's)
_KEY_LABELS = 21
_KEY_COMPOSITION = 22
_KEY_THICKNESS = 23
_KEY_SHIFT = 24
_KEY_DOSE = 25
_KEY_BACKGROUND = 26


@dataclass(repr=False)
class LabelledSpectra:
    """Labelled spectra from :func:`labelled_spectra`, with every generating parameter.

    Attributes
    ----------
    spectra
        ``(n, n_channels)`` Poisson counts (float32 integers).
    labels
        ``(n,)`` integer class of each spectrum, an index into `class_names`.
    class_names
        Name of each class.
    area
        ``(n,)`` regression target: the Fe-L3 white-line area of the noise-free
        single-scattering spectrum (white-line peaks only, above the edge continuum and
        the background), in percent of the spectrum's expected total counts. It does not
        depend on the dose; it grows with the iron content and falls with Fe3+ (fewer Fe
        atoms per volume in Fe2O3), Ti and background.
    area_counts
        ``(n,)`` the same white-line area in expected counts (``area / 100 * total``).
    energy
        ``(n_channels,)`` channel centres in eV.
    fe3_fraction
        ``(n,)`` Fe3+ / (Fe2+ + Fe3+) atomic fraction.
    abundances
        ``(n, 3)`` FeO, Fe2O3 and TiO2 abundances (rows sum to 1).
    thickness
        ``(n,)`` t/lambda (sets the plural scattering).
    energy_shift
        ``(n,)`` energy shift in eV: a spectrum is ``S(E - shift)``.
    dose
        ``(n,)`` expected mean counts per channel.
    background
        ``(n,)`` amplitude of the extra power-law background relative to the phases' own.
    background_mix
        ``(n,)`` share of the ``E^-4`` component in that extra background (the rest is
        ``E^-2``): it sets the background slope.
    clean
        ``(n, n_channels)`` expected counts (float64) when generated with
        ``return_clean=True``, else None.
    parameters
        The generator's arguments (seed resolved), for metadata.
    """

    spectra: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    area: np.ndarray
    area_counts: np.ndarray
    energy: np.ndarray
    fe3_fraction: np.ndarray
    abundances: np.ndarray
    thickness: np.ndarray
    energy_shift: np.ndarray
    dose: np.ndarray
    background: np.ndarray
    background_mix: np.ndarray
    clean: np.ndarray | None = None
    parameters: dict = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    def __len__(self) -> int:
        return int(self.spectra.shape[0])

    def __repr__(self) -> str:
        counts = np.bincount(self.labels, minlength=self.n_classes).tolist()
        return (f"<LabelledSpectra: {len(self)} spectra x {self.spectra.shape[1]} channels, "
                f"classes {self.class_names} ({counts} spectra)>")

    def to_signal(self) -> EELSSpectrum:
        """The spectra as an exspy EELSSpectrum with one navigation axis ("spectrum").

        The signal axis is the calibrated energy loss; class names, labels and the
        area target are not stored in the signal (use the attributes).

        Examples
        --------
        >>> from hyperspy_mlspec.data import labelled_spectra
        >>> s = labelled_spectra(8, 256).to_signal()
        >>> s.axes_manager.navigation_shape, s.axes_manager.signal_axes[0].units
        ((8,), 'eV')
        """
        lo = float(self.parameters["energy_range_low"])
        scale = float(self.energy[1] - self.energy[0]) if len(self.energy) > 1 else 1.0
        s = eels_signal(self.spectra.copy(), (len(self),), lo, scale,
                        f"Synthetic labelled EELS spectra ({len(self)})", dict(self.parameters),
                        _phases(float(self.parameters["fe3_shift"]), False))
        nav = s.axes_manager.navigation_axes[0]
        nav.name, nav.units, nav.scale, nav.offset = "spectrum", "", 1.0, 0.0
        return s


def _range(name: str, value: float | Sequence[float], *, positive: bool = True
           ) -> tuple[float, float]:
    """``(lo, hi)`` from a number (a constant) or a pair, checked non-negative."""
    if np.ndim(value) == 0:
        value = (value, value)
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a number or a pair (low, high), got {value!r}."
        ) from None
    check_positive(name, lo, allow_zero=not positive)
    check_positive(name, hi, allow_zero=not positive)
    if lo > hi:
        raise ValueError(f"{name} must be increasing (low <= high), got {(lo, hi)}.")
    return lo, hi


def _balanced_labels(n: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Labels with class counts differing by at most one, in random order."""
    return rng.permutation(np.arange(n) % n_classes).astype(np.intp)


def _compositions(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """FeO, Fe2O3, TiO2 abundances and the Fe3+ fraction of each spectrum's class."""
    n = len(labels)
    lo_f, hi_f, lo_t, hi_t = (np.array([c[k][j] for c in CLASSES])[labels]
                              for k in (1, 2) for j in (0, 1))
    u = rng.uniform(size=(2, n))
    fe3 = lo_f + (hi_f - lo_f) * u[0]
    ti = lo_t + (hi_t - lo_t) * u[1]
    # abundance share w of Fe2O3 in the iron oxide giving the atomic fraction fe3
    w = fe3 / (_FE2O3_FE_DENSITY * (1.0 - fe3) + fe3)
    iron = 1.0 - ti
    return np.column_stack([iron * (1.0 - w), iron * w, ti]), fe3


class _PowerLaw:
    """``(E / 400)^-r``: one extra background component."""

    def __init__(self, r: float) -> None:
        self.r = r

    def __call__(self, energy: np.ndarray) -> np.ndarray:
        return (energy / 400.0) ** -self.r


def _l3_white_lines(phase) -> list[_Peak]:
    """The Fe-L3 white-line peaks of a phase of the library (none without iron)."""
    lo, hi = FE_L3_WINDOW_EV
    return [f for f in phase.features
            if isinstance(f, _Peak) and "Fe" in phase.elements and lo < f.centre < hi]


def labelled_spectra(
    n: int = 1000,
    n_channels: int = 2048,
    *,
    energy_range: tuple[float, float] | None = None,
    dose: float | tuple[float, float] = (20.0, 200.0),
    thickness: float | tuple[float, float] = (0.2, 1.0),
    drift: float = 0.3,
    background: float | tuple[float, float] = (0.0, 0.6),
    fe3_shift: float = 1.5,
    random_state: int | np.random.Generator | None = 0,
    return_clean: bool = False,
) -> LabelledSpectra:
    """Independent, labelled core-loss EELS spectra of four iron-oxide classes.

    Each spectrum is a mixture of the FeO, Fe2O3 and TiO2 models of
    :func:`~hyperspy_mlspec.data.eels_map` (Ti-L2,3 at 456 eV, O-K at 532 eV with
    valence-dependent pre-peaks, Fe-L2,3 at 708 eV with the Fe3+ chemical shift, 1 eV
    energy resolution) whose composition is drawn from its class:

    ===  ============================  ===============  ==============
    0    FeO (Fe2+)                    Fe3+ 0-10 %      TiO2 0-8 %
    1    Fe3O4-like (mixed Fe2+/Fe3+)  Fe3+ 50-75 %     TiO2 0-8 %
    2    Fe2O3 (Fe3+)                  Fe3+ 90-100 %    TiO2 0-8 %
    3    FeTiO3-like (Fe2+ with Ti)    Fe3+ 0-30 %      TiO2 30-60 %
    ===  ============================  ===============  ==============

    and with its own nuisances: an extra power-law background (amplitude drawn from
    `background`, exponent between 2 and 4, so the background slope varies), plural
    scattering at a thickness t/lambda drawn from `thickness`, an energy shift (Gaussian,
    RMS `drift`; at the default 0.3 eV a fifth of the Fe2+/Fe3+ chemical shift, so
    absolute peak positions tell the valence only roughly), a dose drawn log-uniformly
    from `dose` and Poisson noise. The classes are balanced (counts differ by at most one)
    and in random order.

    Parameters
    ----------
    n
        Number of spectra.
    n_channels
        Number of energy channels (at least 16).
    energy_range
        ``(low, high)`` energy loss of the window in eV; None means (400, 912).
    dose
        Expected mean counts per channel of each spectrum: a pair ``(low, high)`` drawn
        log-uniformly per spectrum, or one number for all.
    thickness
        t/lambda: a pair drawn uniformly per spectrum, or one number for all.
    drift
        RMS of the per-spectrum energy shift in eV (0: no shift).
    background
        Amplitude of the extra background relative to the phases' own power law: a pair
        drawn uniformly, or one number.
    fe3_shift
        Shift in eV of the Fe3+ L2,3 onset and main L3 peak relative to Fe2+.
    random_state
        Seed (non-negative int), :class:`numpy.random.Generator` or None; the same int
        gives the same spectra and labels.
    return_clean
        If True, also keep the expected counts (``clean``, float64; 8 bytes per value).

    Returns
    -------
    LabelledSpectra
        Spectra, class labels, the white-line area target and every nuisance;
        ``.to_signal()`` gives an EELSSpectrum.

    Raises
    ------
    ValueError
        For ``n < 1``, fewer than 16 channels, a bad energy range, a non-positive dose or
        thickness, a negative drift or background, or `fe3_shift` beyond +-10 eV.

    Examples
    --------
    >>> from hyperspy_mlspec.data import labelled_spectra
    >>> data = labelled_spectra(200, 512, random_state=1)
    >>> data.spectra.shape, data.labels.shape, data.area.shape
    ((200, 512), (200,), (200,))
    >>> data.class_names[data.labels[0]] in data.class_names
    True
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}.")
    n = int(n)
    n_channels = check_n_channels(n_channels)
    lo, hi = check_energy_range(_DEFAULT_RANGE if energy_range is None else energy_range,
                                minimum=0.0, units="eV")
    dose_range = _range("dose", dose)
    t_range = _range("thickness", thickness)
    bg_range = _range("background", background, positive=False)
    drift = check_positive("drift", drift, allow_zero=True)
    fe3_shift = float(fe3_shift)
    if not np.isfinite(fe3_shift) or abs(fe3_shift) > 10:
        raise ValueError(f"fe3_shift must be finite and within +-10 eV, got {fe3_shift}.")
    seed = resolve_seed(random_state)
    scale = (hi - lo) / n_channels

    labels = _balanced_labels(n, len(CLASSES), rng_for(seed, _KEY_LABELS))
    abundances, fe3 = _compositions(labels, rng_for(seed, _KEY_COMPOSITION))
    t = rng_for(seed, _KEY_THICKNESS).uniform(*t_range, n)
    shift_ev = rng_for(seed, _KEY_SHIFT).normal(0.0, 1.0, n) * drift
    log_dose = rng_for(seed, _KEY_DOSE).uniform(*np.log(dose_range), n)
    dose_per_channel = np.exp(log_dose)
    bg_rng = rng_for(seed, _KEY_BACKGROUND)
    bg_amp = bg_rng.uniform(*bg_range, n)
    bg_mix = bg_rng.uniform(0.0, 1.0, n)
    r0, r1 = _BACKGROUND_EXPONENTS

    # the extra background is two more linear components, so each spectrum is a linear
    # combination of table rows (the block generator of eels_map does the rest)
    phases = _phases(fe3_shift, False)
    components = [*phases, _PowerLaw(r0), _PowerLaw(r1)]
    weights = np.column_stack([abundances, bg_amp * (1.0 - bg_mix), bg_amp * bg_mix])
    spectra_ext, start = extended_spectra(components, lo, scale, n_channels,
                                          float(np.abs(shift_ev).max(initial=0.0)), plural=True)
    generator = SpectrumImageGenerator(
        spectra_ext, start, n_channels, weights, t, shift_ev / scale,
        PluralScattering(scale, spectra_ext.shape[1]), (n,), 1.0, seed,
    )

    # white-line area of each phase in model units (channel sums over the window)
    energy = lo + np.arange(n_channels) * scale  # the signal axis of eels_map

    def white_lines(e: np.ndarray) -> np.ndarray:
        return np.stack([sum((p(e) for p in _l3_white_lines(ph)), np.zeros_like(e))
                         for ph in phases])

    wl_area = binned(white_lines, energy, scale, 0.1, blur_fwhm=ENERGY_RESOLUTION_EV).sum(-1)

    spectra = np.empty((n, n_channels), dtype=np.float32)
    clean_all = np.empty((n, n_channels)) if return_clean else None
    totals = np.empty(n)
    for i, sl in enumerate(generator.blocks):
        clean = generator.clean_block(i)
        totals[sl] = clean.sum(-1)
        clean *= (dose_per_channel[sl] * n_channels / totals[sl])[:, None]
        spectra[sl] = _poisson(seed, i, clean)
        if clean_all is not None:
            clean_all[sl] = clean
    # single scattering conserves the total (the low-loss distribution has unit area), so
    # the white-line share of the expected counts is t * sum_k a_k WL_k over the total
    area = 100.0 * generator.intensity_scale * t * (abundances @ wl_area) / totals
    area_counts = area / 100.0 * dose_per_channel * n_channels

    parameters = {
        "generator": "hyperspy_mlspec.data.labelled_spectra",
        "n": n,
        "n_channels": n_channels,
        "energy_range_low": lo,
        "energy_range_high": hi,
        "dose_low": dose_range[0],
        "dose_high": dose_range[1],
        "thickness_low": t_range[0],
        "thickness_high": t_range[1],
        "drift": drift,
        "background_low": bg_range[0],
        "background_high": bg_range[1],
        "fe3_shift": fe3_shift,
        "random_state": seed,
        "classes": "; ".join(c[0] for c in CLASSES),
        "energy_resolution_eV": ENERGY_RESOLUTION_EV,
        "plasmon_energy_eV": PLASMON_ENERGY_EV,
    }
    return LabelledSpectra(
        spectra=spectra, labels=labels, class_names=[c[0] for c in CLASSES], area=area,
        area_counts=area_counts, energy=energy, fe3_fraction=fe3, abundances=abundances,
        thickness=t, energy_shift=shift_ev, dose=dose_per_channel, background=bg_amp,
        background_mix=bg_mix, clean=clean_all, parameters=parameters,
    )
