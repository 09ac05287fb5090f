"""Benchmark of issue 2: autoencoder decomposition vs HyperSpy's Poisson-normalised PCA.

Usage::

    .venv/bin/python -m benchmarks.bench_decomposition            # 128x128x1024 map
    .venv/bin/python -m benchmarks.bench_decomposition --quick    # 48x48x256 map
    .venv/bin/python -m benchmarks.bench_decomposition --matrix   # issue 11 grid, ~4 min

``--matrix`` (issue 11, item 5) runs ``s.mlspec.decomposition(K)`` + ``reconstruct`` with
every default against HyperSpy's Poisson PCA + ``get_decomposition_model(K)`` at equal K =
2, 4, 6, 8 on held-out-style maps, 2 seeds each, 1 torch thread: 64x64x1024 EELS maps with
thickness and drift 0.3 / 1 eV at doses 10 / 100, a 64x64x1024 EDS map, and a 40x50 map of
162 channels of 8 eV stored as raw int16 counts. It records error and time ratios (AE / PCA,
same process) in its own section, ``## Decomposition vs PCA at equal K (issue 11)``.

On one synthetic EELS map with nonlinear effects (plural scattering from a varying
thickness, energy drift), in one process:

* reconstruction error against the known clean data (mean squared error and the
  Poisson-normalised error ``mean((rec - clean)^2 / clean)``) of
  :class:`~hyperspy_mlspec.AutoencoderDecomposition` with a linear and a nonlinear decoder
  and of HyperSpy's PCA with ``normalize_poissonian_noise=True``, at equal K;
* wall time of each fit as a ratio to HyperSpy's (full) SVD of the same data;
* one more fit (K=4, nonlinear decoder) with a larger epoch budget, to show how far
  ``epochs="auto"`` is from convergence;
* training throughput in spectra/s and as a fraction of this machine's measured float32
  matmul rate, using the network's analytic FLOPs (Linear/Conv layers, training step = 3x
  forward);
* where the training time goes: per-step times of the bare network, of the estimator's
  loss (normalisation + Poisson deviance) and of the whole training loop, for several
  batch sizes, plus a torch.profiler breakdown.

Prints the command and the tables; a full run writes the ``## Decomposition (issue 2)``
section of ``benchmarks/RESULTS.md`` (``--quick`` only prints).
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from benchmarks._common import (
    Stopwatch,
    bench_parser,
    command_line,
    count_forward_flops,
    load_average,
    machine_info,
    machine_markdown,
    markdown_table,
    matmul_peak_gflops,
    step_times,
    update_results_section,
)

TITLE = "Decomposition (issue 2)"
MODULE = "benchmarks.bench_decomposition"


@dataclass(frozen=True)
class Setup:
    navigation_shape: tuple[int, int]
    n_channels: int
    dose: float = 50.0
    components: tuple[int, ...] = (2, 4, 8)
    profile_batches: tuple[int, ...] = (256, 1024, 4096)
    profile_repeats: int = 15
    #: one extra fit (K=4, nonlinear decoder) with a larger epoch budget (None: skip)
    long_epochs: int | None = 150


FULL = Setup((128, 128), 1024)
QUICK = Setup((48, 48), 256, profile_batches=(256, 1024), profile_repeats=8,
              long_epochs=None)


# -- metrics ---------------------------------------------------------------------------------
def errors(rec: np.ndarray, clean: np.ndarray, rows: int = 2048) -> tuple[float, float]:
    """``(MSE, Poisson-normalised error)`` of a reconstruction against the clean data."""
    rec = np.asarray(rec).reshape(-1, clean.shape[-1])
    clean = np.asarray(clean).reshape(-1, clean.shape[-1])
    sq = pn = 0.0
    for i in range(0, len(clean), rows):
        c = clean[i:i + rows].astype(np.float64)
        d = (rec[i:i + rows].astype(np.float64) - c) ** 2
        sq += float(d.sum())
        pn += float((d / np.maximum(c, 1e-12)).sum())
    return sq / clean.size, pn / clean.size


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def _f(x: float, spec: str = ".3g") -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, spec)


# -- runs --------------------------------------------------------------------------------------
def run_svd(s) -> float:
    """Wall time of HyperSpy's default decomposition (full SVD) on a copy of ``s``."""
    c = s.deepcopy()
    with Stopwatch() as sw:
        c.decomposition(print_info=False)
    return sw.wall


def run_pca(s, clean: np.ndarray, k: int, seed: int) -> dict:
    """HyperSpy PCA with Poisson normalisation at ``k`` components, then its model.

    HyperSpy's default ``svd_solver="auto"`` picks the randomized SVD for a few components
    of a large map; ``random_state`` makes it reproducible."""
    c = s.deepcopy()
    with Stopwatch() as sw:
        try:
            c.decomposition(normalize_poissonian_noise=True, output_dimension=k,
                            print_info=False, random_state=seed)
        except TypeError:  # the solver chosen takes no random_state (full SVD)
            c.decomposition(normalize_poissonian_noise=True, output_dimension=k,
                            print_info=False)
    model = c.get_decomposition_model(k)
    mse, pn = errors(model.data, clean)
    return {"method": "HyperSpy PCA (Poisson-normalised)", "k": k, "fit_s": sw.wall,
            "mse": mse, "pn": pn}


