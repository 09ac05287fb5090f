"""Latent phase maps on arrays: code normalisation, clustering (no HyperSpy)."""

from __future__ import annotations

import numpy as np

__all__ = ["CLUSTER_METHODS", "NORMALIZE", "cluster_labels", "features"]

CLUSTER_METHODS = ("kmeans", "gmm", "agglomerative")
NORMALIZE = ("shape", "none", "standard")
_MAX_AGGLOMERATIVE = 30_000


def features(codes: np.ndarray, normalize: str = "shape") -> np.ndarray:
    """Latent codes prepared for clustering or embedding.

    ``"shape"``: each code divided by its L2 norm (its direction carries the spectral shape,
    its length the intensity: thickness, dose); ``"standard"``: each dimension standardised;
    ``"none"``: unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> features(np.array([[3.0, 4.0]])).tolist()
    [[0.6, 0.8]]
    """
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
