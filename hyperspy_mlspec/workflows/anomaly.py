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
from collections.abc import Sequence
from typing import Any

import numpy as np

from hyperspy_mlspec import signals as sio
from hyperspy_mlspec._docs import N_COMPONENTS, fill
from hyperspy_mlspec.arrays import SpectraTable
from hyperspy_mlspec.scoring.context import ContextSettings, DualWindowModel, context_scores
from hyperspy_mlspec.scoring.regions import label_regions
from hyperspy_mlspec.scoring.scores import (
    QUANTITY,
    blocked_row_scores,
    prescreen,
    reconstruct,
    threshold_value,
)
from hyperspy_mlspec.workflows._common import (
    anomaly_record,
    calibrated,
    check_ndim,
    excluded_pixels,
    full_grid,
    mask_arg,
    nav_ndim,
    navigation_stack,
    nonfinite_rows,
    resolve_metric,
    spectra_signal,
    title_of,
)

__all__ = ["METHODS", "AnomalyRegion", "AnomalyResult", "anomalies", "anomaly_map"]


def _table_scores(model, table: SpectraTable, metric: str,
                  smoothing: float = 0.0) -> np.ndarray:
    """Scores of the rows of a table, computed (navigation-sized) even for lazy tables."""
    rows = table.rows
    recon = reconstruct(model, rows)
    if hasattr(rows, "dask"):
        import dask.array as da

        recon = da.asarray(recon).rechunk({0: rows.chunks[0], 1: -1})
        scores = da.map_blocks(blocked_row_scores, rows, recon, metric, smoothing,
                               drop_axis=1, dtype=np.float64)
        return np.asarray(scores.compute(), dtype=np.float64)
    return blocked_row_scores(rows, recon, metric, smoothing)


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
    t = sio.table(signal, mask_arg(signal, excluded))
    est.fit(t.rows)
    est.signal_axis_ = t.axis.to_dict()
    return est


_ROUNDS = 4  # trimming rounds of the robust fit

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
    t = sio.table(signal, mask_arg(signal, excluded))
    fit_index = np.flatnonzero(~excluded)

    def without(scores: np.ndarray) -> np.ndarray:
        worst = np.zeros(excluded.size, dtype=bool)
        worst[fit_index[scores > np.quantile(scores, 1.0 - robust)]] = True
        return worst

    worst = without(prescreen(t.rows, n_components))
    model = AutoencoderDecomposition(n_components=n_components, epochs=total,
                                     partial_fit_epochs=part,
                                     show_progressbar=show_progressbar, **params)
    model.partial_fit(sio.table(signal, mask_arg(signal, excluded | worst)).rows)
    model.signal_axis_ = t.axis.to_dict()
    metric = resolve_metric(metric, model, signal)
    n_trimmed = int(worst.sum())
    try:
        for _ in range(_ROUNDS):
            worst = without(_table_scores(model, t, metric, smoothing))
            if (~(excluded | worst)).sum() < max(8, 2 * n_components):
                break
            n_trimmed = int(worst.sum())
            model.partial_fit(sio.table(signal, mask_arg(signal, excluded | worst)).rows)
    finally:
        model.set_params(partial_fit_epochs=keep_epochs)
    return model, n_trimmed


# -- anomaly map ------------------------------------------------------------------------------
METHODS = ("auto", "context", "autoencoder")


def _context_settings(model, window, footprints, poisson: bool) -> ContextSettings:
    if isinstance(model, DualWindowModel):
        return model.settings
    if window is None:
        window = (1, 3)
    if not (isinstance(window, Sequence) and len(window) == 2):
        raise ValueError(f"window must be (guard, outer) radii in pixels, e.g. (1, 3); got "
                         f"{window!r}")
    fps = (0, 1) if footprints is None else tuple(footprints)
    return ContextSettings(guard=int(window[0]), outer=int(window[1]), footprints=fps,
                           poisson=poisson)


