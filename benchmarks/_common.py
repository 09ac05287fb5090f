"""Helpers shared by every benchmark in this folder.

* :func:`machine_info` / :func:`machine_markdown`: what the numbers were measured on;
* :func:`matmul_peak_gflops`: this machine's measured float32 matmul rate (the reference for
  "fraction of peak" figures);
* :class:`Stopwatch`, :func:`min_time`: wall and CPU time;
* :func:`count_forward_flops`: analytic FLOPs of a torch module's Linear/Conv layers;
* :func:`markdown_table`, :func:`update_results_section`: writing one ``## title`` section of
  ``benchmarks/RESULTS.md`` without touching the sections of other benchmarks;
* EELS accuracy metrics of the denoising benchmarks: :func:`poisson_error`,
  :func:`fe3_fraction_fit` (Fe3+ fraction from the Fe-L3 fine structure), :class:`Truth`,
  :func:`make_truth`, :func:`evaluate` and :func:`pca_best` (HyperSpy's PCA at its best K).

Every benchmark is a module ``benchmarks/bench_*.py`` with ``main(argv) -> dict`` accepting
``--quick``; :mod:`benchmarks.run_all` runs them all.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import fcntl
import hashlib
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_PATH = Path(__file__).resolve().parent / "RESULTS.md"
_RESULTS_HEADER = (
    "# Benchmark results\n\n"
    "Each section is written by one `benchmarks/bench_*.py` module (run them all with "
    "`.venv/bin/python -m benchmarks.run_all`); re-running a benchmark replaces its own "
    "section only.\n"
)


# -- command line --------------------------------------------------------------------------

def quiet_session(threads: int | None = 1) -> None:
    """Set up a benchmark process: no warnings or HyperSpy log noise, no progress bars,
    ``hyperspy_mlspec`` registered and ``threads`` torch threads (these networks are small:
    one intra-op thread is faster than two when other processes share the cores)."""
    import logging
    import warnings

    import hyperspy.api as hs
    import torch

    import hyperspy_mlspec  # noqa: F401

    warnings.filterwarnings("ignore")
    logging.getLogger("hyperspy").setLevel(logging.ERROR)
    hs.preferences.General.show_progressbar = False
    if threads is not None:
        torch.set_num_threads(threads)

def bench_parser(description: str) -> argparse.ArgumentParser:
    """Argument parser with the options every benchmark understands.

    ``--quick`` (small data, for a smoke test) and ``--no-write`` (print only, leave
    RESULTS.md alone).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small data, a smoke test")
    parser.add_argument("--no-write", action="store_true",
                        help="print the results without updating benchmarks/RESULTS.md")
    return parser


#: environment variables that change CPU performance; shown in the command when set
PERF_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
            "CUDA_VISIBLE_DEVICES")


def command_line(module: str, argv: Sequence[str]) -> str:
    """The exact command that reproduces this run, e.g. for printing and for RESULTS.md
    (performance-related environment variables that are set are shown in front)."""
    python = os.path.relpath(sys.executable) if sys.executable else "python"
    env = [f"{k}={os.environ[k]}" for k in PERF_ENV if k in os.environ]
    return " ".join([*env, python, "-m", module, *argv])


# -- machine ---------------------------------------------------------------------------------
def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (affinity), falling back to ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def load_average() -> float | None:
    """One-minute load average (None where unavailable): above the core count, other
    processes competed for the CPU while the benchmark ran."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # pragma: no cover
        return None


def git_revision() -> str | None:
    """Short commit of the repository, with ``+dirty`` when tracked files differ from it."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                             capture_output=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, text=True, capture_output=True, timeout=10,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")


def machine_info() -> dict[str, Any]:
    """Date, platform, CPU, cores and library versions, as a flat dict."""
    import numpy as np
    import torch

    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": load_average(),
        "git": git_revision(),
    }
    try:
        import hyperspy

        info["hyperspy"] = hyperspy.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


