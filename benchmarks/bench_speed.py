"""Speed benchmark (issue 14): every default method against HyperSpy's PCA, inference and
training throughput against the measured matmul peak.

Usage::

    .venv/bin/python -m benchmarks.bench_speed                      # everything
    .venv/bin/python -m benchmarks.bench_speed --only methods       # one part
    .venv/bin/python -m benchmarks.bench_speed --reference f11c7ca  # + the same methods
                                                                    #   at another commit
    .venv/bin/python -m benchmarks.bench_speed --quick              # small, prints only

Parts, all in one process (the reference commit runs the methods part in a subprocess
whose ``hyperspy_mlspec`` is a ``git archive`` of that commit):

``inference``
    ``reconstruct``, ``transform``, ``inverse_transform`` (from precomputed codes) and the
    one-pass encode-decode (fit's last pass) of the default ``AutoencoderDecomposition``
    (K=4, nonlinear decoder) on 65,536 spectra of 1024 channels; spectra/s, best of 3, and
    as a fraction of the matmul peak (FLOPs of the Linear layers each call runs, counted by
    hooks: the encoder for ``transform``, the decoder for ``inverse_transform``).
``training``
    The default fit on a 128x128x1024 map: training-loop spectra/s (rows / seconds of the
    rounds, validation included) and the fraction of the matmul peak (training FLOPs =
    3 x forward); the peak is measured before and after, with the run's threads.
``methods``
    On a 64x64x1024 EELS map (dose 10, thickness, drift, 1 % rare NiO inclusions) and on a
    small one (40x50 pixels x 162 channels of 8 eV, raw int16 counts, dose 50, 1 % rare):
    HyperSpy's Poisson PCA (``decomposition(normalize_poissonian_noise=True)``, integer data
    converted to float32 first) + ``get_decomposition_model(4)``, then each default method:
    ``decomposition()`` + ``reconstruct`` (error against the truth), ``denoise()``
    (error), ``anomaly_map()`` (AUROC of the rare pixels), ``cluster(n_clusters=n_phases)``
    (adjusted Rand index), ``embed(mae)`` with a ``MaskedAutoencoder`` pretrained
    beforehand (not timed; embedding time only). Errors are ``mean((rec - clean)^2 /
    clean)``. Target: each within ``max(3 x PCA, 2 s)``. Every method is called once on a
    tiny map first, so imports are not timed.

A full run writes the ``## Speed (issue 14)`` section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks._common import (
    bench_parser,
    command_line,
    count_forward_flops,
    fmt,
    load_average,
    machine_info,
    machine_markdown,
    markdown_table,
    matmul_peak_gflops,
    update_results_section,
)

TITLE = "Speed (issue 14)"
MODULE = "benchmarks.bench_speed"
ROOT = Path(__file__).resolve().parent.parent
METHODS = ("decomposition", "denoise", "anomaly_map", "cluster", "embed")


# -- maps -----------------------------------------------------------------------------------
def make_map(name: str, quick: bool = False):
    """``(signal, truth)`` of one benchmark map (see the module docstring)."""
    from hyperspy_mlspec.data import eels_map

    if name == "64x64x1024":
        shape, channels = ((24, 24), 256) if quick else ((64, 64), 1024)
        return eels_map(shape, channels, 10, rare_phase=True, rare_fraction=0.01,
                        random_state=0, return_truth=True)
    if name == "small int16":
        shape = (16, 20) if quick else (40, 50)
        s, truth = eels_map(shape, 162, 50, energy_range=(400, 1696), rare_phase=True,
                            rare_fraction=0.01, random_state=1, return_truth=True)
        s.data = s.data.astype(np.int16)  # raw detector counts
        return s, truth
    raise ValueError(name)


def _error(rec, clean) -> float:
    rec = np.asarray(rec, dtype=np.float64).reshape(clean.shape)
    return float(np.mean((rec - clean) ** 2 / np.maximum(clean, 1e-3)))


def _timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def _warm_up() -> None:
    """Call every method once on a tiny map: imports and first-call costs not timed."""
    from hyperspy_mlspec.data import eels_map

    s = eels_map((8, 8), 64, 20, random_state=0)
    s.mlspec.decomposition(2, epochs=1)
    # the default paths (spatial denoiser, context score, model-free phase codes) and the
    # autoencoder routes they replace
    s.mlspec.denoise()
    s.mlspec.denoise(spatial=False, epochs=1)
    s.mlspec.anomaly_map()
    s.mlspec.anomaly_map(method="autoencoder", epochs=2)
    s.mlspec.cluster(n_clusters=2)
    s.mlspec.cluster(n_clusters=2, epochs=1)
    c = s.deepcopy()
    c.decomposition(normalize_poissonian_noise=True, print_info=False)
    c.get_decomposition_model(2)


def measure_methods(maps: Sequence[str], quick: bool = False,
                    methods: Sequence[str] = METHODS) -> dict:
    """Times (wall, CPU) and quality of PCA and of each default method on each map."""
    import hyperspy.api as hs
    from sklearn.metrics import adjusted_rand_score, roc_auc_score

    import hyperspy_mlspec  # noqa: F401  (registers s.mlspec)

    hs.preferences.General.show_progressbar = False
    _warm_up()
    out: dict = {}
    for name in maps:
        s, truth = make_map(name, quick)
        clean = np.asarray(truth.clean)
        rare = np.asarray(truth.rare_mask).ravel()
        row: dict = {"n_spectra": int(np.prod(s.data.shape[:-1])),
                     "n_channels": int(s.data.shape[-1]), "dtype": str(s.data.dtype)}

        def pca(s=s):
            c = s.deepcopy()
            if not np.issubdtype(c.data.dtype, np.floating):
                c.change_dtype("float32")
            c.decomposition(normalize_poissonian_noise=True, print_info=False)
            return c.get_decomposition_model(4)

        model, wall, cpu = _timed(pca)
        row["pca"] = {"wall": wall, "cpu": cpu, "error": _error(model.data, clean)}
        for method in methods:
            entry: dict = {"load": load_average()}
            try:
                if method == "decomposition":
                    def run(s=s):
                        c = s.deepcopy()
                        ae = c.mlspec.decomposition()
                        return ae, c.mlspec.reconstruct(ae)
                    (ae, rec), wall, cpu = _timed(run)
                    entry.update(error=_error(rec.data, clean), epochs=int(ae.n_epochs_),
                                 samples=int(getattr(ae, "n_samples_seen_", 0)))
                elif method == "denoise":
                    d, wall, cpu = _timed(lambda s=s: s.mlspec.denoise())
                    entry.update(error=_error(d.data, clean))
                elif method == "anomaly_map":
                    a, wall, cpu = _timed(lambda s=s: s.mlspec.anomaly_map())
                    score = np.nan_to_num(np.asarray(a.data, dtype=np.float64).ravel())
                    entry.update(auroc=float(roc_auc_score(rare, score)))
                elif method == "cluster":
                    k = int(np.asarray(truth.abundances).shape[-1])
                    c, wall, cpu = _timed(lambda s=s, k=k: s.mlspec.cluster(n_clusters=k))
                    entry.update(ari=float(adjusted_rand_score(
                        np.asarray(truth.phase_map).ravel(), c.labels.data.ravel())))
                elif method == "embed":
                    from hyperspy_mlspec import MaskedAutoencoder

                    mae = MaskedAutoencoder(epochs=1, random_state=0,
                                            show_progressbar=False).fit(s)
                    e, wall, cpu = _timed(lambda s=s, mae=mae: s.mlspec.embed(mae))
                    entry.update(embedding=int(e.data.shape[-1]))
                entry.update(wall=wall, cpu=cpu)
            except Exception as exc:  # noqa: BLE001 - a reference commit may fail here
                entry.update(failed=f"{type(exc).__name__}: {str(exc)[:160]}")
            row[method] = entry
            print(f"  {name} {method}: {json.dumps(entry)}", flush=True)
        out[name] = row
    return out


def matmul_peak_cpu(n: int = 2048, repeats: int = 10) -> float:
    """The float32 matmul rate per CPU-second (GFLOP/s), the process's CPU time of all its
    threads: the rate of one core while this process runs on it, whatever other processes
    take (the wall-clock peak drops with the load, this one much less)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    a @ b
    best = min(_timed(lambda: a @ b)[2] for _ in range(repeats))
    return 2.0 * n**3 / best / 1e9


