"""dask.distributed: lazy inference and anomaly maps on worker processes, with faults.

One LocalCluster of two worker processes serves the whole module (starting one costs
seconds); every test compares with the local threaded scheduler.
"""

import logging
import os
from contextlib import contextmanager

import dask
import dask.array as da
import distributed
import numpy as np
import pytest

import hyperspy_mlspec
from hyperspy_mlspec import signals as sio


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                  dashboard_address=None, silence_logs=logging.CRITICAL,
                                  memory_limit="2GiB") as cluster, \
            distributed.Client(cluster, set_as_default=False, timeout="60s") as c:
        yield c


@contextmanager
def on(client):
    with dask.config.set(scheduler=client.get):
        yield


@pytest.fixture(scope="module")
def data():
    from conftest import mixture_map

    s, _ = mixture_map(shape=(8, 10), n_channels=64)
    rows = s.data.reshape(-1, 64)
    ae = hyperspy_mlspec.AutoencoderDecomposition(3, epochs=10, random_state=0,
                                                  show_progressbar=False).fit(rows)
    dae = hyperspy_mlspec.DenoisingAutoencoder(epochs=3, random_state=0,
                                               show_progressbar=False).fit(rows)
    lazy = s.as_lazy()
    lazy.data = lazy.data.rechunk((2, 10, 64))  # 4 navigation blocks
    return s, lazy, ae, dae


def test_inference_and_anomaly_map_on_cluster_equal_local(client, data):
    s, lazy, ae, dae = data
    with dask.config.set(scheduler="threads"):
        local = [lazy.mlspec.encode(ae).data.compute(),
                 lazy.mlspec.reconstruct(ae).data.compute(),
                 lazy.mlspec.denoise(dae).data.compute(),
                 lazy.mlspec.anomaly_map(ae).data]
    with on(client):
        remote = [lazy.mlspec.encode(ae).data.compute(),
                  lazy.mlspec.reconstruct(ae).data.compute(),
                  lazy.mlspec.denoise(dae).data.compute(),
                  lazy.mlspec.anomaly_map(ae).data]
    for got, want in zip(remote, local, strict=True):  # float32 rounding at most
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)
    # each worker process rebuilt each model from its weights at most once
    builds = client.run(lambda: __import__("hyperspy_mlspec.engine.remote").engine.remote
                        .n_builds)
    assert all(n <= 2 for n in builds.values()), builds


def test_mae_embedding_and_probe_on_cluster_equal_local(client, data):
    s, lazy, _, _ = data
    mae = hyperspy_mlspec.MaskedAutoencoder(64, 16, embed_dim=16, depth=1, heads=2,
                                            decoder_dim=8, decoder_depth=1, decoder_heads=2,
                                            epochs=2, random_state=0,
                                            show_progressbar=False).fit(s)
    labels = (np.arange(80) % 2).reshape(8, 10)
    mae.fit_probe(s, labels)
    with dask.config.set(scheduler="threads"):
        local = [lazy.mlspec.embed(mae).data.compute(), mae.predict(lazy).data.compute()]
    with on(client):
        remote = [lazy.mlspec.embed(mae).data.compute(), mae.predict(lazy).data.compute()]
    for got, want in zip(remote, local, strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-5)


def test_anomaly_map_with_fitting_runs_on_cluster(client, data):
    s, lazy, _, _ = data
    with on(client):
        score = lazy.mlspec.anomaly_map(method="autoencoder", epochs=3)
    assert not score._lazy and np.isfinite(score.data).all()
    assert score.data.shape == (8, 10)


def test_hspy_file_on_cluster(client, data, tmp_path):
    s, _, ae, _ = data
    path = tmp_path / "map.hspy"
    s.save(path, chunks=(2, 10, 64))
    lazy = sio.load(path, lazy=True)
    with on(client):
        out = lazy.mlspec.anomaly_map(ae)
    np.testing.assert_allclose(out.data, s.as_lazy().mlspec.anomaly_map(ae).data, rtol=2e-6)


def test_worker_dying_mid_inference_is_retried(client, data, tmp_path):
    s, lazy, ae, _ = data
    marker = str(tmp_path / "died")

    def die_once(block):  # the first block to arrive kills its worker process
        if block.size and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return block

    rows = sio.table(lazy).rows
    with dask.config.set(scheduler="threads"):
        want = ae.reconstruct(rows).compute()
    fragile = rows.map_blocks(die_once, dtype=rows.dtype, meta=np.empty((0, 0), rows.dtype))
    future = client.compute(ae.reconstruct(fragile))
    got = future.result(timeout=120)
    assert os.path.exists(marker)  # a worker did die
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)
    client.wait_for_workers(2, timeout=60)


def test_split_signal_chunks_on_cluster(client, data):
    s, _, ae, _ = data
    rows = da.from_array(s.data.reshape(-1, 64), chunks=(20, 16))
    with on(client):
        got = ae.transform(rows).compute()
    np.testing.assert_allclose(got, ae.transform(s.data.reshape(-1, 64)), rtol=1e-6,
                               atol=1e-6)
