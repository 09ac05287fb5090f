"""Spatial-spectral denoising (issue 11): blind-spot filters, SpatialDenoiser, energy shifts,
and s.mlspec.denoise / s.mlspec.estimate_shift on maps, line scans and awkward input."""

from __future__ import annotations

import hashlib
import warnings

import hyperspy.api as hs
import numpy as np
import pytest
from scipy import ndimage

import hyperspy_mlspec  # noqa: F401 - registers s.mlspec
from hyperspy_mlspec.data import eels_map
from hyperspy_mlspec.spatial import SpatialDenoiser, estimate_shift, filters, shift_spectra


def poisson_error(d, clean) -> float:
    d = np.asarray(d, dtype=np.float64).reshape(-1, clean.shape[-1])
    c = np.asarray(clean, dtype=np.float64).reshape(-1, clean.shape[-1])
    return float(np.mean((d - c) ** 2 / np.maximum(c, 1e-6)))


def digest(s) -> str:
    return hashlib.sha1(np.ascontiguousarray(np.asarray(s.data)).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def small_map():
    s, truth = eels_map((24, 24), 128, 5.0, drift=0.0, rare_phase=False, random_state=3,
                        return_truth=True)
    return s, np.asarray(truth.clean, dtype=np.float64)


# -- filters ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.5, 2.0, 9.0, np.inf])
def test_blind_spot_is_j_invariant_and_matches_reflect_filtering(sigma):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(12, 17, 2))
    valid = rng.random((12, 17)) > 0.15
    m = filters.blind_spot(z, sigma, valid)
    for i, j in [(0, 0), (11, 16), (5, 8)]:
        z2 = z.copy()
        z2[i, j] += 100.0
        assert np.allclose(filters.blind_spot(z2, sigma, valid)[i, j], m[i, j], atol=1e-10)
    if np.isfinite(sigma):  # same numbers as scipy's reflect-boundary Gaussian filter
        v = valid.astype(float)
        fz = ndimage.gaussian_filter(z * v[..., None], (sigma, sigma, 0), mode="reflect")
        fv = ndimage.gaussian_filter(v, sigma, mode="reflect")
        sw = filters._separable_self_weight((12, 17), (sigma, sigma))
        ref = (fz - sw[..., None] * z * v[..., None]) / (fv - sw * v)[..., None]
        assert np.allclose(m, ref, atol=1e-10)


def test_select_keeps_smooth_signal_and_drops_noise():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:40, :40]
    signal = np.stack([3 * np.sin(xx / 6.0), np.zeros((40, 40))], axis=-1)
    noisy = signal + rng.normal(size=signal.shape)
    choice = filters.select(noisy, np.ones(2))
    assert choice.beta[0] > 0.8 and choice.beta[1] == 0.0
    pred = filters.predict(noisy, choice)
    out = filters.combine(noisy, pred, np.ones(2), choice)
    assert np.mean((out[..., 0] - signal[..., 0]) ** 2) < 0.15  # noise variance 1
    assert np.abs(out[..., 1]).max() < 0.5  # pure noise coordinate pulled to ~0


# -- the denoiser on arrays ------------------------------------------------------------------
def test_spatial_denoiser_beats_pca_and_per_pixel_dae(small_map):
    s, clean = small_map
    X = s.data.astype(np.float64)
    den = SpatialDenoiser()
    err_spatial = poisson_error(den.fit_transform(X), clean)
    pca = s.deepcopy()
    pca.decomposition(normalize_poissonian_noise=True, print_info=False)
    err_pca = min(poisson_error(pca.get_decomposition_model(k).data, clean)
                  for k in range(1, 8))
    dae = s.mlspec.denoise(spatial=False, epochs=10, random_state=0, show_progressbar=False)
    err_dae = poisson_error(dae.data, clean)
    assert err_spatial < 0.6 * err_pca, (err_spatial, err_pca)
    assert err_spatial < 0.6 * err_dae, (err_spatial, err_dae)
    assert den.noise_ == "poisson" and 0.8 < den.gain_ < 1.2
    assert 1 <= den.n_components_ <= 16