# -- throughput -----------------------------------------------------------------------------
def measure_inference(quick: bool = False) -> dict:
    import torch

    from hyperspy_mlspec.data import eels_map
    from hyperspy_mlspec.estimators import AutoencoderDecomposition

    channels = 256 if quick else 1024
    s = eels_map((32, 32), channels, 10, random_state=0)
    X0 = s.data.reshape(-1, channels).astype(np.float32)
    ae = AutoencoderDecomposition(4, epochs=2, random_state=0,
                                  show_progressbar=False).fit(X0)
    X = np.tile(X0, (8 if quick else 64, 1))
    with torch.no_grad():
        xn, _ = ae.normalizer_.forward(torch.from_numpy(X0[:64]))
        flops = count_forward_flops(ae.module_, xn)["forward_flops"]
        mu = ae.module_.mu
        encoder = (count_forward_flops(ae.module_.encoder, xn)["forward_flops"]
                   + 2 * mu.in_features * mu.out_features)
    result = {"n_spectra": len(X), "n_channels": channels, "forward_flops": flops,
              "call_flops": {"reconstruct": flops, "encode_decode": flops,
                             "transform": encoder, "inverse_transform": flops - encoder}}
    Z = ae.transform(X)
    for name, fn in (("reconstruct", lambda: ae.reconstruct(X)),
                     ("transform", lambda: ae.transform(X)),
                     ("inverse_transform", lambda: ae.inverse_transform(Z)),
                     ("encode_decode", lambda: ae._encode_decode(X))):
        fn()
        runs = [_timed(fn) for _ in range(3)]
        result[name] = len(X) / min(r[1] for r in runs)
        result[name + "_cpu"] = len(X) / min(r[2] for r in runs)  # spectra per CPU-second
    return result


