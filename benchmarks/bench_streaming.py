"""Benchmark of issue 6 (part 3): real-time monitoring with :class:`StreamingMonitor`.

Usage::

    .venv/bin/python -m benchmarks.bench_streaming            # 2048 channels (a few minutes)
    .venv/bin/python -m benchmarks.bench_streaming --quick    # 256 channels, a smoke test

On spectra of a synthetic EELS map (:func:`hyperspy_mlspec.data.eels_map`, 64 x 64 pixels,
2048 channels, Poisson counts) replayed row by row (64 spectra per ``update()`` call,
:func:`hyperspy_mlspec.data.simulate_acquisition`), in one process, with torch and the
scoring pool on all usable cores (2 on the reference machine):

* **model scoring throughput**: spectra/s through ``update()`` of a monitor holding a
  fitted :class:`~hyperspy_mlspec.AutoencoderDecomposition` (4 latent dimensions, default
  hidden sizes 512/256): latent codes, reconstruction and Poisson deviance, maps written.
  Against the 10,000 spectra/s target of the issue, and as a fraction of this machine's
  float32 matmul peak (network FLOPs counted analytically). Baselines in the same process:
  the network alone through the monitor's inference path, and the estimator's public
  methods (``transform`` then ``reconstruct``, i.e. what one would call without the
  monitor) followed by the same scoring.
* **streaming PCA**: spectra/s of ``update()`` with 8 PCA components and a basis in use
  (accumulation + scoring, no refresh); the cost of the whole PCA (accumulation of every
  spectrum plus one eigendecomposition) against scikit-learn's
  ``IncrementalPCA.partial_fit`` on the same stream (batches of 256), as a ratio, and the
  agreement of their components.
* **latency** of each ``update()`` call (percentiles, max) with model and PCA: without any
  refresh, while background refreshes run (``refresh_every=2048``), and with refreshes in
  the calling thread (``background=False``: the stall the background thread avoids).

Best of 3 passes for throughputs. The machine is shared: the 1-minute load average is
recorded at start and end (a load above the core count means other processes took CPU
time). A full run writes the ``## Streaming monitor (issue 6, real time)`` section of
``benchmarks/RESULTS.md``; ``--quick`` only prints.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence

import numpy as np

from benchmarks._common import (
    Stopwatch,
    bench_parser,
    command_line,
    count_forward_flops,
    fmt,
    machine_info,
    machine_markdown,
    markdown_table,
    matmul_peak_gflops,
    update_results_section,
    usable_cores,
)

TITLE = "Streaming monitor (issue 6, real time)"
MODULE = "benchmarks.bench_streaming"
TARGET = 10_000  # spectra/s of 2048 channels on 2 cores (issue 6)
K_PCA = 8
REFRESH = 2048  # spectra between two PCA refreshes in the IncrementalPCA comparison


def _loadavg() -> str:
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        return "-"


def _stream(monitor, signal, passes: int = 1) -> list[float]:
    """Feed ``signal`` row by row ``passes`` times; per-call update() latencies (s) and
    whether a refresh was running when the call started."""
    from hyperspy_mlspec.data import simulate_acquisition

    steps = list(simulate_acquisition(signal, rows_per_step=1))
    out = []
    for _ in range(passes):
        for positions, spectra in steps:
            busy = monitor.refreshing
            t0 = time.perf_counter()
            monitor.update(spectra, positions)
            out.append((time.perf_counter() - t0, busy))
    return out


def _throughput(make, signal, budget: float = 20.0, rows_per_step: int = 1) -> float:
    """Best spectra/s over up to 3 timed passes of row-by-row ``update()`` calls, each on a
    fresh monitor after a warm-up of a few rows; stops early after ``budget`` seconds (the
    rate is then over the spectra done: slow settings on a loaded machine stay bounded)."""
    from hyperspy_mlspec.data import simulate_acquisition

    steps = list(simulate_acquisition(signal, rows_per_step=rows_per_step))
    best, t_start = 0.0, time.perf_counter()
    for _ in range(3):
        mon = make()
        try:
            for positions, spectra in steps[:4]:
                mon.update(spectra, positions)
            done, t0 = 0, time.perf_counter()
            for positions, spectra in steps:
                mon.update(spectra, positions)
                done += len(spectra)
                if time.perf_counter() - t_start > budget:
                    break
            best = max(best, done / (time.perf_counter() - t0))
        finally:
            mon.close()
        if time.perf_counter() - t_start > budget:
            break
    return best


def _rate(fn, X: np.ndarray, budget: float = 10.0, block: int = 1024) -> float:
    """Best spectra/s of ``fn`` over blocks of ``X`` (up to 3 passes, ``budget`` seconds)."""
    fn(X[:64])  # warm-up
    best, t_start = 0.0, time.perf_counter()
    for _ in range(3):
        done, t0 = 0, time.perf_counter()
        for i in range(0, len(X), block):
            fn(X[i:i + block])
            done += len(X[i:i + block])
            if time.perf_counter() - t_start > budget:
                break
        best = max(best, done / (time.perf_counter() - t0))
        if time.perf_counter() - t_start > budget:
            break
    return best


def _percentiles(lat: list[float]) -> list[str]:
    if not lat:
        return ["-"] * 4
    a = np.asarray(lat) * 1e3
    return [fmt(float(np.percentile(a, 50))), fmt(float(np.percentile(a, 95))),
            fmt(float(np.percentile(a, 99))), fmt(float(a.max()))]


def run(shape: tuple[int, int], n_channels: int, n_ipca: int) -> dict:
    import torch
    from sklearn.decomposition import IncrementalPCA

    from hyperspy_mlspec import AutoencoderDecomposition, StreamingMonitor
    from hyperspy_mlspec.scoring.scores import row_scores as _row_scores
    from hyperspy_mlspec.streaming.inference import infer

    threads = torch.get_num_threads()
    s = __import__("hyperspy_mlspec").data.eels_map(shape, n_channels=n_channels, dose=50)
    X = np.ascontiguousarray(s.data.reshape(-1, n_channels), dtype=np.float32)
    n = X.shape[0]
    res: dict = {"n": n, "threads": threads}

    with Stopwatch() as fit_sw:
        ae = AutoencoderDecomposition(n_components=4, epochs=2, random_state=0,
                                      show_progressbar=False).fit(X[:1024])
    res["fit_s"] = fit_sw.wall
    flops = count_forward_flops(ae.module_, torch.as_tensor(X[:64]))["forward_flops"]
    res["flops"] = flops
    res["peak"] = matmul_peak_gflops()

    # -- scoring throughput, per thread count -------------------------------------------------
    from hyperspy_mlspec.streaming.inference import threads as _threads

    res["fast_path"] = True  # the estimator's one-pass _encode_decode_tensor

    def two_pass(xb):  # encode, then decode: the model's separate methods
        with torch.inference_mode():
            ae._decode_tensor(ae._encode_tensor(torch.from_numpy(xb)))

    def public_api(xb):
        ae.transform(xb)
        _row_scores(xb, ae.reconstruct(xb), "deviance")

    def pca_monitor(nt):
        mon = StreamingMonitor(s, n_components=K_PCA, refresh_every=10**9, num_threads=nt)
        return _with_basis(mon, X)

    res["by_threads"] = {}
    for nt in sorted({1, threads}):
        r = res["by_threads"][nt] = {}
        r["model"] = _throughput(lambda nt=nt: StreamingMonitor(s, model=ae, num_threads=nt),
                                 s)
        if nt == 1:
            r["model_8rows"] = _throughput(
                lambda nt=nt: StreamingMonitor(s, model=ae, num_threads=nt), s,
                rows_per_step=8)
        r["both"] = _throughput(lambda nt=nt: _with_basis(StreamingMonitor(
            s, model=ae, n_components=K_PCA, refresh_every=10**9, num_threads=nt), X), s)
        r["pca"] = _throughput(lambda nt=nt: pca_monitor(nt), s)
        with _threads(nt):
            r["network_only"] = _rate(lambda xb: infer(ae, xb, 2048), X)
            r["network_plain"] = _rate(two_pass, X)
            r["public_api"] = _rate(public_api, X)
            r["peak"] = matmul_peak_gflops(repeats=5)

    # PCA cost vs IncrementalPCA on the same stream (batches of 256), one thread each
    from sklearn.decomposition import PCA

    Xi = X[:n_ipca]
    ipca = IncrementalPCA(K_PCA)
    with _threads(1), Stopwatch() as ipca_sw:
        for i in range(0, n_ipca, 256):
            ipca.partial_fit(Xi[i:i + 256])

    def ours(refresh_every):
        mon = StreamingMonitor(navigation_shape=(n_ipca,), n_channels=n_channels,
                               n_components=K_PCA, pca_weighting="none",
                               refresh_every=refresh_every, background=False,
                               pca_chunk=256, num_threads=1)
        times = []
        with Stopwatch() as sw:
            for i in range(0, n_ipca, 256):
                before = mon.n_refreshes_
                mon.update(Xi[i:i + 256], np.arange(i, min(i + 256, n_ipca)))
                if mon.n_refreshes_ > before:
                    times.append(mon.last_refresh_seconds_)
            mon.refresh()
            times.append(mon.last_refresh_seconds_)
        comps = mon.pca_components_
        mon.close()
        return sw.wall, times, comps

    acc_s, final_refresh, _ = ours(10**9)  # accumulation and the one final refresh
    per_s, refresh_times, comps = ours(REFRESH)  # periodic bases, all counted
    exact = PCA(K_PCA, svd_solver="full").fit(Xi.astype(np.float64)).components_

    def cos4(a, b):
        return float(np.abs(np.sum(a[:4] * b[:4], axis=1)).min())

    res.update(ipca_s=ipca_sw.wall, acc_s=acc_s - final_refresh[-1], per_s=per_s,
               n_ipca=n_ipca,
               first_refresh=refresh_times[0], warm_refresh=float(np.median(
                   refresh_times[1:])) if len(refresh_times) > 1 else float("nan"),
               n_refresh=len(refresh_times), cos_ours=cos4(comps, exact),
               cos_ipca=cos4(ipca.components_, exact))

    # -- latency ---------------------------------------------------------------------------
    lat = {}
    for name, kw, passes in (("no refresh", dict(refresh_every=10**9), 1),
                             ("background refresh", dict(refresh_every=2048), 3),
                             ("refresh in update() (background=False)",
                              dict(refresh_every=2048, background=False), 1)):
        mon = _with_basis(StreamingMonitor(s, model=ae, n_components=K_PCA,
                                           num_threads=1, **kw), X)
        try:
            out = _stream(mon, s, passes)
            mon.wait()
            lat[name] = (out, mon.n_refreshes_, mon.last_refresh_seconds_)
        finally:
            mon.close()
    res["latency"] = lat
    return res


def _with_basis(mon, X):
    mon.update(X[:512], np.arange(min(512, len(X))))
    mon.refresh()
    return mon


def tables(res: dict) -> tuple[str, str, str]:
    gf = res["flops"] / 1e9
    rows = []
    for nt, r in res["by_threads"].items():
        peak = r["peak"]

        def row(name, rate, note="", nt=nt, peak=peak):
            return [name, nt, f"{rate:,.0f}", fmt(rate / TARGET), fmt(rate * gf),
                    fmt(peak), fmt(rate * gf / peak), note]

        rows += [
            row("monitor `update()`, model (codes + deviance + maps)", r["model"],
                "fast path" if res["fast_path"] else "model methods"),
            *([row("monitor `update()`, model, 8 scan rows per call", r["model_8rows"],
                   "batches of 512")] if "model_8rows" in r else []),
            row("monitor `update()`, model + streaming PCA (8)", r["both"]),
            ["monitor `update()`, streaming PCA (8) only", nt, f"{r['pca']:,.0f}",
             fmt(r["pca"] / TARGET), "-", fmt(peak), "-", "accumulation + scoring"],
            row("network alone, monitor's inference path", r["network_only"]),
            row("network alone, the model's own `_encode/_decode`", r["network_plain"]),
            row("baseline: `transform` + `reconstruct` + deviance", r["public_api"],
                "public estimator API"),
        ]
    t1 = markdown_table(["path", "threads", "spectra/s", "/ 10,000 target",
                         "GFLOP/s (network)", "matmul peak GFLOP/s (same threads)",
                         "fraction of peak", "note"], rows, "lrrrrrrl")
    n_i = res["n_ipca"]
    t2 = markdown_table(
        ["method (1 thread)", "seconds", "spectra/s", "bases computed",
         "IncrementalPCA time / this"],
        [["`IncrementalPCA(8).partial_fit`, batches of 256", fmt(res["ipca_s"]),
          f"{n_i / res['ipca_s']:,.0f}", n_i // 256, "1"],
         ["StreamingMonitor, accumulation only (`update()`, no refresh)",
          fmt(res["acc_s"]), f"{n_i / res['acc_s']:,.0f}", 0,
          fmt(res["ipca_s"] / res["acc_s"])],
         [f"StreamingMonitor, refresh every {REFRESH} spectra + at the end, all in "
          "`update()`/`refresh()`",
          fmt(res["per_s"]), f"{n_i / res['per_s']:,.0f}", res["n_refresh"],
          fmt(res["ipca_s"] / res["per_s"])]], "lrrrr")
    rows = []
    for name, (out, n_ref, last) in res["latency"].items():
        all_lat = [t for t, _ in out]
        during = [t for t, busy in out if busy]
        rows.append([name, len(all_lat), n_ref, *_percentiles(all_lat),
                     f"{len(during)} calls, max {fmt(1e3 * max(during)) if during else '-'}",
                     fmt(last)])
    t3 = markdown_table(["refresh (num_threads=1)", "calls", "refreshes", "p50 ms", "p95 ms",
                         "p99 ms", "max ms", "calls while a refresh ran", "last refresh s"], rows,
                        "lrrrrrrlr")
    return t1, t2, t3


def main(argv: Sequence[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = bench_parser(__doc__.splitlines()[0]).parse_args(argv)
    import hyperspy.api as hs
    import torch

    hs.preferences.General.show_progressbar = False
    logging.getLogger("hyperspy").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(usable_cores())
    cmd = command_line(MODULE, argv)
    print(cmd, flush=True)
    info = machine_info()
    load_start = _loadavg()
    shape, n_channels, n_ipca = ((16, 16), 512, 256) if args.quick else ((64, 64), 2048, 4096)
    with Stopwatch() as total:
        res = run(shape, n_channels, n_ipca)
    load_end = _loadavg()
    t1, t2, t3 = tables(res)
    setup = (f"{shape[0]}x{shape[1]} pixels x {n_channels} channels (synthetic EELS, "
             f"counts), fed one scan row ({shape[1]} spectra) per `update()`; "
             f"{res['threads']} torch threads; AutoencoderDecomposition(n_components=4), "
             f"{fmt(res['flops'] / 1e6)} MFLOP per spectrum (forward); streaming PCA with "
             f"{K_PCA} components. os.getloadavg() (1, 5, 15 min) at start: {load_start}; "
             f"at end: {load_end}. Total {total.wall:.0f} s.")
    body = "\n\n".join([
        f"Command: `{cmd}`", machine_markdown(info, res["peak"]), setup,
        "### Scoring throughput", t1,
        f"### Streaming PCA vs scikit-learn IncrementalPCA ({res['n_ipca']} spectra, "
        f"{n_channels} channels, {K_PCA} components)", t2,
        f"Refresh time: first basis {fmt(res['first_refresh'])} s, later (warm-started) "
        f"bases {fmt(res['warm_refresh'])} s (median). Smallest |cosine| of the first 4 "
        f"components with exact PCA (sklearn `PCA(svd_solver='full')` on the same "
        f"spectra): streaming "
        f"{fmt(res['cos_ours'], 6)}, IncrementalPCA {fmt(res['cos_ipca'], 6)}.",
        "### update() latency (model + streaming PCA, one scan row per call)", t3])
    print(body)
    if not (args.quick or args.no_write):
        update_results_section(TITLE, body + "\n\n" + NOTES)
    return {"results": res, "markdown": body}


NOTES = """\
Notes (read with the tables):

