"""Model files: weights-only safetensors + JSON config, integrity and architecture checks."""

import json

import numpy as np
import pytest

from hyperspy_mlspec import AutoencoderDecomposition, load_model
from tests.conftest import FAST


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from tests.conftest import mixture_map

    s, _ = mixture_map((6, 6), n_channels=32)
    ae = s.mlspec.decomposition(2, variational=True, encoder="conv", **FAST)
    path = tmp_path_factory.mktemp("m") / "ae.mlspec"
    ae.save(path)
    return s, ae, path


def test_round_trip_identical_outputs_and_config(fitted):
    s, ae, path = fitted
    back = load_model(path)
    X = s.data.reshape(-1, 32)
    np.testing.assert_array_equal(back.transform(X), ae.transform(X))
    np.testing.assert_array_equal(back.components_, ae.components_)
    assert back.get_params() == ae.get_params()
    assert back.signal_axis_ == ae.signal_axis_ and back.signal_axis_["units"] == "eV"
    assert len(back.history_) == len(ae.history_)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
    assert config["fitted"]["normalization_"] == "poisson"
    assert {"torch", "hyperspy", "hyperspy_mlspec"} <= set(config["versions"])


def test_truncated_file_refused(fitted, tmp_path):
    _, _, path = fitted
    bad = tmp_path / "cut.mlspec"
    bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a readable"):
        load_model(bad)


def test_tampered_file_refused(fitted, tmp_path):
    _, _, path = fitted
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF  # flip bits in the last tensor
    bad = tmp_path / "tampered.mlspec"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="integrity"):
        load_model(bad)


def test_other_architecture_refused(fitted, tmp_path):
    from safetensors.torch import load_file, save_file

    from hyperspy_mlspec.persistence import _checksum

    _, _, path = fitted
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    config = json.loads(meta["config"])
    config["params"]["encoder"] = "dense"  # weights are from the conv encoder
    tensors = load_file(str(path))
    text = json.dumps(config)
    bad = tmp_path / "arch.mlspec"
    save_file(tensors, str(bad), metadata={"config": text, "sha256": _checksum(text, tensors)})
    with pytest.raises(ValueError, match="do not match the recorded architecture"):
        load_model(bad)


def test_not_a_model_and_unfitted(tmp_path):
    p = tmp_path / "x.mlspec"
    p.write_text("hello")
    with pytest.raises(ValueError):
        load_model(p)
    with pytest.raises(ValueError, match="fitted"):
        AutoencoderDecomposition().save(tmp_path / "y.mlspec")
