"""MaskedAutoencoder: the module, LoRA, pool pretraining, embeddings, few-label heads."""

from __future__ import annotations

import copy

import hyperspy.api as hs
import numpy as np
import pytest
import torch

from hyperspy_mlspec import MaskedAutoencoder, load_model
from hyperspy_mlspec.data import eels_map
from hyperspy_mlspec.engine import ArraySource, PoolSource
from hyperspy_mlspec.models.mae import (
    LoRALinear,
    MaskedSpectrumTransformer,
    inject_lora,
    lora_layers,
    merge_lora,
    unmerge_lora,
)

C = 128  # model channels in these tests: 8 patches of 16 bins
TINY = dict(embed_dim=32, depth=1, heads=2, decoder_dim=16, decoder_depth=1, decoder_heads=2,
            random_state=0, show_progressbar=False)


def tiny(**kw) -> MaskedAutoencoder:
    params = dict(TINY, epochs=6)
    params.update(kw)
    return MaskedAutoencoder(C, 16, **params)


@pytest.fixture(scope="module")
def eels():
    """A small EELS map with its ground truth (3 phases)."""
    return eels_map((24, 24), n_channels=C, dose=50, random_state=1, return_truth=True)


@pytest.fixture(scope="module")
def fitted(eels):
    s, _ = eels
    return tiny(epochs=25).fit(s)


def _module(**kw) -> MaskedSpectrumTransformer:
    torch.manual_seed(0)
    return MaskedSpectrumTransformer(C, 16, embed_dim=32, depth=1, heads=2, decoder_dim=16,
                                     decoder_depth=1, decoder_heads=2, **kw)


# -- the module -----------------------------------------------------------------------------
def test_random_masking_hides_the_ratio_per_spectrum_and_restores_order():
    m = _module()
    tokens = torch.arange(4 * 8, dtype=torch.float32).reshape(4, 8, 1).expand(4, 8, 3)
    kept, mask, ids_restore = m.random_masking(tokens.contiguous(), 0.75)
    assert kept.shape == (4, 2, 3)
    assert mask.shape == (4, 8) and torch.equal(mask.sum(1), torch.full((4,), 6.0))
    # kept tokens are exactly the unmasked positions of each spectrum
    for i in range(4):
        visible = torch.nonzero(mask[i] == 0).ravel()
        assert sorted(kept[i, :, 0].tolist()) == sorted(tokens[i, visible, 0].tolist())
    assert len({tuple(r.tolist()) for r in mask}) > 1  # a different mask per spectrum
    # ids_restore undoes the shuffle: gathering (kept + fill) puts tokens back in place
    full = torch.cat([kept, torch.full((4, 6, 3), -1.0)], 1)
    back = torch.gather(full, 1, ids_restore[..., None].expand(-1, -1, 3))
    assert torch.equal(back[..., 0][mask == 0], tokens[..., 0][mask == 0])


def test_forward_shapes_and_embedding_without_mask():
    m = _module()
    x = torch.rand(5, C) * 50
    loss, pred, mask = m(x)
    assert pred.shape == (5, 8, 16) and mask.shape == (5, 8) and loss.ndim == 0
    assert m.embed(x).shape == (5, 8 * 32)  # default: 8 segments (here 1 patch each)
    m.eval()
    with torch.no_grad():  # no masking at embedding time: deterministic
        assert torch.equal(m.embed(x), m.embed(x))


@pytest.mark.parametrize("n_segments, groups", [(4, [2, 2, 2, 2]), (3, [3, 3, 2]),
                                                (1, [8])])
def test_segment_pooling_is_the_mean_of_each_segments_tokens(n_segments, groups):
    m = _module(n_segments=n_segments).eval()
    x = torch.rand(5, C) * 50
    with torch.no_grad():
        tokens = m.encode_tokens(m.prepare(x))[0]  # (5, 8 patches, 32)
        emb = m.embed(x)
    assert m.embedding_dim == n_segments * 32 and emb.shape == (5, n_segments * 32)
    bounds = np.cumsum([0] + groups)
    pairs = zip(bounds[:-1], bounds[1:], strict=True)
    manual = torch.cat([tokens[:, a:b].mean(1) for a, b in pairs], 1)
    torch.testing.assert_close(emb, manual)
    mean = _module(pooling="mean").eval()
    with torch.no_grad():
        torch.testing.assert_close(mean.embed(x), tokens.mean(1))
    assert mean.embedding_dim == 32


