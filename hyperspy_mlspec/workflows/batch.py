"""Anomaly maps of spectrum-image files (``hyperspy-mlspec anomaly``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hyperspy_mlspec import signals as sio
from hyperspy_mlspec.workflows.anomaly import AnomalyResult, anomalies

__all__ = ["anomaly_files"]


# -- files (used by the command line) ---------------------------------------------------------
def _save_map_png(result: AnomalyResult, path: Path) -> None:
    from matplotlib.figure import Figure

    score = result.score
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot()
    data = np.asarray(score.data, dtype=np.float64)
    quantity = score.metadata.get_item("Signal.quantity", "anomaly score")
    if data.ndim == 2:
        axes = score.axes_manager.signal_axes  # x then y
        ext = [axes[0].axis[0], axes[0].axis[-1], axes[1].axis[-1], axes[1].axis[0]]
        im = ax.imshow(data, extent=ext, cmap="viridis", interpolation="nearest")
        if result.mask.data.any():
            ax.contour(np.asarray(result.mask.data, float), levels=[0.5], colors="red",
                       linewidths=0.8, extent=[ext[0], ext[1], ext[3], ext[2]],
                       origin="upper")
        ax.set_xlabel(f"{axes[0].name} ({axes[0].units})")
        ax.set_ylabel(f"{axes[1].name} ({axes[1].units})")
        fig.colorbar(im, ax=ax, label=quantity)
    else:
        ax0 = score.axes_manager.signal_axes[0]
        ax.plot(ax0.axis, data, lw=1)
        ax.plot(np.asarray(ax0.axis)[result.mask.data], data[result.mask.data], "r.")
        ax.axhline(result.threshold, color="r", ls="--", lw=0.8)
        ax.set_xlabel(f"{ax0.name} ({ax0.units})")
        ax.set_ylabel(quantity)
    ax.set_title(f"{len(result.regions)} region(s), threshold {result.threshold:.3g}",
                 fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _save_regions_png(result: AnomalyResult, path: Path, max_regions: int = 6) -> None:
    from matplotlib.figure import Figure

    regions = result.regions[:max_regions]
    fig = Figure(figsize=(7, 5))
    top, bottom = fig.subplots(2, 1, sharex=False)
    for region in regions:
        ax = region.mean_spectrum.axes_manager.signal_axes[0]
        top.plot(ax.axis, region.mean_spectrum.data, lw=1, label=f"region {region.label} "
                 f"({region.size} px)")
        if region.mean_residual is not None:
            rax = region.mean_residual.axes_manager.signal_axes[0]
            bottom.plot(rax.axis, region.mean_residual.data, lw=1)
    sig_ax = regions[0].mean_spectrum.axes_manager.signal_axes[0]
    top.set_ylabel("mean spectrum")
    top.legend(fontsize="small")
    bottom.axhline(0, color="0.5", lw=0.6)
    bottom.set_ylabel("mean residual")
    bottom.set_xlabel(f"{sig_ax.name} ({sig_ax.units})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def anomaly_files(paths: Sequence[str | Path], out_dir: str | Path, lazy: bool = False,
                  **kw: Any) -> list[dict]:
    """Anomaly maps and region spectra for spectrum-image files (``hyperspy-mlspec anomaly``).

    For each input ``NAME`` (any format HyperSpy reads; files holding several signals give
    ``NAME_0``, ``NAME_1``... and skip non-spectra) it writes to ``out_dir``:

    * ``NAME_anomaly_map.hspy`` and ``NAME_anomaly_map.png``: the score, anomalous regions
      outlined;
    * ``NAME_anomaly_regions.hspy``: the region labels (0 = normal);
    * ``NAME_region_spectra.hspy`` and ``NAME_region_spectra.png``: mean spectrum (and mean
      residual) of each region, when there are regions.

    Parameters
    ----------
    paths
        Input files.
    out_dir
        Output folder (created).
    lazy
        Load lazily (the data are streamed, never loaded whole).
    **kw
        Passed to :func:`anomalies` (threshold, k, model, metric, n_components, epochs...).

    Returns
    -------
    list of dict
        One summary per signal: ``input``, ``signal``, written files, ``n_regions``,
        ``n_anomalous``, ``threshold`` and ``regions`` (label, size, centroid, units,
        mean_score).

    Examples
    --------
    >>> anomaly_files(["map.hspy"], "out", threshold="mad", k=6)  # doctest: +SKIP
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = []
    for path in paths:
        path = Path(path)
        loaded = sio.load(path, lazy=lazy)
        signals = loaded if isinstance(loaded, list) else [loaded]
        for i, s in enumerate(signals):
            stem = path.stem if len(signals) == 1 else f"{path.stem}_{i}"
            if s.axes_manager.signal_dimension != 1:
                summaries.append({"input": str(path), "signal": stem, "skipped":
                                  "not a spectrum image (signal dimension "
                                  f"{s.axes_manager.signal_dimension})"})
                continue
            result = anomalies(s, **kw)
            files = {"anomaly_map": out_dir / f"{stem}_anomaly_map.hspy",
                     "anomaly_png": out_dir / f"{stem}_anomaly_map.png",
                     "regions_file": out_dir / f"{stem}_anomaly_regions.hspy"}
            result.score.save(files["anomaly_map"], overwrite=True)
            result.labels.save(files["regions_file"], overwrite=True)
            _save_map_png(result, files["anomaly_png"])
            if result.regions:
                files["region_spectra"] = out_dir / f"{stem}_region_spectra.hspy"
                files["region_png"] = out_dir / f"{stem}_region_spectra.png"
                result.region_spectra().save(files["region_spectra"], overwrite=True)
                _save_regions_png(result, files["region_png"])
            summaries.append({
                "input": str(path), "signal": stem,
                **{key: str(value) for key, value in files.items()},
                "n_regions": len(result.regions), "n_anomalous": result.n_anomalous,
                "threshold": result.threshold, "method": result.method,
                "regions": [{"label": r.label, "size": r.size, "centroid": list(r.centroid),
                             "units": list(r.units), "mean_score": r.mean_score}
                            for r in result.regions]})
    return summaries
