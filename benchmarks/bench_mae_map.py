"""Benchmark of issue 11, item 6: few-label phase maps that use the map.

Usage::

    .venv/bin/python -m benchmarks.bench_mae_map            # 64x64x512 maps, 3 draws
    .venv/bin/python -m benchmarks.bench_mae_map --quick    # 32x32x256, 1 draw

Data: phase maps of :mod:`hyperspy_mlspec.data` with their ground-truth phase maps
(``return_truth=True``): ``eels_map`` (Fe2+/Fe3+/rutile grains, thickness gradient, 0.3 eV
per-pixel drift, Poisson noise) and ``eds_map`` (austenite, carbide and precipitate
particles), each at doses 10 and 100 counts per channel. Per map and draw, 100 pixels are
labelled at random (whatever their phase: a user clicks pixels, not a stratified sample);
accuracy is measured on all other pixels.

Methods (all on the same 100 labels, in this process):

* ``MAE + graph (default)``: :class:`~hyperspy_mlspec.MaskedAutoencoder` pretrained on the
  map itself (no labels), ``fit_probe(s, labels, navigation_mask=unlabelled)``, then
  ``s.mlspec.predict(mae)``: the default spreads the probe over the map graph
  (:mod:`hyperspy_mlspec.estimators.mae.graph`);
* ``MAE probe``: the same head pixel by pixel (``graph=False``);
* ``1-D CNN``: from scratch on the 100 labelled spectra, as ``benchmarks.bench_mae``
  builds and trains it (log1p + per-spectrum standardisation);
* ``PCA + logistic``: PCA (32 components) of the map's normalised spectra, then a
  cross-validated logistic regression on the labelled scores;
* ``PCA + graph``: the same PCA features and logistic head spread by the same graph code
  (:func:`~hyperspy_mlspec.estimators.mae.graph.spread_predict`): the honest baseline of
  the graph itself.

The MAE is the estimator's default (grid from the data: the map's 512 channels in 32
patches, width 64, 2 blocks, ``epochs="auto"``: ~300 steps); before issue 14 this
benchmark set that architecture by hand with 20 epochs, because the former default (2048
bins, width 128, 4 blocks, ~2000 steps) took over 20 minutes per map on the shared 2-core
machine. ``--kinds eels`` runs the EELS maps only. Prints the tables; a full run rewrites
the ``## MAE few-label phase maps (issue 11)`` section of RESULTS.md.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import warnings
from collections.abc import Sequence

import numpy as np

from benchmarks._common import (
    bench_parser,
    command_line,
    machine_info,
    machine_markdown,
    markdown_table,
    update_results_section,
)
from benchmarks.bench_mae import cnn_fit_predict, prepare

TITLE = "MAE few-label phase maps (issue 11)"
MODULE = "benchmarks.bench_mae_map"
METHODS = ("MAE + graph (default)", "MAE probe (graph=False)", "1-D CNN from scratch",
           "PCA + logistic", "PCA + graph")


def mae_params(n_channels: int, epochs: int | str) -> dict:
    """Parameters of the MAE: the defaults (``n_channels`` is derived from the map)."""
    return dict(epochs=epochs, random_state=0, show_progressbar=False)


def pca_graph(feat: np.ndarray, lab: np.ndarray, y: np.ndarray, nav_shape) -> tuple:
    """Plain and graph-spread predictions of a logistic head on standardised features."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    from hyperspy_mlspec.estimators.mae.graph import spread_predict

    f = (feat - feat[lab].mean(0)) / (feat[lab].std(0) + 1e-8)
    classes, idx = np.unique(y, return_inverse=True)
    folds = min(5, int(np.bincount(idx).min()))
    clf = (LogisticRegressionCV(Cs=np.logspace(-3, 3, 7), cv=folds, max_iter=5000)
           if folds >= 2 else LogisticRegression(max_iter=5000)).fit(f[lab], idx)
    C = float(np.ravel(getattr(clf, "C_", [1.0]))[0])
    n_cls = len(classes)

    def fit_head(zz, tt, relax=1.0):
        present = np.flatnonzero(tt.sum(0) > 0)
        c = LogisticRegression(C=C * relax, max_iter=5000).fit(zz, tt.argmax(1))

        def head(q):
            out = np.zeros((len(q), n_cls))
            out[:, present] = c.predict_proba(q)
            return out
        return head

    est, info = spread_predict(f, f[lab], np.eye(n_cls)[idx], fit_head, nav_shape, None,
                               True)
    return classes[clf.predict(f)], classes[est.argmax(1)], info


