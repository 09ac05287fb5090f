"""Latent phase maps and 2-D embeddings of a spectrum image's latent codes."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from hyperspy_mlspec import signals as sio
from hyperspy_mlspec.scoring.latent import cluster_labels, features
from hyperspy_mlspec.workflows._common import (
    check_ndim,
    excluded_pixels,
    full_grid,
    mask_arg,
    nav_ndim,
    nonfinite_rows,
    spectra_signal,
    title_of,
)
from hyperspy_mlspec.workflows.anomaly import _fit

__all__ = ["ClusterResult", "cluster", "embedding_2d", "plot_embedding"]


# -- latent codes, clustering, embeddings -----------------------------------------------------
def _latent(signal, model, navigation_mask, n_components: int, show_progressbar,
            params: dict):
    """Fit (if needed) and encode: returns ``(codes, valid, model)`` with ``codes`` of the
    valid pixels (flat boolean ``valid``, array order)."""
    sio.check_signal(signal)
    check_ndim(signal, "latent clustering")
    if nav_ndim(signal) == 0:
        raise ValueError("clustering and embeddings need a map or a line scan; this signal "
                         "holds a single spectrum.")
    lazy = sio.is_lazy(signal)
    nonfinite = nonfinite_rows(signal) if (model is None or not lazy) else None
    excluded = excluded_pixels(signal, navigation_mask, nonfinite)
    if model is None:
        model = _fit(signal, excluded, n_components, show_progressbar, params)
    elif params:
        raise TypeError(f"estimator parameters {sorted(params)} are only used when no model "
                        "is given")
    if not hasattr(model, "transform"):
        raise TypeError(f"{type(model).__name__} has no transform(): latent codes need an "
                        "encoder such as AutoencoderDecomposition.")
    t = sio.table_for_model(signal, model, mask_arg(signal, excluded))
    codes = model.transform(t.rows)
    codes = np.asarray(codes.compute() if hasattr(codes, "compute") else codes, np.float64)
    full = full_grid(excluded.size, t.nav_index, codes)
    valid = np.isfinite(full).all(axis=1) & ~excluded
    if not valid.any():
        raise ValueError("no pixel has a finite latent code")
    return full[valid], valid, model


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
    labels_valid = cluster_labels(features(codes, normalize), n_clusters, method,
                                  random_state)
    labels = np.full(valid.size, -1, dtype=np.int32)
    labels[valid] = labels_valid
    sizes = np.bincount(labels_valid, minlength=n_clusters)
    # cluster means of the data on its own channels: one matrix product, streamed if lazy
    t = sio.table(signal, mask_arg(signal, ~valid))
    onehot = np.zeros((int(valid.sum()), n_clusters), dtype=np.float64)
    onehot[np.arange(onehot.shape[0]), labels_valid] = 1.0 / sizes[labels_valid]
    if t.lazy:
        import dask.array as da

        means = (da.from_array(onehot, chunks=(t.rows.chunks[0], n_clusters)).T
                 @ t.rows.astype(np.float64)).compute()
    else:
        means = onehot.T @ np.asarray(t.rows, dtype=np.float64)
    title = title_of(signal)
    nav_shape = tuple(signal.data.shape[: nav_ndim(signal)])
    label_sig = sio.navigation_image(signal, labels.reshape(nav_shape),
                                     f"Latent clusters of {title}", "cluster label")
    centers = spectra_signal(signal, means, f"Cluster mean spectra of {title}",
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
    feats = features(codes, normalize)
    if method == "pca":
        from sklearn.decomposition import PCA

        n = min(2, feats.shape[1], feats.shape[0])
        emb = PCA(n, random_state=random_state).fit_transform(feats)
        if emb.shape[1] < 2:
            emb = np.column_stack([emb, np.zeros((emb.shape[0], 2 - emb.shape[1]))])
    else:
        emb = umap.UMAP(n_components=2, random_state=random_state).fit_transform(feats)
    full = np.full((valid.size, 2), np.nan)
    full[valid] = emb
    nav_shape = tuple(signal.data.shape[: nav_ndim(signal)])
    out = sio.vector_signal(signal, full.reshape(nav_shape + (2,)),
                            f"{method.upper()} embedding of the latent codes of "
                            f"{title_of(signal)}", "embedding")
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
