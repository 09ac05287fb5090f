"""Benchmark of issue 6: 2-process torchrun training vs single-process training.

Usage::

    .venv/bin/python -m benchmarks.bench_distributed            # 64x64x1024 EELS map
    .venv/bin/python -m benchmarks.bench_distributed --quick    # 32x32x256, a smoke test

A synthetic EELS map (:func:`hyperspy_mlspec.data.eels_map`) is saved as ``.hspy``; the same
``hyperspy-mlspec train`` command is then run, each time as a fresh subprocess, as

* one process with 1 torch thread (the reference),
* one process with 2 torch threads (the other way to use 2 cores),
* ``torchrun --standalone --nproc_per_node=2`` with 1 thread per process,

for ``--model decomposition`` (deterministic loss: results must agree to float rounding) and
``--model denoise`` (binomial splitting draws random numbers: each process draws its own,
so results agree statistically, not bit for bit).

What "agree to float rounding" means after many steps is measured, not assumed: a fourth
run, in this process, trains the same estimator on one process with the rows of every
minibatch in reverse order. That step is mathematically identical (a mean over rows) and
differs only in the order of float additions, exactly like the 2-process step (two partial
sums instead of one); how far it drifts from the reference is the size of difference that
float rounding alone produces in this training run.

Agreement: maximum relative difference of the reconstructions of all spectra (decomposition;
denoised spectra for denoise), normalised by the largest reference value, and of the
per-epoch training / validation losses. Speed: wall time of the whole command (start-up,
file reading, initialisation, training, saving) and of the training epochs alone (sum of
the per-epoch ``seconds`` in the model's history), as ratios to the reference, with the CPU
seconds of all processes and the load average before each run: the machine has 2 cores
shared with other work, so 2 processes only help when both cores are free.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks._common import (
    Stopwatch,
    bench_parser,
    command_line,
    fmt,
    load_average,
    machine_info,
    machine_markdown,
    markdown_table,
    quiet_session,
    update_results_section,
)

TITLE = "Multi-process training with torchrun (issue 6)"
MODULE = "benchmarks.bench_distributed"
ROOT = Path(__file__).resolve().parent.parent

#: (label, processes, threads per process)
CONFIGS = (("1 process x 1 thread", 1, 1), ("1 process x 2 threads", 1, 2),
           ("torchrun 2 processes x 1 thread", 2, 1))
REVERSED = "1 process, rows of each batch reversed (rounding baseline)"


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_train(data: Path, out: Path, model_args: list[str], processes: int,
              threads: int) -> dict:
    """Run ``hyperspy-mlspec train`` once; return wall/CPU seconds and the load before."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cli = ["-m", "hyperspy_mlspec", "--threads", str(threads), "train", str(data),
           *model_args, "--device", "cpu", "--out", str(out), "--overwrite"]
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", *cli]
    else:
        cmd = [sys.executable, *cli]
    load = load_average()
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return {"wall": wall, "cpu": _children_cpu() - cpu0, "load": load,
            "command": " ".join("python" if c == sys.executable else
                                Path(c).name if c.startswith(str(data.parent)) else c
                                for c in cmd)}


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))


def _history_rel(ha: list[dict], hb: list[dict], key: str) -> float:
    if len(ha) != len(hb):
        return float("nan")
    a = np.array([h[key] for h in ha if h[key] is not None], dtype=float)
    b = np.array([h[key] for h in hb if h[key] is not None], dtype=float)
    return _rel(a, b) if a.size else float("nan")


def reversed_rows_fit(case: str, X: np.ndarray, epochs: int, batch_size: int):
    """The reference fit (same estimator, data and settings as the command), with every
    minibatch's rows reversed before the loss: the same mean, other float rounding."""
    from hyperspy_mlspec.estimators import AutoencoderDecomposition, DenoisingAutoencoder

    base = AutoencoderDecomposition if case == "decomposition" else DenoisingAutoencoder

    class Reversed(base):
        def _step_loss(self):
            step = super()._step_loss()
            return lambda x, training: step(x.flip(0), training)

    params = {"epochs": epochs, "batch_size": batch_size, "random_state": 0, "device": "cpu",
              "show_progressbar": False}
    if case == "decomposition":
        params["n_components"] = 4
    with Stopwatch() as sw:
        model = Reversed(**params).fit(X)
    return model, sw