def run_ae(s, X: np.ndarray, clean: np.ndarray, k: int, decoder: str, epochs,
           seed: int) -> dict:
    """``s.mlspec.decomposition`` with the autoencoder, its exact reconstruction, its
    training throughput and the network's FLOPs."""
    import torch

    with Stopwatch() as sw:
        ae = s.mlspec.decomposition(n_components=k, decoder=decoder, epochs=epochs,
                                    random_state=seed, show_progressbar=False)
    mse, pn = errors(ae.reconstruct(X), clean)
    hist = ae.history_
    train_s = sum(h["seconds"] for h in hist)
    per_epoch = ae.n_samples_seen_ / max(1, len(hist))
    rate = ae.n_samples_seen_ / train_s if train_s > 0 else math.nan
    best_rate = per_epoch / min(h["seconds"] for h in hist) if hist else math.nan
    xb = torch.as_tensor(np.asarray(X[:64], dtype=np.float32), device=ae.device_)
    with torch.no_grad():
        xn, _ = ae.normalizer_.forward(xb)
    flops = count_forward_flops(ae.module_, xn)
    out = {
        "method": f"AE, {decoder} decoder", "decoder": decoder, "k": k, "fit_s": sw.wall,
        "cpu_share": sw.cpu_share,
        "mse": mse, "pn": pn, "epochs": len(hist),
        "stopped_early": len(hist) < _planned_epochs(ae, X, epochs, seed),
        "batch_size": ae._batch_size(len(X)), "train_s": train_s, "rate": rate,
        "best_rate": best_rate, "train_flops": flops["train_flops"],
    }
    return out


def add_peak_fractions(ae: list[dict], prof: dict, peak: float) -> None:
    """Express every throughput as a fraction of the matmul peak (GFLOP/s)."""
    for r in ae:
        r["peak_frac"] = r["rate"] * r["train_flops"] / (peak * 1e9)
        r["best_peak_frac"] = r["best_rate"] * r["train_flops"] / (peak * 1e9)
    flops = prof.get("train_flops") or math.nan
    for row in prof["rows"]:
        bs = row["batch_size"]
        for key in ("net_min", "net_med", "step_min", "step_med", "step1_min", "step1_med"):
            if key in row:
                row[key + "_frac"] = bs / row[key] * flops / (peak * 1e9)
        row["loop_frac"] = row["loop_rate"] * flops / (peak * 1e9)
    for probe in prof.get("wait_policy", {}).values():
        probe["frac"] = prof["default_batch"] / probe["med"] * flops / (peak * 1e9)


def _planned_epochs(ae, X: np.ndarray, epochs, seed: int) -> int:
    """Epochs the fit would run without early stopping (resolves ``epochs="auto"``)."""
    if epochs != "auto":
        return int(epochs)
    from hyperspy_mlspec.engine.sources import as_source

    n_train = as_source(X, validation_fraction=ae.validation_fraction, seed=seed).count("train")
    return ae._epochs(n_train, ae._batch_size(len(X)))


