"""Anomaly scores of spectra against expected spectra, and thresholds (arrays only).

Scores
------
``"deviance"``
    Mean Poisson deviance per channel ``2 [x log(x / mu) - (x - mu)]`` between the counts
    ``x`` and the expected spectrum ``mu``. For Poisson data that the model explains it is
    about 1 whatever the brightness of the pixel (within a few % down to about 5 counts per
    channel; less below 1 count), so bright pixels are not flagged for being bright. Summed
    over the ``n`` channels it is approximately chi-squared with ``n`` degrees of freedom
    (the ``"pvalue"`` threshold).
``"mse"``
    Mean squared error per channel, in data units squared (non-count data).
``"zscore"``
    Spatial-context scores (:mod:`hyperspy_mlspec.scoring.context`): robust standard
    deviations above the map's typical pixel, about standard normal where nothing is
    unusual.

Nothing here imports HyperSpy: these functions take numpy (or dask) arrays and fitted
models with ``reconstruct`` or ``transform``/``inverse_transform``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = [
    "METRICS",
    "QUANTITY",
    "SCORE_VALUES",
    "THRESHOLDS",
    "blocked_row_scores",
    "effective_dof",
    "prescreen",
    "reconstruct",
    "robust_z",
    "row_scores",
    "smoothed_mean_square",
    "smoothing_kernel",
    "threshold_value",
]

METRICS = ("auto", "deviance", "mse")
THRESHOLDS = ("mad", "quantile", "pvalue")
QUANTITY = {"deviance": "Poisson deviance per channel",
            "mse": "Mean squared error per channel",
            "zscore": "Anomaly z-score (spatial context)"}
MAD_TO_SIGMA = 1.482602218505602  # MAD of a normal distribution times this is its sigma


def smoothing_kernel(sigma: float) -> np.ndarray:
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
    k = smoothing_kernel(smoothing)
    acf = np.correlate(k, k, mode="full")
    rho = acf / acf.max()
    c = float((rho**2).sum())
    return c, n_channels / c


def row_scores(x: np.ndarray, mu: np.ndarray, metric: str,
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
        if smoothing <= 0:
            return ((x - mu) ** 2).mean(axis=1)
        return smoothed_mean_square(x - mu, smoothing)
    if np.nanmin(x, initial=0.0) < 0:
        raise ValueError("metric='deviance' needs non-negative counts, but the data "
                         "contain negative values; use metric='mse'.")
    mu = np.maximum(mu, 1e-8)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_term = np.where(x > 0, x * np.log(np.maximum(x, 1e-8) / mu), 0.0)
    elements = np.maximum(2.0 * (log_term - (x - mu)), 0.0)
    if smoothing <= 0:
        return elements.mean(axis=1)  # the signed residuals are only needed to smooth
    return smoothed_mean_square(np.sign(x - mu) * np.sqrt(elements), smoothing)


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
    k = smoothing_kernel(sigma)
    weight = convolve1d(np.ones(residual.shape[-1]), k**2, mode="constant")
    smoothed = convolve1d(residual, k, axis=-1, mode="constant")
    return (smoothed**2 / weight).mean(axis=-1)


def reconstruct(model, rows):
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
SCORE_VALUES = 2**17


def blocked_row_scores(x: np.ndarray, mu: np.ndarray, metric: str, smoothing: float = 0.0,
                        map_chunks: Callable = map) -> np.ndarray:
    """:func:`row_scores` over chunks of rows (the deviance's float64 temporaries are ~10x
    a chunk's size); ``map_chunks`` may be a thread pool's ``map``."""
    step = max(1, SCORE_VALUES // max(1, int(x.shape[1])))

    def chunk(i: int) -> np.ndarray:
        return row_scores(x[i:i + step], mu[i:i + step], metric, smoothing)

    parts = list(map_chunks(chunk, range(0, len(x), step)))
    return np.concatenate(parts) if parts else np.empty(0)


def robust_z(v: np.ndarray) -> np.ndarray:
    med = np.median(v)
    mad = MAD_TO_SIGMA * np.median(np.abs(v - med))
    return (v - med) / (mad if mad > 0 else (np.std(v) or 1.0))


def prescreen(rows, n_components: int, seed: int = 0) -> np.ndarray:
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
    sd = np.sqrt(np.mean(np.column_stack([robust_z(c) for c in scores.T]) ** 2, axis=1))
    return np.maximum(robust_z(sd), robust_z(od))

def threshold_value(score: np.ndarray, threshold: str = "mad", *, k: float = 5.0,
                    q: float = 0.99, alpha: float = 1e-3, n_channels: int | None = None,
                    smoothing: float = 0.0, metric: str = "deviance") -> tuple[float, str]:
    """Score threshold and a description of it.

    Parameters
    ----------
    score
        Scores (NaN ignored).
    threshold
        ``"mad"``: median + ``k`` robust standard deviations (1.4826 MAD); ``"quantile"``:
        the ``q`` quantile; ``"pvalue"``: the score whose chi-squared tail probability is
        ``alpha`` (Poisson deviance scores: summed deviance ~ chi2 with ``n_channels``
        degrees of freedom under the model, corrected for ``smoothing``; z-scores: the
        standard normal tail).
    k, q, alpha
        Parameters of the three rules.
    n_channels, smoothing
        Needed by ``"pvalue"`` for deviance scores (recorded by ``anomaly_map``).
    metric
        ``"deviance"`` or ``"zscore"`` (spatial-context scores), for ``"pvalue"``.

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
        spread = MAD_TO_SIGMA * float(np.median(np.abs(values - med)))
        return med + k * spread, f"median + {k:g} MAD"
    if threshold == "quantile":
        if not 0 < q < 1:
            raise ValueError(f"q must be in (0, 1), got {q!r}")
        return float(np.quantile(values, q)), f"quantile {q:g}"
    if threshold == "pvalue":
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
        if metric == "zscore":
            from scipy.stats import norm

            return float(norm.isf(alpha)), f"p < {alpha:g} (normal)"
        if not n_channels:
            raise ValueError("threshold='pvalue' needs the number of channels: use a map "
                             "made by anomaly_map with metric='deviance'.")
        from scipy.stats import chi2

        c, nu = effective_dof(int(n_channels), smoothing)
        return float(c * chi2.isf(alpha, nu) / n_channels), f"p < {alpha:g} (chi2)"
    raise ValueError(f"threshold must be one of {THRESHOLDS}, got {threshold!r}")