def test_energy_smoothing_denoises_the_mean_spectrum_of_a_short_line_scan():
    # 40 spectra of one phase: every reconstructed pixel inherits the noise of the mean
    # spectrum (variance noise / 40 per channel) unless the mean is denoised along energy
    rng = np.random.default_rng(0)
    e = np.linspace(0.0, 1.0, 512)
    spectrum = 20 * (np.exp(-3 * e) + 0.5 * (e > 0.4) * np.exp(-2 * (e - 0.4)))
    clean = np.tile(spectrum, (40, 1))
    noisy = rng.poisson(clean).astype(np.float64)
    err_mean = poisson_error(np.tile(noisy.mean(axis=0), (40, 1)), clean)  # ~1/40
    before = noisy.copy()
    est = SpatialDenoiser().fit(noisy)
    err = poisson_error(est.transform(noisy), clean)
    assert err < 0.8 * err_mean, (err, err_mean)
    np.testing.assert_array_equal(noisy, before)  # input untouched


def test_energy_smoothing_removes_basis_noise_of_a_line_scan():
    # 96 spectra: the components' own noise (variance ~ noise / sum(scores^2) per channel)
    # dominates PCA's error; denoising them along energy must beat PCA at its best K
    s, truth = eels_map((96,), 512, 10.0, drift=0.0, rare_phase=False, random_state=5,
                        return_truth=True)
    clean = np.asarray(truth.clean, dtype=np.float64)
    X = s.data.astype(np.float64)
    smooth = SpatialDenoiser().fit(X)
    raw = SpatialDenoiser(energy_smoothing=False).fit(X)
    err_smooth = poisson_error(smooth.transform(X), clean)
    err_raw = poisson_error(raw.transform(X), clean)
    pca = s.deepcopy()
    pca.decomposition(normalize_poissonian_noise=True, print_info=False)
    err_pca = min(poisson_error(pca.get_decomposition_model(k).data, clean)
                  for k in range(1, 8))
    assert err_smooth < 0.75 * err_raw, (err_smooth, err_raw)
    assert err_smooth < 0.75 * err_pca, (err_smooth, err_pca)
    V = smooth.components_
    assert np.allclose(V @ V.T, np.eye(len(V)), atol=1e-8)  # still orthonormal
    with pytest.raises(ValueError, match="energy_smoothing"):
        SpatialDenoiser(energy_smoothing="yes").fit(X)


def test_blind_prediction_ignores_the_pixels_own_spectrum(small_map):
    s, _ = small_map
    X = s.data.astype(np.float64)
    den = SpatialDenoiser().fit(X)
    before = den.predict_blind(X)
    X2 = X.copy()
    # a different spectrum with the same total counts (the whitening scale stays the same)
    X2[10, 7] = np.roll(X2[10, 7], 17)
    after = den.predict_blind(X2)
    assert np.allclose(after[10, 7], before[10, 7], rtol=1e-4, atol=1e-4)
    assert not np.allclose(after[10, 8], before[10, 8], rtol=1e-4, atol=1e-4)  # neighbour


def test_gain_is_measured_and_non_count_data_use_gaussian_noise(small_map):
    s, clean = small_map
    X = s.data.astype(np.float64)
    gained = SpatialDenoiser().fit(X * 4.0)  # integers, variance 16 x mean: gain 4
    assert gained.noise_ == "poisson" and 3.0 < gained.gain_ < 5.0
    offset = SpatialDenoiser().fit(X - 0.5)  # not counts: per-channel Gaussian noise
    assert offset.noise_ == "gaussian"
    err = poisson_error(offset.transform(X - 0.5) + 0.5, clean)
    assert err < 0.3


# -- energy shifts ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_shift_spectra_equals_linear_interpolation_with_clamped_ends(dtype):
    # the grouped-slice implementation against numpy's own interpolation, row by row:
    # fractional, whole, negative, zero and far-out-of-range shifts
    rng = np.random.default_rng(3)
    X = rng.random((6, 5, 40)).astype(dtype)
    shift = rng.normal(0.0, 4.0, (6, 5))
    shift[0, :5] = [0.0, 1.0, -1.0, 1e4, -1e4]
    shift[1, :2] = [-0.5, 0.9999999]
    out = shift_spectra(X, shift)
    pos = np.arange(40.0)
    ref = np.stack([np.interp(pos - d, pos, row.astype(np.float64))
                    for row, d in zip(X.reshape(-1, 40), shift.ravel(), strict=True)])
    assert out.dtype == dtype and out.shape == X.shape
    np.testing.assert_allclose(out.reshape(-1, 40), ref, atol=1e-5 if dtype == np.float32
                               else 1e-12)
    np.testing.assert_array_equal(shift_spectra(X[..., :1], shift), X[..., :1])