@pytest.mark.parametrize("kw, match", [
    (dict(n_segments=9), "exceeds the 8 patches"),
    (dict(n_segments=0), "positive integer or 'auto'"),
    (dict(n_segments=2.5), "positive integer or 'auto'"),
    (dict(pooling="max"), "pooling must be one of"),
])
def test_bad_pooling_is_refused_clearly(kw, match):
    with pytest.raises(ValueError, match=match):
        _module(**kw)
    with pytest.raises(ValueError, match="pooling must be one of|n_segments must be"):
        tiny(**kw).fit(np.random.default_rng(0).random((40, C)))


@pytest.mark.parametrize("norm_pix", [False, True])
def test_loss_counts_masked_bins_only(norm_pix):
    m = _module(norm_pix_loss=norm_pix)
    xn = m.prepare(torch.rand(3, C) * 50)
    pred = torch.randn(3, 8, 16)
    mask = torch.zeros(3, 8)
    mask[:, [1, 4, 5, 7]] = 1
    base = m.loss(xn, pred, mask)
    changed_visible = pred.clone()
    changed_visible[:, [0, 2, 3, 6]] += 100.0
    assert torch.equal(m.loss(xn, changed_visible, mask), base)
    changed_masked = pred.clone()
    changed_masked[:, 4] += 1.0
    assert m.loss(xn, changed_masked, mask) > base
    # value: the mean squared error over the masked bins
    target = m.patchify(xn)
    if norm_pix:
        target = (target - target.mean(-1, keepdim=True)) / (
            target.var(-1, keepdim=True, unbiased=False) + 1e-6).sqrt()
    expected = ((pred - target) ** 2)[:, [1, 4, 5, 7]].mean()
    assert torch.allclose(base, expected, rtol=1e-5)


def test_log_normalisation_removes_dose_and_thickness_scale():
    m = _module()
    x = torch.rand(2, C) * 1000 + 1000
    assert torch.allclose(m.prepare(x), m.prepare(x * 3), atol=2e-3)


