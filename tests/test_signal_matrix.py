"""Every kind of signal x every ``s.mlspec`` method: it works, or it refuses clearly.

"Clearly" means a ValueError/TypeError raised by hyperspy_mlspec itself (not from inside
numpy, json, torch or HyperSpy) whose message says what to do. Inputs must be bit-identical
after every call (data, axes and metadata hashed before and after), and saved models must
reload and reproduce their output. Each variant runs eagerly and lazily, as HyperSpy's
``lazifyTestClass`` does.
"""

from __future__ import annotations

import hashlib
import json
import traceback
from pathlib import Path

import hyperspy.api as hs
import numpy as np
import pytest

import hyperspy_mlspec
from hyperspy_mlspec import load_model

TINY = dict(epochs=1, random_state=0, show_progressbar=False)
_PACKAGE = str(Path(hyperspy_mlspec.__file__).parent)


# -- the variants ---------------------------------------------------------------------------
def _counts(shape, n_channels, seed=0, dose=20.0):
    rng = np.random.default_rng(seed)
    e = np.linspace(0, 1, n_channels)
    comps = np.stack([np.exp(-((e - c) ** 2) / 0.01) + 0.3 for c in (0.3, 0.7)])
    w = rng.dirichlet(np.ones(2), size=shape)
    return rng.poisson(dose * (w @ comps)).astype(np.float64)


def _calibrate(s, units="eV", offset=500.0, scale=0.5):
    ax = s.axes_manager.signal_axes[0]
    ax.name, ax.units, ax.offset, ax.scale = "Energy", units, offset, scale
    for nav, name in zip(s.axes_manager.navigation_axes, "xyz", strict=False):
        nav.name, nav.units, nav.scale = name, "nm", 2.0
    s.metadata.General.title = "variant"
    return s


def _eels(shape=(6, 5), n=48, dtype=np.float32):
    import exspy

    return _calibrate(exspy.signals.EELSSpectrum(_counts(shape, n).astype(dtype)))


def _eds(kind):
    import exspy

    cls = exspy.signals.EDSTEMSpectrum if kind == "tem" else exspy.signals.EDSSEMSpectrum
    return _calibrate(cls(_counts((6, 5), 48).astype(np.float32)), "keV", 0.2, 0.02)


def _nonuniform_signal():
    s = hs.signals.Signal1D(_counts((6, 5), 48))
    energy = 400 + np.cumsum(np.linspace(0.4, 0.8, 48))
    s.axes_manager.remove(s.axes_manager.signal_axes[0])
    s = hs.signals.Signal1D(s.data, axes=[
        {"size": 6, "name": "y", "units": "nm"}, {"size": 5, "name": "x", "units": "nm"},
        {"axis": energy, "name": "Energy", "units": "eV"}])
    s.metadata.General.title = "non-uniform energy"
    return s


def _nonuniform_navigation():
    data = _counts((5, 6), 48)
    x = np.cumsum(np.linspace(1.0, 3.0, 6))
    s = hs.signals.Signal1D(data, axes=[
        {"size": 5, "name": "y", "units": "nm", "scale": 2.0},
        {"axis": x, "name": "x", "units": "nm"},
        {"size": 48, "name": "Energy", "units": "eV", "offset": 500.0, "scale": 0.5}])
    return s