def run_map(kind: str, dose: float, shape, n_channels: int, seeds, epochs: int | str,
            cnn_epochs: int, n_labels: int) -> dict:
    import torch
    from sklearn.decomposition import PCA

    import hyperspy_mlspec  # noqa: F401  (registers s.mlspec)
    from hyperspy_mlspec import MaskedAutoencoder
    from hyperspy_mlspec.data import eds_map, eels_map

    gen = eels_map if kind == "eels" else eds_map
    s, truth = gen(shape, n_channels, dose=dose, return_truth=True, random_state=0)
    phase = np.asarray(truth.phase_map)
    x = s.data.reshape(-1, n_channels)
    xn = prepare(x)
    t0 = time.perf_counter()
    mae = MaskedAutoencoder(**mae_params(n_channels, epochs)).fit(s)
    pretrain = time.perf_counter() - t0
    pcs = PCA(32, random_state=0).fit_transform(xn)
    out: dict = {m: [] for m in METHODS}
    out["pretrain_s"] = pretrain
    out["epochs"] = int(mae.n_epochs_)
    out["graph"] = []
    out["seconds"] = {m: [] for m in METHODS}
    flat = phase.ravel()
    for seed in seeds:
        rng = np.random.default_rng(seed)
        lab = np.sort(rng.choice(flat.size, n_labels, replace=False))
        rest = np.setdiff1d(np.arange(flat.size), lab)
        unlabelled = np.ones(flat.size, dtype=bool)
        unlabelled[lab] = False
        unlabelled = unlabelled.reshape(phase.shape)

        def acc(pred, rest=rest):
            return 100.0 * float(np.mean(np.asarray(pred).ravel()[rest] == flat[rest]))

        t0 = time.perf_counter()
        mae.fit_probe(s, phase, navigation_mask=unlabelled, random_state=seed)
        t1 = time.perf_counter()
        graph_map = s.mlspec.predict(mae)
        t2 = time.perf_counter()
        plain_map = s.mlspec.predict(mae, graph=False)
        t3 = time.perf_counter()
        out["MAE + graph (default)"].append(acc(graph_map.data))
        out["seconds"]["MAE + graph (default)"].append(t2 - t0)
        out["MAE probe (graph=False)"].append(acc(plain_map.data))
        out["seconds"]["MAE probe (graph=False)"].append(t1 - t0 + t3 - t2)
        ops = graph_map.metadata.MLSpec.as_dictionary()
        last = ops[max(ops, key=lambda k: int(k.rsplit("_", 1)[1]))]
        out["graph"].append(json.loads(last["graph"]) if "graph" in last else None)
        t0 = time.perf_counter()
        cnn, _ = cnn_fit_predict("classification", xn[lab], flat[lab], xn, cnn_epochs, seed)
        out["1-D CNN from scratch"].append(acc(cnn))
        out["seconds"]["1-D CNN from scratch"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        plain, spread, _ = pca_graph(pcs, lab, flat[lab], phase.shape)
        out["PCA + logistic"].append(acc(plain))
        out["PCA + graph"].append(acc(spread))
        out["seconds"]["PCA + graph"].append(time.perf_counter() - t0)
        torch.manual_seed(0)
    return out


def mean_std(v: Sequence[float]) -> str:
    if len(v) == 1:
        return f"{v[0]:.1f}"
    return f"{statistics.mean(v):.1f} ± {statistics.stdev(v):.1f}"


def main(argv: Sequence[str] | None = None) -> dict:
    import torch

    warnings.filterwarnings("ignore", category=UserWarning)
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = bench_parser(__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", choices=("eels", "eds"), default=("eels", "eds"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        shape, n_ch, seeds, epochs, cnn_epochs, runs = (32, 32), 256, (0,), 3, 20, [
            ("eels", 10.0)]
    else:
        shape, n_ch, seeds, epochs, cnn_epochs = (64, 64), 512, (0, 1, 2), "auto", 100
        runs = [(k, d) for k in args.kinds for d in (10.0, 100.0)]
    cmd = command_line(MODULE, argv)
    print(cmd)
    info = machine_info()
    results = {}
    for kind, dose in runs:
        t0 = time.perf_counter()
        results[(kind, dose)] = r = run_map(kind, dose, shape, n_ch, seeds, epochs,
                                            cnn_epochs, 100)
        print(f"{kind} dose {dose:g}: " + ", ".join(
            f"{m} {mean_std(r[m])}" for m in METHODS)
            + f" (pretraining {r['pretrain_s']:.0f} s, {r['epochs']} epochs, "
            f"all {time.perf_counter() - t0:.0f} s)",
            flush=True)
        print("  graph choices:", r["graph"], flush=True)
    rows = []
    for (kind, dose), r in results.items():
        gain = [a - b for a, b in zip(r["MAE + graph (default)"], r["1-D CNN from scratch"],
                                      strict=True)]
        rows.append([f"{kind}_map {shape[0]}x{shape[1]}x{n_ch}", f"{dose:g}"]
                    + [mean_std(r[m]) for m in METHODS] + [mean_std(gain)])
    headers = ["map", "dose"] + list(METHODS) + ["default - CNN (points)"]
    table = markdown_table(headers, rows)
    print(table)
    choices = sorted({(g["passes"], g["relax"], g["edges"], g["strength"])
                      for r in results.values() for g in r["graph"] if g})
    body = "\n".join([
        f"- Command: `{cmd}`",
        machine_markdown(info),
        f"- 100 labelled pixels at random per draw, draws {list(seeds)}; accuracy (%) on all "
        "other pixels, mean ± std over draws. MAE pretrained on each map (no labels) "
        f"with {mae_params(n_ch, epochs)}.",
        "- Choices of the default by cross-validation on the labels (pooling passes, "
        "head C multiplier, edges, spreading strength): "
        + "; ".join(f"{p}, {r:g}, {e}, {s:g}" for p, r, e, s in choices),
        "",
        table,
    ])
    if not args.quick and not args.no_write and len(args.kinds) == 2:
        update_results_section(TITLE, body)
    return results


if __name__ == "__main__":
    main()