def _resolve_method(method: str, model, signal, estimator_params: dict) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if isinstance(model, DualWindowModel):
        if method == "autoencoder":
            raise ValueError("model is a DualWindowModel (spatial context): use "
                             "method='context' or 'auto' with it")
        method = "context"
    elif model is not None:
        if method == "context":
            raise ValueError("method='context' models each pixel from its surroundings and "
                             "takes no fitted model; drop model=..., or keep the model and "
                             "use method='auto' (per-pixel reconstruction error).")
        return "model"
    n_dim = nav_ndim(signal)
    if n_dim == 0:
        raise ValueError("a single spectrum cannot be scored against itself and has no "
                         "surroundings: pass a model trained on reference data (model=...), "
                         "e.g. one returned by s_reference.mlspec.decomposition(...).")
    if method == "auto":
        method = "context"
    if method == "context":
        # the context score is deterministic: a seed (e.g. the command line's --seed) has
        # nothing to set
        if set(estimator_params) - {"random_state"}:
            raise TypeError(f"{sorted(set(estimator_params) - {'random_state'})} are "
                            "autoencoder parameters: the "
                            "default spatial-context score fits no network. Pass "
                            "method='autoencoder' to fit one on the map, or drop them.")
    return method


@fill
def anomaly_map(signal, model=None, metric: str = "auto", *, method: str = "auto",
                navigation_mask=None, window: tuple[int, int] | None = None,
                footprints: Sequence[int] | None = None, return_scales: bool = False,
                n_components: int = N_COMPONENTS, robust: float = 0.05,
                smoothing: float = 0.0,
                show_progressbar: bool | None = None, return_model: bool = False,
                **estimator_params: Any):
    """Per-pixel anomaly score of a spectrum image: what the map's context, or a model,
    does not explain.

    Parameters
    ----------
    signal
        HyperSpy signal with one signal dimension (EELS, EDS...), lazy or not.
    model
        None (the default: ``method`` decides), a fitted model (e.g.
        :class:`~hyperspy_mlspec.AutoencoderDecomposition` trained on reference data of
        known phases, or loaded with :func:`hyperspy_mlspec.load_model`; other energy
        calibrations are converted and resampled onto its axis) whose per-pixel
        reconstruction error is the score, or a
        :class:`~hyperspy_mlspec.scoring.context.DualWindowModel` returned by an earlier
        call (same windows and channel noise on another map).
    metric
        ``"deviance"`` (Poisson: counts), ``"mse"`` (Gaussian: other data) or ``"auto"``:
        the model's noise model, or deviance when the data are counts. With
        ``method="context"`` it chooses the weights of the context fit; the score is then a
        z-score.
    method
        ``"auto"`` (default): ``"context"`` for maps and line scans, the per-pixel
        reconstruction error when a model is given. ``"context"``: each pixel's expected
        spectrum is fitted on the ring of pixels around it, never on itself (see
        :mod:`hyperspy_mlspec.scoring.context`); residuals are whitened per channel,
        reduced to the energy scales that carry signal and scored at several spatial
        footprints. ``"autoencoder"``: a small autoencoder fitted on the map with
        trimming (``robust``), scored per pixel (what this function did before the
        spatial score; single spectra need a model).
    navigation_mask
        Boolean array or signal, True excludes a pixel (its score is NaN; it is not used as
        context either).
    window
        ``(guard, outer)`` Chebyshev radii in pixels of the dual window (``"context"``;
        default ``(1, 3)``: the 3x3 pixels around a pixel are left out, the ring out to
        7x7 predicts it). Inclusions up to about ``2 * guard + 1`` pixels across are never
        used to predict themselves; raise ``guard`` for larger ones.
    footprints
        Chebyshev radii of the spatial footprints scored (``"context"``; default
        ``(0, 1)``: the pixel alone and its 3x3 neighbourhood summed).
    return_scales
        Also return the per-footprint maps (``"context"``): a signal stack with a
        navigation axis ``"footprint"`` (pixels across) over the navigation axes of
        ``signal``.
    n_components
        Latent dimensions of the autoencoder (``method="autoencoder"``). Keep it modest:
        a high-capacity model learns rare phases and stops flagging them.
    robust
        Trimming fraction of the autoencoder fit: after a short fit on every pixel,
        training continues in rounds on the pixels whose score is below the
        ``1 - robust`` quantile only, so anomalies covering less than this fraction of the
        map are never learned. 0 fits once on everything.
    smoothing
        Gaussian sigma, in channels, applied to the signed residuals of a per-pixel score
        along the signal axis before squaring (0: plain deviance/MSE); the ``"pvalue"``
        threshold of :func:`anomalies` accounts for it. The context score has its own
        energy scales and refuses it.
    %SHOW_PROGRESSBAR%
    return_model
        Also return the model used: the fitted autoencoder, the given model, or the
        :class:`~hyperspy_mlspec.scoring.context.DualWindowModel` of the context score.
    **estimator_params
        Passed to :class:`~hyperspy_mlspec.AutoencoderDecomposition`
        (``method="autoencoder"``). Defaults there: ``random_state=0`` and ``epochs``
        giving about 1000 optimiser steps in all.

    Returns
    -------
    Signal2D, Signal1D or float
        The score on the navigation grid (Signal2D for a 2-D map, Signal1D for a line
        scan, with the navigation axes' names, scales and units; NaN where excluded or
        non-finite), or a float for a single spectrum; followed by the per-footprint maps
        (``return_scales``) and the model (``return_model``) when asked for.

    Raises
    ------
    ValueError
        Every pixel excluded; a single spectrum without a model; more than two navigation
        dimensions; a model trained on an energy range the signal does not cover.

    Warns
    -----
    UserWarning
        When spectra contain NaN or infinity: their score is NaN and their number is
        recorded in ``metadata.MLSpec`` (``n_nonfinite_pixels``).

    Notes
    -----
    The context score is a robust z-score: about standard normal over ordinary pixels
    (median 0, MAD-based spread 1), so ``anomalies(threshold="mad", k=5)`` flags pixels 5
    robust standard deviations out. Pixels are neighbours by index: non-uniform navigation
    axes are treated as a grid.

    Examples
    --------
    >>> import hyperspy_mlspec
    >>> s = hyperspy_mlspec.data.eels_map((16, 16), n_channels=64, rare_phase=True)
    >>> score = s.mlspec.anomaly_map(show_progressbar=False)
    >>> score.axes_manager.signal_shape, score.metadata.Signal.quantity
    ((16, 16), 'Anomaly z-score (spatial context)')
    >>> score, scales = s.mlspec.anomaly_map(return_scales=True)
    >>> scales.axes_manager.navigation_axes[0].name, scales.data.shape
    ('footprint', (2, 16, 16))
    >>> s.plot(navigator=score)  # doctest: +SKIP
    """
    sio.check_signal(signal)
    check_ndim(signal, "anomaly_map")
    if not (0 <= float(robust) < 0.5):
        raise ValueError(f"robust must be a fraction in [0, 0.5), got {robust!r}")
    if not (float(smoothing) >= 0 and math.isfinite(smoothing)):
        raise ValueError(f"smoothing must be >= 0 (channels), got {smoothing!r}")
    method = _resolve_method(method, model, signal, estimator_params)
    if method == "context":
        if smoothing:
            raise ValueError("smoothing applies to per-pixel scores; the context score "
                             "already looks at energy scales from 1 channel up to a quarter "
                             "of the spectrum. Drop smoothing=, or use method='autoencoder'.")
        return _context_map(signal, model, metric, navigation_mask, window, footprints,
                            return_scales, show_progressbar, return_model)
    if return_scales:
        raise ValueError("return_scales gives the per-footprint maps of the spatial-context "
                         "score (method='context'); a per-pixel score has a single scale.")
    if window is not None or footprints is not None:
        raise ValueError("window and footprints are settings of method='context'")
    nav0 = nav_ndim(signal) == 0
    lazy = sio.is_lazy(signal)
    # NaN pixels are found up front when fitting or in memory; for a lazy signal scored with
    # a given model they propagate to NaN scores (which saves a pass over the data)
    nonfinite = nonfinite_rows(signal) if (model is None or not lazy) else None
    excluded = excluded_pixels(signal, navigation_mask, nonfinite)
    n_nav = excluded.size
    n_trimmed = 0
    fitted_here = model is None
    if model is None:
        model, n_trimmed = _trimmed_fit(signal, excluded, n_components, robust, metric,
                                        smoothing, show_progressbar, estimator_params)
        metric = resolve_metric(metric, model, signal)
    else:
        if estimator_params:
            raise TypeError(f"estimator parameters {sorted(estimator_params)} are only used "
                            "when no model is given")
        metric = resolve_metric(metric, model, signal)
    t = sio.table_for_model(signal, model, mask_arg(signal, excluded))
    scores = full_grid(n_nav, t.nav_index, _table_scores(model, t, metric, smoothing))
    bad = ~np.isfinite(scores) & ~excluded
    scores[bad] = np.nan
    n_nonfinite = int(bad.sum() + (0 if nonfinite is None else nonfinite.sum()))
    _warn_nonfinite(n_nonfinite)
    if nav0:
        return (float(scores[0]), model) if return_model else float(scores[0])
    quantity = QUANTITY[metric] + (f" (residuals smoothed, sigma {smoothing:g} channels)"
                                    if smoothing > 0 else "")
    out = sio.navigation_image(signal, scores.reshape(t.nav_shape),
                               f"Anomaly score of {title_of(signal)}", quantity)
    sio.record(out, "anomaly_map", method="autoencoder" if fitted_here else "model",
               metric=metric, model=type(model).__name__,
               n_components=int(getattr(model, "n_components", 0) or 0),
               n_channels=int(t.axis.size), smoothing=float(smoothing),
               fitted_on_signal=fitted_here, robust=float(robust) if fitted_here else 0.0,
               n_trimmed_pixels=n_trimmed, n_nonfinite_pixels=n_nonfinite,
               n_masked_pixels=int(excluded.sum()) - int(0 if nonfinite is None
                                                         else nonfinite.sum()))
    return (out, model) if return_model else out


