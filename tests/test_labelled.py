"""Tests of the labelled-spectra generator (hyperspy_mlspec.data.labelled_spectra)."""

import numpy as np
import pytest
from exspy.signals import EELSSpectrum

from hyperspy_mlspec.data import LabelledSpectra, labelled_spectra

NCH = 512


@pytest.fixture(scope="module")
def data():
    return labelled_spectra(800, NCH, random_state=3, return_clean=True)


@pytest.fixture(scope="module")
def fixed():
    """No nuisances: one dose, one thickness, no shift, no extra background."""
    return labelled_spectra(400, 2048, dose=20.0, thickness=0.5, drift=0.0, background=0.0,
                            random_state=4, return_clean=True)


def _window(energy, lo, hi):
    return (energy >= lo) & (energy <= hi)


def test_shapes_dtypes_and_counts(data):
    assert isinstance(data, LabelledSpectra) and len(data) == 800
    assert data.spectra.shape == (800, NCH) and data.spectra.dtype == np.float32
    assert data.clean.shape == (800, NCH)
    for name in ("labels", "area", "area_counts", "fe3_fraction", "thickness", "energy_shift",
                 "dose", "background", "background_mix"):
        assert getattr(data, name).shape == (800,), name
    assert np.issubdtype(data.labels.dtype, np.integer)
    assert data.abundances.shape == (800, 3)
    np.testing.assert_allclose(data.abundances.sum(1), 1.0, atol=1e-12)
    assert data.n_classes == 4 and len(data.class_names) == 4
    assert data.energy.shape == (NCH,)
    assert data.energy[0] == 400.0 and data.energy[1] - data.energy[0] == pytest.approx(1.0)
    # Poisson counts of the clean spectra
    x = data.spectra
    assert np.all(x >= 0) and np.array_equal(x, np.round(x))
    assert x.sum() == pytest.approx(data.clean.sum(), rel=0.01)
    assert np.all(np.isfinite(data.area)) and np.all(data.area > 0)
    assert "LabelledSpectra" in repr(data) and "800 spectra" in repr(data)


def test_labels_balanced_and_shuffled(data):
    counts = np.bincount(data.labels, minlength=4)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 800
    odd = labelled_spectra(7, 64, random_state=0).labels
    assert np.ptp(np.bincount(odd, minlength=4)) <= 1
    assert not np.all(np.diff(data.labels) >= 0)  # random order, not sorted by class
    # every class appears in the first 40 spectra (no class blocks)
    assert set(data.labels[:40]) == {0, 1, 2, 3}


def test_reproducible_by_seed():
    a = labelled_spectra(60, 128, random_state=11)
    b = labelled_spectra(60, 128, random_state=11)
    c = labelled_spectra(60, 128, random_state=12)
    np.testing.assert_array_equal(a.spectra, b.spectra)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.area, b.area)
    assert not np.array_equal(a.spectra, c.spectra)
    assert not np.array_equal(a.labels, c.labels)
    g = labelled_spectra(5, 64, random_state=np.random.default_rng(1))
    assert g.parameters["random_state"] >= 0


def test_nuisances_vary_per_spectrum(data):
    # dose: expected mean counts per channel log-uniform over 20-200, so a ~10x spread
    np.testing.assert_allclose(data.clean.mean(1), data.dose, rtol=1e-9)
    assert data.dose.min() >= 20.0 and data.dose.max() <= 200.0
    assert data.dose.max() / data.dose.min() > 8.0
    measured = data.spectra.mean(1)
    assert np.corrcoef(measured, data.dose)[0, 1] > 0.99
    # log-uniform: as many spectra below the geometric mean as above
    assert abs(np.mean(data.dose < np.sqrt(20 * 200)) - 0.5) < 0.07
    assert data.thickness.min() >= 0.2 and data.thickness.max() <= 1.0
    assert np.ptp(data.thickness) > 0.7
    assert np.std(data.energy_shift) == pytest.approx(0.3, rel=0.1)
    assert np.ptp(data.background) > 0.4 and np.ptp(data.background_mix) > 0.8
    # the background slope differs: pre-edge log-log slope between 400 and 440 eV
    e = data.energy
    pre = _window(e, 400, 440)
    slopes = np.polyfit(np.log(e[pre]), np.log(data.clean[:, pre].T), 1)[0]
    assert np.ptp(slopes) > 0.3


