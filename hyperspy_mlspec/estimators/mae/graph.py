"""Spreading few-label predictions over a map: a graph of neighbouring pixels and similar
embeddings (label spreading, Zhou et al. 2004, with the probe as a prior).

A spectrum image is a map: neighbouring pixels mostly share a phase, and pixels of one phase
have similar embeddings wherever they are. A probe applied pixel by pixel ignores both, so
at low dose its map is speckled by noise. Here the pixels are nodes of a sparse graph:

* **grid edges** (weight 1) join pixels next to each other along every navigation axis
  (a linescan: its two neighbours; a map: four); masked pixels are left out;
* **embedding edges** join each pixel to its ``k`` nearest pixels in embedding space, with
  self-tuning Gaussian weights ``exp(-d_ij^2 / (s_i s_j))`` (``s_i``: distance to the
  ``k``-th neighbour, Zelnik-Manor & Perona 2004), so similar pixels far apart share;
* the **labelled spectra** are extra nodes joined to their ``k`` nearest pixels (a labelled
  pixel of this very map is at distance 0 from itself).

Every node carries a prior ``y_i`` with a weight ``w_i``: the labelled nodes their label
(one-hot or standardised value, weight 1), the pixels the probe's output (weight ``beta``).
The spread estimate minimises ``sum_i w_i |F_i - y_i|^2 + strength / 2 sum_ij W_ij
|F_i - F_j|^2`` (Laplacian-regularised least squares, Zhu et al. 2003; Belkin et al. 2006),
i.e. solves ``(diag(w) + strength L) F = diag(w) y`` with ``L = D - W`` (conjugate
gradients): ``strength = 0`` gives back the probe, a large strength lets the labels and
neighbours dominate; rows of probabilities stay probabilities. ``strength``, ``beta`` and
the edge kinds are chosen by cross-validation on the labels (the probe refitted without
the held-out fold, the held-out labels scored as unlabelled nodes, ties to the weaker
smoothing), so how much the map is trusted is decided by the data, never by hand. The
embedding edges are drawn between spatially smoothed embeddings (two passes of averaging
over grid neighbours): at low dose the nearest neighbours of one noisy embedding are mostly
noise (drawn on the raw embeddings they pulled the map towards the majority phase on
``eels_map`` at dose 10).

Arrays only (numpy, scipy, scikit-learn): the navigation shape and mask come from the
caller's table.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.sparse as sp

#: candidates of the cross-validation: spreading strength, prior weight of the probe, edges
STRENGTHS = (0.0, 0.3, 1.0, 3.0)
POOL_PASSES = (0, 1, 2, 3, 4)
#: the head's inverse regularisation strength, relative to the probe's
REGULARISATION = (1.0, 10.0, 100.0)
BETAS = (1.0,)
EDGES = ("grid", "grid+embedding", "embedding")
MAP_EDGES = ("grid", "grid+embedding")


def grid_graph(nav_shape: tuple[int, ...], nav_index: np.ndarray | None = None) -> sp.csr_matrix:
    """Symmetric adjacency of pixels next to each other along each navigation axis.

    Parameters
    ----------
    nav_shape
        Navigation shape in array order (``(n,)`` for a linescan, ``(rows, cols)`` for a map).
    nav_index
        Flat (C-order) indices of the pixels kept, in row order; None keeps all. Edges to
        excluded pixels are dropped.

    Examples
    --------
    >>> grid_graph((2, 3)).sum(1).A.ravel()
    array([2., 3., 2., 2., 3., 2.])
    >>> grid_graph((4,), np.array([0, 1, 3])).toarray().astype(int)
    array([[0, 1, 0],
           [1, 0, 0],
           [0, 0, 0]])
    """
    n = int(np.prod(nav_shape, dtype=np.int64))
    idx = np.arange(n).reshape(nav_shape)
    a, b = [], []
    for axis, size in enumerate(nav_shape):
        if size > 1:
            a.append(np.take(idx, np.arange(size - 1), axis=axis).ravel())
            b.append(np.take(idx, np.arange(1, size), axis=axis).ravel())
    a = np.concatenate(a) if a else np.zeros(0, dtype=np.int64)
    b = np.concatenate(b) if b else np.zeros(0, dtype=np.int64)
    m = n
    if nav_index is not None:
        pos = np.full(n, -1, dtype=np.int64)
        pos[nav_index] = np.arange(len(nav_index))
        a, b = pos[a], pos[b]
        keep = (a >= 0) & (b >= 0)
        a, b, m = a[keep], b[keep], len(nav_index)
    w = sp.coo_matrix((np.ones(len(a)), (a, b)), shape=(m, m))
    return (w + w.T).tocsr()


def knn_edges(features: np.ndarray, queries: np.ndarray | None = None, k: int = 10
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, cols, weights)`` joining each query (default: each feature row, itself
    excluded) to its ``k`` nearest rows of ``features``, self-tuning Gaussian weights."""
    from sklearn.neighbors import NearestNeighbors

    n = len(features)
    self_query = queries is None
    k_eff = int(min(k + self_query, n))
    nn = NearestNeighbors(n_neighbors=k_eff).fit(features)
    dist, ind = nn.kneighbors(features if self_query else queries)
    if self_query:
        dist, ind = dist[:, 1:], ind[:, 1:]
    # local scales: distance to the k-th neighbour (of each feature row; of each query)
    scale_q = np.maximum(dist[:, -1], 1e-12)
    if self_query:
        scale_f = scale_q
    else:
        d_f, _ = nn.kneighbors(features, n_neighbors=k_eff)
        scale_f = np.maximum(d_f[:, -1], 1e-12)
    w = np.exp(-dist ** 2 / (scale_q[:, None] * scale_f[ind]))
    rows = np.repeat(np.arange(len(ind)), ind.shape[1])
    return rows, ind.ravel(), w.ravel()


