"""Generate the figures of the documentation into ``docs/_static/``.

Usage (from the repository root)::

    .venv/bin/python docs/make_figures.py              # every figure
    .venv/bin/python docs/make_figures.py denoising    # only the named ones

Every figure is made from the built-in synthetic data (:mod:`hyperspy_mlspec.data`) with
small maps and few epochs, single-threaded, so the whole run takes a minute or two on a
laptop CPU. Fixed seeds: re-running gives the same figures on the same machine. Matplotlib
uses the Agg backend (no window is opened).
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# the repository's own package and benchmark helpers, not an installed copy
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
OUT = Path(__file__).resolve().parent / "_static"
DPI = 80


def _setup():
    import logging

    import hyperspy.api as hs
    import torch

    torch.set_num_threads(1)  # small networks train fastest single-threaded
    hs.preferences.General.show_progressbar = False
    logging.getLogger("hyperspy").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def _save(fig, name: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    print(f"  wrote {path.relative_to(OUT.parent.parent)} ({path.stat().st_size / 1e3:.0f} kB)")


def _imshow(ax, image, title, cmap="viridis", **kwargs):
    im = ax.imshow(image, cmap=cmap, interpolation="nearest", **kwargs)
    ax.set_title(title, fontsize="medium")
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def _energy(signal) -> np.ndarray:
    return np.asarray(signal.axes_manager.signal_axes[0].axis)


# -- synthetic data ---------------------------------------------------------------------------
def fig_data() -> None:
    """The two generators: phase maps, thickness and pure-phase spectra."""
    from hyperspy_mlspec.data import eds_map, eels_map

    eels, te = eels_map((48, 48), n_channels=512, dose=20, rare_phase=True,
                        rare_fraction=0.01, return_truth=True)
    eds, td = eds_map((48, 48), n_channels=512, dose=20, rare_phase=True,
                      rare_fraction=0.01, return_truth=True)
    fig, axes = plt.subplots(2, 4, figsize=(14, 6.2),
                             gridspec_kw={"width_ratios": [1, 1, 1, 2.2]})
    for row, (s, truth, label) in enumerate(((eels, te, "EELS"), (eds, td, "EDS"))):
        cmap = plt.get_cmap("tab10", truth.n_phases)
        _imshow(axes[row, 0], truth.phase_map, f"{label}: phase map", cmap=cmap,
                vmin=-0.5, vmax=truth.n_phases - 0.5)
        im = _imshow(axes[row, 1], truth.thickness,
                     "thickness t/λ" if label == "EELS" else "relative mass thickness",
                     cmap="magma")
        fig.colorbar(im, ax=axes[row, 1], shrink=0.8)
        im = _imshow(axes[row, 2], s.data.sum(-1), "total counts", cmap="gray")
        fig.colorbar(im, ax=axes[row, 2], shrink=0.8)
        e = _energy(s)
        ax = axes[row, 3]
        for i, name in enumerate(truth.phase_names):
            ax.plot(e, truth.phase_spectra[i], color=cmap(i), lw=1.2, label=name)
        iy, ix = np.argwhere(truth.phase_map == 0)[0]
        ax.plot(e, s.data[iy, ix], color="0.5", lw=0.6, alpha=0.8,
                label=f"one noisy pixel ({truth.phase_names[0]})")
        if label == "EDS":
            ax.set_yscale("log")
            ax.set_ylim(0.5, 60 * truth.phase_spectra[:, e > 0.3].max())  # room for the legend
        ax.set_xlabel(f"{s.axes_manager.signal_axes[0].name} "
                      f"({s.axes_manager.signal_axes[0].units})")
        ax.set_ylabel("counts")
        ax.set_title(f"{label}: pure-phase spectra (truth) and data", fontsize="medium")
        ax.legend(fontsize="x-small", loc="upper right")
    fig.tight_layout()
    _save(fig, "data.png")


# -- decomposition ----------------------------------------------------------------------------
def fig_decomposition() -> None:
    """Loadings and factors of a linear-decoder autoencoder, a reconstruction, the loss."""
    from hyperspy_mlspec.data import eels_map

    s, truth = eels_map((48, 48), n_channels=256, dose=50, return_truth=True)
    ae = s.mlspec.decomposition(n_components=3, decoder="linear", random_state=0)
    rec = s.mlspec.reconstruct(ae)
    loadings = s.get_decomposition_loadings()
    factors = s.get_decomposition_factors()
    e = _energy(s)
    fig = plt.figure(figsize=(13, 6.4))
    grid = fig.add_gridspec(2, 6)
    for k in range(3):
        ax = fig.add_subplot(grid[0, 2 * k:2 * k + 2])
        im = _imshow(ax, loadings.data[k], f"loading {k} (learning_results)", cmap="viridis")
        fig.colorbar(im, ax=ax, shrink=0.8)
    ax = fig.add_subplot(grid[1, 0:2])
    for k in range(3):
        ax.plot(e, factors.data[k], lw=1.1, label=f"factor {k}")
    ax.set_xlabel("Energy loss (eV)")
    ax.set_title("factors (non-negative, decoder='linear')", fontsize="medium")
    ax.legend(fontsize="small")
    ax = fig.add_subplot(grid[1, 2:4])
    iy, ix = 24, 24
    ax.plot(e, s.data[iy, ix], color="0.6", lw=0.7, label="data (Poisson noise)")
    ax.plot(e, truth.clean[iy, ix], color="k", lw=1.2, label="noise-free truth")
    ax.plot(e, rec.data[iy, ix], color="C3", lw=1.2, ls="--", label="s.mlspec.reconstruct")
    ax.set_xlabel("Energy loss (eV)")
    ax.set_title(f"pixel ({ix}, {iy})", fontsize="medium")
    ax.legend(fontsize="small")
    ax = fig.add_subplot(grid[1, 4:6])
    hist = ae.history_
    ax.plot([h["epoch"] for h in hist], [h["train_loss"] for h in hist], label="train")
    if hist and hist[0].get("val_loss") is not None:
        ax.plot([h["epoch"] for h in hist], [h["val_loss"] for h in hist], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("Poisson deviance")
    ax.set_title("ae.history_", fontsize="medium")
    ax.legend(fontsize="small")
    fig.tight_layout()
    _save(fig, "decomposition.png")


# -- denoising --------------------------------------------------------------------------------
def fig_denoising() -> None:
    """Low-dose EELS: noisy, denoised and true spectra; residual statistics map."""
    from hyperspy_mlspec.data import eels_map

    s, truth = eels_map((32, 32), n_channels=256, dose=3, return_truth=True)
    d, stats = s.mlspec.denoise(spatial=False, residual_statistics=True, random_state=0)
    e = _energy(s)
    fig, axes = plt.subplots(1, 5, figsize=(18, 3.8),
                             gridspec_kw={"width_ratios": [2.4, 1, 1, 1, 1.2]})
    iy, ix = 10, 20
    ax = axes[0]
    ax.plot(e, s.data[iy, ix], color="0.6", lw=0.7, label="data, dose 3 counts/channel")
    ax.plot(e, truth.clean[iy, ix], color="k", lw=1.3, label="noise-free truth")
    ax.plot(e, d.data[iy, ix], color="C3", lw=1.2, label="s.mlspec.denoise()")
    ax.set_xlabel("Energy loss (eV)")
    ax.set_ylabel("counts")
    ax.set_title(f"pixel ({ix}, {iy})", fontsize="medium")
    ax.legend(fontsize="small")
    # counts in the O-K window (525-550 eV), mapped as a microscopist would
    window = (e > 525) & (e < 550)
    images = [data[..., window].sum(-1) for data in (s.data, d.data, truth.clean)]
    lo, hi = np.percentile(images[2], [0.5, 99.5])
    for ax, image, title in zip(axes[1:4], images, ("O-K window, raw", "denoised",
                                                    "noise-free truth"), strict=True):
        _imshow(ax, image, title, cmap="inferno", vmin=lo, vmax=hi)
    chi2 = stats["chi2_per_channel"].data
    im = _imshow(axes[4], chi2, "chi2_per_channel", cmap="coolwarm", vmin=0.5, vmax=1.5)
    fig.colorbar(im, ax=axes[4], shrink=0.85)
    fig.tight_layout()
    _save(fig, "denoising.png")
    clean = np.asarray(truth.clean)
    print(f"  mean chi2 per channel {np.nanmean(chi2):.3f}, counts ratio "
          f"{d.data.sum() / s.data.sum():.4f}, Poisson-normalised error vs truth: raw "
          f"{np.mean((s.data - clean) ** 2 / clean):.3f}, denoised "
          f"{np.mean((d.data - clean) ** 2 / clean):.4f}")


def fig_spatial() -> None:
    """Spatial denoising on a map with sharp boundaries, tiny inclusions and drift: what
    pooling gains and what it costs, against HyperSpy's PCA at its best K."""
    from scipy.ndimage import gaussian_filter

    from benchmarks._maps import eels_sharp_map

    s, clean, info = eels_sharp_map((64, 64), 1024, 10.0, random_state=1)
    e = _energy(s)
    d, stats, shift = s.mlspec.denoise(residual_statistics=True, return_shift=True)
    err = lambda x: float(np.mean((np.asarray(x, float) - clean) ** 2 / clean))  # noqa: E731
    p = s.deepcopy()
    p.decomposition(normalize_poissonian_noise=True, print_info=False)
    best_k = min(range(1, 13), key=lambda k: err(p.get_decomposition_model(k).data))
    pca = np.asarray(p.get_decomposition_model(best_k).data, dtype=float)
    blur = gaussian_filter(s.data.astype(float), (1.5, 1.5, 0))
    fig, axes = plt.subplots(2, 4, figsize=(16, 8.2))
    def jump(x, edge, pre):
        """Edge-jump map: counts on the edge minus the pre-edge counts (same width)."""
        on = (e > edge[0]) & (e < edge[1])
        off = (e > pre[0]) & (e < pre[1])
        return x[..., on].sum(-1) - x[..., off].sum(-1) * on.sum() / off.sum()

    images = [jump(x, (851, 858), (838, 845)) for x in (s.data, pca, d.data, clean)]
    lo, hi = np.percentile(images[3], [1, 99.9])
    titles = ("Ni-L3 jump, raw (dose 10)", f"HyperSpy PCA, best K = {best_k}",
              "s.mlspec.denoise()", "noise-free truth")
    for ax, image, title in zip(axes[0], images, titles, strict=True):
        _imshow(ax, image, title, cmap="inferno", vmin=lo, vmax=hi)
    # a profile across grain boundaries: the Ti-L jump along one row
    row = 20
    ax = axes[1, 0]
    x = np.arange(64)
    for data, label, style in ((clean, "truth", dict(color="k", lw=2)),
                               (blur, "Gaussian blur 1.5 px", dict(color="C1")),
                               (pca, f"PCA K={best_k}", dict(color="C0")),
                               (d.data, "denoise()", dict(color="C3"))):
        ax.plot(x, jump(data[row], (456, 468), (440, 452)), label=label, **style)
    ax.plot(x, jump(s.data[row], (456, 468), (440, 452)), ".", color="0.6", ms=3,
            label="raw")
    ax.set_title(f"Ti-L jump along row {row} (grain boundaries)", fontsize="medium")
    ax.set_xlabel("pixel")
    ax.legend(fontsize="x-small")
    pix_err = ((d.data - clean) ** 2 / clean).mean(-1)
    pca_err = ((pca - clean) ** 2 / clean).mean(-1)
    vmax = float(np.percentile(pca_err, 99))
    im = _imshow(axes[1, 1], pix_err, f"denoise() error (mean {pix_err.mean():.4f})",
                 cmap="magma", vmin=0, vmax=vmax)
    fig.colorbar(im, ax=axes[1, 1], shrink=0.8)
    im = _imshow(axes[1, 2], pca_err, f"PCA error (mean {pca_err.mean():.4f})",
                 cmap="magma", vmin=0, vmax=vmax)
    fig.colorbar(im, ax=axes[1, 2], shrink=0.8)
    ax = axes[1, 3]
    true = info["shift_channels"] * s.axes_manager[-1].scale
    est = shift.data
    order = np.arange(true.size)
    ax.plot(order, (true - true.mean()).ravel(), ",", color="0.6", label="true (per pixel)")
    ax.plot(order, (est - np.nanmean(est)).ravel(), color="C3", lw=1,
            label="estimate_shift / return_shift")
    ax.set_xlabel("pixel, acquisition order")
    ax.set_ylabel("energy shift (eV)")
    ax.set_title("drift along the scan", fontsize="medium")
    ax.legend(fontsize="x-small")
    fig.tight_layout()
    _save(fig, "spatial.png")
    rare = info["rare_mask"]
    bnd = info["boundary_mask"]
    for name, data in (("raw", s.data), ("PCA", pca), ("blur", blur), ("denoise", d.data)):
        x = np.asarray(data, float)
        print(f"  {name}: err {err(x):.4f}, boundary pixels "
              f"{np.mean(((x - clean) ** 2 / clean)[bnd]):.4f}, inclusion pixels "
              f"{np.mean(((x - clean) ** 2 / clean)[rare]):.4f}")
    print(f"  chi2 per channel {np.nanmean(stats['chi2_per_channel'].data):.3f}; aligned "
          f"{d.metadata.MLSpec.operation_0.aligned}; shift RMS error (slow part) "
          f"{np.nanstd((est - np.nanmean(est)) - (true - true.mean())):.3f} eV")