def measure_training(quick: bool = False) -> dict:
    import torch

    from hyperspy_mlspec.data import eels_map
    from hyperspy_mlspec.estimators import AutoencoderDecomposition

    shape, channels = ((48, 48), 256) if quick else ((128, 128), 1024)
    s = eels_map(shape, channels, 10, random_state=2)
    X = s.data.reshape(-1, channels).astype(np.float32)
    ae = AutoencoderDecomposition(4, random_state=0, show_progressbar=False)
    _, wall, cpu = _timed(lambda: ae.fit(X))
    seconds = sum(r["seconds"] for r in ae.history_)
    rows = ae.history_[-1]["samples"]
    with torch.no_grad():
        xn, _ = ae.normalizer_.forward(torch.from_numpy(X[:64]))
        flops = count_forward_flops(ae.module_, xn)["train_flops"]
    best_round = max(r["samples"] - p["samples"] for p, r in
                     zip([{"samples": 0}] + ae.history_[:-1], ae.history_, strict=True)) \
        if ae.history_ else 0
    fastest = max((r["samples"] - p["samples"]) / r["seconds"] for p, r in
                  zip([{"samples": 0}] + ae.history_[:-1], ae.history_, strict=True))
    # the precision of the training's matrix products, and that precision's own peak
    from hyperspy_mlspec.engine.budget import amp_pays

    products = "bf16" if amp_pays(ae.module_, int(ae._batch_size(len(X)))) == "bf16" \
        else "float32"
    product_peak = matmul_peak_gflops(dtype="bfloat16") if products == "bf16" else None
    # per CPU-second: a second fit of the same plan, timed by the process's CPU clock
    ae2 = AutoencoderDecomposition(4, random_state=0, show_progressbar=False)
    _, _, cpu2 = _timed(lambda: ae2.fit(X))
    return {"n_spectra": len(X), "n_channels": channels, "fit_wall": wall, "fit_cpu": cpu,
            "fit_cpu_2": cpu2, "samples_2": ae2.history_[-1]["samples"],
            "train_seconds": seconds, "samples": rows, "rounds": len(ae.history_),
            "batch_size": int(ae._batch_size(len(X))), "train_flops": flops,
            "spectra_per_s": rows / seconds, "best_round_spectra_per_s": fastest,
            "round_rows": best_round, "products": products, "product_peak": product_peak}