class MapGraph:
    """Graph of ``n`` map pixels plus ``m`` labelled nodes (see the module docstring).

    Parameters
    ----------
    features
        ``(n, p)`` features of the map's pixels (standardised embeddings).
    label_features
        ``(m, p)`` features of the labelled spectra, in the same space.
    nav_shape, nav_index
        Where the pixels sit (see :func:`grid_graph`); ``nav_shape=None``: no grid edges
        (independent spectra).
    k
        Neighbours per node in embedding space.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> truth = np.repeat([0, 1], 50)                      # a linescan of two phases
    >>> feats = truth[:, None] + rng.normal(0, 0.8, (100, 4))
    >>> labelled = np.array([10, 80])
    >>> g = MapGraph(feats, feats[labelled], (100,))
    >>> prior = np.eye(2)[truth] * 0.2 + rng.uniform(0, 0.6, (100, 2))  # a noisy probe
    >>> F = g.spread(prior, np.eye(2)[truth[labelled]], strength=3.0, beta=1.0, edges="grid")
    >>> float((prior.argmax(1) == truth).mean()), float((F.argmax(1) == truth).mean())
    (0.76, 0.92)
    """

    def __init__(self, features: np.ndarray, label_features: np.ndarray,
                 nav_shape: tuple[int, ...] | None = None,
                 nav_index: np.ndarray | None = None, k: int = 10,
                 edge_aware: bool = True) -> None:
        features = np.asarray(features, dtype=np.float64)
        label_features = np.asarray(label_features, dtype=np.float64)
        n, m = len(features), len(label_features)
        self.n, self.m = n, m
        size = n + m
        if nav_shape is not None:
            g = grid_graph(tuple(nav_shape), nav_index)
            if g.shape[0] != n:
                raise ValueError(f"{n} pixel features for a navigation grid of {g.shape[0]}")
            if edge_aware and g.nnz:
                # neighbours across a phase boundary differ in embedding: weaker links, so
                # smoothing stays within grains (a bilateral filter on the graph)
                g = g.tocoo()
                d2 = np.sum((features[g.row] - features[g.col]) ** 2, axis=1)
                scale = max(float(np.median(d2)), 1e-12)
                g = sp.coo_matrix((np.exp(-d2 / scale), (g.row, g.col)), shape=g.shape).tocsr()
            self.grid = sp.block_diag([g, sp.csr_matrix((m, m))], format="csr")
        else:
            self.grid = sp.csr_matrix((size, size))
        r, c, w = knn_edges(features, k=k) if n > 1 else ([], [], [])
        knn = sp.coo_matrix((w, (r, c)), shape=(size, size)).tocsr()
        knn = knn.maximum(knn.T)
        # labelled nodes: edges to their nearest pixels only (labels reach the map through
        # them; no label-label edges, so a held-out label learns nothing from the others
        # except through the map)
        if m and n:
            r, c, w = knn_edges(features, label_features, k=k)
            lab = sp.coo_matrix((w, (r + n, c)), shape=(size, size)).tocsr()
            self.labels = lab + lab.T
        else:
            self.labels = sp.csr_matrix((size, size))
        self.knn = knn

    def adjacency(self, edges: str = "grid+embedding") -> sp.csr_matrix:
        """The weighted adjacency for ``edges`` (one of :data:`EDGES`)."""
        if edges not in EDGES:
            raise ValueError(f"edges must be one of {EDGES}, got {edges!r}")
        cache = self.__dict__.setdefault("_adjacency", {})
        if edges in cache:
            return cache[edges]
        w = self.labels.copy()
        if "grid" in edges:
            w = w + self.grid
        if "embedding" in edges:
            w = w + self.knn
        cache[edges] = w.tocsr()
        return cache[edges]

    def spread(self, prior: np.ndarray, labels: np.ndarray, strength: float, beta: float,
               edges: str = "grid+embedding", hidden: np.ndarray | None = None,
               hidden_prior: np.ndarray | None = None) -> np.ndarray:
        """Spread estimate of every pixel, ``(n, c)`` (see the module docstring).

        ``prior``: ``(n, c)`` probe outputs of the pixels (probabilities or values);
        ``labels``: ``(m, c)`` targets of the labelled nodes. ``hidden`` (boolean, ``m``)
        turns labelled nodes into unlabelled ones with ``hidden_prior`` as their prior
        (cross-validation); their estimates are returned after the pixels' then,
        ``(n + hidden.sum(), c)``.
        """
        prior = np.asarray(prior, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.float64).reshape(self.m, -1)
        y = np.concatenate([prior, labels])
        weight = np.concatenate([np.full(self.n, beta), np.ones(self.m)])
        if hidden is not None:
            hid = np.flatnonzero(hidden) + self.n
            y[hid] = hidden_prior
            weight[hid] = beta
        if strength == 0:
            f = y
        else:
            f = self._solve(self.adjacency(edges), weight[:, None] * y, weight, strength)
        out = f[:self.n]
        if hidden is not None:
            out = np.concatenate([out, f[hid]])
        return out

    @staticmethod
    def _solve(w: sp.csr_matrix, wy: np.ndarray, weight: np.ndarray, strength: float
               ) -> np.ndarray:
        # minimiser of sum_i w_i |F_i - y_i|^2 + strength / 2 sum_ij W_ij |F_i - F_j|^2:
        # (diag(w) + strength L) F = diag(w) y, symmetric positive definite (w > 0)
        deg = np.asarray(w.sum(1)).ravel()
        diag = weight + strength * deg
        a = (sp.diags(diag) - strength * w).tocsr()
        return block_cg(a, wy, 1.0 / diag)


