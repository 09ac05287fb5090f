"""Lazy signals: every s.mlspec method streams chunks (bounded memory) and equals eager."""

import functools
import pickle
import threading

import cloudpickle
import dask
import dask.array as da
import numpy as np
import pytest
import torch
from dask.callbacks import Callback

import hyperspy_mlspec
from hyperspy_mlspec import signals as sio
from hyperspy_mlspec.engine import remote
from hyperspy_mlspec.engine.sources import DaskSource

CHUNK = (3, 5, -1)  # navigation chunks of 15 spectra on a (12, 10) map


class RecordingArray:
    """Array-like backend of a dask array that records every read (rows and order)."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.reads: list[int] = []
        self.lock = threading.Lock()

    def __getitem__(self, index):
        out = self.data[index]
        with self.lock:
            self.reads.append(int(np.prod(out.shape[:-1])))
        return out


class MaxTask(Callback):
    """Largest array produced by any task (bytes) while computing, not counting the final
    results handed back to the caller (``finalize`` tasks)."""

    def __init__(self):
        super().__init__()
        self.max_nbytes = 0

    def _posttask(self, key, result, dsk, state, id):
        if str(key).startswith("finalize"):
            return
        self.max_nbytes = max(self.max_nbytes, int(getattr(result, "nbytes", 0)))


def recording_lazy(s, chunks=CHUNK):
    backend = RecordingArray(s.data)
    lazy = s.as_lazy()
    lazy.data = da.from_array(backend, chunks=chunks, asarray=True)
    return lazy, backend


@pytest.fixture(scope="module")
def data():
    from conftest import mixture_map

    s, clean = mixture_map()
    ae = hyperspy_mlspec.AutoencoderDecomposition(3, epochs=15, random_state=0,
                                                  show_progressbar=False)
    ae.fit(s.data.reshape(-1, s.data.shape[-1]))
    dae = hyperspy_mlspec.DenoisingAutoencoder(epochs=5, random_state=0,
                                               show_progressbar=False)
    dae.fit(s.data.reshape(-1, s.data.shape[-1]))
    return s, ae, dae


def bounded(backend, monitor, n_channels, rows_per_block=15):
    """Every read is at most one chunk; no task output is larger than a few blocks."""
    assert backend.reads and max(backend.reads) <= rows_per_block
    assert monitor.max_nbytes <= 2 * rows_per_block * n_channels * 8  # float64 block


def test_lazy_inference_is_bounded_and_equals_eager(data):
    s, ae, dae = data
    lazy, backend = recording_lazy(s)
    enc, rec, den = lazy.mlspec.encode(ae), lazy.mlspec.reconstruct(ae), lazy.mlspec.denoise(dae)
    assert enc._lazy and rec._lazy and den._lazy  # nothing computed yet
    assert not any(backend.reads)  # (dask reads 0 rows to learn the dtype)
    with MaxTask() as monitor, dask.config.set(scheduler="threads"):
        results = [x.data.compute() for x in (enc, rec, den)]
    bounded(backend, monitor, s.data.shape[-1])
    expected = [s.mlspec.encode(ae).data, s.mlspec.reconstruct(ae).data,
                s.mlspec.denoise(dae).data]
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_lazy_anomaly_cluster_embedding_are_bounded_and_equal_eager(data):
    s, ae, _ = data
    lazy, backend = recording_lazy(s)
    with MaxTask() as monitor:
        score = lazy.mlspec.anomaly_map(ae)
        found = lazy.mlspec.anomalies(model=ae, threshold="quantile", q=0.9)
        phases = lazy.mlspec.cluster(ae, n_clusters=3)
        emb = lazy.mlspec.embedding_2d(ae)
    bounded(backend, monitor, s.data.shape[-1])
    assert not score._lazy and not phases.labels._lazy and not emb._lazy  # small: computed
    np.testing.assert_allclose(score.data, s.mlspec.anomaly_map(ae).data, rtol=1e-5)
    eager = s.mlspec.anomalies(model=ae, threshold="quantile", q=0.9)
    np.testing.assert_array_equal(found.labels.data, eager.labels.data)
    for a, b in zip(found.regions, eager.regions, strict=True):
        np.testing.assert_allclose(a.mean_spectrum.data, b.mean_spectrum.data, rtol=1e-6)
        np.testing.assert_allclose(a.mean_residual.data, b.mean_residual.data, rtol=1e-4,
                                   atol=1e-4)
    np.testing.assert_array_equal(phases.labels.data, s.mlspec.cluster(ae, 3).labels.data)
    np.testing.assert_allclose(emb.data, s.mlspec.embedding_2d(ae).data, rtol=1e-4,
                               atol=1e-6)


def test_lazy_fits_stream_chunks_and_match_eager_quality(data):
    """decomposition, denoise and anomaly_map with fitting read one chunk at a time."""
    s, _, _ = data
    from conftest import mixture_map

    _, clean = mixture_map()
    lazy, backend = recording_lazy(s)
    with MaxTask() as monitor:
        ae = lazy.mlspec.decomposition(3, epochs=15, random_state=0)
        den = lazy.mlspec.denoise(epochs=10, random_state=0)
        den_data = den.data.compute()
        score = lazy.mlspec.anomaly_map(method="autoencoder", epochs=5)
    bounded(backend, monitor, s.data.shape[-1])
    assert den._lazy and not score._lazy
    assert lazy.learning_results.loadings.shape == (120, 3)
    eager = s.deepcopy()
    ae_eager = eager.mlspec.decomposition(3, epochs=15, random_state=0)
    errors = []
    for model in (ae, ae_eager):
        recon = model.reconstruct(s.data.reshape(-1, s.data.shape[-1]))
        errors.append(np.sqrt(np.mean((recon - clean.reshape(recon.shape)) ** 2)))
    assert errors[0] < 1.3 * errors[1]  # same quality, different minibatch order
    noisy_err = np.sqrt(np.mean((s.data - clean) ** 2))
    assert np.sqrt(np.mean((den_data - clean) ** 2)) < 0.8 * noisy_err
    assert np.isfinite(score.data).all()


def test_hyperspy_lazy_decomposition_with_partial_fit(data):
    s, _, _ = data
    lazy, backend = recording_lazy(s)
    est = hyperspy_mlspec.AutoencoderDecomposition(3, decoder="linear", partial_fit_epochs=2,
                                                   random_state=0, show_progressbar=False)
    lazy.decomposition(algorithm=est, print_info=False)
    assert max(backend.reads) <= 15
    assert est.n_epochs_ >= 2 * 8  # one partial_fit per navigation block
    assert lazy.learning_results.factors.shape == (s.data.shape[-1], 3)


def test_signal_axis_split_is_rechunked(data):
    s, ae, _ = data
    rows = s.data.reshape(-1, s.data.shape[-1])
    split = da.from_array(rows, chunks=(20, 16))  # the signal axis in 6 chunks
    out = ae.transform(split)
    assert out.chunks == (split.chunks[0], (3,))
    np.testing.assert_allclose(out.compute(), ae.transform(rows), rtol=1e-5, atol=1e-6)
    lazy = s.as_lazy()
    lazy.data = lazy.data.rechunk((4, 4, 32))
    t = sio.table(lazy)
    assert len(t.rows.chunks[1]) == 1 and max(t.rows.chunks[0]) <= 16
    np.testing.assert_array_equal(t.rows.compute(), rows)


def test_graph_holds_weights_not_models_or_signals(data, monkeypatch):
    s, ae, dae = data
    lazy = s.as_lazy()
    outputs = [lazy.mlspec.reconstruct(ae).data, lazy.mlspec.denoise(dae).data,
               ae.transform(da.from_array(s.data.reshape(-1, s.data.shape[-1]), chunks=40)),
               dae.uncertainty(da.from_array(s.data.reshape(-1, s.data.shape[-1]),
                                             chunks=40), n_resamples=3)]
    from hyperspy.signal import BaseSignal

    def refuse(self, protocol):
        raise AssertionError(f"{type(self).__name__} pickled into a dask graph")

    for cls in (torch.nn.Module, BaseSignal, hyperspy_mlspec.AutoencoderDecomposition,
                hyperspy_mlspec.DenoisingAutoencoder):
        monkeypatch.setattr(cls, "__reduce_ex__", refuse, raising=False)
    for out in outputs:
        blob = cloudpickle.dumps(dict(out.__dask_graph__()))
        assert len(blob) < 2_000_000
    monkeypatch.undo()
    # payload round trip: bytes only, rebuilt once per process
    payload = remote.ModelPayload.from_estimator(ae)
    clone = pickle.loads(pickle.dumps(payload))
    assert clone.key == payload.key and clone.estimator() is payload.estimator()
    fn = pickle.loads(pickle.dumps(remote.RowFunction(payload, "_reconstruct_tensor", 96)))
    rows = s.data.reshape(-1, 96)[:7]
    np.testing.assert_allclose(fn(rows), ae.reconstruct(rows), rtol=1e-6)


def test_lazy_result_is_a_snapshot_and_closures_are_refused(data):
    s, ae, _ = data
    rows = s.data.reshape(-1, s.data.shape[-1])
    model = hyperspy_mlspec.AutoencoderDecomposition(2, epochs=2, random_state=0,
                                                     show_progressbar=False).fit(rows)
    lazy_codes = model.transform(da.from_array(rows, chunks=30))
    before = model.transform(rows)
    model.partial_fit(rows)  # training on does not change the lazy result built before
    np.testing.assert_allclose(lazy_codes.compute(), before, rtol=1e-6)
    with pytest.raises(TypeError, match="method of the estimator"):
        model._map_rows(da.from_array(rows, chunks=30), lambda x: x, 96)
    np.testing.assert_allclose(
        model._map_rows(rows, functools.partial(model._encode_tensor), 2),
        model.transform(rows), rtol=1e-6)


def test_dask_source_random_chunk_order_shuffle_and_prefetch():
    X = np.repeat(np.arange(10, dtype=np.float32)[:, None], 8, axis=0) * np.ones((1, 3))
    computed: list[tuple[int, str]] = []
    src = DaskSource(da.from_array(X, chunks=(8, 3)))
    original = src._compute

    def spy(b):
        computed.append((b, threading.current_thread().name))
        return original(b)

    src._compute = spy
    rng = np.random.default_rng(0)
    epochs = []
    for _ in range(2):
        computed.clear()
        batches = list(src.batches(4, rng=rng, buffer_rows=24))
        epochs.append([b for b, _ in computed])
        assert sorted(epochs[-1]) == list(range(10))  # every chunk once per epoch
        # blocks are read by the prefetch thread while the previous one is in use
        assert all(name != threading.main_thread().name for _, name in computed)
        # rows of a batch come from several chunks (shuffle buffer of 3 chunks)
        assert max(len(np.unique(b[:, 0])) for b in batches) > 1
        assert sum(len(b) for b in batches) == 80
    assert epochs[0] != list(range(10)) and epochs[0] != epochs[1]


def test_unreadable_lazy_file_has_clear_error(tmp_path):
    import hyperspy.api as hs

    path = tmp_path / "one.msa"
    hs.signals.Signal1D(np.arange(64.0)).save(path)
    with pytest.raises(ValueError, match="cannot be read lazily.*without"):
        sio.load(path, lazy=True)


def test_hspy_lazy_file_is_portable(tmp_path, data):
    s, ae, _ = data
    path = tmp_path / "map.hspy"
    s.save(path, chunks=(3, 10, 96))
    lazy = sio.load(path, lazy=True)
    blob = pickle.dumps(lazy.data)  # the open h5py dataset would refuse this
    np.testing.assert_array_equal(pickle.loads(blob).compute(), s.data)
    np.testing.assert_allclose(lazy.mlspec.anomaly_map(ae).data, s.mlspec.anomaly_map(ae).data,
                               rtol=1e-5)


def test_lazy_decomposition_projects_each_spectrum_once(data, monkeypatch):
    """HyperSpy's lazy decomposition asks for the loadings twice: the second pass reuses."""
    s, _, _ = data
    lazy, _ = recording_lazy(s)
    cls = hyperspy_mlspec.AutoencoderDecomposition
    original, rows = cls.transform, []

    def counting(self, X):
        rows.append(len(X))
        return original(self, X)

    monkeypatch.setattr(cls, "transform", counting)
    lazy.mlspec.decomposition(3, epochs=2, random_state=0)
    assert sum(rows) == 120
    eager = s.deepcopy()
    eager.mlspec.decomposition(3, epochs=2, random_state=0)
    assert lazy.learning_results.loadings.shape == eager.learning_results.loadings.shape
