"""Tests of the synthetic data generators (hyperspy_mlspec.data)."""

import numpy as np
import pytest
from exspy.signals import (
    EDSTEMSpectrum,
    EELSSpectrum,
    LazyEDSTEMSpectrum,
    LazyEELSSpectrum,
)

from hyperspy_mlspec.data import GroundTruth, eds_map, eels_map

NAV = (16, 16)
NCH = 256
GENERATORS = [eels_map, eds_map]


@pytest.fixture(scope="module")
def eels_rare():
    return eels_map((64, 64), NCH, rare_phase=True, return_truth=True)


@pytest.fixture(scope="module")
def eds_rare():
    return eds_map((64, 64), NCH, rare_phase=True, return_truth=True)


def _axis_names(s):
    return [ax.name for ax in s.axes_manager._axes]


def _linear_model(truth):
    return truth.abundances @ truth.phase_spectra


# --------------------------------------------------------------------------- signals


def test_eels_signal_axes_and_metadata():
    s = eels_map(NAV, NCH, dose=50.0)
    assert type(s) is EELSSpectrum
    assert s.data.shape == NAV + (NCH,)
    assert s.data.dtype == np.float32
    assert _axis_names(s) == ["y", "x", "Energy loss"]
    for ax in s.axes_manager.navigation_axes:
        assert ax.units == "nm" and ax.scale == 2.0 and ax.offset == 0.0
    sig = s.axes_manager.signal_axes[0]
    assert sig.units == "eV"
    assert sig.offset == pytest.approx(400.0)
    assert sig.scale == pytest.approx((912.0 - 400.0) / NCH)
    md = s.metadata
    assert md.Signal.signal_type == "EELS"
    assert md.General.title == "Synthetic EELS map (dose=50)"
    assert md.Acquisition_instrument.TEM.beam_energy == 200.0
    assert md.Acquisition_instrument.TEM.convergence_angle > 0
    assert md.Acquisition_instrument.TEM.Detector.EELS.collection_angle > 0
    assert set(md.Sample.elements) == {"Fe", "O", "Ti"}
    assert md.Synthetic.dose == 50.0 and md.Synthetic.random_state == 0
    for value in md.Synthetic.as_dictionary().values():  # no arrays in metadata
        assert isinstance(value, (str, int, float, bool))


def test_eds_signal_axes_and_metadata():
    s = eds_map(NAV, NCH, dose=20.0, rare_phase=True)
    assert type(s) is EDSTEMSpectrum
    assert s.data.shape == NAV + (NCH,)
    assert _axis_names(s) == ["y", "x", "Energy"]
    sig = s.axes_manager.signal_axes[0]
    assert sig.units == "keV"
    assert sig.offset == pytest.approx(0.0)
    assert sig.scale == pytest.approx(10.24 / NCH)
    md = s.metadata
    assert md.Signal.signal_type == "EDS_TEM"
    assert md.General.title == "Synthetic EDS map (dose=20)"
    assert md.Acquisition_instrument.TEM.beam_energy == 200.0
    assert md.Acquisition_instrument.TEM.Detector.EDS.energy_resolution_MnKa == 130.0
    assert {"Fe", "Cr", "Ni", "Cu"} <= set(md.Sample.elements)
    assert "Fe_Ka" in md.Sample.xray_lines


def test_custom_energy_range():
    s = eels_map((4, 4), 128, energy_range=(500.0, 564.0))
    sig = s.axes_manager.signal_axes[0]
    assert sig.offset == 500.0 and sig.scale == pytest.approx(0.5)
    s = eds_map((4, 4), 200, energy_range=(0.2, 8.2))
    sig = s.axes_manager.signal_axes[0]
    assert sig.offset == pytest.approx(0.2) and sig.scale == pytest.approx(0.04)


@pytest.mark.parametrize("generator", GENERATORS)
@pytest.mark.parametrize("dose", [1.0, 30.0])
def test_counts_are_poisson_integers_at_dose(generator, dose):
    s, truth = generator((32, 32), NCH, dose=dose, return_truth=True)
    data = s.data
    assert np.all(data >= 0)
    assert np.array_equal(data, np.round(data))
    assert truth.clean.mean() == pytest.approx(dose, rel=1e-6)
    assert data.mean() == pytest.approx(dose, rel=0.03)
    if dose == 1.0:  # very low dose: mostly zeros and ones
        assert np.mean(data <= 1) > 0.7


# --------------------------------------------------------------------------- truth


