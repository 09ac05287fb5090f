"""Real-time monitoring: StreamingMonitor and data.simulate_acquisition (issue 6, part 3)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

import hyperspy_mlspec
from hyperspy_mlspec import StreamingMonitor
from hyperspy_mlspec.data import simulate_acquisition
from tests.conftest import FAST, mixture_map


@pytest.fixture(scope="module")
def mix():
    s, _ = mixture_map(shape=(12, 10), n_channels=96)
    return s


@pytest.fixture(scope="module")
def model(mix):
    return hyperspy_mlspec.AutoencoderDecomposition(n_components=3, **FAST).fit(
        mix.data.reshape(-1, 96))


def _feed(monitor, signal, **kw):
    for positions, spectra in simulate_acquisition(signal, **kw):
        monitor.update(spectra, positions)


def _match_up_to_sign(a, b, atol):
    for u, v in zip(a, b, strict=True):
        sign = np.sign(u @ v)
        np.testing.assert_allclose(u, sign * v, atol=atol)


# -- streaming PCA vs batch PCA --------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_streaming_pca_matches_batch_pca(mix, dtype):
    X = mix.data.reshape(-1, 96).astype(np.float64)
    # float64 chunks: exact PCA to rounding; float32 chunks (the default, twice as fast):
    # the sums are merged in float64, the components agree to ~1e-5
    atol, rtol = (1e-6, 1e-6) if dtype == "float64" else (2e-5, 2e-5)
    with StreamingMonitor(mix, n_components=3, pca_weighting="none", refresh_every=40,
                          pca_chunk=16, pca_dtype=dtype) as mon:
        _feed(mon, mix, rows_per_step=1)
        mon.refresh()
        assert mon.n_refreshes_ >= 2  # periodic refreshes happened along the stream
        ref = PCA(3).fit(X)
        _match_up_to_sign(mon.pca_components_, ref.components_, atol=atol)
        np.testing.assert_allclose(mon.pca_explained_variance_, ref.explained_variance_,
                                   rtol=rtol)
        np.testing.assert_allclose(mon.pca_mean_, ref.mean_, rtol=1e-5)
        # a row fed again now is scored with the final basis: its loadings are PCA scores
        mon.push_row(11, mix.data[11])
        t = ref.transform(X)[-10:]
        signs = np.sign(np.sum(mon.pca_components_ * ref.components_, axis=1))
        np.testing.assert_allclose(mon.pca_loadings.data[11], t * signs, rtol=1e-4,
                                   atol=1e-3)


def test_lanczos_refresh_matches_eigh():
    from hyperspy_mlspec.streaming.pca import _LANCZOS_MIN_CHANNELS
    from hyperspy_mlspec.streaming.pca import top_eigenpairs as _top_eigenpairs

    rng = np.random.default_rng(0)
    n = _LANCZOS_MIN_CHANNELS + 16
    X = rng.poisson(rng.random((1500, 4)) @ (3 * rng.random((4, n)))).astype(float)
    cov = np.cov(X.T)
    vals, vecs = np.linalg.eigh(cov)
    ref_vals, ref = vals[::-1][:6], vecs[:, ::-1][:, :6].T
    _, start = _top_eigenpairs(np.cov(X[:1000].T), 6)  # basis of the first spectra
    for v, c in (_top_eigenpairs(cov, 6), _top_eigenpairs(cov, 6, start)):
        np.testing.assert_allclose(v, ref_vals, rtol=1e-8)
        # signal and noise components alike (|cosine| 1)
        np.testing.assert_allclose(np.abs(np.sum(c * ref, axis=1)), 1.0, atol=1e-6)


def test_poisson_weighted_pca_is_keenan_kotula(mix):
    X = mix.data.reshape(-1, 96).astype(np.float64)
    with StreamingMonitor(mix, n_components=3, refresh_every=10_000) as mon:
        _feed(mon, mix, rows_per_step=4)
        assert mon.pca_components_ is None  # no refresh yet: no basis
        assert np.isnan(mon.pca_residual_map.data).all()
        mon.refresh()
        assert mon.pca_weighting_ == "poisson"  # counts: weighting chosen automatically
        # engine.normalization's "poisson": x / (sqrt(row mean) sqrt(channel mean))
        Xn = X / np.sqrt(X.mean(1, keepdims=True)) / np.sqrt(X.mean(0))
        ref = PCA(3).fit(Xn)
        _match_up_to_sign(mon.pca_components_, ref.components_, atol=1e-6)
        # pixels fed before the first basis were scored once it existed
        assert np.isfinite(mon.pca_residual_map.data).all()
        assert np.isfinite(mon.pca_loadings.data).all()
        resid = ((Xn - ref.inverse_transform(ref.transform(Xn))) ** 2).mean(1)
        np.testing.assert_allclose(mon.pca_residual_map.data.ravel(), resid, rtol=1e-3,
                                   atol=1e-4)


# -- fitted model -----------------------------------------------------------------------------
def test_anomaly_map_equals_batch_anomaly_map(mix, model):
    batch = mix.mlspec.anomaly_map(model=model)
    with StreamingMonitor(mix, model=model, batch_size=7) as mon:
        _feed(mon, mix, rows_per_step=2, order="random", random_state=1)
        np.testing.assert_allclose(mon.anomaly_map.data, batch.data, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(mon.latent_map.data.reshape(-1, 3),
                                   model.transform(mix.data.reshape(-1, 96)), rtol=1e-5,
                                   atol=1e-6)
        assert mon.metric_ == "deviance"
        assert (mon.anomaly_map.metadata.Signal.quantity
                == batch.metadata.Signal.quantity)
        assert mon.pca_loadings is None and mon.model_ is model


def test_maps_update_in_place_and_notify(mix, model):
    with StreamingMonitor(mix, model=model, n_components=2, refresh_every=30,
                          background=False, redraw_interval=0.0) as mon:
        maps = [mon.anomaly_map, mon.latent_map, mon.pca_loadings, mon.pca_residual_map,
                mon.coverage]
        datas = [m.data for m in maps]
        events = []
        for m in maps:
            m.events.data_changed.connect(lambda obj: events.append(obj))
        mon.push_row(0, mix.data[0])
        assert len(events) == len(maps) and {id(e) for e in events} == {id(m) for m in maps}
        _feed(mon, mix)
        for m, d, name in zip(maps, datas, ["anomaly_map", "latent_map", "pca_loadings",
                                            "pca_residual_map", "coverage"], strict=True):
            assert getattr(mon, name) is m and m.data is d  # same objects, same arrays
        assert np.isfinite(mon.anomaly_map.data).all()
        # navigation calibration of the template is kept
        for ax, ref in zip(mon.anomaly_map.axes_manager.signal_axes,
                           mix.axes_manager.navigation_axes, strict=True):
            assert (ax.name, ax.units, ax.scale) == (ref.name, ref.units, ref.scale)
        assert mon.latent_map.axes_manager.navigation_axes[0].units == "nm"
        assert mon.coverage.data[0].tolist() == [2] * 10  # row 0 was fed twice
        assert mon.n_seen_ == 130


def test_partial_out_of_order_acquisition_leaves_nan(mix, model):
    with StreamingMonitor(mix, model=model, n_components=2, refresh_every=4,
                          background=False) as mon:
        mon.push_row(5, mix.data[5, 3:7], start=3)                    # part of a row
        mon.push_pixel((9, 1), mix.data[9, 1])                       # one pixel
        mon.update(mix.data[2, [0, 9]], np.array([2 * 10 + 0, 2 * 10 + 9]))  # flat indices
        acquired = np.zeros((12, 10), bool)
        acquired[5, 3:7] = acquired[9, 1] = acquired[2, 0] = acquired[2, 9] = True
        assert mon.n_seen_ == 7
        assert np.array_equal(mon.coverage.data > 0, acquired)
        for m in (mon.anomaly_map, mon.pca_residual_map):
            assert np.array_equal(np.isfinite(m.data), acquired)
        assert np.array_equal(np.isfinite(mon.latent_map.data).all(-1), acquired)
        batch = mix.mlspec.anomaly_map(model=model)
        np.testing.assert_allclose(mon.anomaly_map.data[acquired], batch.data[acquired],
                                   rtol=1e-5)


# -- bad input: clear errors, state intact ------------------------------------------------------
def _snapshot(mon):
    return (mon.n_seen_, mon._pca.pending, mon._since_refresh, mon.pca_basis_version_,
            [m.data.copy() for m in mon._maps()])


def _same(a, b):
    assert a[:4] == b[:4]
    for x, y in zip(a[4], b[4], strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("spectra, positions, match", [
    (np.ones((2, 95)), [(0, 0), (0, 1)], "wrong spectrum length"),
    (np.full((2, 96), np.nan), [(0, 0), (0, 1)], "NaN or infinity"),
    (-np.ones((2, 96)), [(0, 0), (0, 1)], "negative values"),
    (np.ones((2, 96)), [(0, 0), (12, 1)], "out of range"),
    (np.ones((2, 96)), [(0, 0), (0, -1)], "out of range"),
    (np.ones((2, 96)), [0, 120], "out of range"),
    (np.ones((2, 96)), [(0, 0)], "positions for 2 spectra"),
    (np.ones((2, 96)), [0.5, 1], "integer navigation indices"),
])
def test_bad_input_raises_and_leaves_state_intact(mix, model, spectra, positions, match):
    with StreamingMonitor(mix, model=model, n_components=2, refresh_every=16,
                          background=False) as mon:
        _feed(mon, mix, rows_per_step=3)  # 120 spectra: a basis exists, maps are filled
        mon.update(mix.data[0, :3], [(0, 0), (0, 1), (0, 2)])  # leaves a partial chunk
        before = _snapshot(mon)
        with pytest.raises(ValueError, match=match):
            mon.update(spectra, positions)
        _same(_snapshot(mon), before)
        mon.update(mix.data[1, :2], [(1, 0), (1, 1)])  # and the stream goes on
        assert mon.n_seen_ == before[0] + 2


def test_bad_construction(mix, model):
    with pytest.raises(ValueError, match="nothing to monitor"):
        StreamingMonitor(mix)
    with pytest.raises(ValueError, match="navigation_shape and n_channels"):
        StreamingMonitor(n_components=2)
    with pytest.raises(ValueError, match="expects 96 channels"):
        StreamingMonitor(model=model, navigation_shape=(4, 4), n_channels=50)
    with pytest.raises(ValueError, match="partial_fit"):
        StreamingMonitor(mix, n_components=2, fine_tune=True)


# -- background refresh -----------------------------------------------------------------------
def test_background_refresh_does_not_block_update(mix):
    with StreamingMonitor(mix, n_components=2, refresh_every=20, pca_chunk=10,
                          refresh_pause=0) as mon:
        started, release = threading.Event(), threading.Event()
        job = mon._refresh_job

        def slow_job(delta):  # a refresh that takes until the test releases it
            started.set()
            assert release.wait(10)
            job(delta)

        mon._refresh_job = slow_job
        _feed(mon, mix, rows_per_step=2)  # triggers a refresh after 20 spectra
        assert started.wait(5) and mon.refreshing
        # every update() returned while the refresh was still running
        assert mon.n_seen_ == 120 and mon.pca_basis_version_ == 0
        release.set()
        mon.wait()
        assert mon.pca_basis_version_ == 1 and not mon.refreshing
        first = mon.pca_components_
        # the spectra buffered meanwhile are scored with the new basis, and a further
        # (real) background refresh swaps in an updated basis
        assert np.isfinite(mon.pca_residual_map.data).all()
        mon._refresh_job = job
        _feed(mon, mix, rows_per_step=6)
        mon.wait()
        assert mon.pca_basis_version_ >= 2 and mon.n_refreshes_ >= 2
        assert not np.allclose(mon.pca_components_, first)


def test_background_refreshes_are_paced_by_their_cost(mix):
    # a refresh waits `refresh_pause` times the previous one's duration: with a huge
    # pause only the first periodic refresh runs, the sums keep every spectrum
    with StreamingMonitor(mix, n_components=2, refresh_every=20, pca_chunk=10,
                          refresh_pause=1e6) as mon:
        _feed(mon, mix, rows_per_step=2)
        mon.wait()
        assert mon.n_refreshes_ == 1
        mon.refresh()  # an explicit refresh is never held back
        assert mon.n_refreshes_ == 2 and mon._basis.n_samples == 120
    with pytest.raises(ValueError, match="refresh_pause"):
        StreamingMonitor(mix, n_components=2, refresh_pause=-1)


def test_fine_tune_trains_a_copy(mix, model):
    before = {k: v.clone() for k, v in model.module_.state_dict().items()}
    with StreamingMonitor(mix, model=model, fine_tune=True, fine_tune_every=60,
                          fine_tune_buffer=60, background=False) as mon:
        _feed(mon, mix, rows_per_step=3)
        assert mon.n_fine_tunes_ == 2 and mon.model_ is not model
        assert mon.model_.n_epochs_ > model.n_epochs_
    for k, v in model.module_.state_dict().items():  # the model given is not modified
        assert torch.equal(v, before[k])


def test_background_fine_tune(mix, model):
    with StreamingMonitor(mix, model=model, fine_tune=True, fine_tune_every=40,
                          fine_tune_buffer=40) as mon:
        _feed(mon, mix, rows_per_step=2)
        mon.wait()
        _feed(mon, mix, rows_per_step=12)  # the next batch adopts the tuned model
        assert mon.n_fine_tunes_ >= 1 and mon.model_ is not model


# -- without template, line scans, the simulated acquisition -----------------------------------
def test_line_scan_without_template():
    rng = np.random.default_rng(0)
    X = rng.poisson(20 * (rng.random((30, 2)) @ rng.random((2, 40)) + 0.1)).astype(float)
    with StreamingMonitor(navigation_shape=(30,), n_channels=40, n_components=2,
                          refresh_every=10, background=False) as mon:
        for i in range(0, 30, 4):
            mon.update(X[i:i + 4], np.arange(i, min(i + 4, 30)))
        mon.push_pixel(3, X[3])
        mon.refresh()
        assert mon.anomaly_map is mon.pca_residual_map
        assert mon.anomaly_map.data.shape == (30,) and np.isfinite(mon.anomaly_map.data).all()
        assert mon.coverage.data[3] == 2
        with pytest.raises(ValueError, match="push_row is for maps"):
            mon.push_row(0, X[:2])


def test_simulate_acquisition_covers_every_pixel_once(mix):
    seen = np.zeros((12, 10), int)
    for positions, spectra in simulate_acquisition(mix, rows_per_step=5, order="random"):
        assert spectra.shape == (len(positions), 96)
        seen[positions[:, 0], positions[:, 1]] += 1
        np.testing.assert_array_equal(spectra, mix.data[positions[:, 0], positions[:, 1]])
    assert (seen == 1).all()
    lazy = mix.as_lazy()
    steps = list(simulate_acquisition(lazy, rows_per_step=12))
    assert len(steps) == 1 and np.array_equal(steps[0][1], mix.data.reshape(-1, 96))
    with pytest.raises(ValueError, match="rows_per_step"):
        next(simulate_acquisition(mix, rows_per_step=0))