def measure_streaming(quick: bool = False, repeats: int = 3) -> dict:
    """The issue's configuration: ``StreamingMonitor(None, model=ae, navigation_shape=(128,
    128), n_channels=2048, n_components=4)`` fed one scan row (128 spectra) per
    ``update``, every other parameter default (threads: torch's), a whole 128 x 128 scan;
    and the same without the streaming PCA. Best of ``repeats`` scans (wall clock, and
    spectra per CPU-second of the process), with the load average after each."""
    import torch

    from hyperspy_mlspec import StreamingMonitor
    from hyperspy_mlspec.data import eels_map
    from hyperspy_mlspec.estimators import AutoencoderDecomposition

    channels, rows = (512, 16) if quick else (2048, 128)
    s = eels_map((32, 128), channels, 20, random_state=0)
    X = np.ascontiguousarray(s.data.reshape(-1, channels), dtype=np.float32)
    ae = AutoencoderDecomposition(4, epochs=2, random_state=0,
                                  show_progressbar=False).fit(X)
    scan = [X[(r % 32) * 128:(r % 32 + 1) * 128] for r in range(rows)]
    out: dict = {"n_channels": channels, "spectra": rows * 128,
                 "threads": torch.get_num_threads(), "repeats": repeats}
    for name, k in (("with_pca", 4), ("model_only", None)):
        best, best_cpu, loads = 0.0, 0.0, []
        for _ in range(repeats):
            mon = StreamingMonitor(None, model=ae, navigation_shape=(128, 128),
                                   n_channels=channels, n_components=k)
            t0, c0 = time.perf_counter(), time.process_time()
            for r, x in enumerate(scan):
                mon.update(x, np.column_stack([np.full(128, r), np.arange(128)]))
            mon.close()
            best = max(best, rows * 128 / (time.perf_counter() - t0))
            # spectra per CPU-second of the whole process (every thread): the rate two
            # free cores would give is at most twice this
            best_cpu = max(best_cpu, rows * 128 / (time.process_time() - c0))
            loads.append(load_average())
            out[f"{name}_refreshes"] = int(mon.n_refreshes_)
        out[name], out[name + "_cpu"], out[name + "_loads"] = best, best_cpu, loads
    out["load"] = load_average()
    return out


# -- reference commit -----------------------------------------------------------------------
def _at_commit(commit: str, code: str, args: list[str], name: str, quiet: bool) -> dict:
    """Run ``code`` (which writes JSON to ``sys.argv[-1]``) in a subprocess with
    ``hyperspy_mlspec`` of ``commit`` (a ``git archive``) first on the path, then this tree
    (the benchmark and its helpers come from the current tree); returns that JSON."""
    with tempfile.TemporaryDirectory(prefix="mlspec-ref-") as tmp:
        archive = subprocess.run(["git", "archive", commit, "hyperspy_mlspec"], cwd=ROOT,
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        out = Path(tmp) / f"{name}.json"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([tmp, str(ROOT)]))
        cmd = [sys.executable, "-c", "import sys, json; sys.path[:0] = sys.argv[1:3]; " + code,
               tmp, str(ROOT), *args, str(out)]
        subprocess.run(cmd, env=env, check=True, cwd=tmp, capture_output=quiet)
        return json.loads(out.read_text())


def reference_methods(commit: str, maps: Sequence[str], quick: bool) -> dict:
    """The methods part run with ``hyperspy_mlspec`` of ``commit`` (a ``git archive``)."""
    code = ("from benchmarks.bench_speed import measure_methods; "
            "json.dump(measure_methods(json.loads(sys.argv[3]), sys.argv[4] == '1'), "
            "open(sys.argv[5], 'w'))")
    return _at_commit(commit, code, [json.dumps(list(maps)), "1" if quick else "0"],
                      "methods", quiet=False)


def reference_part(commit: str, part: str, quick: bool) -> dict:
    """``measure_<part>`` (inference or streaming) run with ``hyperspy_mlspec`` of
    ``commit`` in a subprocess (a ``git archive``), right after this process measured it:
    a before/after ratio under the same load."""
    code = ("import benchmarks.bench_speed as b; "
            "json.dump(getattr(b, 'measure_' + sys.argv[3])(sys.argv[4] == '1'), "
            "open(sys.argv[5], 'w'))")
    return _at_commit(commit, code, [part, "1" if quick else "0"], part, quiet=True)