def profile_training(X: np.ndarray, setup: Setup, k: int = 4,
                     decoder: str = "nonlinear", seed: int = 0) -> dict:
    """Where the training time goes, for several batch sizes.

    For each batch size: ``net`` = bare network forward + backward + Adam (MSE on
    pre-normalised input); ``step`` = the estimator's real step (normalisation + Poisson
    deviance) + backward + Adam; ``loop`` = the whole training loop (data source,
    validation pass, checkpointing) from a 2-epoch fit. Step times are min and median of
    repeated calls (the minimum is robust to other processes sharing the CPU).
    """
    import torch

    from hyperspy_mlspec import AutoencoderDecomposition

    rows, threads = [], torch.get_num_threads()
    n = len(X)
    flops = None
    default_batch = AutoencoderDecomposition()._batch_size(n)  # batch_size="auto"
    for bs in sorted({default_batch, *setup.profile_batches}):
        if bs * 2 > n:
            continue
        ae = AutoencoderDecomposition(k, decoder=decoder, epochs=2, batch_size=bs,
                                      patience=None, random_state=seed,
                                      show_progressbar=False).fit(X)
        hist = ae.history_
        per_epoch = ae.n_samples_seen_ / len(hist)
        loop_rate = per_epoch / min(h["seconds"] for h in hist)
        module, step = ae.module_, ae._step_loss()
        module.train()
        opt = torch.optim.Adam(module.parameters(), lr=1e-4)
        xb = torch.from_numpy(np.ascontiguousarray(X[:bs], dtype=np.float32))
        with torch.no_grad():
            xn, _ = ae.normalizer_.forward(xb)
        if flops is None:
            counted = count_forward_flops(module, xn[:64])
            flops = counted["train_flops"]
            largest = max(counted["layers"], key=counted["layers"].get)
            shape = tuple(dict(module.named_modules())[largest].weight.shape)
            largest = (f"`{largest}`, {shape[1]} x {shape[0]}, "
                       f"{100 * counted['layers'][largest] / counted['macs']:.0f}% of the MACs")

        def net_step(module=module, opt=opt, xn=xn):
            y = module(xn)[0]
            loss = ((y - xn) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def real_step(step=step, opt=opt, xb=xb):
            loss = step(xb, True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            float(loss.detach())

        net = step_times(net_step, setup.profile_repeats)
        real = step_times(real_step, setup.profile_repeats)
        row = {"batch_size": bs, "net_min": min(net), "net_med": statistics.median(net),
               "step_min": min(real), "step_med": statistics.median(real),
               "loop_rate": loop_rate}
        if bs == default_batch:
            torch.set_num_threads(1)
            try:
                one = step_times(real_step, setup.profile_repeats)
            finally:
                torch.set_num_threads(threads)
            row["step1_min"], row["step1_med"] = min(one), statistics.median(one)
            row["profile"] = _torch_profile(real_step)
        rows.append(row)
    return {"rows": rows, "train_flops": flops, "k": k, "decoder": decoder,
            "largest_layer": largest if flops is not None else "-",
            "threads": threads, "default_batch": default_batch,
            "wait_policy": wait_policy_probe(X.shape[1], default_batch, k, decoder,
                                             setup.profile_repeats * 2)}


_PROBE = r"""
import statistics, sys, time
import numpy as np, torch
from hyperspy_mlspec import AutoencoderDecomposition
n_ch, bs, k, decoder, reps = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                              sys.argv[4], int(sys.argv[5]))
rng = np.random.default_rng(0)
X = rng.poisson(rng.random((4 * bs, 4)) @ rng.random((4, n_ch)) * 100).astype(np.float32)
ae = AutoencoderDecomposition(k, decoder=decoder, epochs=1, batch_size=bs, patience=None,
                              random_state=0, show_progressbar=False).fit(X)
step, module = ae._step_loss(), ae.module_
module.train()
opt = torch.optim.Adam(module.parameters(), lr=1e-4)
xb = torch.from_numpy(X[:bs])
times = []
for i in range(reps + 2):
    t0 = time.perf_counter()
    loss = step(xb, True)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    float(loss.detach())
    times.append(time.perf_counter() - t0)
times = times[2:]
print("PROBE", min(times), statistics.median(times), torch.get_num_threads())
"""


def wait_policy_probe(n_channels: int, batch_size: int, k: int, decoder: str,
                      repeats: int) -> dict[str, dict]:
    """Real training-step time under each OpenMP wait policy (``ACTIVE``: threads spin at
    barriers, the usual default; ``PASSIVE``: they sleep). The policy is read when torch
    loads, so each is measured in a fresh subprocess."""
    out = {}
    for policy in ("ACTIVE", "PASSIVE"):
        env = {**os.environ, "OMP_WAIT_POLICY": policy}
        try:
            res = subprocess.run(
                [sys.executable, "-c", _PROBE, str(n_channels), str(batch_size), str(k),
                 decoder, str(repeats)], env=env, capture_output=True, text=True, timeout=600)
            line = [ln for ln in res.stdout.splitlines() if ln.startswith("PROBE")][-1]
        except (subprocess.SubprocessError, IndexError, OSError) as err:
            print(f"wait-policy probe {policy} failed: {err}", flush=True)
            continue
        _, mn, med, threads = line.split()
        out[policy] = {"min": float(mn), "med": float(med), "threads": int(threads)}
    return out


def _torch_profile(fn, steps: int = 10, top: int = 6) -> list[tuple[str, float]]:
    """Share of self CPU time of the top operators over ``steps`` calls of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    return [(e.key, 100.0 * e.self_cpu_time_total / total) for e in ranked[:top]]


# -- report ----------------------------------------------------------------------------------
def results_table(svd_s: float, noisy: tuple[float, float], pca: list[dict],
                  ae: list[dict]) -> str:
    pca_by_k = {r["k"]: r for r in pca}
    headers = ["K", "method", "fit (s)", "fit / SVD", "epochs", "MSE vs clean", "MSE / PCA",
               "Poisson err", "Poisson err / PCA", "train spectra/s", "% matmul peak",
               "CPU share"]
    rows = [["-", "noisy data (no reconstruction)", "-", "-", "-", _f(noisy[0], ".4g"), "-",
             _f(noisy[1], ".4g"), "-", "-", "-", "-"],
            ["all", "HyperSpy SVD (default, full)", _f(svd_s, ".1f"), "1", "-", "-", "-", "-",
             "-", "-", "-", "-"]]
    for k in sorted(pca_by_k):
        p = pca_by_k[k]
        rows.append([k, p["method"], _f(p["fit_s"], ".1f"), _f(_ratio(p["fit_s"], svd_s), ".2f"),
                     "-", _f(p["mse"], ".4g"), "1", _f(p["pn"], ".4g"), "1", "-", "-", "-"])
        for r in (r for r in ae if r["k"] == k):
            epochs = f"{r['epochs']}" + (" (early stop)" if r["stopped_early"] else "")
            rows.append([
                k, r["method"], _f(r["fit_s"], ".1f"), _f(_ratio(r["fit_s"], svd_s), ".1f"),
                epochs, _f(r["mse"], ".4g"), _f(_ratio(r["mse"], p["mse"]), ".3f"),
                _f(r["pn"], ".4g"), _f(_ratio(r["pn"], p["pn"]), ".3f"),
                f"{r['rate']:.0f} (best epoch {r['best_rate']:.0f})",
                f"{100 * r['peak_frac']:.1f} (best {100 * r['best_peak_frac']:.1f})",
                _f(r["cpu_share"], ".2f")])
    return markdown_table(headers, rows, align="rlrrrrrrrrrr")


def profile_table(prof: dict) -> str:
    headers = ["batch", "net step min / median (ms)", "net % peak (min / median)",
               "real step min / median (ms)", "real step % peak (min / median)",
               "loop spectra/s (best epoch)", "loop % peak"]
    rows = []
    for r in prof["rows"]:
        rows.append([
            r["batch_size"], f"{1e3 * r['net_min']:.1f} / {1e3 * r['net_med']:.1f}",
            f"{100 * r['net_min_frac']:.0f} / {100 * r['net_med_frac']:.0f}",
            f"{1e3 * r['step_min']:.1f} / {1e3 * r['step_med']:.1f}",
            f"{100 * r['step_min_frac']:.0f} / {100 * r['step_med_frac']:.0f}",
            f"{r['loop_rate']:.0f}", f"{100 * r['loop_frac']:.1f}"])
    return markdown_table(headers, rows, align="rrrrrrr")


def threads_lines(prof: dict) -> list[str]:
    """Markdown bullets: thread count and OpenMP wait policy, real step at default batch."""
    lines = []
    rows = prof["rows"]
    r0 = next((r for r in rows if "step1_min" in r), None)
    if r0:
        lines.append(f"- Real step at batch {r0['batch_size']}, {prof['threads']} torch threads "
                     f"(default): min {1e3 * r0['step_min']:.1f} ms, median "
                     f"{1e3 * r0['step_med']:.1f} ms; 1 thread: min "
                     f"{1e3 * r0['step1_min']:.1f} ms, median {1e3 * r0['step1_med']:.1f} ms.")
    wp = prof.get("wait_policy") or {}
    if wp:
        lines.append(f"- OpenMP wait policy (fresh process each, real step at batch "
                     f"{prof['default_batch']}, default threads): " + "; ".join(
                         f"OMP_WAIT_POLICY={k}: min {1e3 * v['min']:.1f} ms, median "
                         f"{1e3 * v['med']:.1f} ms ({100 * v['frac']:.0f}% of peak at the "
                         "median)" for k, v in wp.items())
                     + f" (this run itself: OMP_WAIT_POLICY="
                     f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}).")
    r0 = next((r for r in rows if "profile" in r), None)
    if r0:
        top = r0["profile"]
        lines.append(f"- torch.profiler, real step at batch {r0['batch_size']} (share of "
                     "self CPU time): " + ", ".join(f"`{n}` {p:.0f}%" for n, p in top))
    return lines


def interpretation(pca: list[dict], ae_all: list[dict], prof: dict, svd_s: float,
                   loads: Sequence, cores: int) -> str:
    pca_by_k = {r["k"]: r for r in pca}
    ae = [r for r in ae_all if not r.get("long")]
    parts = []
    for dec in ("nonlinear", "linear"):
        rs = [r for r in ae if r["decoder"] == dec]
        wins = [r["k"] for r in rs if r["mse"] < pca_by_k[r["k"]]["mse"]]
        ratios = ", ".join(f"{_ratio(r['mse'], pca_by_k[r['k']]['mse']):.2f} (K={r['k']})"
                           for r in rs)
        parts.append(f"the {dec}-decoder AE's MSE is {ratios} times PCA's, i.e. below PCA at "
                     f"K = {', '.join(map(str, wins)) if wins else 'none'}")
    nonlinear_wins = all(r["mse"] < pca_by_k[r["k"]]["mse"] for r in ae
                         if r["decoder"] == "nonlinear")
    fit_ratios = [r["fit_s"] / svd_s for r in ae]
    fracs = [100 * r["peak_frac"] for r in ae]
    best = [100 * r["best_peak_frac"] for r in ae]
    text = (f"Reconstruction: {parts[0]}; {parts[1]}. Issue 2's first target (nonlinear AE "
            f"error below PCA's at equal K) is {'met' if nonlinear_wins else 'NOT met'} at "
            f"every K tested. Cost: an AE fit takes {min(fit_ratios):.1f}-"
            f"{max(fit_ratios):.1f}x the time of HyperSpy's full SVD ({svd_s:.1f} s). "
            f"Throughput: default training reaches {min(fracs):.1f}-{max(fracs):.1f}% of the "
            f"measured matmul peak over whole fits ({min(best):.1f}-{max(best):.1f}% in the "
            f"best epoch); the issue's 50% target is {'met' if min(fracs) >= 50 else 'NOT met'}. ")
    for r in (r for r in ae_all if r.get("long") and r["k"] in pca_by_k):
        auto = next((a for a in ae if a["k"] == r["k"] and a["decoder"] == r["decoder"]), None)
        pk = pca_by_k[r["k"]]["mse"]
        text += (f"With a larger budget (epochs={r['long']}: {r['epochs']} run"
                 f"{', early stop' if r['stopped_early'] else ''}) the K={r['k']} "
                 f"{r['decoder']}-decoder AE reaches {_ratio(r['mse'], pk):.3f}x PCA's MSE")
        if auto:
            same = math.isclose(r["mse"], auto["mse"], rel_tol=1e-3)
            text += (f" vs {_ratio(auto['mse'], pk):.3f}x with epochs='auto' "
                     f"({auto['epochs']} epochs)"
                     + (": the same best weights, so 'auto' had converged. " if same
                        else ". "))
        else:
            text += ". "
    rows = prof["rows"]
    if rows:
        r0 = next((r for r in rows if r["batch_size"] == prof["default_batch"]), rows[0])
        big = max(rows, key=lambda r: r["step_min_frac"])
        best_loop = max(rows, key=lambda r: r["loop_frac"])
        text += (f"Profile (K={prof['k']}, {prof['decoder']} decoder): at the default batch "
                 f"of {r0['batch_size']} the bare network step reaches at best "
                 f"{100 * r0['net_min_frac']:.0f}% of peak, the estimator's real step "
                 f"(normalisation, softplus, Poisson deviance) {100 * r0['step_min_frac']:.0f}%"
                 f" and the whole loop {100 * r0['loop_frac']:.1f}%; the best step is at "
                 f"batch {big['batch_size']} ({100 * big['step_min_frac']:.0f}%), the best "
                 f"loop at batch {best_loop['batch_size']} "
                 f"({100 * best_loop['loop_frac']:.1f}%; with few steps per epoch the "
                 "per-epoch costs, validation pass and checkpoint copy, weigh more). "
                 "The layers are small (largest "
                 f"{prof['largest_layer']}) and the element-wise work on batch x channels "
                 "arrays (normalisation, softplus, deviance, their gradients) and the "
                 "per-parameter Adam update are not counted as FLOPs but take time. ")
    la = [x for x in loads if x is not None]
    shares = [r["cpu_share"] for r in ae]
    if not la or not shares:
        return text
    if max(la) <= 1.5 * cores and min(shares) >= 0.75 * cores:
        text += (f"The machine was otherwise nearly idle (1-min load average "
                 f"{min(la):.1f}-{max(la):.1f}; the AE fits used {min(shares):.2f}-"
                 f"{max(shares):.2f} CPU-seconds per second out of {cores}).")
    else:
        text += (f"Caveat: other processes shared this {cores}-core machine during the run "
                 f"(1-min load average {min(la):.1f}-{max(la):.1f}; the AE fits got "
                 f"{min(shares):.2f}-{max(shares):.2f} CPU-seconds per second out of "
                 f"{cores}), so wall times and rates "
                 "are pessimistic and noisy (the matmul peak used is the best of the "
                 "measurements, which makes the fractions conservative); minimum step times "
                 "and best epochs are the contention-robust figures.")
    return text


# -- main --------------------------------------------------------------------------------------
MATRIX_TITLE = "Decomposition vs PCA at equal K (issue 11)"
MATRIX_KS = (2, 4, 6, 8)


def _matrix_maps(quick: bool):
    """``(label, signal, clean)`` of the issue-11 grid (see the module docstring)."""
    from hyperspy_mlspec.data import eds_map, eels_map

    nav, ch = ((24, 24), 256) if quick else ((64, 64), 1024)
    for seed in (0, 1):
        for drift in (0.3, 1.0):
            for dose in (10, 100):
                s, tr = eels_map(nav, ch, dose, thickness=True, drift=drift,
                                 random_state=seed, return_truth=True)
                yield f"EELS drift {drift} eV, dose {dose}", seed, s, tr.clean
        s, tr = eds_map(nav, ch, 20, random_state=seed, return_truth=True)
        yield "EDS, dose 20", seed, s, tr.clean
        s, tr = eels_map((16, 20) if quick else (40, 50), 162, 50, energy_range=(400, 1696),
                         random_state=seed + 1, return_truth=True)
        s.data = s.data.astype(np.int16)  # raw detector counts, 8 eV channels
        yield "int16 40x50x162 (8 eV), dose 50", seed, s, tr.clean


def _poisson_err(rec, clean) -> float:
    rec = np.asarray(rec, dtype=np.float64).reshape(clean.shape)
    return float(np.mean((rec - clean) ** 2 / np.maximum(clean, 1e-3)))


def matrix_main(args, argv) -> dict:
    """The ``--matrix`` run: AE / PCA error and time ratios at equal K."""
    import hyperspy.api as hs
    import torch

    import hyperspy_mlspec  # noqa: F401 - registers s.mlspec

    torch.set_num_threads(1)
    hs.preferences.General.show_progressbar = False
    t_start = time.perf_counter()
    cmd = command_line(MODULE, argv)
    print(f"$ {cmd}", flush=True)
    info = machine_info()
    loads = [info["load_average"]]
    res: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for label, seed, s, clean in _matrix_maps(args.quick):
        for k in MATRIX_KS:
            c = s.deepcopy()
            if c.data.dtype.kind in "iu":  # HyperSpy's PCA needs floats
                c.change_dtype("float32")
            t0 = time.perf_counter()
            c.decomposition(normalize_poissonian_noise=True, output_dimension=k,
                            print_info=False)
            e_pca = _poisson_err(c.get_decomposition_model(k).data, clean)
            t_pca = time.perf_counter() - t0
            t0 = time.perf_counter()
            ae = s.mlspec.decomposition(k, random_state=seed, show_progressbar=False)
            e_ae = _poisson_err(s.mlspec.reconstruct(ae).data, clean)
            t_ae = time.perf_counter() - t0
            res.setdefault((label, k), []).append((e_ae / e_pca, t_ae / t_pca))
            print(f"{label} seed {seed} K={k}: err AE/PCA {e_ae / e_pca:.3f} "
                  f"(PCA {e_pca:.4g}), time AE/PCA {t_ae / t_pca:.1f} "
                  f"({t_ae:.2f} s / {t_pca:.2f} s)", flush=True)
        loads.append(load_average())
    labels = list(dict.fromkeys(lab for lab, _ in res))
    rows = []
    for lab in labels:
        err = [" / ".join(f"{r:.3f}" for r, _ in res[(lab, k)]) for k in MATRIX_KS]
        tim = max(t for k in MATRIX_KS for _, t in res[(lab, k)])
        med = statistics.median(t for k in MATRIX_KS for _, t in res[(lab, k)])
        rows.append([lab, *err, f"{med:.1f} (max {tim:.1f})"])
    table = markdown_table(["map", *(f"K={k} err AE/PCA (seed 0 / 1)" for k in MATRIX_KS),
                            "time AE/PCA median (max)"], rows)
    wins = sum(r < 1 for v in res.values() for r, _ in v)
    total = sum(len(v) for v in res.values())
    total_s = time.perf_counter() - t_start
    loads_txt = ", ".join("-" if x is None else f"{x:.2f}" for x in loads)
    markdown = "\n".join([
        f"Command: `{cmd}` (total {total_s / 60:.1f} min, 1 torch thread)", "",
        machine_markdown(info), f"- 1-min load average during the run: {loads_txt}",
        "- Error: Poisson-normalised `mean((rec - clean)^2 / clean)` against the noise-free "
        "truth. AE = `s.mlspec.decomposition(K, random_state=seed)` + "
        "`s.mlspec.reconstruct(ae)`, every other parameter default; PCA = HyperSpy "
        "`decomposition(normalize_poissonian_noise=True, output_dimension=K)` + "
        "`get_decomposition_model(K)` (int16 data converted to float32 for PCA only), same "
        "process. Time ratio = the whole AE call / the whole PCA call (PCA's BLAS uses every "
        "core, the AE 1 torch thread).", "", table, "",
        f"AE below PCA in {wins} of {total} runs. The default (`init=\"auto\"`) keeps the "
        "trained network or the shrunk Poisson-weighted PCA start, whichever scores better "
        "on the held-out binomial split (see docs/decomposition.rst).",
    ])
    print()
    print(table)
    print(f"\nAE below PCA in {wins} of {total} runs; total {total_s / 60:.1f} min")
    if not args.quick and not args.no_write:
        path = update_results_section(MATRIX_TITLE, markdown)
        print(f"\nwrote section '{MATRIX_TITLE}' of {path}")
    return {"results": res, "markdown": markdown}


def aligned(seeds: Sequence[int] = (0, 1), drifts: Sequence[float] = (0.3, 1.0),
            doses: Sequence[float] = (10, 100), ks: Sequence[int] = (4, 6)) -> list[dict]:
    """``decomposition(align=True)`` against the unaligned default and HyperSpy's PCA.

    On 64x64x1024 EELS maps with thickness and drift, errors of the models moved back onto
    the spectra as measured, against the noise-free truth, as ratios to HyperSpy's Poisson
    PCA at equal K on the map as measured; "PCA aligned" is HyperSpy's PCA of the same
    aligned map (our shift), moved back the same way. Prints a markdown table; run with
    ``.venv/bin/python -c "from benchmarks.bench_decomposition import aligned; aligned()"``.
    """
    import hyperspy.api as hs
    import torch

    import hyperspy_mlspec  # noqa: F401 - registers s.mlspec
    from hyperspy_mlspec.data import eels_map
    from hyperspy_mlspec.denoise import alignment_shift
    from hyperspy_mlspec.spatial import shift_spectra

    torch.set_num_threads(1)
    hs.preferences.General.show_progressbar = False
    out, rows = [], []
    for drift in drifts:
        for dose in doses:
            for seed in seeds:
                s, tr = eels_map((64, 64), 1024, dose, thickness=True, drift=drift,
                                 random_state=seed, return_truth=True)
                X = np.asarray(s.data, dtype=np.float32)
                auto = alignment_shift(s, "auto")[0] is not None  # what align="auto" does
                for k in ks:
                    t0 = time.perf_counter()
                    c = s.deepcopy()
                    c.decomposition(normalize_poissonian_noise=True, output_dimension=k,
                                    print_info=False)
                    e_pca = _poisson_err(c.get_decomposition_model(k).data, tr.clean)
                    t_pca = time.perf_counter() - t0
                    ae = s.mlspec.decomposition(k, random_state=seed, show_progressbar=False)
                    e_ae = _poisson_err(s.mlspec.reconstruct(ae).data, tr.clean)
                    t0 = time.perf_counter()
                    ae, shift = s.mlspec.decomposition(k, align=True, return_shift=True,
                                                       random_state=seed,
                                                       show_progressbar=False)
                    t_al = time.perf_counter() - t0
                    ch = shift.data / s.axes_manager.signal_axes[0].scale
                    rec = ae.reconstruct(shift_spectra(X, -ch).reshape(-1, X.shape[-1]))
                    e_al = _poisson_err(shift_spectra(rec.reshape(X.shape), ch), tr.clean)
                    c = s._deepcopy_with_new_data(shift_spectra(X, -ch))
                    c.decomposition(normalize_poissonian_noise=True, output_dimension=k,
                                    print_info=False)
                    e_pca_al = _poisson_err(
                        shift_spectra(np.asarray(c.get_decomposition_model(k).data), ch),
                        tr.clean)
                    row = dict(drift=drift, dose=dose, seed=seed, k=k, pca=e_pca,
                               ae=e_ae / e_pca, ae_aligned=e_al / e_pca,
                               pca_aligned=e_pca_al / e_pca, time=t_al / t_pca,
                               auto=auto)
                    out.append(row)
                    print({key: (round(v, 4) if isinstance(v, float) else v)
                           for key, v in row.items()}, flush=True)
    for drift in drifts:
        for dose in doses:
            for k in ks:
                sel = [r for r in out if (r["drift"], r["dose"], r["k"]) == (drift, dose, k)]
                rows.append([f"{drift:g}", f"{dose:g}", k,
                             *(" / ".join(f"{r[key]:.3f}" for r in sel)
                               for key in ("ae", "ae_aligned", "pca_aligned")),
                             " / ".join("yes" if r["auto"] else "no" for r in sel),
                             f"{max(r['time'] for r in sel):.1f}"])
    print(markdown_table(["drift (eV)", "dose", "K", "AE / PCA", "AE aligned / PCA",
                          "PCA aligned / PCA", "auto aligns", "time aligned AE / PCA (max)"],
                         rows))
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    parser = bench_parser(__doc__.splitlines()[0])
    parser.add_argument("--matrix", action="store_true",
                        help="issue 11 grid: AE vs PCA at equal K on several maps (~4 min)")
    parser.add_argument("--epochs", default="auto",
                        help="epochs of every AE fit: 'auto' (the default users get) or an int")
    parser.add_argument("--components", default=None,
                        help="comma-separated K values (default 2,4,8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-profile", action="store_true",
                        help="skip the where-does-the-time-go profile")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.matrix:
        return matrix_main(args, argv)
    setup = QUICK if args.quick else FULL
    epochs = args.epochs if args.epochs == "auto" else int(args.epochs)
    ks = (tuple(int(k) for k in args.components.split(",")) if args.components
          else setup.components)

    import hyperspy.api as hs

    import hyperspy_mlspec  # noqa: F401 - registers s.mlspec
    from hyperspy_mlspec.data import eels_map

    hs.preferences.General.show_progressbar = False
    t_start = time.perf_counter()
    cmd = command_line(MODULE, argv)
    print(f"$ {cmd}", flush=True)
    info = machine_info()
    peaks = [matmul_peak_gflops()]
    print(machine_markdown(info, peaks[0]), flush=True)
    loads = [info["load_average"]]

    t0 = time.perf_counter()
    s, truth = eels_map(setup.navigation_shape, setup.n_channels, setup.dose, thickness=True,
                        drift=0.3, random_state=args.seed, return_truth=True)
    gen_s = time.perf_counter() - t0
    X = s.data.reshape(-1, setup.n_channels)
    clean = np.asarray(truth.clean).reshape(-1, setup.n_channels)
    noisy = errors(X, clean)
    print(f"data: {s} generated in {gen_s:.1f} s", flush=True)

    svd_s = run_svd(s)
    print(f"HyperSpy SVD: {svd_s:.2f} s", flush=True)
    pca, ae = [], []
    for k in ks:
        pca.append(run_pca(s, clean, k, args.seed))
        print(f"K={k} PCA: fit {pca[-1]['fit_s']:.2f} s, MSE {pca[-1]['mse']:.4g}, "
              f"Poisson err {pca[-1]['pn']:.4g}", flush=True)
        for decoder in ("linear", "nonlinear"):
            r = run_ae(s, X, clean, k, decoder, epochs, args.seed)
            ae.append(r)
            loads.append(load_average())
            peaks.append(matmul_peak_gflops())
            print(f"K={k} AE {decoder}: fit {r['fit_s']:.1f} s ({r['epochs']} epochs, "
                  f"CPU share {r['cpu_share']:.2f}), MSE {r['mse']:.4g}, Poisson err "
                  f"{r['pn']:.4g}, {r['rate']:.0f} spectra/s (best epoch "
                  f"{r['best_rate']:.0f}), {r['train_flops']:.3g} FLOP/spectrum/step",
                  flush=True)
    if setup.long_epochs and epochs == "auto" and 4 in ks:
        r = run_ae(s, X, clean, 4, "nonlinear", setup.long_epochs, args.seed)
        r.update(long=setup.long_epochs,
                 method=f"AE, nonlinear decoder, epochs={setup.long_epochs}")
        ae.append(r)
        loads.append(load_average())
        print(f"K=4 AE nonlinear, epochs={setup.long_epochs}: fit {r['fit_s']:.1f} s "
              f"({r['epochs']} epochs), MSE {r['mse']:.4g}, Poisson err {r['pn']:.4g}",
              flush=True)
    prof = {"rows": [], "k": 4, "decoder": "nonlinear", "threads": info["torch_threads"],
            "train_flops": None}
    if not args.no_profile:
        prof = profile_training(X, setup, seed=args.seed)
        loads.append(load_average())
    peaks.append(matmul_peak_gflops())
    loads.append(load_average())
    peak = max(peaks)
    add_peak_fractions(ae, prof, peak)
    total_s = time.perf_counter() - t_start

    table = results_table(svd_s, noisy, pca, ae)
    flops_note = (f" (K={prof['k']} {prof['decoder']}: {prof['train_flops']:.3g} FLOP per "
                  "spectrum per step)" if prof.get("train_flops") else "")
    text = interpretation(pca, ae, prof, svd_s, loads, info["usable_cores"])
    parts = [
        f"Command: `{cmd}` (total {total_s / 60:.1f} min)",
        "",
        machine_markdown(info, None),
        f"- Measured float32 matmul peak (torch.matmul 2048x2048, best of 10, default "
        f"threads), measured at the start, after each AE fit and at the end: "
        f"{', '.join(f'{x:.0f}' for x in peaks)} GFLOP/s; the best, {peak:.1f}, is used "
        "(on a shared machine a low value means the cores were busy elsewhere). "
        "1-min load average during the run: "
        f"{', '.join(str(x) for x in loads if x is not None)}",
        f"- Data: `eels_map({setup.navigation_shape}, {setup.n_channels}, {setup.dose:g}, "
        f"thickness=True, drift=0.3, random_state={args.seed}, return_truth=True)`: {len(X)} "
        f"spectra x {setup.n_channels} channels of Poisson counts (generated in {gen_s:.0f} "
        "s). Errors are over all pixels and channels against `truth.clean`; Poisson err = "
        "mean((rec - clean)^2 / clean), about 1 for the raw noisy data.",
        f"- AE: `s.mlspec.decomposition(n_components=K, decoder=..., epochs={epochs!r}, "
        f"random_state={args.seed})`, every other parameter default (batch size "
        f"{ae[0]['batch_size'] if ae else '-'}); reconstruction = `ae.reconstruct(X)` "
        "(exact, nonlinear). Fit time = the whole `s.mlspec.decomposition` call. PCA: "
        f"`s.decomposition(normalize_poissonian_noise=True, output_dimension=K, "
        f"random_state={args.seed})` (HyperSpy's default solver, randomized here) then "
        "`s.get_decomposition_model(K)`. SVD baseline: `s.decomposition()` (full SVD)."
        + (f" The `epochs={setup.long_epochs}` row is the same call with a larger epoch budget "
           "(early stopping still on)." if any(r.get("long") for r in ae) else ""),
        "- Throughput = training spectra / training-loop seconds (epoch times include the "
        "validation pass); % peak = spectra/s x training FLOPs per spectrum / matmul peak, "
        "training FLOPs = 3 x forward = 6 x the multiply-accumulates of the Linear/Conv "
        f"layers, counted with forward hooks{flops_note}. CPU share = CPU seconds / wall "
        f"seconds of the fit ({info['usable_cores']} = every core busy).",
        "",
        table,
    ]
    if prof["rows"]:
        parts += [
            "",
            f"Where the training time goes (K={prof['k']}, {prof['decoder']} decoder). `net` = "
            "bare network forward + backward + Adam on pre-normalised input; `real step` = "
            "the estimator's loss closure (normalisation + Poisson deviance) + backward + "
            "Adam; `loop` = best epoch of a 2-epoch fit through the training loop (data "
            "source, validation pass, checkpoint). Min and median of "
            f"{setup.profile_repeats} steps.",
            "",
            profile_table(prof),
            "",
            *threads_lines(prof),
        ]
    parts += ["", text]
    markdown = "\n".join(parts)
    print()
    print(table)
    if prof["rows"]:
        print()
        print(profile_table(prof))
        print("\n".join(threads_lines(prof)))
    print()
    print(text)
    print(f"\ntotal {total_s / 60:.1f} min")
    if args.quick:
        print("\n--quick: benchmarks/RESULTS.md left alone (it records full runs)")
    elif not args.no_write:
        path = update_results_section(TITLE, markdown)
        print(f"\nwrote section '{TITLE}' of {path}")
    return {"svd_s": svd_s, "pca": pca, "ae": ae, "profile": prof, "peak_gflops": peak,
            "markdown": markdown}


if __name__ == "__main__":
    main()
