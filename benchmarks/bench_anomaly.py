"""Benchmark of issue 4: anomaly maps and latent phase maps vs HyperSpy's PCA.

Usage::

    .venv/bin/python -m benchmarks.bench_anomaly            # 64x64x128 maps, 2 seeds
    .venv/bin/python -m benchmarks.bench_anomaly --quick    # 32x32x128 maps, 1 seed
    .venv/bin/python -m benchmarks.bench_anomaly --context  # default score, 64x64x1024

On the built-in synthetic EELS (:func:`hyperspy_mlspec.data.eels_map`) and EDS
(:func:`hyperspy_mlspec.data.eds_map`) maps, with a rare phase on 0.5 % of the pixels, a
varying thickness and an energy drift, at a low and a high dose, in one process:

* **rare-phase detection**: AUROC of the anomaly score against ``truth.rare_mask`` for
  ``s.mlspec.anomaly_map(method="autoencoder")`` (the per-pixel route; ``--context``
  measures the default dual-window context score instead) with its defaults (4 latent
  dimensions, trimmed fit that keeps training on the 95 % best-explained pixels), the
  same with ``robust=0`` (one plain fit), and the default model re-scored with residuals
  smoothed over 2 channels; and for HyperSpy's PCA with
  ``normalize_poissonian_noise=True``, scored by the squared residual of
  ``get_decomposition_model(K)`` in Poisson-normalised units (the quantity PCA
  minimises), unsmoothed and smoothed alike. Same K for both.
* **default threshold**: precision and recall of ``s.mlspec.anomalies()`` (median + 5 MAD).
* **latent phase maps**: adjusted Rand index against ``truth.phase_map`` of
  ``s.mlspec.cluster(model, n_clusters=3)`` (k-means on the direction of the codes, and on
  the raw codes), vs HyperSpy's ``cluster_analysis("decomposition")`` (k-means on the PCA
  scores, with HyperSpy's default ``preprocessing=None`` and with ``"norm"``).

Prints the command and the tables; a full run writes the ``## Anomaly maps and latent
phase maps (issue 4)`` section of ``benchmarks/RESULTS.md`` (``--quick`` only prints).
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from benchmarks._common import (
    Stopwatch,
    bench_parser,
    command_line,
    fmt,
    machine_info,
    machine_markdown,
    markdown_table,
    quiet_session,
    update_results_section,
)

TITLE = "Anomaly maps and latent phase maps (issue 4)"
MODULE = "benchmarks.bench_anomaly"
K = 4  # latent dimensions / PCA components, the same for both
N_CLUSTERS = 3  # the common phases
SMOOTHING = 2.0
RARE_FRACTION = 0.005


@dataclass(frozen=True)
class Case:
    """One data set: technique, dose (mean counts per channel) and drift."""

    kind: str
    dose: float
    drift: float

    @property
    def label(self) -> str:
        units = "eV" if self.kind == "EELS" else "keV"
        return f"{self.kind} dose {self.dose:g}, drift {self.drift:g} {units}"


CASES = (Case("EELS", 50, 0.3), Case("EELS", 500, 0.3), Case("EDS", 20, 0.005),
         Case("EDS", 500, 0.005))


def make_data(case: Case, shape: tuple[int, int], n_channels: int, seed: int):
    """Synthetic map with thickness, drift and a rare phase, and its ground truth."""
    from hyperspy_mlspec import data

    gen = data.eels_map if case.kind == "EELS" else data.eds_map
    return gen(shape, n_channels=n_channels, dose=case.dose, thickness=True, drift=case.drift,
               rare_phase=True, rare_fraction=RARE_FRACTION, random_state=seed,
               return_truth=True)


def pca_baseline(s, k: int, truth) -> dict:
    """HyperSpy PCA (Poisson-normalised): residual scores and k-means on its scores."""
    from sklearn.metrics import adjusted_rand_score, roc_auc_score

    n = s.axes_manager.signal_axes[0].size
    sp = s.deepcopy()
    sp.change_dtype("float64")
    out = {}
    with Stopwatch() as sw:
        # full SVD: HyperSpy's "auto" picks a randomized solver, which made the baseline
        # vary by a few 0.01 from run to run
        sp.decomposition(normalize_poissonian_noise=True, output_dimension=k,
                         svd_solver="full", print_info=False)
        model = sp.get_decomposition_model(k).data.reshape(-1, n)
    out["seconds"] = sw.wall
    x = s.data.reshape(-1, n).astype(np.float64)
    # Keenan-Kotula weights: the residual in the units PCA minimises
    w = np.sqrt(x.sum(1, keepdims=True) * x.sum(0, keepdims=True) / x.sum())
    r = (x - model) / np.where(w > 0, w, 1.0)
    y = truth.rare_mask.ravel()
    from hyperspy_mlspec.scoring import smoothed_mean_square

    out["auroc"] = roc_auc_score(y, smoothed_mean_square(r, 0))
    out["auroc_smoothed"] = roc_auc_score(y, smoothed_mean_square(r, SMOOTHING))
    phases = truth.phase_map.ravel()
    for prep in (None, "norm"):
        sp.cluster_analysis("decomposition", number_of_components=k, n_clusters=N_CLUSTERS,
                            preprocessing=prep, n_init=10, random_state=0)
        labels = np.argmax(sp.learning_results.cluster_labels, axis=0)
        out[f"ari_{prep or 'none'}"] = adjusted_rand_score(phases, labels)
    return out


def ours(s, truth) -> dict:
    """s.mlspec: anomaly maps (default, no refit, smoothed), threshold, clustering."""
    from sklearn.metrics import adjusted_rand_score, roc_auc_score

    y = truth.rare_mask.ravel()
    out = {}
    with Stopwatch() as sw:
        single = s.mlspec.anomaly_map(method="autoencoder", n_components=K, robust=0.0,
                                      show_progressbar=False)
    out["seconds_single"] = sw.wall
    with Stopwatch() as sw:
        score, model = s.mlspec.anomaly_map(method="autoencoder", n_components=K,
                                            show_progressbar=False, return_model=True)
    out["seconds"] = sw.wall
    smoothed = s.mlspec.anomaly_map(model, method="autoencoder", smoothing=SMOOTHING)
    out["auroc_single"] = roc_auc_score(y, single.data.ravel())
    out["auroc"] = roc_auc_score(y, score.data.ravel())
    out["auroc_smoothed"] = roc_auc_score(y, smoothed.data.ravel())
    found = s.mlspec.anomalies(score, model=model)
    flagged = found.mask.data.ravel()
    out["precision"] = (flagged & y).sum() / flagged.sum() if flagged.any() else float("nan")
    out["recall"] = (flagged & y).sum() / y.sum()
    out["n_flagged"] = int(flagged.sum())
    # regions come most anomalous first: is the first one the rare phase?
    first = found.labels.data.ravel() == 1
    out["first_region_rare"] = (first & y).sum() / first.sum() if first.any() else 0.0
    phases = truth.phase_map.ravel()
    for norm in ("shape", "none"):
        result = s.mlspec.cluster(model, n_clusters=N_CLUSTERS, normalize=norm)
        out[f"ari_{norm}"] = adjusted_rand_score(phases, result.labels.data.ravel())
    return out


def run(shape: tuple[int, int], n_channels: int, seeds: Sequence[int]) -> list[dict]:
    rows = []
    for case in CASES:
        for seed in seeds:
            s, truth = make_data(case, shape, n_channels, seed)
            row = {"case": case, "seed": seed, "n_rare": int(truth.rare_mask.sum())}
            row["pca"] = pca_baseline(s, K, truth)
            row["ours"] = ours(s, truth)
            rows.append(row)
            print(f"  {case.label}, seed {seed}: AUROC ours {row['ours']['auroc']:.3f} "
                  f"PCA {row['pca']['auroc']:.3f}; ARI ours {row['ours']['ari_shape']:.3f} "
                  f"PCA {row['pca']['ari_none']:.3f} ({row['ours']['seconds']:.0f} s)",
                  flush=True)
    return rows


def _mean(rows: list[dict], who: str, key: str) -> float:
    return statistics.fmean(r[who][key] for r in rows)


def _range(rows: list[dict], who: str, key: str) -> str:
    values = [r[who][key] for r in rows]
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.fmean(values))} ({fmt(min(values))}-{fmt(max(values))})"


def tables(rows: list[dict]) -> tuple[str, str, str]:
    """Markdown tables: detection, threshold, clustering (mean over seeds, min-max)."""
    det, thr, clu = [], [], []
    for case in CASES:
        sub = [r for r in rows if r["case"] == case]
        pca_auc, our_auc = _mean(sub, "pca", "auroc"), _mean(sub, "ours", "auroc")
        target = ("met" if our_auc >= 0.95 else "not met") if pca_auc < 0.8 else "n/a (PCA >= 0.8)"
        det.append([case.label, sub[0]["n_rare"], _range(sub, "ours", "auroc"),
                    _range(sub, "ours", "auroc_single"), _range(sub, "ours", "auroc_smoothed"),
                    _range(sub, "pca", "auroc"), _range(sub, "pca", "auroc_smoothed"), target,
                    fmt(_mean(sub, "ours", "seconds"), 2), fmt(_mean(sub, "pca", "seconds"), 2)])
        thr.append([case.label, fmt(statistics.fmean(r["ours"]["n_flagged"] for r in sub)),
                    _range(sub, "ours", "precision"), _range(sub, "ours", "recall"),
                    _range(sub, "ours", "first_region_rare")])
        ours_ari, pca_ari = _mean(sub, "ours", "ari_shape"), _mean(sub, "pca", "ari_none")
        clu.append([case.label, _range(sub, "ours", "ari_shape"),
                    _range(sub, "ours", "ari_none"), _range(sub, "pca", "ari_none"),
                    _range(sub, "pca", "ari_norm"), fmt(ours_ari - pca_ari)])
    det_md = markdown_table(
        ["data", "rare px", "AUROC ours", "ours, robust=0", f"ours, smoothed {SMOOTHING:g} ch",
         "AUROC PCA", f"PCA, smoothed {SMOOTHING:g} ch", "target (>= 0.95 where PCA < 0.8)",
         "ours s", "PCA s"], det, "lrrrrrrlrr")
    thr_md = markdown_table(["data", "pixels flagged", "precision", "recall",
                             "rare share of regions[0]"], thr)
    clu_md = markdown_table(
        ["data", "ARI ours (shape)", "ours (raw codes)", "PCA k-means (HyperSpy default)",
         "PCA k-means (norm)", "ours - PCA"], clu)
    return det_md, thr_md, clu_md


CONTEXT_TITLE = "Context anomaly maps (issue 11, item 3)"


def run_context(seeds: Sequence[int], shape=(64, 64), n_channels: int = 1024,
                dose: float = 10.0, rare_fraction: float = 0.004) -> list[dict]:
    """The default ``s.mlspec.anomaly_map()`` (dual-window context score) against
    HyperSpy's PCA residual on EELS maps with small NiO inclusions."""
    from sklearn.metrics import roc_auc_score

    from hyperspy_mlspec.data import eels_map

    rows = []
    for drift in (0.3, 1.0):
        for seed in seeds:
            s, truth = eels_map(shape, n_channels, dose, thickness=True, drift=drift,
                                rare_phase=True, rare_fraction=rare_fraction,
                                random_state=seed, return_truth=True)
            with Stopwatch() as sw:
                score = s.mlspec.anomaly_map(show_progressbar=False)
            pca = pca_baseline(s, K, truth)
            rows.append({"drift": drift, "seed": seed,
                         "rare": int(truth.rare_mask.sum()),
                         "auroc": roc_auc_score(truth.rare_mask.ravel(), score.data.ravel()),
                         "auroc_pca": pca["auroc"], "seconds": sw.wall,
                         "seconds_pca": pca["seconds"]})
            print(rows[-1], flush=True)
    return rows


