"""The demo report: autoencoder decomposition and spatial denoising against HyperSpy's PCA
on data with known truth.

:func:`run_demo` generates a synthetic core-loss EELS spectrum image
(:func:`hyperspy_mlspec.data.eels_map`, with thickness variations and energy drift), fits
:class:`~hyperspy_mlspec.AutoencoderDecomposition` with a nonlinear and with a linear decoder
and HyperSpy's PCA (``s.decomposition(normalize_poissonian_noise=True, svd_solver="full")``)
at the same number of components, runs the default spatial-spectral denoiser
(``s.mlspec.denoise()``, which chooses its own settings from the map), all in the same
process, and writes a self-contained HTML
report (``index.html`` with PNG figures next to it), the same content as Markdown
(``report.md``) and the numbers as JSON (``results.json``).

Errors are measured against the noise-free truth, which only synthetic data provide:

* mean squared error ``mean((reconstruction - truth)**2)`` in counts squared;
* Poisson-normalised error ``mean((reconstruction - truth)**2 / truth)``: the squared error
  in units of the Poisson variance of each channel (the raw noisy data score about 1).

Figures use matplotlib's object-oriented API with the Agg canvas: no window is ever opened
and the user's pyplot backend is left alone.
"""

from __future__ import annotations

import html
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hyperspy_mlspec._docs import N_COMPONENTS

__all__ = ["DemoConfig", "MethodResult", "reconstruction_errors", "run_demo"]

_TITLE = "hyperspy_mlspec demo: autoencoders and spatial denoising vs HyperSpy's PCA"
#: Label of the spatial denoiser in the report.
SPATIAL = "Spatial denoising (s.mlspec.denoise)"

#: Smallest expected count used as Poisson variance (avoids dividing by ~0).
_MIN_VARIANCE = 1e-3


@dataclass
class DemoConfig:
    """Settings of the demo.

    Attributes
    ----------
    navigation_shape
        Map size in pixels (rows, columns).
    n_channels
        Energy channels.
    dose
        Mean counts per channel.
    n_components
        Number of components of every method.
    epochs
        Maximum training epochs of the autoencoders (early stopping usually ends sooner).
    drift
        RMS energy jitter in eV (:func:`~hyperspy_mlspec.data.eels_map`).
    seed
        Seed of the data and of the autoencoders.
    lazy
        Fit and apply the autoencoders on a lazy (dask) copy of the map, streamed chunk by
        chunk as a file opened with ``hs.load(..., lazy=True)`` would be (the PCA baseline
        stays in memory).
    """

    navigation_shape: tuple[int, int] = (64, 64)
    n_channels: int = 512
    dose: float = 20.0
    n_components: int = N_COMPONENTS
    epochs: int | str = "auto"
    drift: float = 0.3
    seed: int = 0
    lazy: bool = False

    @classmethod
    def quick(cls, seed: int = 0, lazy: bool = False) -> DemoConfig:
        """A small configuration that runs in a few seconds (tests, smoke checks)."""
        return cls(navigation_shape=(16, 16), n_channels=128, dose=20.0, n_components=3,
                   epochs=30, seed=seed, lazy=lazy)


@dataclass
class MethodResult:
    """Outcome of one method in the demo.

    Attributes
    ----------
    name
        Label used in the report.
    fit_seconds
        Time of the decomposition call (fitting, plus HyperSpy storing the results).
    reconstruct_seconds
        Time to build the full reconstruction.
    mse, poisson_error
        Errors against the noise-free truth (see :func:`reconstruction_errors`).
    n_epochs
        Epochs trained (autoencoders only).
    """

    name: str
    fit_seconds: float
    reconstruct_seconds: float
    mse: float
    poisson_error: float
    n_epochs: int | None = None
    extra: dict = field(default_factory=dict)