@pytest.mark.parametrize("generator", GENERATORS)
def test_truth_consistency(generator):
    s, truth = generator(NAV, NCH, return_truth=True)
    assert isinstance(truth, GroundTruth)
    assert truth.clean.shape == s.data.shape
    n = truth.n_phases
    assert n == len(truth.phase_names) == 3
    assert truth.abundances.shape == NAV + (n,)
    assert np.all(truth.abundances >= 0)
    np.testing.assert_allclose(truth.abundances.sum(-1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(truth.phase_map, truth.abundances.argmax(-1))
    assert np.issubdtype(truth.phase_map.dtype, np.integer)
    assert truth.phase_spectra.shape == (n, NCH)
    assert np.all(truth.phase_spectra >= 0) and truth.phase_spectra.mean() > 0
    assert truth.rare_mask.shape == NAV and not truth.rare_mask.any()
    assert truth.thickness.shape == NAV and truth.energy_shift.shape == NAV
    assert truth.thickness.min() == pytest.approx(0.2)
    assert truth.thickness.max() == pytest.approx(1.0)
    assert "GroundTruth" in repr(truth)


@pytest.mark.parametrize("generator", GENERATORS)
def test_linear_mixing_without_thickness_and_drift(generator):
    _, truth = generator(NAV, NCH, thickness=False, drift=0.0, return_truth=True)
    np.testing.assert_array_equal(truth.thickness, 1.0)
    np.testing.assert_array_equal(truth.energy_shift, 0.0)
    np.testing.assert_allclose(truth.clean, _linear_model(truth), rtol=1e-10)


def test_all_phases_present_and_mixed_interfaces():
    _, truth = eels_map((32, 32), 64, return_truth=True)
    assert set(np.unique(truth.phase_map)) == {0, 1, 2}
    a = truth.abundances
    assert np.any(a.max(-1) == 1.0)  # pure grain cores
    assert np.mean(a.max(-1) < 0.9) > 0.05  # mixed interfaces


# --------------------------------------------------------------------------- EELS physics


def test_fe3_l3_maximum_shifted():
    lo, hi = 690.0, 750.0
    for shift in (1.5, 3.0):
        s, truth = eels_map((2, 2), 480, energy_range=(lo, hi), fe3_shift=shift, return_truth=True)
        energy = s.axes_manager.signal_axes[0].axis
        window = (energy > 700) & (energy < 716)
        fe2, fe3 = truth.phase_spectra[:2, window]
        peak2 = energy[window][np.argmax(fe2)]
        peak3 = energy[window][np.argmax(fe3)]
        assert peak2 == pytest.approx(708.0, abs=0.5)
        assert peak3 - peak2 == pytest.approx(shift, abs=0.35)
        # Fe3+ has a larger L3/L2 white-line ratio: compare background-subtracted maxima
        ratios = []
        for spectrum in truth.phase_spectra[:2]:
            pre = energy < 703
            fit = np.polyfit(np.log(energy[pre]), np.log(spectrum[pre]), 1)
            net = spectrum - np.exp(np.polyval(fit, np.log(energy)))
            ratios.append(net[energy < 716].max() / net[energy > 717].max())
        assert ratios[1] > 1.1 * ratios[0]


def test_fe3_fraction_has_oxidation_front():
    _, truth = eels_map((32, 32), 64, return_truth=True)
    frac = truth.extra["fe3_fraction"]
    assert frac.shape == (32, 32)
    no_fe = truth.abundances[..., :2].sum(-1) == 0
    assert np.all(np.isnan(frac[no_fe]))
    valid = frac[~no_fe]
    assert np.all((valid >= 0) & (valid <= 1))
    assert np.any(valid < 0.02) and np.any(valid > 0.98)
    assert np.mean((valid > 0.1) & (valid < 0.9)) > 0.1  # a graded region


def test_plural_scattering_tail_grows_with_thickness():
    s, truth = eels_map((24, 24), NCH, drift=0.0, return_truth=True)
    t = truth.thickness.ravel()
    gain = truth.clean / (truth.thickness[..., None] * _linear_model(truth))
    high = gain[..., -NCH // 4 :].mean(-1).ravel()  # top of the window
    assert np.all(high > 1.0)
    assert np.corrcoef(t, high)[0, 1] > 0.9
    assert high[t > 0.9].mean() > high[t < 0.3].mean() + 0.02
    # thin film without plural scattering: exactly the linear model
    _, thin = eels_map((24, 24), NCH, drift=0.0, thickness=False, return_truth=True)
    np.testing.assert_allclose(thin.clean / _linear_model(thin), 1.0, rtol=1e-10)


def test_plural_scattering_broadens_white_line():
    s, truth = eels_map((24, 24), 480, energy_range=(690, 750), drift=0.0, return_truth=True)
    energy = s.axes_manager.signal_axes[0].axis
    peak = np.argmin(np.abs(energy - 708.0))
    pure = truth.abundances[..., 0] == 1.0
    t = truth.thickness[pure]
    spectra = truth.clean[pure]
    contrast = spectra[:, peak] / spectra[:, np.argmin(np.abs(energy - 702.0))]
    assert np.corrcoef(t, contrast)[0, 1] < -0.8


def test_drift_shifts_spectra():
    s0, t0 = eels_map(
        (6, 6), 512, drift=0.0, thickness=False, return_truth=True, energy_range=(690.0, 722.0)
    )
    s1, t1 = eels_map(
        (6, 6), 512, drift=0.5, thickness=False, return_truth=True, energy_range=(690.0, 722.0)
    )
    assert t1.energy_shift.std() > 0.3
    energy = s0.axes_manager.signal_axes[0].axis
    for idx in np.ndindex(6, 6):
        d = t1.energy_shift[idx]
        expected = np.interp(energy - d, energy, t0.clean[idx])
        inside = (energy - d > energy[0] + 1) & (energy - d < energy[-1] - 1)
        np.testing.assert_allclose(
            t1.clean[idx][inside],
            expected[inside] * t1.extra["intensity_scale"] / t0.extra["intensity_scale"],
            rtol=2e-3,
        )


# --------------------------------------------------------------------------- EDS physics


def test_eds_lines_and_absorption():
    s, truth = eds_map((24, 24), 1024, return_truth=True)
    energy = s.axes_manager.signal_axes[0].axis
    austenite = truth.phase_spectra[0]
    fe_ka = np.argmin(np.abs(energy - 6.40))
    assert austenite[fe_ka] > 10 * austenite[np.argmin(np.abs(energy - 9.5))]
    assert np.argmax(austenite[energy > 5]) + np.sum(energy <= 5) == pytest.approx(fe_ka, abs=1)
    # low-energy lines are absorbed more in thick regions, high-energy ones barely
    low_e = np.argmin(np.abs(energy - 0.7))
    gain = truth.clean[..., [low_e, fe_ka]] / (
        truth.thickness[..., None] * _linear_model(truth)[..., [low_e, fe_ka]]
    )
    low = gain[..., 0].ravel()
    high = gain[..., 1].ravel()
    t = truth.thickness.ravel()
    assert np.corrcoef(t, low)[0, 1] < -0.9
    assert low.min() < 0.9
    np.testing.assert_allclose(high, 1.0, atol=0.01)
    assert np.all(truth.energy_shift == 0)  # EDS drift is off by default


# --------------------------------------------------------------------------- rare phase


@pytest.mark.parametrize("name", ["eels_rare", "eds_rare"])
def test_rare_phase_geometry(name, request):
    s, truth = request.getfixturevalue(name)
    mask = truth.rare_mask
    n_pix = mask.size
    assert truth.n_phases == 4
    assert mask.sum() == round(0.005 * n_pix)
    assert mask.mean() < 0.01
    rare = truth.n_phases - 1
    np.testing.assert_array_equal(truth.phase_map == rare, mask)
    assert np.all(truth.abundances[mask][:, rare] >= 0.5)
    assert np.all(truth.abundances[~mask][:, rare] == 0)
    np.testing.assert_allclose(truth.abundances.sum(-1), 1.0, atol=1e-12)


@pytest.mark.parametrize(
    "name, window, reference",
    [("eels_rare", (851.0, 857.0), (838.0, 848.0)), ("eds_rare", (7.95, 8.15), (6.3, 6.5))],
)
def test_rare_phase_has_distinct_signal(name, window, reference, request):
    s, truth = request.getfixturevalue(name)
    energy = s.axes_manager.signal_axes[0].axis
    w = (energy >= window[0]) & (energy <= window[1])
    r = (energy >= reference[0]) & (energy <= reference[1])
    ratio = truth.clean[..., w].mean(-1) / truth.clean[..., r].mean(-1)
    assert ratio[truth.rare_mask].min() > ratio[~truth.rare_mask].max() + 0.05


def test_rare_phase_at_least_one_pixel():
    _, truth = eels_map((8, 8), 64, rare_phase=True, rare_fraction=0.001, return_truth=True)
    assert truth.rare_mask.sum() == 1
    _, truth = eds_map((40,), 64, rare_phase=True, rare_fraction=0.1, return_truth=True)
    assert truth.rare_mask.sum() == 4
    idx = np.flatnonzero(truth.rare_mask)
    assert np.ptp(idx) <= 2 * 4  # compact (1-3 blobs on a line)


# --------------------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("generator", GENERATORS)
def test_same_seed_same_data(generator):
    a = generator(NAV, 64, random_state=7)
    b = generator(NAV, 64, random_state=7)
    c = generator(NAV, 64, random_state=8)
    np.testing.assert_array_equal(a.data, b.data)
    assert not np.array_equal(a.data, c.data)
    rng = np.random.default_rng(3)
    assert generator(NAV, 64, random_state=rng).data.shape == NAV + (64,)
    assert generator((), 64, random_state=None).data.shape == (64,)


@pytest.mark.parametrize(
    "generator, lazy_class", [(eels_map, LazyEELSSpectrum), (eds_map, LazyEDSTEMSpectrum)]
)
@pytest.mark.parametrize("shape", [(40, 100), (30,), ()])
def test_lazy_equals_eager(generator, lazy_class, shape):
    kwargs = dict(rare_phase=True, return_truth=True, random_state=3)
    if generator is eds_map:
        kwargs["drift"] = 0.01
    s, truth = generator(shape, 64, **kwargs)
    s_lazy, truth_lazy = generator(shape, 64, lazy=True, **kwargs)
    assert type(s_lazy) is lazy_class
    assert s_lazy._lazy
    if len(shape) == 2:
        assert len(s_lazy.data.chunks[0]) > 1  # several navigation blocks
        assert s_lazy.data.chunks[-1] == (64,)
    np.testing.assert_array_equal(s_lazy.data.compute(), s.data)
    np.testing.assert_array_equal(np.asarray(truth_lazy.clean), truth.clean)
    np.testing.assert_array_equal(truth_lazy.abundances, truth.abundances)
    assert s_lazy.metadata.Signal.signal_type == s.metadata.Signal.signal_type


# --------------------------------------------------------------------------- dimensions


@pytest.mark.parametrize("generator", GENERATORS)
def test_line_scan_and_single_spectrum(generator):
    s, truth = generator((20,), 64, rare_phase=True, return_truth=True)
    assert s.data.shape == (20, 64)
    assert _axis_names(s)[0] == "x"
    assert s.axes_manager.navigation_dimension == 1
    assert truth.abundances.shape == (20, 4) and truth.phase_map.shape == (20,)
    assert truth.rare_mask.sum() == 1

    s, truth = generator((), 64, return_truth=True)
    assert s.data.shape == (64,)
    assert s.axes_manager.navigation_dimension == 0
    assert truth.abundances.shape == (3,)
    assert truth.phase_map.shape == ()
    assert truth.abundances.sum() == pytest.approx(1.0)
    assert s.data.mean() > 0

    s = generator(12, 32)  # an int is a line scan
    assert s.data.shape == (12, 32)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("generator", GENERATORS)
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dose": -1.0}, "dose"),
        ({"dose": 0.0}, "dose"),
        ({"dose": float("nan")}, "dose"),
        ({"n_channels": 8}, "n_channels"),
        ({"n_channels": 64.5}, "n_channels"),
        ({"rare_fraction": 0.0}, "rare_fraction"),
        ({"rare_fraction": 0.5}, "rare_fraction"),
        ({"rare_fraction": -0.1}, "rare_fraction"),
        ({"rare_fraction": 0.7, "rare_phase": True}, "rare_fraction"),
        ({"energy_range": (5.0, 1.0)}, "energy_range"),
        ({"energy_range": (5.0, 5.0)}, "energy_range"),
        ({"energy_range": (1.0,)}, "energy_range"),
        ({"navigation_shape": (2, 2, 2)}, "navigation_shape"),
        ({"navigation_shape": (0, 4)}, "navigation_shape"),
        ({"navigation_shape": (4.5,)}, "navigation_shape"),
        ({"drift": -0.1}, "drift"),
        ({"random_state": -1}, "random_state"),
        ({"random_state": "seed"}, "random_state"),
    ],
)
def test_bad_arguments(generator, kwargs, match):
    kwargs = {"navigation_shape": (4, 4), "n_channels": 64, **kwargs}
    with pytest.raises(ValueError, match=match):
        generator(**kwargs)


def test_eels_energy_range_must_be_positive():
    with pytest.raises(ValueError, match="energy_range"):
        eels_map((4, 4), 64, energy_range=(-10.0, 100.0))
