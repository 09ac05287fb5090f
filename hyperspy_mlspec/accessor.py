"""The ``s.mlspec`` namespace on every HyperSpy signal (like an xarray accessor).

Thin glue only: each method turns the signal into rows with :mod:`hyperspy_mlspec.signal_io`,
calls an estimator, and builds HyperSpy signals from the results. The namespace is created
anew at each attribute access, so ``s.copy().mlspec`` is bound to the copy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hyperspy_mlspec import signal_io as sio


class _Prefitted:
    """Hands an already fitted estimator to HyperSpy's ``decomposition``: fitting is a
    no-op, so HyperSpy only projects (block by block for lazy signals) and stores results.
    Deliberately without ``mean_`` (HyperSpy would add it to the data)."""

    def __init__(self, estimator) -> None:
        self.estimator = estimator
        self.components_ = estimator.components_
        self.explained_variance_ = estimator.explained_variance_

    def fit(self, X, y=None):
        return self

    def partial_fit(self, X, y=None):
        return self

    def transform(self, X):
        return self.estimator.transform(X)

    def fit_transform(self, X, y=None):
        return self.estimator.transform(X)


class MLSpecNamespace:
    """Machine-learning methods for a spectrum image: ``s.mlspec.<method>``.

    Parameters
    ----------
    signal
        The HyperSpy signal the methods act on (never modified, except
        ``learning_results`` by :meth:`decomposition`, as HyperSpy's own method does).

    Examples
    --------
    >>> import hyperspy_mlspec
    >>> s = hyperspy_mlspec.data.eels_map((8, 8), n_channels=128)
    >>> ae = s.mlspec.decomposition(n_components=3, epochs=3, show_progressbar=False)
    >>> s.learning_results.factors.shape
    (128, 3)
    """

    def __init__(self, signal) -> None:
        self._signal = signal

    def __repr__(self) -> str:
        return f"<MLSpecNamespace of {self._signal!r}>"

    # -- decomposition ----------------------------------------------------------------------
    def decomposition(self, n_components: int = 4, *, navigation_mask=None, signal_mask=None,
                      signal_range=None, show_progressbar: bool | None = None,
                      print_info: bool = False, **estimator_params: Any):
        """Autoencoder decomposition, stored in ``s.learning_results`` like HyperSpy's own.

        Fits :class:`~hyperspy_mlspec.AutoencoderDecomposition` (streaming lazy data chunk by
        chunk), then lets HyperSpy store loadings, factors and explained variance, so
        ``plot_decomposition_results``, ``get_decomposition_model`` (exact with
        ``decoder="linear"``), BSS and ``cluster_analysis`` work as usual.

        Parameters
        ----------
        n_components
            Latent dimensions.
        navigation_mask
            Boolean array (array order) or signal; True excludes a pixel from fitting.
        signal_mask
            Boolean array over channels; True excludes a channel.
        signal_range
            ``(start, end)`` in axis units, or strings/pint quantities such as ``"0.6 keV"``.
        show_progressbar
            None follows ``hs.preferences.General.show_progressbar``.
        print_info
            Passed to HyperSpy's ``decomposition``.
        **estimator_params
            Any :class:`~hyperspy_mlspec.AutoencoderDecomposition` parameter.

        Returns
        -------
        AutoencoderDecomposition
            The fitted estimator (also in ``s.learning_results.decomposition_algorithm``).
        """
        from hyperspy_mlspec.estimators import AutoencoderDecomposition

        s = self._signal
        if s.axes_manager.navigation_dimension == 0:
            raise ValueError("decomposition needs several spectra; this signal holds one.")
        est = AutoencoderDecomposition(n_components=n_components,
                                       show_progressbar=show_progressbar, **estimator_params)
        t = sio.table(s, navigation_mask, signal_mask, signal_range)
        est.fit(t.rows)
        est.signal_axis_ = t.axis.to_dict()
        hs_signal_mask = None
        if t.channels is not None:
            hs_signal_mask = np.ones(s.axes_manager.signal_axes[0].size, dtype=bool)
            hs_signal_mask[t.channels] = False
        hs_nav_mask = None
        if t.nav_index is not None:
            flat = np.ones(t.n_nav, dtype=bool)
            flat[t.nav_index] = False
            hs_nav_mask = s._get_navigation_signal(data=flat.reshape(t.nav_shape))
        s.decomposition(algorithm=_Prefitted(est), navigation_mask=hs_nav_mask,
                        signal_mask=hs_signal_mask, print_info=print_info)
        s.learning_results.decomposition_algorithm = est
        return est

    # -- applying a fitted model ------------------------------------------------------------
    def encode(self, model, *, navigation_mask=None):
        """Latent codes of every pixel as a Signal1D (signal axis ``"latent"``).

        Parameters
        ----------
        model
            A fitted estimator with ``transform`` (e.g. from :meth:`decomposition` or
            :func:`hyperspy_mlspec.load_model`).
        navigation_mask
            True excludes a pixel (its code is NaN).

        Returns
        -------
        hyperspy.signals.Signal1D
            Navigation axes of ``s``; lazy when ``s`` is lazy.
        """
        s = self._signal
        t = sio.table_for_model(s, model, navigation_mask)
        codes = t.scatter(model.transform(t.rows))
        out = sio.vector_signal(s, codes, f"Latent codes of {s.metadata.General.title}",
                                "latent")
        sio.record(out, "encode", model=type(model).__name__)
        return out

    def reconstruct(self, model, *, navigation_mask=None):
        """Exact (nonlinear) reconstruction of every spectrum by ``model``.

        Returns
        -------
        BaseSignal
            Same class, axes and metadata as ``s`` (on the model's channels when they
            differ); lazy when ``s`` is lazy; excluded pixels are NaN.
        """
        s = self._signal
        t = sio.table_for_model(s, model, navigation_mask)
        data = t.scatter(model.reconstruct(t.rows))
        out = sio.signal_like(s, data, f"{s.metadata.General.title} (autoencoder "
                              "reconstruction)", axis=t.axis)
        sio.record(out, "reconstruct", model=type(model).__name__,
                   n_components=getattr(model, "n_components", None))
        return out


def _namespace(self) -> MLSpecNamespace:
    return MLSpecNamespace(self)


def register() -> None:
    """Attach ``mlspec`` to :class:`hyperspy.signal.BaseSignal` (idempotent, not cached)."""
    from hyperspy.signal import BaseSignal

    if not isinstance(getattr(BaseSignal, "mlspec", None), property):
        BaseSignal.mlspec = property(_namespace, doc="Machine-learning methods "
                                     "(hyperspy_mlspec): see :class:`MLSpecNamespace`.")
