"""The fast paths of issue 14: the monitor's covariance worker (exactness kept), shared BLAS
limits, and inference on several threads (same numbers as one thread)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

import hyperspy_mlspec
from hyperspy_mlspec import StreamingMonitor
from hyperspy_mlspec.engine.parallel import inference_workers, map_batches
from hyperspy_mlspec.streaming.inference import blas_controller, threads
from hyperspy_mlspec.streaming.pca import _LANCZOS_MIN_CHANNELS, syrk_update
from tests.conftest import FAST


def _counts(n, c, seed=0):
    rng = np.random.default_rng(seed)
    abundance = rng.dirichlet(np.ones(4), size=n)
    spectra = 60 * rng.random((4, c)) + 2
    return rng.poisson(abundance @ spectra).astype(np.float32)


def _blas_threads():
    return [lib["num_threads"] for lib in blas_controller().info()
            if lib["user_api"] == "blas"]


def test_worker_sums_equal_batch_pca_with_a_reused_buffer():
    # the covariance updates run in the worker after update() returned; the caller reuses
    # (overwrites) its row buffer at once: the sums must hold the spectra as fed
    c, n_rows, row = _LANCZOS_MIN_CHANNELS + 16, 24, 25
    X = _counts(n_rows * row, c)
    buffer = np.empty((row, c), np.float32)
    with StreamingMonitor(navigation_shape=(n_rows, row), n_channels=c, n_components=3,
                          refresh_every=200, refresh_pause=0, pca_chunk=64) as mon:
        assert mon._add_executor is not None  # the background path is the one tested
        for r in range(n_rows):
            buffer[:] = X[r * row:(r + 1) * row]
            mon.push_row(r, buffer)
            buffer[:] = -1.0  # garbage after the call
        mon.refresh()
        assert mon.n_refreshes_ >= 2 and mon._basis.n_samples == len(X)
        X64 = X.astype(np.float64)
        Xn = X64 / np.sqrt(X64.mean(1, keepdims=True)) / np.sqrt(X64.mean(0))
        ref = PCA(3).fit(Xn)
        signs = np.sign(np.sum(mon.pca_components_ * ref.components_, axis=1))
        np.testing.assert_allclose(mon.pca_components_, ref.components_ * signs[:, None],
                                   atol=2e-5)
        np.testing.assert_allclose(mon.pca_explained_variance_, ref.explained_variance_,
                                   rtol=2e-5)
        np.testing.assert_allclose(mon.pca_mean_, ref.mean_, rtol=1e-5)
        # a row fed again is scored with the final basis: PCA scores and residuals
        mon.push_row(3, X[3 * row:4 * row])
        t = ref.transform(Xn[3 * row:4 * row]) * signs
        np.testing.assert_allclose(mon.pca_loadings.data[3], t, rtol=1e-4, atol=1e-3)
        rec = ref.inverse_transform(ref.transform(Xn[3 * row:4 * row]))
        resid = ((Xn[3 * row:4 * row] - rec) ** 2).mean(1)
        np.testing.assert_allclose(mon.pca_residual_map.data[3], resid, rtol=1e-3)
        assert np.isfinite(mon.pca_residual_map.data).all()


def test_worker_and_inline_paths_agree():
    X = _counts(300, 48, seed=1)
    out = []
    for background in (True, False):
        with StreamingMonitor(navigation_shape=(300,), n_channels=48, n_components=2,
                              refresh_every=100, background=background, pca_chunk=32,
                              pca_dtype="float64") as mon:
            for i in range(0, 300, 10):
                mon.update(X[i:i + 10], np.arange(i, i + 10))
            mon.refresh()
            out.append((mon.pca_components_, mon.pca_explained_variance_))
    np.testing.assert_allclose(out[0][0], out[1][0], atol=1e-10)
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-10)


def test_a_failing_covariance_update_is_raised_by_the_next_call():
    X = _counts(40, 32)
    mon = StreamingMonitor(navigation_shape=(40,), n_channels=32, n_components=2)
    try:
        def broken(x, copy=True):
            raise RuntimeError("worker failed")

        mon._pca.add = broken
        mon.update(X[:10], np.arange(10))
        with pytest.raises(RuntimeError, match="worker failed"):
            mon.wait()
    finally:
        mon._adds.clear()
        mon.close()


def test_thread_plan_beside_the_worker():
    mon = StreamingMonitor(navigation_shape=(4,), n_channels=32, n_components=2)
    try:
        torch_n, blas_n = mon._thread_plan(4)
        assert blas_n == 1 and torch_n == max(1, torch.get_num_threads() - 1)
    finally:
        mon.close()
    mon = StreamingMonitor(navigation_shape=(4,), n_channels=32, n_components=2,
                           num_threads=3)
    try:
        assert mon._thread_plan(4) == (3, 3)
    finally:
        mon.close()


def test_overlapping_blas_limits_restore_the_setting():
    before = _blas_threads()
    inner_ok = threading.Event()

    def other_thread():
        with threads(None, blas=1):
            inner_ok.set()

    with threads(None, blas=1):
        assert set(_blas_threads()) == {1}
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert inner_ok.is_set() and set(_blas_threads()) == {1}  # still limited
    assert _blas_threads() == before


@pytest.fixture(scope="module")
def ae():
    X = _counts(600, 64, seed=2)
    return hyperspy_mlspec.AutoencoderDecomposition(n_components=2, **FAST).fit(X), X


def test_inference_on_several_threads_equals_one_thread(ae):
    model, X = ae
    X = np.tile(X, (2, 1))
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ref = [model.transform(X), model.reconstruct(X),
               model.inverse_transform(model.transform(X)), *model._encode_decode(X)]
        torch.set_num_threads(2)
        assert inference_workers(len(X)) == 2
        got = [model.transform(X), model.reconstruct(X),
               model.inverse_transform(model.transform(X)), *model._encode_decode(X)]
    finally:
        torch.set_num_threads(old)
    for r, g in zip(ref, got, strict=True):
        assert g.dtype == np.float32 and g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-6)


def test_map_batches_errors_and_threads():
    X = np.arange(2000, dtype=np.float64).reshape(1000, 2)

    def fn(x):
        if float(x[0, 0]) >= 1000:
            raise ValueError("bad batch")
        return x * 2

    with pytest.raises(ValueError, match="bad batch"):
        map_batches(fn, X, batch=100, workers=2)
    np.testing.assert_array_equal(map_batches(lambda x: x * 2, X, 100, workers=2), 2 * X)
    assert map_batches(lambda x: x, X[:0], 100).shape == (0, 0)
    # never nested: a worker thread (e.g. dask's) runs its batches itself
    seen = []
    t = threading.Thread(target=lambda: seen.append(inference_workers(10_000)))
    t.start()
    t.join()
    assert seen == [1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_syrk_update_adds_the_upper_triangle_in_place(dtype):
    rng = np.random.default_rng(3)
    y = rng.random((70, 40)).astype(dtype)
    S0 = np.asfortranarray(rng.random((40, 40)).astype(dtype))
    expected = np.triu(S0.astype(np.float64) + y.T.astype(np.float64) @ y) + np.tril(S0, -1)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    S = S0.copy(order="F")
    assert syrk_update(S, y) is S  # the ctypes path writes into S
    np.testing.assert_allclose(S, expected, rtol=tol)
    # a layout BLAS cannot take as it is (strided rows) goes through scipy's wrapper
    S = S0.copy(order="F")
    np.testing.assert_allclose(syrk_update(S, np.repeat(y, 2, axis=1)[:, ::2]), expected,
                               rtol=tol)


def test_the_monitor_holds_the_blas_limit_until_close_and_restores_threads():
    before, torch_before = _blas_threads(), torch.get_num_threads()
    c = _LANCZOS_MIN_CHANNELS + 16
    X = _counts(200, c, seed=4)
    mon = StreamingMonitor(navigation_shape=(8, 25), n_channels=c, n_components=2,
                           pca_chunk=64)
    assert mon._add_executor is not None
    mon.push_row(0, X[:25])
    # between calls the limit stays: toggled at every call it woke OpenBLAS's idle threads
    assert set(_blas_threads()) == {1}
    for r in range(1, 8):
        mon.push_row(r, X[25 * r:25 * (r + 1)])
    mon.close()
    assert _blas_threads() == before
    # restoring the BLAS limit must not touch torch's (OpenMP) setting of this thread
    assert torch.get_num_threads() == torch_before
    mon.close()  # twice: nothing given back twice
    assert _blas_threads() == before
