"""Latent phase maps on arrays: code normalisation, clustering, spatially regularised phase
codes and labels (no HyperSpy)."""

from __future__ import annotations

import numpy as np

__all__ = [
    "CLUSTER_METHODS",
    "NORMALIZE",
    "cluster_labels",
    "count_gain",
    "default_radius",
    "drift",
    "features",
    "grid_pool",
    "phase_codes",
    "phase_labels",
    "potts_smooth",
    "tied_gaussian_loglik",
]

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
    return _by_size(raw, n_clusters)


# -- spatial phase maps -----------------------------------------------------------------------
def grid_pool(values, nav_shape: tuple[int, ...], radius: int, valid=None):
    """Mean of ``values`` (``(n_pixels, k)``, flat array order) over the square window of
    Chebyshev ``radius`` around each pixel of a 1-D or 2-D grid, valid pixels only (edges
    and masked pixels do not count). numpy in, numpy out; dask in, dask out (blocks with
    halos).

    Examples
    --------
    >>> import numpy as np
    >>> grid_pool(np.arange(5.0)[:, None], (5,), 1)[:, 0].round(6).tolist()
    [0.5, 1.0, 2.0, 3.0, 3.5]
    """
    nav_shape = tuple(int(s) for s in nav_shape)
    k = int(values.shape[1])
    if valid is None:
        valid = np.ones(int(np.prod(nav_shape)), dtype=bool)
    valid = np.asarray(valid, dtype=bool).ravel()
    if radius <= 0:
        return values
    size = (2 * int(radius) + 1,) * len(nav_shape)

    def pool_block(v, ok):
        from scipy.ndimage import uniform_filter

        num = uniform_filter(np.where(ok[..., None], v, 0.0), size + (1,), mode="constant")
        den = uniform_filter(ok.astype(np.float64), size, mode="constant")
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den[..., None] > 1e-12, num / den[..., None], np.nan)

    grid = values.reshape(nav_shape + (k,))
    ok = valid.reshape(nav_shape)
    if hasattr(grid, "dask"):
        import dask.array as da

        depth = {i: int(radius) for i in range(len(nav_shape))}
        depth[len(nav_shape)] = 0
        grid = grid.astype(np.float64).rechunk({len(nav_shape): -1})
        okd = da.from_array(ok[..., None], chunks=grid.chunks[: len(nav_shape)] + ((1,),))
        out = da.map_overlap(lambda v, o: pool_block(v, o[..., 0]), grid, okd,
                             depth=depth, boundary=0, dtype=np.float64, trim=True,
                             align_arrays=False)
        return out.reshape((-1, k))
    return pool_block(np.asarray(grid, dtype=np.float64), ok).reshape(-1, k)


def _neighbour_counts(labels: np.ndarray, nav_shape: tuple[int, ...], k: int) -> np.ndarray:
    """``(n_pixels, k)``: number of 8-neighbours (2 on a line) with each label (-1 ignored)."""
    grid = labels.reshape(nav_shape)
    onehot = np.zeros(nav_shape + (k,), dtype=np.float64)
    ok = grid >= 0
    onehot[ok, grid[ok]] = 1.0
    pad = np.pad(onehot, [(1, 1)] * len(nav_shape) + [(0, 0)])
    out = np.zeros_like(onehot)
    offsets = np.stack(np.meshgrid(*[[-1, 0, 1]] * len(nav_shape), indexing="ij"), -1)
    for off in offsets.reshape(-1, len(nav_shape)):
        if not off.any():
            continue
        sl = tuple(slice(1 + o, 1 + o + n) for o, n in zip(off, nav_shape, strict=True))
        out += pad[sl]
    return out.reshape(-1, k)