# -- LoRA -----------------------------------------------------------------------------------
def test_lora_starts_equal_to_base_and_trains_only_adapters():
    base = _module()
    adapted = copy.deepcopy(base)
    adapters = inject_lora(adapted, r=2, alpha=4, targets=("q", "v"))
    assert len(adapters) == 2 * (1 + 1)  # q and v of the encoder and decoder block
    x = torch.rand(6, C) * 20
    with torch.no_grad():
        assert torch.equal(adapted.embed(x), base.embed(x))
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    frozen_before = {n: p.detach().clone() for n, p in adapted.named_parameters()
                     if not p.requires_grad}
    opt = torch.optim.Adam([p for p in adapted.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        adapted.embed(x).pow(2).mean().backward()
        opt.step()
    for n, p in adapted.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen_before[n]), n
    with torch.no_grad():
        moved = adapted.embed(x)
        assert not torch.allclose(moved, base.embed(x))
        merge_lora(adapted)  # folding the update into the weights gives the same outputs
        assert all(layer.merged for layer in lora_layers(adapted))
        assert torch.allclose(adapted.embed(x), moved, atol=1e-5)
        unmerge_lora(adapted)
        assert torch.allclose(adapted.embed(x), moved, atol=1e-5)


def test_lora_linear_value_and_bad_arguments():
    lin = torch.nn.Linear(4, 3)
    lora = LoRALinear(lin, r=2, alpha=6)
    with torch.no_grad():
        lora.lora_B.fill_(0.5)
    x = torch.randn(5, 4)
    expected = lin(x) + 3.0 * x @ lora.lora_A.T @ lora.lora_B.T
    assert torch.allclose(lora(x), expected, atol=1e-6)
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(torch.nn.Linear(4, 4), r=0)
    with pytest.raises(ValueError, match="subset"):
        inject_lora(_module(), targets=("mlp",))


# -- the pool -------------------------------------------------------------------------------
def test_pool_source_visits_every_row_once_per_epoch():
    a = np.arange(10 * 4, dtype=np.float32).reshape(10, 4)
    b = -np.arange(6 * 2, dtype=np.float32).reshape(6, 2) - 1
    pool = PoolSource([ArraySource(a, block_rows=3), ArraySource(b, block_rows=4)],
                      [None, lambda r: np.repeat(r, 2, axis=1)], n_features=4)
    rows = np.concatenate(list(pool.batches(5, rng=np.random.default_rng(0))))
    expected = np.concatenate([a, np.repeat(b, 2, axis=1)])
    assert rows.shape == (16, 4)
    assert sorted(map(tuple, rows)) == sorted(map(tuple, expected))
    # blocks of both items are interleaved in random order
    first = [start for start, _ in pool.blocks(np.random.default_rng(1).permutation(
        pool.n_blocks()))]
    assert first != sorted(first)


def test_fit_on_a_mixed_pool_records_what_was_done(tmp_path):
    s = eels_map((8, 8), n_channels=C, random_state=2)  # eV axis, model's channel count
    rng = np.random.default_rng(0)
    arr = rng.poisson(20, (30, 200)).astype(np.float32)  # uncalibrated, other channel count
    f = eels_map((6, 5), n_channels=300, random_state=3)
    ax = f.axes_manager.signal_axes[0]  # same range in keV: converted only if asked
    ax.units, ax.offset, ax.scale = "keV", ax.offset / 1000, ax.scale / 1000
    f.save(tmp_path / "b_keV.hspy")
    import dask.array as da

    lazy_arr = da.from_array(rng.poisson(20, (25, C)).astype(np.float32), chunks=(10, C))
    mae = tiny(epochs=2).fit([s, arr, str(tmp_path / "*.hspy"), lazy_arr])
    pool = mae.pool_
    assert [p["kind"] for p in pool] == ["signal", "array", "file", "array"]
    assert [p["n_spectra"] for p in pool] == [64, 30, 30, 25]
    assert [p["n_channels"] for p in pool] == [C, 200, 300, C]
    assert [p["resampled"] for p in pool] == [False, True, True, False]
    assert [p["lazy"] for p in pool] == [False, False, True, True]
    assert pool[2]["units"] == "keV"
    assert pool[2]["range"] == pytest.approx([0.4, 0.4 + 299 * ax.scale])
    assert mae.normalization_ == "log" and len(mae.history_) == 2
    assert mae.n_samples_seen_ > 0


def test_signal_range_converts_units_and_refuses_incompatible_ones():
    s_ev = eels_map((4, 4), n_channels=256, random_state=0)  # 400-910 eV
    s_kev = eels_map((4, 4), n_channels=200, random_state=1)
    ax = s_kev.axes_manager.signal_axes[0]
    ax.units, ax.offset, ax.scale = "keV", ax.offset / 1000, ax.scale / 1000
    mae = tiny(epochs=1, signal_range=(450, "0.85 keV")).fit([s_ev, s_kev])
    assert mae.signal_range_ == [450.0, 850.0, "eV"]
    assert mae.pool_[1]["range"][0] == pytest.approx(0.45, abs=0.003)
    assert mae.pool_[1]["range"][1] == pytest.approx(0.85, abs=0.003)
    # the keV map embeds like its eV twin: same grid after conversion
    s_kev_twin = s_ev.deepcopy()
    ax = s_kev_twin.axes_manager.signal_axes[0]
    ax.units, ax.offset, ax.scale = "keV", ax.offset / 1000, ax.scale / 1000
    np.testing.assert_allclose(mae.transform(s_kev_twin), mae.transform(s_ev), atol=1e-4)
    raman = hs.signals.Signal1D(np.ones((3, 256), dtype=np.float32))
    rax = raman.axes_manager.signal_axes[0]
    rax.units, rax.offset, rax.scale = "nm", 500, 1
    with pytest.raises(ValueError, match="cannot be converted"):
        tiny(epochs=1, signal_range=("450 eV", "850 eV")).fit([s_ev, raman])


# -- checkpoints, files ---------------------------------------------------------------------
def test_save_load_round_trip_is_exact(fitted, eels, tmp_path):
    s, truth = eels
    X = s.data.reshape(-1, C)
    mae = copy.deepcopy(fitted).fit_probe(X[:60], truth.phase_map.ravel()[:60], head="lora",
                                          epochs=3)
    mae.save(tmp_path / "m.mlspec")
    back = load_model(tmp_path / "m.mlspec")
    assert isinstance(back, MaskedAutoencoder)
    np.testing.assert_array_equal(back.transform(X), mae.transform(X))
    np.testing.assert_array_equal(back.predict_proba(X), mae.predict_proba(X))
    assert back.probe_["head"] == "lora" and back.pool_ == mae.pool_
    assert back.history_ == mae.history_
    # the LoRA head reads the segment-pooled embedding of its adapted encoder
    assert back.pooling == "segments" and back._probe_net.head.in_features == 8 * 32


def test_pooling_round_trips_and_old_files_load_as_mean(fitted, eels, tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from hyperspy_mlspec.persistence import _checksum

    s, _ = eels
    X = s.data.reshape(-1, C)[:50]
    three = copy.deepcopy(fitted)
    three.set_params(n_segments=3)
    three.module_.set_pooling("segments", 3)
    three.save(tmp_path / "three.mlspec")
    back = load_model(tmp_path / "three.mlspec")
    assert back.n_segments == 3 and back.n_embedding == 3 * 32
    np.testing.assert_array_equal(back.transform(X), three.transform(X))
    # a file written before the pooling option: no "pooling" anywhere in its config
    path = tmp_path / "old.mlspec"
    fitted.save(path)
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        config = json.loads(f.metadata()["config"])
    for key in ("pooling", "n_segments"):
        del config["params"][key], config["fitted"][key]
    text = json.dumps(config)
    save_file(tensors, str(path), metadata={"config": text, "sha256": _checksum(text, tensors)})
    old = load_model(path)
    assert old.pooling == "mean" and old.n_embedding == 32
    with torch.no_grad():
        tokens = fitted.module_.encode_tokens(fitted.module_.prepare(torch.as_tensor(X)))[0]
    np.testing.assert_allclose(old.transform(X), tokens.mean(1).numpy(), atol=1e-5)


def test_checkpoint_every_epoch_and_resume(tmp_path, eels):
    s, _ = eels
    ckpt = tmp_path / "ckpt.mlspec"
    epochs_seen = []
    mae = tiny(epochs=2, checkpoint=ckpt, patience=None)
    mae.fit(s)
    first = load_model(ckpt)
    epochs_seen.append(first.n_epochs_)
    assert first.n_epochs_ == 2 and len(first.history_) == 2
    np.testing.assert_array_equal(first.transform(s), mae.transform(s))  # last = kept
    resumed = tiny(epochs=4, checkpoint=ckpt, patience=None)
    resumed.fit(s, resume=True)
    assert resumed.n_epochs_ == 4
    assert [h["epoch"] for h in resumed.history_] == [0, 1, 2, 3]
    assert resumed.history_[:2] == first.history_
    assert load_model(ckpt).n_epochs_ == 4
    # the optimizer state travelled: Adam's step count continues
    state = resumed._optimizer.state_dict()["state"]
    assert float(next(iter(state.values()))["step"]) > 2 * 1  # more steps than one epoch
    # a checkpoint of another shape is refused clearly
    with pytest.raises(ValueError, match="another shape: n_channels=128"):
        MaskedAutoencoder(256, 16, **TINY, checkpoint=ckpt).fit(s, resume=True)


def test_more_pretraining_discards_the_probe(fitted):
    X = np.random.default_rng(0).poisson(10, (40, C)).astype(np.float32)
    mae = copy.deepcopy(fitted).fit_probe(X, np.arange(40) % 2)
    with pytest.warns(UserWarning, match="discards the few-label head"):
        mae.partial_fit(X)
    assert mae.probe_ is None


def test_resume_without_a_checkpoint_starts_fresh(eels, tmp_path):
    s, _ = eels
    mae = tiny(epochs=1, checkpoint=tmp_path / "none.mlspec").fit(s, resume=True)
    assert mae.n_epochs_ == 1 and (tmp_path / "none.mlspec").is_file()


# -- embeddings -----------------------------------------------------------------------------
def test_embed_signal_axes_metadata_and_lazy_equals_eager(fitted, eels):
    s, _ = eels
    emb = s.mlspec.embed(fitted)
    d = 8 * 32  # 8 patches -> 8 segments of 32 features (pooling="segments", "auto")
    assert fitted.n_embedding == d and emb.data.shape == (24, 24, d)
    assert emb.axes_manager.signal_axes[0].name == "embedding"
    for a, b in zip(emb.axes_manager.navigation_axes, s.axes_manager.navigation_axes,
                    strict=True):
        assert (a.name, a.scale, a.offset, a.units) == (b.name, b.scale, b.offset, b.units)
    assert emb.metadata.MLSpec.operation_0.operation == "embed"
    assert emb.metadata.MLSpec.operation_0.pooling == "segments"
    np.testing.assert_allclose(emb.data.reshape(-1, d), fitted.transform(s.data.reshape(-1, C)),
                               atol=1e-5)
    lazy = s.as_lazy()
    lazy.data = lazy.data.rechunk((8, 24, C))
    emb_lazy = lazy.mlspec.embed(fitted)
    assert emb_lazy._lazy
    np.testing.assert_allclose(emb_lazy.data.compute(), emb.data, atol=1e-5)
    mask = np.zeros((24, 24), dtype=bool)
    mask[:3] = True
    masked = s.mlspec.embed(fitted, navigation_mask=mask)
    assert np.isnan(masked.data[:3]).all()
    np.testing.assert_allclose(masked.data[3:], emb.data[3:], atol=1e-5)


def test_transform_resamples_other_channel_counts(fitted, eels):
    s, _ = eels
    fine = eels_map((4, 4), n_channels=4 * C, random_state=1)
    emb = fitted.transform(fine.data.reshape(-1, 4 * C))
    assert emb.shape == (16, 8 * 32) and np.isfinite(emb).all()


def test_embeddings_feed_clustering(fitted, eels):
    s, truth = eels
    res = s.mlspec.cluster(fitted, n_clusters=2, normalize="standard")
    assert res.labels.data.shape == (24, 24)
    assert set(np.unique(res.labels.data)) == {0, 1}
    assert res.codes.data.shape == (24, 24, 8 * 32)


# -- few-label heads ------------------------------------------------------------------------
def test_linear_probe_beats_chance_and_predicts_a_phase_map(fitted, eels):
    s, truth = eels
    labels = truth.phase_map
    rng = np.random.default_rng(0)
    labelled = np.ones(labels.shape, dtype=bool)  # True = excluded (not labelled)
    labelled.ravel()[rng.choice(labels.size, 100, replace=False)] = False
    mae = copy.deepcopy(fitted).fit_probe(s, labels, navigation_mask=labelled)
    assert mae.probe_["n_labels"] == 100 and mae.probe_["task"] == "classification"
    phase = s.mlspec.predict(mae)
    assert phase.data.shape == (24, 24)
    assert [a.scale for a in phase.axes_manager.signal_axes] == [
        a.scale for a in s.axes_manager.navigation_axes]
    test = labelled  # the unlabelled pixels
    acc = (phase.data[test] == labels[test]).mean()
    chance = np.bincount(labels[test]).max() / test.sum()
    assert acc > chance + 0.1, (acc, chance)
    proba = s.mlspec.predict(mae, proba=True)
    assert proba.axes_manager.signal_axes[0].name == "class"
    np.testing.assert_allclose(proba.data.sum(-1), 1, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(mae.probe_["classes"])[proba.data.argmax(-1)],
                                  phase.data)
    assert mae.probe_["classes"] == [0, 1, 2] and phase.data.dtype.kind == "i"
    lazy = s.as_lazy().mlspec.predict(mae)  # lazy in, lazy out, same map
    assert lazy._lazy
    np.testing.assert_array_equal(np.asarray(lazy.data.compute()), phase.data)
    # labels given one per labelled pixel instead of navigation-shaped: same probe
    again = copy.deepcopy(fitted).fit_probe(s, labels[~labelled], navigation_mask=labelled)
    np.testing.assert_array_equal(s.mlspec.predict(again).data, phase.data)


def test_lora_probe_regression_on_fractions(fitted, eels):
    s, truth = eels
    X = s.data.reshape(-1, C)
    y = truth.abundances.reshape(-1, truth.abundances.shape[-1])[:, 2]  # rutile fraction
    order = np.random.default_rng(0).permutation(len(X))
    train, test = order[:100], order[100:]
    mae = copy.deepcopy(fitted).fit_probe(X[train], y[train], head="lora", rank=2, epochs=15)
    assert mae.probe_["task"] == "regression"
    rmse = np.sqrt(np.mean((mae.predict(X[test]) - y[test]) ** 2))
    assert rmse < 0.85 * y[test].std(), (rmse, y[test].std())
    trainable = {n for n, p in mae._probe_net.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    # the pretrained encoder itself is untouched by LoRA training
    np.testing.assert_array_equal(mae.transform(X[:20]), fitted.transform(X[:20]))
    masked = mae.predict(s, navigation_mask=np.arange(576).reshape(24, 24) < 24)
    assert np.isnan(masked.data[0]).all() and np.isfinite(masked.data[1:]).all()


def test_lora_keeps_its_linear_start_when_training_only_hurts_the_held_out_labels(fitted,
                                                                                  eels):
    s, truth = eels
    X = s.data.reshape(-1, C)[:100]
    y = truth.abundances.reshape(-1, truth.abundances.shape[-1])[:100, 2]
    # a learning rate of 50 wrecks the head and adapters in the first epoch
    mae = copy.deepcopy(fitted).fit_probe(X, y, head="lora", epochs=2, learning_rate=50.0)
    history = mae.probe_["history"]
    assert history[0]["epoch"] == -1 and history[0]["kept"]
    assert history[0]["val_loss"] < min(h["val_loss"] for h in history[1:])
    # the start: adapters B at zero, i.e. the encoder unchanged, and the linear probe
    for layer in lora_layers(mae._probe_net):
        assert not layer.lora_B.any()
    start = copy.deepcopy(fitted).fit_probe(X, y, head="lora", epochs=2, learning_rate=0.0)
    np.testing.assert_allclose(mae.predict(X), start.predict(X), atol=1e-5)


# -- bad input ------------------------------------------------------------------------------
def test_too_few_channels_for_the_patch_layout_is_refused():
    coarse = np.random.default_rng(0).poisson(5, (20, 6)).astype(float)
    with pytest.raises(ValueError, match="fewer than the 8 patches"):
        tiny().fit(coarse)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="multiple of"):
        MaskedAutoencoder(100, 16).fit(np.ones((4, 100)))
    with pytest.raises(ValueError, match="mask_ratio"):
        tiny(mask_ratio=1.0).fit(np.ones((4, C)))


def test_label_problems_are_refused(fitted, eels):
    s, truth = eels
    X = s.data.reshape(-1, C)
    with pytest.raises(ValueError, match="y has shape"):
        fitted.fit_probe(X[:50], np.zeros(49, dtype=int))
    with pytest.raises(ValueError, match="single class"):
        fitted.fit_probe(X[:50], np.ones(50, dtype=int))
    with pytest.raises(ValueError, match="NaN"):
        fitted.fit_probe(X[:50], np.r_[np.nan, np.ones(49)], task="regression")
    mask = np.ones((24, 24), dtype=bool)
    mask[0, :10] = False
    with pytest.raises(ValueError, match="selects 10 of the 576 pixels"):
        fitted.fit_probe(s, np.zeros(12), navigation_mask=mask)
    with pytest.raises(AttributeError, match="has no attribute 'predict'") as info:
        tiny(epochs=1).fit(X[:40]).predict(X[:3])
    assert "call fit_probe(X, y) first" in str(info.value.__cause__)
    with pytest.raises(ValueError, match="no few-label head yet: call model.fit_probe"):
        s.mlspec.predict(tiny(epochs=1).fit(X[:40]))
    with pytest.raises(ValueError, match="C must be a positive number or 'auto'"):
        fitted.fit_probe(X[:50], np.arange(50) % 2, C=0)


def test_cross_validated_c_is_recorded_and_a_fixed_c_is_used(fitted, eels):
    s, truth = eels
    X, y = s.data.reshape(-1, C)[:80], truth.phase_map.ravel()[:80]
    auto = copy.deepcopy(fitted).fit_probe(X, y)
    assert auto.probe_["strength"] in np.logspace(-3, 3, 7)
    fixed = copy.deepcopy(fitted).fit_probe(X, y, C=0.01)
    assert fixed.probe_["strength"] == 0.01


def test_nan_and_inf_are_refused(fitted):
    X = np.random.default_rng(0).poisson(10, (40, C)).astype(np.float32)
    X[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        tiny(epochs=1).fit(X)
    X[3, 5] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        fitted.transform(X)


def test_unsupported_items_and_missing_files_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file matches"):
        tiny().fit(str(tmp_path / "*.hspy"))
    with pytest.raises(TypeError, match="file path"):
        tiny().fit([{"not": "data"}])


def test_load_model_refuses_weights_of_another_shape(fitted, tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from hyperspy_mlspec.persistence import _checksum

    path = tmp_path / "m.mlspec"
    fitted.save(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    config = json.loads(meta["config"])
    config["params"]["embed_dim"] = 64  # the file now claims another architecture
    text = json.dumps(config)
    save_file(tensors, str(path), metadata={"config": text, "sha256": _checksum(text, tensors)})
    with pytest.raises(ValueError, match="do not match the recorded architecture"):
        load_model(path)


# -- the grid and budget from the data (issue 14) -------------------------------------------
def test_auto_grid_follows_the_data_and_keeps_explicit_values():
    from hyperspy_mlspec.estimators.mae.pool import auto_grid

    assert auto_grid(162) == (160, 5)  # 32 patches of 5 bins, not 2048 resampled bins
    assert auto_grid(1024) == (1024, 32) and auto_grid(512) == (512, 16)
    assert auto_grid(2048) == (2048, 64)
    assert auto_grid(20) == (20, 1) and auto_grid(3) == (3, 1)
    assert auto_grid(10**5) == (4096, 128)  # capped
    assert auto_grid(162, 2048, 32) == (2048, 32)
    assert auto_grid(162, 2048) == (2048, 64)
    assert auto_grid(162, patch_size=8) == (160, 8)
    assert auto_grid(100, 96) == (96, 3)  # the divisor of 96 nearest 96 / 32


def test_default_grid_on_a_162_channel_int16_map_and_its_embedding(tmp_path):
    s = eels_map((8, 10), 162, 50, energy_range=(400, 1696), random_state=1)
    s.data = s.data.astype(np.int16)
    mae = MaskedAutoencoder(epochs=1, random_state=0, show_progressbar=False).fit(s)
    assert (mae.n_channels_, mae.patch_size_, mae.n_patches) == (160, 5, 32)
    assert mae.n_features_in_ == 160 and mae.pool_[0]["resampled"]
    # 8 segments of 4 patches x the 64-wide default encoder
    assert mae.module_.n_segments == 8 and mae.n_embedding == 8 * 64
    e = s.mlspec.embed(mae)
    assert e.data.shape == (8, 10, 512) and e.data.dtype == np.float32
    assert np.isfinite(e.data).all()
    md = e.metadata.MLSpec.as_dictionary()
    last = md[max(md, key=lambda k: int(k.rsplit("_", 1)[1]))]
    assert last["n_channels"] == 160 and last["patch_size"] == 5
    # the grid is fitted state: a saved model keeps it, the parameters stay "auto"
    mae.save(tmp_path / "auto.mlspec")
    back = load_model(tmp_path / "auto.mlspec")
    assert back.n_channels == "auto" and (back.n_channels_, back.patch_size_) == (160, 5)
    np.testing.assert_array_equal(back.embed(s).data, e.data)
    with pytest.raises(AttributeError, match="fit the model first"):
        MaskedAutoencoder().n_patches  # noqa: B018


def test_files_without_a_fitted_grid_load_with_their_explicit_parameters(fitted, eels,
                                                                         tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from hyperspy_mlspec.persistence import _checksum

    path = tmp_path / "old.mlspec"
    fitted.save(path)
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        config = json.loads(f.metadata()["config"])
    assert config["params"]["n_channels"] == C and config["fitted"]["n_channels_"] == C
    for key in ("n_channels_", "patch_size_"):  # as written before n_channels="auto"
        del config["fitted"][key]
    text = json.dumps(config)
    save_file(tensors, str(path), metadata={"config": text, "sha256": _checksum(text, tensors)})
    old = load_model(path)
    assert (old.n_channels_, old.patch_size_) == (C, 16)
    X = eels[0].data.reshape(-1, C)[:20]
    np.testing.assert_array_equal(old.transform(X), fitted.transform(X))


def test_auto_budget_counts_spectra_seen_not_a_fixed_number_of_steps():
    mae = MaskedAutoencoder()
    # a 64x64 map (3891 training spectra): batch 256, ~300 steps = 20 passes
    assert mae._batch_size(4096) == 256 and mae._epochs(3891, 256) == 20
    assert mae._batch_size(2000) == 128 and mae._epochs(1900, 128) == 21
    assert mae._epochs(80000, 256) == 1  # a large pool: one pass
    assert MaskedAutoencoder(epochs=7)._epochs(80000, 256) == 7


def test_auto_grid_parameters_are_checked():
    for bad in ("big", 0, 2.5):
        with pytest.raises(ValueError, match="n_channels must be 'auto' or a positive"):
            MaskedAutoencoder(n_channels=bad).fit(np.ones((4, C)))
    with pytest.raises(ValueError, match="patch_size must be 'auto' or a positive"):
        MaskedAutoencoder(patch_size=-1).fit(np.ones((4, C)))
