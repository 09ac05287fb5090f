"""Noise statistics of spectra (numpy only): detector gain and channel correlation.

Raw detector counts are often electrons times a gain (variance = gain x counts). Poisson
splitting (Noise2Self halves, held-out scores) must split electrons: halves of the
detector's units share most of their noise (each electron's units go to both halves).
A detector's point-spread function also spreads each electron over neighbouring
channels, so their noise is correlated: no split of the counts then gives independent
halves (recorrupted pairs with noise of the measured correlation do), and noise is
stronger along smooth directions than a white-noise model says.
"""

from __future__ import annotations

import numpy as np

#: Counts whose measured gain is this close to 1 are treated as unit-gain counts (split
#: as integer counts); the estimate itself scatters by about 1 %.
UNIT_GAIN_TOLERANCE = 0.1
#: Fewest spectra :func:`count_gain` is trusted on (its median scatters more below).
MIN_GAIN_ROWS = 200
#: Channels over which the noise's correlation along energy is measured.
NOISE_LAGS = 4
#: |correlation| of neighbouring channels' noise above which it is taken into account.
CORRELATED = 0.05
#: A count offset (pedestal) above this fraction of the median count changes the noise
#: model (:func:`count_offset`).
PEDESTAL = 0.3
_NOISE_ROWS = 2000  # spectra noise_statistics reads (half fit the structure, half measure)


def count_gain(sample: np.ndarray) -> float | None:
    """Detector gain of count data (data units per count), or None if the data do not look
    like (scaled) Poisson counts.

    Poisson counts ``x = g n`` have ``Var(x_c - x_{c+1}) = g (E x_c + E x_{c+1})`` for
    neighbouring channels of a smooth spectrum; the median ratio over channels is ``g``.

    Parameters
    ----------
    sample
        ``(n_spectra, n_channels)`` spectra (a few hundred or more).

    Returns
    -------
    float or None

    Examples
    --------
    >>> import numpy as np
    >>> x = 4.0 * np.random.default_rng(0).poisson(30.0, (2000, 64))
    >>> round(count_gain(x), 1)
    4.0
    """
    x = np.asarray(sample, dtype=np.float64)
    x = x[np.isfinite(x).all(axis=1)]
    if x.size == 0 or x.min() < 0 or x.max() <= 0 or x.shape[1] < 4:
        return None
    d = np.diff(x, axis=1)
    s = x[:, 1:] + x[:, :-1]
    mean_s = s.mean(axis=0)
    ok = mean_s > 0
    if not ok.any():
        return None
    ratio = (d[:, ok] - d[:, ok].mean(0)).var(axis=0) / mean_s[ok]
    g = float(np.median(ratio))
    return g if np.isfinite(g) and g > 0 else None


def is_unit_gain(gain: float | None) -> bool:
    """Whether counts of this measured gain are split as plain integer counts (None: no
    gain measured, taken as 1)."""
    return gain is None or abs(float(gain) - 1.0) <= UNIT_GAIN_TOLERANCE


def _lag_cross(V: np.ndarray, off: int) -> np.ndarray:
    """``sum_c V[c]^T V[c + off]`` (k x k) for ``off >= 0``."""
    n = V.shape[0]
    if off >= n:
        return np.zeros((V.shape[1], V.shape[1]))
    return V[: n - off].T @ V[off:]


