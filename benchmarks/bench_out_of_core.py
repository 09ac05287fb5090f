"""Benchmark of issue 6: decomposition, denoising and anomaly maps out of core.

Usage::

    .venv/bin/python -m benchmarks.bench_out_of_core            # 2 GiB file (256x512x4096)
    .venv/bin/python -m benchmarks.bench_out_of_core --quick    # 64 MiB file, a smoke test
    .venv/bin/python -m benchmarks.bench_out_of_core --issue14 [--sweep]  # issue 14, below

A synthetic spectrum image of Poisson counts (float32, a mixture of three peaked spectra on
a background) is written to an ``.hspy`` file chunk by chunk (never held in memory), with
HDF5 chunks of a few map lines. Each method then runs in a fresh subprocess, twice:

* **lazy**: ``hyperspy_mlspec.signals.load(path, lazy=True)`` (``hs.load(lazy=True)``),
  then the method on the whole file;
* **in memory**: the first lines of the same file loaded into memory (a slice of 1/8 of the
  spectra), then the same call.

Methods (the same explicit epoch budget for both runs, so the work per spectrum is equal):
``s.mlspec.decomposition(4, epochs=E)`` (fit + HyperSpy's storing of loadings/factors),
``s.mlspec.denoise(epochs=E)`` followed by saving the denoised signal to ``.hspy``, and
``s.mlspec.anomaly_map(epochs=A)`` (trimmed fit, score passes). Peak memory: resident set
size of the child process sampled every 20 ms (psutil) during the call, minus the resident
size just before it (imports done, file opened); ``ru_maxrss`` of the child is reported too.
Throughput: spectra of the input per second of wall time of the call; the ratio is
in-memory spectra/s over lazy spectra/s (1 = streaming costs nothing).

``--issue14`` (section "Out of core: a fitted model on a 2 GiB file (issue 14)"): a
512x512x2048 float32 file from the package's lazy EELS generator, written block by block;
a default ``AutoencoderDecomposition(4)`` fitted on every 32nd map line (not measured);
then, in a fresh process, ``s.mlspec.anomaly_map(model=model)`` and
``s.mlspec.reconstruct(model).save(...)``, with the peak RSS of the WHOLE process (sampled
every 20 ms from before the imports) and the throughput against the same calls on an
in-memory slice. ``--sweep`` adds the lazy run on files with other HDF5 chunks and with 2
and 8 dask workers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks._common import (
    bench_parser,
    command_line,
    fmt,
    machine_info,
    machine_markdown,
    markdown_table,
    update_results_section,
)

TITLE = "Out of core: lazy files (issue 6)"
TITLE14 = "Out of core: a fitted model on a 2 GiB file (issue 14)"
MODULE = "benchmarks.bench_out_of_core"
FULL = {"shape": (256, 512), "channels": 4096, "lines_per_chunk": 4, "epochs": 1,
        "anomaly_epochs": 5}
QUICK = {"shape": (64, 128), "channels": 2048, "lines_per_chunk": 4, "epochs": 1,
         "anomaly_epochs": 5}
#: issue 14: a 2 GiB file of 512 x 512 spectra x 2048 channels; a fitted model applied
ISSUE14 = {"shape": (512, 512), "channels": 2048, "lines_per_chunk": 4, "dose": 20.0,
           "fit_epochs": 10}
SLICE = 8  # the in-memory run uses 1/SLICE of the map lines
METHODS = ("decomposition", "denoise", "anomaly_map")


# -- data -------------------------------------------------------------------------------------
def _block(block_info=None, *, channels: int, width: int, seed: int) -> np.ndarray:
    """One chunk of map lines: Poisson counts of a 3-phase mixture (deterministic per chunk)."""
    (y0, y1), = block_info[None]["array-location"][:1]
    rng = np.random.default_rng([seed, y0])
    e = np.linspace(0.0, 1.0, channels, dtype=np.float32)
    comps = np.stack([np.exp(-((e - c) ** 2) / (2 * 0.02**2)) * 8 + 1.5 * np.exp(-3 * e)
                      for c in (0.2, 0.45, 0.7)]).astype(np.float32)
    yy, xx = np.meshgrid(np.arange(y0, y1), np.arange(width), indexing="ij")
    phase = np.stack([np.sin(yy / 9.0) ** 2, np.cos(xx / 13.0) ** 2,
                      np.full(yy.shape, 0.3)], axis=-1).astype(np.float32)
    phase /= phase.sum(-1, keepdims=True)
    clean = phase @ comps * 2.0
    return rng.poisson(clean).astype(np.float32)


def write_eels_file(path: Path, shape: tuple[int, int], channels: int, lines: int,
                    seed: int = 0, dose: float = 20.0) -> float:
    """Issue 14's file: the package's lazy EELS generator (``data.eels_map(lazy=True)``:
    Poisson counts of an iron/titanium oxide with plural scattering and drift, generated
    block by block of 2048 pixels, never the whole map) saved to ``path``; returns seconds."""
    import dask
    import hyperspy.api as hs

    from hyperspy_mlspec.data import eels_map

    hs.preferences.General.show_progressbar = False
    t0 = time.perf_counter()
    s = eels_map(shape, n_channels=channels, dose=dose, rare_phase=True, random_state=seed,
                 lazy=True)
    s.metadata.General.title = "out-of-core benchmark EELS map"
    with dask.config.set(scheduler="threads", num_workers=2):
        s.save(path, chunks=(lines, shape[1], channels), compression=None, overwrite=True,
               show_progressbar=False)
    return time.perf_counter() - t0


def write_file(path: Path, shape: tuple[int, int], channels: int, lines: int,
               seed: int = 0) -> float:
    """Write the spectrum image to ``path`` block by block; returns seconds."""
    import dask.array as da
    import hyperspy.api as hs

    t0 = time.perf_counter()
    ny, nx = shape
    chunks = ((lines,) * (ny // lines) + ((ny % lines,) if ny % lines else ()), (nx,),
              (channels,))
    data = da.map_blocks(_block, channels=channels, width=nx, seed=seed, chunks=chunks,
                         dtype=np.float32)
    s = hs.signals.Signal1D(data).as_lazy()
    s.axes_manager.signal_axes[0].units = "eV"
    s.metadata.General.title = "out-of-core benchmark map"
    # uncompressed: the file really holds the data size, and reading is not gzip-bound
    s.save(path, chunks=(lines, nx, channels), compression=None, overwrite=True)
    return time.perf_counter() - t0


# -- one measured call, in a child process ---------------------------------------------------
class _RSSSampler:
    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


class _PhaseSampler(_RSSSampler):
    """Whole-process peak RSS, also per named phase (``sampler.phase = name``)."""

    def __init__(self, interval: float = 0.02) -> None:
        super().__init__(interval)
        self.phase = "start"
        self.peaks: dict[str, int] = {}

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def _sample(self) -> None:
        rss = self.proc.memory_info().rss
        self.peak = max(self.peak, rss)
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)

    def enter(self, phase: str) -> None:
        self._sample()
        self.phase = phase
        self._sample()

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self._sample()


def child14(path: str, mode: str, out_dir: str, workers: int) -> dict:
    """Issue 14 in a fresh process: open the file (lazily, or a slice into memory), then
    ``s.mlspec.anomaly_map(model=model)`` and ``s.mlspec.reconstruct(model)`` saved to
    ``.hspy``. The RSS sampler starts before the heavy imports: its peak is the whole
    process's."""
    with _PhaseSampler() as rss:
        rss.enter("imports")
        t_import = time.perf_counter()
        import dask
        import hyperspy.api as hs
        import torch

        import hyperspy_mlspec
        from hyperspy_mlspec import signals as signal_io

        hs.preferences.General.show_progressbar = False
        torch.set_num_threads(1)
        if workers:
            dask.config.set(scheduler="threads", num_workers=workers)
        t_import = time.perf_counter() - t_import
        rss.enter("open")
        model = hyperspy_mlspec.load_model(os.path.join(out_dir, "model.mlspec"))
        if mode == "lazy":
            s = signal_io.load(path, lazy=True)
        else:
            full = signal_io.load(path, lazy=True)
            s = full.inav[:, : full.data.shape[0] // SLICE]
            s.compute(show_progressbar=False)
            del full
        import gc

        gc.collect()
        n = int(np.prod(s.data.shape[:-1]))
        rss.enter("anomaly_map")
        t0 = time.perf_counter()
        score = s.mlspec.anomaly_map(model=model, show_progressbar=False)
        t1 = time.perf_counter()
        finite = float(np.isfinite(score.data).mean())
        median = float(np.nanmedian(score.data))
        rss.enter("reconstruct")
        rec = s.mlspec.reconstruct(model)
        out = os.path.join(out_dir, f"reconstruction_{mode}.hspy")
        rec.save(out, overwrite=True)
        t2 = time.perf_counter()
        del rec, score
        rss.enter("end")
    return {"method": "issue14", "mode": mode, "n_spectra": n, "seconds": t2 - t0,
            "anomaly_s": t1 - t0, "reconstruct_s": t2 - t1, "import_s": t_import,
            "spectra_per_s": n / (t2 - t0), "rss_peak": rss.peak, "rss_phases": rss.peaks,
            "score_finite": finite, "score_median": median,
            "saved_bytes": os.path.getsize(out), "workers": workers,
            "dask_workers": dask.config.get("num_workers", None) or os.cpu_count(),
            "data_bytes": int(np.prod(s.data.shape)) * 4,
            "version": hyperspy_mlspec.__version__}


def child(method: str, path: str, mode: str, epochs: int, anomaly_epochs: int,
          out_dir: str, robust: float = 0.05) -> dict:
    """Run one method on the file (``mode`` "lazy" or "memory") and measure it."""
    import resource

    import dask
    import hyperspy.api as hs
    import psutil
    import torch

    import hyperspy_mlspec
    from hyperspy_mlspec import signals as signal_io

    hs.preferences.General.show_progressbar = False
    # one core each for torch and dask: equal footing for both runs on a shared machine
    torch.set_num_threads(1)
    dask.config.set(scheduler="threads", num_workers=1)
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])  # the first Adam imports dynamo
    if mode == "lazy":
        s = signal_io.load(path, lazy=True)
    else:
        full = signal_io.load(path, lazy=True)
        s = full.inav[:, : full.data.shape[0] // SLICE]
        s.compute(show_progressbar=False)
        del full
    n = int(np.prod(s.data.shape[:-1]))
    import gc

    gc.collect()
    base = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    with _RSSSampler() as rss:
        if method == "decomposition":
            s.mlspec.decomposition(4, epochs=epochs, random_state=0, show_progressbar=False)
            s.learning_results.loadings.sum()  # stored, navigation-sized
        elif method == "denoise":
            d = s.mlspec.denoise(epochs=epochs, random_state=0, show_progressbar=False)
            d.save(os.path.join(out_dir, f"denoised_{mode}.hspy"), overwrite=True)
        elif method == "anomaly_map":
            score = s.mlspec.anomaly_map(epochs=anomaly_epochs, robust=robust,
                                         show_progressbar=False)
            assert np.isfinite(score.data).all()
        else:
            raise ValueError(method)
    seconds = time.perf_counter() - t0
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"method": method, "mode": mode, "n_spectra": n, "seconds": seconds,
            "spectra_per_s": n / seconds, "rss_before": base, "rss_peak": rss.peak,
            "rss_extra": rss.peak - base, "ru_maxrss": maxrss,
            "data_bytes": int(np.prod(s.data.shape)) * 4,
            "version": hyperspy_mlspec.__version__}


