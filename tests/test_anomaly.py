"""Anomaly maps, anomalous regions, latent clustering and embeddings (issue 4)."""

from __future__ import annotations

import json
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest
from scipy.stats import chi2
from sklearn.metrics import adjusted_rand_score, roc_auc_score

import hyperspy_mlspec
from hyperspy_mlspec import anomaly as A
from hyperspy_mlspec.scoring.scores import row_scores
from hyperspy_mlspec.workflows._common import anomaly_record

SHAPE = (24, 24)
N_CHANNELS = 128
FIT = dict(method="autoencoder", epochs=30, show_progressbar=False)


@pytest.fixture(scope="module")
def eds():
    """EDS map with a Cu-rich rare phase (6 pixels), thickness and drift."""
    return hyperspy_mlspec.data.eds_map(SHAPE, n_channels=N_CHANNELS, dose=20, drift=0.005,
                                        rare_phase=True, rare_fraction=0.01, random_state=3,
                                        return_truth=True)


@pytest.fixture(scope="module")
def fitted(eds):
    """Per-pixel anomaly map and autoencoder fitted once on the map itself (trimmed fit,
    short training)."""
    s, _ = eds
    before = s.data.copy()
    score, model = s.mlspec.anomaly_map(return_model=True, **FIT)
    assert np.array_equal(s.data, before)  # the input is never modified
    return score, model


# -- anomaly_map ----------------------------------------------------------------------------
def test_rare_phase_found(eds, fitted):
    _, truth = eds
    score, _ = fitted
    auc = roc_auc_score(truth.rare_mask.ravel(), score.data.ravel())
    assert auc >= 0.99
    rare = score.data[truth.rare_mask]
    assert np.median(rare) > 10 * np.median(score.data[~truth.rare_mask])
    # Poisson deviance per channel is about 1 where the model explains the data
    assert 0.8 < np.median(score.data) < 1.5


def test_map_axes_title_and_metadata(eds, fitted):
    s, _ = eds
    score, _ = fitted
    assert score.axes_manager.signal_dimension == 2
    assert score.axes_manager.navigation_dimension == 0
    assert score.data.shape == SHAPE
    for out_ax, nav_ax in zip(score.axes_manager.signal_axes,
                              s.axes_manager.navigation_axes, strict=True):
        assert (out_ax.name, out_ax.units, out_ax.scale, out_ax.offset) == (
            nav_ax.name, nav_ax.units, nav_ax.scale, nav_ax.offset)
    assert score.metadata.General.title == f"Anomaly score of {s.metadata.General.title}"
    assert score.metadata.Signal.quantity == "Poisson deviance per channel"
    record = anomaly_record(score)
    assert record["metric"] == "deviance"
    assert record["n_channels"] == N_CHANNELS
    assert record["n_nonfinite_pixels"] == 0
    assert record["fitted_on_signal"] is True


def test_plot_with_map_as_navigator(eds, fitted):
    s, _ = eds
    score, _ = fitted
    s.plot(navigator=score)
    plt.close("all")


def test_given_model_reproduces_map(eds, fitted):
    s, _ = eds
    score, model = fitted
    again = s.mlspec.anomaly_map(model)
    np.testing.assert_allclose(again.data, score.data, rtol=1e-5)
    assert anomaly_record(again)["fitted_on_signal"] is False
    with pytest.raises(TypeError, match="only used when no model"):
        s.mlspec.anomaly_map(model, epochs=3)


def test_single_spectrum_gives_float(eds, fitted):
    s, _ = eds
    score, model = fitted
    value = s.inav[3, 4].mlspec.anomaly_map(model)
    assert isinstance(value, float)
    assert value == pytest.approx(score.data[4, 3], rel=1e-5)
    for method in ("auto", "context", "autoencoder"):
        with pytest.raises(ValueError, match="single spectrum"):
            s.inav[3, 4].mlspec.anomaly_map(method=method)


def test_line_scan_gives_profile(eds, fitted):
    s, _ = eds
    score, model = fitted
    line = s.inav[:, 5].mlspec.anomaly_map(model)
    assert line.axes_manager.signal_dimension == 1
    ax = line.axes_manager.signal_axes[0]
    assert (ax.name, ax.units, ax.size) == ("x", "nm", SHAPE[1])
    np.testing.assert_allclose(line.data, score.data[5], rtol=1e-5)