def channel_correlation(R: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Correlation of noise between channels 1 to ``NOISE_LAGS`` apart.

    Measured from rows ``R = (I - V V') noise``: the residual after projecting out the
    orthonormal columns of ``V``, which also removes part of the noise's correlation. The
    lag covariances of the residual are linear in those of the noise (the coefficients are
    traces of ``(I - P) E_m (I - P)``, ``E_m`` the lag-``m`` band, computed from lag
    products of ``V`` without forming a channels x channels matrix), and that small
    system is solved.

    Parameters
    ----------
    R
        ``(n_rows, n_channels)`` residuals.
    V
        ``(n_channels, k)`` orthonormal columns projected out (``k`` may be 0).

    Returns
    -------
    ndarray of shape (NOISE_LAGS,)
        Zeros when negligible (below ``CORRELATED`` at every lag).

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.ndimage import convolve1d
    >>> noise = convolve1d(np.random.default_rng(0).normal(size=(4000, 64)), [0.3, 1, 0.3])
    >>> # lag 1: 0.6 / 1.18, lag 2: 0.09 / 1.18
    >>> [round(float(r), 1) for r in channel_correlation(noise, np.zeros((64, 0)))[:2]]
    [0.5, 0.1]
    """
    D = R.shape[1]
    L = NOISE_LAGS
    rho = np.zeros(L)
    if D <= 4 * L or float(np.mean(R * R)) <= 0:
        return rho
    V = np.asarray(V, dtype=np.float64).reshape(D, -1)
    emp = np.array([float(np.mean(R[:, : D - lag] * R[:, lag:])) * (D - lag) / D
                    for lag in range(L + 1)])  # per row: sum_c R_c R_{c+lag} / D
    cross = {o: _lag_cross(V, o) for o in range(2 * L + 1)}
    trace_p = {o: float(np.trace(c)) for o, c in cross.items()}  # trace of P at offset o
    A = np.zeros((L + 1, L + 1))
    for m in range(L + 1):
        g = np.eye(V.shape[1]) if m == 0 else cross[m] + cross[m].T  # V' E_m V
        for lag in range(L + 1):
            band = float(D if m == 0 else D - m) if lag == m else 0.0
            if m == 0:
                side = 2.0 * trace_p[lag]
            else:
                side = 2.0 * (trace_p[abs(lag - m)] + trace_p[lag + m])
            A[lag, m] = (band - side + float((g * cross[lag]).sum())) / D
    try:
        x = np.linalg.solve(A, emp)
    except np.linalg.LinAlgError:
        return rho
    if not x[0] > 0:
        return rho
    rho = np.clip(x[1:] / x[0], -0.5, 0.95)
    return rho if np.abs(rho).max() > CORRELATED else np.zeros(L)


def noise_power(n: int, rho: np.ndarray) -> np.ndarray:
    """Power spectrum (mean 1) along ``n`` channels of noise with correlations ``rho``."""
    w = 2.0 * np.pi * np.arange(n // 2 + 1) / n
    lags = np.arange(1, len(rho) + 1)
    p = 1.0 + 2.0 * (np.cos(np.outer(w, lags)) @ np.asarray(rho, dtype=np.float64))
    return np.maximum(p, 0.02)


def colour(z: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """White unit noise ``z`` (last axis: channels) given the correlations ``rho``."""
    n = z.shape[-1]
    gain = np.sqrt(noise_power(n, rho)).astype(np.float32)
    return np.fft.irfft(np.fft.rfft(z, axis=-1) * gain, n, axis=-1).astype(np.float32)


def filter_along(V: np.ndarray, rho: np.ndarray, power: float) -> np.ndarray:
    """Columns of ``V`` (channels first) filtered by the noise power spectrum to ``power``
    (-1/2 decorrelates noise of correlations ``rho``, +1/2 undoes it); edges mirrored."""
    D = V.shape[0]
    pad = min(D - 1, 8 * NOISE_LAGS)
    ext = np.concatenate([V[pad:0:-1], V, V[-2:-pad - 2:-1]], axis=0)
    n = ext.shape[0]
    gain = noise_power(n, rho) ** power
    out = np.fft.irfft(np.fft.rfft(ext, axis=0) * gain[:, None], n, axis=0)
    return out[pad:pad + D]


def toeplitz(n: int, rho: np.ndarray) -> np.ndarray:
    """``(n, n)`` correlation matrix along energy of noise with correlations ``rho``."""
    T = np.eye(n)
    for lag, r in enumerate(rho, start=1):
        if r and lag < n:
            T += r * (np.eye(n, k=lag) + np.eye(n, k=-lag))
    return T


def quadratic_noise(V: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """``v' T v`` for every column ``v`` of ``V`` (``T``: the noise correlation matrix
    along energy, 1 on the diagonal): the noise variance along each direction, per unit
    noise level."""
    out = (V * V).sum(axis=0)
    for lag, r in enumerate(rho, start=1):
        if r and lag < len(V):
            out = out + 2.0 * r * (V[:-lag] * V[lag:]).sum(axis=0)
    return out


def _rows_for_noise(sample: np.ndarray) -> np.ndarray:
    """At most ``_NOISE_ROWS`` finite rows of ``sample`` as float64."""
    x = np.asarray(sample, dtype=np.float64)
    return x[np.isfinite(x).all(axis=1)][:_NOISE_ROWS]


def _mean_spectrum(x: np.ndarray) -> np.ndarray:
    return np.maximum(x.mean(axis=0), 1e-12 * max(float(x.mean()), 1e-300))


def _held_out_residual(w: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The odd rows of ``w`` minus the mean and the ``k`` leading components found on the
    even rows (randomised SVD, seeded: 10x faster than ``eigh``): noise, plus the little
    structure beyond ``k`` components. Returns ``(residual, components (k, channels))``."""
    from sklearn.utils.extmath import randomized_svd

    a, b = w[0::2], w[1::2]
    mu = a.mean(axis=0)
    vt = (randomized_svd(a - mu, k, n_iter=4, random_state=0)[2] if k
          else np.zeros((0, w.shape[1])))
    return (b - mu) - ((b - mu) @ vt.T) @ vt, vt


def noise_statistics(sample: np.ndarray, n_components: int = 8) -> tuple[float, np.ndarray]:
    """Noise level per count and its correlation between channels, measured on held-out
    spectra: a mean and ``n_components`` components of the Poisson-scaled spectra (divided
    by the square root of the mean spectrum) found on the even rows describe the odd rows,
    whose remainder is noise (its variance divided by the fraction a projection leaves;
    median over channels). Unlike :func:`count_gain` this holds for noise correlated
    between channels (a detector's point-spread function).

    Parameters
    ----------
    sample
        ``(n_spectra, n_channels)`` non-negative spectra (a few hundred or more).
    n_components
        Components of the structure removed before measuring.

    Returns
    -------
    gain, correlation
        Noise variance per count (1 for Poisson counts) and the correlations of channels
        1 to ``NOISE_LAGS`` apart (zeros when negligible).

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.ndimage import convolve1d
    >>> rng = np.random.default_rng(0)
    >>> n = rng.poisson(50.0, (2000, 128)).astype(float)
    >>> x = 4 * convolve1d(n, [0.25, 0.5, 0.25], axis=1)   # gain 4 spread over 3 channels
    >>> gain, rho = noise_statistics(x)
    >>> round(gain, 1), [round(float(r), 1) for r in rho[:2]]   # 4 x 0.375; 2/3, 1/6
    (1.5, [0.7, 0.2])
    """
    x = _rows_for_noise(sample)
    w = x / np.sqrt(_mean_spectrum(x))
    n_fit = (len(w) + 1) // 2
    k = int(min(n_components, n_fit - 2, w.shape[1] - 1))
    if k < 0 or len(w) - n_fit < 2:
        return 1.0, np.zeros(NOISE_LAGS)
    r, vt = _held_out_residual(w, k)
    rho = channel_correlation(r, vt.T)
    # fraction of the noise variance of each channel the projection leaves:
    # diag((I - P) T (I - P)), P = V V', T the noise's correlation matrix
    v = vt.T
    tv = toeplitz(w.shape[1], rho) @ v
    frac = 1.0 - 2.0 * (v * tv).sum(axis=1) + ((v @ (v.T @ tv)) * v).sum(axis=1)
    frac = np.maximum(frac, 1e-6)
    gain = float(np.median((r**2).mean(axis=0) / frac / (1.0 + 1.0 / n_fit)))
    return gain, rho


def photon_transfer(sample: np.ndarray, n_components: int = 8) -> tuple[float, float]:
    """Noise variance of count-like data as an affine function of the mean,
    ``var = g h + c`` (a photon-transfer curve): the variance of each channel measured on
    held-out spectra (as in :func:`noise_statistics`) fitted against the channel's mean,
    weighted by ``1 / h``. Poisson counts with a gain: ``(g, 0)``; read noise adds a
    positive ``c``, a pedestal ``b`` (dark level) a negative ``c = -g b``.

    Parameters
    ----------
    sample
        ``(n_spectra, n_channels)`` spectra (a few hundred or more).
    n_components
        Components of the structure removed before measuring.

    Returns
    -------
    g, c
        ``(0, 0)`` when there are too few spectra or channels.
    """
    x = _rows_for_noise(sample)
    n_fit = (len(x) + 1) // 2
    k = int(min(n_components, n_fit - 2, x.shape[1] - 1))
    if k < 1 or len(x) - n_fit < 2 or x.shape[1] < 4:
        return 0.0, 0.0
    r, vt = _held_out_residual(x, k)
    frac = np.maximum(1.0 - (vt**2).sum(axis=0), 1e-6)
    var = (r**2).mean(axis=0) / frac / (1.0 + 1.0 / n_fit)
    h = _mean_spectrum(x)
    w = np.sqrt(1.0 / h)
    (g, c), *_ = np.linalg.lstsq(np.stack([h, np.ones_like(h)], axis=1) * w[:, None],
                                 var * w, rcond=None)
    return float(g), float(c)


def count_offset(fit: tuple[float, float]) -> float:
    """Pedestal of count-like data (data units) from its :func:`photon_transfer` fit
    ``var = g h + c``: raw detector counts sometimes carry a constant offset (a dark
    level) ``b``, so their noise variance is ``g (x - b)``, i.e. ``c = -g b``. Read noise
    adds a positive ``c`` and lowers ``b`` (a negative ``b`` means read noise); 0 when the
    fit failed (``g <= 0``).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> mean = 20 * np.exp(-np.linspace(0, 3, 128))
    >>> x = 3 * rng.poisson(mean * rng.uniform(0.5, 1.5, (2000, 1))) + 100.0
    >>> round(count_offset(photon_transfer(x)) / 100, 1)   # the pedestal, in data units
    1.0
    """
    g, c = fit
    return float(-c / g) if g > 0 else 0.0


def on_pedestal(fit: tuple[float, float], sample: np.ndarray) -> bool:
    """Whether a :func:`photon_transfer` fit ``(g, c)`` of ``sample`` shows a pedestal
    above ``PEDESTAL`` of the median count (the Poisson noise model then fails)."""
    g, c = fit
    return bool(g > 0 and -c > PEDESTAL * g * float(np.median(np.asarray(sample).mean(0))))


def detector_noise(sample: np.ndarray) -> tuple[float | None, np.ndarray]:
    """Gain and channel correlation of raw counts, for Poisson splitting: the gain from
    :func:`count_gain`, or from :func:`noise_statistics` when the noise is correlated
    between channels (channel differences misread the gain then); ``None`` for plain
    counts (gain within ``UNIT_GAIN_TOLERANCE`` of 1, no correlation) and for samples of
    fewer than ``MIN_GAIN_ROWS`` spectra.

    Examples
    --------
    >>> import numpy as np
    >>> x = 3.0 * np.random.default_rng(0).poisson(20.0, (1000, 64))
    >>> gain, rho = detector_noise(x)
    >>> round(gain, 1), bool(np.any(rho)), detector_noise(x / 3.0)[0]
    (3.0, False, None)
    """
    rho = np.zeros(NOISE_LAGS)
    if len(sample) < MIN_GAIN_ROWS:
        return None, rho
    gain = count_gain(sample)
    held, rho = noise_statistics(sample)
    if np.any(rho):
        gain = held
    return (None if is_unit_gain(gain) and not np.any(rho) else gain), rho