VARIANTS = {
    # must work
    "plain_uncalibrated": lambda: hs.signals.Signal1D(_counts((6, 5), 48)),
    "eels_float32": _eels,
    "eds_tem": lambda: _eds("tem"),
    "eds_sem": lambda: _eds("sem"),
    "uint8": lambda: _eels(dtype=np.uint8),
    "int16": lambda: _eels(dtype=np.int16),
    "uint32": lambda: _eels(dtype=np.uint32),
    "int64": lambda: _eels(dtype=np.int64),
    "uint64": lambda: _eels(dtype=np.uint64),
    "float16": lambda: _eels(dtype=np.float16),
    "float64": lambda: _eels(dtype=np.float64),
    "nonuniform_signal_axis": _nonuniform_signal,
    "nonuniform_navigation_axis": _nonuniform_navigation,
    "linescan": lambda: _eels(shape=(30,)),
    "navigation_3d": lambda: _eels(shape=(3, 4, 3)),
    "map_1x2": lambda: _eels(shape=(1, 2)),
    # work, or refuse clearly
    "single_spectrum": lambda: _eels(shape=()),
    "map_1x1": lambda: _eels(shape=(1, 1)),
    "short_spectra": lambda: _eels(n=4),
    "nan_pixel": lambda: _with(_eels(dtype=np.float64), (2, 3), np.nan),
    "inf_pixel": lambda: _with(_eels(dtype=np.float64), (4, 1), np.inf),
    "negative_values": lambda: _shifted(_eels(dtype=np.float64), -5.0),
    "all_zero": lambda: _eels(dtype=np.float64) * 0,
    "complex": lambda: hs.signals.ComplexSignal1D(_counts((6, 5), 48) * (1 + 1j)),
    "signal2d": lambda: hs.signals.Signal2D(_counts((3,), 64).reshape(3, 8, 8)),
}
MUST_WORK = {"plain_uncalibrated", "eels_float32", "eds_tem", "eds_sem", "uint8", "int16",
             "uint32", "int64", "uint64", "float16", "float64", "nonuniform_signal_axis",
             "nonuniform_navigation_axis", "linescan", "navigation_3d", "map_1x2"}
# where a method has nothing to learn from, refusing is right (clearly, see _clear)
MAY_REFUSE = {("map_1x2", "cluster"), ("map_1x2", "embedding_2d"),
              # connected regions and spatial smoothing are defined on lines and maps
              ("navigation_3d", "anomaly_map"), ("navigation_3d", "anomaly_autoencoder"),
              ("navigation_3d", "cluster"),
              ("navigation_3d", "embedding_2d")}


def _with(s, index, value):
    s.data[(slice(None),) * 0 + index] = value
    return s


def _shifted(s, offset):
    s.data += offset
    return s


def _fingerprint(s) -> str:
    h = hashlib.sha256()
    data = s.data.compute() if s._lazy else s.data
    h.update(str(data.dtype).encode())
    h.update(np.ascontiguousarray(data).view(np.uint8))
    for ax in s.axes_manager._axes:
        d = ax.get_axis_dictionary()
        h.update(json.dumps({k: (np.asarray(v).tolist() if k == "axis" else str(v))
                             for k, v in d.items()}, sort_keys=True).encode())
    h.update(json.dumps(s.metadata.as_dictionary(), sort_keys=True, default=str).encode())
    return h.hexdigest()


# -- the methods ----------------------------------------------------------------------------
def _nav_shape(s):
    return tuple(s.data.shape[: s.axes_manager.navigation_dimension])


def _check_navigation(out, s):
    """A navigation-shaped result keeps the navigation axes of ``s``."""
    got = [(a.name, a.units, a.size) for a in out.axes_manager._axes]
    want = [(a.name, a.units, a.size) for a in s.axes_manager.navigation_axes]
    assert got[: len(want)] == want or got == want[::-1][: len(got)] or all(
        g in got for g in want), (got, want)


def run_decomposition(s, tmp_path):
    ae = s.mlspec.decomposition(2, **TINY)
    k = s.learning_results.factors.shape[1]
    assert k == 2 and s.learning_results.loadings.shape[0] == int(np.prod(_nav_shape(s)))
    rec = s.mlspec.reconstruct(ae)
    assert rec.data.shape == s.data.shape
    assert rec.axes_manager.signal_axes[0].units == s.axes_manager.signal_axes[0].units
    # saved models reload and reproduce their output
    ae.save(tmp_path / "m.mlspec")
    again = s.mlspec.reconstruct(load_model(tmp_path / "m.mlspec"))
    np.testing.assert_allclose(np.asarray(again.data), np.asarray(rec.data), rtol=1e-5,
                               atol=1e-5)
    codes = s.mlspec.encode(ae)
    assert codes.data.shape == _nav_shape(s) + (2,)