def test_nan_pixel_scored_nan_and_flagged(eds, fitted):
    s, _ = eds
    score, model = fitted
    bad = s.deepcopy()
    bad.data[2, 3, 10] = np.nan
    with pytest.warns(UserWarning, match="NaN or infinity"):
        out = bad.mlspec.anomaly_map(model)
    assert np.isnan(out.data[2, 3])
    others = np.ones(SHAPE, dtype=bool)
    others[2, 3] = False
    np.testing.assert_allclose(out.data[others], score.data[others], rtol=1e-5)
    assert anomaly_record(out)["n_nonfinite_pixels"] == 1
    # lazy: NaN propagates through the model to the same map
    with pytest.warns(UserWarning, match="NaN or infinity"):
        lazy_out = bad.as_lazy().mlspec.anomaly_map(model)
    np.testing.assert_allclose(lazy_out.data, out.data, rtol=1e-5)


def test_nan_pixel_when_fitting(eds):
    s, _ = eds
    bad = s.deepcopy()
    bad.data[0, 0, :] = np.inf
    with pytest.warns(UserWarning, match="NaN or infinity"):
        out = bad.mlspec.anomaly_map(method="autoencoder", epochs=4, show_progressbar=False)
    assert np.isnan(out.data[0, 0])
    assert np.isfinite(out.data).sum() == out.data.size - 1


def test_masks_removing_everything(eds, fitted):
    s, _ = eds
    _, model = fitted
    with pytest.raises(ValueError, match="excludes every pixel"):
        s.mlspec.anomaly_map(model, navigation_mask=np.ones(SHAPE, dtype=bool))
    empty = s.deepcopy()
    empty.data[:] = np.nan
    with pytest.raises(ValueError, match="no spectrum is left"):
        empty.mlspec.anomaly_map(model)


def test_navigation_mask_gives_nan(eds, fitted):
    s, _ = eds
    score, model = fitted
    mask = np.zeros(SHAPE, dtype=bool)
    mask[:, :4] = True
    out = s.mlspec.anomaly_map(model, navigation_mask=mask)
    assert np.isnan(out.data[mask]).all()
    np.testing.assert_allclose(out.data[~mask], score.data[~mask], rtol=1e-5)


def test_model_on_other_energy_axis(eds, fitted):
    s, _ = eds
    score, model = fitted
    in_ev = s.deepcopy()
    ax = in_ev.axes_manager.signal_axes[0]
    ax.units, ax.offset, ax.scale = "eV", ax.offset * 1000, ax.scale * 1000
    np.testing.assert_allclose(in_ev.mlspec.anomaly_map(model).data, score.data, rtol=1e-4)
    elsewhere = s.deepcopy()
    elsewhere.axes_manager.signal_axes[0].offset = 50.0  # keV: nothing in common
    with pytest.raises(ValueError, match="overlap"):
        elsewhere.mlspec.anomaly_map(model)


def test_lazy_map_equals_eager(eds, fitted):
    s, _ = eds
    score, model = fitted
    lazy = s.as_lazy()
    lazy.data = lazy.data.rechunk((8, 8, -1))
    out = lazy.mlspec.anomaly_map(model)
    assert not out._lazy
    np.testing.assert_allclose(out.data, score.data, rtol=1e-5)


def test_mse_metric_and_negative_data(eds, fitted):
    s, _ = eds
    _, model = fitted
    out = s.mlspec.anomaly_map(model, metric="mse")
    assert out.metadata.Signal.quantity == "Mean squared error per channel"
    with pytest.raises(ValueError, match="metric must be"):
        s.mlspec.anomaly_map(model, metric="chi2")
    with pytest.raises(ValueError, match="non-negative"):
        row_scores(np.array([[-1.0, 2.0]]), np.ones((1, 2)), "deviance")


def test_score_statistics_are_calibrated():
    """Under the true rates, the score is ~1 per channel and the chi2 test holds its level
    (with and without smoothing)."""
    rng = np.random.default_rng(0)
    mu = np.full((4000, 128), 50.0)
    x = rng.poisson(mu).astype(float)
    for smoothing in (0.0, 2.0):
        score = row_scores(x, mu, "deviance", smoothing)
        assert score.mean() == pytest.approx(1.0, abs=0.03)
        thr, _ = A.threshold_value(score, "pvalue", alpha=0.05, n_channels=128,
                                   smoothing=smoothing)
        assert (score > thr).mean() == pytest.approx(0.05, abs=0.015)
    assert A.effective_dof(128) == (1.0, 128.0)
    c, nu = A.effective_dof(128, 2.0)
    assert c > 1 and nu == pytest.approx(128 / c)