def block_cg(a: sp.csr_matrix, b: np.ndarray, inv_diag: np.ndarray, rtol: float = 1e-6,
             maxiter: int = 2000) -> np.ndarray:
    """Jacobi-preconditioned conjugate gradients for every column of ``b`` at once (one
    sparse product per iteration for all columns).

    Examples
    --------
    >>> a = sp.csr_matrix(np.array([[4.0, 1.0], [1.0, 3.0]]))
    >>> bool(np.allclose(block_cg(a, np.eye(2), 1 / a.diagonal()) @ a.toarray(), np.eye(2)))
    True
    """
    b = np.asarray(b, dtype=np.float64)
    x = np.zeros_like(b)
    r = b.copy()
    z = inv_diag[:, None] * r
    p = z.copy()
    rz = np.einsum("ij,ij->j", r, z)
    bnorm = np.maximum(np.linalg.norm(b, axis=0), 1e-300)
    for _ in range(maxiter):
        ap = a @ p
        pap = np.einsum("ij,ij->j", p, ap)
        step = np.divide(rz, pap, out=np.zeros_like(rz), where=pap > 0)
        x += step * p
        r -= step * ap
        if np.all(np.linalg.norm(r, axis=0) <= rtol * bnorm):
            break
        z = inv_diag[:, None] * r
        rz_new = np.einsum("ij,ij->j", r, z)
        beta = np.divide(rz_new, rz, out=np.zeros_like(rz), where=rz > 0)
        p = z + beta * p
        rz = rz_new
    return x


