"""Latent phase maps and 2-D embeddings of a spectrum image's latent codes."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from hyperspy_mlspec import signals as sio
from hyperspy_mlspec._docs import N_COMPONENTS
from hyperspy_mlspec.scoring.latent import NORMALIZE, cluster_labels, features
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
        Codes as a Signal1D (navigation axes of the data, signal axis ``"latent"``), NaN
        where excluded: the features that were clustered (model codes before
        normalisation, or the map's pooled phase codes with thickness removed).
    sizes
        Pixels per cluster.
    model
        The model that gave the codes (None for the map's own phase codes).
    method, normalize
        Clustering algorithm and code normalisation used.
    shift
        Energy shift of each pixel (navigation signal, units of the signal axis) removed
        before computing phase codes; None when no alignment was done.
    beta
        Potts coupling of the spatial smoothing, estimated from the data (0: none).
    radius
        Pooling radius in pixels of the phase codes (0 for model codes).
    """

    labels: Any
    centers: Any
    codes: Any
    sizes: np.ndarray
    model: Any
    method: str
    normalize: str
    shift: Any = None
    beta: float = 0.0
    radius: int = 0

    @property
    def n_clusters(self) -> int:
        return int(self.sizes.size)

    def __repr__(self) -> str:
        return (f"<ClusterResult: {self.n_clusters} clusters ({self.method}, "
                f"normalize={self.normalize!r}), sizes {self.sizes.tolist()}>")


def _spatial_on(signal, spatial) -> bool:
    if spatial not in ("auto", True, False):
        raise ValueError(f"spatial must be 'auto', True or False, got {spatial!r}")
    nd = nav_ndim(signal)
    if spatial is True and nd not in (1, 2):
        raise ValueError("spatial=True smooths labels over neighbouring pixels and needs a "
                         "map or a line scan; use spatial=False.")
    return bool(spatial) and nd in (1, 2)


def _align_on(signal, align, n_channels: int) -> bool:
    if align not in ("auto", True, False):
        raise ValueError(f"align must be 'auto', True, False or a shift map, got {align!r}")
    uniform = getattr(signal.axes_manager.signal_axes[0], "is_uniform", True)
    if align is True and (not uniform or n_channels < 16):
        raise ValueError("align=True moves spectra by fractions of a channel, which needs a "
                         "uniform signal axis of at least 16 channels; resample it first "
                         "(s.interpolate_on_axis) or use align=False.")
    return bool(align) and uniform and n_channels >= 16


def _core_loss_axis(signal, gain) -> tuple[float, float] | None:
    """``(offset, scale)`` in eV of a core-loss EELS signal of counts (uniform axis, all
    energies positive), whose thickness response plural scattering predicts; else None."""
    if gain is None or "EELS" not in str(signal.metadata.get_item("Signal.signal_type", "")):
        return None
    axis = signal.axes_manager.signal_axes[0]
    if not getattr(axis, "is_uniform", True) or str(axis.units).strip() != "eV":
        return None
    offset, scale = float(axis.offset), float(axis.scale)
    return (offset, scale) if offset > 0 and scale > 0 else None