def main_context(args, cmd: str, info: dict) -> dict:
    seeds = (0,) if args.quick else (0, 1, 2)
    shape = (32, 32) if args.quick else (64, 64)
    with Stopwatch() as total:
        rows = run_context(seeds, shape)
    table = markdown_table(
        ["drift (eV)", "seed", "rare px", "AUROC default", "AUROC PCA residual",
         "default s", "PCA s", "target >= 0.90"],
        [[r["drift"], r["seed"], r["rare"], fmt(r["auroc"]), fmt(r["auroc_pca"]),
          fmt(r["seconds"]), fmt(r["seconds_pca"]), "met" if r["auroc"] >= 0.9 else "not met"]
         for r in rows], align="rrrrrrrl")
    mean = float(np.mean([r["auroc"] for r in rows]))
    body = "\n\n".join([
        f"Command: `{cmd}`", machine_markdown(info),
        f"`eels_map({shape}, 1024, dose=10, thickness=True, drift=..., rare_phase=True, "
        f"rare_fraction=0.004)` (NiO inclusions of a few pixels), default "
        f"`s.mlspec.anomaly_map()` (dual-window context score, nothing set) against "
        f"HyperSpy's Poisson-normalised PCA (K={K}, full SVD) residual in the same process. "
        f"Total {total.wall:.0f} s.", table,
        f"Mean AUROC of the default: {mean:.3f} (target >= 0.90 at dose 10)."])
    print(body)
    if not (args.quick or args.no_write):
        update_results_section(CONTEXT_TITLE, body)
    return {"rows": rows, "markdown": body}


