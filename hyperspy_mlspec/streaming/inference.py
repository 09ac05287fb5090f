"""Model inference for the stream, on arrays (no HyperSpy), and thread settings.

:func:`infer` gives a batch's latent codes and reconstruction in one pass: the package's
autoencoders through their fused ``_encode_decode_tensor`` (normalisation folded into the
network, one encode and one decode under ``torch.inference_mode``), denoisers through
``_denoise_tensor``, any other model through its ``transform``/``inverse_transform`` or
``reconstruct``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

Reconstruct = Callable[[object, np.ndarray], np.ndarray]


def torch_threads() -> int:
    """torch's intra-op threads now."""
    import torch

    return int(torch.get_num_threads())


def forward_flops(model, n_rows: int) -> float:
    """Floating-point operations of a forward pass of ``n_rows`` through a torch model
    (2 x the weights of its matrices x rows: dense layers); inf for other models.

    Examples
    --------
    >>> import torch
    >>> class M:
    ...     module_ = torch.nn.Linear(100, 10)
    >>> forward_flops(M(), 8)
    16000.0
    """
    module = getattr(model, "module_", None)
    if module is None or not hasattr(module, "parameters"):
        return float("inf")
    weights = sum(p.numel() for p in module.parameters() if p.dim() >= 2)
    return 2.0 * weights * int(n_rows)


_BLAS = None


def blas_controller():
    """threadpoolctl controller of the BLAS libraries of numpy and scipy (created once,
    after scipy's BLAS is loaded, so both are seen)."""
    global _BLAS
    if _BLAS is None:
        import scipy.linalg.blas  # noqa: F401  (load scipy's own OpenBLAS first)
        from threadpoolctl import ThreadpoolController

        # BLAS libraries only: a limiter's restore sets every library it holds, and an
        # OpenMP one (torch's libgomp) restored from another thread left the stream's
        # thread on 1 torch thread while MKL ran on 2 (measured: 8k instead of 14k/s)
        _BLAS = ThreadpoolController().select(user_api="blas")
    return _BLAS


class _BlasLimit:
    """Process-wide BLAS thread limit shared by concurrent users (the stream's thread and
    the PCA workers): the first to enter saves the libraries' settings, the last to leave
    restores them, so overlapping limits never leave a setting behind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._original = None

    def enter(self, n: int) -> None:
        with self._lock:
            controller = blas_controller()
            if self._depth == 0:
                self._original = controller.limit(limits=int(n))
            elif int(n) != self._current:
                controller.limit(limits=int(n))
            self._current = int(n)
            self._depth += 1

    def exit(self) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                self._original.restore_original_limits()
                self._original = None


BLAS_LIMIT = _BlasLimit()


class threads:
    """Set torch's intra-op threads and the BLAS threads for a block, then restore them
    (None: unchanged). On a machine shared with other jobs, fewer threads than cores can
    be much faster: idle OpenMP/OpenBLAS threads spin while waiting for descheduled ones
    (measured 40x slower small BLAS calls with 2 threads at load 8 on 2 cores).

    torch's setting is per thread (a worker thread setting it does not change the
    caller's); the BLAS setting is process-wide, shared by overlapping blocks of several
    threads (the last one to leave restores it).

    Parameters
    ----------
    n
        torch threads (and BLAS threads unless ``blas`` is given); None: unchanged.
    blas
        BLAS threads; None: as ``n``.

    Examples
    --------
    >>> with threads(1):
    ...     torch_threads()
    1
    """

    def __init__(self, n: int | None, blas: int | None = None) -> None:
        self.n = n
        self.n_blas = n if blas is None else blas

    def __enter__(self) -> None:
        from hyperspy_mlspec.engine.trainer import torch_threads as torch_block

        self._torch = torch_block(self.n)
        self._torch.__enter__()
        if self.n_blas is not None:
            BLAS_LIMIT.enter(self.n_blas)

    def __exit__(self, *exc) -> None:
        if self.n_blas is not None:
            BLAS_LIMIT.exit()
        self._torch.__exit__(None, None, None)


def infer(model, x: np.ndarray, batch_size: int,
          reconstruct: Reconstruct | None = None) -> tuple[np.ndarray | None, np.ndarray]:
    """Latent codes (None for models without) and reconstruction of float32 rows.

    ``reconstruct(model, x)`` is used for models that are not the package's (e.g.
    :func:`hyperspy_mlspec.scoring.scores.reconstruct`); None: ``model.reconstruct`` or
    ``inverse_transform(transform(x))``.

    Examples
    --------
    >>> from sklearn.decomposition import PCA
    >>> X = np.random.default_rng(0).random((20, 5)).astype("float32")
    >>> codes, recon = infer(PCA(2).fit(X), X, 8)
    >>> codes.shape, recon.shape
    ((20, 2), (20, 5))
    """
    import torch

    n = x.shape[0]
    if hasattr(model, "_encode_decode_tensor") or hasattr(model, "_denoise_tensor"):
        paired = hasattr(model, "_encode_decode_tensor")
        codes = None
        recon = np.empty((n, getattr(model, "n_features_in_", x.shape[1])), np.float32)
        with torch.inference_mode():
            for i in range(0, n, batch_size):
                xt = torch.from_numpy(x[i:i + batch_size]).to(model.device_)
                if paired:
                    z, r = model._encode_decode_tensor(xt)
                    if codes is None:
                        codes = np.empty((n, z.shape[1]), np.float32)
                    codes[i:i + len(xt)] = z.cpu().numpy()
                else:
                    r = model._denoise_tensor(xt)
                recon[i:i + len(xt)] = r.cpu().numpy()
        return codes, recon
    if reconstruct is not None:
        recon = np.asarray(reconstruct(model, x))
    elif hasattr(model, "reconstruct"):
        recon = np.asarray(model.reconstruct(x))
    else:
        recon = np.asarray(model.inverse_transform(model.transform(x)))
    codes = (np.asarray(model.transform(x)) if hasattr(model, "inverse_transform")
             else None)
    return codes, recon