def test_shift_spectra_round_trip_and_estimate_recovers_drift():
    c = np.arange(96.0)
    rng = np.random.default_rng(2)
    # a slow drift along the acquisition order (raster), up to +-2 channels
    t = np.linspace(0, 1, 24 * 24)
    true = (2.0 * np.sin(2 * np.pi * 1.3 * t)).reshape(24, 24)
    base = 40 * np.exp(-0.5 * ((c - 40) / 2.5) ** 2) + 25 * np.exp(-0.5 * ((c - 62) / 3) ** 2)
    lam = np.stack([[shift_spectra(base[None] + 5.0, np.array([d]))[0] for d in row]
                    for row in true])
    X = rng.poisson(lam).astype(float)
    est = estimate_shift(X)
    err = (est.shift - est.shift.mean()) - (true - true.mean())
    assert err.std() < 0.25, err.std()
    assert est.pooling == "raster"
    back = shift_spectra(shift_spectra(lam, -true), true)
    # linear interpolation there and back smooths peaks a little, never more than 5 %
    assert np.abs(back - lam)[:, :, 5:-5].max() < 0.05 * lam.max()


def test_estimate_shift_signal_units_axes_and_errors():
    s = eels_map((16, 16), 256, 30.0, drift=0.8, random_state=4)
    shift, unc = s.mlspec.estimate_shift(return_uncertainty=True)
    assert shift.data.shape == (16, 16) and shift.metadata.Signal.quantity == "Energy shift (eV)"
    assert shift.axes_manager.signal_shape == (16, 16)
    assert np.all(unc.data > 0)
    with pytest.raises(ValueError, match="single spectrum"):
        s.inav[0, 0].mlspec.estimate_shift()
    with pytest.raises(ValueError, match="compute"):
        s.as_lazy().mlspec.estimate_shift()


# -- s.mlspec.denoise -----------------------------------------------------------------------
def test_denoise_default_is_spatial_and_keeps_the_input(small_map):
    s, clean = small_map
    before = digest(s)
    d, stats = s.mlspec.denoise(residual_statistics=True, show_progressbar=False)
    assert digest(s) == before
    assert d.metadata.General.title.endswith("(spatially denoised)")
    assert d.metadata.MLSpec.operation_0.model == "SpatialDenoiser"
    assert d.axes_manager[-1].scale == s.axes_manager[-1].scale
    assert poisson_error(d.data, clean) < 0.05
    assert 0.7 < np.nanmean(stats["chi2_per_channel"].data) < 1.3


def test_denoise_aligns_a_drifted_map():
    s, truth = eels_map((20, 20), 512, 20.0, drift=1.0, thickness=False, random_state=5,
                        return_truth=True)
    clean = np.asarray(truth.clean)
    d, shift = s.mlspec.denoise(return_shift=True, show_progressbar=False)
    plain = s.mlspec.denoise(align=False, show_progressbar=False)
    assert d.metadata.MLSpec.operation_0.aligned
    assert d.metadata.MLSpec.operation_0.shift_source == "estimated"
    assert np.nanstd(shift.data) > 0.2
    assert poisson_error(d.data, clean) < poisson_error(plain.data, clean)


def test_denoise_with_a_known_shift_map():
    """A known per-pixel shift (e.g. from the zero-loss peak) keeps each pixel's own jitter,
    which the estimate cannot measure at low dose: lower error than the estimated drift,
    in eV (a navigation image or an array), and the estimate's own map round-trips."""
    s, truth = eels_map((20, 20), 512, 10.0, drift=0.3, thickness=False, random_state=5,
                        return_truth=True)
    clean = np.asarray(truth.clean)
    before = digest(s)
    auto, est = s.mlspec.denoise(return_shift=True, show_progressbar=False)
    known = s.mlspec.denoise(align=truth.energy_shift, show_progressbar=False)
    assert digest(s) == before
    assert known.metadata.MLSpec.operation_0.shift_source == "given"
    assert auto.metadata.MLSpec.operation_0.shift_source == "none"  # drift not significant
    assert poisson_error(known.data, clean) < 0.9 * poisson_error(auto.data, clean)
    # the same values as a HyperSpy navigation image, offset by a constant: same result
    image = est._deepcopy_with_new_data(np.asarray(truth.energy_shift, np.float32) + 3.0)
    again = s.mlspec.denoise(align=image, show_progressbar=False)
    np.testing.assert_allclose(again.data, known.data, atol=1e-3)
    back = s.mlspec.denoise(align=est, show_progressbar=False)
    np.testing.assert_allclose(back.data, auto.data, atol=1e-3)