def test_area_target_follows_the_physics(data):
    means = [data.area[data.labels == k].mean() for k in range(4)]
    # more Fe atoms per volume in FeO than in Fe2O3, fewer Fe atoms with Ti
    assert means[0] > means[1] > means[2] > means[3]
    # a regression target, not a class label: it varies within each class
    for k in range(4):
        assert data.area[data.labels == k].std() > 0.05 * means[k]
    np.testing.assert_allclose(data.area_counts, data.area / 100 * data.dose * NCH)
    # more extra background dilutes the white lines in the spectrum's counts
    assert np.corrcoef(data.area, data.background)[0, 1] < -0.2


def test_area_is_a_deterministic_function_of_composition_without_nuisances(fixed):
    # no nuisance: area = linear-fractional function of the abundances only
    a = fixed.abundances
    ratio = fixed.area / (a[:, 0] + 0.9 * a[:, 1])  # roughly per Fe white-line weight
    assert np.ptp(ratio) / ratio.mean() < 0.3
    # within iron-only classes the area falls with the Fe3+ fraction
    iron = fixed.labels < 3
    assert np.corrcoef(fixed.area[iron], fixed.fe3_fraction[iron])[0, 1] < -0.8


def test_area_matches_a_background_subtracted_measurement(fixed):
    """The white-line counts agree with the classical measurement on the clean spectra:
    power-law background fitted before the edge, then the L3 window minus the continuum
    step estimated from just after the L3 lines."""
    e = fixed.energy
    clean = fixed.clean
    pre = _window(e, 680, 703)
    coef = np.polyfit(np.log(e[pre]), np.log(clean[:, pre].T), 1)
    background = np.exp(coef[0][:, None] * np.log(e)[None, :] + coef[1][:, None])
    net = clean - background
    l3 = _window(e, 703, 714)
    step = net[:, _window(e, 714, 718)].mean(1)  # continuum level between L3 and L2
    measured = net[:, l3].sum(1) - step * l3.sum()
    assert np.corrcoef(measured, fixed.area_counts)[0, 1] > 0.99
    # a constant fraction of the single-scattering area: at t/lambda = 0.5 the plasmon
    # replicas carry 1 - exp(-0.5) of it out of the window, the rest is tails and step
    ratio = measured / fixed.area_counts
    assert ratio.std() / ratio.mean() < 0.03
    assert 0.25 < ratio.mean() < np.exp(-0.5)


def test_fe3_chemical_shift_between_classes(fixed):
    e = fixed.energy
    win = _window(e, 700, 716)
    peaks = []
    for k in (0, 2):
        mean = fixed.clean[fixed.labels == k][:, win].mean(0)
        peaks.append(e[win][np.argmax(mean)])
    assert peaks[0] == pytest.approx(708.0, abs=0.5)
    assert peaks[1] - peaks[0] == pytest.approx(1.5, abs=0.5)
    # Ti-L2,3 edge only in the Ti-bearing class
    ti = _window(e, 455, 468)
    ti_counts = fixed.clean[:, ti].sum(1) / fixed.clean.sum(1)
    assert ti_counts[fixed.labels == 3].min() > ti_counts[fixed.labels < 3].max()


def test_to_signal():
    d = labelled_spectra(12, 256, energy_range=(500.0, 756.0), random_state=2)
    s = d.to_signal()
    assert type(s) is EELSSpectrum
    assert s.data.shape == (12, 256)
    np.testing.assert_array_equal(s.data, d.spectra)
    assert s.data is not d.spectra
    nav = s.axes_manager.navigation_axes[0]
    assert nav.name == "spectrum" and nav.size == 12
    sig = s.axes_manager.signal_axes[0]
    assert sig.units == "eV" and sig.offset == 500.0 and sig.scale == pytest.approx(1.0)
    np.testing.assert_allclose(sig.axis, d.energy)
    assert s.metadata.Signal.signal_type == "EELS"
    assert set(s.metadata.Sample.elements) == {"Fe", "O", "Ti"}
    assert s.metadata.Synthetic.generator == "hyperspy_mlspec.data.labelled_spectra"


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=0), "n must be a positive integer"),
    (dict(n=2.5), "n must be a positive integer"),
    (dict(dose=(10.0, 5.0)), "dose must be increasing"),
    (dict(dose=-1.0), "dose must be finite and > 0"),
    (dict(thickness=(0.0, 1.0)), "thickness must be finite and > 0"),
    (dict(background="a lot"), "background must be a number or a pair"),
    (dict(drift=-0.1), "drift must be finite and >= 0"),
    (dict(n_channels=8), "n_channels must be at least 16"),
    (dict(fe3_shift=20.0), "fe3_shift must be finite"),
])
def test_bad_arguments(kwargs, match):
    kwargs = {"n": 4, "n_channels": 64, **kwargs}
    with pytest.raises(ValueError, match=match):
        labelled_spectra(**kwargs)
