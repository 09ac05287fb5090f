"""Connected regions of anomalous pixels on a navigation grid (arrays only)."""

from __future__ import annotations

import numpy as np

__all__ = ["label_regions"]


def label_regions(score: np.ndarray, threshold: float, min_size: int = 1) -> np.ndarray:
    """Label the connected regions of pixels scoring above ``threshold``.

    Regions are 8-connected in 2-D (3**n - 1 neighbours in n-D). They are numbered most
    anomalous first: largest summed excess of the score over the threshold (which weighs
    size and strength), ties broken by size; regions of fewer than ``min_size`` pixels are
    dropped (label 0, like normal pixels). NaN scores are never anomalous.

    Parameters
    ----------
    score
        Navigation-shaped scores.
    threshold
        Score above which a pixel is anomalous.
    min_size
        Smallest region kept.

    Returns
    -------
    numpy.ndarray
        int32 labels, shape of ``score``: 0 normal, ``k`` the ``k``-th region.

    Examples
    --------
    >>> import numpy as np
    >>> s = np.zeros((5, 5)); s[0, 0] = 9; s[3:5, 3:5] = 4  # excess 8 vs 4 x 3
    >>> label_regions(s, 1.0)[[0, 4], [0, 4]].tolist()
    [2, 1]
    """
    from scipy import ndimage

    score = np.asarray(score, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        mask = np.isfinite(score) & (score > threshold)
    labels, n = ndimage.label(mask, structure=np.ones((3,) * max(mask.ndim, 1), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    excess = np.bincount(labels.ravel(), weights=np.where(mask, score - threshold, 0.0).ravel(),
                         minlength=n + 1)[1:]
    keep = [i + 1 for i in np.lexsort((-sizes, -excess)) if sizes[i] >= min_size]
    relabel = np.zeros(n + 1, dtype=np.int32)
    relabel[keep] = np.arange(1, len(keep) + 1)
    return relabel[labels]
