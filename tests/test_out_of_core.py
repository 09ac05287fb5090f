"""Out of core (issue 14): lazy blocks sized from a memory budget, files re-read with the new
chunks, and a fitted model's lazy anomaly map / reconstruction equal to the eager ones."""

import pickle

import dask
import dask.array as da
import numpy as np
import pytest
from test_lazy import MaxTask, RecordingArray

import hyperspy_mlspec
from hyperspy_mlspec import signals as sio
from hyperspy_mlspec.arrays import chunks
from hyperspy_mlspec.engine import remote
from hyperspy_mlspec.signals.files import HDF5Slicer, reread
from hyperspy_mlspec.signals.table import lazy_row_chunks


# -- the budget -----------------------------------------------------------------------------
def test_block_rows_shrink_with_workers_channels_and_budget():
    budget = 1024 * 2 * chunks.BLOCK_COPIES * 2048 * 4  # 1024 rows of 2048 ch, 2 workers
    assert chunks.block_rows(2048, workers=2, budget=budget) == 1024
    assert chunks.block_rows(2048, workers=8, budget=budget) == 256
    assert chunks.block_rows(1024, workers=2, budget=budget) == 2048
    assert chunks.block_rows(2048, workers=2, budget=budget // 4) == 256
    # float64 data count 8 bytes a value, integers and float16 at least float32's 4
    assert chunks.block_rows(2048, workers=2, budget=budget, itemsize=8) == 512
    assert chunks.block_rows(2048, workers=2, budget=budget, itemsize=2) == 1024
    assert chunks.block_rows(10**9, workers=64, budget=1) == 1  # never zero


def test_budget_and_workers_follow_dask_config():
    with dask.config.set({"mlspec.memory-budget": "32MiB", "num_workers": 3}):
        assert chunks.memory_budget() == 32 * 2**20
        assert chunks.dask_workers() == 3
        assert chunks.block_rows(1024) == 32 * 2**20 // (3 * chunks.BLOCK_COPIES * 1024 * 4)
    with dask.config.set(scheduler="sync"):
        assert chunks.dask_workers() == 1
    assert chunks.memory_budget() == chunks.MEMORY_BUDGET
    with dask.config.set({"mlspec.memory-budget": "lots"}), pytest.raises(
            ValueError, match="positive number of bytes"):
        chunks.memory_budget()


# -- row blocks -------------------------------------------------------------------------------
def test_large_chunks_are_reread_in_budget_blocks_not_whole():
    """A file chunk of 16 lines holding more than the budget is read 2 lines at a time,
    each read covering only its own block (rechunk would read all 16 lines at once)."""
    x = np.random.default_rng(0).random((32, 8, 64), dtype=np.float32)
    backend = RecordingArray(x)
    lazy = da.from_array(backend, chunks=(16, 8, 64), asarray=True)
    rows = lazy_row_chunks(lazy, 2, max_rows=20)
    assert rows.chunks[0] == (2,) * 16 and rows.chunks[1:] == ((8,), (64,))
    backend.reads.clear()
    with dask.config.set(scheduler="threads", num_workers=2):
        got = rows.compute()
    assert max(backend.reads) == 16  # 2 lines of 8 spectra
    np.testing.assert_array_equal(got, x)
    # derived arrays (computed on) are rechunked by dask instead, with the same result
    derived = lazy_row_chunks(lazy * 2, 2, max_rows=20)
    assert derived.chunks[0] == (2,) * 16
    np.testing.assert_array_equal(derived.compute(), 2 * x)


def test_small_chunks_are_kept_and_tiles_grouped_in_whole_chunks():
    x = da.zeros((32, 8, 64), chunks=(4, 8, 64))
    assert lazy_row_chunks(x, 2, max_rows=64) is x  # 32 spectra a block: within budget
    tiles = da.from_array(np.zeros((32, 8, 64), np.float32), chunks=(4, 4, 64))
    # a tile holds 16 spectra: blocks of 2 lines (16 spectra), re-read from the source
    assert lazy_row_chunks(tiles, 2, max_rows=64).chunks[0] == (2,) * 16
    # a budget of 40 spectra: whole lines, a multiple of the 4-line chunks is not needed
    line = da.from_array(np.zeros((32, 4, 64), np.float32), chunks=(1, 4, 64))
    assert lazy_row_chunks(line.rechunk((2, 4, 64)), 2, max_rows=40).chunks[0] == (2,) * 16
    scan = da.zeros((100, 64), chunks=(50, 32))
    assert lazy_row_chunks(scan, 1, max_rows=1000).chunks == ((50, 50), (64,))
    assert lazy_row_chunks(scan, 1, max_rows=20).chunks[0] == (20,) * 5


def test_rows_of_uses_the_budget_from_dask_config(tmp_path):
    import hyperspy.api as hs

    s = hs.signals.Signal1D(np.random.default_rng(1).poisson(
        5.0, (24, 16, 256)).astype(np.float32))
    path = tmp_path / "big_chunks.hspy"
    s.save(path, chunks=(24, 16, 256))  # the whole map is one chunk
    lazy = sio.load(path, lazy=True)
    per_spectrum = 2 * chunks.BLOCK_COPIES * 256 * 4  # 2 workers, 256 float32 channels
    with dask.config.set({"mlspec.memory-budget": 64 * per_spectrum, "num_workers": 2}):
        rows = sio.rows_of(lazy)
    assert rows.chunks[0] == (64,) * 6  # 4 map lines of 16 spectra
    np.testing.assert_array_equal(rows.compute(), s.data.reshape(-1, 256))


# -- HDF5 --------------------------------------------------------------------------------------
def test_hdf5_slicer_with_chunk_cache_reads_the_same_and_pickles(tmp_path):
    import h5py

    x = np.arange(32 * 6 * 10, dtype=np.float32).reshape(32, 6, 10)
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("a/b", data=x, chunks=(16, 6, 10), compression="gzip")
    plain = HDF5Slicer(path, "/a/b", x.shape, x.dtype)
    cached = plain.with_cache(2**20)
    assert plain.chunks == (16, 6, 10)
    np.testing.assert_array_equal(cached[3:9], x[3:9])
    np.testing.assert_array_equal(plain[3:9], x[3:9])
    again = pickle.loads(pickle.dumps(cached))
    assert again.cache_bytes == 2**20
    np.testing.assert_array_equal(again[-2:], x[-2:])
    src = da.from_array(plain, chunks=(16, 6, 10), asarray=True)
    out = reread(src, (4, -1, -1), budget=64 * 2**20)
    assert out.chunks[0] == (4,) * 8
    np.testing.assert_array_equal(out.compute(), x)
    cache = [v for v in dict(out.__dask_graph__()).values() if isinstance(v, HDF5Slicer)]
    assert cache and cache[0].cache_bytes >= 16 * 6 * 10 * 4  # one chunk row cached


# -- a fitted model on a lazy file ------------------------------------------------------------
@pytest.fixture(scope="module")
def file_and_model(tmp_path_factory):
    s = hyperspy_mlspec.data.eels_map((24, 16), n_channels=128, dose=20, random_state=3)
    path = tmp_path_factory.mktemp("ooc") / "map.hspy"
    s.save(path, chunks=(24, 16, 128))  # one chunk larger than the budget used below
    ae = hyperspy_mlspec.AutoencoderDecomposition(3, epochs=3, random_state=0,
                                                  show_progressbar=False)
    ae.fit(s.data.reshape(-1, 128))
    ae.signal_axis_ = sio.axis_info(s.axes_manager.signal_axes[0]).to_dict()
    return s, path, ae


def test_lazy_anomaly_map_and_saved_reconstruction_are_blocked_and_equal_eager(
        file_and_model, tmp_path):
    s, path, ae = file_and_model
    lazy = sio.load(path, lazy=True)
    budget = 48 * 128 * 4 * chunks.BLOCK_COPIES * 2  # 48 spectra (3 lines) a block
    with dask.config.set({"mlspec.memory-budget": budget, "num_workers": 2}), \
            MaxTask() as monitor:
        score = lazy.mlspec.anomaly_map(model=ae, show_progressbar=False)
        rec = lazy.mlspec.reconstruct(ae)
        assert rec._lazy and rec.data.chunks[0] == (3,) * 8
        rec.save(tmp_path / "rec.hspy", show_progressbar=False)
    assert monitor.max_nbytes <= 48 * 128 * 8  # no task held more than a float64 block
    np.testing.assert_allclose(score.data, s.mlspec.anomaly_map(model=ae).data, rtol=1e-5)
    import hyperspy.api as hs

    saved = hs.load(tmp_path / "rec.hspy")
    np.testing.assert_allclose(saved.data, s.mlspec.reconstruct(ae).data, rtol=1e-5,
                               atol=1e-5)
    assert saved.axes_manager.signal_axes[0].units == "eV"


def test_lazy_inference_batches_are_small_for_long_spectra(file_and_model, monkeypatch):
    _, _, ae = file_and_model
    seen = []
    original = type(ae)._apply_numpy

    def spy(self, X, fn, batch=2048):
        seen.append((len(X), batch))
        return original(self, X, fn, batch=batch)

    monkeypatch.setattr(type(ae), "_apply_numpy", spy)
    assert remote._lazy_batch(ae, 128) == 2048  # short spectra: the estimator's batch
    assert remote._lazy_batch(ae, 4096) == remote.LAZY_BATCH_VALUES // 4096
    monkeypatch.setattr(remote, "LAZY_BATCH_VALUES", 16 * 128)  # as if spectra were long
    x = da.from_array(np.ones((64, 128), np.float32), chunks=(32, 128))
    ae.reconstruct(x).compute(scheduler="sync")
    assert [b for n, b in seen if n == 32] == [128, 128]  # each block: the floor, 128 rows
    seen.clear()
    ae.reconstruct(np.ones((64, 128), np.float32))  # in memory: the estimator's own batch
    assert (64, 2048) in seen
