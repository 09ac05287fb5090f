"""Model files: safetensors weights plus a JSON config, never pickle.

One ``.mlspec`` file is a safetensors file whose header metadata holds the JSON config
(estimator class, parameters, fitted state, training energy axis, package versions) and a
SHA-256 checksum of config and tensors, so truncated or edited files are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

FORMAT = "hyperspy_mlspec.model"
FORMAT_VERSION = 1


_REGISTRY: dict[str, type] = {}


def register_model(cls: type) -> type:
    """Class decorator: ``cls`` can be saved and loaded by name.

    The registry is explicit: loading never imports or executes anything a file names;
    only registered classes are rebuilt (with ``cls(**params)`` and ``cls._restore``).
    """
    _REGISTRY[cls.__name__] = cls
    return cls


def _jsonable_params(estimator) -> dict:
    params = {}
    for key, value in estimator.get_params(deep=False).items():
        if isinstance(value, np.integer):
            value = int(value)
        elif isinstance(value, tuple):
            value = list(value)
        elif not isinstance(value, (str, int, float, bool, list, type(None))):
            value = None  # e.g. a RandomState instance: not reproducible from a file anyway
        params[key] = value
    return params


def _version_of(package: str, version, not_found) -> str | None:
    try:  # the installed version, without importing the package
        return version(package)
    except not_found:
        return None


def _checksum(config_json: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(config_json.encode())
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def save_model(estimator, path: str | os.PathLike | None) -> Path | bytes:
    """Write a fitted estimator to ``path`` (see the module docstring).

    With ``path=None`` the file content is returned as bytes instead (what
    :mod:`hyperspy_mlspec.engine.remote` ships to dask workers).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from hyperspy_mlspec import AutoencoderDecomposition, load_model
    >>> X = np.random.default_rng(0).poisson(5, (100, 16)).astype(float)
    >>> ae = AutoencoderDecomposition(2, epochs=2, show_progressbar=False).fit(X)
    >>> path = os.path.join(tempfile.mkdtemp(), "ae.mlspec")
    >>> _ = save_model(ae, path)
    >>> load_model(path).components_.shape
    (2, 16)
    """
    from importlib.metadata import PackageNotFoundError, version

    import sklearn
    from safetensors.torch import save, save_file

    from hyperspy_mlspec._version import __version__

    if not hasattr(estimator, "module_"):
        raise ValueError("only fitted estimators can be saved: call fit first")
    name = type(estimator).__name__
    if _REGISTRY.get(name) is not type(estimator):
        raise TypeError(f"cannot save {name}: not a hyperspy_mlspec estimator")
    tensors = {f"module.{k}": v.detach().cpu().contiguous()
               for k, v in estimator.module_.state_dict().items()}
    for key, array in estimator._fitted_arrays().items():
        tensors[f"array.{key}"] = torch.as_tensor(np.ascontiguousarray(array))
    config = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "estimator": name,
        "params": _jsonable_params(estimator), "fitted": estimator._fitted_config(),
        "versions": {"hyperspy_mlspec": __version__, "torch": torch.__version__,
                     "hyperspy": _version_of("hyperspy", version, PackageNotFoundError),
                     "scikit-learn": sklearn.__version__,
                     "numpy": np.__version__},
    }
    config_json = json.dumps(config, default=float)
    metadata = {"config": config_json, "sha256": _checksum(config_json, tensors)}
    if path is None:
        return save(tensors, metadata=metadata)
    path = Path(path)
    save_file(tensors, str(path), metadata=metadata)
    return path


def load_model(path: str | os.PathLike):
    """Load an estimator saved with ``model.save(path)``; no code from the file is run.

    Parameters
    ----------
    path
        A ``.mlspec`` file.

    Returns
    -------
    estimator
        The fitted estimator, on ``device="auto"``.

    Raises
    ------
    ValueError
        If the file is truncated, not a model file, edited after saving, or its weights do
        not fit the recorded architecture.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except Exception as exc:
        raise ValueError(f"{path} is not a readable hyperspy_mlspec model file (truncated or "
                         f"another format): {exc}") from None
    return _from_parts(meta, tensors, str(path))


def model_from_bytes(data: bytes, where: str = "model bytes"):
    """Load an estimator from the bytes of a model file (``save_model(est, None)``).

    Same checks as :func:`load_model`; used on dask workers, where the model arrives as
    weights plus JSON config, never as a pickled object.

    Examples
    --------
    >>> import numpy as np
    >>> from hyperspy_mlspec import AutoencoderDecomposition
    >>> X = np.random.default_rng(0).poisson(5, (100, 16)).astype(float)
    >>> ae = AutoencoderDecomposition(2, epochs=2, show_progressbar=False).fit(X)
    >>> model_from_bytes(save_model(ae, None)).n_components
    2
    """
    import struct

    from safetensors.torch import load

    try:
        n_header = struct.unpack("<Q", data[:8])[0]
        meta = json.loads(data[8:8 + n_header]).get("__metadata__") or {}
        tensors = load(bytes(data))
    except Exception as exc:
        raise ValueError(f"{where} are not a readable hyperspy_mlspec model file: "
                         f"{exc}") from None
    return _from_parts(meta, tensors, where)


def _from_parts(meta: dict, tensors: dict, path: str):
    """Check and rebuild an estimator from a model file's header metadata and tensors."""
    if "config" not in meta:
        raise ValueError(f"{path} is a safetensors file but not a hyperspy_mlspec model "
                         "(no config in its header)")
    config_json = meta["config"]
    if meta.get("sha256") != _checksum(config_json, tensors):
        raise ValueError(f"{path} failed its integrity check: the file was modified or "
                         "damaged after it was saved. Re-save the model from its source.")
    config = json.loads(config_json)
    if config.get("format") != FORMAT or config.get("format_version", 99) > FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported model format {config.get('format')!r} "
                         f"version {config.get('format_version')!r}; upgrade hyperspy_mlspec")
    classes = _REGISTRY
    if config.get("estimator") not in classes:
        raise ValueError(f"{path}: unknown estimator {config.get('estimator')!r}")
    cls = classes[config["estimator"]]
    params = {k: (tuple(v) if isinstance(v, list) else v) for k, v in config["params"].items()}
    estimator = cls(**params)
    weights = {k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")}
    arrays = {k[len("array."):]: v.numpy() for k, v in tensors.items() if k.startswith("array.")}
    try:
        estimator._restore(config["fitted"], arrays, weights)
    except (RuntimeError, KeyError) as exc:
        raise ValueError(f"{path}: the weights do not match the recorded architecture "
                         f"({exc})") from None
    return estimator
