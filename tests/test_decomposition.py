"""AutoencoderDecomposition as a scikit-learn estimator."""

import dask.array as da
import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.pipeline import make_pipeline

from hyperspy_mlspec import AutoencoderDecomposition
from tests.conftest import FAST, mixture_map


@pytest.fixture(scope="module")
def counts():
    s, clean = mixture_map((20, 20), n_channels=64, dose=30)
    return s.data.reshape(-1, 64), clean.reshape(-1, 64)


def test_no_mean_attribute_and_fitted_attributes(counts):
    X, _ = counts
    ae = AutoencoderDecomposition(3, **FAST).fit(X)
    assert not hasattr(ae, "mean_")
    assert ae.components_.shape == (3, 64)
    assert ae.explained_variance_.shape == (3,)
    assert np.all(np.diff(ae.explained_variance_) <= 1e-9)  # sorted, largest first
    assert ae.loss_ == "poisson" and ae.normalization_ == "poisson"
    assert len(ae.history_) == ae.n_epochs_ == 8
    assert {"train_loss", "val_loss", "learning_rate", "seconds"} <= set(ae.history_[0])


@pytest.mark.parametrize("decoder", ["linear", "nonlinear"])
@pytest.mark.parametrize("encoder", ["dense", "conv"])
def test_reconstruction_beats_noise_and_linear_decoder_is_exact(counts, encoder, decoder):
    X, clean = counts
    ae = AutoencoderDecomposition(3, encoder=encoder, decoder=decoder, epochs=60,
                                  random_state=0, show_progressbar=False).fit(X)
    L = ae.transform(X)
    rec = ae.inverse_transform(L)
    np.testing.assert_allclose(rec, ae.reconstruct(X), rtol=1e-4, atol=1e-4)
    noise_err = np.mean((X - clean) ** 2)
    assert np.mean((rec - clean) ** 2) < 0.2 * noise_err
    if decoder == "linear":
        # HyperSpy's model loadings @ factors.T is exact, and components are non-negative
        np.testing.assert_allclose(L @ ae.components_, rec, rtol=1e-4, atol=1e-3)
        assert ae.components_.min() >= 0 and L.min() >= 0


def test_competitive_with_pca_on_linear_data(counts):
    X, clean = counts
    pca = PCA(3).fit(X)
    pca_err = np.mean((pca.inverse_transform(pca.transform(X)) - clean) ** 2)
    ae = AutoencoderDecomposition(3, random_state=0, show_progressbar=False).fit(X)
    ae_err = np.mean((ae.reconstruct(X) - clean) ** 2)
    assert ae_err < 1.5 * pca_err  # PCA is near optimal here; the AE must stay close


def test_same_seed_same_result(counts):
    X, _ = counts
    a = AutoencoderDecomposition(2, **FAST).fit(X).transform(X)
    b = AutoencoderDecomposition(2, **FAST).fit(X).transform(X)
    np.testing.assert_array_equal(a, b)


def test_variational_samples_and_kl(counts):
    X, _ = counts
    vae = AutoencoderDecomposition(2, variational=True, **FAST).fit(X)
    draws = vae.sample(5, random_state=1)
    assert draws.shape == (5, 64) and np.all(draws >= 0)
    np.testing.assert_array_equal(draws, vae.sample(5, random_state=1))
    with pytest.raises(ValueError, match="variational"):
        AutoencoderDecomposition(2, **FAST).fit(X).sample(1)


def test_partial_fit_continues_training(counts):
    X, _ = counts
    ae = AutoencoderDecomposition(2, partial_fit_epochs=2, **FAST)
    for block in np.array_split(X, 4):
        ae.partial_fit(block)
    assert ae.n_epochs_ == 8 and ae.components_.shape == (2, 64)
    assert ae.history_[-1]["train_loss"] < ae.history_[0]["train_loss"]


def test_dask_in_dask_out_matches_numpy(counts):
    X, _ = counts
    ae = AutoencoderDecomposition(2, **FAST).fit(X)
    Xd = da.from_array(X, chunks=(50, 32))
    Ld = ae.transform(Xd)
    assert isinstance(Ld, da.Array)
    np.testing.assert_allclose(Ld.compute(), ae.transform(X), rtol=1e-5, atol=1e-5)
    ae_lazy = AutoencoderDecomposition(2, **FAST).fit(Xd)  # streamed fit works too
    assert ae_lazy.components_.shape == (2, 64)


def test_integer_dtypes_do_not_overflow(counts):
    X, _ = counts
    big = (X * 300).astype(np.uint16)  # sums overflow uint16
    ae = AutoencoderDecomposition(2, **FAST).fit(big)
    assert np.isfinite(ae.transform(big)).all()
    ref = AutoencoderDecomposition(2, **FAST).fit(big.astype(np.float64))
    np.testing.assert_allclose(ae.transform(big), ref.transform(big), rtol=1e-4)


def test_in_sklearn_pipeline(counts):
    from sklearn.preprocessing import FunctionTransformer

    X, _ = counts
    pipe = make_pipeline(FunctionTransformer(np.sqrt),
                         AutoencoderDecomposition(2, **FAST)).fit(X)
    assert pipe.transform(X).shape == (len(X), 2)