# -- anomalies, clusters, embeddings ----------------------------------------------------------
def fig_anomaly() -> None:
    """EDS map with a rare Cu-rich phase: anomaly map, detected regions, region spectrum;
    then the latent phase map and the 2-D embedding from the same model."""
    from hyperspy_mlspec import plot_embedding
    from hyperspy_mlspec.data import eds_map

    s, truth = eds_map((64, 64), n_channels=128, dose=20, rare_phase=True,
                       rare_fraction=0.005, return_truth=True)
    found = s.mlspec.anomalies()
    print(f"  {found!r}")
    e = _energy(s)
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.7),
                             gridspec_kw={"width_ratios": [1, 1, 1, 2]})
    from matplotlib.colors import LogNorm

    im = _imshow(axes[0], found.score.data, "anomaly_map()", cmap="magma", norm=LogNorm())
    fig.colorbar(im, ax=axes[0], shrink=0.85, label="Poisson deviance per channel")
    _imshow(axes[1], found.labels.data, f"anomalies(): {len(found.regions)} region(s)",
            cmap="gray")
    _imshow(axes[2], truth.rare_mask, "truth: rare-phase pixels", cmap="gray")
    ax = axes[3]
    ax.plot(e, s.data.reshape(-1, e.size).mean(0), color="0.4", lw=1.0, label="map mean")
    if found.regions:
        r = found.regions[0]
        ax.plot(e, r.mean_spectrum.data, color="C3", lw=1.0,
                label=f"region 1 mean ({r.size} px)")
    ax.set_yscale("log")
    ax.set_ylim(0.3, None)
    ax.set_xlim(0, 10)
    ax.set_xlabel("Energy (keV)")
    ax.set_title("regions[0].mean_spectrum", fontsize="medium")
    ax.legend(fontsize="small")
    fig.tight_layout()
    _save(fig, "anomaly.png")

    phases = s.mlspec.cluster(found.model, n_clusters=3)
    emb = s.mlspec.embedding_2d(found.model)
    print(f"  {phases!r}")
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.7), gridspec_kw={"width_ratios": [1, 1, 1.4]})
    cmap = plt.get_cmap("tab10", 10)
    _imshow(axes[0], phases.labels.data, "cluster(): latent phase map", cmap=cmap,
            vmin=-0.5, vmax=9.5)
    _imshow(axes[1], truth.phase_map, "truth: phase map", cmap="tab10",
            vmin=-0.5, vmax=9.5)
    plot_embedding(emb, phases, ax=axes[2], marker_size=4)
    axes[2].set_title("embedding_2d(), coloured by cluster", fontsize="medium")
    fig.tight_layout()
    _save(fig, "cluster.png")