- Throughput: one `update()` call runs the network once per batch (codes and
  reconstruction together, `torch.inference_mode`, normalisation folded into the first and
  last layers), then the Poisson deviance of `hyperspy_mlspec.anomaly` (float64, on
  64-row chunks, in a thread pool for large batches), and writes the maps in place.
  "fraction of peak" counts the network's matmul FLOPs only, against a float32 matmul
  measured in the same process with the same thread count; the rest of the time is
  element-wise work (activations, exp, deviance), small-batch inefficiency (one scan row of
  64 spectra per call; feeding several rows per call is faster) and Python overhead.
- Threads: the reference machine is shared by several jobs. When its load average is
  above its 2 cores, two torch/BLAS threads are much slower than one (a thread waiting at
  a barrier for a descheduled partner spins), which is why `StreamingMonitor` has
  `num_threads` (applied to torch, BLAS and the scoring pool during `update()`). On such a
  machine all rates are lower than on an idle one by about the load factor, and so is the
  matmul peak measured alongside (the fraction of peak is the more stable figure).
- Streaming PCA: the accumulation is one BLAS `dsyrk` per chunk of 256 spectra
  (`O(chunk C^2)` in float64, in place), against an SVD of `(k + batch) x C` per batch for
  `IncrementalPCA`. A refresh computes the top k eigenpairs of the `C x C` covariance
  (Lanczos, ARPACK `eigsh`, started from the previous basis; `np.linalg.eigh` below 384
  channels or if Lanczos fails) once per `refresh_every` spectra, in a background thread;
  IncrementalPCA updates its basis at every batch, the monitor only at refreshes, so the
  comparison depends on `refresh_every` (the table gives both the accumulation alone and
  the accumulation with periodic refreshes). Its components are those of exact PCA;
  IncrementalPCA's are approximate where eigenvalues are close (the noise continuum of
  these maps starts at the third component).
- Latency: with `background=True` the calls made while a refresh runs are slower (the
  refresh's BLAS work shares the cores) but never wait for it; with `background=False`
  the call that triggers a refresh takes the whole refresh.
"""


if __name__ == "__main__":
    main()