def run(shape: tuple[int, int], n_channels: int, cases: dict[str, list[str]]) -> list[dict]:
    import hyperspy.api as hs

    from hyperspy_mlspec import load_model
    from hyperspy_mlspec.data import eels_map

    rows = []
    with tempfile.TemporaryDirectory(prefix="mlspec-ddp-") as tmp:
        data = Path(tmp) / "map.hspy"
        eels_map(shape, n_channels=n_channels, dose=50, random_state=1).save(data)
        s = hs.load(data)
        X = s.data.reshape(-1, n_channels).astype(np.float32)
        for case, model_args in cases.items():
            results = {}
            for label, processes, threads in CONFIGS:
                out = Path(tmp) / f"{case}-{processes}-{threads}.mlspec"
                timing = run_train(data, out, model_args, processes, threads)
                model = load_model(out)
                output = model.reconstruct(X) if case == "decomposition" else model.transform(X)
                results[label] = (timing, model, np.asarray(output))
                print(f"{case:13s} {label:32s} wall {timing['wall']:7.1f} s  train "
                      f"{sum(h['seconds'] for h in model.history_):7.1f} s  load "
                      f"{timing['load']}", flush=True)
            epochs = int(model_args[model_args.index("--epochs") + 1])
            batch = int(model_args[model_args.index("--batch-size") + 1])
            load = load_average()
            model, sw = reversed_rows_fit(case, X, epochs, batch)
            output = model.reconstruct(X) if case == "decomposition" else model.transform(X)
            results[REVERSED] = ({"wall": float("nan"), "cpu": sw.cpu, "load": load,
                                  "command": "in-process"}, model, np.asarray(output))
            ref_t, ref_m, ref_out = results[CONFIGS[0][0]]
            ref_train = sum(h["seconds"] for h in ref_m.history_)
            for label, (timing, model, output) in results.items():
                train_s = sum(h["seconds"] for h in model.history_)
                rows.append({
                    "case": case, "config": label, "epochs": len(model.history_),
                    "rel_output": _rel(ref_out, output),
                    "rel_val_first": _rel(np.array([ref_m.history_[0]["val_loss"]]),
                                          np.array([model.history_[0]["val_loss"]])),
                    "same_lr": [h["learning_rate"] for h in ref_m.history_]
                    == [h["learning_rate"] for h in model.history_],
                    "rel_train_loss": _history_rel(ref_m.history_, model.history_,
                                                   "train_loss"),
                    "rel_val_loss": _history_rel(ref_m.history_, model.history_, "val_loss"),
                    "final_val_loss": model.history_[-1]["val_loss"],
                    "wall": timing["wall"],
                    "wall_ratio": timing["wall"] / ref_t["wall"],
                    "train": train_s, "train_ratio": train_s / ref_train,
                    "cpu": timing["cpu"], "load": timing["load"],
                    "command": timing["command"]})
    return rows


def tables(rows: list[dict]) -> tuple[str, str]:
    agree = markdown_table(
        ["model", "run", "epochs", "max rel. diff. of outputs", "rel. diff. val loss, epoch 1",
         "max rel. diff. train loss", "max rel. diff. val loss", "same LR schedule",
         "final val loss"],
        [[r["case"], r["config"], r["epochs"], fmt(r["rel_output"]), fmt(r["rel_val_first"]),
          fmt(r["rel_train_loss"]), fmt(r["rel_val_loss"]), "yes" if r["same_lr"] else "no",
          fmt(r["final_val_loss"], 5)] for r in rows], align="lllrrrrlr")
    speed = markdown_table(
        ["model", "run", "wall s", "wall / ref", "training s", "training / ref",
         "CPU s (all processes)", "load before"],
        [[r["case"], r["config"], fmt(r["wall"]), fmt(r["wall_ratio"]), fmt(r["train"]),
          fmt(r["train_ratio"]), fmt(r["cpu"]), r["load"]] for r in rows
         if r["config"] != REVERSED], align="llrrrrrr")
    return agree, speed


