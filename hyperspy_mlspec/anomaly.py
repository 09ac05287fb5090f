"""Anomaly maps, anomalous regions, latent phase maps and latent embeddings.

The discovery workflow on a spectrum image ``s``::

    score = s.mlspec.anomaly_map()           # per-pixel reconstruction error (a map)
    s.plot(navigator=score)                  # look at it beside the data
    found = s.mlspec.anomalies()             # threshold, connected regions, their spectra
    found.regions[0].mean_spectrum.plot()    # inspect (and name) the unexpected phase
    phases = s.mlspec.cluster(found.model, n_clusters=3)   # latent phase map

Everything reuses :class:`~hyperspy_mlspec.AutoencoderDecomposition` (one training loop,
the engine's noise models) and the data layer :mod:`hyperspy_mlspec.signal_io`; lazy
signals are streamed block by block and only navigation-sized results are computed.

Scores
------
``"deviance"``
    Mean Poisson deviance per channel ``2 [x log(x / mu) - (x - mu)]`` between the counts
    ``x`` and the model's reconstruction ``mu``. For Poisson data that the model explains it
    is about 1 whatever the brightness of the pixel (within a few % down to about 5 counts
    per channel; less below 1 count), so bright pixels are not flagged for being bright.
    Summed over the ``n`` channels it is approximately chi-squared with ``n`` degrees of
    freedom (the ``"pvalue"`` threshold).
``"mse"``
    Mean squared error per channel, in data units squared (non-count data).

Why the default model is kept from learning anomalies
------------------------------------------------------
A model that can reconstruct everything flags nothing. With no model given,
:func:`anomaly_map` fits a small autoencoder (``n_components=4``, about 1000 optimiser
steps) on the signal itself with a *trimmed* fit (``robust=0.05``): the network is
initialised and first trained without the 5 % of pixels most outlying in a robust PCA
(the estimator initialises its decoder from the most spread-out spectra, which would
otherwise be the anomalies), then trained in rounds on the pixels it explains best only.
On the built-in synthetic maps with a rare phase on 0.5 % of the pixels, a plain fit
(``robust=0``) learns the rare EDS phase (AUROC 0.5-0.97); the trimmed fit gives AUROC 1.0
(``benchmarks/bench_anomaly.py``, numbers in ``benchmarks/RESULTS.md``).

Smoothing
---------
Noise is independent from channel to channel, a misfit (a missing edge or peak) is not:
``smoothing=2`` (Gaussian sigma in channels) averages signed residuals over neighbouring
channels before squaring, which raised the AUROC of the weak EELS rare phase from 0.6 to
0.77 at low dose and from 0.99 to 1.0 at high dose in the benchmark. Off by default, so the
score stays the plain deviance.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hyperspy_mlspec import signals as sio
from hyperspy_mlspec.arrays import AxisInfo, SpectraTable
from hyperspy_mlspec.signals.outputs import axis_dict

__all__ = [
    "AnomalyRegion",
    "AnomalyResult",
    "ClusterResult",
    "anomalies",
    "anomaly_files",
    "anomaly_map",
    "cluster",
    "cluster_labels",
    "effective_dof",
    "embedding_2d",
    "plot_embedding",
    "smoothed_mean_square",
    "threshold_value",
]

METRICS = ("auto", "deviance", "mse")
THRESHOLDS = ("mad", "quantile", "pvalue")
CLUSTER_METHODS = ("kmeans", "gmm", "agglomerative")
NORMALIZE = ("shape", "none", "standard")
_QUANTITY = {"deviance": "Poisson deviance per channel",
             "mse": "Mean squared error per channel"}
_MAD_TO_SIGMA = 1.482602218505602  # MAD of a normal distribution times this is its sigma
_MAX_AGGLOMERATIVE = 30_000


# -- helpers ----------------------------------------------------------------------------------
def _title(signal) -> str:
    return str(signal.metadata.General.title or "signal")


def _nav_ndim(signal) -> int:
    return int(signal.axes_manager.navigation_dimension)


def _nonfinite_rows(signal) -> np.ndarray:
    """Flat boolean array (array order): True where a spectrum holds NaN or infinity."""
    rows = sio.rows_of(signal)
    if np.issubdtype(rows.dtype, np.integer):
        return np.zeros(rows.shape[0], dtype=bool)
    if sio.is_lazy(signal):
        import dask.array as da

        return ~np.asarray(da.isfinite(rows).all(axis=1).compute())
    return ~np.isfinite(rows).all(axis=1)


def _excluded(signal, navigation_mask, nonfinite: np.ndarray | None) -> np.ndarray:
    """Flat mask of pixels left out (user mask, non-finite spectra); clear error if all are."""
    n_nav = int(np.prod(signal.data.shape[: _nav_ndim(signal)], dtype=np.int64))
    user = sio.navigation_mask_array(signal, navigation_mask) if _nav_ndim(signal) else None
    mask = np.zeros(n_nav, dtype=bool) if user is None else user.copy()
    if nonfinite is not None:
        mask |= nonfinite
    if mask.all():
        raise ValueError(
            "no spectrum is left to analyse: every pixel is excluded by navigation_mask or "
            f"holds NaN/infinity ({int(0 if nonfinite is None else nonfinite.sum())} "
            "non-finite). True in navigation_mask marks pixels to EXCLUDE.")
    return mask


def _mask_arg(signal, flat: np.ndarray) -> np.ndarray | None:
    """Navigation mask array (array order) for :mod:`signal_io`, None when nothing is out."""
    if not flat.any():
        return None
    return flat.reshape(signal.data.shape[: _nav_ndim(signal)])


def _resolve_metric(metric: str, model, signal) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if metric != "auto":
        return metric
    loss = getattr(model, "loss_", None)
    if loss is not None:
        return "deviance" if loss == "poisson" else "mse"
    from hyperspy_mlspec.estimators.base import looks_like_counts

    sample = sio.rows_of(signal)[:256]  # the first block only, when lazy
    sample = np.asarray(sample.compute() if hasattr(sample, "compute") else sample)
    sample = sample[np.isfinite(sample).all(axis=1)]
    return "deviance" if looks_like_counts(sample) else "mse"


def _smoothing_kernel(sigma: float) -> np.ndarray:
    """Normalised Gaussian kernel used to smooth residuals along the signal axis."""
    half = int(math.ceil(4 * sigma))
    k = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    return k / k.sum()


def effective_dof(n_channels: int, smoothing: float = 0.0) -> tuple[float, float]:
    """``(c, nu)`` such that the summed (smoothed) deviance is about ``c * chi2(nu)``.

    Without smoothing ``c = 1, nu = n_channels``. Smoothing correlates neighbouring
    channels: with ``rho`` the kernel's normalised autocorrelation, ``c = sum(rho**2)`` and
    ``nu = n_channels / c`` (Satterthwaite), which keeps mean and variance right.

    Examples
    --------
    >>> effective_dof(128)
    (1.0, 128.0)
    """
    if smoothing <= 0:
        return 1.0, float(n_channels)
    k = _smoothing_kernel(smoothing)
    acf = np.correlate(k, k, mode="full")
    rho = acf / acf.max()
    c = float((rho**2).sum())
    return c, n_channels / c


def _row_scores(x: np.ndarray, mu: np.ndarray, metric: str,
                smoothing: float = 0.0) -> np.ndarray:
    """Per-row score of a block: mean Poisson deviance or squared error per channel.

    With ``smoothing`` (Gaussian sigma in channels) the signed residuals (deviance
    residuals, or differences for MSE) are smoothed along the channels before squaring and
    rescaled so that white noise keeps the same mean score: coherent misfits (a missing
    edge or peak spanning several channels) then stand out of the noise.
    """
    x = np.asarray(x, dtype=np.float64)
    mu = np.asarray(mu, dtype=np.float64)
    if metric == "mse":
        elements = (x - mu) ** 2
        signed = x - mu
    else:
        if np.nanmin(x, initial=0.0) < 0:
            raise ValueError("metric='deviance' needs non-negative counts, but the data "
                             "contain negative values; use metric='mse'.")
        mu = np.maximum(mu, 1e-8)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_term = np.where(x > 0, x * np.log(np.maximum(x, 1e-8) / mu), 0.0)
        elements = np.maximum(2.0 * (log_term - (x - mu)), 0.0)
        signed = np.sign(x - mu) * np.sqrt(elements)
    if smoothing <= 0:
        return elements.mean(axis=1)
    return smoothed_mean_square(signed, smoothing)


def smoothed_mean_square(residual: np.ndarray, sigma: float) -> np.ndarray:
    """Mean square per row of residuals smoothed along the last axis by a Gaussian.

    Each channel is divided by the sum of the squared kernel weights that reach it (zero
    padding at the ends), so white noise of unit variance keeps mean square 1 in every
    channel while coherent structure spanning several channels keeps its amplitude.

    Examples
    --------
    >>> import numpy as np
    >>> r = np.random.default_rng(0).normal(size=(2000, 64))
    >>> round(float(smoothed_mean_square(r, 2.0).mean()), 1)
    1.0
    """
    from scipy.ndimage import convolve1d

    residual = np.asarray(residual, dtype=np.float64)
    if sigma <= 0:
        return (residual**2).mean(axis=-1)
    k = _smoothing_kernel(sigma)
    weight = convolve1d(np.ones(residual.shape[-1]), k**2, mode="constant")
    smoothed = convolve1d(residual, k, axis=-1, mode="constant")
    return (smoothed**2 / weight).mean(axis=-1)


def _reconstruct(model, rows):
    """Reconstruction of rows by any fitted model (dask in gives dask out)."""
    if hasattr(model, "reconstruct"):
        return model.reconstruct(rows)
    if not (hasattr(model, "transform") and hasattr(model, "inverse_transform")):
        raise TypeError(f"{type(model).__name__} cannot reconstruct spectra: a model needs "
                        "reconstruct(X), or transform and inverse_transform.")
    if hasattr(rows, "dask"):
        n = int(rows.shape[1])
        return rows.map_blocks(lambda b: model.inverse_transform(model.transform(b)),
                               chunks=(rows.chunks[0], (n,)), dtype=np.float64)
    return model.inverse_transform(model.transform(rows))



# values per scoring chunk: cache-sized float64 temporaries (about 3x faster than whole
# blocks, measured in benchmarks/bench_streaming.py) and bounded memory for long spectra
_SCORE_VALUES = 2**17


def _blocked_row_scores(x: np.ndarray, mu: np.ndarray, metric: str, smoothing: float = 0.0,
                        map_chunks: Callable = map) -> np.ndarray:
    """:func:`_row_scores` over chunks of rows (the deviance's float64 temporaries are ~10x
    a chunk's size); ``map_chunks`` may be a thread pool's ``map``."""
    step = max(1, _SCORE_VALUES // max(1, int(x.shape[1])))

    def chunk(i: int) -> np.ndarray:
        return _row_scores(x[i:i + step], mu[i:i + step], metric, smoothing)

    parts = list(map_chunks(chunk, range(0, len(x), step)))
    return np.concatenate(parts) if parts else np.empty(0)


def _table_scores(model, table: SpectraTable, metric: str,
                  smoothing: float = 0.0) -> np.ndarray:
    """Scores of the rows of a table, computed (navigation-sized) even for lazy tables."""
    rows = table.rows
    recon = _reconstruct(model, rows)
    if hasattr(rows, "dask"):
        import dask.array as da

        recon = da.asarray(recon).rechunk({0: rows.chunks[0], 1: -1})
        scores = da.map_blocks(_blocked_row_scores, rows, recon, metric, smoothing,
                               drop_axis=1, dtype=np.float64)
        return np.asarray(scores.compute(), dtype=np.float64)
    return _blocked_row_scores(rows, recon, metric, smoothing)


def _default_epochs(n_rows: int) -> int:
    """About 1000 optimiser steps (10-100 epochs): enough to model the common phases and
    nuisances, too few to memorise rare spectra (measured in benchmarks/bench_anomaly.py)."""
    from hyperspy_mlspec.engine.budget import auto_batch_size

    n_train = max(1, int(0.9 * n_rows))
    batch = auto_batch_size(n_train)  # the estimator's rule: steps counted as it trains
    steps = max(1, math.ceil(n_train / batch))
    return int(np.clip(math.ceil(1000 / steps), 10, 100))


def _fit(signal, excluded: np.ndarray, n_components: int, show_progressbar, params: dict):
    """Fit an AutoencoderDecomposition on the pixels not ``excluded`` (flat mask)."""
    from hyperspy_mlspec.estimators import AutoencoderDecomposition

    params = dict(params)
    params.setdefault("random_state", 0)
    params.setdefault("epochs", _default_epochs(int((~excluded).sum())))
    est = AutoencoderDecomposition(n_components=n_components,
                                   show_progressbar=show_progressbar, **params)
    t = sio.table(signal, _mask_arg(signal, excluded))
    est.fit(t.rows)
    est.signal_axis_ = t.axis.to_dict()
    return est


_ROUNDS = 4  # trimming rounds of the robust fit


def _robust_z(v: np.ndarray) -> np.ndarray:
    med = np.median(v)
    mad = _MAD_TO_SIGMA * np.median(np.abs(v - med))
    return (v - med) / (mad if mad > 0 else (np.std(v) or 1.0))


def _prescreen(rows, n_components: int, seed: int = 0) -> np.ndarray:
    """Outlyingness of every row before any network is trained (robust PCA diagnostics).

    Rows are Poisson-normalised (Keenan-Kotula), projected on the first ``n_components``
    principal axes of a random sample; the score is the larger of the robust z-scores of
    the score distance (outlying along the axes, e.g. a rare phase that took an axis) and
    of the orthogonal distance (outside the axes). Used only to keep the most outlying
    spectra out of the network's data-driven initialisation.
    """
    rng = np.random.default_rng(seed)
    n = int(rows.shape[0])
    # at most 5000 rows and 32 MiB of float64 (bounded memory for long spectra; the SVD and
    # normalisation make several copies)
    size = min(n, 5000, max(500, 2**22 // max(1, int(rows.shape[1]))))
    idx = np.sort(rng.choice(n, size=size, replace=False))
    sample = rows[idx]
    sample = np.asarray(sample.compute() if hasattr(sample, "compute") else sample,
                        dtype=np.float64)
    channel = np.sqrt(np.clip(sample.mean(axis=0), 0, None))
    channel = np.where(channel > 0, channel, channel[channel > 0].min(initial=1.0))

    def normalise(x):
        x = np.asarray(x, dtype=np.float64)
        r = np.sqrt(np.clip(x.mean(axis=1, keepdims=True), 0, None))
        return x / (np.where(r > 0, r, 1.0) * channel)

    xs = normalise(sample)
    centre = xs.mean(axis=0)
    k = int(min(n_components, *xs.shape))
    _, _, vt = np.linalg.svd(xs - centre, full_matrices=False)
    axes = vt[:k]

    def diagnostics(block):
        xc = normalise(block) - centre
        scores = xc @ axes.T
        od = np.linalg.norm(xc - scores @ axes, axis=1)
        return np.column_stack([scores, od])

    if hasattr(rows, "dask"):
        out = rows.map_blocks(diagnostics, chunks=(rows.chunks[0], (k + 1,)),
                              dtype=np.float64).compute()
    else:
        out = diagnostics(rows)
    scores, od = out[:, :k], out[:, k]
    sd = np.sqrt(np.mean(np.column_stack([_robust_z(c) for c in scores.T]) ** 2, axis=1))
    return np.maximum(_robust_z(sd), _robust_z(od))


def _trimmed_fit(signal, excluded: np.ndarray, n_components: int, robust: float, metric: str,
                 smoothing: float, show_progressbar, params: dict):
    """Fit keeping anomalies out: robust start, then training on well-explained pixels only.

    The epoch budget is split in ``1 + _ROUNDS`` parts. The network is initialised and first
    trained (``partial_fit``, the same training loop) without the ``robust`` fraction of
    pixels most outlying in a robust PCA of the data (the estimator initialises its decoder
    from spread-out spectra, which would otherwise be the anomalies); then ``_ROUNDS``
    rounds of ``partial_fit`` on the pixels whose score is below the ``1 - robust``
    quantile, scores being recomputed before each round (trimmed likelihood, as in least
    trimmed squares). Rare phases never enter the training set, so they are not learned.
    Returns ``(model, number of pixels trimmed in the last round)``.
    """
    from hyperspy_mlspec.estimators import AutoencoderDecomposition

    params = dict(params)
    params.setdefault("random_state", 0)
    n_fit = int((~excluded).sum())
    total = params.pop("epochs", "auto")
    total = _default_epochs(n_fit) if total == "auto" else int(total)
    if robust <= 0:
        return _fit(signal, excluded, n_components, show_progressbar,
                    dict(params, epochs=total)), 0
    part = max(1, round(total / (1 + _ROUNDS)))
    keep_epochs = params.pop("partial_fit_epochs", 1)
    t = sio.table(signal, _mask_arg(signal, excluded))
    fit_index = np.flatnonzero(~excluded)

    def without(scores: np.ndarray) -> np.ndarray:
        worst = np.zeros(excluded.size, dtype=bool)
        worst[fit_index[scores > np.quantile(scores, 1.0 - robust)]] = True
        return worst

    worst = without(_prescreen(t.rows, n_components))
    model = AutoencoderDecomposition(n_components=n_components, epochs=total,
                                     partial_fit_epochs=part,
                                     show_progressbar=show_progressbar, **params)
    model.partial_fit(sio.table(signal, _mask_arg(signal, excluded | worst)).rows)
    model.signal_axis_ = t.axis.to_dict()
    metric = _resolve_metric(metric, model, signal)
    n_trimmed = int(worst.sum())
    try:
        for _ in range(_ROUNDS):
            worst = without(_table_scores(model, t, metric, smoothing))
            if (~(excluded | worst)).sum() < max(8, 2 * n_components):
                break
            n_trimmed = int(worst.sum())
            model.partial_fit(sio.table(signal, _mask_arg(signal, excluded | worst)).rows)
    finally:
        model.set_params(partial_fit_epochs=keep_epochs)
    return model, n_trimmed


def _full(n: int, index: np.ndarray | None, values: np.ndarray, fill=np.nan) -> np.ndarray:
    """Values of the table rows put back on the flat navigation grid."""
    values = np.asarray(values)
    out = np.full((n,) + values.shape[1:], fill, dtype=np.float64)
    if index is None:
        out[:] = values
    else:
        out[index] = values
    return out


def _anomaly_record(signal) -> dict:
    """The last ``anomaly_map`` entry of ``metadata.MLSpec`` (empty dict if none)."""
    if not signal.metadata.has_item("MLSpec"):
        return {}
    found: dict = {}
    for entry in signal.metadata.MLSpec.as_dictionary().values():
        if isinstance(entry, dict) and entry.get("operation") == "anomaly_map":
            found = entry
    return found


def _check_ndim(signal, what: str) -> None:
    if _nav_ndim(signal) > 2:
        raise ValueError(f"{what} supports navigation dimensions 0, 1 and 2; this signal has "
                         f"{_nav_ndim(signal)}. Fold or slice it first (s.inav[...]).")


# -- anomaly map ------------------------------------------------------------------------------
def anomaly_map(signal, model=None, metric: str = "auto", *, navigation_mask=None,
                n_components: int = 4, robust: float = 0.05, smoothing: float = 0.0,
                show_progressbar: bool | None = None, return_model: bool = False,
                **estimator_params: Any):
    """Per-pixel reconstruction error of a spectrum image: where the model fails.

    Parameters
    ----------
    signal
        HyperSpy signal with one signal dimension (EELS, EDS...), lazy or not.
    model
        A fitted model (e.g. :class:`~hyperspy_mlspec.AutoencoderDecomposition` trained on
        reference data of known phases, or loaded with :func:`hyperspy_mlspec.load_model`);
        other energy calibrations are converted and resampled onto its axis. None fits an
        autoencoder on ``signal`` itself (see ``robust``).
    metric
        ``"deviance"`` (mean Poisson deviance per channel, for counts), ``"mse"`` (mean
        squared error per channel) or ``"auto"``: the model's noise model, or deviance when
        the data are counts.
    navigation_mask
        Boolean array or signal, True excludes a pixel (its score is NaN).
    n_components
        Latent dimensions of the autoencoder fitted when ``model`` is None. Keep it modest:
        a high-capacity model learns rare phases and stops flagging them.
    robust
        Trimming fraction of the fit (``model`` None only): after a short fit on every
        pixel, training continues in rounds on the pixels whose score is below the
        ``1 - robust`` quantile only (scores recomputed each round), so anomalies covering
        less than this fraction of the map are never learned. 0 fits once on everything.
    smoothing
        Gaussian sigma, in channels, applied to the signed residuals along the signal axis
        before squaring (0: plain deviance/MSE). A few channels help to find weak anomalies
        that span several channels (a missing edge); the score keeps mean 1 per channel for
        Poisson noise, and the ``"pvalue"`` threshold of :func:`anomalies` accounts for it.
    show_progressbar
        None follows ``hs.preferences.General.show_progressbar``.
    return_model
        Also return the model used (fitted here when ``model`` is None).
    **estimator_params
        Passed to :class:`~hyperspy_mlspec.AutoencoderDecomposition`. Defaults here:
        ``random_state=0`` (reproducible maps) and ``epochs`` giving about 1000 optimiser
        steps in all; with ``robust`` the epochs are split between the first fit and the
        trimming rounds.

    Returns
    -------
    Signal2D, Signal1D or float
        The score on the navigation grid (Signal2D for a 2-D map, Signal1D for a line
        scan, with the navigation axes' names, scales and units; NaN where excluded or
        non-finite), or a float for a single spectrum. With ``return_model``, a tuple
        ``(score, model)``.

    Raises
    ------
    ValueError
        Every pixel excluded; a single spectrum without a model; a model trained on an
        energy range the signal does not cover.

    Warns
    -----
    UserWarning
        When spectra contain NaN or infinity: their score is NaN and their number is
        recorded in ``metadata.MLSpec`` (``n_nonfinite_pixels``).

    Examples
    --------
    >>> import hyperspy_mlspec
    >>> s = hyperspy_mlspec.data.eels_map((16, 16), n_channels=64, rare_phase=True)
    >>> score = s.mlspec.anomaly_map(epochs=5, show_progressbar=False)
    >>> score.axes_manager.signal_shape, score.metadata.Signal.quantity
    ((16, 16), 'Poisson deviance per channel')
    >>> s.plot(navigator=score)  # doctest: +SKIP
    """
    sio.check_signal(signal)
    _check_ndim(signal, "anomaly_map")
    if not (0 <= float(robust) < 0.5):
        raise ValueError(f"robust must be a fraction in [0, 0.5), got {robust!r}")
    if not (float(smoothing) >= 0 and math.isfinite(smoothing)):
        raise ValueError(f"smoothing must be >= 0 (channels), got {smoothing!r}")
    nav0 = _nav_ndim(signal) == 0
    if model is None and nav0:
        raise ValueError("a single spectrum cannot be scored against itself: pass a model "
                         "trained on reference data (model=...), e.g. one returned by "
                         "s_reference.mlspec.decomposition(...).")
    lazy = sio.is_lazy(signal)
    # NaN pixels are found up front when fitting or in memory; for a lazy signal scored with
    # a given model they propagate to NaN scores (which saves a pass over the data)
    nonfinite = _nonfinite_rows(signal) if (model is None or not lazy) else None
    excluded = _excluded(signal, navigation_mask, nonfinite)
    n_nav = excluded.size
    n_trimmed = 0
    fitted_here = model is None
    if model is None:
        model, n_trimmed = _trimmed_fit(signal, excluded, n_components, robust, metric,
                                        smoothing, show_progressbar, estimator_params)
        metric = _resolve_metric(metric, model, signal)
    else:
        if estimator_params:
            raise TypeError(f"estimator parameters {sorted(estimator_params)} are only used "
                            "when no model is given")
        metric = _resolve_metric(metric, model, signal)
    t = sio.table_for_model(signal, model, _mask_arg(signal, excluded))
    scores = _full(n_nav, t.nav_index, _table_scores(model, t, metric, smoothing))
    bad = ~np.isfinite(scores) & ~excluded
    scores[bad] = np.nan
    n_nonfinite = int(bad.sum() + (0 if nonfinite is None else nonfinite.sum()))
    if n_nonfinite:
        warnings.warn(f"{n_nonfinite} spectra contain NaN or infinity: their anomaly score "
                      "is NaN (recorded in metadata.MLSpec).", UserWarning, stacklevel=2)
    if nav0:
        return (float(scores[0]), model) if return_model else float(scores[0])
    quantity = _QUANTITY[metric] + (f" (residuals smoothed, sigma {smoothing:g} channels)"
                                    if smoothing > 0 else "")
    out = sio.navigation_image(signal, scores.reshape(t.nav_shape),
                               f"Anomaly score of {_title(signal)}", quantity)
    sio.record(out, "anomaly_map", metric=metric, model=type(model).__name__,
               n_components=int(getattr(model, "n_components", 0) or 0),
               n_channels=int(t.axis.size), smoothing=float(smoothing),
               fitted_on_signal=fitted_here, robust=float(robust) if fitted_here else 0.0,
               n_trimmed_pixels=n_trimmed, n_nonfinite_pixels=n_nonfinite,
               n_masked_pixels=int(excluded.sum()) - int(0 if nonfinite is None
                                                         else nonfinite.sum()))
    return (out, model) if return_model else out


_compute_map = anomaly_map  # reachable inside functions whose argument is named anomaly_map


# -- output signals ---------------------------------------------------------------------------
def _spectra_signal(signal, data: np.ndarray, title: str, axis: AxisInfo | None = None,
                    nav_name: str | None = None, nav_values: Sequence | None = None):
    """Small in-memory signal of the class of ``signal`` holding one spectrum (``data`` 1-D)
    or a stack of spectra along a navigation axis ``nav_name`` (``data`` 2-D)."""
    from hyperspy.signals import BaseSignal

    sig_axis = signal.axes_manager.signal_axes[0]
    if axis is None:
        sig_dict = dict(sig_axis.get_axis_dictionary(), navigate=False)
    else:
        units = sig_axis.units if sig_axis.units not in (None, "<undefined>") else None
        sig_dict = axis_dict(axis, units)
    axes = []
    data = np.asarray(data)
    if data.ndim == 2:
        axes.append({"name": nav_name or "index", "size": int(data.shape[0]), "offset": 0.0,
                     "scale": 1.0, "units": "<undefined>", "navigate": True})
    for key in ("_type", "is_binned"):
        sig_dict.pop(key, None)
    axes.append(sig_dict)
    metadata = signal.metadata.as_dictionary()
    metadata.pop("MLSpec", None)
    out = BaseSignal(data, axes=axes, metadata=metadata)
    out.axes_manager.signal_axes[0].is_binned = sig_axis.is_binned
    out._assign_subclass()
    out.metadata.General.title = title
    return out


def _nav_axes_array_order(signal) -> list:
    return list(signal.axes_manager.navigation_axes)[::-1]


def _calibrated(signal, index: Sequence[float]) -> tuple[float, ...]:
    """Calibrated position (HyperSpy order, x first) of a fractional array-order index."""
    out = []
    for ax, i in zip(_nav_axes_array_order(signal), index, strict=True):
        values = np.asarray(ax.axis, dtype=np.float64)
        out.append(float(np.interp(i, np.arange(values.size), values)))
    return tuple(out[::-1])


# -- anomalies --------------------------------------------------------------------------------
@dataclasses.dataclass(repr=False)
class AnomalyRegion:
    """One connected region of anomalous pixels.

    Attributes
    ----------
    label
        Its value in :attr:`AnomalyResult.labels` (1 = most anomalous region).
    size
        Number of pixels.
    centroid
        Calibrated centre in HyperSpy navigation order (x, y), in :attr:`units`.
    units
        Units of the navigation axes (x first).
    index
        Centre in array order (row, column), fractional pixels.
    mean_score, max_score
        Anomaly score over the region.
    mean_spectrum
        Mean spectrum of the region: a signal of the class and signal axis of the data.
    mean_residual
        Mean of data minus model reconstruction over the region (on the model's channels),
        or None when no model was available: what the model could not explain.
    """

    label: int
    size: int
    centroid: tuple[float, ...]
    units: tuple[str, ...]
    index: tuple[float, ...]
    mean_score: float
    max_score: float
    mean_spectrum: Any
    mean_residual: Any = None

    def __repr__(self) -> str:
        where = ", ".join(f"{c:.4g}" for c in self.centroid)
        units = self.units[0] if self.units and len(set(self.units)) == 1 else ""
        return (f"<AnomalyRegion {self.label}: {self.size} px at ({where}) {units}, "
                f"mean score {self.mean_score:.4g}>").replace(" ,", ",")


@dataclasses.dataclass(repr=False)
class AnomalyResult:
    """What :func:`anomalies` found.

    Attributes
    ----------
    score
        The anomaly map (see :func:`anomaly_map`).
    mask
        Boolean navigation signal, True on anomalous pixels (regions below ``min_size``
        removed).
    threshold
        Score above which a pixel is anomalous.
    method
        How the threshold was chosen, e.g. ``"median + 5 MAD"``.
    labels
        Integer navigation signal: 0 normal, ``k`` the ``k``-th region.
    regions
        One :class:`AnomalyRegion` per connected region (8-connected in 2-D), most
        anomalous first: largest sum over its pixels of the score's excess over the
        threshold, which weighs size and strength.
    model
        The model whose reconstruction defines the score (None if unknown).
    """

    score: Any
    mask: Any
    threshold: float
    method: str
    labels: Any
    regions: list[AnomalyRegion]
    model: Any = None

    @property
    def n_anomalous(self) -> int:
        """Number of anomalous pixels."""
        return int(np.count_nonzero(self.mask.data))

    def region_spectra(self):
        """Mean spectra of all regions stacked along a navigation axis ``"region"``
        (None without regions)."""
        if not self.regions:
            return None
        first = self.regions[0].mean_spectrum
        data = np.stack([r.mean_spectrum.data for r in self.regions])
        title = first.metadata.General.title.replace("region 1", "regions")
        return _spectra_signal(first, data, title, nav_name="region")

    def __repr__(self) -> str:
        n_valid = int(np.isfinite(self.score.data).sum())
        frac = self.n_anomalous / n_valid if n_valid else 0.0
        return (f"<AnomalyResult: {len(self.regions)} region(s), {self.n_anomalous} anomalous "
                f"pixel(s) ({frac:.2%}), threshold {self.threshold:.4g} ({self.method})>")


def threshold_value(score: np.ndarray, threshold: str = "mad", *, k: float = 5.0,
                    q: float = 0.99, alpha: float = 1e-3, n_channels: int | None = None,
                    smoothing: float = 0.0) -> tuple[float, str]:
    """Score threshold and a description of it.

    Parameters
    ----------
    score
        Scores (NaN ignored).
    threshold
        ``"mad"``: median + ``k`` robust standard deviations (1.4826 MAD); ``"quantile"``:
        the ``q`` quantile; ``"pvalue"``: the score whose chi-squared tail probability is
        ``alpha`` (Poisson deviance scores only; summed deviance ~ chi2 with ``n_channels``
        degrees of freedom under the model, corrected for ``smoothing``).
    k, q, alpha
        Parameters of the three rules.
    n_channels, smoothing
        Needed by ``"pvalue"`` (recorded by :func:`anomaly_map`).

    Returns
    -------
    (float, str)

    Examples
    --------
    >>> import numpy as np
    >>> threshold_value(np.array([1.0, 1.1, 0.9, 1.0, 5.0]), "mad", k=3)[0] > 1.1
    True
    """
    values = np.asarray(score, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if not values.size:
        raise ValueError("the anomaly map holds no finite score")
    if threshold == "mad":
        if not k > 0:
            raise ValueError(f"k must be positive, got {k!r}")
        med = float(np.median(values))
        spread = _MAD_TO_SIGMA * float(np.median(np.abs(values - med)))
        return med + k * spread, f"median + {k:g} MAD"
    if threshold == "quantile":
        if not 0 < q < 1:
            raise ValueError(f"q must be in (0, 1), got {q!r}")
        return float(np.quantile(values, q)), f"quantile {q:g}"
    if threshold == "pvalue":
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
        if not n_channels:
            raise ValueError("threshold='pvalue' needs the number of channels: use a map "
                             "made by anomaly_map with metric='deviance'.")
        from scipy.stats import chi2

        c, nu = effective_dof(int(n_channels), smoothing)
        return float(c * chi2.isf(alpha, nu) / n_channels), f"p < {alpha:g} (chi2)"
    raise ValueError(f"threshold must be one of {THRESHOLDS}, got {threshold!r}")


def anomalies(signal, anomaly_map=None, *, threshold: str = "mad", k: float = 5.0,
              q: float = 0.99, alpha: float = 1e-3, min_size: int = 1, model=None,
              **map_params: Any) -> AnomalyResult:
    """Threshold an anomaly map, find connected regions and their mean spectra.

    Parameters
    ----------
    signal
        The spectrum image (lazy or not).
    anomaly_map
        A map from :func:`anomaly_map` (its ``metadata.MLSpec`` tells the metric); None
        computes one with ``model`` and ``map_params``.
    threshold
        ``"mad"`` (median + ``k`` robust standard deviations, the default: the map's own
        spread, robust to the anomalies), ``"quantile"`` (flag the top ``1 - q``) or
        ``"pvalue"`` (per-pixel chi-squared test of the Poisson deviance at level
        ``alpha``; valid when the model fits the normal pixels to the noise level and counts
        are not too low: about 2x liberal at 5 counts per channel, conservative below 1;
        use ``alpha / n_pixels`` for a family-wise rate).
    k, q, alpha
        Parameters of the threshold rules.
    min_size
        Regions with fewer pixels are dropped from the mask.
    model
        Model defining the reconstruction (for ``mean_residual``). When ``anomaly_map`` is
        None and ``model`` is None, the model fitted by :func:`anomaly_map` is used.
    **map_params
        Passed to :func:`anomaly_map` when ``anomaly_map`` is None (``metric``,
        ``navigation_mask``, ``n_components``, ``robust``, ``smoothing``, estimator
        parameters...).

    Returns
    -------
    AnomalyResult
        ``mask``, ``labels``, ``regions`` (most anomalous first) with centroids, mean
        spectra and mean residuals.

    Examples
    --------
    >>> import hyperspy_mlspec
    >>> s = hyperspy_mlspec.data.eds_map((24, 24), n_channels=128, rare_phase=True,
    ...                                  rare_fraction=0.01)
    >>> found = s.mlspec.anomalies(epochs=20, show_progressbar=False)
    >>> found.regions[0].mean_spectrum.plot()  # doctest: +SKIP
    """
    sio.check_signal(signal)
    _check_ndim(signal, "anomalies")
    if _nav_ndim(signal) == 0:
        raise ValueError("anomalies needs a map or a line scan; for a single spectrum use "
                         "anomaly_map(model=...), which returns its score.")
    if anomaly_map is None:
        anomaly_map, fitted = _compute_map(signal, model, return_model=True, **map_params)
        model = fitted if model is None else model
    elif map_params:
        raise TypeError(f"{sorted(map_params)} are anomaly_map parameters; they are not used "
                        "when anomaly_map is given")
    score = np.asarray(anomaly_map.data, dtype=np.float64)
    nav_shape = tuple(signal.data.shape[: _nav_ndim(signal)])
    if score.shape != nav_shape:
        raise ValueError(f"anomaly_map has shape {score.shape}, the navigation shape of the "
                         f"signal is {nav_shape} (array order)")
    info = _anomaly_record(anomaly_map)
    if threshold == "pvalue" and info.get("metric", "deviance") != "deviance":
        raise ValueError("threshold='pvalue' needs a Poisson deviance map (metric='deviance')")
    if not (isinstance(min_size, (int, np.integer)) and min_size >= 1):
        raise ValueError(f"min_size must be a positive integer, got {min_size!r}")
    thr, method = threshold_value(score, threshold, k=k, q=q, alpha=alpha,
                                  n_channels=info.get("n_channels"),
                                  smoothing=float(info.get("smoothing", 0.0)))
    from scipy import ndimage

    with np.errstate(invalid="ignore"):
        mask = np.isfinite(score) & (score > thr)
    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    excess = np.bincount(labels.ravel(), weights=np.where(mask, score - thr, 0.0).ravel(),
                         minlength=n + 1)[1:]
    # most anomalous first: largest summed excess over the threshold (size and strength)
    keep = [i + 1 for i in np.lexsort((-sizes, -excess)) if sizes[i] >= min_size]
    relabel = np.zeros(n + 1, dtype=np.int32)
    relabel[keep] = np.arange(1, len(keep) + 1)
    labels = relabel[labels]
    mask = labels > 0
    regions = _regions(signal, labels, score, model)
    title = _title(signal)
    mask_sig = sio.navigation_image(signal, mask, f"Anomalous pixels of {title}")
    label_sig = sio.navigation_image(signal, labels, f"Anomalous regions of {title}",
                                     "region label")
    for out in (mask_sig, label_sig):
        sio.record(out, "anomalies", threshold=float(thr), method=method,
                   n_regions=len(regions), min_size=int(min_size))
    return AnomalyResult(anomaly_map, mask_sig, float(thr), method, label_sig, regions, model)


def _regions(signal, labels: np.ndarray, score: np.ndarray, model) -> list[AnomalyRegion]:
    """Per-region statistics, mean spectra and mean residuals (one pass per region)."""
    n_regions = int(labels.max(initial=0))
    if not n_regions:
        return []
    rows = sio.rows_of(signal)
    flat = labels.ravel()
    units = tuple(str(ax.units) for ax in signal.axes_manager.navigation_axes)
    title = _title(signal)
    out = []
    for lab in range(1, n_regions + 1):
        idx = np.flatnonzero(flat == lab)
        mean = rows[idx].astype(np.float64).mean(axis=0)
        residual = mean_diff = None
        if model is not None:
            region_mask = (flat != lab).reshape(labels.shape)
            t = sio.table_for_model(signal, model, region_mask)
            if t.lazy:  # streamed: only the channel-sized means are computed
                recon = _reconstruct(model, t.rows)
                mean_diff = (t.rows.astype(np.float64) - recon.astype(np.float64)).mean(axis=0)
            else:
                diff = np.asarray(t.rows, dtype=np.float64)
                diff = diff - np.asarray(_reconstruct(model, diff.astype(np.float32)),
                                         dtype=np.float64)
                mean_diff = diff.mean(axis=0)
        if hasattr(mean, "compute"):
            import dask

            mean, mean_diff = dask.compute(mean, mean_diff)
        mean = np.asarray(mean, np.float64)
        if mean_diff is not None:
            residual = _spectra_signal(signal, np.asarray(mean_diff, np.float64),
                                       f"Mean residual of anomalous region {lab} ({title})",
                                       axis=t.axis)
        pos = np.unravel_index(idx, labels.shape)
        index = tuple(float(p.mean()) for p in pos)
        out.append(AnomalyRegion(
            label=lab, size=int(idx.size), centroid=_calibrated(signal, index), units=units,
            index=index, mean_score=float(score.ravel()[idx].mean()),
            max_score=float(score.ravel()[idx].max()),
            mean_spectrum=_spectra_signal(signal, mean, f"Mean spectrum of anomalous region "
                                          f"{lab} ({title})"),
            mean_residual=residual))
    return out


# -- latent codes, clustering, embeddings -----------------------------------------------------
def _latent(signal, model, navigation_mask, n_components: int, show_progressbar,
            params: dict):
    """Fit (if needed) and encode: returns ``(codes, valid, model)`` with ``codes`` of the
    valid pixels (flat boolean ``valid``, array order)."""
    sio.check_signal(signal)
    _check_ndim(signal, "latent clustering")
    if _nav_ndim(signal) == 0:
        raise ValueError("clustering and embeddings need a map or a line scan; this signal "
                         "holds a single spectrum.")
    lazy = sio.is_lazy(signal)
    nonfinite = _nonfinite_rows(signal) if (model is None or not lazy) else None
    excluded = _excluded(signal, navigation_mask, nonfinite)
    if model is None:
        model = _fit(signal, excluded, n_components, show_progressbar, params)
    elif params:
        raise TypeError(f"estimator parameters {sorted(params)} are only used when no model "
                        "is given")
    if not hasattr(model, "transform"):
        raise TypeError(f"{type(model).__name__} has no transform(): latent codes need an "
                        "encoder such as AutoencoderDecomposition.")
    t = sio.table_for_model(signal, model, _mask_arg(signal, excluded))
    codes = model.transform(t.rows)
    codes = np.asarray(codes.compute() if hasattr(codes, "compute") else codes, np.float64)
    full = _full(excluded.size, t.nav_index, codes)
    valid = np.isfinite(full).all(axis=1) & ~excluded
    if not valid.any():
        raise ValueError("no pixel has a finite latent code")
    return full[valid], valid, model


def _features(codes: np.ndarray, normalize: str) -> np.ndarray:
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    if normalize == "shape":
        norm = np.linalg.norm(codes, axis=1, keepdims=True)
        return np.divide(codes, norm, out=np.zeros_like(codes), where=norm > 0)
    if normalize == "standard":
        std = codes.std(axis=0)
        return (codes - codes.mean(axis=0)) / np.where(std > 0, std, 1.0)
    return codes


def cluster_labels(features: np.ndarray, n_clusters: int, method: str = "kmeans",
                   random_state: int | None = 0) -> np.ndarray:
    """Cluster rows of ``features``; labels sorted by cluster size (0 = largest).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.r_[np.zeros((5, 2)), np.ones((3, 2))]
    >>> cluster_labels(X, 2).tolist()
    [0, 0, 0, 0, 0, 1, 1, 1]
    """
    if method not in CLUSTER_METHODS:
        raise ValueError(f"method must be one of {CLUSTER_METHODS}, got {method!r}")
    if not (isinstance(n_clusters, (int, np.integer)) and 1 <= n_clusters <= len(features)):
        raise ValueError(f"n_clusters must be an integer between 1 and the number of pixels "
                         f"({len(features)}), got {n_clusters!r}")
    if method == "kmeans":
        from sklearn.cluster import KMeans

        raw = KMeans(n_clusters, n_init=10, random_state=random_state).fit_predict(features)
    elif method == "gmm":
        from sklearn.mixture import GaussianMixture

        raw = GaussianMixture(n_clusters, n_init=3, random_state=random_state,
                              reg_covar=1e-5).fit_predict(features)
    else:
        if len(features) > _MAX_AGGLOMERATIVE:
            raise ValueError(f"method='agglomerative' needs memory quadratic in the number of "
                             f"pixels ({len(features)} > {_MAX_AGGLOMERATIVE}); use 'kmeans' "
                             "or 'gmm', or bin the navigation axes first (s.rebin).")
        from sklearn.cluster import AgglomerativeClustering

        raw = AgglomerativeClustering(n_clusters).fit_predict(features)
    sizes = np.bincount(raw, minlength=n_clusters)
    order = np.argsort(-sizes, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[raw]


@dataclasses.dataclass(repr=False)
class ClusterResult:
    """Latent phase map from :func:`cluster`.

    Attributes
    ----------
    labels
        Integer navigation signal: cluster of each pixel (0 = largest cluster), -1 where
        excluded (navigation_mask, NaN).
    centers
        Cluster-mean spectra of the data: navigation axis ``"cluster"`` plus the signal
        axis, same class and metadata as the data.
    codes
        Latent codes as a Signal1D (navigation axes of the data, signal axis ``"latent"``),
        NaN where excluded: the features before normalisation.
    sizes
        Pixels per cluster.
    model
        The model that gave the codes.
    method, normalize
        Clustering algorithm and code normalisation used.
    """

    labels: Any
    centers: Any
    codes: Any
    sizes: np.ndarray
    model: Any
    method: str
    normalize: str

    @property
    def n_clusters(self) -> int:
        return int(self.sizes.size)

    def __repr__(self) -> str:
        return (f"<ClusterResult: {self.n_clusters} clusters ({self.method}, "
                f"normalize={self.normalize!r}), sizes {self.sizes.tolist()}>")


def cluster(signal, model=None, n_clusters: int = 4, method: str = "kmeans", *,
            normalize: str = "shape", navigation_mask=None, n_components: int = 4,
            random_state: int | None = 0, show_progressbar: bool | None = None,
            **estimator_params: Any) -> ClusterResult:
    """Latent phase map: cluster the pixels' latent codes.

    Parameters
    ----------
    signal
        The spectrum image (lazy or not).
    model
        A fitted encoder (``transform``); None fits an
        :class:`~hyperspy_mlspec.AutoencoderDecomposition` on ``signal``.
    n_clusters
        Number of clusters.
    method
        ``"kmeans"``, ``"gmm"`` (Gaussian mixture) or ``"agglomerative"`` (Ward; up to
        30 000 pixels).
    normalize
        ``"shape"`` (default): codes divided by their L2 norm. Autoencoder codes carry the
        intensity of the spectrum (thickness, dose); their direction carries the spectral
        shape, so clusters follow chemistry, not thickness. ``"standard"``: each latent
        dimension standardised; ``"none"``: raw codes.
    navigation_mask
        True excludes a pixel (label -1).
    n_components
        Latent dimensions of the model fitted when ``model`` is None.
    random_state
        Seed of the clustering (and default seed of the fitted model).
    show_progressbar
        None follows ``hs.preferences.General.show_progressbar``.
    **estimator_params
        Passed to :class:`~hyperspy_mlspec.AutoencoderDecomposition` when fitting.

    Returns
    -------
    ClusterResult
        ``labels`` (navigation signal), ``centers`` (cluster-mean spectra), ``codes``.

    Notes
    -----
    To use HyperSpy's own clustering (and its plots) instead, feed it the latent codes;
    its ``preprocessing="norm"`` is the same normalisation as ``normalize="shape"``::

        codes = s.mlspec.encode(model)
        s.cluster_analysis(cluster_source=codes, source_for_centers=s,
                           preprocessing="norm", n_clusters=3)
        s.plot_cluster_results()

    Examples
    --------
    >>> import hyperspy_mlspec
    >>> s = hyperspy_mlspec.data.eds_map((16, 16), n_channels=128)
    >>> phases = s.mlspec.cluster(n_clusters=3, epochs=5, show_progressbar=False)
    >>> phases.labels.data.shape, phases.centers.axes_manager.navigation_shape
    ((16, 16), (3,))
    """
    params = dict(estimator_params)
    if model is None and random_state is not None:
        params.setdefault("random_state", random_state)
    codes, valid, model = _latent(signal, model, navigation_mask, n_components,
                                  show_progressbar, params)
    if codes.shape[0] < n_clusters:
        raise ValueError(f"n_clusters={n_clusters} but only {codes.shape[0]} pixels are left")
    labels_valid = cluster_labels(_features(codes, normalize), n_clusters, method,
                                  random_state)
    labels = np.full(valid.size, -1, dtype=np.int32)
    labels[valid] = labels_valid
    sizes = np.bincount(labels_valid, minlength=n_clusters)
    # cluster means of the data on its own channels: one matrix product, streamed if lazy
    t = sio.table(signal, _mask_arg(signal, ~valid))
    onehot = np.zeros((int(valid.sum()), n_clusters), dtype=np.float64)
    onehot[np.arange(onehot.shape[0]), labels_valid] = 1.0 / sizes[labels_valid]
    if t.lazy:
        import dask.array as da

        means = (da.from_array(onehot, chunks=(t.rows.chunks[0], n_clusters)).T
                 @ t.rows.astype(np.float64)).compute()
    else:
        means = onehot.T @ np.asarray(t.rows, dtype=np.float64)
    title = _title(signal)
    nav_shape = tuple(signal.data.shape[: _nav_ndim(signal)])
    label_sig = sio.navigation_image(signal, labels.reshape(nav_shape),
                                     f"Latent clusters of {title}", "cluster label")
    centers = _spectra_signal(signal, means, f"Cluster mean spectra of {title}",
                              nav_name="cluster")
    code_full = np.full((valid.size, codes.shape[1]), np.nan)
    code_full[valid] = codes
    code_sig = sio.vector_signal(signal, code_full.reshape(nav_shape + (codes.shape[1],)),
                                 f"Latent codes of {title}", "latent")
    for out in (label_sig, centers):
        sio.record(out, "cluster", method=method, normalize=normalize,
                   n_clusters=int(n_clusters), model=type(model).__name__)
    return ClusterResult(label_sig, centers, code_sig, sizes, model, method, normalize)


def _labels_array(color_by, n: int) -> np.ndarray | None:
    if color_by is None:
        return None
    if isinstance(color_by, ClusterResult):
        color_by = color_by.labels
    data = getattr(color_by, "data", color_by)
    data = np.asarray(data).ravel()
    if data.size != n:
        raise ValueError(f"color_by has {data.size} values; the embedding has {n} pixels")
    return data


def embedding_2d(signal, model=None, method: str = "pca", color_by=None, *,
                 normalize: str = "shape", navigation_mask=None, n_components: int = 4,
                 random_state: int | None = 0, show_progressbar: bool | None = None,
                 **estimator_params: Any):
    """2-D embedding of the latent codes, for looking at the structure of the data.

    Parameters
    ----------
    signal
        The spectrum image.
    model
        A fitted encoder; None fits an :class:`~hyperspy_mlspec.AutoencoderDecomposition`.
    method
        ``"pca"`` (linear, fast) or ``"umap"`` (needs the optional ``umap-learn``
        package).
    color_by
        Labels to colour a scatter plot drawn right away with :func:`plot_embedding`: a
        :class:`ClusterResult`, a navigation signal or an array; None draws nothing.
    normalize
        Code normalisation before embedding (see :func:`cluster`).
    navigation_mask, n_components, random_state, show_progressbar, **estimator_params
        As in :func:`cluster`.

    Returns
    -------
    hyperspy.signals.Signal1D
        Navigation axes of ``signal``, signal axis ``"embedding"`` of size 2 (NaN where
        excluded).

    Examples
    --------
    >>> import hyperspy_mlspec
    >>> s = hyperspy_mlspec.data.eds_map((16, 16), n_channels=128)
    >>> emb = s.mlspec.embedding_2d(epochs=5, show_progressbar=False)
    >>> emb.axes_manager.signal_shape
    (2,)
    >>> plot_embedding(emb, s.mlspec.cluster(n_clusters=3, epochs=5))  # doctest: +SKIP
    """
    if method not in ("pca", "umap"):
        raise ValueError(f"method must be 'pca' or 'umap', got {method!r}")
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise ImportError("method='umap' needs the optional package umap-learn: install "
                              "it with `pip install umap-learn`, or use method='pca'.") from None
    params = dict(estimator_params)
    if model is None and random_state is not None:
        params.setdefault("random_state", random_state)
    codes, valid, model = _latent(signal, model, navigation_mask, n_components,
                                  show_progressbar, params)
    features = _features(codes, normalize)
    if method == "pca":
        from sklearn.decomposition import PCA

        n = min(2, features.shape[1], features.shape[0])
        emb = PCA(n, random_state=random_state).fit_transform(features)
        if emb.shape[1] < 2:
            emb = np.column_stack([emb, np.zeros((emb.shape[0], 2 - emb.shape[1]))])
    else:
        emb = umap.UMAP(n_components=2, random_state=random_state).fit_transform(features)
    full = np.full((valid.size, 2), np.nan)
    full[valid] = emb
    nav_shape = tuple(signal.data.shape[: _nav_ndim(signal)])
    out = sio.vector_signal(signal, full.reshape(nav_shape + (2,)),
                            f"{method.upper()} embedding of the latent codes of "
                            f"{_title(signal)}", "embedding")
    sio.record(out, "embedding_2d", method=method, normalize=normalize,
               model=type(model).__name__)
    if color_by is not None:
        plot_embedding(out, color_by)
    return out


def plot_embedding(embedding, color_by=None, ax=None, *, marker_size: float = 6.0,
                   cmap: str = "tab10", **scatter_kwargs: Any):
    """Scatter plot of a 2-D embedding, coloured by cluster labels.

    Parameters
    ----------
    embedding
        Signal from :func:`embedding_2d` or an array ``(..., 2)``.
    color_by
        :class:`ClusterResult`, navigation signal or array of integer labels (-1 drawn grey
        as excluded); None draws a single colour.
    ax
        Matplotlib axes to draw on; None makes a new figure.
    marker_size, cmap
        Marker size and colour map of the labels.
    **scatter_kwargs
        Passed to :meth:`matplotlib.axes.Axes.scatter`.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import numpy as np
    >>> ax = plot_embedding(np.random.default_rng(0).normal(size=(50, 2)),
    ...                     np.arange(50) % 3)
    >>> len(ax.collections)
    3
    """
    import matplotlib.pyplot as plt

    data = np.asarray(getattr(embedding, "data", embedding), dtype=np.float64)
    if data.shape[-1] != 2:
        raise ValueError(f"expected a 2-D embedding (last axis of size 2), got {data.shape}")
    points = data.reshape(-1, 2)
    labels = _labels_array(color_by, points.shape[0])
    finite = np.isfinite(points).all(axis=1)
    if ax is None:
        _, ax = plt.subplots()
    if labels is None:
        ax.scatter(*points[finite].T, s=marker_size, **scatter_kwargs)
    else:
        colours = plt.get_cmap(cmap)
        for lab in np.unique(labels[finite]):
            sel = finite & (labels == lab)
            colour = "0.6" if lab < 0 else colours(int(lab) % colours.N)
            name = "excluded" if lab < 0 else f"cluster {int(lab)}"
            ax.scatter(*points[sel].T, s=marker_size, color=colour, label=name,
                       **scatter_kwargs)
        ax.legend(loc="best", fontsize="small", markerscale=2)
    ax.set_xlabel("embedding 1")
    ax.set_ylabel("embedding 2")
    title = getattr(getattr(getattr(embedding, "metadata", None), "General", None), "title",
                    None)
    ax.set_title(title or "Latent embedding", fontsize="medium")
    return ax


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
