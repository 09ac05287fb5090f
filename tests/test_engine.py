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


# -- speed: fused loss, budget, batches, threads, optimiser (issue 14) -----------------------
def test_fused_poisson_deviance_equals_reference_value_and_gradient():
    from hyperspy_mlspec.engine.losses import poisson_deviance_elements

    gen = torch.Generator().manual_seed(0)
    counts = torch.poisson(torch.rand(64, 40, generator=gen) * 6)
    counts[:3] = 0  # empty spectra: 0 log 0 = 0
    rate = (torch.rand(64, 40, generator=gen) * 5 + 1e-3).requires_grad_()
    with torch.no_grad():
        rate[0, :4] = 1e-12  # below the floor: no gradient there
    fused = poisson_deviance(rate, counts)
    fused.backward()
    grad_fused = rate.grad.clone()
    rate.grad = None
    ref = poisson_deviance_elements(rate, counts).mean()
    ref.backward()
    torch.testing.assert_close(fused, ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad_fused, rate.grad, rtol=1e-5, atol=1e-9)
    assert float(grad_fused[0, :4].abs().max()) == 0.0
    # against the float64 textbook expression
    x, mu = counts.double(), rate.detach().double().clamp_min(1e-8)
    exact = 2 * (torch.xlogy(x, x / mu) - x + mu).mean()
    assert abs(float(fused) - float(exact)) < 1e-5 * float(exact)
    # bf16 rates (autocast) are computed in float32
    assert poisson_deviance(rate.detach().bfloat16(), counts).dtype == torch.float32


def test_batch_size_rule_follows_the_data_and_the_machine():
    from hyperspy_mlspec.engine.budget import auto_batch_size

    sizes = [auto_batch_size(n) for n in (100, 2000, 4096, 16384, 10**6)]
    assert sizes == [16, 128, 256, 1024, 1024]
    assert auto_batch_size(10) == 10  # never more than the rows
    assert auto_batch_size(10**6, "cuda") == 8192  # a GPU gets larger batches


def test_budget_in_spectra_scales_with_the_data():
    from hyperspy_mlspec.engine.budget import auto_batch_size, auto_budget

    ns = [500, 2000, 16384, 200_000, 2_000_000]
    budgets = [auto_budget(n, auto_batch_size(n)) for n in ns]
    samples = [b.max_samples for b in budgets]
    passes = [b.max_samples / n for n, b in zip(ns, budgets, strict=True)]
    assert samples == sorted(samples) and samples[-1] > 50 * samples[0]  # grows with n
    assert passes == sorted(passes, reverse=True)  # ... but fewer passes on large maps
    assert passes[-1] == 1.0  # at least one pass over every spectrum
    assert samples[0] == 300 * 32  # small maps: 300 steps of n/16 rows
    # rounds: one per epoch, or 2**17 spectra on large maps
    assert budgets[0].eval_every is None and budgets[-1].eval_every == 2**17


def test_validation_split_is_capped():
    from hyperspy_mlspec.engine.budget import validation_fraction

    assert validation_fraction(60, 0.1) == 0.0  # fewer than 8 rows: none
    assert validation_fraction(2000, 0.1) == 0.1
    assert validation_fraction(10**6, 0.1) * 10**6 == pytest.approx(4096)


def test_max_samples_and_rounds():
    X = np.random.default_rng(0).normal(size=(1000, 4)).astype(np.float32)
    lin = torch.nn.Linear(4, 4)
    res = train(lin, lambda b, t: ((lin(b) - b) ** 2).mean(), ArraySource(X), epochs=100,
                batch_size=50, max_samples=1500, eval_every=400, patience=None,
                show_progressbar=False)
    assert res.n_samples_seen == 1500  # the budget, not 100 epochs
    assert len(res.history) == 4  # rounds of 400 rows (8 steps), the last one shorter
    assert [r["samples"] for r in res.history] == [400, 800, 1200, 1500]
    assert res.history[-1]["passes"] == pytest.approx(1.5)


def test_early_stopping_on_the_held_out_split_keeps_the_best_round():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 8)).astype(np.float32)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 8))
    # a held-out split of pure noise targets: the validation loss soon stops improving
    res = train(net, lambda b, t: ((net(b) - b.flip(0)) ** 2).mean(),
                ArraySource(X, validation_fraction=0.25, seed=1), epochs=300, batch_size=20,
                learning_rate=1e-2, patience=3, show_progressbar=False)
    assert res.stopped_early and len(res.history) < 300
    vals = [r["val_loss"] for r in res.history]
    assert res.best_epoch == int(np.argmin(vals)) and res.best_epoch < len(vals) - 1
    assert len(res.history) - 1 - res.best_epoch == 3  # stopped after `patience` rounds