def potts_smooth(loglik: np.ndarray, labels: np.ndarray, nav_shape: tuple[int, ...],
                 beta: float | None = None, n_iter: int = 10) -> tuple[np.ndarray, float]:
    """Spatially smoothed labels: iterated conditional modes (ICM) of a Potts model.

    Each pixel takes the label maximising ``loglik[p, k] + beta * (number of its 8
    neighbours labelled k)`` (2 neighbours on a line), sweeping until no label changes.
    With ``beta`` None it is estimated from the initial labels by maximum pseudo-likelihood
    (how much more often neighbours agree than label frequencies say), between 0 and 4. A
    pixel whose evidence for its own label exceeds ``beta`` times the neighbours against it
    keeps it, so strongly supported small inclusions survive.

    Parameters
    ----------
    loglik
        ``(n_pixels, k)`` log-likelihood of each label (rows of excluded pixels ignored).
    labels
        ``(n_pixels,)`` initial labels, -1 for excluded pixels (they stay -1).
    nav_shape
        Navigation shape (1-D or 2-D grid, array order).
    beta
        Coupling per agreeing neighbour; None estimates it.
    n_iter
        Largest number of sweeps.

    Returns
    -------
    labels, beta

    Examples
    --------
    >>> import numpy as np
    >>> truth = np.zeros((10, 10), int); truth[:, 5:] = 1
    >>> rng = np.random.default_rng(0)
    >>> ll = np.stack([-1.0 * (truth != k) for k in (0, 1)], -1).reshape(-1, 2)
    >>> ll += rng.normal(0, 0.8, ll.shape)
    >>> noisy = ll.argmax(1)
    >>> smooth, beta = potts_smooth(ll, noisy, (10, 10))
    >>> bool((smooth != truth.ravel()).sum() < (noisy != truth.ravel()).sum())
    True
    """
    loglik = np.asarray(loglik, dtype=np.float64)
    labels = np.asarray(labels).copy()
    nav_shape = tuple(int(s) for s in nav_shape)
    if len(nav_shape) not in (1, 2):
        raise ValueError(f"Potts smoothing needs a 1-D or 2-D grid, got shape {nav_shape}")
    k = loglik.shape[1]
    ok = labels >= 0
    loglik = np.where(ok[:, None], np.nan_to_num(loglik, neginf=-1e300), 0.0)
    if beta is None:
        beta = _pseudo_likelihood_beta(labels[ok], _neighbour_counts(labels, nav_shape, k)[ok],
                                       k)
    for _ in range(int(n_iter)):
        counts = _neighbour_counts(labels, nav_shape, k)
        new = np.where(ok, np.argmax(loglik + beta * counts, axis=1), -1)
        if np.array_equal(new, labels):
            break
        labels = new
    return labels, float(beta)


def _pseudo_likelihood_beta(lab: np.ndarray, counts: np.ndarray, k: int) -> float:
    """Coupling of the Potts prior ``P(l_p | neighbours) ~ pi_l exp(beta n_l)`` fitted to a
    label image by maximum pseudo-likelihood (Besag): how much more often neighbours agree
    than the label frequencies say. The spectra's likelihood is left out on purpose: the
    labels were chosen by it, and including it would always favour beta = 0."""
    prior = np.log(np.bincount(lab, minlength=k) + 1.0)
    best, beta = -np.inf, 0.0
    for b in np.linspace(0.0, 4.0, 41):
        a = prior + b * counts
        a = a - a.max(axis=1, keepdims=True)
        value = float((a[np.arange(lab.size), lab] - np.log(np.exp(a).sum(1))).sum())
        if value > best:
            best, beta = value, float(b)
    return beta