def _warn_nonfinite(n: int) -> None:
    if n:
        warnings.warn(f"{n} spectra contain NaN or infinity: their anomaly score is NaN "
                      "(recorded in metadata.MLSpec).", UserWarning, stacklevel=3)


def _context_map(signal, model, metric, navigation_mask, window, footprints,
                 return_scales: bool, show_progressbar, return_model: bool):
    """The spatial-context score (:func:`hyperspy_mlspec.scoring.context.context_scores`)
    as signals; lazy data are read in overlapping blocks of rows."""
    if metric not in ("auto", "deviance", "mse"):
        raise ValueError(f"metric must be one of ('auto', 'deviance', 'mse'), got {metric!r}")
    user = sio.navigation_mask_array(signal, navigation_mask)
    nav_shape = tuple(signal.data.shape[: nav_ndim(signal)])
    excluded = np.zeros(int(np.prod(nav_shape)), dtype=bool) if user is None else user
    poisson = resolve_metric(metric, None, signal) == "deviance"
    settings = _context_settings(model, window, footprints, poisson)
    noise = model.noise_scale if isinstance(model, DualWindowModel) else None
    if noise is not None and np.size(noise) != signal.axes_manager.signal_axes[0].size:
        raise ValueError(f"the DualWindowModel was made on spectra of {np.size(noise)} "
                         f"channels; this signal has {signal.axes_manager.signal_axes[0].size}")
    data = signal.data
    if poisson and not sio.is_lazy(signal) and np.nanmin(data, initial=0.0) < 0:
        raise ValueError("metric='deviance' needs non-negative counts, but the data contain "
                         "negative values; use metric='mse'.")
    result = context_scores(data, ~excluded.reshape(nav_shape), settings, noise_scale=noise,
                            show_progressbar=show_progressbar)
    score = result.score.reshape(nav_shape)
    n_nonfinite = int((~np.isfinite(score.ravel()) & ~excluded).sum())
    _warn_nonfinite(n_nonfinite)
    title = title_of(signal)
    out = sio.navigation_image(signal, score, f"Anomaly score of {title}",
                               QUANTITY["zscore"])
    fps = [2 * f + 1 for f in settings.footprints]
    details = dict(method="context", metric="zscore",
                   noise="poisson" if settings.poisson else "gaussian",
                   guard=settings.guard, outer=settings.outer, footprints=fps,
                   widths=list(result.widths),
                   n_channels=int(signal.axes_manager.signal_axes[0].size),
                   fitted_on_signal=True, n_nonfinite_pixels=n_nonfinite,
                   n_masked_pixels=int(excluded.sum()))
    sio.record(out, "anomaly_map", **details)
    ref = DualWindowModel(settings, result.noise_scale)
    extra = []
    if return_scales:
        stack = navigation_stack(signal, result.footprints.reshape((-1,) + nav_shape),
                                 f"Anomaly score per footprint of {title}",
                                 QUANTITY["zscore"], "footprint", fps, "px")
        sio.record(stack, "anomaly_map", **details)
        extra.append(stack)
    if return_model:
        extra.append(ref)
    return (out, *extra) if extra else out