def test_denoise_aligned_by_zero_loss_peak_centres():
    """The dual-EELS workflow: exspy's zero-loss peak centres of the low-loss map are the
    shift map of the core-loss map."""
    exspy = pytest.importorskip("exspy")
    s, truth = eels_map((20, 20), 512, 10.0, drift=0.3, thickness=False, random_state=5,
                        return_truth=True)
    energy = np.arange(-10.0, 20.0, 0.05)
    zlp = 1e4 * np.exp(-0.5 * ((energy - truth.energy_shift[..., None]) / 0.3) ** 2)
    low_loss = exspy.signals.EELSSpectrum(zlp)
    ax = low_loss.axes_manager[-1]
    ax.scale, ax.offset, ax.units = 0.05, -10.0, "eV"
    centres = low_loss.estimate_zero_loss_peak_centre()
    d = s.mlspec.denoise(align=centres, show_progressbar=False)
    known = s.mlspec.denoise(align=truth.energy_shift, show_progressbar=False)
    assert d.metadata.MLSpec.operation_0.shift_source == "given"
    clean = np.asarray(truth.clean)
    assert poisson_error(d.data, clean) < 1.05 * poisson_error(known.data, clean)


def test_known_shift_map_bad_input():
    s = eels_map((8, 10), 64, 5.0, drift=0.3, random_state=0)
    with pytest.raises(ValueError, match="navigation"):
        s.mlspec.denoise(align=np.zeros((10, 8)), show_progressbar=False)
    bad = np.zeros((8, 10))
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="navigation_mask"):
        s.mlspec.denoise(align=bad, show_progressbar=False)
    mask = np.zeros((8, 10), dtype=bool)
    mask[2, 3] = True
    out = s.mlspec.denoise(align=bad, navigation_mask=mask, show_progressbar=False)
    assert np.isnan(out.data[2, 3]).all() and np.isfinite(out.data[0, 0]).all()
    with pytest.raises(ValueError, match="units"):
        s.mlspec.denoise(align=np.linspace(0, 1, 80).reshape(8, 10) * 1e3,
                         show_progressbar=False)
    with pytest.raises(ValueError, match="spatial route"):
        s.mlspec.denoise(align=np.zeros((8, 10)), spatial=False, epochs=1,
                         show_progressbar=False)
    with pytest.raises(ValueError, match="lazy"):
        s.as_lazy().mlspec.denoise(align=np.zeros((8, 10)), show_progressbar=False)
    with pytest.raises(TypeError, match="shift map"):
        s.mlspec.denoise(align=object(), show_progressbar=False)


def test_denoise_linescan_3d_masks_and_nan(small_map):
    s, clean = small_map
    line = s.inav[:, 5]
    d = line.mlspec.denoise(show_progressbar=False)
    assert d.data.shape == line.data.shape
    assert poisson_error(d.data, clean[5]) < poisson_error(line.data, clean[5]) / 5
    cube = hs.signals.Signal1D(np.random.default_rng(0).poisson(5.0, (3, 4, 5, 48))
                               .astype(float))
    assert cube.mlspec.denoise(show_progressbar=False).data.shape == (3, 4, 5, 48)
    mask = np.zeros((24, 24), dtype=bool)
    mask[3:6, 3:6] = True
    holed = s.deepcopy()
    holed.data[12, 12, 7] = np.nan
    before = digest(holed)
    with pytest.warns(UserWarning, match="NaN"):
        out = holed.mlspec.denoise(navigation_mask=mask, show_progressbar=False)
    assert digest(holed) == before
    assert np.isnan(out.data[4, 4]).all() and np.isnan(out.data[12, 12]).all()
    ok = ~mask
    ok[12, 12] = False
    assert poisson_error(out.data[ok], clean[ok]) < 0.05