def test_in_memory_rows_share_float32_input_and_match_the_streamed_split():
    X = np.arange(600 * 3, dtype=np.float32).reshape(600, 3)
    src = ArraySource(X, validation_fraction=0.2, seed=4)
    rows = src.in_memory()
    assert rows.data.data_ptr() == X.ctypes.data  # no copy of float32 data
    for split in ("train", "val"):
        streamed = np.sort(np.concatenate(list(src.batches(64, split=split)))[:, 0])
        gathered = np.sort(torch.cat(list(rows.batches(64, split))).numpy()[:, 0])
        np.testing.assert_array_equal(streamed, gathered)
    assert rows.count("val") == src.count("val")
    # float64 input: converted once; the check runs on every row
    seen = []
    src64 = ArraySource(X.astype(np.float64))
    src64.check = lambda block: seen.append(len(block))
    assert src64.in_memory().data.dtype == torch.float32 and sum(seen) == 600


def test_engine_adam_equals_torch_adam_and_imports_no_dynamo():
    import subprocess
    import sys

    from hyperspy_mlspec.engine.optim import Adam

    def run(make, fused):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.SiLU(), torch.nn.Linear(7, 5))
        opt = make(net.parameters())
        if not fused:
            opt._fused = False  # the foreach fallback
        x = torch.randn(32, 5, generator=torch.Generator().manual_seed(1))
        for _ in range(20):
            opt.zero_grad()
            ((net(x) - x) ** 2).mean().backward()
            opt.step()
        return [p.detach().clone() for p in net.parameters()], opt

    ref, _ = run(lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3), True)
    for fused in (True, False):
        got, opt = run(lambda p: Adam(p, lr=1e-2, weight_decay=1e-3), fused)
        for a, b in zip(got, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # its state loads into torch's Adam and back
    t = torch.optim.Adam(torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.SiLU(),
                                             torch.nn.Linear(7, 5)).parameters())
    t.load_state_dict(opt.state_dict())
    assert t.param_groups[0]["lr"] == 1e-2
    code = ("import sys, numpy as np; from hyperspy_mlspec.estimators import "
            "AutoencoderDecomposition as A; A(2, epochs=1, show_progressbar=False)"
            ".fit(np.random.default_rng(0).poisson(5, (64, 16)).astype(float)); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_small_steps_train_on_one_thread_and_threads_are_restored():
    from hyperspy_mlspec.engine.budget import training_threads

    tiny = torch.nn.Sequential(torch.nn.Linear(160, 64), torch.nn.Linear(64, 160))
    assert training_threads(tiny, 128) == 1
    assert training_threads(torch.nn.Linear(1024, 1024), 1024) is None
    seen = []
    before = torch.get_num_threads()
    X = np.ones((64, 160), np.float32)

    def step(b, t):
        seen.append(torch.get_num_threads())
        return ((tiny(b) - b) ** 2).mean()

    train(tiny, step, ArraySource(X), epochs=1, batch_size=32, num_threads=1,
          show_progressbar=False)
    assert set(seen) == {1} and torch.get_num_threads() == before


def test_mixed_precision_path_runs_on_the_cpu():
    from hyperspy_mlspec.engine.trainer import resolve_amp

    assert resolve_amp("auto", torch.device("cpu")) is None  # never bf16 on a CPU by default
    assert resolve_amp(True, torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="amp must be"):
        resolve_amp("fp8", torch.device("cpu"))
    X = np.random.default_rng(0).poisson(5, (256, 16)).astype(np.float32)
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 16)
    dtypes = []

    def step(b, t):
        out = lin(b)
        dtypes.append(out.dtype)
        return poisson_deviance(torch.nn.functional.softplus(out), b)

    res = train(lin, step, ArraySource(X), epochs=3, batch_size=64, amp="bf16",
                show_progressbar=False)
    assert torch.bfloat16 in dtypes and lin.weight.dtype == torch.float32
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]


def test_compile_only_pays_on_long_cpu_runs():
    from hyperspy_mlspec.engine.budget import COMPILE_MIN_STEPS, compile_pays

    big = torch.nn.Sequential(torch.nn.Linear(1024, 128), torch.nn.Linear(128, 1024))
    assert not compile_pays(600, big, 1024)  # the default budgets: start-up not repaid
    assert not compile_pays(10 * COMPILE_MIN_STEPS, torch.nn.Linear(160, 64), 128)  # tiny
    assert not compile_pays(10 * COMPILE_MIN_STEPS, big, 1024, "cuda")  # not on a GPU
    import shutil

    has_cxx = any(shutil.which(c) for c in ("c++", "g++", "clang++"))
    assert compile_pays(10 * COMPILE_MIN_STEPS, big, 1024) == has_cxx


