"""Spatial-context anomaly maps (issue 11, item 3): dual window, footprints, bad input."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import hyperspy_mlspec
from hyperspy_mlspec.scoring.context import (
    ContextSettings,
    DualWindowModel,
    context_residuals,
    context_scores,
)
from hyperspy_mlspec.workflows._common import anomaly_record

SHAPE = (32, 32)
N_CH = 128
SITES = [(5, 6), (20, 9), (12, 25), (26, 24)]


def _digest(s) -> str:
    return hashlib.sha256(np.ascontiguousarray(s.data).tobytes()).hexdigest()


def _plant(amplitude: float):
    """EELS map (thickness, drift) with four 2x2 inclusions of an extra edge: a step of
    ``amplitude`` times the mean counts at channel 80."""
    s, truth = hyperspy_mlspec.data.eels_map(SHAPE, n_channels=N_CH, dose=20, drift=0.5,
                                             random_state=0, return_truth=True)
    rng = np.random.default_rng(0)
    y = np.zeros(SHAPE, dtype=bool)
    for i, j in SITES:
        y[i:i + 2, j:j + 2] = True
    edge = 1.0 / (1.0 + np.exp(-(np.arange(N_CH) - 80) / 1.5))
    lam = truth.clean + y[..., None] * amplitude * truth.clean.mean(-1, keepdims=True) * edge
    return s._deepcopy_with_new_data(rng.poisson(lam).astype(np.float32)), y


@pytest.fixture(scope="module")
def planted():
    """A weak edge: 7 %, about one noise standard deviation per pixel over the channels."""
    return _plant(0.07)


@pytest.fixture(scope="module")
def scored(planted):
    s, _ = planted
    before = _digest(s)
    result = s.mlspec.anomaly_map(return_scales=True, return_model=True,
                                  show_progressbar=False)
    assert _digest(s) == before  # the input is never modified
    return result


def _pca_residual(s, k: int = 4) -> np.ndarray:
    sp = s.deepcopy()
    sp.decomposition(normalize_poissonian_noise=True, output_dimension=k, print_info=False)
    x = s.data.reshape(-1, N_CH).astype(np.float64)
    model = sp.get_decomposition_model(k).data.reshape(-1, N_CH)
    w = np.sqrt(x.sum(1, keepdims=True) * x.sum(0, keepdims=True) / x.sum())
    return (((x - model) / w) ** 2).mean(1)


def test_spatial_score_beats_per_pixel_scores(planted, scored):
    s, y = planted
    score, scales, _ = scored
    auc = roc_auc_score(y.ravel(), score.data.ravel())
    unpooled = s.mlspec.anomaly_map(footprints=(0,), show_progressbar=False)
    auc_pixel = roc_auc_score(y.ravel(), unpooled.data.ravel())
    auc_pca = roc_auc_score(y.ravel(), _pca_residual(s))
    assert auc >= 0.88
    assert auc > auc_pixel + 0.05  # the 3x3 footprint adds the inclusion's pixels
    assert auc > auc_pca + 0.05
    # ordinary pixels: a robust z-score
    normal = score.data[~y]
    assert abs(np.median(normal)) < 0.1
    assert 0.8 < np.subtract(*np.percentile(normal, [75, 25])) / 1.349 < 1.2


def test_output_signals_and_metadata(planted, scored):
    s, _ = planted
    score, scales, model = scored
    assert score.data.shape == SHAPE
    for out_ax, nav_ax in zip(score.axes_manager.signal_axes,
                              s.axes_manager.navigation_axes, strict=True):
        assert (out_ax.name, out_ax.units, out_ax.scale) == (nav_ax.name, nav_ax.units,
                                                             nav_ax.scale)
    assert score.metadata.Signal.quantity == "Anomaly z-score (spatial context)"
    record = anomaly_record(score)
    assert (record["method"], record["metric"], record["guard"], record["outer"]) == (
        "context", "zscore", 1, 3)
    assert scales.data.shape == (2,) + SHAPE
    fp = scales.axes_manager.navigation_axes[0]
    assert fp.name == "footprint" and list(fp.axis) == [1.0, 3.0]
    assert [a.name for a in scales.axes_manager.signal_axes] == ["x", "y"]
    assert isinstance(model, DualWindowModel)
    assert model.noise_scale.shape == (N_CH,)
    # the returned model scores the same map identically
    again = s.mlspec.anomaly_map(model)
    np.testing.assert_allclose(again.data, score.data, rtol=1e-6, atol=1e-9)


def test_strong_single_pixel_is_never_pooled_away():
    """A strong feature on one pixel tops the map: the unpooled footprint keeps it."""
    s, truth = hyperspy_mlspec.data.eels_map((24, 24), n_channels=N_CH, dose=20,
                                             random_state=2, return_truth=True)
    rng = np.random.default_rng(2)
    lam = truth.clean.copy()
    lam[7, 9, 40:44] *= 2.5  # a narrow peak in one pixel
    sig = s._deepcopy_with_new_data(rng.poisson(lam).astype(np.float32))
    score, scales = sig.mlspec.anomaly_map(return_scales=True)
    assert np.nanargmax(score.data) == 7 * 24 + 9
    assert scales.data[0, 7, 9] > scales.data[1, 7, 9]  # 1x1 sees it better than 3x3


def test_inclusion_is_left_out_of_its_own_prediction():
    """The dual window never uses a pixel (or its 3x3 guard) to predict itself: the
    expected spectrum of an inclusion has the shape of its surroundings (only the overall
    intensity is fitted on the pixel), so the inclusion's feature stays in the residual."""
    rng = np.random.default_rng(3)
    lam = np.full((12, 12, 64), 30.0)
    lam[5:7, 5:7, 20:30] += 30.0
    cube = rng.poisson(lam).astype(float)
    residual, expected = context_residuals(cube, np.ones((12, 12), bool), ContextSettings())
    inside = expected[5:7, 5:7, 20:30].mean()
    outside = np.r_[expected[5:7, 5:7, :20].ravel(), expected[5:7, 5:7, 30:].ravel()].mean()
    assert inside / outside < 1.1  # the data there are 2x
    assert residual[5:7, 5:7, 20:30].mean() > 3
    assert abs(residual[0:3, 0:3].mean()) < 0.3


