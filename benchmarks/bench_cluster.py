"""Benchmark of the spatial-spectral issue, item 4: phase maps from ``s.mlspec.cluster()``
against HyperSpy's PCA + k-means, adjusted Rand index (ARI) against the true phase map and
time against HyperSpy's PCA + ``get_decomposition_model``, all in one process.

Maps (EELS: Fe2+/Fe3+ chemical shift, thickness, drift, Poisson noise; ``n_clusters`` = the
number of true phases):

* ``eels drift 0.3`` / ``eels drift 1`` - :func:`hyperspy_mlspec.data.eels_map`
  64x64x1024 with a drift of 0.3 and 1 eV (0.6 and 2 channels), doses 10 and 100;
* ``eels sharp`` - ``benchmarks._maps.eels_sharp_map`` (hard grain boundaries, inclusions,
  a drift of a few channels), labels = its grain phases;
* ``eds`` - :func:`hyperspy_mlspec.data.eds_map` 64x64x1024;
* ``small int16`` - 40x50 x 162 channels of 8 eV, raw int16 counts times a detector gain of
  3, dose 50 (as ``bench_speed``);
* ``linescan`` - a 1-D EELS line of 512 pixels.

Baselines: HyperSpy ``decomposition(normalize_poissonian_noise=True)`` then
``cluster_analysis("decomposition", number_of_components=4)`` with its default
preprocessing (``"norm"``) and with ``preprocessing=None``; the time baseline is PCA +
``get_decomposition_model(4)`` on the same map.

Usage::

    .venv/bin/python -m benchmarks.bench_cluster            # writes its RESULTS.md section
    .venv/bin/python -m benchmarks.bench_cluster --quick    # small, prints only
    .venv/bin/python -c "from benchmarks.bench_cluster import ceiling; ceiling()"

``ceiling()`` separates the two halves of ``cluster()`` on the EELS maps: how well its
codes can separate the phases (the ARI when the phase means are the truth's, from its
pure pixels, and the labels come from the same boundary-mixing likelihood and Potts
smoothing) against how well the mixture finds those means itself (the default).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import numpy as np

from benchmarks._common import (
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

TITLE = "Phase maps: cluster() vs PCA + k-means (spatial-spectral issue, item 4)"
MODULE = "benchmarks.bench_cluster"


def make_case(name: str, dose: float, seed: int, quick: bool):
    """``(signal, true labels)``."""
    from hyperspy_mlspec.data import eds_map, eels_map

    shape, ch = ((32, 32), 512) if quick else ((64, 64), 1024)
    if name.startswith("eels drift"):
        drift = float(name.split()[-1])
        s, tr = eels_map(shape, ch, dose, drift=drift, random_state=seed, return_truth=True)
        return s, tr.phase_map
    if name == "eels sharp":
        from benchmarks._maps import eels_sharp_map

        s, _, info = eels_sharp_map(shape, ch, dose, random_state=seed)
        return s, info["labels"]
    if name == "eds":
        s, tr = eds_map(shape, ch, dose, random_state=seed, return_truth=True)
        return s, tr.phase_map
    if name == "small int16":
        s, tr = eels_map((16, 20) if quick else (40, 50), 162, dose, energy_range=(400, 1696),
                         random_state=seed, return_truth=True)
        s.data = (3 * s.data).astype(np.int16)  # raw detector units, gain 3
        return s, tr.phase_map
    if name == "linescan":
        s, tr = eels_map((256,) if quick else (512,), ch, dose, drift=0.3, random_state=seed,
                         return_truth=True)
        return s, tr.phase_map
    raise ValueError(name)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def measure(name: str, dose: float, seed: int, quick: bool) -> dict:
    from sklearn.metrics import adjusted_rand_score

    s, labels = make_case(name, dose, seed, quick)
    truth = np.asarray(labels).ravel()
    k = int(len(np.unique(truth)))
    row: dict = {"case": name, "dose": dose, "seed": seed, "k": k, "load": load_average()}

    def pca():
        c = s.deepcopy()
        if not np.issubdtype(c.data.dtype, np.floating):
            c.change_dtype("float32")
        c.decomposition(normalize_poissonian_noise=True, print_info=False)
        c.get_decomposition_model(4)
        return c

    sp, row["pca_s"] = _timed(pca)
    for prep in ("norm", None):
        sp.cluster_analysis("decomposition", number_of_components=4, n_clusters=k,
                            preprocessing=prep, n_init=10, random_state=0)
        lab = np.argmax(sp.learning_results.cluster_labels, axis=0)
        row[f"ari_pca_{prep or 'none'}"] = adjusted_rand_score(truth, lab)
    res, row["ours_s"] = _timed(lambda: s.mlspec.cluster(n_clusters=k))
    row["ari_ours"] = adjusted_rand_score(truth, res.labels.data.ravel())
    row["beta"] = res.beta
    row["ratio"] = row["ours_s"] / row["pca_s"]
    return row


CASES = (("eels drift 0.3", 10), ("eels drift 0.3", 100), ("eels drift 1", 10),
         ("eels drift 1", 100), ("eels sharp", 10), ("eds", 10), ("small int16", 50),
         ("linescan", 10))


def ceiling(seeds: Sequence[int] = (0, 1), drifts: Sequence[float] = (0.3, 1.0),
            dose: float = 10.0) -> list[dict]:
    """ARI of the default ``cluster()`` against its ceiling with the true phase means."""
    from sklearn.metrics import adjusted_rand_score

    from hyperspy_mlspec.data import eels_map
    from hyperspy_mlspec.scoring.latent import _mixing_likelihood, potts_smooth

    out = []
    for drift in drifts:
        for seed in seeds:
            s, tr = eels_map((64, 64), 1024, dose, drift=drift, random_state=seed,
                             return_truth=True)
            truth = tr.phase_map.ravel()
            res = s.mlspec.cluster(n_clusters=3, show_progressbar=False)
            z = np.asarray(res.codes.data, dtype=np.float64).reshape(truth.size, -1)
            a = tr.abundances.reshape(truth.size, -1)
            pure = [a[:, c] > 0.95 for c in range(a.shape[1])]
            means = np.stack([z[p].mean(axis=0) for p in pure])
            resid = np.vstack([z[p] - m for p, m in zip(pure, means, strict=True)])
            inv = np.linalg.inv(np.cov(resid.T))
            ll = _mixing_likelihood(z, means, inv, np.zeros(len(means)), 0.5, 0.5)[0]
            lab, _ = potts_smooth(ll, ll.argmax(axis=1), (64, 64))
            row = dict(drift=drift, seed=seed,
                       default=adjusted_rand_score(truth, res.labels.data.ravel()),
                       true_means=adjusted_rand_score(truth, lab))
            out.append(row)
            print(f"drift {drift:g} seed {seed} dose {dose:g}: ARI default {row['default']:.3f}, "
                  f"with the true phase means {row['true_means']:.3f}", flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> list[dict]:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = bench_parser(__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2, help="seeds per case")
    args = parser.parse_args(argv)
    quiet_session()
    cmd = command_line(MODULE, argv)
    print(cmd, flush=True)
    info = machine_info()
    make_case("eels drift 0.3", 10, 0, True)[0].mlspec.cluster(n_clusters=3)  # imports
    rows = []
    for name, dose in CASES:
        for seed in range(1 if args.quick else args.seeds):
            row = measure(name, dose, seed, args.quick)
            rows.append(row)
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()},
                  flush=True)
    table = []
    for name, dose in CASES:
        sel = [r for r in rows if r["case"] == name and r["dose"] == dose]

        def mean(key, sel=sel):
            return float(np.mean([r[key] for r in sel]))

        table.append([name, f"{dose:g}", sel[0]["k"], fmt(mean("ari_ours")),
                      fmt(mean("beta"), 2), fmt(mean("ari_pca_norm")),
                      fmt(mean("ari_pca_none")), f"{mean('ours_s'):.2f}",
                      f"{mean('pca_s'):.2f}", f"{mean('ratio'):.2f}x"])
    md = markdown_table(["map", "dose", "k", "ARI cluster()", "Potts beta",
                         "ARI PCA+km norm", "ARI PCA+km none", "cluster() s", "PCA+model s",
                         "time ratio"], table)
    body = "\n\n".join([
        f"Command: `{cmd}`",
        machine_markdown(info),
        f"Mean over seeds {list(range(args.seeds))}. `cluster()` = default "
        "`s.mlspec.cluster(n_clusters=k)` (phase codes + Potts, coupling beta estimated); "
        "PCA+km = HyperSpy `cluster_analysis('decomposition', "
        "number_of_components=4)` after Poisson PCA. Target: ARI >= 0.6 at dose 10, "
        "time <= 3x PCA + model.",
        md])
    print(md)
    if not args.quick and not args.no_write:
        update_results_section(TITLE, body)
    return rows


if __name__ == "__main__":
    main()