def machine_markdown(info: dict[str, Any], peak_gflops: float | None = None) -> str:
    """Markdown bullet list describing the machine (for a RESULTS.md section)."""
    lines = [
        f"- Date: {info['date']}",
        f"- Machine: {info['platform']}; CPU: {info['cpu']}; {info['usable_cores']} usable "
        f"cores (os.cpu_count() = {info['cpu_count']})"
        + (f"; GPU: {info['cuda']}" if info.get("cuda") else ""),
        f"- Python {info['python']}, numpy {info['numpy']}, torch {info['torch']} "
        f"({info['torch_threads']} threads)"
        + (f", hyperspy {info['hyperspy']}" if "hyperspy" in info else ""),
    ]
    if peak_gflops is not None:
        lines.append(f"- Measured float32 matmul peak: {peak_gflops:.1f} GFLOP/s "
                     "(torch.matmul 2048x2048, best of several runs, default threads)")
    if info.get("git"):
        lines.append(f"- Code: git commit {info['git']}")
    if info.get("load_average") is not None:
        lines.append(f"- Load average (1 min) at start: {info['load_average']}")
    return "\n".join(lines)


# -- timing ------------------------------------------------------------------------------------
class Stopwatch:
    """Context manager measuring wall time and this process's CPU time.

    Examples
    --------
    >>> with Stopwatch() as sw:
    ...     _ = sum(range(1000))
    >>> sw.wall >= 0 and sw.cpu >= 0
    True
    """

    wall: float = math.nan
    cpu: float = math.nan

    def __enter__(self) -> Stopwatch:
        self._w0, self._c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._w0
        self.cpu = time.process_time() - self._c0

    @property
    def cpu_share(self) -> float:
        """CPU seconds per wall second (about the number of busy threads; below the thread
        count when other processes took the cores)."""
        return self.cpu / self.wall if self.wall > 0 else math.nan


def min_time(fn: Callable[[], Any], repeats: int = 10, warmup: int = 1) -> float:
    """Best wall time of ``fn()`` in seconds over ``repeats`` runs (after ``warmup``)."""
    for _ in range(warmup):
        fn()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def step_times(fn: Callable[[], Any], repeats: int = 20, warmup: int = 2) -> list[float]:
    """Wall time of each of ``repeats`` calls of ``fn()`` in seconds (after ``warmup``)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def matmul_peak_gflops(n: int = 2048, repeats: int = 10, device: str = "cpu",
                       dtype: str = "float32") -> float:
    """This machine's matmul rate in GFLOP/s (float32 unless ``dtype``): best of ``repeats``
    ``n x n`` products (``2 n^3`` FLOPs each) with torch's default number of threads."""
    import torch

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=getattr(torch, dtype))

    def product():
        torch.matmul(a, b)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return 2.0 * n**3 / min_time(product, repeats=repeats, warmup=2) / 1e9