def test_lazy_equals_eager_with_holes_and_nan(planted, scored):
    s, _ = planted
    bad = s.deepcopy()
    bad.data[3, 4, 10] = np.nan
    mask = np.zeros(SHAPE, dtype=bool)
    mask[10:13, 10:13] = True  # a hole in the navigation mask
    with pytest.warns(UserWarning, match="NaN or infinity"):
        eager = bad.mlspec.anomaly_map(navigation_mask=mask)
    assert np.isnan(eager.data[3, 4]) and np.isnan(eager.data[mask]).all()
    assert np.isfinite(eager.data).sum() == eager.data.size - 10
    lazy = bad.as_lazy()
    lazy.data = lazy.data.rechunk((5, 7, -1))
    with pytest.warns(UserWarning, match="NaN or infinity"):
        out = lazy.mlspec.anomaly_map(navigation_mask=mask)
    assert not out._lazy
    np.testing.assert_allclose(out.data, eager.data, rtol=1e-5, atol=1e-6)
    assert anomaly_record(eager)["n_masked_pixels"] == 9


def test_line_scan_and_other_layouts(planted):
    s, y = planted
    line = s.inav[:, 6]
    out = line.mlspec.anomaly_map()
    assert out.axes_manager.signal_dimension == 1 and out.data.shape == (SHAPE[1],)
    assert np.isfinite(out.data).all()
    # integer counts: same scores
    counts = s.deepcopy()
    counts.change_dtype("int32")
    np.testing.assert_allclose(counts.mlspec.anomaly_map().data,
                               s.mlspec.anomaly_map().data, rtol=1e-5, atol=1e-6)
    import hyperspy.api as hs

    s3 = hs.signals.Signal1D(np.ones((3, 4, 5, 32), dtype=np.float32))
    with pytest.raises(ValueError, match="navigation dimensions 0, 1 and 2"):
        s3.mlspec.anomaly_map()
    with pytest.raises(ValueError, match="single spectrum"):
        s.inav[0, 0].mlspec.anomaly_map()


def test_non_uniform_navigation_axis(planted):
    s, _ = planted
    import hyperspy.api as hs

    axes = [a.get_axis_dictionary() for a in s.axes_manager._axes]
    axes[0] = {"name": "y", "axis": np.cumsum(np.linspace(1, 2, SHAPE[0])), "units": "nm",
               "navigate": True}
    for a in axes:
        a.pop("_type", None)
    t = hs.signals.Signal1D(s.data, axes=axes)
    out = t.mlspec.anomaly_map()
    np.testing.assert_allclose(out.data, s.mlspec.anomaly_map().data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.axes_manager.signal_axes[1].axis, axes[0]["axis"])