def main(argv: Sequence[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = bench_parser(__doc__.splitlines()[0])
    parser.add_argument("--context", action="store_true",
                        help="measure the default (context) anomaly map on 64x64x1024 "
                             "EELS maps at dose 10 instead (issue 11, item 3)")
    args = parser.parse_args(argv)
    quiet_session()
    cmd = command_line(MODULE, argv)
    print(cmd, flush=True)
    info = machine_info()
    if args.context:
        return main_context(args, cmd, info)
    shape, n_channels, seeds = ((32, 32), 128, (0,)) if args.quick else ((64, 64), 128, (0, 1))
    with Stopwatch() as total:
        rows = run(shape, n_channels, seeds)
    det_md, thr_md, clu_md = tables(rows)
    setup = (f"{shape[0]}x{shape[1]} pixels x {n_channels} channels, rare phase on "
             f"{RARE_FRACTION:.1%} of the pixels (NiO in EELS, Cu-rich in EDS), thickness "
             f"varying, drift as given; K = {K} for both methods, {N_CLUSTERS} clusters; "
             f"seeds {list(seeds)} (mean, min-max over seeds). Total {total.wall:.0f} s.")
    body = "\n\n".join([
        f"Command: `{cmd}`", machine_markdown(info), setup,
        "### Rare-phase detection (AUROC of the anomaly score)", det_md,
        "### Default threshold of `s.mlspec.anomalies()` (median + 5 MAD)", thr_md,
        "### Latent phase maps (adjusted Rand index against the true phase map)", clu_md])
    print(body)
    if not (args.quick or args.no_write):
        update_results_section(TITLE, body + "\n\n" + NOTES)
    return {"rows": rows, "markdown": body}


NOTES = """\
Notes (read with the tables):

- Target of issue 4, AUROC >= 0.95 where PCA is below 0.8: the one such case here is EDS at
  high dose (PCA 0.78 on average, 0.68 and 0.87 per seed), where one of PCA's K components
  goes to the rare phase so its residual misses it; ours gives 1.0. Met there. Ours is
  also ahead on EDS at low dose (1.0 vs 0.92) and EELS at high dose (0.98 vs 0.96).
- Not met, by either method, on EELS at dose 50: the NiO spectrum differs from mixtures
  of the common phases by about one noise standard deviation of the summed deviance per
  pixel; a model trained on the truly normal pixels only (an oracle) also stays near 0.57.
  Smoothing the residuals over 2 channels (`anomaly_map(smoothing=2)`: a missing edge
  spans several channels, noise does not) lifts ours to 0.76 and PCA to 0.71 there, and
  both to ~1.0 on EELS at dose 500.
- "robust=0" (one plain fit) shows why the default trims: the network then learns the
  rare EDS phase (the estimator initialises its decoder from the most spread-out spectra,
  i.e. the anomalies), AUROC 0.68 at low dose.
- Default threshold: fine when the model fits the normal pixels to the noise level (EDS
  at low dose, EELS at high dose, precision 0.9-1). At high EDS dose the misfit of the
  normal pixels (4 latent dimensions, about 1000 steps) has a long tail and median + 5 MAD
  flags ~180 pixels for 20 rare ones; regions are ordered by summed excess score, and the
  table shows how much of `regions[0]` is the rare phase. Use `k`, `threshold="quantile"`
  or `min_size` there.
- Clustering: k-means on the direction of the latent codes beats HyperSpy's default
  k-means on PCA scores (no preprocessing) everywhere (+0.28 to +0.51 ARI). Against PCA
  scores with HyperSpy's `preprocessing="norm"` (the same normalisation idea) it is
  +0.02 on EDS, +0.11 on EELS at high dose and -0.06 on EELS at low dose: not clearly
  above. Dividing the codes by their norm (`normalize="shape"`) is worth +0.06 to +0.35
  ARI over the raw codes, which carry thickness and dose.
- Timings were taken on a shared machine (see the load average) with one torch thread:
  compare ratios, not absolute seconds. "ours s" is one `anomaly_map()` call (fit and
  score); "PCA s" is HyperSpy's SVD and `get_decomposition_model`.
"""


if __name__ == "__main__":
    main()