def _phase_route(signal, n_clusters, navigation_mask, n_components, align, radius,
                 spatial, random_state, show_progressbar):
    """The map's own phase codes (no training): ``(features, valid, labels, shift, beta,
    radius)``."""
    from hyperspy_mlspec.arrays.counts import count_gain
    from hyperspy_mlspec.engine.progress import progress
    from hyperspy_mlspec.scoring.latent import drift, phase_codes, phase_labels

    sio.check_signal(signal)
    check_ndim(signal, "latent clustering")
    if nav_ndim(signal) == 0:
        raise ValueError("clustering needs a map or a line scan; this signal holds a single "
                         "spectrum.")
    nav_shape = tuple(signal.data.shape[: nav_ndim(signal)])
    excluded = excluded_pixels(signal, navigation_mask, nonfinite_rows(signal))
    valid = ~excluded
    if int(valid.sum()) < n_clusters:
        raise ValueError(f"n_clusters={n_clusters} but only {int(valid.sum())} pixels are left")
    rows = sio.rows_of(signal)
    n_ch = int(rows.shape[1])
    sample = rows[np.flatnonzero(valid)[:: max(1, int(valid.sum()) // 2000)]]
    sample = np.asarray(sample.compute() if hasattr(sample, "compute") else sample)
    gain = count_gain(sample)
    given = None
    if sio.is_shift_map(align):
        # a known shift (e.g. zero-loss peak centres); phase codes shift block by block,
        # so a lazy map is fine here
        given = sio.shift_map_channels(align, signal, valid.reshape(nav_shape), False,
                                       n_ch).ravel()
    do_align = given is None and _align_on(signal, align, n_ch)
    bar = progress(3 if do_align else 2, "phase map", show_progressbar, unit="step")
    try:
        shift = given
        if do_align:
            shift, _ = drift(rows, nav_shape, valid)
            bar.update(1)
        out = phase_codes(rows, nav_shape, valid, n_components, shift=shift, radius=radius,
                          gain=gain, energy_loss=_core_loss_axis(signal, gain))
        bar.update(1)
        lab = phase_labels(out["codes"], out["nuisance"], nav_shape, valid, n_clusters,
                           random_state, potts=spatial, directions=out["directions"])
        bar.update(1)
    finally:
        bar.close()
    return lab["features"][valid], valid, lab["labels"], shift, lab["beta"], out["radius"]


def cluster(signal, model=None, n_clusters: int = 4, method: str = "kmeans", *,
            normalize: str = "shape", spatial: bool | str = "auto",
            align: Any = "auto", radius: int | None = None, navigation_mask=None,
            n_components: int | None = None, random_state: int | None = 0,
            show_progressbar: bool | None = None, **estimator_params: Any) -> ClusterResult:
    """Phase map: cluster the pixels of a map by chemistry, smoothed over neighbours.

    Two sources of codes:

    * ``model`` None (the default, nothing to train): the map's own **phase codes**. The
      energy drift of every pixel is measured and undone
      (:func:`~hyperspy_mlspec.spatial.estimate_shift`), spectra are divided by their
      total (intensity) and whitened for Poisson noise, pooled over a window holding about
      100 counts per channel, weighted per channel by their signal-to-noise ratio and
      reduced to ``n_components`` principal components. Clusters are fitted with the
      thickness dependence of the codes removed jointly (analysis of covariance), so a
      thickness gradient does not split a phase. On a core-loss EELS map of counts (eV
      axis) the direction in which thickness moves each pixel's codes is computed from
      plural-scattering physics
      (:func:`~hyperspy_mlspec.scoring.latent.plural_scattering_directions`) and only its
      size is fitted; elsewhere free slopes on the log total counts. A pooled pixel may be
      a mixture of up to half of another phase (boundaries, reaction fronts): it is
      labelled with its majority phase instead of forming a boundary cluster of its own.
    * a fitted encoder ``model`` (or estimator parameters such as ``epochs=``, which fit
      an :class:`~hyperspy_mlspec.AutoencoderDecomposition`): its latent codes,
      normalised by ``normalize`` and clustered by ``method``.

    Either way labels are then smoothed spatially on maps and line scans
    (``spatial="auto"``): iterated conditional modes of a Potts model whose coupling is
    estimated from the data (:func:`~hyperspy_mlspec.scoring.latent.potts_smooth`).

    Parameters
    ----------
    signal
        The spectrum image (lazy or not; a lazy one is read in chunks, never whole).
    model
        A fitted encoder (``transform``), or None (see above).
    n_clusters
        Number of clusters.
    method
        Clustering of model codes: ``"kmeans"``, ``"gmm"`` (Gaussian mixture) or
        ``"agglomerative"`` (Ward; up to 30 000 pixels). Phase codes use a k-means-started
        mixture with thickness regression (``method`` must be ``"kmeans"``).
    normalize
        Model codes only. ``"shape"`` (default): codes divided by their L2 norm
        (autoencoder codes carry the intensity; their direction carries the shape).
        ``"standard"``: each latent dimension standardised; ``"none"``: raw codes.
    spatial
        ``"auto"``/True: Potts smoothing of the labels on maps and line scans; False: none.
    align
        Phase codes only: ``"auto"``/True undo the energy drift (uniform signal axes of at
        least 16 channels); False: no alignment; or a known shift map (one value per
        pixel in the signal axis' units, e.g. zero-loss peak centres; see
        :meth:`~hyperspy_mlspec.MLSpecNamespace.denoise`).
    radius
        Phase codes only: pooling radius in pixels; None chooses it from the counts.
    navigation_mask
        True excludes a pixel (label -1).
    n_components
        Code dimensions: None is ``n_clusters + 2`` for phase codes (chemistry plus
        thickness and residual drift), 4 for a fitted autoencoder.
    random_state
        Seed of the clustering (and default seed of the fitted model).
    show_progressbar
        None follows ``hs.preferences.General.show_progressbar``.
    **estimator_params
        Passed to :class:`~hyperspy_mlspec.AutoencoderDecomposition` (fits one).

    Returns
    -------
    ClusterResult
        ``labels`` (navigation signal), ``centers`` (cluster-mean spectra), ``codes``,
        ``shift`` (navigation signal or None), ``beta``, ``radius``.

    Notes
    -----
    To use HyperSpy's own clustering (and its plots) on autoencoder codes instead; its
    ``preprocessing="norm"`` is the same normalisation as ``normalize="shape"``::

        codes = s.mlspec.encode(model)
        s.cluster_analysis(cluster_source=codes, source_for_centers=s,
                           preprocessing="norm", n_clusters=3)
        s.plot_cluster_results()

    Examples
    --------
    >>> import hyperspy_mlspec
    >>> s = hyperspy_mlspec.data.eels_map((24, 24), n_channels=256, dose=20)
    >>> phases = s.mlspec.cluster(n_clusters=3, show_progressbar=False)
    >>> phases.labels.data.shape, phases.centers.axes_manager.navigation_shape
    ((24, 24), (3,))
    >>> phases.shift.axes_manager.signal_shape
    (24, 24)
    """
    from hyperspy_mlspec.scoring.latent import _by_size, potts_smooth, tied_gaussian_loglik

    if not (isinstance(n_clusters, (int, np.integer)) and n_clusters >= 1):
        raise ValueError(f"n_clusters must be a positive integer, got {n_clusters!r}")
    params = dict(estimator_params)
    sio.check_signal(signal)
    smooth = _spatial_on(signal, spatial)
    nav_shape = tuple(signal.data.shape[: nav_ndim(signal)])
    shift_sig, beta, radius_used = None, 0.0, 0
    if model is None and not params:
        if method != "kmeans":
            raise ValueError(f"method={method!r} applies to model codes; the map's own phase "
                             "codes are clustered by a k-means-started mixture (method="
                             "'kmeans'). Pass a fitted model to use other methods.")
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
        k = int(n_clusters + 2 if n_components is None else n_components)
        codes, valid, labels, shift, beta, radius_used = _phase_route(
            signal, int(n_clusters), navigation_mask, k, align, radius, smooth,
            random_state, show_progressbar)
        labels = labels.astype(np.int32)
        normalize_used = "none"
        if shift is not None:
            shift_sig = sio.shift_image(signal, np.where(valid, shift, np.nan).reshape(nav_shape),
                                        f"Energy shift of {title_of(signal)}")
    else:
        if model is None and random_state is not None:
            params.setdefault("random_state", random_state)
        codes, valid, model = _latent(signal, model, navigation_mask,
                                      N_COMPONENTS if n_components is None else n_components,
                                      show_progressbar, params)
        if codes.shape[0] < n_clusters:
            raise ValueError(f"n_clusters={n_clusters} but only {codes.shape[0]} pixels "
                             "are left")
        feats = features(codes, normalize)
        labels_valid = cluster_labels(feats, n_clusters, method, random_state)
        labels = np.full(valid.size, -1, dtype=np.int32)
        labels[valid] = labels_valid
        if smooth and n_clusters > 1:
            loglik = np.zeros((valid.size, n_clusters))
            loglik[valid] = tied_gaussian_loglik(feats, labels_valid, n_clusters)
            labels, beta = potts_smooth(loglik, labels, nav_shape)
            labels = _by_size(labels, n_clusters).astype(np.int32)
        normalize_used = normalize
    labels_valid = labels[valid]
    sizes = np.bincount(labels_valid, minlength=n_clusters)
    # cluster means of the data on its own channels: one matrix product, streamed if lazy
    t = sio.table(signal, mask_arg(signal, ~valid))
    onehot = np.zeros((int(valid.sum()), n_clusters), dtype=np.float64)
    onehot[np.arange(onehot.shape[0]), labels_valid] = 1.0 / np.maximum(sizes, 1)[labels_valid]
    if t.lazy:
        import dask.array as da

        means = (da.from_array(onehot, chunks=(t.rows.chunks[0], n_clusters)).T
                 @ t.rows.astype(np.float64)).compute()
    else:
        means = onehot.T @ np.asarray(t.rows, dtype=np.float64)
    title = title_of(signal)
    label_sig = sio.navigation_image(signal, labels.reshape(nav_shape),
                                     f"Latent clusters of {title}", "cluster label")
    centers = spectra_signal(signal, means, f"Cluster mean spectra of {title}",
                              nav_name="cluster")
    code_full = np.full((valid.size, codes.shape[1]), np.nan)
    code_full[valid] = codes
    code_sig = sio.vector_signal(signal, code_full.reshape(nav_shape + (codes.shape[1],)),
                                 f"Latent codes of {title}", "latent")
    source = "phase codes" if model is None else type(model).__name__
    for out in (label_sig, centers):
        sio.record(out, "cluster", method=method, normalize=normalize_used,
                   n_clusters=int(n_clusters), model=source, potts_beta=float(beta),
                   radius=int(radius_used), aligned=shift_sig is not None)
    return ClusterResult(label_sig, centers, code_sig, sizes, model, method, normalize_used,
                         shift_sig, float(beta), int(radius_used))


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
                 normalize: str = "shape", navigation_mask=None,
                 n_components: int = N_COMPONENTS,
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