def smooth_on_grid(values: np.ndarray, grid: sp.csr_matrix, passes: int = 2) -> np.ndarray:
    """``values`` averaged ``passes`` times over each pixel and its grid neighbours (a
    feature map denoised before the embedding edges are drawn: at low dose the nearest
    neighbours of a single noisy embedding are mostly noise)."""
    deg = np.asarray(grid.sum(1)).ravel()
    avg = sp.diags(1.0 / (deg + 1.0)) @ (grid + sp.identity(grid.shape[0], format="csr"))
    out = np.asarray(values, dtype=np.float64)
    for _ in range(passes):
        out = avg @ out
    return out


def _folds(target: np.ndarray, classification: bool, n_folds: int, seed: int) -> list:
    from sklearn.model_selection import KFold, StratifiedKFold

    idx = np.arange(len(target))
    if classification:
        counts = np.bincount(target.argmax(1))
        n = int(min(n_folds, counts[counts > 0].min()))
        if n >= 2:
            return list(StratifiedKFold(n, shuffle=True, random_state=seed).split(
                idx, target.argmax(1)))
    n = int(min(n_folds, len(idx)))
    return list(KFold(n, shuffle=True, random_state=seed).split(idx)) if n >= 2 else []


def _with_relax(fit_head, relax, z, targets):
    return fit_head(z, targets, relax)


def _score(est: np.ndarray, truth: np.ndarray, classification: bool) -> float:
    if classification:
        return float(np.sum(est.argmax(1) == truth.argmax(1)))
    return -float(np.sum((est - truth) ** 2))