# -- report ---------------------------------------------------------------------------------
def _quality(method: str, entry: dict) -> str:
    for key in ("error", "auroc", "ari"):
        if key in entry:
            return f"{key} {fmt(entry[key])}"
    if "embedding" in entry:
        return f"{entry['embedding']} features"
    return "-"


def methods_table(now: dict, ref: dict | None, ref_name: str | None) -> str:
    headers = ["map", "method", "wall (s)", "CPU (s)", "wall / PCA", "target (s)", "met",
               "quality"]
    if ref:
        headers += [f"wall at {ref_name} (s)", f"quality at {ref_name}"]
    rows = []
    for name, row in now.items():
        pca = row["pca"]
        target = max(3 * pca["wall"], 2.0)
        line = [name, "HyperSpy PCA + model(4)", fmt(pca["wall"]), fmt(pca["cpu"]), "1",
                "-", "-", f"error {fmt(pca['error'])}"]
        if ref:
            rp = ref.get(name, {}).get("pca", {})
            line += [fmt(rp.get("wall")), f"error {fmt(rp.get('error'))}"]
        rows.append(line)
        for method in METHODS:
            e = row.get(method)
            if e is None:
                continue
            if "failed" in e:
                line = [name, method, "failed", "-", "-", fmt(target), "no", e["failed"]]
            else:
                line = [name, method, fmt(e["wall"]), fmt(e["cpu"]),
                        fmt(e["wall"] / pca["wall"]), fmt(target),
                        "yes" if e["wall"] <= target else "no", _quality(method, e)]
            if ref:
                r = ref.get(name, {}).get(method, {})
                line += ["failed" if "failed" in r else fmt(r.get("wall")),
                         r.get("failed", _quality(method, r))[:60]]
            rows.append(line)
    return markdown_table(headers, rows)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = bench_parser(__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+",
                        choices=("inference", "training", "streaming", "methods"),
                        default=("inference", "training", "streaming", "methods"))
    parser.add_argument("--maps", nargs="+", default=("64x64x1024", "small int16"))
    parser.add_argument("--reference", default=None,
                        help="also run the methods, inference and streaming parts at this "
                             "git commit (right after this tree's, for a before/after "
                             "ratio under the same load)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and BLAS threads of this process and the reference "
                             "subprocess (default: the libraries' defaults)")
    parser.add_argument("--json", default=None, help="write the raw results here")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)  # numpy's BLAS (HyperSpy's SVD) as well
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(args.threads)  # inherited by the reference subprocess
    info = machine_info()
    started = time.perf_counter()
    loads = [load_average()]
    peaks = [matmul_peak_gflops()]
    peak_cpu = matmul_peak_cpu()
    print(command_line(MODULE, list(argv or [])), flush=True)
    print(machine_markdown(info, peaks[0]), flush=True)
    res: dict = {"machine": info}
    if "inference" in args.only:
        res["inference"] = measure_inference(args.quick)
        print("inference", json.dumps(res["inference"]), flush=True)
        if args.reference:
            res["inference_ref"] = reference_part(args.reference, "inference", args.quick)
    if "training" in args.only:
        peaks.append(matmul_peak_gflops())
        res["training"] = measure_training(args.quick)
        peaks.append(matmul_peak_gflops())
        loads.append(load_average())
        print("training", json.dumps(res["training"]), flush=True)
    if "streaming" in args.only:
        res["streaming"] = measure_streaming(args.quick)
        loads.append(load_average())
        print("streaming", json.dumps(res["streaming"]), flush=True)
        if args.reference:
            res["streaming_ref"] = reference_part(args.reference, "streaming", args.quick)
            loads.append(load_average())
    if "methods" in args.only:
        res["methods"] = measure_methods(args.maps, args.quick)
        loads.append(load_average())
        if args.reference:
            res["reference"] = reference_methods(args.reference, args.maps, args.quick)
            loads.append(load_average())
    peaks.append(matmul_peak_gflops())
    loads.append(load_average())
    peak = max(peaks)
    peak_cpu = max(peak_cpu, matmul_peak_cpu())
    res.update(peaks=peaks, loads=loads, minutes=(time.perf_counter() - started) / 60,
               peak_cpu=peak_cpu)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    md = report(res, args, peak)
    print(md)
    if not (args.quick or args.no_write):
        if "methods" not in res:
            md += kept_methods_table()
        update_results_section(TITLE, md)
    return res