def fig_phase_map() -> None:
    """EELS map with Fe2+/Fe3+, a thickness gradient and a drift of 2 channels at dose 10:
    ``cluster()`` phase map (and without Potts smoothing), the truth, HyperSpy PCA +
    k-means, and the estimated energy shift."""
    from sklearn.metrics import adjusted_rand_score

    from hyperspy_mlspec.data import eels_map

    s, truth = eels_map((64, 64), 1024, 10, drift=1.0, random_state=0, return_truth=True)
    phases = s.mlspec.cluster(n_clusters=3)
    raw = s.mlspec.cluster(n_clusters=3, spatial=False)
    sp = s.deepcopy()
    sp.decomposition(normalize_poissonian_noise=True, print_info=False)
    sp.cluster_analysis("decomposition", number_of_components=4, n_clusters=3,
                        preprocessing=None, n_init=10, random_state=0)
    pca = np.argmax(sp.learning_results.cluster_labels, axis=0).reshape(64, 64)
    g = truth.phase_map.ravel()

    def ari(lab):
        return adjusted_rand_score(g, np.asarray(lab).ravel())

    print(f"  {phases!r}; ARI {ari(phases.labels.data):.3f} (no Potts "
          f"{ari(raw.labels.data):.3f}, PCA+k-means {ari(pca):.3f}), beta {phases.beta:.2f}")
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.6))
    kw = {"cmap": plt.get_cmap("tab10", 10), "vmin": -0.5, "vmax": 9.5}
    _imshow(axes[0], truth.phase_map, "truth: FeO / Fe2O3 / TiO2", **kw)
    _imshow(axes[1], phases.labels.data, f"cluster(): ARI {ari(phases.labels.data):.2f}",
            **kw)
    _imshow(axes[2], raw.labels.data, f"spatial=False: ARI {ari(raw.labels.data):.2f}",
            **kw)
    _imshow(axes[3], pca, f"HyperSpy PCA + k-means: ARI {ari(pca):.2f}", **kw)
    im = _imshow(axes[4], phases.shift.data, "phases.shift (eV)", cmap="coolwarm")
    fig.colorbar(im, ax=axes[4], shrink=0.85)
    fig.tight_layout()
    _save(fig, "phase_map.png")