@pytest.mark.parametrize("params, data, match", [
    ({"n_components": 0}, None, "n_components"),
    ({"n_components": 65}, None, "n_components"),
    ({"loss": "poisson"}, "negative", "non-negative counts"),
    ({"batch_size": 1000}, None, "batch_size=1000 is larger"),
    ({"decoder": "quadratic"}, None, "decoder"),
    ({"loss": "l1"}, None, "loss"),
    ({"init": "random"}, None, "init must be"),
    ({}, "nan", "NaN"),
    ({"normalization": "sum"}, "negative", "non-negative"),
])
def test_bad_input_clear_errors_and_data_untouched(counts, params, data, match):
    X, _ = counts
    X = X.copy()
    if data == "negative":
        X[0, 0] = -5
    elif data == "nan":
        X[1, 3] = np.nan
    before = X.copy()
    with pytest.raises(ValueError, match=match):
        AutoencoderDecomposition(**{"n_components": 2, **FAST, **params}).fit(X)
    np.testing.assert_array_equal(X, before)


def test_wrong_feature_count_on_transform(counts):
    X, _ = counts
    ae = AutoencoderDecomposition(2, **FAST).fit(X)
    with pytest.raises(ValueError, match="expecting 64 features"):
        ae.transform(X[:, :10])



def test_beats_hyperspy_pca_at_equal_k_on_drifted_thick_map():
    """Issue 11 item 5: on an EELS map with a thickness gradient and a 1 eV drift the
    default nonlinear AE reconstructs the noise-free truth better than HyperSpy's Poisson
    PCA at the same K (measured margin at K=4 on this map: ~0.45-0.75x, see
    benchmarks/RESULTS.md; K=2 is not asserted, the AE is ~1.05x PCA there)."""
    import hyperspy_mlspec  # noqa: F401 - registers s.mlspec
    from hyperspy_mlspec.data import eels_map

    s, truth = eels_map((24, 24), 256, 10, thickness=True, drift=1.0, random_state=0,
                        return_truth=True)
    clean = truth.clean

    def err(rec):
        return np.mean((np.asarray(rec, float).reshape(clean.shape) - clean) ** 2
                       / np.maximum(clean, 1e-3))

    k = 4
    c = s.deepcopy()
    c.decomposition(normalize_poissonian_noise=True, output_dimension=k, print_info=False)
    pca_err = err(c.get_decomposition_model(k).data)
    ae = s.mlspec.decomposition(k, random_state=0, show_progressbar=False)
    ae_err = err(s.mlspec.reconstruct(ae).data)
    assert ae_err < 0.7 * pca_err  # 0.41-0.48x over map seeds 0-3 x AE seeds 0-1


def test_detector_gain_scales_the_noise_and_splits_electrons():
    # raw counts times a detector gain of 3: the shrinkage of the PCA start must use the
    # gain's noise level and the held-out halves must split electrons, so the model of the
    # gained counts is the gain-1 model times 3 (it was twice the error before)
    from hyperspy_mlspec.data import eels_map

    s, truth = eels_map((40, 50), 162, 10.0, energy_range=(400.0, 1696.0), drift=0.3,
                        random_state=7, return_truth=True)
    clean = np.asarray(truth.clean, dtype=np.float64).reshape(-1, 162)
    X = s.data.reshape(-1, 162).astype(np.float64)

    def error(est, data, scale):
        rec = est.inverse_transform(est.transform(data)) / scale
        return float(np.mean((rec - clean) ** 2 / clean))

    plain = AutoencoderDecomposition(n_components=4, random_state=0).fit(X)
    gained = AutoencoderDecomposition(n_components=4, random_state=0).fit(3 * X)
    assert plain._gain is None and abs(gained._gain - 3.0) < 0.3
    assert error(gained, 3 * X, 3.0) < 1.05 * error(plain, X, 1.0)


def test_noise_correlated_between_channels_sets_the_shrinkage():
    # a detector PSF correlates neighbouring channels: channel differences then misread
    # the gain and smooth noise directions carry more noise than a white model says; the
    # correlation is measured and each component's shrinkage uses the noise along it
    from scipy.ndimage import convolve1d

    from hyperspy_mlspec.data import eels_map

    s, truth = eels_map((40, 50), 162, 10.0, energy_range=(400.0, 1696.0), drift=0.3,
                        random_state=7, return_truth=True)
    mu = np.asarray(truth.clean, dtype=np.float64).reshape(-1, 162)
    rng = np.random.default_rng(0)
    psf = [0.2, 0.6, 0.2]  # lag-1 correlation 0.24 / 0.44 = 0.545
    X = np.rint(4.0 * convolve1d(rng.poisson(mu).astype(np.float64), psf, axis=-1,
                                 mode="nearest"))
    clean = 4.0 * convolve1d(mu, psf, axis=-1, mode="nearest")
    est = AutoencoderDecomposition(n_components=4, init="pca", random_state=0).fit(X)
    assert abs(est._noise_rho[0] - 0.545) < 0.05 and abs(est._gain - 4 * 0.44) < 0.2
    rec = est.inverse_transform(est.transform(X))
    err = float(np.mean((rec - clean) ** 2 / clean))
    import hyperspy.api as hs

    sig = hs.signals.Signal1D(X.astype(np.float32))
    sig.decomposition(normalize_poissonian_noise=True, print_info=False)
    pca = np.asarray(sig.get_decomposition_model(4).data, dtype=np.float64)
    err_pca = float(np.mean((pca - clean) ** 2 / clean))
    assert err < 0.75 * err_pca, (err, err_pca)  # white-noise shrinkage: 0.85x