def reconstruction_errors(reconstruction: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Errors of a reconstruction against the noise-free truth.

    Parameters
    ----------
    reconstruction, truth
        Arrays of the same shape ``navigation_shape + (n_channels,)``.

    Returns
    -------
    dict
        ``mse`` (mean squared error), ``poisson_error`` (squared error divided by the
        Poisson variance ``truth``, averaged) and ``poisson_error_map`` (the latter averaged
        over channels only: one value per pixel).

    Examples
    --------
    >>> import numpy as np
    >>> truth = np.full((2, 2, 4), 4.0)
    >>> e = reconstruction_errors(truth + 2.0, truth)
    >>> float(e["mse"]), float(e["poisson_error"])
    (4.0, 1.0)
    """
    rec = np.asarray(reconstruction, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if rec.shape != truth.shape:
        raise ValueError(f"reconstruction has shape {rec.shape}, truth {truth.shape}")
    sq = (rec - truth) ** 2
    pmap = (sq / np.maximum(truth, _MIN_VARIANCE)).mean(axis=-1)
    return {"mse": float(sq.mean()), "poisson_error": float(pmap.mean()),
            "poisson_error_map": pmap}


# -- running ---------------------------------------------------------------------------------
def _fit_autoencoder(s, decoder: str, cfg: DemoConfig, show_progressbar: bool | None):
    if cfg.lazy:  # chunks of a few rows, as a lazily opened file has
        work = s.as_lazy()
        work.data = work.data.rechunk((max(1, s.data.shape[0] // 8), -1, -1))
    else:
        work = s.deepcopy()
    t0 = time.perf_counter()
    ae = work.mlspec.decomposition(n_components=cfg.n_components, decoder=decoder,
                                   epochs=cfg.epochs, random_state=cfg.seed,
                                   show_progressbar=show_progressbar)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rec = np.asarray(work.mlspec.reconstruct(ae).data)
    rec_s = time.perf_counter() - t0
    codes = np.asarray(work.mlspec.encode(ae).data)
    return ae, rec, codes, fit_s, rec_s


def _fit_pca(s, cfg: DemoConfig):
    work = s.deepcopy()
    k = cfg.n_components
    t0 = time.perf_counter()
    # exact SVD: HyperSpy's "auto" picks a randomized solver for large data, which is not
    # reproducible without a seed
    work.decomposition(normalize_poissonian_noise=True, output_dimension=k, svd_solver="full",
                       print_info=False)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rec = np.asarray(work.get_decomposition_model(k).data)
    rec_s = time.perf_counter() - t0
    lr = work.learning_results
    factors = np.asarray(lr.factors[:, :k]).T
    loadings = np.asarray(lr.loadings[:, :k]).reshape(s.data.shape[:-1] + (k,))
    return rec, factors, loadings, fit_s, rec_s


def run_demo(out_dir: str | Path, *, quick: bool = False, config: DemoConfig | None = None,
             show_progressbar: bool | None = None,
             log: Callable[[str], None] | None = None) -> Path:
    """Run the comparison and write the report into ``out_dir``.

    Parameters
    ----------
    out_dir
        Folder to write ``index.html``, ``report.md``, ``results.json`` and the PNG
        figures into (created if needed; files of an earlier run are overwritten).
    quick
        Use :meth:`DemoConfig.quick` (ignored when ``config`` is given).
    config
        Explicit settings.
    show_progressbar
        Progress bars of the training; None follows HyperSpy's preference.
    log
        Called with a line of text at each stage (e.g. ``print``); None is silent.

    Returns
    -------
    pathlib.Path
        The ``index.html`` written.

    Examples
    --------
    >>> import tempfile
    >>> from hyperspy_mlspec.report import run_demo
    >>> path = run_demo(tempfile.mkdtemp(), quick=True, show_progressbar=False)
    >>> path.name
    'index.html'
    """
    import torch

    from hyperspy_mlspec._version import __version__
    from hyperspy_mlspec.data import eels_map

    say = log or (lambda line: None)
    cfg = config or (DemoConfig.quick() if quick else DemoConfig())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    rows, cols = cfg.navigation_shape
    say(f"Generating a synthetic EELS map: {rows}x{cols} pixels, {cfg.n_channels} channels, "
        f"dose {cfg.dose:g}")
    s, truth = eels_map(cfg.navigation_shape, n_channels=cfg.n_channels, dose=cfg.dose,
                        thickness=True, drift=cfg.drift, random_state=cfg.seed,
                        return_truth=True)
    clean = np.asarray(truth.clean, dtype=np.float64)
    noisy = np.asarray(s.data)

    results: list[MethodResult] = []
    maps: dict[str, np.ndarray] = {}
    recs: dict[str, np.ndarray] = {}
    latents: dict[str, np.ndarray] = {}
    histories: dict[str, list[dict]] = {}
    device = "cpu"
    ae_linear = None
    for decoder, name in (("nonlinear", "AE (nonlinear decoder)"),
                          ("linear", "AE (linear decoder)")):
        say(f"Fitting the autoencoder with a {decoder} decoder (K={cfg.n_components}) ...")
        ae, rec, codes, fit_s, rec_s = _fit_autoencoder(s, decoder, cfg, show_progressbar)
        err = reconstruction_errors(rec, clean)
        results.append(MethodResult(name, fit_s, rec_s, err["mse"], err["poisson_error"],
                                    n_epochs=len(ae.history_),
                                    extra={"loss": ae.loss_,
                                           "normalization": ae.normalization_}))
        maps[name], recs[name], latents[name] = err["poisson_error_map"], rec, codes
        histories[name] = ae.history_
        device = ae.device_
        if decoder == "linear":
            ae_linear = ae
        say(f"  {len(ae.history_)} epochs in {fit_s:.1f} s")

    say("Denoising with the map's spatial context (s.mlspec.denoise(), default settings) ...")
    t0 = time.perf_counter()
    den = s.mlspec.denoise(show_progressbar=show_progressbar)
    den_s = time.perf_counter() - t0
    rec = np.asarray(den.data, dtype=np.float64)
    err = reconstruction_errors(rec, clean)
    op = den.metadata.MLSpec.operation_0
    results.append(MethodResult(SPATIAL, den_s, 0.0, err["mse"], err["poisson_error"],
                                extra={"noise": op.noise, "aligned": bool(op.aligned)}))
    maps[SPATIAL], recs[SPATIAL] = err["poisson_error_map"], rec
    say(f"  {den_s:.1f} s")

    say(f"Fitting HyperSpy's PCA (exact SVD, Poisson-normalised, K={cfg.n_components}) ...")
    rec, factors, loadings, fit_s, rec_s = _fit_pca(s, cfg)
    err = reconstruction_errors(rec, clean)
    results.append(MethodResult("PCA (HyperSpy)", fit_s, rec_s, err["mse"],
                                err["poisson_error"]))
    maps["PCA (HyperSpy)"], recs["PCA (HyperSpy)"] = err["poisson_error_map"], rec
    latents["PCA (HyperSpy)"] = loadings
    noise = reconstruction_errors(noisy, clean)

    say("Drawing figures ...")
    energy = np.asarray(s.axes_manager.signal_axes[0].axis)
    figures = {
        "loss_curves.png": ("Training loss of the autoencoders (train and held-out "
                            "validation split) per epoch.", _plot_losses(histories)),
        "latent_maps.png": ("Latent maps: the autoencoders' codes (``s.mlspec.encode``) and "
                            "the PCA loadings, one image per latent dimension.",
                            _plot_latent_maps(latents)),
        "components.png": ("Spectral components: the linear decoder's components "
                           "(non-negative, NMF-like) and HyperSpy's PCA factors.",
                           _plot_components(energy, ae_linear.components_, factors)),
        "error_maps.png": ("Per-pixel Poisson-normalised error against the truth (same "
                           "colour scale for every method; lower is better).",
                           _plot_error_maps(maps)),
    }
    pixel = _example_pixel(maps["PCA (HyperSpy)"])
    figures["example_spectrum.png"] = (
        f"One spectrum (pixel row {pixel[0]}, column {pixel[1]}): the noisy data, the "
        "noise-free truth and the reconstructions; below, reconstruction minus truth.",
        _plot_spectrum(energy, noisy[pixel], clean[pixel],
                       {k: v[pixel] for k, v in recs.items()}))
    for fname, (_, fig) in figures.items():
        fig.savefig(out / fname, dpi=90)

    pca = results[-1]
    context = {
        "package": __version__, "torch": torch.__version__, "device": device,
        "threads": torch.get_num_threads(), "python": platform.python_version(),
        "config": asdict(cfg), "phases": truth.phase_names,
        "noisy_mse": noise["mse"], "noisy_poisson_error": noise["poisson_error"],
        "total_seconds": time.perf_counter() - t_start,
    }
    table = _table_rows(results, pca, noise)
    captions = [(fname, caption) for fname, (caption, _) in figures.items()]
    (out / "report.md").write_text(_markdown(table, captions, context, results),
                                   encoding="utf-8")
    (out / "index.html").write_text(_html(table, captions, context, results), encoding="utf-8")
    (out / "results.json").write_text(json.dumps({
        "methods": [asdict(r) for r in results], "context": context,
        "histories": histories}, indent=2, default=float), encoding="utf-8")
    say(f"Done in {time.perf_counter() - t_start:.0f} s")
    return out / "index.html"


# -- text -----------------------------------------------------------------------------------
_HEADERS = ["Method", "MSE (counts²)", "MSE / PCA", "Poisson-normalised error",
            "Poisson error / PCA", "Fit time (s)", "Fit time / PCA", "Epochs"]


def _table_rows(results: list[MethodResult], pca: MethodResult,
                noise: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in results:
        rows.append([r.name, f"{r.mse:.4g}", f"{r.mse / pca.mse:.3f}",
                     f"{r.poisson_error:.4g}", f"{r.poisson_error / pca.poisson_error:.3f}",
                     f"{r.fit_seconds:.2f}", f"{r.fit_seconds / pca.fit_seconds:.1f}",
                     "" if r.n_epochs is None else str(r.n_epochs)])
    rows.append(["Noisy data (no model)", f"{noise['mse']:.4g}",
                 f"{noise['mse'] / pca.mse:.3f}", f"{noise['poisson_error']:.4g}",
                 f"{noise['poisson_error'] / pca.poisson_error:.3f}", "", "", ""])
    return rows


def _summary_lines(context: dict, results: list[MethodResult]) -> list[str]:
    cfg = context["config"]
    best = min(results, key=lambda r: r.poisson_error)
    pca = results[-1]
    epochs = ("`epochs=\"auto\"` (at most 600 optimiser steps, or one pass over a larger map)"
              if cfg["epochs"] == "auto" else f"at most {cfg['epochs']} epochs")
    versus = (f"PCA {pca.poisson_error:.4g}; " if best is not pca else "")
    threads = context["threads"]
    lines = [
        f"Data: synthetic core-loss EELS map (`hyperspy_mlspec.data.eels_map`), "
        f"{cfg['navigation_shape'][0]}x{cfg['navigation_shape'][1]} pixels x "
        f"{cfg['n_channels']} channels, dose {cfg['dose']:g} counts/channel, thickness "
        f"variations (plural scattering) and {cfg['drift']:g} eV energy drift, seed "
        f"{cfg['seed']}. Phases: {', '.join(context['phases'])}.",
        f"The decompositions keep K = {cfg['n_components']} components. PCA: HyperSpy's "
        "`s.decomposition(normalize_poissonian_noise=True, svd_solver=\"full\")`. "
        f"Autoencoders: `s.mlspec.decomposition`, {epochs} with early stopping, device "
        f"{context['device']} ({threads} torch thread{'s' if threads > 1 else ''})"
        + (", fitted and applied on a lazy (dask) copy of the map, chunk by chunk."
           if cfg.get("lazy") else "."),
        "Spatial denoising: `s.mlspec.denoise()` with its defaults (it pools each pixel's "
        "neighbourhood, chooses how far from a held-out split of the counts and aligns "
        "the energy drift when it finds one); it keeps no fixed K and runs on the map in "
        "memory.",
        f"Lowest Poisson-normalised error: **{best.name}** ({best.poisson_error:.4g}; "
        f"{versus}the noisy data themselves {context['noisy_poisson_error']:.3g}).",
        f"Total run time {context['total_seconds']:.0f} s; hyperspy_mlspec "
        f"{context['package']}, torch {context['torch']}, Python {context['python']}.",
    ]
    return lines


def _markdown(table: list[list[str]], captions: list[tuple[str, str]], context: dict,
              results: list[MethodResult]) -> str:
    md = [f"# {_TITLE}", ""]
    md += [f"- {line}" for line in _summary_lines(context, results)]
    md += ["", "## Errors against the noise-free truth and fit times", "",
           "| " + " | ".join(_HEADERS) + " |",
           "|" + "|".join("---" for _ in _HEADERS) + "|"]
    md += ["| " + " | ".join(row) + " |" for row in table]
    md += ["", "Ratios below 1 mean better (or faster) than PCA. The Poisson-normalised error "
           "is the squared error in units of the Poisson variance; the noisy data score ~1.",
           ""]
    md += ["## Figures", ""]
    for fname, caption in captions:
        md += [f"![{caption}]({fname})", "", caption.replace("``", "`"), ""]
    return "\n".join(md)


def _inline_markdown(text: str) -> str:
    """Escape for HTML and turn the few Markdown marks used here into tags."""
    import re

    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`{1,2}(.+?)`{1,2}", r"<code>\1</code>", text)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #bbb;padding:4px 9px;
text-align:right}th{background:#eee}td:first-child,th:first-child{text-align:left}
figure{margin:1.5em 0}img{max-width:100%;border:1px solid #ddd}figcaption{color:#555}
code{background:#f3f3f3;padding:0 3px}
"""


def _html(table: list[list[str]], captions: list[tuple[str, str]], context: dict,
          results: list[MethodResult]) -> str:
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{esc(_TITLE)}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>{esc(_TITLE)}</h1><ul>"]
    parts += [f"<li>{_inline_markdown(line)}</li>" for line in _summary_lines(context, results)]
    parts += ["</ul>", "<h2>Errors against the noise-free truth and fit times</h2>",
              '<table id="errors"><thead><tr>']
    parts += [f"<th>{esc(h)}</th>" for h in _HEADERS]
    parts.append("</tr></thead><tbody>")
    for row in table:
        parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
    parts += ["</tbody></table>",
              "<p>Ratios below 1 mean better (or faster) than PCA. The Poisson-normalised "
              "error is the squared error in units of the Poisson variance; the noisy data "
              "score ~1.</p>", "<h2>Figures</h2>"]
    for fname, caption in captions:
        parts.append(f'<figure><img src="{esc(fname)}" alt="{esc(caption)}">'
                     f"<figcaption>{_inline_markdown(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


# -- figures ---------------------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _plot_losses(histories: dict[str, list[dict]]):
    fig = _figure(7, 4)
    ax = fig.add_subplot()
    for (name, hist), colour in zip(histories.items(), ("C0", "C1"), strict=False):
        epochs = [h["epoch"] for h in hist]
        ax.plot(epochs, [h["train_loss"] for h in hist], color=colour, label=f"{name}: train")
        val = [h["val_loss"] for h in hist]
        if any(v is not None for v in val):
            ax.plot(epochs, [np.nan if v is None else v for v in val], color=colour, ls="--",
                    label=f"{name}: validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (per value, Poisson deviance or squared error)")
    later = [v for hist in histories.values() for h in hist[2:]
             for v in (h["train_loss"], h["val_loss"]) if v is not None and np.isfinite(v)]
    if later:  # the first epochs would squash the interesting part
        low, high = min(later), max(later)
        ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low) + 1e-12)
    ax.legend(fontsize=8)
    return fig