# -- anomalies ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted(eds, fitted):
    """The map with a 3x3 blob of a foreign peak planted at rows 15-17, columns 5-7."""
    s, _ = eds
    _, model = fitted
    out = s.deepcopy()
    rng = np.random.default_rng(1)
    peak = 150.0 * np.exp(-0.5 * ((np.arange(N_CHANNELS) - 60) / 1.5) ** 2)
    out.data[15:18, 5:8] += rng.poisson(peak, size=(3, 3, N_CHANNELS)).astype(np.float32)
    return out, out.mlspec.anomaly_map(model)


def test_anomalies_on_planted_blob(eds, fitted, planted):
    _, truth = eds
    _, model = fitted
    s, score = planted
    found = s.mlspec.anomalies(score, k=8, model=model)
    blob = np.zeros(SHAPE, dtype=bool)
    blob[15:18, 5:8] = True
    assert found.mask.data[blob].all()
    assert found.mask.data[truth.rare_mask].all()
    false_alarms = found.mask.data & ~blob & ~truth.rare_mask
    assert false_alarms.sum() <= 3
    region = next(r for r in found.regions if found.labels.data[16, 6] == r.label)
    # most anomalous first: regions of false alarms come after the blob
    assert (found.labels.data[false_alarms] > region.label).all()
    assert region.mean_score > 1.5 * score.data[false_alarms].max(initial=0)
    assert region.size == 9
    assert region.index == pytest.approx((16.0, 6.0))
    assert region.centroid == pytest.approx((12.0, 32.0))  # x, y in nm (2 nm pixels)
    assert region.units == ("nm", "nm")
    np.testing.assert_allclose(region.mean_spectrum.data, s.data[blob].mean(axis=0),
                               rtol=1e-5)
    assert type(region.mean_spectrum) is type(s)
    assert region.mean_spectrum.axes_manager.signal_axes[0].units == "keV"
    recon = model.reconstruct(s.data[blob].reshape(-1, N_CHANNELS))
    np.testing.assert_allclose(region.mean_residual.data,
                               (s.data[blob] - recon).mean(axis=0), rtol=1e-4, atol=1e-3)
    assert region.mean_residual.data[58:63].mean() > 60  # the planted peak is what is left
    assert found.threshold == pytest.approx(A.threshold_value(score.data, k=8)[0])
    assert "region" in repr(found) and "median + 8 MAD" in repr(found)
    stack = found.region_spectra()
    assert stack.axes_manager.navigation_shape == (len(found.regions),)
    assert stack.axes_manager.navigation_axes[0].name == "region"
    labels = found.labels.data
    assert labels.dtype.kind == "i" and labels.max() == len(found.regions)
    assert found.labels.axes_manager.signal_axes[0].name == "x"


def test_anomaly_thresholds(fitted, planted):
    _, model = fitted
    s, score = planted
    n = score.data.size
    found = s.mlspec.anomalies(score, threshold="quantile", q=0.95, model=model)
    assert found.n_anomalous == pytest.approx(0.05 * n, abs=2)
    found = s.mlspec.anomalies(score, threshold="pvalue", alpha=1e-3)
    assert found.threshold == pytest.approx(chi2.isf(1e-3, N_CHANNELS) / N_CHANNELS)
    assert found.regions[0].mean_residual is None  # no model given
    big = s.mlspec.anomalies(score, min_size=5, model=model)
    assert all(r.size >= 5 for r in big.regions)
    with pytest.raises(ValueError, match="threshold must be"):
        s.mlspec.anomalies(score, threshold="otsu")
    with pytest.raises(TypeError, match="anomaly_map parameters"):
        s.mlspec.anomalies(score, epochs=3)
    mse = s.mlspec.anomaly_map(model, metric="mse")
    with pytest.raises(ValueError, match="deviance"):
        s.mlspec.anomalies(mse, threshold="pvalue")


def test_lazy_anomalies_equal_eager(fitted, planted):
    _, model = fitted
    s, score = planted
    eager = s.mlspec.anomalies(score, model=model)
    lazy = s.as_lazy().mlspec.anomalies(model=model)
    np.testing.assert_array_equal(lazy.labels.data, eager.labels.data)
    for a, b in zip(lazy.regions, eager.regions, strict=True):
        np.testing.assert_allclose(a.mean_spectrum.data, b.mean_spectrum.data, rtol=1e-5)
        np.testing.assert_allclose(a.mean_residual.data, b.mean_residual.data, rtol=1e-4,
                                   atol=1e-3)