def _run_module(args: list[str], what: str) -> dict:
    """This module run as a fresh process with ``args``; the last JSON line it prints."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", MODULE, *args], capture_output=True,
                          text=True, env=env, cwd=root)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def run_child(method: str, path: Path, mode: str, cfg: dict, out_dir: Path) -> dict:
    return _run_module(["--child", method, str(path), mode, str(cfg["epochs"]),
                        str(cfg["anomaly_epochs"]), str(out_dir), str(cfg["robust"])],
                       f"{method} {mode}")


def fit_model14(path: Path, out_dir: Path, epochs: int, stride: int = 32) -> dict:
    """Issue 14's model, fitted as a user would before applying it to the whole file: the
    default ``AutoencoderDecomposition(4)`` with an explicit epoch budget on every
    ``stride``-th map line (spread over the map: every phase is seen), saved to
    ``out_dir / "model.mlspec"``. Not part of the measured work."""
    import torch

    from hyperspy_mlspec import AutoencoderDecomposition
    from hyperspy_mlspec import signals as signal_io

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    s = signal_io.load(path, lazy=True)
    sub = s.inav[:, ::stride]
    sub.compute(show_progressbar=False)
    X = sub.data.reshape(-1, sub.data.shape[-1])
    model = AutoencoderDecomposition(4, epochs=epochs, random_state=0,
                                     show_progressbar=False)
    model.fit(X)
    model.signal_axis_ = signal_io.axis_info(s.axes_manager.signal_axes[0]).to_dict()
    model.save(out_dir / "model.mlspec")
    return {"fit_spectra": int(X.shape[0]), "fit_epochs": epochs, "fit_stride": stride,
            "fit_s": time.perf_counter() - t0}


def run_child14(path: Path, mode: str, out_dir: Path, workers: int) -> dict:
    return _run_module(["--child14", str(path), mode, str(out_dir), str(workers)],
                       f"issue14 {mode}")


def report14(results: list[dict], cfg: dict, cmd: str, info: dict, size: int,
             write_s: float, fit: dict) -> str:
    """The RESULTS.md section of ``--issue14``."""
    by = {r["mode"]: r for r in results}
    rows = []
    for mode in ("lazy", "memory"):
        r = by.get(mode)
        if r is None:
            continue
        ph = r["rss_phases"]
        rows.append([mode, r["n_spectra"], f"{r['anomaly_s']:.1f}", f"{r['reconstruct_s']:.1f}",
                     f"{r['spectra_per_s']:.0f}", f"{ph.get('imports', 0) / 2**20:.0f}",
                     f"{ph.get('open', 0) / 2**20:.0f}",
                     f"{ph.get('anomaly_map', 0) / 2**20:.0f}",
                     f"{ph.get('reconstruct', 0) / 2**20:.0f}",
                     f"{r['rss_peak'] / 2**20:.0f}", f"{r['load']:.1f}"])
    table = markdown_table(
        ["run", "spectra", "anomaly_map (s)", "reconstruct + save (s)", "spectra/s",
         "peak RSS imports (MiB)", "+ model, file opened", "anomaly_map", "reconstruct + save",
         "whole process", "1-min load after"], rows)
    ny, nx = cfg["shape"]
    text = [
        f"Command: `{cmd}`", "", machine_markdown(info),
        f"- Data: `hyperspy_mlspec.data.eels_map(({ny}, {nx}), n_channels={cfg['channels']}, "
        f"dose={cfg['dose']:g}, rare_phase=True, lazy=True)` (Poisson EELS counts, float32) "
        f"saved block by block: {size / 2**30:.2f} GiB `.hspy`, uncompressed HDF5 chunks of "
        f"{cfg['lines_per_chunk']} map lines ({cfg['lines_per_chunk'] * nx} spectra, "
        f"{cfg['lines_per_chunk'] * nx * cfg['channels'] * 4 / 2**20:.0f} MiB), written in "
        f"{write_s:.0f} s.",
        f"- Model (not measured): `AutoencoderDecomposition(4, epochs={fit['fit_epochs']})`"
        f".fit on every {fit['fit_stride']}th map line ({fit['fit_spectra']} spectra spread "
        f"over the map), {fit['fit_s']:.0f} s, saved with `.save` and loaded with "
        "`hyperspy_mlspec.load_model` in the measured process.",
        "- Measured, in a fresh process per run: `s = hyperspy_mlspec.signals.load(path, "
        "lazy=True)`, `s.mlspec.anomaly_map(model=model)`, then `s.mlspec.reconstruct(model)"
        ".save(...hspy)` (a lazy result written block by block). In-memory baseline: the "
        f"first {ny // SLICE} lines ({ny * nx // SLICE} spectra) loaded into memory, the same "
        "calls. torch 1 thread; dask's default threaded scheduler "
        f"({results[0]['dask_workers']} workers).",
        "- RSS: resident memory of the whole process sampled every 20 ms (psutil) from before "
        "the first heavy import; the peak in each phase is cumulative (imports stay resident). "
        "Throughput: input spectra / wall seconds of anomaly_map + reconstruct + save.", "",
        table,
    ]
    if "lazy" in by and "memory" in by:
        peak = by["lazy"]["rss_peak"] / 2**30
        ratio = by["memory"]["spectra_per_s"] / by["lazy"]["spectra_per_s"]
        text += ["", f"Whole-process peak RSS on the {size / 2**30:.2f} GiB file: {peak:.2f} "
                 f"GiB (target < 1.0 GiB: {'met' if peak < 1.0 else 'NOT met'}); in-memory / "
                 f"lazy speed {ratio:.2f} (target <= 1.5: "
                 f"{'met' if ratio <= 1.5 else 'NOT met'})."]
    return "\n".join(text)


#: --sweep: the file's HDF5 chunks (lines per chunk; "tiles" = rsciio's default ~1 MB
#: chunks of an eagerly saved map) and dask workers; peak RSS does not grow with the file,
#: so a 64-line slice of the map (256 MiB) is used
SWEEP_CHUNKS = ("4 lines", "tiles", "32 lines")
SWEEP_WORKERS = (2, 8)


def sweep14(tmp: Path, cfg: dict) -> list[dict]:
    """Whole-process peak RSS of the lazy run for other file chunkings and worker counts."""
    from rsciio._hierarchical import get_signal_chunks

    shape, ch = (64, cfg["shape"][1]), cfg["channels"]
    rows = []
    for name in SWEEP_CHUNKS:
        chunks = (get_signal_chunks(shape + (ch,), np.float32, (2,)) if name == "tiles"
                  else (int(name.split()[0]), shape[1], ch))
        path = tmp / f"sweep_{name.replace(' ', '')}.hspy"
        write_eels_file(path, shape, ch, 4, dose=cfg["dose"])
        if name != "4 lines":  # rewrite with the chunks of this row, block by block
            import hyperspy.api as hs

            s = hs.load(path, lazy=True)
            s.save(tmp / "tmp.hspy", chunks=chunks, compression=None, overwrite=True,
                   show_progressbar=False)
            del s
            os.replace(tmp / "tmp.hspy", path)
        for workers in SWEEP_WORKERS:
            r = run_child14(path, "lazy", tmp, workers)
            r.update(chunking=name, file_chunks=list(chunks), load=os.getloadavg()[0])
            print(json.dumps(r), flush=True)
            rows.append(r)
        path.unlink()
    return rows


def sweep_table(rows: list[dict]) -> str:
    table = markdown_table(
        ["file chunks", "dask workers", "spectra/s", "peak RSS anomaly_map (MiB)",
         "peak RSS reconstruct + save (MiB)", "whole process (MiB)", "1-min load after"],
        [[f"{r['chunking']} {tuple(r['file_chunks'])}", r["workers"],
          f"{r['spectra_per_s']:.0f}", f"{r['rss_phases'].get('anomaly_map', 0) / 2**20:.0f}",
          f"{r['rss_phases'].get('reconstruct', 0) / 2**20:.0f}",
          f"{r['rss_peak'] / 2**20:.0f}", f"{r['load']:.1f}"] for r in rows])
    worst = max(r["rss_peak"] for r in rows) / 2**30
    return ("Other files and machines (`--sweep`): the same lazy run on a 64-line slice of "
            "the map (256 MiB; memory does not grow with the file) saved with other HDF5 "
            "chunks, with 2 and 8 dask worker threads (8 on these 2 cores only shows the "
            "memory of an 8-core machine; its speed is not meaningful here):\n\n" + table
            + f"\n\nLargest whole-process peak: {worst:.2f} GiB (target < 1.0 GiB: "
            f"{'met' if worst < 1.0 else 'NOT met'}).")


def main14(args, argv: Sequence[str]) -> dict:
    """``--issue14``: write the file, fit the model, measure lazy and in memory."""
    cfg = dict(ISSUE14, **({"shape": (64, 128)} if args.quick else {}))
    info = machine_info()
    cmd = command_line(MODULE, argv)
    print(cmd, flush=True)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="mlspec_ooc14_") as tmp:
        tmp = Path(tmp)
        path = tmp / "map.hspy"
        write_s = write_eels_file(path, cfg["shape"], cfg["channels"], cfg["lines_per_chunk"],
                                  dose=cfg["dose"])
        size = path.stat().st_size
        print(f"wrote {path} ({size / 2**30:.2f} GiB) in {write_s:.0f} s", flush=True)
        fit = fit_model14(path, tmp, cfg["fit_epochs"])
        print(f"fitted on {fit['fit_spectra']} spectra in {fit['fit_s']:.0f} s", flush=True)
        results = []
        for mode in args.modes:
            r = run_child14(path, mode, tmp, args.workers)
            r["load"] = os.getloadavg()[0]
            print(json.dumps(r), flush=True)
            results.append(r)
        path.unlink()  # the 2 GiB file goes before the sweep writes its small ones
        sweep = sweep14(tmp, cfg) if args.sweep else []
    text = report14(results, cfg, cmd, info, size, write_s, fit)
    if sweep:
        text += "\n\n" + sweep_table(sweep)
    print(text)
    if not args.no_write and not args.quick:
        update_results_section(TITLE14, text)
    return {"results": results, "file_bytes": size, "fit": fit, "sweep": sweep}


def _call(method: str, cfg: dict) -> str:
    if method == "decomposition":
        return f"`s.mlspec.decomposition(4, epochs={cfg['epochs']})`"
    if method == "denoise":
        return f"`s.mlspec.denoise(epochs={cfg['epochs']})` + `.save(...hspy)`"
    robust = cfg.get("robust", 0.05)
    how = ("trimmed fit: robust start + 4 rounds, 1 epoch each, and a score pass per round"
           if robust > 0 else "one plain fit, then one score pass")
    return (f"`s.mlspec.anomaly_map(epochs={cfg['anomaly_epochs']}, robust={robust:g})` "
            f"({how})")


def report(results: list[dict], cfg: dict, cmd: str, info: dict, loads: list[float],
           size: int, write_s: float, methods: Sequence[str]) -> str:
    """The RESULTS.md section for the runs done so far."""
    methods = [m for m in methods if any(r["method"] == m for r in results)]
    rows = []
    by = {(r["method"], r["mode"]): r for r in results}
    for method in methods:
        lz, mem = by[(method, "lazy")], by[(method, "memory")]
        rows.append([method, f"{lz['seconds']:.0f}", f"{lz['spectra_per_s']:.0f}",
                     f"{lz['rss_extra'] / 2**20:.0f}", f"{lz['rss_peak'] / 2**20:.0f}",
                     f"{mem['spectra_per_s']:.0f}", f"{mem['rss_extra'] / 2**20:.0f}",
                     fmt(mem["spectra_per_s"] / lz["spectra_per_s"], 2),
                     " / ".join(f"{r['load']:.1f}" if r.get("load") is not None else "-"
                                for r in (lz, mem))])
    table = markdown_table(
        ["method", "lazy time (s)", "lazy spectra/s", "lazy extra RSS (MiB)",
         "lazy peak RSS (MiB)", "in-memory spectra/s", "in-memory extra RSS (MiB)",
         "in-memory / lazy speed", "1-min load after lazy / in-memory run"], rows)
    ny, nx = cfg["shape"]
    worst_mem = max(by[(m, "lazy")]["rss_extra"] for m in methods) / 2**20
    worst_ratio = max(by[(m, "memory")]["spectra_per_s"] / by[(m, "lazy")]["spectra_per_s"]
                      for m in methods)
    text = "\n".join([
        "Command: " + ", then ".join(f"`{c}`" for c in dict.fromkeys(
            [r.get("command", cmd) for r in results] or [cmd])), "",
        machine_markdown(info),
        f"- 1-min load average at start, after each run: {', '.join(f'{x:.2f}' for x in loads)}"
        " (2 cores; above 2 means other processes competed for the CPU)",
        f"- Data: {ny}x{nx} map x {cfg['channels']} channels float32 Poisson counts, "
        f"{size / 2**30:.2f} GiB `.hspy` file, HDF5/dask chunks of {cfg['lines_per_chunk']} "
        f"map lines ({cfg['lines_per_chunk'] * nx} spectra, "
        f"{cfg['lines_per_chunk'] * nx * cfg['channels'] * 4 / 2**20:.0f} MiB); written "
        f"block by block in {write_s:.0f} s. In-memory baseline: the first {ny // SLICE} "
        f"lines ({ny * nx // SLICE} spectra) loaded into memory, same call.",
        "- Calls (fresh process each; torch 1 thread, dask threaded scheduler with 1 "
        "worker, so both runs use one core for compute, plus the source's prefetch thread): "
        + "; ".join(_call(m, by[(m, "lazy")].get("cfg", cfg)) for m in methods)
        + ". The epoch budget is explicit and equal for both runs: with `epochs='auto'` the "
        "lazy fits would run at least 15 passes over 2 GiB, longer than this shared machine "
        "allows.",
        "- Extra RSS = peak resident memory of the process during the call (psutil, every "
        "20 ms) minus its resident memory just before (imports done, file opened lazily; the "
        "in-memory run has its slice loaded already). Throughput = input spectra / wall "
        "seconds of the call.", "",
        table, "",
        f"Peak memory beyond the process's starting point on the {size / 2**30:.2f} GiB file: "
        f"at most {worst_mem:.0f} MiB (target < 1024 MiB: "
        f"{'met' if worst_mem < 1024 else 'NOT met'}). Throughput: the in-memory slice is at "
        f"most {worst_ratio:.2f}x faster per spectrum than the lazy run (target within 1.5x: "
        f"{'met' if worst_ratio <= 1.5 else 'NOT met'}).",
    ])
    if len(methods) < len(METHODS):
        text += (f"\n\nPartial run: {len(methods)} of {len(METHODS)} methods measured so far "
                 "(the section is rewritten after each method).")
    return text


# -- driver -----------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child14":
        path, mode, out_dir, workers = argv[1:5]
        print(json.dumps(child14(path, mode, out_dir, int(workers))), flush=True)
        return {}
    if argv and argv[0] == "--child":
        method, path, mode, epochs, aepochs, out_dir = argv[1:7]
        robust = float(argv[7]) if len(argv) > 7 else 0.05
        print(json.dumps(child(method, path, mode, int(epochs), int(aepochs), out_dir,
                               robust)), flush=True)
        return {}
    parser = bench_parser(__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None,
                        help="folder for the data file (default: a temporary folder)")
    parser.add_argument("--only", nargs="+", choices=METHODS, default=list(METHODS[:3]))
    parser.add_argument("--issue14", action="store_true",
                        help="issue 14: a fitted model's anomaly map and saved reconstruction "
                             "on a 2 GiB 512x512x2048 EELS file, whole-process peak RSS")
    parser.add_argument("--anomaly-robust", type=float, default=0.05,
                        help="robust fraction of anomaly_map (0: one plain fit, 1 training "
                             "pass; default 0.05: trimmed fit, 1 + 4 passes)")
    parser.add_argument("--anomaly-epochs", type=int, default=None,
                        help="epoch budget of anomaly_map (default: 5)")
    parser.add_argument("--results-json", default=None,
                        help="keep every measurement in this JSON file and report the "
                             "methods measured by earlier runs (--only) as well")
    parser.add_argument("--modes", nargs="+", choices=("lazy", "memory"),
                        default=["lazy", "memory"], help="--issue14: the runs to do")
    parser.add_argument("--sweep", action="store_true",
                        help="--issue14: also the lazy run on other file chunkings, with 2 "
                             "and 8 dask workers (a 256 MiB slice)")
    parser.add_argument("--workers", type=int, default=0,
                        help="--issue14: dask threads (default 0: dask's default)")
    args = parser.parse_args(argv)
    if args.issue14:
        return main14(args, argv)
    cfg = dict(QUICK if args.quick else FULL, robust=args.anomaly_robust)
    if args.anomaly_epochs:
        cfg["anomaly_epochs"] = args.anomaly_epochs
    title = TITLE14 if args.issue14 else TITLE
    earlier: list[dict] = []
    if args.results_json and Path(args.results_json).exists():
        earlier = [r for r in json.loads(Path(args.results_json).read_text())
                   if r["method"] not in args.only]
    info = machine_info()
    loads = [os.getloadavg()[0]]
    cmd = command_line(MODULE, argv)
    print(cmd, flush=True)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="mlspec_ooc_") as tmp:
        tmp = Path(tmp)
        path = tmp / "map.hspy"
        write_s = write_file(path, cfg["shape"], cfg["channels"], cfg["lines_per_chunk"])
        size = path.stat().st_size
        print(f"wrote {path} ({size / 2**30:.2f} GiB) in {write_s:.0f} s", flush=True)
        results = []
        for method in args.only:
            for mode in ("lazy", "memory"):
                r = run_child(method, path, mode, cfg, tmp)
                loads.append(os.getloadavg()[0])
                print(f"{method:>13} {mode:>6}: {r['seconds']:.1f} s, "
                      f"{r['spectra_per_s']:.0f} spectra/s, extra RSS "
                      f"{r['rss_extra'] / 2**20:.0f} MiB (peak {r['rss_peak'] / 2**20:.0f}"
                      f" MiB)", flush=True)
                r.update(cfg=cfg, command=cmd, load=loads[-1])
                results.append(r)
            if args.results_json:
                Path(args.results_json).write_text(json.dumps(earlier + results, indent=1))
            if not args.no_write and not args.quick:
                update_results_section(title, report(earlier + results, cfg, cmd, info, loads,
                                                     size, write_s, METHODS))
    text = report(earlier + results, cfg, cmd, info, loads, size, write_s, METHODS)
    print(text)
    if not args.no_write and not args.quick:
        update_results_section(title, text)
    return {"results": results, "file_bytes": size}


if __name__ == "__main__":
    main()