def spread_predict(z: np.ndarray, z_labels: np.ndarray, targets: np.ndarray, fit_head,
                   nav_shape: tuple[int, ...] | None, nav_index: np.ndarray | None,
                   classification: bool, *, k: int = 10, n_folds: int = 5, seed: int = 0
                   ) -> tuple[np.ndarray, dict]:
    """Probe outputs of a map that use the map: embeddings pooled over neighbouring pixels,
    then spread over the map graph, each step's strength chosen by cross-validation on the
    labels.

    1. **Pooling.** The embeddings are averaged over each pixel and its grid neighbours
       ``passes`` times (0-4; like a larger dose per pixel) and the head is refitted on the
       pooled embeddings of the labelled pixels (a labelled spectrum found in this map, at
       distance 0 of one of its pixels, takes that pixel's pooled embedding; others keep
       their own). ``passes`` is chosen by cross-validation (ties to fewer passes), so a
       map without spatial structure keeps the plain probe.
    2. **Spreading** (:class:`MapGraph`) of that head's output, with ``strength``, ``beta``
       and the edges cross-validated the same way (``strength=0``: no spreading).

    Parameters
    ----------
    z
        ``(n, d)`` standardised embeddings of the map's pixels (rows of the table).
    z_labels, targets
        ``(m, d)`` embeddings of the labelled spectra and their targets: one-hot
        ``(m, c)`` (classification) or standardised values ``(m, t)``.
    fit_head
        ``fit_head(z, targets, relax) -> head`` with ``head(z) -> (n, c)`` probabilities
        or standardised values: the probe fitted on the given rows, its regularisation
        divided by ``relax`` (one of :data:`REGULARISATION`, cross-validated with the
        passes: pooled embeddings are less noisy and need less of it).
    nav_shape, nav_index
        The map's grid (see :func:`grid_graph`); ``nav_shape=None`` leaves grid edges and
        pooling out.
    classification
        Score the folds by accuracy (else by squared error).

    Returns
    -------
    estimates, info
        ``(n, c)`` outputs (rows of probabilities for classification) and the choices:
        ``passes``, ``strength``, ``beta``, ``edges``, the fold score of the choice and of
        the plain probe (fraction correct, or minus the mean squared error).
    """
    z = np.asarray(z, dtype=np.float64)
    z_labels = np.asarray(z_labels, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64).reshape(len(z_labels), -1)
    folds = _folds(targets, classification, n_folds, seed)
    norm = len(z_labels) if classification else max(1, targets.size)
    same = np.zeros(len(z_labels), dtype=bool)
    where = np.zeros(len(z_labels), dtype=np.int64)
    if nav_shape is not None:
        from sklearn.neighbors import NearestNeighbors

        grid = grid_graph(tuple(nav_shape), nav_index)
        dist, ind = NearestNeighbors(n_neighbors=1).fit(z).kneighbors(z_labels)
        same = dist[:, 0] < 1e-3 * np.sqrt(z.shape[1])
        where = ind[:, 0]

    def pooled(passes: int) -> tuple[np.ndarray, np.ndarray]:
        if passes == 0:
            return z, z_labels
        f = smooth_on_grid(z, grid, passes)
        fl = np.where(same[:, None], f[where], z_labels)
        # pooling shrinks the spread of the features: standardise again on the labels so
        # the head's regularisation strength (chosen on single pixels) means the same
        mean, scale = fl.mean(0), fl.std(0)
        scale = np.where(scale > 1e-8, scale, 1.0)
        return (f - mean) / scale, (fl - mean) / scale

    # 1. pooling passes and the head's regularisation (relative to the probe's: pooled
    #    embeddings are less noisy), scored by the head on the pooled embeddings
    pass_candidates = [(p, r) for p in (POOL_PASSES if nav_shape is not None else (0,))
                       for r in REGULARISATION]
    pass_scores = np.zeros(len(pass_candidates))
    for i, (passes, relax) in enumerate(pass_candidates):
        _, fl = pooled(passes)
        for train, test in folds:
            pass_scores[i] += _score(fit_head(fl[train], targets[train], relax)(fl[test]),
                                     targets[test], classification)
    best_pass, relax = pass_candidates[int(np.argmax(pass_scores))] if folds else (0, 1.0)
    fz, fl = pooled(best_pass)
    fit_head = functools.partial(_with_relax, fit_head, relax)
    # 2. spreading over the graph of (pooled) embeddings
    if nav_shape is not None:
        kf, kl = pooled(max(best_pass, 2))
    else:
        kf, kl = z, z_labels
    graph = MapGraph(kf, kl, nav_shape, nav_index, k=k)
    edge_kinds = MAP_EDGES if nav_shape is not None else ("embedding",)
    candidates = [(0.0, 1.0, edge_kinds[0])] + [
        (s, b, e) for s in STRENGTHS[1:] for b in BETAS for e in edge_kinds]
    scores = np.zeros(len(candidates))
    for train, test in folds:
        h = fit_head(fl[train], targets[train])
        prior, hidden_prior = h(fz), h(fl[test])
        hidden = np.zeros(len(z_labels), dtype=bool)
        hidden[test] = True
        for i, (s, b, e) in enumerate(candidates):
            est = graph.spread(prior, targets, s, b, e, hidden=hidden,
                               hidden_prior=hidden_prior)[graph.n:]
            scores[i] += _score(est, targets[test], classification)
    best = int(np.argmax(scores)) if folds else 0  # ties: the weaker smoothing
    s, b, e = candidates[best]
    estimates = graph.spread(fit_head(fl, targets)(fz), targets, s, b, e)
    info = {"passes": int(best_pass), "relax": float(relax), "strength": float(s),
            "beta": float(b), "edges": e, "k": int(k), "cv_score": float(scores[best] / norm),
            "cv_score_probe": float(pass_scores[0] / norm), "cv_folds": len(folds)}
    return estimates, info