_compute_map = anomaly_map  # reachable inside functions whose argument is named anomaly_map


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
        return spectra_signal(first, data, title, nav_name="region")

    def __repr__(self) -> str:
        n_valid = int(np.isfinite(self.score.data).sum())
        frac = self.n_anomalous / n_valid if n_valid else 0.0
        return (f"<AnomalyResult: {len(self.regions)} region(s), {self.n_anomalous} anomalous "
                f"pixel(s) ({frac:.2%}), threshold {self.threshold:.4g} ({self.method})>")


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
    >>> found = s.mlspec.anomalies(show_progressbar=False)
    >>> found.regions[0].mean_spectrum.plot()  # doctest: +SKIP
    """
    sio.check_signal(signal)
    check_ndim(signal, "anomalies")
    if nav_ndim(signal) == 0:
        raise ValueError("anomalies needs a map or a line scan; for a single spectrum use "
                         "anomaly_map(model=...), which returns its score.")
    if anomaly_map is None:
        if map_params.get("return_scales") or "return_model" in map_params:
            raise TypeError("return_scales/return_model are anomaly_map options; call "
                            "anomaly_map(...) and pass its map to anomalies(anomaly_map=...)")
        map_params.pop("return_scales", None)
        anomaly_map, fitted = _compute_map(signal, model, return_model=True, **map_params)
        model = fitted if model is None else model
    elif map_params:
        raise TypeError(f"{sorted(map_params)} are anomaly_map parameters; they are not used "
                        "when anomaly_map is given")
    score = np.asarray(anomaly_map.data, dtype=np.float64)
    nav_shape = tuple(signal.data.shape[: nav_ndim(signal)])
    if score.shape != nav_shape:
        raise ValueError(f"anomaly_map has shape {score.shape}, the navigation shape of the "
                         f"signal is {nav_shape} (array order)")
    info = anomaly_record(anomaly_map)
    metric = info.get("metric", "deviance")
    if threshold == "pvalue" and metric not in ("deviance", "zscore"):
        raise ValueError("threshold='pvalue' needs a Poisson deviance map (metric='deviance') "
                         "or a spatial-context z-score map")
    if not (isinstance(min_size, (int, np.integer)) and min_size >= 1):
        raise ValueError(f"min_size must be a positive integer, got {min_size!r}")
    thr, method = threshold_value(score, threshold, k=k, q=q, alpha=alpha,
                                  n_channels=info.get("n_channels"),
                                  smoothing=float(info.get("smoothing", 0.0)),
                                  metric=metric)
    labels = label_regions(score, thr, min_size)
    mask = labels > 0
    regions = _regions(signal, labels, score, model, valid=np.isfinite(score))
    title = title_of(signal)
    mask_sig = sio.navigation_image(signal, mask, f"Anomalous pixels of {title}")
    label_sig = sio.navigation_image(signal, labels, f"Anomalous regions of {title}",
                                     "region label")
    for out in (mask_sig, label_sig):
        sio.record(out, "anomalies", threshold=float(thr), method=method,
                   n_regions=len(regions), min_size=int(min_size))
    return AnomalyResult(anomaly_map, mask_sig, float(thr), method, label_sig, regions, model)


def _regions(signal, labels: np.ndarray, score: np.ndarray, model,
             valid: np.ndarray | None = None) -> list[AnomalyRegion]:
    """Per-region statistics, mean spectra and mean residuals (one pass per region)."""
    n_regions = int(labels.max(initial=0))
    if not n_regions:
        return []
    rows = sio.rows_of(signal)
    flat = labels.ravel()
    units = tuple(str(ax.units) for ax in signal.axes_manager.navigation_axes)
    title = title_of(signal)
    out = []
    for lab in range(1, n_regions + 1):
        idx = np.flatnonzero(flat == lab)
        mean = rows[idx].astype(np.float64).mean(axis=0)
        residual = mean_diff = None
        if isinstance(model, DualWindowModel):
            mean_diff = _context_residual(signal, model, labels == lab, valid)
        elif model is not None:
            region_mask = (flat != lab).reshape(labels.shape)
            t = sio.table_for_model(signal, model, region_mask)
            if t.lazy:  # streamed: only the channel-sized means are computed
                recon = reconstruct(model, t.rows)
                mean_diff = (t.rows.astype(np.float64) - recon.astype(np.float64)).mean(axis=0)
            else:
                diff = np.asarray(t.rows, dtype=np.float64)
                diff = diff - np.asarray(reconstruct(model, diff.astype(np.float32)),
                                         dtype=np.float64)
                mean_diff = diff.mean(axis=0)
        if hasattr(mean, "compute"):
            import dask

            mean, mean_diff = dask.compute(mean, mean_diff)
        mean = np.asarray(mean, np.float64)
        if mean_diff is not None:
            axis = None if isinstance(model, DualWindowModel) else t.axis
            residual = spectra_signal(signal, np.asarray(mean_diff, np.float64),
                                      f"Mean residual of anomalous region {lab} ({title})",
                                      axis=axis)
        pos = np.unravel_index(idx, labels.shape)
        index = tuple(float(p.mean()) for p in pos)
        out.append(AnomalyRegion(
            label=lab, size=int(idx.size), centroid=calibrated(signal, index), units=units,
            index=index, mean_score=float(score.ravel()[idx].mean()),
            max_score=float(score.ravel()[idx].max()),
            mean_spectrum=spectra_signal(signal, mean, f"Mean spectrum of anomalous region "
                                          f"{lab} ({title})"),
            mean_residual=residual))
    return out


def _context_residual(signal, model: DualWindowModel, region: np.ndarray,
                      valid: np.ndarray | None) -> np.ndarray:
    """Mean of data minus dual-window expected spectra over a region: only the region's
    bounding box and the context around it are read (computed when lazy)."""
    nav_shape = region.shape
    if valid is None:
        valid = np.ones(nav_shape, dtype=bool)
    pad = model.settings.outer
    where = np.nonzero(region)
    box = tuple(slice(max(0, int(w.min()) - pad), int(w.max()) + pad + 1) for w in where)
    crop = signal.data[box]
    crop = np.asarray(crop.compute() if hasattr(crop, "compute") else crop, dtype=np.float64)
    expected = model.expected(crop, valid[box])
    diff = (crop - expected)[region[box]]
    return np.nanmean(diff, axis=0) if diff.size else np.full(crop.shape[-1], np.nan)