def _plot_latent_maps(latents: dict[str, np.ndarray]):
    k = max(v.shape[-1] for v in latents.values())
    fig = _figure(2.3 * k + 0.6, 2.3 * len(latents))
    axes = fig.subplots(len(latents), k, squeeze=False)
    for i, (name, codes) in enumerate(latents.items()):
        for j in range(k):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= codes.shape[-1]:
                ax.set_visible(False)
                continue
            im = ax.imshow(codes[..., j], cmap="viridis")
            fig.colorbar(im, ax=ax, shrink=0.8)
            ax.set_title(f"{j}", fontsize=9)
            if j == 0:
                ax.set_ylabel(name, fontsize=9)
    return fig


def _plot_components(energy: np.ndarray, ae_components: np.ndarray, pca_factors: np.ndarray):
    k = ae_components.shape[0]
    fig = _figure(9, 1.8 * k + 0.6)
    axes = fig.subplots(k, 2, squeeze=False, sharex=True)
    for j in range(k):
        axes[j, 0].plot(energy, ae_components[j], color="C1")
        axes[j, 1].plot(energy, pca_factors[j], color="C2")
        axes[j, 0].set_ylabel(f"component {j}", fontsize=9)
    axes[0, 0].set_title("AE linear decoder components")
    axes[0, 1].set_title("PCA factors (HyperSpy)")
    axes[-1, 0].set_xlabel("energy loss (eV)")
    axes[-1, 1].set_xlabel("energy loss (eV)")
    return fig


