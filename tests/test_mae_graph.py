"""Few-label phase maps that use the map: graph spreading of the MAE probe (issue 11)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import scipy.sparse as sp

from hyperspy_mlspec import MaskedAutoencoder, load_model
from hyperspy_mlspec.data import eels_map
from hyperspy_mlspec.estimators.mae.graph import MapGraph, grid_graph, spread_predict

C = 128
TINY = dict(embed_dim=32, depth=1, heads=2, decoder_dim=16, decoder_depth=1, decoder_heads=2,
            random_state=0, show_progressbar=False)


@pytest.fixture(scope="module")
def noisy():
    """A low-dose 24x24 EELS map (3 phases): pixel by pixel the probe is noisy."""
    return eels_map((24, 24), n_channels=C, dose=3, random_state=2, return_truth=True)


@pytest.fixture(scope="module")
def probed(noisy):
    s, truth = noisy
    mae = MaskedAutoencoder(C, 16, epochs=8, **TINY).fit(s)
    unlabelled = np.ones(truth.phase_map.shape, dtype=bool)
    unlabelled.ravel()[np.random.default_rng(0).choice(truth.phase_map.size, 60,
                                                        replace=False)] = False
    return mae.fit_probe(s, truth.phase_map, navigation_mask=unlabelled), unlabelled


def _last_op(signal) -> dict:
    ops = signal.metadata.MLSpec.as_dictionary()
    return ops[max(ops, key=lambda k: int(k.rsplit("_", 1)[1]))]


# -- the graph ------------------------------------------------------------------------------
def test_grid_graph_links_axis_neighbours_and_skips_masked_pixels():
    g = grid_graph((3, 4))
    assert g.shape == (12, 12) and (g != g.T).nnz == 0
    # corner 2 neighbours, edge 3, inside 4: 4*2 + 6*3 + 2*4 = 34 links counted twice
    np.testing.assert_array_equal(np.sort(np.asarray(g.sum(1)).ravel())[[0, -1]], [2, 4])
    assert g.sum() == 34
    kept = np.array([0, 1, 2, 4, 8])  # first row and first column of a 3x4 map, one hole
    sub = grid_graph((3, 4), kept).toarray()
    assert sub.tolist() == [[0, 1, 0, 1, 0], [1, 0, 1, 0, 0], [0, 1, 0, 0, 0],
                            [1, 0, 0, 0, 1], [0, 0, 0, 1, 0]]
    assert grid_graph((5,)).sum() == 8 and grid_graph((2, 2, 2)).sum() == 24


def test_spreading_zero_strength_is_the_probe_and_labels_reach_the_map():
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1], 30)
    feats = truth[:, None] * 2.0 + rng.normal(0, 1.0, (60, 3))
    prior = np.clip(np.eye(2)[truth] + rng.normal(0, 0.6, (60, 2)), 0.01, None)
    prior /= prior.sum(1, keepdims=True)
    lab = np.array([5, 40])
    g = MapGraph(feats, feats[lab], (60,))
    np.testing.assert_allclose(g.spread(prior, np.eye(2)[truth[lab]], 0.0, 1.0), prior)
    smooth = g.spread(prior, np.eye(2)[truth[lab]], 3.0, 0.1, edges="grid")
    assert (smooth.argmax(1) == truth).mean() > (prior.argmax(1) == truth).mean() + 0.1
    np.testing.assert_allclose(smooth.sum(1), 1.0, atol=1e-4)  # still probabilities
    assert isinstance(g.adjacency("grid"), sp.csr_matrix)
    with pytest.raises(ValueError, match="edges must be one of"):
        g.adjacency("grid+magic")


def test_cross_validation_keeps_the_probe_when_the_map_has_no_structure():
    # phases scattered at random over the map: neighbours say nothing, so the
    # cross-validated choice must not be a strong spatial smoothing that hurts
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 2, 400)
    z = truth[:, None] * 3.0 + rng.normal(0, 1.0, (400, 4))
    lab = rng.choice(400, 60, replace=False)

    def fit_head(zz, tt, relax=1.0):
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=relax).fit(zz, tt.argmax(1))
        return clf.predict_proba

    est, info = spread_predict(z, z[lab], np.eye(2)[truth[lab]], fit_head, (20, 20), None,
                               True)
    plain = fit_head(z[lab], np.eye(2)[truth[lab]])(z).argmax(1)
    assert (est.argmax(1) == truth).mean() >= (plain == truth).mean() - 0.02
    assert info["cv_folds"] == 5 and info["cv_score"] >= info["cv_score_probe"]


# -- through the estimator and the namespace -------------------------------------------------
def test_graph_spreading_beats_the_plain_probe_on_a_low_dose_map(probed, noisy):
    s, truth = noisy
    mae, unlabelled = probed
    before = s.data.copy()
    graph = s.mlspec.predict(mae)  # default on a map: the graph
    plain = s.mlspec.predict(mae, graph=False)
    np.testing.assert_array_equal(s.data, before)  # input untouched
    labels = truth.phase_map
    acc_graph = (graph.data[unlabelled] == labels[unlabelled]).mean()
    acc_plain = (plain.data[unlabelled] == labels[unlabelled]).mean()
    assert acc_graph > acc_plain + 0.05, (acc_graph, acc_plain)
    # a phase map with the navigation axes of the signal, and the choice recorded
    assert graph.data.shape == (24, 24) and graph.data.dtype.kind == "i"
    for a, b in zip(graph.axes_manager.signal_axes, s.axes_manager.navigation_axes,
                    strict=True):
        assert (a.name, a.scale, a.offset, a.units) == (b.name, b.scale, b.offset, b.units)
    info = json.loads(_last_op(graph)["graph"])
    assert info["strength"] > 0 and info["cv_score"] >= info["cv_score_probe"]
    assert _last_op(plain)["graph"] is False
    proba = s.mlspec.predict(mae, proba=True)
    np.testing.assert_allclose(proba.data.sum(-1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(proba.data.argmax(-1), graph.data)


def test_graph_on_lazy_masked_and_linescan_signals(probed, noisy, tmp_path):
    s, _ = noisy
    mae, _ = probed
    full = s.mlspec.predict(mae).data
    lazy = s.as_lazy().mlspec.predict(mae)
    assert lazy._lazy
    np.testing.assert_array_equal(np.asarray(lazy.data.compute()), full)
    mask = np.zeros((24, 24), dtype=bool)
    mask[:4] = True
    holes = s.mlspec.predict(mae, navigation_mask=mask)
    assert np.isnan(holes.data[mask]).all() and np.isfinite(holes.data[~mask]).all()
    line = s.inav[:, 5]  # a linescan of 24 pixels: grid edges along the line
    out = line.mlspec.predict(mae)
    assert out.data.shape == (24,) and json.loads(_last_op(out)["graph"])["edges"]
    # the labelled embeddings travel with the model file
    path = tmp_path / "probe.mlspec"
    mae.save(path)
    np.testing.assert_array_equal(s.mlspec.predict(load_model(path)).data, full)


def test_graph_option_errors(probed, noisy):
    s, _ = noisy
    mae, _ = probed
    X = s.data.reshape(-1, C)[:20].astype(np.float32)
    with pytest.raises(ValueError, match="graph=True spreads labels over a map"):
        mae.predict(X, graph=True)
    with pytest.raises(ValueError, match="graph must be 'auto', True or False"):
        s.mlspec.predict(mae, graph="yes")
    assert mae.predict(X).shape == (20,)  # arrays: pixel by pixel under "auto"
    old = copy.deepcopy(mae)
    old._probe_labels = None  # e.g. a file written before graph spreading
    with pytest.raises(ValueError, match="holds no labelled embeddings"):
        s.mlspec.predict(old, graph=True)
    np.testing.assert_array_equal(s.mlspec.predict(old).data,
                                  s.mlspec.predict(mae, graph=False).data)