def kept_methods_table() -> str:
    """The methods subsection of the section now in RESULTS.md (a run without the
    methods part keeps it), with a note saying so."""
    from benchmarks._common import RESULTS_PATH

    path = Path(RESULTS_PATH)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    head = "### Default methods against HyperSpy's PCA (same process)"
    start = text.find(f"## {TITLE}\n")
    if start < 0 or text.find(head, start) < 0:
        return ""
    section = text[start:]
    end = section.find("\n## ", 1)
    section = section if end < 0 else section[:end]
    body = section[section.find(head):]
    if "(Kept from" not in body:
        import re

        commit = re.search(r"Code: git commit (\S+)", section)
        command = re.search(r"Command: (`[^`]*`)", section)
        note = (f"(Kept from the run of commit {commit.group(1) if commit else '?'}"
                + (f", {command.group(1)}" if command else "")
                + ": the run above left out the methods part.)")
        body = body.replace(head + "\n", f"{head}\n\n{note}\n", 1)
    return "\n" + body.rstrip("\n") + "\n"


def report(res: dict, args: argparse.Namespace, peak: float) -> str:
    info = res["machine"]
    lines = [f"Command: `{command_line(MODULE, sys.argv[1:])}` (total "
             f"{res['minutes']:.1f} min)", "", machine_markdown(info, None),
             f"- Measured float32 matmul peak (torch.matmul 2048x2048, best of 10, the run's "
             f"{info['torch_threads']} threads) at the start, around training and at the end: "
             + ", ".join(f"{p:.0f}" for p in res["peaks"]) + f" GFLOP/s; the best, {peak:.1f},"
             " is used",
             "- Matmul rate per CPU-second (the process CPU clock over all its threads, robust "
             f"to the load): {res['peak_cpu']:.1f} GFLOP/s",
             "- 1-min load average at start, after each part and at the end: "
             + ", ".join(f"{v:.2f}" for v in res["loads"] if v is not None)
             + " (2 cores: above 2 means other jobs competed for them)", ""]
    if "inference" in res:
        r = res["inference"]
        lines += ["### Inference (default AutoencoderDecomposition, K=4, nonlinear)", "",
                  f"{r['n_spectra']} spectra x {r['n_channels']} channels; forward "
                  f"{r['forward_flops'] / 1e6:.2f} MFLOP per spectrum. Target >= 100,000 "
                  "spectra/s at 1024 channels.", ""]
        flops = {k: r.get("call_flops", {}).get(k, r["forward_flops"]) for k in r}
        rows = [[k, f"{r[k]:,.0f}", f"{flops[k] / 1e6:.2f}",
                 f"{100 * r[k] * flops[k] / peak / 1e9:.0f}",
                 "yes" if r[k] >= 1e5 else "no", f"{r[k + '_cpu']:,.0f}",
                 f"{100 * r[k + '_cpu'] * flops[k] / res['peak_cpu'] / 1e9:.0f}"]
                for k in ("reconstruct", "transform", "inverse_transform", "encode_decode")
                if k in r]
        ref = res.get("inference_ref")
        if ref:
            for row, k in zip(rows, [k for k in ("reconstruct", "transform",
                                                 "inverse_transform", "encode_decode")
                                     if k in r], strict=True):
                row += [f"{ref[k]:,.0f}" if k in ref else "-",
                        f"{r[k] / ref[k]:.1f}x" if k in ref else "-"]
        extra = [f"spectra/s at {args.reference}", "speed-up"] if ref else []
        lines += [markdown_table(["call", "spectra/s (wall)", "MFLOP / spectrum",
                                  "% matmul peak (wall)",
                                  "target met", "spectra per CPU-second",
                                  "% of the per-CPU-second peak", *extra], rows), ""]
    if "training" in res:
        r = res["training"]
        pct = 100 * r["spectra_per_s"] * r["train_flops"] / peak / 1e9
        best = 100 * r["best_round_spectra_per_s"] * r["train_flops"] / peak / 1e9
        per_cpu = r["samples_2"] / r["fit_cpu_2"]  # spectra per CPU-second, all threads
        pct_cpu = 100 * per_cpu * r["train_flops"] / res["peak_cpu"] / 1e9
        products = r.get("products", "float32")
        own = (f"{100 * r['spectra_per_s'] * r['train_flops'] / r['product_peak'] / 1e9:.0f}"
               f" (bf16 peak {r['product_peak']:.0f} GFLOP/s)" if r.get("product_peak")
               else "= the float32 column")
        lines += ["### Training (default fit, epochs='auto')", "",
                  "The matrix products of the training run in bf16 on CPUs with native bf16 "
                  "instructions (`hyperspy_mlspec.engine.budget.amp_pays`); the target is "
                  "against the float32 peak above, and the rate against the peak of the "
                  "precision actually used is given as well.", "",
                  markdown_table(
                      ["map", "batch", "rounds", "spectra seen", "fit (s)", "loop spectra/s",
                       "train MFLOP / spectrum", "% matmul peak (best round)",
                       "whole fit per CPU-second: spectra/s, % of the per-CPU peak",
                       "products", "% of their own precision's peak", "target >= 60 %"],
                      [[f"{r['n_spectra']} x {r['n_channels']}", r["batch_size"],
                        r["rounds"], r["samples"], fmt(r["fit_wall"]),
                        f"{r['spectra_per_s']:,.0f}", fmt(r["train_flops"] / 1e6),
                        f"{pct:.0f} ({best:.0f})", f"{per_cpu:,.0f}, {pct_cpu:.0f}",
                        products, own, "yes" if pct >= 60 else "no"]]), ""]
    if "streaming" in res:
        r = res["streaming"]
        def loads(key):
            return ", ".join(f"{v:.2f}" for v in r.get(key + "_loads", []) if v is not None)

        sref = res.get("streaming_ref")
        stream_extra = ([f"spectra/s at {args.reference} (load after each scan)",
                         "speed-up"] if sref else [])

        def stream_ref(key):
            if not sref:
                return []
            ref_loads = ", ".join(f"{v:.1f}" for v in sref.get(key + "_loads", []))
            return [f"{sref[key]:,.0f} ({ref_loads})", f"{r[key] / sref[key]:.1f}x"]

        lines += ["### Streaming monitor (the issue's configuration)", "",
                  f"`StreamingMonitor(None, model=ae, navigation_shape=(128, 128), "
                  f"n_channels={r['n_channels']}, n_components=4)`, other parameters "
                  f"default, {r['threads']} torch threads; one scan row of 128 spectra per "
                  f"`update()`, a whole scan of {r['spectra']} spectra (best of "
                  f"{r.get('repeats', 2)}). Target >= 10,000 spectra/s with the streaming "
                  "PCA on. Spectra per CPU-second count every thread of the process (the "
                  "model, the covariance worker, the refresh): on two free cores the wall "
                  "rate is at most twice that.", "",
                  markdown_table(["monitor", "spectra/s (wall)", "spectra per CPU-second",
                                  "PCA refreshes", "1-min load after each scan",
                                  "target met (wall)", *stream_extra],
                                 [["model + streaming PCA (4)", f"{r['with_pca']:,.0f}",
                                   f"{r.get('with_pca_cpu', float('nan')):,.0f}",
                                   r["with_pca_refreshes"], loads("with_pca"),
                                   "yes" if r["with_pca"] >= 1e4 else "no",
                                   *stream_ref("with_pca")],
                                  ["model only (n_components=None)",
                                   f"{r['model_only']:,.0f}",
                                   f"{r.get('model_only_cpu', float('nan')):,.0f}", "-",
                                   loads("model_only"), "-", *stream_ref("model_only")]]),
                  ""]
    if "methods" in res:
        lines += ["### Default methods against HyperSpy's PCA (same process)", "",
                  methods_table(res["methods"], res.get("reference"), args.reference), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
