"""The training engine: sources, normalisation, losses, the loop."""

import dask.array as da
import numpy as np
import pytest
import torch

from hyperspy_mlspec.engine import (
    ArraySource,
    DaskSource,
    Normalizer,
    poisson_deviance,
    resolve_device,
    train,
)
from hyperspy_mlspec.engine.sources import validation_rows


def test_validation_split_is_deterministic_and_sized():
    idx = np.arange(50_000)
    a = validation_rows(idx, 0.2, seed=3)
    assert np.array_equal(a, validation_rows(idx, 0.2, seed=3))
    assert abs(a.mean() - 0.2) < 0.01
    assert not np.array_equal(a, validation_rows(idx, 0.2, seed=4))


def test_array_and_dask_sources_yield_same_rows():
    X = np.arange(1000 * 4, dtype=np.float64).reshape(1000, 4)
    arr = ArraySource(X, block_rows=64, validation_fraction=0.1, seed=1)
    lazy = DaskSource(da.from_array(X, chunks=(100, 2)), validation_fraction=0.1, seed=1)
    for split in ("train", "val", "all"):
        rows_a = np.concatenate(list(arr.batches(32, split=split)))
        rows_d = np.concatenate(list(lazy.batches(32, split=split)))
        assert rows_a.dtype == np.float32
        np.testing.assert_array_equal(np.sort(rows_a[:, 0]), np.sort(rows_d[:, 0]))
        assert len(rows_a) == arr.count(split)
    # shuffled batches still cover every training row exactly once
    rng = np.random.default_rng(0)
    rows = np.concatenate(list(lazy.batches(32, split="train", rng=rng, buffer_rows=128)))
    assert len(np.unique(rows[:, 0])) == lazy.count("train") == len(rows)


def test_dask_source_streams_without_computing_whole_array():
    calls = []
    X = da.ones((400, 8), chunks=(50, 8))
    X = X.map_blocks(lambda b: calls.append(b.shape) or b, dtype=X.dtype)
    src = DaskSource(X)
    next(iter(src.batches(10, buffer_rows=60)))
    real = [c for c in calls if c[0] > 0]  # dask also calls once on an empty meta block
    assert len(real) <= 3  # two blocks fill the buffer, a third is being prefetched


@pytest.mark.parametrize("kind", ["none", "sum", "max", "poisson"])
def test_normalizer_inverts_exactly(kind):
    X = np.random.default_rng(0).poisson(10, (40, 16)).astype(np.float32)
    X[3] = 0  # an all-zero spectrum must not divide by zero
    norm = Normalizer(kind).fit(X)
    Xt = torch.as_tensor(X)
    Xn, m = norm.forward(Xt)
    assert torch.isfinite(Xn).all()
    torch.testing.assert_close(Xn * m, Xt)
    assert 0.3 < float(Xn.abs().mean()) < 3  # order one for the network


def test_poisson_deviance_is_zero_at_truth_and_positive_elsewhere():
    x = torch.tensor([0.0, 1.0, 5.0])
    assert float(poisson_deviance(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(poisson_deviance(x + 1, x)) > 0


def test_train_reduces_loss_keeps_history_and_is_reproducible():
    X = np.random.default_rng(0).normal(size=(256, 6)).astype(np.float32)

    def run():
        torch.manual_seed(0)
        lin = torch.nn.Linear(6, 6)
        res = train(lin, lambda b, t: ((lin(b) - b) ** 2).mean(),
                    ArraySource(X, validation_fraction=0.2, seed=0), epochs=30, batch_size=32,
                    learning_rate=1e-2, seed=5, show_progressbar=False)
        return lin, res

    lin1, res1 = run()
    lin2, _ = run()
    losses = [h["train_loss"] for h in res1.history]
    assert losses[-1] < 0.1 * losses[0]
    assert all(h["val_loss"] is not None for h in res1.history)
    torch.testing.assert_close(lin1.weight, lin2.weight)


def test_train_keeps_best_weights_on_interrupt():
    X = np.ones((64, 3), np.float32)
    lin = torch.nn.Linear(3, 3)
    calls = {"n": 0}

    def step(b, training):
        calls["n"] += 1
        if training and calls["n"] > 20:
            raise KeyboardInterrupt
        return ((lin(b) - b) ** 2).mean()

    res = train(lin, step, ArraySource(X), epochs=100, batch_size=8,
                show_progressbar=False)
    assert res.interrupted and len(res.history) >= 1


def test_resolve_device_auto_never_requires_gpu():
    dev = resolve_device("auto")
    assert dev.type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


class _Watcher:
    """A GUI-like observer: records epochs and asks to stop after ``stop_after`` steps."""

    def __init__(self, stop_after=None):
        self.begin, self.rows, self.end, self.steps = None, [], None, 0
        self.stop_after = stop_after

    def on_train_begin(self, info):
        self.begin = info

    def on_epoch_end(self, row):
        self.rows.append(row)

    def on_train_end(self, result):
        self.end = result

    def stop_requested(self):
        self.steps += 1
        return self.stop_after is not None and self.steps >= self.stop_after


def _linear_problem():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 4)
    X = np.random.default_rng(0).normal(size=(256, 4)).astype("float32")
    return lin, (lambda b, t: ((lin(b) - b) ** 2).mean()), ArraySource(X)


def test_observer_sees_every_epoch_and_the_result():
    from hyperspy_mlspec.engine.progress import observe

    lin, loss, source = _linear_problem()
    with observe(_Watcher()) as w:
        res = train(lin, loss, source, epochs=4, batch_size=32, show_progressbar=False)
    assert w.begin["epochs"] == 4 and w.begin["n_train"] == 256
    assert [r["epoch"] for r in w.rows] == [0, 1, 2, 3]
    assert [r["train_loss"] for r in w.rows] == [r["train_loss"] for r in res.history]
    assert w.end is res and not res.stopped
    # outside the block nobody watches
    res2 = train(lin, loss, source, epochs=1, batch_size=32, show_progressbar=False)
    assert len(w.rows) == 4 and len(res2.history) == 1


def test_stop_request_ends_training_and_keeps_best_weights():
    from hyperspy_mlspec.engine.progress import observe

    lin, loss, source = _linear_problem()
    with observe(_Watcher(stop_after=12)):  # 8 steps per epoch: stops inside epoch 2
        res = train(lin, loss, source, epochs=50, batch_size=32, show_progressbar=False)
    assert res.stopped and len(res.history) == 2
    best = min(r["train_loss"] for r in res.history)
    with torch.no_grad():
        kept = float(loss(torch.from_numpy(source.X), False))
    # the kept weights are those of the best epoch, not a fresh module
    assert kept <= best * 1.5


def test_log_progress_writes_few_lines_when_not_a_terminal(capsys):
    from hyperspy_mlspec.engine import progress as prog

    bar = prog.progress(1000, "Training", True, unit="epoch")
    assert isinstance(bar, prog.LogProgress)  # pytest's captured stderr is not a tty
    for _ in range(1000):
        bar.update(1)
    bar.set_postfix(loss="0.5")
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Training: 1000/1000 epoch in")
    assert lines[0].endswith("loss=0.5")
    assert isinstance(prog.progress(10, "x", False), prog._NoBar)
