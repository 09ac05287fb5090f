"""``hyperspy-mlspec pretrain`` and ``hyperspy-mlspec embed``."""

from __future__ import annotations

import hyperspy.api as hs
import numpy as np
import pytest

from hyperspy_mlspec import MaskedAutoencoder, load_model
from hyperspy_mlspec.cli import main
from hyperspy_mlspec.data import eels_map

SMALL = ["--channels", "64", "--patch-size", "16", "--seed", "0"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two maps of different channel counts and a single spectrum."""
    d = tmp_path_factory.mktemp("lab")
    eels_map((6, 6), n_channels=64, random_state=1).save(d / "a.hspy")
    eels_map((5, 4), n_channels=96, random_state=2).save(d / "b.hspy")
    eels_map((), n_channels=80, random_state=3).save(d / "c.hspy")
    return d


def _fast(monkeypatch):
    """Tiny network for the CLI tests (the CLI uses the default architecture)."""
    original = MaskedAutoencoder.__init__

    def init(self, n_channels="auto", patch_size="auto", **kw):
        kw.update(embed_dim=16, depth=1, heads=2, decoder_dim=16, decoder_depth=1,
                  decoder_heads=2, show_progressbar=False)
        original(self, n_channels, patch_size, **kw)
    monkeypatch.setattr(MaskedAutoencoder, "__init__", init)


def test_pretrain_on_a_glob_then_embed(folder, tmp_path, monkeypatch, capsys):
    _fast(monkeypatch)
    model = tmp_path / "mae.mlspec"
    assert main(["pretrain", str(folder / "*.hspy"), "--out", str(model), "--epochs", "2",
                 *SMALL]) == 0
    out = capsys.readouterr().out
    assert "pretrained on 57 spectra from 3 file(s)" in out
    assert f"{folder / 'b.hspy'}: 20 spectra, 96 channels (resampled)" in out
    mae = load_model(model)
    assert [p["n_channels"] for p in mae.pool_] == [64, 96, 80]
    assert [p["resampled"] for p in mae.pool_] == [False, True, True]
    assert mae.n_epochs_ == 2
    assert main(["embed", str(model), str(folder / "a.hspy"), str(folder / "c.hspy"),
                 "--out", str(tmp_path / "emb")]) == 0
    emb = hs.load(tmp_path / "emb" / "a_embedding.hspy")
    assert emb.data.shape == (6, 6, 4 * 16)  # 4 patches -> 4 segments (n_segments="auto")
    assert emb.axes_manager.signal_axes[0].name == "embedding"
    np.testing.assert_allclose(emb.data, mae.embed(hs.load(folder / "a.hspy")).data, atol=1e-5)
    assert hs.load(tmp_path / "emb" / "c_embedding.hspy").data.shape == (4 * 16,)


def test_pretrain_grid_from_the_data_by_default(folder, tmp_path, monkeypatch):
    _fast(monkeypatch)
    model = tmp_path / "auto.mlspec"
    assert main(["pretrain", str(folder / "*.hspy"), "--out", str(model), "--epochs", "1",
                 "--seed", "0"]) == 0
    mae = load_model(model)
    # the largest file has 96 channels: 96 bins in 32 patches of 3, no upsampling to 2048
    assert (mae.n_channels_, mae.patch_size_) == (96, 3)
    assert [p["resampled"] for p in mae.pool_] == [True, False, True]


def test_pretrain_checkpoint_and_resume(folder, tmp_path, monkeypatch, capsys):
    _fast(monkeypatch)
    ckpt, model = tmp_path / "ck.mlspec", tmp_path / "m.mlspec"
    args = ["pretrain", str(folder / "a.hspy"), "--out", str(model), "--checkpoint",
            str(ckpt), "--lazy", *SMALL]
    assert main([*args, "--epochs", "1"]) == 0
    assert load_model(ckpt).n_epochs_ == 1
    assert main([*args, "--epochs", "3", "--resume"]) == 0
    assert load_model(model).n_epochs_ == 3 and load_model(ckpt).n_epochs_ == 3


def test_pretrain_pooling_options(folder, tmp_path, monkeypatch, capsys):
    _fast(monkeypatch)
    model = tmp_path / "m.mlspec"
    base = ["pretrain", str(folder / "a.hspy"), "--out", str(model), "--epochs", "1", *SMALL]
    assert main([*base, "--pooling", "mean"]) == 0
    assert load_model(model).pooling == "mean" and load_model(model).n_embedding == 16
    assert main([*base, "--segments", "2"]) == 0
    assert load_model(model).n_embedding == 2 * 16
    assert main([*base, "--segments", "5"]) == 1  # 64 channels / 16 = 4 patches
    assert "n_segments must be 'auto' or an integer from 1 to the 4 patches" in \
        capsys.readouterr().err


def test_pretrain_and_embed_errors(folder, tmp_path, capsys):
    assert main(["pretrain", str(tmp_path / "*.hspy"), "--out", str(tmp_path / "m")]) == 1
    assert "no file matches" in capsys.readouterr().err
    assert main(["pretrain", str(folder / "a.hspy"), "--out", str(tmp_path / "m"),
                 "--channels", "100", "--patch-size", "32"]) == 1
    assert "multiple of" in capsys.readouterr().err
    assert main(["pretrain", str(folder / "a.hspy"), "--out", "m", "--resume"]) == 2
    assert main(["embed", str(folder / "a.hspy"), str(folder / "a.hspy"),
                 "--out", str(tmp_path)]) == 1
    assert "not a readable hyperspy_mlspec model" in capsys.readouterr().err
