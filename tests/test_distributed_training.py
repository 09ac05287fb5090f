"""Data-parallel training under torchrun equals single-process training (issue 6).

The arithmetic of sharding and gradient reduction is tested in one process by simulating the
ranks; one end-to-end test runs ``hyperspy-mlspec train`` on 2 local CPU processes with
``python -m torch.distributed.run`` and compares the saved model with a single-process run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import hyperspy.api as hs
import numpy as np
import pytest
import torch

from hyperspy_mlspec import load_model
from hyperspy_mlspec.cli import main
from hyperspy_mlspec.data import eels_map
from hyperspy_mlspec.engine import ArraySource, train
from hyperspy_mlspec.engine.distributed import (
    Group,
    init_from_env,
    pack_gradients,
    unpack_gradients,
)

ROOT = Path(__file__).resolve().parent.parent


# -- sharding and gradient arithmetic, one process -------------------------------------------
@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("n", [0, 1, 2, 7, 64])
def test_shards_tile_the_batch(world, n):
    rows = np.concatenate([np.arange(n)[Group(r, world).shard(n)] for r in range(world)])
    np.testing.assert_array_equal(rows, np.arange(n))
    sizes = [len(range(n)[Group(r, world).shard(n)]) for r in range(world)]
    assert max(sizes) - min(sizes) <= 1


def _model_and_data():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 6))
    unused = torch.nn.Linear(2, 2)  # never in the loss: must keep grad=None, as alone
    X = torch.randn(11, 6)
    return net, unused, X


def _grads(params):
    return [None if p.grad is None else p.grad.clone() for p in params]


@pytest.mark.parametrize("world", [2, 3, 12])  # 12 > 11 rows: one slice is empty
def test_reduced_gradients_equal_full_batch_gradients(world):
    net, unused, X = _model_and_data()
    params = list(net.parameters()) + list(unused.parameters())

    def loss_of(x):
        return ((net(x) - x) ** 2).mean()

    # one process, whole batch
    loss = loss_of(X)
    loss.backward()
    expected, expected_loss = _grads(params), float(loss.detach())

    # the simulated ranks: local mean loss on their slice, packed, summed (= all_reduce)
    total = None
    for r in range(world):
        for p in params:
            p.grad = None
        local = X[Group(r, world).shard(len(X))]
        local_loss = None
        if len(local):
            local_loss = loss_of(local)
            local_loss.backward()
        flat = pack_gradients(params, local_loss, len(local))
        total = flat if total is None else total + flat
    mean_loss, n_total = unpack_gradients(params, total)

    assert n_total == len(X)
    assert mean_loss == pytest.approx(expected_loss, rel=1e-6)
    for p, g in zip(params, expected, strict=True):
        if g is None:
            assert p.grad is None
        else:
            torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)


def test_single_process_group_is_an_identity():
    group = Group.current()
    assert (group.rank, group.world_size, group.active, group.is_main) == (0, 1, False, True)
    assert group.shard(10) == slice(0, 10)
    np.testing.assert_array_equal(group.all_reduce([1.5, 2.0]), [1.5, 2.0])
    assert group.broadcast_int(42) == 42
    net, _, X = _model_and_data()
    loss = ((net(X) - X) ** 2).mean()
    loss.backward()
    before = _grads(list(net.parameters()))
    value, n = group.reduce_gradients(list(net.parameters()), loss, len(X))
    assert (value, n) == (float(loss.detach()), len(X))
    for p, g in zip(net.parameters(), before, strict=True):
        assert torch.equal(p.grad, g)
    assert init_from_env() is False  # no WORLD_SIZE: nothing to join


def test_train_single_process_unchanged_by_the_distributed_path():
    """Without a process group, train() gives exactly what a hand-written loop gives."""
    X = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 3)
    ref = torch.nn.Linear(3, 3)
    ref.load_state_dict(lin.state_dict())
    res = train(lin, lambda b, t: ((lin(b) - b) ** 2).mean(), ArraySource(X), epochs=2,
                batch_size=8, patience=None, seed=3, show_progressbar=False)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    rng = np.random.default_rng(3)
    rng.integers(2**31)  # the torch seed the loop draws first
    losses = []
    for _ in range(2):
        total = 0.0
        for batch in ArraySource(X).batches(8, rng=rng, drop_last=True):
            loss = ((ref(torch.from_numpy(batch)) - torch.from_numpy(batch)) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(batch)
        losses.append(total / len(X))
    assert [h["train_loss"] for h in res.history] == pytest.approx(losses, rel=1e-6)
    for a, b in zip(lin.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_disagreeing_processes_get_a_clear_error():
    class TwoRanks(Group):  # rank 1 reports one row more than rank 0
        def all_reduce(self, values, op="sum"):
            v = np.asarray(values, dtype=float)
            return v + (1.0 if op == "max" else 0.0) * (np.arange(len(v)) == 0)

    with pytest.raises(ValueError, match=r"disagree on n_train \(100 to 101\).*same data"):
        TwoRanks(0, 2).check_same(n_train=100, batch_size=16)


def test_torchrun_environment_without_rendezvous_address(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        init_from_env()


# -- the command line, one and two processes -------------------------------------------------
@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ddp") / "x.hspy"
    eels_map((12, 12), n_channels=48, dose=20, random_state=1).save(path)
    return path


TRAIN_ARGS = ["--model", "decomposition", "-k", "3", "--epochs", "4", "--batch-size", "24",
              "--seed", "0", "--device", "cpu"]


def _rows(path: Path) -> np.ndarray:
    s = hs.load(path)
    return s.data.reshape(-1, s.data.shape[-1]).astype(np.float32)


def test_two_process_training_equals_single_process(data_file, tmp_path):
    single = tmp_path / "single.mlspec"
    assert main(["train", str(data_file), *TRAIN_ARGS, "--out", str(single)]) == 0

    two = tmp_path / "two.mlspec"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "hyperspy_mlspec", "train", str(data_file), *TRAIN_ARGS, "--out", str(two)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("ok:") == 1  # rank 0 alone reports (and writes)
    assert "2 process(es)" in proc.stdout

    a, b = load_model(single), load_model(two)
    X = _rows(data_file)
    ra, rb = a.reconstruct(X), b.reconstruct(X)
    assert np.abs(ra - rb).max() / np.abs(ra).max() < 1e-4
    assert len(a.history_) == len(b.history_) == 4
    for ha, hb in zip(a.history_, b.history_, strict=True):
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=1e-5)
        assert hb["val_loss"] == pytest.approx(ha["val_loss"], rel=1e-5)
        assert hb["learning_rate"] == ha["learning_rate"]
    np.testing.assert_allclose(b.components_, a.components_, rtol=1e-3,
                               atol=1e-4 * np.abs(a.components_).max())
    assert b.signal_axis_ == a.signal_axis_


def test_train_concatenates_files_sharing_the_axis(data_file, tmp_path, capsys):
    other = tmp_path / "other.hspy"
    eels_map((6, 6), n_channels=48, dose=20, random_state=2).save(other)
    out = tmp_path / "models" / "both.mlspec"
    assert main(["train", str(data_file), str(other), *TRAIN_ARGS, "--out", str(out)]) == 0
    assert "180 spectra" in capsys.readouterr().out  # 144 + 36 rows
    model = load_model(out)
    assert model.n_features_in_ == 48 and len(model.history_) == 4
    assert main(["train", str(data_file), *TRAIN_ARGS, "--out", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_train_refuses_files_with_different_axes(data_file, tmp_path, capsys):
    other = tmp_path / "short.hspy"
    eels_map((6, 6), n_channels=40, dose=20, random_state=2).save(other)
    out = tmp_path / "m.mlspec"
    assert main(["train", str(data_file), str(other), *TRAIN_ARGS, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "must share the signal axis" in err and "short.hspy" in err
    assert not out.exists()
    assert main(["train", str(tmp_path / "missing.hspy"), *TRAIN_ARGS, "--out", str(out)]) == 1
    assert "no such file" in capsys.readouterr().err


def test_train_denoiser_lazy(data_file, tmp_path):
    out = tmp_path / "den.mlspec"
    assert main(["train", str(data_file), "--model", "denoise", "--epochs", "2", "--seed", "0",
                 "--lazy", "--device", "cpu", "--out", str(out)]) == 0
    model = load_model(out)
    assert type(model).__name__ == "DenoisingAutoencoder"
    assert model.transform(_rows(data_file)[:5]).shape == (5, 48)