# -- FLOP counting -------------------------------------------------------------------------
def count_forward_flops(module, *args, **kwargs) -> dict[str, float]:
    """Analytic forward FLOPs of ``module(*args, **kwargs)``, per sample.

    Forward hooks count the multiply-accumulates of every convolution and every linear map:
    ``nn.Linear`` and any leaf module holding a 2-D ``(out, in)`` weight applied to the last
    axis (e.g. a constrained linear layer). FLOPs are ``2 * MACs``; element-wise work
    (activations, losses, normalisation) is not counted, as is usual. One training step is
    about ``3x`` the forward FLOPs (forward, then gradients for inputs and weights).

    Returns
    -------
    dict
        ``forward_flops`` and ``train_flops`` per sample, ``macs`` per sample and ``layers``
        (per-layer MACs per sample).
    """
    import torch
    from torch import nn
    from torch.nn.modules.conv import _ConvNd

    batch = int(args[0].shape[0])
    layers: dict[str, int] = {}
    handles = []

    def hook_for(name: str):
        def hook(mod, inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            if isinstance(mod, _ConvNd):
                k = math.prod(mod.kernel_size) * (mod.in_channels // mod.groups)
            else:
                k = int(inputs[0].shape[-1])
            layers[name] = layers.get(name, 0) + int(out.numel()) * k
        return hook

    for name, mod in module.named_modules():
        if isinstance(mod, (nn.Linear, _ConvNd)):
            handles.append(mod.register_forward_hook(hook_for(name)))
        elif not list(mod.children()):
            mats = [p for p in mod.parameters(recurse=False) if p.ndim == 2]
            if len(mats) == 1:  # a linear map with a re-parameterised weight
                handles.append(mod.register_forward_hook(hook_for(name)))
    try:
        with torch.no_grad():
            module(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    per_sample = {name: macs / batch for name, macs in layers.items()}
    macs = float(sum(per_sample.values()))
    return {"macs": macs, "forward_flops": 2.0 * macs, "train_flops": 6.0 * macs,
            "layers": per_sample}


# -- RESULTS.md --------------------------------------------------------------------------------
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                   align: str | None = None) -> str:
    """A GitHub-flavoured markdown table; ``align`` is one of ``l``/``r`` per column."""
    align = align or "l" + "r" * (len(headers) - 1)
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _section_span(lines: list[str], title: str) -> tuple[int, int] | None:
    """Line range ``[start, end)`` of the ``## title`` section (fenced code is skipped)."""
    start, fence = None, False
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fence = not fence
            continue
        if fence or not line.startswith("## "):
            continue
        if start is not None:
            return start, i
        if line[3:].strip() == title.strip():
            start = i
    return (start, len(lines)) if start is not None else None


def replace_section(text: str, title: str, markdown: str) -> str:
    """Return ``text`` with its ``## title`` section replaced by ``markdown`` (appended
    when absent). ``markdown`` is the body, without the heading.

    Examples
    --------
    >>> t = "# R\\n\\n## A\\nold\\n\\n## B\\nb\\n"
    >>> print(replace_section(t, "A", "new"))
    # R
    <BLANKLINE>
    ## A
    <BLANKLINE>
    new
    <BLANKLINE>
    ## B
    b
    <BLANKLINE>
    """
    block = [f"## {title.strip()}", "", *markdown.strip("\n").splitlines(), ""]
    lines = text.splitlines()
    span = _section_span(lines, title)
    if span is None:
        while lines and not lines[-1].strip():
            lines.pop()
        lines += [""] + block
    else:
        lines[span[0]:span[1]] = block
    return "\n".join(lines).rstrip("\n") + "\n"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive inter-process lock for ``path`` (a lock file in the temp folder, so that
    nothing extra lands in the repository)."""
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"mlspec-results-{key}.lock"
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def update_results_section(title: str, markdown: str, path: str | Path = RESULTS_PATH) -> Path:
    """Replace (or append) the ``## title`` section of RESULTS.md, atomically.

    The read-modify-write happens under an inter-process lock and the new file replaces
    the old one with ``os.replace``, so concurrent benchmarks writing different sections
    never clobber each other and readers never see a half-written file.

    Parameters
    ----------
    title
        Section heading without the ``## ``.
    markdown
        Section body.
    path
        The results file (``benchmarks/RESULTS.md`` by default).

    Returns
    -------
    Path
        The file written.
    """
    path = Path(path)
    with _locked(path):
        text = path.read_text(encoding="utf-8") if path.exists() else _RESULTS_HEADER
        new = replace_section(text, title, markdown)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(new)
            if path.exists():
                os.chmod(tmp, path.stat().st_mode & 0o777)
            else:
                os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return path


def fmt(x: float | None, digits: int = 3) -> str:
    """Compact number formatting for tables (``-`` for None/NaN)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if x != 0 and (abs(x) >= 10**digits or abs(x) < 10 ** -(digits - 1)):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


# -- EELS accuracy metrics shared by the denoising benchmarks ------------------------------
FE_WINDOW_EV = (698.0, 716.0)
NI_WINDOW_EV = (845.0, 880.0)
#: Fe atoms per formula volume relative to FeO, as in eels_map's phase library (the Fe2O3
#: reference spectrum carries this factor, the Fe3+ fraction is atomic)
FE2O3_FE_DENSITY = 0.83


def poisson_error(denoised: np.ndarray, clean: np.ndarray) -> float:
    """``mean((d - clean)^2 / clean)``; raw Poisson counts give 1."""
    if denoised.size == 0:
        return float("nan")
    return float(np.mean((denoised - clean) ** 2 / np.maximum(clean, 1e-6)))


def fe3_fraction_fit(spectra: np.ndarray, energy: np.ndarray, phase_spectra: np.ndarray,
                     shifts: np.ndarray) -> np.ndarray:
    """Per-pixel Fe3+ fraction from a linear fit of the FeO and Fe2O3 references.

    Each spectrum is first aligned by its energy drift ``shifts`` (eV, known per pixel, as
    a zero-loss-peak alignment of dual EELS would give); fitting the drift instead is
    nearly degenerate with the 1.5 eV Fe2+/Fe3+ chemical shift. Design matrix on the Fe-L3
    window: FeO and Fe2O3 (clean references at unit abundance), ``(E / 700)^-3`` and a
    constant (background, plural-scattering tail, other phases). Returns
    ``0.83 b / (a + 0.83 b)`` clipped to [0, 1] (NaN where ``a + 0.83 b <= 0``).
    """
    sel = (energy >= FE_WINDOW_EV[0]) & (energy <= FE_WINDOW_EV[1])
    e = energy[sel]
    aligned = np.stack([np.interp(e + dx, energy, row) for row, dx in zip(spectra, shifts,
                                                                          strict=True)])
    design = np.column_stack([phase_spectra[0, sel], phase_spectra[1, sel],
                              (e / 700.0) ** -3.0, np.ones(sel.sum())])
    scale = np.abs(design).max(axis=0)
    coef, *_ = np.linalg.lstsq(design / scale, aligned.T, rcond=None)
    coef = coef / scale[:, None]
    fe2, fe3 = coef[0], FE2O3_FE_DENSITY * coef[1]
    total = fe2 + fe3
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(total > 0, fe3 / total, np.nan)
    return np.clip(frac, 0.0, 1.0)


@dataclass
class Truth:
    clean: np.ndarray
    energy: np.ndarray
    phase_spectra: np.ndarray
    fe3: np.ndarray
    shift: np.ndarray
    fe_pixels: np.ndarray
    rare: np.ndarray
    ni_channels: np.ndarray


def evaluate(denoised: np.ndarray, t: Truth) -> dict[str, float]:
    """Every accuracy number of one denoised map (rows of spectra)."""
    d = np.asarray(denoised, dtype=np.float64)
    frac = fe3_fraction_fit(d[t.fe_pixels], t.energy, t.phase_spectra,
                            t.shift[t.fe_pixels])
    rare_d, rare_c = d[t.rare], t.clean[t.rare]
    return {
        "err": poisson_error(d, t.clean),
        "err_rare": poisson_error(rare_d, rare_c),
        "err_rare_ni": poisson_error(rare_d[:, t.ni_channels], rare_c[:, t.ni_channels]),
        "fe3_mae": float(np.nanmean(np.abs(frac - t.fe3[t.fe_pixels]))),
        "counts_ratio": float(d.sum() / t.clean.sum()),
    }


# -- methods ----------------------------------------------------------------------------------
def pca_best(s, t: Truth, components: Sequence[int]) -> tuple[dict, dict]:
    """HyperSpy Poisson-normalised PCA; the K with the lowest error against the truth (and,
    separately, the K with the lowest Fe3+ error: PCA's best case for each metric)."""
    n = s.axes_manager.signal_axes[0].size
    with Stopwatch() as sw:
        s.decomposition(normalize_poissonian_noise=True, print_info=False)
    by_k = {int(k): evaluate(s.get_decomposition_model(int(k)).data.reshape(-1, n), t)
            for k in components}
    best = min(by_k, key=lambda k: by_k[k]["err"])
    best_fe = min(by_k, key=lambda k: by_k[k]["fe3_mae"])
    result = dict(by_k[best], k=best, seconds=sw.wall, k_fe=best_fe,
                  fe3_mae_best_k=by_k[best_fe]["fe3_mae"])
    return result, {k: r["err"] for k, r in by_k.items()}


def make_truth(truth, s) -> Truth:
    n = s.axes_manager.signal_axes[0].size
    energy = np.asarray(s.axes_manager.signal_axes[0].axis, dtype=np.float64)
    fe3 = truth.extra["fe3_fraction"].ravel()
    iron = truth.abundances[..., :2].sum(-1).ravel()
    return Truth(
        clean=np.asarray(truth.clean, dtype=np.float64).reshape(-1, n), energy=energy,
        phase_spectra=np.asarray(truth.phase_spectra, dtype=np.float64), fe3=fe3,
        shift=np.asarray(truth.energy_shift, dtype=np.float64).ravel(),
        fe_pixels=np.isfinite(fe3) & (iron >= 0.5), rare=truth.rare_mask.ravel(),
        ni_channels=(energy >= NI_WINDOW_EV[0]) & (energy <= NI_WINDOW_EV[1]))