def fig_mae() -> None:
    """Masked autoencoder: pretrain on a pool of maps with different channel counts and
    calibrations, embed a new map, train a 100-label linear probe, predict its phase map."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from hyperspy_mlspec import MaskedAutoencoder
    from hyperspy_mlspec.data import eels_map

    pool = []
    for seed, n_channels in ((11, 256), (12, 384), (13, 320)):
        m = eels_map((40, 40), n_channels=n_channels, random_state=seed)
        if n_channels == 320:  # one map calibrated in keV: the pool takes it as it is
            ax = m.axes_manager.signal_axes[0]
            ax.units, ax.offset, ax.scale = "keV", ax.offset / 1e3, ax.scale / 1e3
        pool.append(m)
    mae = MaskedAutoencoder(256, 16, embed_dim=64, depth=2, decoder_dim=32, decoder_depth=1,
                            heads=4, decoder_heads=2, epochs=40, random_state=0,
                            show_progressbar=False).fit(pool)
    s, truth = eels_map((48, 48), n_channels=256, random_state=0, return_truth=True)
    labels = truth.phase_map
    rng = np.random.default_rng(0)
    unlabelled = np.ones(labels.shape, dtype=bool)  # True = excluded from the probe
    unlabelled.ravel()[rng.choice(labels.size, 100, replace=False)] = False
    mae.fit_probe(s, labels, navigation_mask=unlabelled)
    phase = s.mlspec.predict(mae)  # a map: the labels are spread over the map graph
    plain = s.mlspec.predict(mae, graph=False)  # pixel by pixel
    acc = (phase.data[unlabelled] == labels[unlabelled]).mean()
    acc_plain = (plain.data[unlabelled] == labels[unlabelled]).mean()
    X = np.log1p(s.data.reshape(-1, 256))
    X = (X - X.mean(1, keepdims=True)) / X.std(1, keepdims=True)
    flat = ~unlabelled.ravel()
    pca = make_pipeline(PCA(4), StandardScaler(), LogisticRegression(max_iter=5000))
    pca_map = pca.fit(X[flat], labels.ravel()[flat]).predict(X).reshape(labels.shape)
    acc_pca = (pca_map[unlabelled] == labels[unlabelled]).mean()
    print(f"  accuracy on the unlabelled pixels: MAE + graph {acc:.3f}, MAE probe "
          f"{acc_plain:.3f}, PCA+logistic {acc_pca:.3f}")
    fig, axes = plt.subplots(1, 5, figsize=(18, 3.6),
                             gridspec_kw={"width_ratios": [1, 1, 1, 1, 1.3]})
    kw = dict(cmap="tab10", vmin=-0.5, vmax=9.5)
    _imshow(axes[0], labels, "truth: phase map (+ 100 labels)", **kw)
    yy, xx = np.nonzero(~unlabelled)
    axes[0].scatter(xx, yy, s=6, c="k", marker="x", lw=0.8)
    _imshow(axes[1], phase.data, f"MAE + map graph, default ({acc:.0%})", **kw)
    _imshow(axes[2], plain.data, f"MAE probe, graph=False ({acc_plain:.0%})", **kw)
    _imshow(axes[3], pca_map, f"PCA + logistic ({acc_pca:.0%})", **kw)
    ax = axes[4]
    ax.plot([h["train_loss"] for h in mae.history_], label="train")
    ax.plot([h["val_loss"] for h in mae.history_], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE on masked bins")
    ax.set_title(f"pretraining on {sum(p['n_spectra'] for p in mae.pool_)} spectra",
                 fontsize="medium")
    ax.legend(fontsize="small")
    fig.tight_layout()
    _save(fig, "mae.png")


# -- real-time monitoring ---------------------------------------------------------------------
def fig_streaming() -> None:
    """A simulated acquisition watched by a StreamingMonitor: the live anomaly map part-way
    and at the end, and a latent code map."""
    from hyperspy_mlspec import AutoencoderDecomposition, StreamingMonitor
    from hyperspy_mlspec.data import eds_map, simulate_acquisition

    # the model is trained beforehand on a reference map of the same material
    reference = eds_map((64, 64), n_channels=128, dose=20, random_state=1)
    model = AutoencoderDecomposition(n_components=4, epochs=40, random_state=0,
                                     show_progressbar=False)
    model.fit(reference.data.reshape(-1, 128))
    s, truth = eds_map((64, 64), n_channels=128, dose=20, rare_phase=True,
                       rare_fraction=0.005, return_truth=True)
    snapshots = {}
    with StreamingMonitor(s, model=model, n_components=3, refresh_every=512,
                          num_threads=1) as monitor:
        for step, (positions, spectra) in enumerate(simulate_acquisition(s)):
            monitor.update(spectra, positions)
            if step + 1 in (24, 48):
                snapshots[step + 1] = monitor.anomaly_map.data.copy()
        monitor.refresh()
        print(f"  {monitor!r}")
        final = monitor.anomaly_map.data.copy()
        code = monitor.latent_map.data[..., 0].copy()
    from matplotlib.colors import LogNorm

    norm = LogNorm(vmin=np.nanmin(final), vmax=np.nanmax(final))
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.4), layout="constrained")
    for ax, (rows, data) in zip(axes[:2], snapshots.items(), strict=True):
        _imshow(ax, np.ma.masked_invalid(data), f"anomaly_map, {rows}/64 rows",
                cmap="magma", norm=norm)
    im = _imshow(axes[2], final, "anomaly_map, complete", cmap="magma", norm=norm)
    fig.colorbar(im, ax=axes[:3], shrink=0.85, label="Poisson deviance per channel")
    _imshow(axes[3], truth.rare_mask, "truth: rare-phase pixels", cmap="gray")
    im = _imshow(axes[4], code, "latent_map, code 1", cmap="viridis")
    fig.colorbar(im, ax=axes[4], shrink=0.85)
    _save(fig, "streaming.png")


FIGURES = {"data": fig_data, "phase_map": fig_phase_map, "decomposition": fig_decomposition,
           "denoising": fig_denoising, "spatial": fig_spatial, "anomaly": fig_anomaly,
           "mae": fig_mae,
           "streaming": fig_streaming}


def main(names: list[str]) -> int:
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        print(f"unknown figure(s) {unknown}; choose from {sorted(FIGURES)}", file=sys.stderr)
        return 2
    _setup()
    t_all = time.perf_counter()
    for name in names or list(FIGURES):
        t0 = time.perf_counter()
        print(f"{name}:")
        FIGURES[name]()
        print(f"  {time.perf_counter() - t0:.1f} s")
    print(f"total {time.perf_counter() - t_all:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
