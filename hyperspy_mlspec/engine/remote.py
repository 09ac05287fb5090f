"""Fitted models travel to dask workers as weights, never as pickled objects.

Lazy inference builds a dask graph whose tasks call a :class:`RowFunction`: the name of an
inference method of the estimator (e.g. ``"_encode_tensor"``) plus a :class:`ModelPayload`,
the bytes of the model file (safetensors weights + JSON config, see
:mod:`hyperspy_mlspec.persistence`). Pickling a payload ships only those bytes; each worker
process rebuilds the estimator once, from a cache keyed by the SHA-256 checksum of weights
and config recorded in the file, and reuses it for every block. No torch module, estimator
object or HyperSpy signal is ever in the graph, so the same graph runs on the local threaded
scheduler, on worker processes and on a ``dask.distributed`` cluster. The payload is a
snapshot: training the estimator further after building a lazy result does not change that
result.
"""

from __future__ import annotations

import functools
import hashlib
import json
import struct
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

_CACHE: OrderedDict[str, Any] = OrderedDict()
_CACHE_SIZE = 8  # models kept per process (inference models are small)
_LOCK = threading.Lock()
#: Number of estimators rebuilt from bytes in this process (tests check "once per process").
n_builds = 0


class ModelPayload:
    """The bytes of a model file, rebuilt into an estimator once per process.

    Parameters
    ----------
    data
        Content of a model file, as written by ``save_model(estimator, None)``.

    Examples
    --------
    >>> import pickle, numpy as np
    >>> from hyperspy_mlspec import AutoencoderDecomposition
    >>> X = np.random.default_rng(0).poisson(5, (64, 16)).astype(float)
    >>> ae = AutoencoderDecomposition(2, epochs=2, show_progressbar=False).fit(X)
    >>> payload = ModelPayload.from_estimator(ae)
    >>> pickle.loads(pickle.dumps(payload)).estimator().n_components
    2
    """

    __slots__ = ("data", "key")

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        self.key = _content_key(self.data)

    @classmethod
    def from_estimator(cls, estimator) -> ModelPayload:
        """Snapshot a fitted estimator (weights + config, no pickle)."""
        from hyperspy_mlspec.persistence import save_model

        return cls(save_model(estimator, None))

    def __reduce__(self):
        # only the file bytes travel; the key is recomputed on arrival
        return (ModelPayload, (self.data,))

    def __dask_tokenize__(self):
        return ("hyperspy_mlspec.ModelPayload", self.key)

    def __repr__(self) -> str:
        return f"ModelPayload(sha256={self.key[:12]}..., {len(self.data)} bytes)"

    def estimator(self):
        """The estimator rebuilt from the bytes (cached per process, thread-safe)."""
        global n_builds
        with _LOCK:
            est = _CACHE.get(self.key)
            if est is not None:
                _CACHE.move_to_end(self.key)
                return est
            from hyperspy_mlspec.persistence import model_from_bytes

            est = model_from_bytes(self.data, where="model weights sent to this worker")
            n_builds += 1
            _CACHE[self.key] = est
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
            return est


def _content_key(data: bytes) -> str:
    """The SHA-256 of config and tensors recorded in a model file's header (the file bytes
    themselves are not canonical: the header's metadata order may vary between saves)."""
    try:
        n = struct.unpack("<Q", data[:8])[0]
        key = json.loads(data[8:8 + n])["__metadata__"]["sha256"]
        if isinstance(key, str) and len(key) == 64:
            return key
    except (struct.error, ValueError, KeyError, TypeError):
        pass
    return hashlib.sha256(data).hexdigest()


class RowFunction:
    """Block function for ``dask.array.map_blocks``: apply a named inference method.

    Parameters
    ----------
    payload
        The model.
    method
        Name of an estimator method mapping a float32 tensor of rows to a tensor of rows
        (``"_encode_tensor"``, ``"_reconstruct_tensor"``, ``"_denoise_tensor"``...).
    n_out
        Width of the output rows.
    **kwargs
        Keyword arguments of that method (plain values: they are pickled with the task).
    """

    __slots__ = ("payload", "method", "n_out", "kwargs")

    def __init__(self, payload: ModelPayload, method: str, n_out: int, **kwargs: Any) -> None:
        self.payload = payload
        self.method = str(method)
        self.n_out = int(n_out)
        self.kwargs = kwargs

    def __dask_tokenize__(self):
        return ("hyperspy_mlspec.RowFunction", self.payload.key, self.method, self.n_out,
                sorted(self.kwargs.items()))

    def __reduce__(self):
        return (_row_function, (self.payload, self.method, self.n_out, self.kwargs))

    def __call__(self, block: np.ndarray) -> np.ndarray:
        est = self.payload.estimator()
        fn = getattr(est, self.method)
        if self.kwargs:
            fn = functools.partial(fn, **self.kwargs)
        block = np.asarray(block)
        out = est._apply_numpy(block, fn, batch=_lazy_batch(est, block.shape[-1]))
        if out.shape[0] == 0:  # keep the declared width for empty blocks
            return np.empty((0, self.n_out), dtype=np.float32)
        return out


#: values per inference batch of a lazy block: the network's float32 temporaries stay a
#: few MiB per dask worker (a 2048-row batch of 2048 channels made ~3 temporaries of 16 MiB
#: each; 512 rows run as fast on one thread, benchmarks/bench_out_of_core.py --issue14)
LAZY_BATCH_VALUES = 2**20


def _lazy_batch(est, n_channels: int) -> int:
    """Rows per inference batch inside a lazy block: the estimator's own batch, smaller
    for long spectra (at least 128 rows)."""
    import inspect

    default = inspect.signature(est._apply_numpy).parameters["batch"].default
    return int(min(default, max(128, LAZY_BATCH_VALUES // max(1, int(n_channels)))))


def _row_function(payload: ModelPayload, method: str, n_out: int, kwargs: dict) -> RowFunction:
    return RowFunction(payload, method, n_out, **kwargs)


def method_spec(estimator, fn) -> tuple[str, dict]:
    """``(method name, kwargs)`` of an inference function of ``estimator``.

    Accepts a method name, a bound method of ``estimator`` or a ``functools.partial`` of one;
    anything else (a lambda or closure would carry the torch module into the dask graph) is
    refused with a TypeError.
    """
    if isinstance(fn, str):
        return fn, {}
    kwargs: dict = {}
    if isinstance(fn, functools.partial):
        if fn.args:
            raise TypeError("inference functions take keyword arguments only")
        kwargs = dict(fn.keywords)
        fn = fn.func
    owner = getattr(fn, "__self__", None)
    if owner is estimator and hasattr(type(estimator), fn.__name__):
        return fn.__name__, kwargs
    raise TypeError(
        f"lazy inference needs a method of the estimator (by name, bound, or a "
        f"functools.partial of one), got {fn!r}: closures would put the model object in the "
        "dask graph instead of its weights. Add a method such as '_my_tensor(x)' and pass it.")
