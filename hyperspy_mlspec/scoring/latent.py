"""Latent phase maps on arrays: code normalisation, clustering, spatially regularised phase
codes and labels (no HyperSpy)."""

from __future__ import annotations

import numpy as np

__all__ = [
    "CLUSTER_METHODS",
    "NORMALIZE",
    "cluster_labels",
    "default_radius",
    "drift",
    "features",
    "grid_pool",
    "phase_codes",
    "phase_labels",
    "plural_scattering_directions",
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
                gain: float | None = None,
                energy_loss: tuple[float, float] | None = None) -> dict:
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
        Data units per count (:func:`~hyperspy_mlspec.arrays.counts.count_gain`); None:
        the data are not counts (no Wiener weights, radius 1 unless given).
    energy_loss
        ``(offset, scale)`` in eV of a core-loss EELS signal axis: the thickness response
        of every pixel's codes is then computed from plural-scattering physics
        (:func:`plural_scattering_directions`) and returned as ``directions``; None: no
        physical model (the thickness covariate's slopes are fitted freely).

    Returns
    -------
    dict
        ``codes`` (``(n_pixels, n_components)``, NaN where invalid), ``nuisance``
        (``(n_pixels, 2)``: standardised pooled log total and its square, the thickness
        covariate), ``directions`` (``(n_pixels, 1, n_components)``: the code change per
        unit of the standardised log total predicted by plural scattering, or None),
        ``radius``, ``components`` and ``weights`` (per channel).

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
    directions = None
    if energy_loss is not None:
        # the thickness response is smooth in space: its spectra are pooled twice as wide
        wide = grid_pool(normed, nav_shape, 2 * int(radius), valid)
        wide = da.nan_to_num(wide) if lazy else np.nan_to_num(wide)
        directions = plural_scattering_directions(wide * scale_ch, energy_loss[0],
                                                  energy_loss[1], comps / scale_ch)
        directions = lt[:, None, None] * np.asarray(directions)[:, None, :]
        directions[~valid] = 0.0
    return {"codes": codes, "nuisance": np.column_stack([lt, lt**2]),
            "directions": directions, "radius": int(radius), "components": comps,
            "weights": weights}


#: Plasmon peak of the plural-scattering model (eV): typical of solids (15-30 eV); the
#: phase labels barely depend on it (the direction it gives is broad).
PLASMON_ENERGY_EV = 22.0
PLASMON_WIDTH_EV = 5.0


def _drude(n: int, scale: float, energy: float, width: float) -> np.ndarray:
    e = np.arange(n) * scale
    d = e * energy**2 * width / ((e**2 - energy**2) ** 2 + (e * width) ** 2)
    d[e > 150.0] = 0.0
    return d / d.sum()


def plural_scattering_directions(spectra, offset: float, scale: float,
                                 components: np.ndarray, *,
                                 plasmon_energy: float = PLASMON_ENERGY_EV,
                                 plasmon_width: float = PLASMON_WIDTH_EV) -> np.ndarray:
    """How each spectrum's shape (and so its codes) changes with thickness, from
    plural-scattering physics rather than from the map's statistics.

    A core-loss spectrum at thickness ``t`` (in mean free paths) is its single-scattering
    distribution convolved with the Poisson series of plasmon losses,
    ``S * exp(t (P1 - delta))``, so ``dS/dt = S * P1 - S``: intensity moves up in energy by
    one plasmon. For the spectrum divided by its total the direction is
    ``q - s sum(q)`` with ``q = s * P1``. The intensity that plural scattering brings in
    from below the window is included by extending every spectrum downwards with a power
    law fitted to its first channels (the pre-edge background). ``P1`` is a Drude peak at
    ``plasmon_energy``.

    Because the direction comes from each pixel's own spectrum, it cannot absorb a
    difference in chemistry (an edge shift) that happens to follow the thickness in a
    map, as freely fitted thickness slopes do.

    Parameters
    ----------
    spectra
        ``(n, n_channels)`` spectra divided by their totals (numpy or dask), pooled.
    offset, scale
        Energy of the first channel and channel width (eV); the energies must be positive.
    components
        ``(n_components, n_channels)`` projection onto the codes.
    plasmon_energy, plasmon_width
        Drude plasmon peak (eV).

    Returns
    -------
    numpy.ndarray
        ``(n, n_components)`` code-space direction of each spectrum per unit ``t``.

    Examples
    --------
    >>> import numpy as np
    >>> e = 400.0 + np.arange(128)
    >>> s = (e / 400.0) ** -3 * (1 + (e > 450))
    >>> s = (s / s.sum())[None]
    >>> d = plural_scattering_directions(s, 400.0, 1.0, np.eye(128))
    >>> # shape only (sums to 0); the edge onset loses intensity to one plasmon above it
    >>> bool(abs(d.sum()) < 1e-9), bool(d[0, 60] < 0), bool(d[0, 100] > 0)
    (True, True, True)
    """
    n_ch = int(spectra.shape[1])
    n_ext = int(np.ceil(150.0 / scale)) + 1
    n_fit = int(np.clip(n_ch // 25, 8, 64))
    energy = offset + scale * np.arange(n_fit)
    below = offset - scale * np.arange(n_ext, 0, -1)
    if offset <= 0 or not np.all(energy > 0):
        raise ValueError("plural_scattering_directions needs a core-loss energy axis "
                         f"(positive energies), got offset {offset} eV")
    log_e = np.log(energy)
    log_below = np.log(np.maximum(below, 0.5 * offset))
    from scipy.signal import fftconvolve

    comps = np.asarray(components, dtype=np.float64)
    # q = full * P1 (full: the spectrum extended downwards) is linear in ``full``, and only
    # its projections are needed: q @ comps.T = full @ W and sum(q) = full @ u, with W and
    # u the plasmon peak correlated with the components (a few rows instead of every
    # spectrum through an FFT)
    rows = np.vstack([comps, np.ones((1, n_ch))])
    corr = fftconvolve(rows, _drude(n_ext, scale, plasmon_energy, plasmon_width)[None, ::-1],
                       axes=1)
    wu = np.concatenate([np.zeros((len(rows), 1)), corr], axis=1).T  # (n_ext + n_ch, m + 1)

    def block(s):
        s = np.asarray(s, dtype=np.float64)
        floor = 1e-9 * max(float(s.max(initial=0.0)), 1e-300)
        lp = np.log(np.maximum(s[:, :n_fit], floor))
        # power law through the first channels (exponent clipped to a background's range)
        slope = ((lp - lp.mean(1, keepdims=True)) @ (log_e - log_e.mean())
                 / ((log_e - log_e.mean()) ** 2).sum())
        slope = np.clip(slope, -10.0, 0.0)
        level = lp.mean(1) - slope * log_e.mean()
        ext = np.exp(level[:, None] + slope[:, None] * log_below[None])
        proj = ext @ wu[:n_ext] + s @ wu[n_ext:]  # (n, m + 1): q @ comps.T and sum(q)
        return proj[:, :-1] - (s @ comps.T) * proj[:, -1:]

    if hasattr(spectra, "dask"):
        import dask.array as da

        spectra = spectra.rechunk({1: -1})
        return np.asarray(da.map_blocks(block, spectra, dtype=np.float64,
                                        chunks=(spectra.chunks[0], (comps.shape[0],)))
                          .compute())
    return block(spectra)


def _mixing_likelihood(r, means, inv, prior, mixing, rho, n_grid=8):
    """Log-likelihood of each pixel under each class when a pixel of class ``c`` may be a
    mixture ``(1 - a) mu_c + a mu_j`` with one other class ``j``, ``a`` uniform on
    ``(0, mixing]``, with prior probability ``rho`` (the pooled window of a pixel at a
    boundary, or a continuous front between two phases, is a mixture of its neighbours'
    spectra): the fraction is integrated out on a grid. Returns ``(loglik, composition,
    mixed)``: ``(n, k)`` log-likelihoods (with ``prior``), ``(n, k, k)`` expected
    composition of each pixel under each class, and ``(n, k)`` posterior probability that
    it is mixed."""
    n, k = len(r), len(means)
    ll = np.empty((n, k))
    comp = np.zeros((n, k, k))
    mixed = np.zeros((n, k))
    grid = (np.arange(n_grid) + 0.5) / n_grid * mixing
    use = mixing > 0 and k > 1 and rho > 0
    log_pure = np.log1p(-rho) if use else 0.0
    log_mix = np.log(rho / ((k - 1) * n_grid)) if use else -np.inf
    for c in range(k):
        d = r - means[c]
        dw = d @ inv
        pure = np.einsum("ni,ni->n", dw, d)
        terms = [log_pure - 0.5 * pure[:, None]]
        partners = []
        if use:
            for j in range(k):
                if j == c:
                    continue
                step = means[j] - means[c]
                along, length = dw @ step, float(step @ inv @ step)
                m = pure[:, None] - 2 * grid * along[:, None] + grid**2 * length
                terms.append(log_mix - 0.5 * m)
                partners.append(j)
        t = np.concatenate(terms, axis=1)
        top = t.max(axis=1)
        t -= top[:, None]
        np.exp(t, out=t)
        total = t.sum(axis=1)
        lse = top + np.log(total)
        ll[:, c] = lse + prior[c]
        resp = t / total[:, None]
        comp[:, c, c] = resp[:, 0]
        for i, j in enumerate(partners):
            rj = resp[:, 1 + i * n_grid: 1 + (i + 1) * n_grid]
            comp[:, c, c] += rj @ (1.0 - grid)
            comp[:, c, j] += rj @ grid
        mixed[:, c] = 1.0 - resp[:, 0]
    return ll, comp, mixed


def _ancova(z, basis, lab, k, n_iter=30, directions=None, mixing=0.0):
    """Hard EM of the mixture ``z = composition @ mu + basis @ B + directions . b + noise``
    (shared slopes ``B`` of the covariates, shared scalars ``b`` of the per-pixel
    directions, tied covariance; the composition is the pixel's class, or a mixture with
    up to ``mixing`` of another class, see :func:`_mixing_likelihood`); returns
    ``(labels, loglik, minus the log-likelihood, nuisance part of z)``."""
    n, dim = z.shape
    rows = np.arange(n)
    mix = np.eye(k)[lab]
    rho = 0.5 if mixing > 0 else 0.0
    inv = np.eye(dim)
    b = np.zeros(0 if directions is None else directions.shape[1])
    ll = score = None
    for _ in range(n_iter):
        if directions is None:
            a = np.column_stack([mix, basis])
            coef, *_ = np.linalg.lstsq(a, z, rcond=None)
            means, nuisance = coef[:k], basis @ coef[k:]
        else:  # alternate means and the direction scalars (Mahalanobis-weighted)
            for _ in range(2):
                means = np.linalg.lstsq(mix, z - directions.transpose(0, 2, 1) @ b,
                                        rcond=None)[0]
                rest = z - mix @ means
                vw = directions @ inv
                b = np.linalg.solve(np.einsum("nmi,nli->ml", vw, directions)
                                    + 1e-12 * np.eye(len(b)),
                                    np.einsum("nmi,ni->m", vw, rest))
                nuisance = directions.transpose(0, 2, 1) @ b
                res = z - nuisance - mix @ means
                cov = res.T @ res / n
                inv = np.linalg.inv(cov + (1e-12 * np.trace(cov) / dim + 1e-300)
                                    * np.eye(dim))
        r = z - nuisance
        res = r - mix @ means
        cov = res.T @ res / n
        logdet = float(np.linalg.slogdet(cov + 1e-300 * np.eye(dim))[1])
        inv = np.linalg.inv(cov + (1e-9 * np.trace(cov) / dim + 1e-300) * np.eye(dim))
        prior = np.log(np.bincount(lab, minlength=k) + 1.0) - np.log(n + k)
        ll, comp, mixed = _mixing_likelihood(r, means, inv, prior, mixing, rho)
        score = float(ll[rows, lab].sum()) - 0.5 * n * logdet
        new = ll.argmax(axis=1)
        if np.bincount(new, minlength=k).min() == 0:
            break
        if rho > 0:
            rho = float(np.clip(mixed[rows, new].mean(), 0.01, 0.99))
        done = np.array_equal(new, lab)
        lab, mix = new, comp[rows, new]
        if done:
            break
    return lab, ll, -score, nuisance


def phase_labels(codes: np.ndarray, nuisance: np.ndarray | None, nav_shape: tuple[int, ...],
                 valid: np.ndarray, n_clusters: int, random_state: int | None = 0,
                 potts: bool = True, n_starts: int = 2, *,
                 directions: np.ndarray | None = None,
                 boundary_mixing: float = 0.5) -> dict:
    """Phase labels from pooled codes: clusters with the thickness dependence removed,
    mixtures at boundaries allowed, then Potts smoothing.

    The codes are modelled as ``mean of the phase + thickness part + noise`` with one shared
    covariance (an analysis of covariance: a phase seen at several thicknesses is not
    split by thickness, and a thickness gradient that follows a phase is not taken for
    chemistry), fitted by hard EM. The thickness part is ``b . directions`` when the
    per-pixel thickness response is known from physics (``directions``, see
    :func:`phase_codes`; one scalar fitted), else ``B @ nuisance`` with free slopes.
    A pixel of phase ``c`` may hold a fraction up to ``boundary_mixing`` of one other
    phase: pooled windows at grain boundaries and continuous reaction fronts are mixtures,
    and without this they gather in a cluster of their own instead of being split between
    the phases they mix (the label is the majority phase). The EM is started from k-means
    on the codes and on the codes with a global nuisance regression (raw and standardised,
    ``n_starts`` seeds each); the start whose fit leaves the smallest residual covariance
    (largest likelihood) wins. Labels are then smoothed with :func:`potts_smooth`
    (coupling from the data).

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
    if not 0.0 <= float(boundary_mixing) <= 0.5:
        raise ValueError(f"boundary_mixing must be between 0 and 0.5 (the largest share of "
                         f"another phase in a pixel's label), got {boundary_mixing!r}")
    if directions is not None:
        directions = np.asarray(directions, dtype=np.float64)[valid]
        basis = np.zeros((len(z), 0))
        flat = directions.transpose(0, 2, 1).reshape(-1, directions.shape[1])
        zc = z - z.mean(axis=0)
        b = np.linalg.lstsq(flat - flat.mean(axis=0), zc.reshape(-1), rcond=None)[0]
        resid = z - directions.transpose(0, 2, 1) @ b
    else:
        basis = (np.zeros((len(z), 0)) if nuisance is None
                 else np.asarray(nuisance, dtype=np.float64)[valid])
        a = np.column_stack([np.ones(len(z)), basis])
        coef, *_ = np.linalg.lstsq(a, z, rcond=None)
        resid = z - basis @ coef[1:]
    starts = []
    for feat in (z, resid) if (basis.shape[1] or directions is not None) else (z,):
        sd = feat.std(axis=0)
        for f in (feat, feat / np.where(sd > 0, sd, 1.0)):
            for seed in range(int(n_starts)):
                rs = None if random_state is None else int(random_state) + seed
                starts.append(KMeans(k, n_init=1, random_state=rs).fit_predict(f))
    seen, unique = set(), []
    for start in starts:  # k-means from several seeds often agree: fit each partition once
        _, first = np.unique(start, return_index=True)
        order = np.argsort(np.argsort(first))  # labels in order of first appearance
        key = order[start].tobytes()
        if key not in seen:
            seen.add(key)
            unique.append(start)
    best = None
    for start in unique:
        fit = _ancova(z, basis, start, k, directions=directions,
                      mixing=float(boundary_mixing) if k > 1 else 0.0)
        if best is None or fit[2] < best[2] - 1e-9:
            best = fit
    lab, ll, _, nuisance_part = best
    feats = z - nuisance_part
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