def run_denoise(s, tmp_path):
    d = s.mlspec.denoise(**TINY)
    assert d.data.shape == s.data.shape and type(d) is type(s)
    assert np.isfinite(np.asarray(d.data)).all()


def run_anomaly_map(s, tmp_path):
    _check_score(s.mlspec.anomaly_map(show_progressbar=False), s)  # spatial context


def run_anomaly_autoencoder(s, tmp_path):
    _check_score(s.mlspec.anomaly_map(method="autoencoder", **TINY), s)


def _check_score(score, s):
    if s.axes_manager.navigation_dimension == 0:
        assert np.isfinite(float(score))
        return
    assert score.data.shape == _nav_shape(s)
    _check_navigation(score, s)


def run_cluster(s, tmp_path):
    res = s.mlspec.cluster(n_clusters=2, **TINY)
    assert res.labels.data.shape == _nav_shape(s)
    assert set(np.unique(np.asarray(res.labels.data))) <= {-1, 0, 1}


def run_embedding_2d(s, tmp_path):
    emb = s.mlspec.embedding_2d(**TINY)
    assert emb.data.shape == _nav_shape(s) + (2,)


@pytest.fixture(scope="module")
def mae():
    from hyperspy_mlspec import MaskedAutoencoder

    pool = np.random.default_rng(0).poisson(10.0, (64, 64)).astype(np.float32)
    return MaskedAutoencoder(n_channels=32, patch_size=4, embed_dim=16, depth=1, heads=2,
                             decoder_dim=8, decoder_depth=1, decoder_heads=1, **TINY).fit(pool)


def run_embed(s, tmp_path, mae):
    emb = s.mlspec.embed(mae)
    assert emb.data.shape == _nav_shape(s) + (mae.n_embedding,)
    mae.save(tmp_path / "mae.mlspec")
    again = s.mlspec.embed(load_model(tmp_path / "mae.mlspec"))
    np.testing.assert_allclose(np.asarray(again.data), np.asarray(emb.data), rtol=1e-5,
                               atol=1e-5)


METHODS = {"decomposition": run_decomposition, "denoise": run_denoise,
           "anomaly_map": run_anomaly_map, "anomaly_autoencoder": run_anomaly_autoencoder,
           "cluster": run_cluster,
           "embedding_2d": run_embedding_2d, "embed": run_embed}


def _clear(exc: BaseException) -> bool:
    """Raised by hyperspy_mlspec itself, as a ValueError/TypeError with a real message."""
    if not isinstance(exc, (ValueError, TypeError)) or len(str(exc)) < 30:
        return False
    last = traceback.extract_tb(exc.__traceback__)[-1]
    return last.filename.startswith(_PACKAGE)


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_method(variant, method, lazy, tmp_path, mae):
    s = VARIANTS[variant]()
    if lazy:
        s = s.as_lazy()
        s.data = s.data.rechunk((2,) * (s.data.ndim - 1) + (-1,)) if s.data.ndim > 1 else s.data
    before = _fingerprint(s)
    run = METHODS[method]
    try:
        if method == "embed":
            run(s, tmp_path, mae)
        else:
            run(s, tmp_path)
    except AssertionError:
        raise
    except Exception as exc:
        if variant in MUST_WORK and (variant, method) not in MAY_REFUSE:
            raise
        assert _clear(exc), (f"{variant}/{method}: unclear {type(exc).__name__} from "
                             f"{traceback.extract_tb(exc.__traceback__)[-1].filename}: "
                             f"{exc}")
    finally:
        assert _fingerprint(s) == before, f"{variant}/{method} modified its input"
