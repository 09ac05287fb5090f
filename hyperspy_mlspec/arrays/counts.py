"""Count statistics of spectra (numpy only): the detector gain of raw counts.

Raw detector counts are often electrons times a gain (variance = gain x counts). Poisson
splitting (Noise2Self halves, held-out scores) must split electrons: halves of the
detector's units share most of their noise (each electron's units go to both halves).
"""

from __future__ import annotations

import numpy as np

#: Counts whose measured gain is this close to 1 are treated as unit-gain counts (split
#: as integer counts); the estimate itself scatters by about 1 %.
UNIT_GAIN_TOLERANCE = 0.1
#: Fewest spectra :func:`count_gain` is trusted on (its median scatters more below).
MIN_GAIN_ROWS = 200


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