def main(argv: Sequence[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = bench_parser(__doc__.splitlines()[0]).parse_args(argv)
    quiet_session()
    cmd = command_line(MODULE, argv)
    print(cmd, flush=True)
    info = machine_info()
    if args.quick:
        shape, n_channels, epochs = (32, 32), 256, 4
    else:
        shape, n_channels, epochs = (64, 64), 1024, 30
    cases = {
        "decomposition": ["--model", "decomposition", "-k", "4", "--epochs", str(epochs),
                          "--batch-size", "256", "--seed", "0"],
        "denoise": ["--model", "denoise", "--epochs", str(max(2, epochs // 3)),
                    "--batch-size", "128", "--seed", "0"],
    }
    with Stopwatch() as total:
        rows = run(shape, n_channels, cases)
    agree_md, speed_md = tables(rows)
    setup = (f"{shape[0]}x{shape[1]} pixels x {n_channels} channels (synthetic EELS, dose 50, "
             "saved as .hspy). Commands (each a fresh process, `--threads` and "
             "OMP_NUM_THREADS = threads per process): "
             + "; ".join(f"`{c}`" for c in dict.fromkeys(r["command"] for r in rows[:3]))
             + f"; the same with the denoise options `{' '.join(cases['denoise'])}`. "
             f"Reference: 1 process x 1 thread. Total {total.wall:.0f} s.")
    body = "\n\n".join([f"Command: `{cmd}`", machine_markdown(info), setup,
                        "### Agreement with the single-process run", agree_md,
                        "### Speed", speed_md])
    print(body)
    if not (args.quick or args.no_write):
        update_results_section(TITLE, body + "\n\n" + NOTES)
    return {"rows": rows, "markdown": body}


NOTES = """\
Notes (read with the tables):

- Decomposition: the loss draws no random numbers, and a 2-process step equals the
  1-process step up to the order of float additions (two partial sums of the gradients
  instead of one; first-epoch validation losses agree to ~1e-6 here, ~1e-7 on the small
  map of the tests). Over hundreds of steps such rounding differences grow, fastest in
  the first epochs where the loss falls steeply: the rounding baseline, one process whose
  only change is the order of additions inside each batch, drifts as far as or further
  than the 2-process run. So the 2-process model is as close to the reference as float
  arithmetic allows; asking for more would also fail between two single-process runs on
  different CPUs or BLAS builds. A learning-rate plateau decision that falls inside that
  rounding can flip (the LR was halved at a different epoch in the 2-process run), as it
  could between any two such runs. The tests (4 epochs, small map) check agreement to
  1e-4; the measured difference there is ~1e-7. The 2-thread single process happened to
  be bit-identical to 1 thread (torch did not split these reductions).
- Denoise (binomial splitting): every process draws its own random halves, so the models
  differ as two seeds would; compare the final validation losses, not the outputs.
- Speed: the machine was shared with other jobs (load average 6-9 on 2 cores during this
  run): read the ratios, not the seconds, and expect other ratios on an idle machine.
  Wall time includes starting Python, importing HyperSpy and torch (in every process, plus
  torchrun's own launcher), reading the file, the data statistics and initialisation
  (computed on every process) and writing the model; "training s" is the epochs alone,
  where 2 processes took 0.73x (decomposition) and 0.93x (denoise, smaller batches: more
  all-reduces per sample) of the reference. Two threads in one process were 5-14x
  slower: torch's intra-op threads wait for each other when the cores are oversubscribed
  (hence the `--threads 1` default). Data-parallel training pays off with free cores,
  several GPUs (NCCL) or several machines, for large maps.
"""


if __name__ == "__main__":
    main()