def test_anomaly_files(tmp_path, fitted, planted):
    _, model = fitted
    s, score = planted
    path = tmp_path / "planted.hspy"
    s.save(path)
    summary = A.anomaly_files([path], tmp_path / "out", lazy=True, model=model)
    assert len(summary) == 1
    info = summary[0]
    for key in ("anomaly_map", "anomaly_png", "regions_file", "region_spectra", "region_png"):
        assert (tmp_path / "out" / info[key].split("/")[-1]).exists()
    import hyperspy.api as hs

    np.testing.assert_allclose(hs.load(info["anomaly_map"]).data, score.data, rtol=1e-5)
    spectra = hs.load(info["region_spectra"])
    assert spectra.axes_manager.navigation_shape == (info["n_regions"],)
    json.dumps(summary)  # plain data, ready for the command line to print


# -- clustering and embeddings ---------------------------------------------------------------
@pytest.fixture(scope="module")
def phases(eds, fitted):
    s, _ = eds
    _, model = fitted
    return s.mlspec.cluster(model, n_clusters=3)


def test_cluster_follows_phases(eds, phases):
    s, truth = eds
    assert adjusted_rand_score(truth.phase_map.ravel(), phases.labels.data.ravel()) > 0.8
    labels = phases.labels
    assert labels.data.shape == SHAPE and labels.data.dtype.kind == "i"
    assert [a.name for a in labels.axes_manager.signal_axes] == ["x", "y"]
    assert phases.sizes.sum() == labels.data.size
    assert list(phases.sizes) == sorted(phases.sizes, reverse=True)
    centers = phases.centers
    assert type(centers) is type(s)
    assert centers.axes_manager.navigation_axes[0].name == "cluster"
    assert centers.axes_manager.navigation_shape == (3,)
    assert centers.axes_manager.signal_axes[0].units == "keV"
    for k in range(3):
        np.testing.assert_allclose(centers.data[k], s.data[labels.data == k].mean(axis=0),
                                   rtol=1e-5)
    assert phases.codes.axes_manager.signal_axes[0].name == "latent"
    assert "3 clusters" in repr(phases)


def test_cluster_options(eds, fitted):
    s, _ = eds
    _, model = fitted
    mask = np.zeros(SHAPE, dtype=bool)
    mask[0, :] = True
    for method in ("gmm", "agglomerative"):
        out = s.mlspec.cluster(model, n_clusters=3, method=method, navigation_mask=mask)
        assert (out.labels.data[0] == -1).all()
        assert set(np.unique(out.labels.data[1:])) == {0, 1, 2}
    with pytest.raises(ValueError, match="method must be"):
        s.mlspec.cluster(model, method="dbscan")
    with pytest.raises(ValueError, match="normalize must be"):
        s.mlspec.cluster(model, normalize="l1")
    lazy = s.as_lazy().mlspec.cluster(model, n_clusters=3)
    eager = s.mlspec.cluster(model, n_clusters=3)
    np.testing.assert_array_equal(lazy.labels.data, eager.labels.data)
    np.testing.assert_allclose(lazy.centers.data, eager.centers.data, rtol=1e-5)


def test_hyperspy_cluster_analysis_with_codes(eds, fitted):
    s, truth = eds
    _, model = fitted
    t = s.deepcopy()
    t.cluster_analysis(cluster_source=t.mlspec.encode(model), source_for_centers=t,
                       preprocessing="norm", n_clusters=3, random_state=0, n_init=10)
    labels = np.argmax(t.learning_results.cluster_labels, axis=0)
    assert adjusted_rand_score(truth.phase_map.ravel(), labels) > 0.8


def test_embedding_2d(eds, fitted, phases):
    s, _ = eds
    _, model = fitted
    emb = s.mlspec.embedding_2d(model, color_by=phases)
    assert emb.data.shape == SHAPE + (2,)
    assert np.isfinite(emb.data).all()
    assert emb.axes_manager.signal_axes[0].name == "embedding"
    ax = A.plot_embedding(emb, phases)
    assert len(ax.collections) == 3
    plt.close("all")
    with pytest.raises(ValueError, match="'pca' or 'umap'"):
        s.mlspec.embedding_2d(model, method="tsne")


def test_umap_missing_is_explained(eds, fitted):
    pytest.importorskip("sklearn")
    try:
        import umap  # noqa: F401
    except ImportError:
        s, _ = eds
        with pytest.raises(ImportError, match="pip install umap-learn"):
            s.mlspec.embedding_2d(fitted[1], method="umap")
    else:  # pragma: no cover - only where umap-learn is installed
        pytest.skip("umap-learn is installed")


def test_cluster_fits_when_no_model(eds):
    s, truth = eds
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stray warnings from the default path
        out = s.mlspec.cluster(n_clusters=3, epochs=10, show_progressbar=False)
    assert out.model.n_components == 4
    assert adjusted_rand_score(truth.phase_map.ravel(), out.labels.data.ravel()) > 0.5