def test_anomalies_on_context_map():
    s, y = _plant(0.2)
    score, model = s.mlspec.anomaly_map(return_model=True)
    found = s.mlspec.anomalies(score, model=model, min_size=2)
    flagged = found.mask.data
    assert (flagged & y).sum() >= 12 and (flagged & ~y).sum() <= 4
    region = found.regions[0]
    assert region.size >= 3 and y[found.labels.data == 1].mean() >= 0.6  # footprints spread
    # the mean residual of a planted region shows the extra edge at channel 80 (part of
    # it goes into the fitted intensity, which lowers the residual below the edge)
    r = region.mean_residual.data
    assert r[85:].mean() - r[:70].mean() > 0.5 * 0.2 * float(s.data.mean())
    assert region.mean_residual.axes_manager.signal_axes[0].units == "eV"
    default = s.mlspec.anomalies(min_size=2)  # computes the same map itself
    np.testing.assert_array_equal(default.labels.data, found.labels.data)
    thr = s.mlspec.anomalies(score, threshold="pvalue", alpha=1e-3).threshold
    assert thr == pytest.approx(3.09, abs=0.01)
    lazy = s.as_lazy().mlspec.anomalies(min_size=2)
    np.testing.assert_array_equal(lazy.labels.data, found.labels.data)
    np.testing.assert_allclose(lazy.regions[0].mean_residual.data,
                               region.mean_residual.data, rtol=1e-4, atol=1e-3)


def test_clear_errors(planted):
    s, _ = planted
    with pytest.raises(TypeError, match="method='autoencoder'"):
        s.mlspec.anomaly_map(epochs=3)
    with pytest.raises(ValueError, match="smoothing applies to per-pixel"):
        s.mlspec.anomaly_map(smoothing=2)
    with pytest.raises(ValueError, match="window must be"):
        s.mlspec.anomaly_map(window=3)
    with pytest.raises(ValueError, match="outer must be"):
        s.mlspec.anomaly_map(window=(3, 2))
    with pytest.raises(ValueError, match="method must be"):
        s.mlspec.anomaly_map(method="rx")
    neg = s.deepcopy()
    neg.data[0, 0, 0] = -5
    with pytest.raises(ValueError, match="non-negative"):
        neg.mlspec.anomaly_map(metric="deviance")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isfinite(neg.mlspec.anomaly_map(metric="mse").data).all()


def test_context_scores_on_arrays():
    """The core works on plain arrays (no HyperSpy): a 2-D map and a line."""
    rng = np.random.default_rng(5)
    lam = np.full((20, 20, 48), 10.0)
    lam[8:10, 8:10, 20:30] += 6.0
    out = context_scores(rng.poisson(lam).astype(np.float32))
    top = np.argsort(out.score.ravel())[-4:]
    assert set(top) == {8 * 20 + 8, 8 * 20 + 9, 9 * 20 + 8, 9 * 20 + 9}
    assert out.scales.shape == (2, 2, 3, 20, 20)  # widths 1, 4, 12 channels
    line = context_scores(rng.poisson(lam[9]).astype(np.float32))
    assert line.score.shape == (20,) and set(np.argsort(line.score)[-2:]) == {8, 9}


def test_lazy_map_is_read_in_overlapping_blocks(planted):
    """A lazy map is scored block by block with halos: no task holds the whole map."""
    import dask.array as da
    from dask.callbacks import Callback

    class MaxTask(Callback):
        def __init__(self):
            super().__init__()
            self.max_nbytes = 0

        def _posttask(self, key, result, dsk, state, id):
            self.max_nbytes = max(self.max_nbytes, int(getattr(result, "nbytes", 0)))

    s, _ = planted
    lazy = s.as_lazy()
    lazy.data = da.from_array(s.data, chunks=(8, 8, -1))
    with MaxTask() as monitor:
        out = lazy.mlspec.anomaly_map()
    np.testing.assert_allclose(out.data, s.mlspec.anomaly_map().data, rtol=1e-5, atol=1e-6)
    # a block of 8x8 pixels with a halo of 4: (8 + 8)^2 spectra of float32, a quarter of
    # the map
    assert monitor.max_nbytes <= 16 * 16 * N_CH * 4