def test_denoise_refuses_clearly(small_map):
    s, _ = small_map
    with pytest.raises(ValueError, match="single spectrum"):
        s.inav[0, 0].mlspec.denoise(spatial=True)
    with pytest.raises(TypeError, match="spatial=False"):
        s.mlspec.denoise(spatial=True, epochs=3)
    with pytest.raises(ValueError, match="spatial must be"):
        s.mlspec.denoise(spatial="yes")
    bent = s.deepcopy()
    ax = bent.axes_manager.navigation_axes[0]
    bent.axes_manager.navigation_axes[0].convert_to_non_uniform_axis()
    ax = bent.axes_manager.navigation_axes[0]
    ax.axis = np.concatenate([np.arange(12.0), 12 + 5 * np.arange(12.0)])
    with pytest.raises(ValueError, match="non-uniform"):
        bent.mlspec.denoise()
    with pytest.raises(ValueError, match="lazy"):
        s.as_lazy().mlspec.denoise(align=True)


def test_denoise_lazy_matches_eager_without_loading_whole(small_map):
    s, _ = small_map
    lazy = s.as_lazy()
    lazy.data = lazy.data.rechunk((8, 8, -1))
    d = lazy.mlspec.denoise(show_progressbar=False)
    assert d._lazy and hasattr(d.data, "dask")
    eager = s.mlspec.denoise(align=False, show_progressbar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = d.data.compute()
    assert np.allclose(got, eager.data, rtol=1e-3, atol=1e-3 * float(eager.data.max()))


def test_seed_route_weights_fine_structure_and_combines_with_spatial(tmp_path, small_map):
    from hyperspy_mlspec import DenoisingAutoencoder, load_model

    rng = np.random.default_rng(0)
    c = np.arange(64.0)
    # a library whose spectra differ only by a small peak near channel 40 on a background
    library = np.stack([50 * np.exp(-c / 30) + a * np.exp(-0.5 * ((c - 40) / 1.5) ** 2)
                        for a in rng.uniform(0, 3, 400)])
    dae = DenoisingAutoencoder(noise="supervised", dose=(5, 50), epochs=2, random_state=0,
                               show_progressbar=False).fit(library)
    w = dae.channel_weights_
    assert abs(w.mean() - 1) < 1e-5 and w[38:43].min() > 3 * np.median(w)
    flat = DenoisingAutoencoder(noise="supervised", dose=(5, 50), epochs=1,
                                channel_weights="none", random_state=0,
                                show_progressbar=False).fit(library)
    assert np.allclose(flat.channel_weights_, 1.0)
    dae.save(tmp_path / "dae.mlspec")
    assert np.allclose(load_model(tmp_path / "dae.mlspec").channel_weights_, w)
    s = hs.signals.Signal1D(rng.poisson(library[:36].reshape(6, 6, 64) * 0.2).astype(float))
    both = s.mlspec.denoise(model=dae, spatial=True, show_progressbar=False)
    assert both.data.shape == s.data.shape and np.isfinite(both.data).all()
    assert both.metadata.MLSpec.operation_0.model == "SpatialDenoiser"
    assert both.metadata.MLSpec.operation_1.model == "DenoisingAutoencoder"


def test_detector_gain_does_not_change_the_result():
    # raw counts times a detector gain (variance = gain x counts): the split-half tests
    # must split electrons, not data units (whose halves would share most of their noise
    # and keep noise components); the result is then the gain-1 result times the gain
    s, truth = eels_map((32, 40), 162, 10.0, energy_range=(400.0, 1696.0), drift=0.0,
                        random_state=8, return_truth=True)
    clean = np.asarray(truth.clean, dtype=np.float64)
    X = s.data.astype(np.float64)
    plain = SpatialDenoiser().fit(X)
    err_1 = poisson_error(plain.transform(X), clean)
    raw = (3 * X).astype(np.int16)  # int16 counts, gain 3
    gained = SpatialDenoiser().fit(raw)
    err_3 = poisson_error(gained.transform(raw) / 3.0, clean)
    assert abs(gained.gain_ - 3.0) < 0.3 and abs(plain.gain_ - 1.0) < 0.1
    assert gained.n_components_ == plain.n_components_
    assert err_3 < 1.1 * err_1, (err_3, err_1)


def test_noise_correlated_between_channels_is_measured_and_not_kept_as_signal():
    # a detector point-spread function spreads each electron over neighbouring channels:
    # halves of such counts share the correlated part of their noise, and the white-noise
    # edge lets smooth noise directions through; the correlation is measured (corrected
    # for the projection it is measured after) and used for the split and the edges
    from scipy.ndimage import convolve1d

    s, truth = eels_map((40, 50), 162, 10.0, energy_range=(400.0, 1696.0), drift=0.0,
                        random_state=3, return_truth=True)
    mu = np.asarray(truth.clean, dtype=np.float64)
    rng = np.random.default_rng(0)
    psf = np.array([0.1, 0.8, 0.1])  # lag-1 correlation 2 * 0.08 / 0.66 = 0.242
    counts = rng.poisson(mu).astype(np.float64)
    white = np.rint(4.0 * counts)
    X = np.rint(4.0 * convolve1d(counts, psf, axis=-1, mode="nearest"))
    clean = 4.0 * convolve1d(mu, psf, axis=-1, mode="nearest")
    plain = SpatialDenoiser().fit(white)
    est = SpatialDenoiser().fit(X)
    assert not np.any(plain.noise_correlation_)
    assert abs(est.noise_correlation_[0] - 0.242) < 0.03, est.noise_correlation_
    assert est.n_components_ <= plain.n_components_ + 1, (est.n_components_,
                                                          plain.n_components_)
    sig = hs.signals.Signal1D(X.astype(np.float32))
    sig.decomposition(normalize_poissonian_noise=True, print_info=False)
    err_pca = min(poisson_error(sig.get_decomposition_model(k).data, clean)
                  for k in range(1, 9))
    assert poisson_error(est.transform(X), clean) < 0.5 * err_pca


def test_counts_on_a_pedestal_get_the_measured_noise_model():
    # raw counts with a dark level: variance g (x - b), not g x; Poisson whitening would be
    # wrong (measured: 1.3x PCA's error), the per-channel (Gaussian) model is right
    s, truth = eels_map((40, 50), 162, 10.0, energy_range=(400.0, 1696.0), drift=0.0,
                        random_state=7, return_truth=True)
    mu = np.asarray(truth.clean, dtype=np.float64)
    counts = 3.0 * s.data.astype(np.float64)
    plain = SpatialDenoiser().fit(counts)
    assert plain.noise_ == "poisson" and abs(plain.count_offset_) < 10
    X = counts + 100.0
    est = SpatialDenoiser().fit(X)
    assert est.noise_ == "gaussian" and abs(est.count_offset_ - 100.0) < 20
    clean = 3.0 * mu + 100.0
    err = float(np.mean((est.transform(X) - clean) ** 2 / (3.0 * mu))) / 3.0
    sig = hs.signals.Signal1D(X.astype(np.float32))
    sig.decomposition(normalize_poissonian_noise=True, print_info=False)
    err_pca = min(float(np.mean((sig.get_decomposition_model(k).data - clean) ** 2
                                / (3.0 * mu))) / 3.0 for k in range(1, 9))
    assert err < 0.5 * err_pca, (err, err_pca)


def test_shift_estimate_reads_counts_with_a_gain_in_electrons():
    # the shifts' precisions (how much a pixel trusts its own estimate over its
    # neighbours') are Poisson ones: data with a detector gain must give the same shifts
    s = eels_map((40, 50), 162, 10.0, energy_range=(400.0, 1696.0), drift=0.3,
                 random_state=7)
    X = s.data.astype(np.float64)
    plain, gained = estimate_shift(X), estimate_shift(3.0 * X)
    np.testing.assert_allclose(gained.shift, plain.shift, atol=0.02)
    np.testing.assert_allclose(gained.uncertainty, plain.uncertainty, rtol=0.05)


def test_alignment_shift_components_follow_the_grid(monkeypatch):
    """The shift that aligns spectra for denoising is fitted with 6 components of the
    aligned map (chemistry must not leak into it), fewer on small grids, whose components
    come from few pixels."""
    import hyperspy_mlspec.spatial as spatial
    from hyperspy_mlspec.denoise import estimate_shift_array

    seen = []
    real = spatial.estimate_shift

    def spy(*args, **kwargs):
        seen.append(kwargs["n_components"])
        return real(*args, **kwargs)

    monkeypatch.setattr(spatial, "estimate_shift", spy)
    for shape in ((8, 8), (16, 18), (24, 24)):
        s = eels_map(shape, 64, 5.0, drift=0.3, random_state=0)
        est = estimate_shift_array(s.data, np.ones(shape, bool), (1.0, 1.0))
        assert est.shift.shape == shape
    assert seen == [3, 4, 6]


def _model_error(s, k, shift, clean):
    """Poisson-weighted error of HyperSpy's decomposition model moved back onto the
    spectra as measured (the documented ``shift1D`` step)."""
    model = s.get_decomposition_model(k)
    if shift is not None:
        model.shift1D(shift.data, crop=False, show_progressbar=False)
    return poisson_error(np.asarray(model.data), clean)


def test_decomposition_aligned_to_the_drift():
    """align=True removes the drift before the decomposition: the components describe
    the chemistry, not copies of the edges moved by a few channels, so the model moved
    back has a lower error than the unaligned one at the same number of components;
    the input is never moved."""
    s, truth = eels_map((24, 24), 256, 50.0, drift=2.0, thickness=False, random_state=0,
                        return_truth=True)
    clean = np.asarray(truth.clean)
    before = digest(s)
    params = dict(epochs=20, random_state=0, show_progressbar=False)
    ae, shift = s.mlspec.decomposition(3, align=True, return_shift=True, **params)
    assert digest(s) == before
    assert s.learning_results.loadings.shape == (24 * 24, 3)
    assert shift.metadata.MLSpec.operation_0.used_for_alignment
    assert np.corrcoef(shift.data.ravel(), truth.energy_shift.ravel())[0, 1] > 0.5
    aligned = _model_error(s, 3, shift, clean)
    exact = poisson_error(s.mlspec.reconstruct(ae, align=shift).data, clean)
    wrong_frame = poisson_error(s.mlspec.reconstruct(ae).data, clean)
    _, none = s.mlspec.decomposition(3, return_shift=True, **params)
    assert not none.metadata.MLSpec.operation_0.used_for_alignment
    assert np.all(none.data == 0)
    plain = _model_error(s, 3, None, clean)
    assert aligned < 0.8 * plain  # measured 0.67-0.68 on seeds 0-3
    assert exact < 0.8 * plain and exact < 0.6 * wrong_frame
    # the true shift in eV (e.g. zero-loss peak centres) does at least as well
    _, given = s.mlspec.decomposition(3, align=truth.energy_shift, return_shift=True,
                                      **params)
    known = truth.energy_shift - truth.energy_shift.mean()
    np.testing.assert_allclose(given.data, known, atol=1e-4)
    assert _model_error(s, 3, given, clean) < 0.8 * aligned  # measured 0.57-0.62
    assert digest(s) == before


FAST_AE = dict(epochs=3, random_state=0, show_progressbar=False)


def test_decomposition_align_auto_and_bad_input():
    flat = eels_map((12, 12), 128, 50.0, drift=0.0, thickness=False, random_state=1)
    _, shift = flat.mlspec.decomposition(2, align="auto", return_shift=True, **FAST_AE)
    assert not shift.metadata.MLSpec.operation_0.used_for_alignment
    with pytest.raises(ValueError, match="lazy"):
        flat.as_lazy().mlspec.decomposition(2, align=True, **FAST_AE)
    ae = flat.mlspec.decomposition(2, **FAST_AE)
    with pytest.raises(ValueError, match="lazy"):
        flat.as_lazy().mlspec.reconstruct(ae, align=np.zeros((12, 12)))
    with pytest.raises(ValueError, match="navigation"):
        flat.mlspec.reconstruct(ae, align=np.zeros((2, 2)))
    lazy = flat.as_lazy()
    lazy.mlspec.decomposition(2, align="auto", **FAST_AE)  # lazy: left as it is
    assert lazy.learning_results.loadings.shape[1] == 2
    with pytest.raises(ValueError, match="navigation"):
        flat.mlspec.decomposition(2, align=np.zeros((3, 4)), **FAST_AE)
    with pytest.raises(ValueError, match="align must be"):
        flat.mlspec.decomposition(2, align="yes", **FAST_AE)