def _plot_error_maps(maps: dict[str, np.ndarray]):
    fig = _figure(3.3 * len(maps) + 0.8, 3.4)
    axes = fig.subplots(1, len(maps), squeeze=False)[0]
    vmax = float(max(np.percentile(m, 99) for m in maps.values()))
    im = None
    for ax, (name, m) in zip(axes, maps.items(), strict=True):
        im = ax.imshow(m, cmap="magma", vmin=0, vmax=vmax)
        ax.set_title(f"{name}\nmean {m.mean():.3g}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="Poisson-normalised error")
    return fig


def _example_pixel(error_map: np.ndarray) -> tuple[int, ...]:
    """The pixel whose PCA error is closest to the median: a typical, not a chosen, case."""
    flat = np.abs(error_map - np.median(error_map)).ravel()
    return tuple(int(i) for i in np.unravel_index(int(np.argmin(flat)), error_map.shape))


def _plot_spectrum(energy: np.ndarray, noisy: np.ndarray, clean: np.ndarray,
                   recs: dict[str, np.ndarray]):
    fig = _figure(9, 5.5)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1.4))
    top.plot(energy, noisy, color="0.65", lw=0.8, drawstyle="steps-mid", label="noisy data")
    top.plot(energy, clean, color="k", lw=1.6, label="truth (noise-free)")
    for (name, rec), colour in zip(recs.items(), ("C0", "C1", "C3", "C2"), strict=False):
        top.plot(energy, rec, color=colour, lw=1.0, label=name)
        bottom.plot(energy, rec - clean, color=colour, lw=0.8)
    bottom.axhline(0, color="k", lw=0.8)
    top.set_ylabel("counts")
    top.legend(fontsize=8)
    bottom.set_ylabel("minus truth")
    bottom.set_xlabel("energy loss (eV)")
    return fig