def tied_gaussian_loglik(features: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """``(n, k)`` log-likelihoods of a Gaussian mixture with the class means and one shared
    covariance estimated from ``labels`` (class sizes as priors).

    Examples
    --------
    >>> import numpy as np
    >>> X = np.r_[np.zeros((4, 1)), np.ones((4, 1))] + np.arange(8)[:, None] % 2 * 0.1
    >>> tied_gaussian_loglik(X, np.repeat([0, 1], 4), 2).argmax(1).tolist()
    [0, 0, 0, 0, 1, 1, 1, 1]
    """
    features = np.asarray(features, dtype=np.float64)
    means = np.stack([features[labels == j].mean(0) if np.any(labels == j)
                      else features.mean(0) for j in range(k)])
    return _tied_loglik(features, means, features - means[labels], labels, k)


def _tied_loglik(R, means, resid, labels, k):
    cov = resid.T @ resid / max(len(R), 1)
    cov += (1e-9 * np.trace(cov) / max(cov.shape[0], 1) + 1e-300) * np.eye(cov.shape[0])
    inv = np.linalg.inv(cov)
    d = R[:, None, :] - means[None]
    maha = np.einsum("nki,ij,nkj->nk", d, inv, d)
    prior = np.log(np.bincount(labels, minlength=k) + 1.0) - np.log(len(labels) + k)
    return -0.5 * maha + prior


def default_radius(mean_counts: float | None, ndim: int = 2) -> int:
    """Pooling radius for phase maps: the smallest window (``(2r + 1)^ndim`` pixels) that
    holds about 100 counts per channel, between 1 and 3 (8 on a line); 1 for data that are
    not counts (``mean_counts`` None).

    At 10 counts per channel the difference between oxidation states is below one noise
    standard deviation per pixel; 100 pooled counts bring it to a few.

    Examples
    --------
    >>> default_radius(10.0), default_radius(100.0), default_radius(1.0), default_radius(None)
    (2, 1, 3, 1)
    >>> default_radius(10.0, ndim=1)
    5
    """
    if mean_counts is None or not np.isfinite(mean_counts) or mean_counts <= 0:
        return 1
    largest = 3 if ndim >= 2 else 8
    for r in range(1, largest + 1):
        if mean_counts * (2 * r + 1) ** ndim >= 100.0:
            return r
    return largest


def count_gain(sample: np.ndarray) -> float | None:
    """Detector gain of count data (data units per count), or None if the data do not look
    like (scaled) Poisson counts.

    Poisson counts ``x = g n`` have ``Var(x_c - x_{c+1}) = g (E x_c + E x_{c+1})`` for
    neighbouring channels of a smooth spectrum; the median ratio over channels is ``g``.

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


def _bin_lazy(rows, nav_shape, valid, factor):
    """Sum of the valid spectra over blocks of ``factor`` pixels per navigation axis (dask
    reductions: one pass, a small result)."""
    import dask.array as da

    nd = len(nav_shape)
    grid = da.where(da.from_array(valid.reshape(nav_shape + (1,)),
                                  chunks=rows.reshape(nav_shape + (rows.shape[1],)).chunks[:nd]
                                  + ((1,),)),
                    da.nan_to_num(rows.reshape(nav_shape + (rows.shape[1],)).astype(np.float64)),
                    0.0)
    pad = [(0, (-s) % factor) for s in nav_shape] + [(0, 0)]
    grid = da.pad(grid, pad)
    binned = da.coarsen(np.sum, grid, {i: factor for i in range(nd)}, trim_excess=True)
    vb = np.pad(valid.reshape(nav_shape).astype(np.float64), pad[:nd])
    for axis in range(nd):
        vb = np.add.reduceat(vb, np.arange(0, vb.shape[axis], factor), axis=axis)
    return np.asarray(binned.compute()), vb > 0


def drift(rows, nav_shape: tuple[int, ...], valid: np.ndarray, *,
          max_pixels: int = 1024):
    """Per-pixel energy shift (channels, flat, 0 where invalid) of a map's spectra, by
    :func:`hyperspy_mlspec.spatial.estimate_shift`, with its
    :class:`~hyperspy_mlspec.spatial.ShiftEstimate`. Dask rows are binned lazily to at
    most ``max_pixels`` pixels first (the whole map is never loaded); the estimate is then
    interpolated back onto every pixel.

    Examples
    --------
    >>> import numpy as np
    >>> c = np.arange(64.0)
    >>> X = np.stack([100 * np.exp(-0.5 * ((c - 30 - s) / 2) ** 2) + 10
    ...               for s in np.linspace(-1, 1, 40)])
    >>> shift, _ = drift(X, (40,), np.ones(40, bool))
    >>> bool(np.abs(shift - np.linspace(-1, 1, 40)).max() < 0.1)
    True
    """
    from hyperspy_mlspec.spatial import estimate_shift
    from hyperspy_mlspec.spatial.shift import _upsample

    nav_shape = tuple(int(s) for s in nav_shape)
    valid = np.asarray(valid, dtype=bool).ravel()
    n, d = int(rows.shape[0]), int(rows.shape[1])
    if hasattr(rows, "dask"):
        factor = max(1, int(np.ceil((n / max_pixels) ** (1.0 / len(nav_shape)))))
        Xb, vb = _bin_lazy(rows, nav_shape, valid, factor)
        est = estimate_shift(Xb, vb, max_pixels=max(max_pixels, int(vb.size)))
        shift = est.shift if factor == 1 else _upsample(est.shift, nav_shape, factor)
    else:
        # estimate_shift leaves out invalid and non-finite pixels itself
        est = estimate_shift(np.asarray(rows).reshape(nav_shape + (d,)),
                             valid.reshape(nav_shape), max_pixels=max_pixels)
        shift = est.shift
    shift = np.nan_to_num(np.asarray(shift, dtype=np.float64)).ravel()
    return np.where(valid, shift, 0.0), est


def phase_codes(rows, nav_shape: tuple[int, ...], valid: np.ndarray, n_components: int, *,
                shift: np.ndarray | None = None, radius: int | None = None,
                gain: float | None = None) -> dict:
    """Chemistry codes of every pixel for a phase map: drift, intensity and noise taken
    out, neighbours pooled, and the thickness covariate that :func:`phase_labels` removes.

    1. each spectrum is moved back by its energy shift (``shift``, channels; see
       :func:`drift`), so that a drift of a few channels is not taken for the chemical shift
       of an edge;
    2. each spectrum is divided by its total (intensity: thickness, dose) and each channel
       by the square root of the mean spectrum (Poisson noise whitening);
    3. spectra are averaged over a window of Chebyshev ``radius`` (valid pixels only);
    4. each channel is weighted by its Wiener gain (signal variance over total variance of
       the pooled channel, the noise variance known from the counts): channels of flat
       background, which only add noise, drop out;
    5. principal components of the weighted, pooled spectra (``n_components``).

    Parameters
    ----------
    rows
        ``(n_pixels, n_channels)`` spectra of the whole grid in array order (numpy or dask;
        rows of invalid pixels are ignored and never need to be finite).
    nav_shape
        Navigation shape (1-D or 2-D).
    valid
        Flat boolean mask of the pixels to use.
    n_components
        Code dimensions.
    shift
        Per-pixel shift in channels (flat) to undo; None: none.
    radius
        Pooling radius; None: :func:`default_radius` from the counts.
    gain
        Data units per count (:func:`count_gain`); None: the data are not counts (no
        Wiener weights, radius 1 unless given).

    Returns
    -------
    dict
        ``codes`` (``(n_pixels, n_components)``, NaN where invalid), ``nuisance``
        (``(n_pixels, 2)``: standardised pooled log total and its square, the thickness
        covariate), ``radius``, ``components`` and ``weights`` (per channel).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> phase = np.repeat([0, 1], 50)
    >>> lam = np.where(phase[:, None] == 0, 20.0, 20.0 + 10 * (np.arange(32) > 16))
    >>> out = phase_codes(rng.poisson(lam).astype(float), (100,), np.ones(100, bool), 2,
    ...                   gain=1.0)
    >>> out["codes"].shape, out["radius"]
    ((100, 2), 2)
    """
    nav_shape = tuple(int(s) for s in nav_shape)
    valid = np.asarray(valid, dtype=bool).ravel()
    n_ch = int(rows.shape[1])
    lazy = hasattr(rows, "dask")
    nv = max(int(valid.sum()), 1)
    shift = np.zeros(len(valid)) if shift is None else np.asarray(shift, np.float64).ravel()

    def prepare(block, ok, sh):
        from hyperspy_mlspec.spatial.shift import shift_spectra

        b = np.where(ok[:, None], np.nan_to_num(np.asarray(block, dtype=np.float64)), 0.0)
        b = shift_spectra(b, -sh) if np.any(sh) else b
        tot = b.sum(axis=1)
        scale = np.where(tot > 0, 1.0 / np.where(tot > 0, tot, 1.0), 0.0)
        return np.column_stack([b * scale[:, None], tot])

    if lazy:
        import dask.array as da

        rows = rows.rechunk({1: -1})  # whole spectra per block (shifts, totals)
        chunks = (rows.chunks[0],)
        col = (chunks[0], (1,))
        prep = da.map_blocks(lambda b, o, sh: prepare(b, o[:, 0], sh[:, 0]), rows,
                             da.from_array(valid[:, None], chunks=col),
                             da.from_array(shift[:, None], chunks=col), dtype=np.float64,
                             chunks=(rows.chunks[0], (n_ch + 1,)))
        mean_n, totals = da.compute((prep[:, :n_ch] * valid[:, None]).sum(axis=0),
                                    prep[:, n_ch])
    else:
        prep = prepare(rows, valid, shift)
        mean_n, totals = (prep[:, :n_ch] * valid[:, None]).sum(axis=0), prep[:, n_ch]
    totals = np.asarray(totals, dtype=np.float64)
    mean_n = np.asarray(mean_n, dtype=np.float64) / nv  # mean normalised spectrum
    mean_total = float(totals[valid].mean())
    counts = None if gain is None else mean_total / gain
    if radius is None:
        radius = default_radius(None if counts is None else counts / n_ch, len(nav_shape))
    scale_ch = np.sqrt(np.maximum(mean_n, 1e-6 * max(float(mean_n.max()), 1e-300)))
    normed = prep[:, :n_ch] / scale_ch  # Poisson-whitened (unit noise at 1 count/channel)
    pooled = grid_pool(normed, nav_shape, radius, valid)
    pooled = da.nan_to_num(pooled) if lazy else np.nan_to_num(pooled)
    w = valid.astype(np.float64)
    centre = (pooled * w[:, None]).sum(axis=0)
    sq = (pooled**2 * w[:, None]).sum(axis=0)
    gram = (pooled * w[:, None]).T @ pooled
    if lazy:
        import dask

        centre, sq, gram = dask.compute(centre, sq, gram)
    centre = np.asarray(centre) / nv
    var = np.asarray(sq) / nv - centre**2
    weights = np.ones(n_ch)
    if counts is not None and counts > 0:
        # noise variance of a pooled, normalised, whitened channel: 1 / (counts of the window)
        window = float(np.mean(grid_pool(w[:, None], nav_shape, radius, None)[valid, 0])
                       * (2 * radius + 1) ** len(nav_shape))
        tot_v = totals[valid] / gain
        noise = float(np.mean(1.0 / np.maximum(tot_v, 1.0))) / window
        weights = np.sqrt(np.clip(1.0 - noise / np.maximum(var, 1e-300), 0.0, 1.0))
        if not np.any(weights > 0):
            weights = np.ones(n_ch)
    cov = (np.asarray(gram) / nv - np.outer(centre, centre)) * np.outer(weights, weights)
    k = int(max(1, min(n_components, n_ch, nv - 1)))
    from scipy.linalg import eigh

    # only the leading eigenvectors (much faster than the full decomposition)
    evecs = eigh(cov, subset_by_index=[n_ch - k, n_ch - 1])[1]
    comps = evecs[:, ::-1].T * weights
    codes = (pooled - centre) @ comps.T
    if lazy:
        codes = codes.compute()
    codes = np.asarray(codes, dtype=np.float64)
    log_total = np.log(np.where(valid & (totals > 0), totals, np.nan))
    log_total = np.where(np.isfinite(log_total), log_total, np.nanmedian(log_total[valid])
                         if np.isfinite(log_total[valid]).any() else 0.0)
    lt = np.nan_to_num(grid_pool(log_total[:, None], nav_shape, radius, valid)[:, 0])
    sd = lt[valid].std()
    lt = (lt - lt[valid].mean()) / (sd if sd > 0 else 1.0)
    codes[~valid] = np.nan
    return {"codes": codes, "nuisance": np.column_stack([lt, lt**2]), "radius": int(radius),
            "components": comps, "weights": weights}


def _ancova(z, basis, lab, k, n_iter=30):
    """Hard-EM of the mixture ``z = mean_k + basis @ B + noise`` (shared slopes ``B``, tied
    covariance); returns ``(labels, loglik, residual log-determinant)``."""
    eye = np.eye(k)
    ll = None
    for _ in range(n_iter):
        a = np.column_stack([eye[lab], basis])
        coef, *_ = np.linalg.lstsq(a, z, rcond=None)
        r = z - basis @ coef[k:]
        ll = _tied_loglik(r, coef[:k], r - coef[:k][lab], lab, k)
        new = ll.argmax(axis=1)
        if np.array_equal(new, lab) or np.bincount(new, minlength=k).min() == 0:
            break
        lab = new
    a = np.column_stack([eye[lab], basis])
    coef, *_ = np.linalg.lstsq(a, z, rcond=None)
    res = z - a @ coef
    logdet = float(np.linalg.slogdet(res.T @ res / len(z) + 1e-300 * np.eye(z.shape[1]))[1])
    return lab, ll, logdet


def phase_labels(codes: np.ndarray, nuisance: np.ndarray | None, nav_shape: tuple[int, ...],
                 valid: np.ndarray, n_clusters: int, random_state: int | None = 0,
                 potts: bool = True, n_starts: int = 2) -> dict:
    """Phase labels from pooled codes: clusters with the thickness dependence removed,
    then Potts smoothing.

    The codes are modelled as ``mean of the phase + B @ nuisance + noise`` with one shared
    covariance (an analysis of covariance: a phase seen at several thicknesses is not
    split by thickness, and a thickness gradient that follows a phase is not taken for
    chemistry), fitted by hard EM. The EM is started from k-means on the codes and on the
    codes with a global nuisance regression (raw and standardised, ``n_starts`` seeds each);
    the start whose fit leaves the smallest residual covariance (largest likelihood) wins.
    Labels are then smoothed with :func:`potts_smooth` (coupling from the data).

    Returns
    -------
    dict
        ``labels`` (flat, -1 where invalid, 0 = largest cluster), ``features`` (codes
        without the nuisance part, NaN where invalid), ``loglik``, ``beta``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> truth = np.repeat([0, 1], 50)
    >>> z = truth[:, None] * [2.0, 0.0] + rng.normal(0, 0.5, (100, 2))
    >>> out = phase_labels(z, None, (100,), np.ones(100, bool), 2)
    >>> from sklearn.metrics import adjusted_rand_score
    >>> bool(adjusted_rand_score(truth, out["labels"]) > 0.8)
    True
    """
    from sklearn.cluster import KMeans

    valid = np.asarray(valid, dtype=bool).ravel()
    k = int(n_clusters)
    z = np.asarray(codes, dtype=np.float64)[valid]
    if not (isinstance(n_clusters, (int, np.integer)) and 1 <= k <= len(z)):
        raise ValueError(f"n_clusters must be an integer between 1 and the number of pixels "
                         f"({len(z)}), got {n_clusters!r}")
    basis = (np.zeros((len(z), 0)) if nuisance is None
             else np.asarray(nuisance, dtype=np.float64)[valid])
    a = np.column_stack([np.ones(len(z)), basis])
    coef, *_ = np.linalg.lstsq(a, z, rcond=None)
    resid = z - basis @ coef[1:]
    starts = []
    for feat in (z, resid) if basis.shape[1] else (z,):
        sd = feat.std(axis=0)
        for f in (feat, feat / np.where(sd > 0, sd, 1.0)):
            for seed in range(int(n_starts)):
                rs = None if random_state is None else int(random_state) + seed
                starts.append(KMeans(k, n_init=1, random_state=rs).fit_predict(f))
    best = None
    for start in starts:
        lab, ll, logdet = _ancova(z, basis, start, k)
        if best is None or logdet < best[2] - 1e-9:
            best = (lab, ll, logdet)
    lab, ll, _ = best
    a = np.column_stack([np.eye(k)[lab], basis])
    coef, *_ = np.linalg.lstsq(a, z, rcond=None)
    feats = z - basis @ coef[k:]
    full = np.full(valid.size, -1, dtype=np.int64)
    full[valid] = lab
    loglik = np.zeros((valid.size, k))
    loglik[valid] = ll
    beta = 0.0
    if potts and len(nav_shape) in (1, 2):
        full, beta = potts_smooth(loglik, full, nav_shape)
    full = _by_size(full, k)
    out_feats = np.full((valid.size, feats.shape[1]), np.nan)
    out_feats[valid] = feats
    return {"labels": full, "features": out_feats, "loglik": loglik, "beta": float(beta)}


def _by_size(labels: np.ndarray, k: int) -> np.ndarray:
    """Labels renumbered by cluster size (0 = largest), -1 kept."""
    ok = labels >= 0
    sizes = np.bincount(labels[ok], minlength=k)
    order = np.argsort(-sizes, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return np.where(ok, rank[np.maximum(labels, 0)], -1)