@pytest.mark.parametrize("extreme", [False, True])
def test_fused_exp_link_deviance_equals_the_separate_nodes(extreme):
    from hyperspy_mlspec.engine.losses import poisson_deviance_elements, poisson_deviance_exp

    gen = torch.Generator().manual_seed(1)
    counts = torch.poisson(torch.rand(32, 24, generator=gen) * 8)
    linear = (torch.rand(32, 24, generator=gen) * 4 + 0.1).requires_grad_()
    h = (torch.randn(32, 24, generator=gen) * 0.5).requires_grad_()
    if extreme:  # clamped corrections and rates under the floor get no gradient
        with torch.no_grad():
            h[0, :3] = torch.tensor([12.0, -11.0, 10.5])
            linear[1, :2] = 1e-12
    fused = poisson_deviance_exp(linear, h, counts)
    fused.backward()
    g_lin, g_h = linear.grad.clone(), h.grad.clone()
    linear.grad = h.grad = None
    ref = poisson_deviance_elements(linear * torch.exp(h.clamp(-10, 10)), counts).mean()
    ref.backward()
    torch.testing.assert_close(fused, ref, rtol=1e-6, atol=1e-7)
    # gradients are ~2/N = 3e-3; where x ~ mu they cancel to rounding
    torch.testing.assert_close(g_lin, linear.grad, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(g_h, h.grad, rtol=1e-5, atol=1e-8)
    if extreme:
        assert float(g_h[0, :3].abs().max()) == 0.0 and float(g_lin[1, :2].abs().max()) == 0


@pytest.mark.parametrize("linear_path", [False, True])
def test_folded_first_layer_equals_the_plain_encoder_with_gradients(linear_path):
    # encode_counts folds the normalisation into the first layer and stacks the skip path's
    # product with it, in training too: values and gradients equal the plain computation
    from hyperspy_mlspec.models import SpectralAutoencoder

    torch.manual_seed(0)
    model = SpectralAutoencoder(40, 3, nonnegative=not linear_path, linear_path=linear_path)
    model.input_shift.uniform_(-0.5, 0.5)
    model.input_scale.uniform_(0.5, 2.0)
    x = torch.poisson(torch.full((16, 40), 6.0))
    row = x.mean(dim=1, keepdim=True).clamp_min(1.0)
    chan = torch.rand(40) + 0.5
    mu, _ = model.encode_counts(x, row, chan)
    mu.square().sum().backward()
    fused = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    ref, _ = model.encode(x / (row * chan))  # the unfolded path
    ref.square().sum().backward()
    plain = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    torch.testing.assert_close(mu, ref, rtol=1e-4, atol=1e-5)
    assert len(fused) == len(plain) > 0
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    if linear_path:
        assert float(model.skip.weight.grad.abs().sum()) > 0  # the stacked path learns


def test_amp_rule(monkeypatch):
    """bf16 training only on CPUs with native bf16 products and for steps that are not
    tiny; GPUs keep their own rule."""
    from hyperspy_mlspec.engine import budget

    big, small = torch.nn.Linear(1024, 1024), torch.nn.Linear(160, 64)
    monkeypatch.setattr(budget, "native_bf16", lambda: True)
    assert budget.amp_pays(big, 1024) == "bf16"
    assert budget.amp_pays(small, 128) is False
    assert budget.amp_pays(big, 1024, "cuda") == "auto"
    monkeypatch.setattr(budget, "native_bf16", lambda: False)
    assert budget.amp_pays(big, 1024) is False


def test_bf16_training_reaches_the_float32_error(monkeypatch):
    """The default per-pixel DAE trained with bf16 products denoises a Poisson map as well
    as in float32 (its weights and losses stay float32), and the estimator really used
    autocast (the fits differ)."""
    from hyperspy_mlspec.data import eels_map
    from hyperspy_mlspec.engine import budget
    from hyperspy_mlspec.estimators import DenoisingAutoencoder

    s, truth = eels_map((64, 64), 1024, 10, random_state=3, return_truth=True)
    X = s.data.reshape(-1, 1024).astype(np.float32)
    clean = np.asarray(truth.clean).reshape(-1, 1024)
    errors, outs = {}, {}
    for native in (False, True):
        monkeypatch.setattr(budget, "native_bf16", lambda native=native: native)
        dae = DenoisingAutoencoder(epochs=3, batch_size=512, patience=None, random_state=0,
                                   show_progressbar=False).fit(X)
        outs[native] = dae.transform(X)
        errors[native] = float(np.mean((outs[native] - clean) ** 2 / clean))
    assert not np.array_equal(outs[False], outs[True])
    assert errors[True] < 1.1 * errors[False]
