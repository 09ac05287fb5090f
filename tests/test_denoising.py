"""DenoisingAutoencoder and s.mlspec.denoise: accuracy against ground truth, signal handling,
lazy data, persistence and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hyperspy_mlspec
from hyperspy_mlspec import DenoisingAutoencoder, load_model
from hyperspy_mlspec.data import eels_map
from hyperspy_mlspec.denoise import denoise_files, normalized_residuals

N_CH = 128
FAST = {"random_state": 0, "show_progressbar": False}


def poisson_error(denoised, clean) -> float:
    """Mean squared error in units of the Poisson variance (raw counts give ~1)."""
    denoised = np.asarray(denoised, dtype=np.float64).reshape(-1, clean.shape[-1])
    clean = np.asarray(clean, dtype=np.float64).reshape(-1, clean.shape[-1])
    return float(np.mean((denoised - clean) ** 2 / np.maximum(clean, 1e-3)))


@pytest.fixture(scope="module")
def eels():
    s, truth = eels_map((16, 16), n_channels=N_CH, dose=20, return_truth=True, random_state=0)
    return s, truth


@pytest.fixture(scope="module")
def fitted(eels):
    """One self-supervised model and its output, shared by several tests."""
    s, truth = eels
    original = s.data.copy()
    denoised, residuals, stats = s.mlspec.denoise(spatial=False, return_residuals=True,
                                                  residual_statistics=True, **FAST)
    model = hyperspy_mlspec.denoise.fit_denoiser(s, **FAST)
    return {"s": s, "truth": truth, "original": original, "denoised": denoised,
            "residuals": residuals, "stats": stats, "model": model}


# -- accuracy ---------------------------------------------------------------------------------
def test_poisson_split_denoises_and_conserves_counts(fitted):
    s, truth, denoised = fitted["s"], fitted["truth"], fitted["denoised"]
    noisy_error = poisson_error(s.data, truth.clean)
    dae_error = poisson_error(denoised.data, truth.clean)
    assert 0.9 < noisy_error < 1.1
    assert dae_error < noisy_error / 20  # measured: 0.036
    # count-conserving: each spectrum keeps its counts, so the map total is unbiased
    np.testing.assert_allclose(denoised.data.sum(-1), s.data.sum(-1), rtol=1e-4)
    assert abs(denoised.data.sum() / truth.clean.sum() - 1) < 0.01


def test_mask_noise_model(eels):
    s, truth = eels
    X = s.data.reshape(-1, N_CH)
    dae = DenoisingAutoencoder(noise="mask", **FAST)
    assert poisson_error(dae.fit_transform(X), truth.clean) < 0.05  # measured: 0.035


def test_mask_mse_on_non_count_data(eels):
    """Gaussian data that are not counts: masking with the MSE loss."""
    _, truth = eels
    clean = truth.clean.reshape(-1, N_CH) / truth.clean.mean()
    rng = np.random.default_rng(1)
    noisy = clean + rng.normal(0, 0.2, clean.shape)
    dae = DenoisingAutoencoder(noise="mask", loss="mse", **FAST)
    denoised = dae.fit_transform(noisy)
    assert dae.loss_ == "mse" and not dae.conserves_counts_
    assert np.mean((denoised - clean) ** 2) < 0.15 * np.mean((noisy - clean) ** 2)  # 0.09


def test_supervised_on_clean_spectra(eels):
    """Trained on clean spectra at doses 2-50; applied to noisy maps at two doses."""
    _, truth = eels
    clean = truth.clean.reshape(-1, N_CH)
    sup = DenoisingAutoencoder(noise="supervised", dose=(2, 50), epochs=40, **FAST).fit(clean)
    assert sup.loss_ == "poisson"
    for dose in (5, 20):
        s2, t2 = eels_map((16, 16), n_channels=N_CH, dose=dose, return_truth=True,
                          random_state=3)
        out = s2.mlspec.denoise(sup)
        assert poisson_error(out.data, t2.clean) < 0.03  # measured: 0.012-0.016
        assert out.metadata.MLSpec.operation_0.fitted_on_this_signal is False
    # clean targets: wide layers (nothing to memorise), the self-supervised model stays narrow
    widths = [m.out_features for m in sup.module_.modules() if isinstance(m, torch.nn.Linear)]
    assert widths[:2] == [128, 64]
    narrow = DenoisingAutoencoder(noise="mask", epochs=1, **FAST).fit(clean)
    assert [m.out_features for m in narrow.module_.modules()
            if isinstance(m, torch.nn.Linear)][:2] == [32, 16]


def test_supervised_gaussian_read_noise_accepts_negative_input(eels):
    _, truth = eels
    clean = truth.clean.reshape(-1, N_CH)
    sup = DenoisingAutoencoder(noise="supervised", dose=(5, 50), read_noise=2.0, epochs=5,
                               **FAST).fit(clean)
    noisy = np.random.default_rng(0).poisson(clean) + np.random.default_rng(1).normal(
        0, 2.0, clean.shape)
    assert noisy.min() < 0
    assert sup.transform(noisy).shape == clean.shape


def test_conv_architecture(eels):
    s, truth = eels
    dae = DenoisingAutoencoder(architecture="conv", n_filters=8, epochs=8, **FAST)
    assert poisson_error(dae.fit_transform(s.data.reshape(-1, N_CH)), truth.clean) < 0.05  # 0.027


def test_uncertainty_from_binomial_resampling(fitted):
    s, truth, model = fitted["s"], fitted["truth"], fitted["model"]
    X = s.data.reshape(-1, N_CH)
    std = model.uncertainty(X, n_resamples=8)
    assert std.shape == X.shape and np.all(std >= 0)
    # smaller than the raw Poisson noise, not zero
    ratio = np.mean(std) / np.mean(np.sqrt(truth.clean))
    assert 0.03 < ratio < 0.3  # measured: 0.11


# -- signals ----------------------------------------------------------------------------------
def test_output_signal_keeps_class_axes_metadata_and_input(fitted):
    s, denoised = fitted["s"], fitted["denoised"]
    np.testing.assert_array_equal(s.data, fitted["original"])
    assert type(denoised) is type(s)
    assert denoised.data.shape == s.data.shape
    for a, b in zip(s.axes_manager._axes, denoised.axes_manager._axes, strict=True):
        assert (a.name, a.size, a.scale, a.offset, a.units) == (b.name, b.size, b.scale,
                                                                b.offset, b.units)
    assert denoised.metadata.General.title == f"{s.metadata.General.title} (DAE denoised)"
    assert denoised.metadata.Signal.quantity == "Counts"
    assert denoised.metadata.MLSpec.operation_0.operation == "denoise"
    assert denoised.metadata.MLSpec.operation_0.noise == "poisson-split"
    assert not s.metadata.has_item("MLSpec")
    np.testing.assert_allclose(fitted["residuals"].data, s.data - denoised.data, atol=1e-3)


def test_residual_statistics_close_to_one(fitted):
    stats = fitted["stats"]
    chi2 = stats["chi2_per_channel"]
    assert chi2.data.shape == (16, 16)
    assert chi2.axes_manager.signal_shape == (16, 16)
    assert 0.9 < float(np.mean(chi2.data)) < 1.1  # measured: 0.98
    assert abs(float(np.mean(stats["mean_normalized_residual"].data))) < 0.05


def test_residual_statistics_flag_discarded_structure():
    rng = np.random.default_rng(0)
    lam = np.full((40, 100), 20.0)
    x = rng.poisson(lam).astype(float)
    _, chi2_good = normalized_residuals(x, lam, True)
    blurred = lam.copy()
    x[:20, 40:50] += 60  # structure a denoiser would have removed
    _, chi2_bad = normalized_residuals(x, blurred, True)
    assert 0.9 < chi2_good.mean() < 1.1
    assert chi2_bad[:20].mean() > 5 * chi2_bad[20:].mean()


def test_navigation_mask_and_signal_range(eels):
    s, _ = eels
    mask = np.zeros((16, 16), dtype=bool)
    mask[:2] = True
    out = s.mlspec.denoise(navigation_mask=mask, signal_range=(600.0, 800.0), epochs=3, **FAST)
    axis = out.axes_manager.signal_axes[0]
    assert axis.axis[0] >= 600 - 1e-6 and axis.axis[-1] <= 800 + 1e-6
    assert np.isnan(out.data[:2]).all() and np.isfinite(out.data[2:]).all()


def test_lazy_in_lazy_out_matches_eager(fitted):
    s, model = fitted["s"], fitted["model"]
    lazy = s.as_lazy()
    lazy.data = lazy.data.rechunk((4, 16, 32))  # chunks that split the signal axis
    eager_out = s.mlspec.denoise(model)
    lazy_out, stats = lazy.mlspec.denoise(model, residual_statistics=True)
    assert lazy_out._lazy and stats["chi2_per_channel"]._lazy
    np.testing.assert_allclose(lazy_out.data.compute(), eager_out.data, rtol=1e-4, atol=1e-3)


def test_fit_on_lazy_signal(eels):
    s, truth = eels
    lazy = s.as_lazy()
    lazy.data = lazy.data.rechunk((8, 16, 64))
    out = lazy.mlspec.denoise(epochs=10, **FAST)
    assert out._lazy
    assert poisson_error(out.data.compute(), truth.clean) < 0.1


# -- persistence ------------------------------------------------------------------------------
def test_save_load_round_trip(fitted, tmp_path):
    model = fitted["model"]
    X = fitted["s"].data.reshape(-1, N_CH)
    path = tmp_path / "dae.mlspec"
    model.save(path)
    loaded = load_model(path)
    assert isinstance(loaded, DenoisingAutoencoder)
    assert loaded.get_params() == model.get_params()
    assert loaded.conserves_counts_ and loaded.n_latent_ == model.n_latent_
    np.testing.assert_allclose(loaded.transform(X), model.transform(X), rtol=1e-5, atol=1e-5)
    # the saved path can be given to the namespace directly
    out = fitted["s"].mlspec.denoise(str(path))
    np.testing.assert_allclose(out.data.reshape(-1, N_CH), model.transform(X), atol=1e-4)


def test_denoise_files(eels, tmp_path):
    s, _ = eels
    s.save(tmp_path / "map.hspy")
    rows = denoise_files([tmp_path / "map.hspy"], tmp_path / "out", epochs=3,
                         save_models=True, **FAST)
    (row,) = rows
    assert row["output"].endswith("map_denoised.hspy")
    assert abs(row["counts_ratio"] - 1) < 1e-4 and row["chi2_per_channel"] > 0
    assert isinstance(load_model(row["model_file"]), DenoisingAutoencoder)
    with pytest.raises(FileExistsError):
        denoise_files([tmp_path / "map.hspy"], tmp_path / "out", epochs=3, **FAST)


# -- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize("transform", [lambda x: x - 3.0, lambda x: x * 0.37],
                         ids=["negative", "non-integer"])
def test_poisson_split_refuses_non_count_data(eels, transform):
    s, _ = eels
    bad = s._deepcopy_with_new_data(transform(s.data))
    with pytest.raises(ValueError, match="noise='mask' with loss='mse'"):
        bad.mlspec.denoise(epochs=1, **FAST)


def test_poisson_split_refuses_mse_loss(eels):
    s, _ = eels
    with pytest.raises(ValueError, match="noise='mask'"):
        s.mlspec.denoise(loss="mse", epochs=1, **FAST)


def test_all_zero_spectra_are_refused(eels):
    s, _ = eels
    zeros = s._deepcopy_with_new_data(np.zeros_like(s.data))
    with pytest.raises(ValueError, match="every spectrum is zero"):
        zeros.mlspec.denoise(epochs=1, **FAST)
    sparse = np.zeros_like(s.data)
    sparse[0, 0, 0] = 1
    with pytest.raises(ValueError, match="too low to split"):
        s._deepcopy_with_new_data(sparse).mlspec.denoise(epochs=1, **FAST)


def test_supervised_without_model_is_refused(eels):
    s, _ = eels
    with pytest.raises(ValueError, match="clean spectra"):
        s.mlspec.denoise(noise="supervised")


def test_model_misuse(fitted):
    s, model = fitted["s"], fitted["model"]
    with pytest.raises(TypeError, match="only apply when fitting"):
        s.mlspec.denoise(model, epochs=3)
    with pytest.raises(TypeError, match="DenoisingAutoencoder"):
        s.mlspec.denoise(object())
    other = eels_map((4, 4), n_channels=64, energy_range=(1000.0, 1100.0))
    with pytest.raises(ValueError):
        other.mlspec.denoise(model)  # no overlap with the model's energy axis
    with pytest.raises(ValueError, match="features"):
        model.transform(np.ones((3, N_CH + 1)))


def test_model_applies_to_other_calibration(fitted):
    """A map with twice as many channels over the same range is resampled onto the model."""
    model = fitted["model"]
    fine = eels_map((4, 4), n_channels=2 * N_CH, dose=40, random_state=2)
    out = fine.mlspec.denoise(model)
    assert out.axes_manager.signal_axes[0].size == N_CH
    assert np.isfinite(out.data).all()


def test_parameter_validation():
    X = np.ones((20, 16))
    for params in ({"noise": "gaussian"}, {"architecture": "rnn"},
                   {"noise": "supervised", "dose": None}, {"noise": "mask",
                                                            "mask_fraction": 1.5},
                   {"noise": "supervised", "dose": (10, 1)}):
        with pytest.raises(ValueError):
            DenoisingAutoencoder(**params, **FAST).fit(X)


def test_partial_fit_and_clone(eels):
    from sklearn.base import clone

    s, truth = eels
    X = s.data.reshape(-1, N_CH)
    dae = DenoisingAutoencoder(partial_fit_epochs=5, **FAST)
    for block in (X[:128], X[128:]):
        dae.partial_fit(block)
    assert dae.n_epochs_ == 10
    assert poisson_error(dae.transform(X), truth.clean) < 0.1
    twin = clone(dae)
    assert twin.get_params() == dae.get_params() and not hasattr(twin, "module_")


def test_poisson_split_measures_the_detector_gain_and_splits_electrons(tmp_path):
    # halves of raw counts with a gain share most of their noise; split electrons instead
    s, truth = eels_map((40, 50), 162, 10.0, energy_range=(400.0, 1696.0), drift=0.3,
                        random_state=7, return_truth=True)
    clean = np.asarray(truth.clean, dtype=np.float64).reshape(-1, 162)
    X = s.data.reshape(-1, 162).astype(np.float32)

    def error(est, data, scale):
        return float(np.mean((est.transform(data) / scale - clean) ** 2 / clean))

    plain = DenoisingAutoencoder(random_state=0).fit(X)
    gained = DenoisingAutoencoder(random_state=0).fit(3 * X)
    assert plain.count_gain_ == 1.0 and abs(gained.count_gain_ - 3.0) < 0.3
    assert error(gained, 3 * X, 3.0) < 1.25 * error(plain, X, 1.0)
    gained.save(tmp_path / "gained.mlspec")  # the gain is part of the saved model
    loaded = load_model(tmp_path / "gained.mlspec")
    assert loaded.count_gain_ == gained.count_gain_
    np.testing.assert_allclose(loaded.transform(3 * X[:64]), gained.transform(3 * X[:64]),
                               rtol=1e-5, atol=1e-5)


def test_poisson_split_under_channel_correlated_noise(tmp_path):
    # a detector PSF correlates neighbouring channels: no split of the counts gives
    # independent halves (the network would learn the shared noise); recorrupted pairs do
    from scipy.ndimage import convolve1d

    s, truth = eels_map((40, 50), 162, 10.0, energy_range=(400.0, 1696.0), drift=0.3,
                        random_state=7, return_truth=True)
    mu = np.asarray(truth.clean, dtype=np.float64).reshape(-1, 162)
    rng = np.random.default_rng(0)
    counts = rng.poisson(mu).astype(np.float64)
    psf = [0.2, 0.6, 0.2]
    white = np.rint(4.0 * counts).astype(np.float32)
    X = np.rint(4.0 * convolve1d(counts, psf, axis=-1, mode="nearest")).astype(np.float32)
    clean = 4.0 * convolve1d(mu, psf, axis=-1, mode="nearest")

    def error(est, data, target):
        return float(np.mean((est.transform(data) - target) ** 2 / target))

    plain = DenoisingAutoencoder(random_state=0).fit(white)
    est = DenoisingAutoencoder(random_state=0).fit(X)
    assert not np.any(plain.noise_correlation_)
    assert abs(est.noise_correlation_[0] - 0.545) < 0.05, est.noise_correlation_
    assert error(est, X, clean) < 1.3 * error(plain, white, 4.0 * mu)  # 2.5x before
    est.save(tmp_path / "psf.mlspec")
    loaded = load_model(tmp_path / "psf.mlspec")
    np.testing.assert_allclose(loaded.noise_correlation_, est.noise_correlation_)
