"""The ``s.mlspec`` namespace on every HyperSpy signal (like an xarray accessor).

Thin glue only: each method turns the signal into rows with :mod:`hyperspy_mlspec.signals`,
calls an estimator, and builds HyperSpy signals from the results. The namespace is created
anew at each attribute access, so ``s.copy().mlspec`` is bound to the copy.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from hyperspy_mlspec import signals as sio
from hyperspy_mlspec._docs import N_COMPONENTS, fill


class _Prefitted:
    """Hands an already fitted estimator to HyperSpy's ``decomposition``: fitting is a
    no-op, so HyperSpy only projects (block by block for lazy signals) and stores results.
    Deliberately without ``mean_`` (HyperSpy would add it to the data)."""

    def __init__(self, estimator) -> None:
        self.estimator = estimator
        self.components_ = estimator.components_
        self.explained_variance_ = estimator.explained_variance_
        self._codes: dict[bytes, np.ndarray] = {}

    def fit(self, X, y=None):
        return self

    def partial_fit(self, X, y=None):
        return self

    def transform(self, X):
        # HyperSpy 2.5's lazy decomposition projects every block twice for estimators
        # with partial_fit (once for the loadings, once more as the default "reproject"):
        # the codes of a block already seen are reused (keyed by a digest of its bytes),
        # which saves a whole inference pass over the data
        X = np.asarray(X)
        key = hashlib.blake2b(np.ascontiguousarray(X).view(np.uint8), digest_size=16,
                              person=str(X.shape).encode()[:16]).digest()
        codes = self._codes.get(key)
        if codes is None:
            codes = self._codes[key] = self.estimator.transform(X)
        return codes.copy()

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
    @fill
    def decomposition(self, n_components: int = N_COMPONENTS, *, navigation_mask=None,
                      signal_mask=None, signal_range=None, align=False,
                      return_shift: bool = False, show_progressbar: bool | None = None,
                      print_info: bool = False, **estimator_params: Any):
        """Autoencoder decomposition, stored in ``s.learning_results`` like HyperSpy's own.

        Fits :class:`~hyperspy_mlspec.AutoencoderDecomposition` (streaming lazy data chunk by
        chunk), then lets HyperSpy store loadings, factors and explained variance, so
        ``plot_decomposition_results``, ``get_decomposition_model`` (exact with
        ``decoder="linear"``), BSS and ``cluster_analysis`` work as usual.

        With ``align``, the energy drift is removed first: the components then describe
        the chemistry instead of spending components on copies of the edges moved by a
        few channels (a map with a drift of 2 channels: 12 % lower error at 6 components).
        ``s.learning_results`` (and ``get_decomposition_model``) then describe the
        *aligned* spectra; ``return_shift=True`` gives the shift, and
        ``s.get_decomposition_model(k).shift1D(shift.data, crop=False)`` moves the model
        back onto the spectra as measured (``s.mlspec.reconstruct(ae, align=shift)`` is
        the exact reconstruction, as measured). The model is fitted on the map aligned by whole
        channels (counts stay counts) and the loadings come from the map aligned to the
        sub-channel. ``s`` itself is never moved.

        Parameters
        ----------
        n_components
            Latent dimensions.
        %NAVIGATION_MASK_FIT%
        %SIGNAL_MASK%
        %SIGNAL_RANGE%
        align
            False (default: ``learning_results`` describe the spectra as measured),
            ``"auto"`` (estimate the drift with :meth:`estimate_shift` and remove it when
            it is significant: a spread of at least 0.2 channel and three times its
            uncertainty), True (always remove the estimate) or a known shift map (one
            value per pixel in the units of the signal axis, e.g. the zero-loss peak
            centres of a dual-EELS acquisition; see :meth:`denoise`). Needs a uniform
            signal axis and a signal in memory (``"auto"`` leaves lazy signals as they
            are). The shift is estimated on ``signal_range``.
        return_shift
            Also return the shift removed (navigation image in the units of the signal
            axis; zeros when none was).
        %SHOW_PROGRESSBAR%
        print_info
            Passed to HyperSpy's ``decomposition``.
        **estimator_params
            Any :class:`~hyperspy_mlspec.AutoencoderDecomposition` parameter.

        Returns
        -------
        AutoencoderDecomposition or tuple
            The fitted estimator (also in ``s.learning_results.decomposition_algorithm``),
            and the shift map with ``return_shift=True``.

        Examples
        --------
        >>> import hyperspy_mlspec
        >>> s = hyperspy_mlspec.data.eels_map((16, 16), n_channels=256, dose=50, drift=2.0)
        >>> ae, shift = s.mlspec.decomposition(3, align=True, return_shift=True,
        ...                                    epochs=3, show_progressbar=False)
        >>> model = s.get_decomposition_model(3)  # the aligned spectra
        >>> model.shift1D(shift.data, crop=False, show_progressbar=False)  # as measured
        """
        from hyperspy_mlspec.estimators import AutoencoderDecomposition

        s = self._signal
        if s.axes_manager.navigation_size < 2:
            raise ValueError("decomposition needs several spectra; this signal holds one. "
                             "Decompose a line or a map (or stack spectra with hs.stack).")
        from hyperspy_mlspec.denoise import alignment_shift, shift_signal

        est = AutoencoderDecomposition(n_components=n_components,
                                       show_progressbar=show_progressbar, **estimator_params)
        shift, estimate = alignment_shift(s, align, navigation_mask=navigation_mask,
                                          signal_range=signal_range)
        work = s
        if shift is None:
            t = sio.fit_on_signal(est, s, navigation_mask=navigation_mask,
                                  signal_mask=signal_mask, signal_range=signal_range)
        else:
            from hyperspy_mlspec.spatial import shift_spectra

            # one aligned copy at a time: fitted on whole channels, projected sub-channel
            X = np.asarray(s.data, dtype=np.float32)
            t = sio.fit_on_signal(est, s._deepcopy_with_new_data(
                shift_spectra(X, -np.rint(shift))), navigation_mask=navigation_mask,
                signal_mask=signal_mask, signal_range=signal_range)
            work = s._deepcopy_with_new_data(shift_spectra(X, -shift))
            del X
        hs_signal_mask = None
        if t.channels is not None:
            hs_signal_mask = np.ones(s.axes_manager.signal_axes[0].size, dtype=bool)
            hs_signal_mask[t.channels] = False
        hs_nav_mask = None
        if t.nav_index is not None:
            flat = np.ones(t.n_nav, dtype=bool)
            flat[t.nav_index] = False
            hs_nav_mask = s._get_navigation_signal(data=flat.reshape(t.nav_shape)).T
        # HyperSpy's decomposition needs floats and works on the signal's own data (exspy's
        # EDS default normalises it for Poisson noise in place, and back, with rounding):
        # integer counts go through a float32 copy; the Poisson weighting is the
        # estimator's own loss, so HyperSpy's is off for every signal type
        if not np.issubdtype(work.data.dtype, np.floating):
            work = s._deepcopy_with_new_data(s.data.astype(np.float32))
        work.decomposition(algorithm=_Prefitted(est), navigation_mask=hs_nav_mask,
                           signal_mask=hs_signal_mask, print_info=print_info,
                           normalize_poissonian_noise=False)
        if work is not s:
            s.learning_results = work.learning_results
        s.learning_results.decomposition_algorithm = est
        if return_shift:
            return est, shift_signal(s, shift, estimate)
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

    def reconstruct(self, model, *, navigation_mask=None, align=None):
        """Exact (nonlinear) reconstruction of every spectrum by ``model``.

        Parameters
        ----------
        model
            A fitted estimator with ``reconstruct``.
        navigation_mask
            True excludes a pixel (its reconstruction is NaN).
        align
            None, or the shift map of a model fitted with ``decomposition(align=...)``
            (``return_shift=True`` gives it; in the units of the signal axis): each
            spectrum is aligned by it, reconstructed, and moved back, so the result
            describes the spectra as measured. Not for lazy signals.

        Returns
        -------
        BaseSignal
            Same class, axes and metadata as ``s`` (on the model's channels when they
            differ); lazy when ``s`` is lazy; excluded pixels are NaN.

        Examples
        --------
        >>> import hyperspy_mlspec
        >>> s = hyperspy_mlspec.data.eels_map((16, 16), n_channels=256, dose=50, drift=2.0)
        >>> ae, shift = s.mlspec.decomposition(3, align=True, return_shift=True,
        ...                                    epochs=3, show_progressbar=False)
        >>> s.mlspec.reconstruct(ae, align=shift).data.shape
        (16, 16, 256)
        """
        s = self._signal
        t = sio.table_for_model(s, model, navigation_mask)
        if align is None:
            rec = model.reconstruct(t.rows)
        else:
            from hyperspy_mlspec.spatial import shift_spectra

            nav_shape = tuple(t.nav_shape)
            valid = np.zeros(t.n_nav, dtype=bool)
            valid[slice(None) if t.nav_index is None else t.nav_index] = True
            shift = sio.shift_map_channels(align, s, valid.reshape(nav_shape), t.lazy,
                                           int(s.axes_manager.signal_axes[0].size))
            grid = t.axis.uniform()
            if grid is None:
                raise ValueError("align= moves spectra along a uniform energy axis, but the "
                                 "model's axis is not uniform; reconstruct without align.")
            # channels of s -> channels of the model's axis (resampled maps differ)
            shift = shift.ravel() * float(s.axes_manager.signal_axes[0].scale) / grid[1]
            if t.nav_index is not None:
                shift = shift[t.nav_index]
            rows = shift_spectra(np.asarray(t.rows, dtype=np.float32), -shift)
            rec = shift_spectra(np.asarray(model.reconstruct(rows)), shift)
        data = t.scatter(rec)
        out = sio.signal_like(s, data, f"{s.metadata.General.title} (autoencoder "
                              "reconstruction)", axis=t.axis)
        sio.record(out, "reconstruct", model=type(model).__name__,
                   n_components=getattr(model, "n_components", None))
        return out

    # -- denoising --------------------------------------------------------------------------
    @fill
    def denoise(self, model=None, noise: str = "poisson-split", *, spatial="auto",
                align="auto", navigation_mask=None, signal_range=None,
                return_residuals: bool = False, residual_statistics: bool = False,
                return_shift: bool = False, show_progressbar: bool | None = None,
                **estimator_params: Any):
        """Denoise a spectrum image, using each pixel's neighbourhood on maps and line scans.

        Maps and line scans (``spatial="auto"``, the default): a
        :class:`~hyperspy_mlspec.spatial.SpatialDenoiser` describes the spectra by their
        significant principal components plus a few fine-structure components in short
        energy windows, and filters each of them over the map with a blind-spot
        (J-invariant) Gaussian whose width and strength the Noise2Self loss chooses from
        the data, combined with the pixel's own value where neighbours do not predict it
        (edges, rare pixels). The energy drift is estimated first and, when the map has
        one, removed before pooling and restored after (``align``; the model is fitted on
        the map aligned by whole channels, where counts stay Poisson counts). No training, no
        parameter to tune. ``spatial=False`` (and single spectra or grids of fewer than 16
        pixels) fit the per-pixel self-supervised
        :class:`~hyperspy_mlspec.DenoisingAutoencoder` instead. A fitted autoencoder
        (``model``, e.g. trained on a simulation library with ``noise="supervised"``) is
        applied pixel by pixel; with ``spatial=True`` it is applied to the spatially
        denoised spectra.

        Parameters
        ----------
        model
            None (fit on this signal), a fitted ``DenoisingAutoencoder``, or a model file.
            A model trained on another energy axis is applied after resampling this signal
            onto it.
        noise
            Per-pixel autoencoder's noise model when fitting: ``"poisson-split"`` (counts,
            default) or ``"mask"`` (any data; use ``loss="mse"`` for data that are not
            counts). The spatial route finds its own (Poisson counts with any detector
            gain, or Gaussian; force one with ``noise_model="poisson"``/``"gaussian"``).
        spatial
            ``"auto"``: the spatial route on maps and line scans of 16 pixels or more,
            unless a ``model``, another ``noise`` or autoencoder parameters (``epochs``,
            ``architecture``...) are given; True or False. True on a single spectrum
            raises an error.
        align
            ``"auto"`` (estimate the drift and remove it when it is significant: a spread
            of at least 0.2 channel and three times its uncertainty), True (always) or
            False. Needs a uniform signal axis; lazy signals are not aligned under
            ``"auto"`` (True refuses them). Or a **known shift map**: a navigation image
            or array (one value per pixel, in the units of the signal axis) of the
            displacement of each pixel's spectrum, e.g. the zero-loss peak centres of the
            low-loss signal of a dual-EELS acquisition
            (``s_ll.estimate_zero_loss_peak_centre()`` in exspy) or minus HyperSpy's
            ``estimate_shift1D`` (which returns the correction); only differences between
            pixels matter. The spectra are aligned by it before pooling and moved back
            after: a pixel's own jitter, which no estimate can measure at low dose, then
            stays its own.
        navigation_mask
            True excludes a pixel from fitting and denoising (its output is NaN).
        signal_range
            ``(start, end)`` in axis units (numbers, ``"700 eV"``...): fit and denoise only
            these channels (the output has only these channels). Fitting only.
        return_residuals
            Also return the residuals ``s - denoised`` (same axes as the output).
        residual_statistics
            Also return a dict of navigation maps: ``"mean_normalized_residual"``, the mean
            of ``(x - d) / sqrt(d)`` per pixel, and ``"chi2_per_channel"``, the mean of
            ``(x - d)**2 / d``: about 0 and 1 where only noise was removed; structure that
            was discarded shows up as pixels well above 1.
        return_shift
            Also return the energy-shift map (spatial route; zeros when no alignment was
            needed), as :meth:`estimate_shift` returns it.
        %SHOW_PROGRESSBAR%
        **estimator_params
            Parameters of the :class:`~hyperspy_mlspec.spatial.SpatialDenoiser` (spatial
            route) or of the :class:`~hyperspy_mlspec.DenoisingAutoencoder` (fitting,
            per-pixel route).

        Returns
        -------
        BaseSignal or tuple
            The denoised signal (same class, axes and metadata, title ending in
            "(spatially denoised)" or "(DAE denoised)", lazy when ``s`` is lazy), followed
            by the residual signal, the statistics dict and/or the shift map when asked
            for.

        Examples
        --------
        >>> import hyperspy_mlspec
        >>> s = hyperspy_mlspec.data.eels_map((16, 16), n_channels=128, dose=2)
        >>> d, stats = s.mlspec.denoise(residual_statistics=True, show_progressbar=False)
        >>> d.data.shape, stats["chi2_per_channel"].data.shape
        ((16, 16, 128), (16, 16))
        >>> d = s.mlspec.denoise(spatial=False, epochs=5, show_progressbar=False)
        """
        from hyperspy_mlspec.denoise import denoise_signal

        return denoise_signal(self._signal, model, noise, spatial=spatial, align=align,
                              navigation_mask=navigation_mask, signal_range=signal_range,
                              return_residuals=return_residuals,
                              residual_statistics=residual_statistics,
                              return_shift=return_shift, show_progressbar=show_progressbar,
                              **estimator_params)

    def estimate_shift(self, *, navigation_mask=None, signal_range=None,
                       return_uncertainty: bool = False):
        """Per-pixel energy drift of a map or line scan, as a navigation-shaped signal.

        Every pixel's spectrum, high-passed along energy (edges carry the shift, not the
        background), is fitted by a few components of the aligned map plus the energy
        derivative of that fit; the per-pixel estimates are averaged over neighbours in
        space or along the acquisition order, with the kind and width of the averaging
        chosen by the Noise2Self loss, and combined with each pixel's own estimate by its
        precision (see :func:`hyperspy_mlspec.spatial.estimate_shift`). The map's mean
        shift is 0. Used by ``denoise(align=...)``.

        Parameters
        ----------
        navigation_mask
            True excludes a pixel (its shift is NaN).
        signal_range
            ``(start, end)`` in axis units: estimate on these channels only (e.g. around
            the edges that do not change with chemistry).
        return_uncertainty
            Also return the standard error of the shift, same axes.

        Returns
        -------
        BaseSignal or tuple
            Shift in the signal axis' units (``metadata.Signal.quantity``), navigation
            axes of ``s`` (Signal2D for a map, Signal1D for a line scan). A pixel's
            spectrum is the map's common spectrum moved by this amount.

        Examples
        --------
        >>> import hyperspy_mlspec
        >>> s = hyperspy_mlspec.data.eels_map((16, 16), n_channels=256, dose=20, drift=1.0)
        >>> s.mlspec.estimate_shift().axes_manager.navigation_shape
        ()
        """
        from hyperspy_mlspec.denoise import estimate_shift_signal

        return estimate_shift_signal(self._signal, navigation_mask=navigation_mask,
                                     signal_range=signal_range,
                                     return_uncertainty=return_uncertainty)

    # -- anomalies, latent phase maps -------------------------------------------------------
    def anomaly_map(self, model=None, metric: str = "auto", *, method: str = "auto",
                    navigation_mask=None, window: tuple[int, int] | None = None,
                    footprints=None, return_scales: bool = False,
                    n_components: int = N_COMPONENTS,
                    robust: float = 0.05, smoothing: float = 0.0,
                    show_progressbar: bool | None = None, return_model: bool = False,
                    **estimator_params: Any):
        """Per-pixel anomaly score: what the pixel's surroundings (or a model) do not
        explain.

        By default (maps and line scans) each pixel's expected spectrum is fitted on the
        ring of pixels around it, never on itself (``window=(guard, outer)`` radii), and
        the residual is scored at several energy scales and spatial footprints (the pixel
        alone, its 3x3 neighbourhood): a robust z-score, about standard normal where
        nothing is unusual. ``return_scales=True`` also returns the per-footprint maps.
        With a ``model`` the score is its per-pixel reconstruction error (Poisson deviance
        per channel for counts, MSE otherwise); ``method="autoencoder"`` fits a small
        trimmed autoencoder on the map for that. See
        :func:`hyperspy_mlspec.workflows.anomaly.anomaly_map` for all parameters.

        Returns
        -------
        Signal2D, Signal1D or float
            Navigation-shaped score (NaN where excluded or non-finite), a float for a single
            spectrum scored by a model; followed by the per-footprint maps
            (``return_scales``) and the model (``return_model``).

        Examples
        --------
        >>> import hyperspy_mlspec
        >>> s = hyperspy_mlspec.data.eds_map((16, 16), n_channels=128, rare_phase=True)
        >>> score = s.mlspec.anomaly_map(show_progressbar=False)
        >>> s.plot(navigator=score)  # doctest: +SKIP
        """
        from hyperspy_mlspec.workflows.anomaly import anomaly_map

        return anomaly_map(self._signal, model, metric, method=method,
                           navigation_mask=navigation_mask, window=window,
                           footprints=footprints, return_scales=return_scales,
                           n_components=n_components, robust=robust, smoothing=smoothing,
                           show_progressbar=show_progressbar, return_model=return_model,
                           **estimator_params)

    def anomalies(self, anomaly_map=None, *, threshold: str = "mad", k: float = 5.0,
                  q: float = 0.99, alpha: float = 1e-3, min_size: int = 1, model=None,
                  **map_params: Any):
        """Anomalous pixels, their connected regions and the regions' mean spectra.

        Thresholds: ``"mad"`` (median + ``k`` robust standard deviations), ``"quantile"``
        (``q``) or ``"pvalue"`` (normal tail of the z-score, or chi-squared test of the
        Poisson deviance of a model, at ``alpha``).
        See :func:`hyperspy_mlspec.workflows.anomaly.anomalies`.

        Returns
        -------
        AnomalyResult
            ``score``, ``mask``, ``threshold``, ``labels``, ``regions`` (each with size,
            calibrated centroid, ``mean_spectrum`` and ``mean_residual``) and ``model``.

        Examples
        --------
        >>> import hyperspy_mlspec
        >>> s = hyperspy_mlspec.data.eds_map((24, 24), n_channels=128, rare_phase=True,
        ...                                  rare_fraction=0.01)
        >>> found = s.mlspec.anomalies(show_progressbar=False)
        >>> found.regions[0].mean_spectrum.plot()  # doctest: +SKIP
        """
        from hyperspy_mlspec.workflows.anomaly import anomalies

        return anomalies(self._signal, anomaly_map, threshold=threshold, k=k, q=q,
                         alpha=alpha, min_size=min_size, model=model, **map_params)

    def cluster(self, model=None, n_clusters: int = 4, method: str = "kmeans", *,
                normalize: str = "shape", spatial: bool | str = "auto",
                align: Any = "auto", radius: int | None = None, navigation_mask=None,
                n_components: int | None = None, random_state: int | None = 0,
                show_progressbar: bool | None = None, **estimator_params: Any):
        """Phase map: cluster the pixels by chemistry, labels smoothed over neighbours.

        With no model (the default, nothing to train) the map's own phase codes: energy
        drift undone, spectra normalised and Poisson-whitened, pooled over neighbours,
        thickness regressed out while clustering; labels then smoothed by a Potts model
        (``spatial="auto"``) whose coupling comes from the data. With a fitted encoder (or
        estimator parameters such as ``epochs=``, which fit an autoencoder) its latent
        codes are clustered instead (direction only by default), then smoothed the same way.

        HyperSpy's own clustering takes an encoder's codes:
        ``s.cluster_analysis(cluster_source=s.mlspec.encode(model), source_for_centers=s,
        preprocessing="norm", n_clusters=3)``.
        See :func:`hyperspy_mlspec.workflows.latent.cluster`.

        Returns
        -------
        ClusterResult
            ``labels`` (navigation signal, -1 excluded), ``centers`` (cluster-mean spectra,
            navigation axis ``"cluster"``), ``codes``, ``sizes``, ``model``, ``shift``
            (energy-shift map or None), ``beta`` (Potts coupling), ``radius``.

        Examples
        --------
        >>> import hyperspy_mlspec
        >>> s = hyperspy_mlspec.data.eels_map((16, 16), n_channels=128, dose=20)
        >>> phases = s.mlspec.cluster(n_clusters=3, show_progressbar=False)
        >>> phases.labels.data.shape
        (16, 16)
        >>> phases.centers.plot()  # doctest: +SKIP
        """
        from hyperspy_mlspec.workflows.latent import cluster

        return cluster(self._signal, model, n_clusters, method, normalize=normalize,
                       spatial=spatial, align=align, radius=radius,
                       navigation_mask=navigation_mask, n_components=n_components,
                       random_state=random_state, show_progressbar=show_progressbar,
                       **estimator_params)

    def embedding_2d(self, model=None, method: str = "pca", color_by=None, *,
                     normalize: str = "shape", navigation_mask=None,
                     n_components: int = N_COMPONENTS,
                     random_state: int | None = 0, show_progressbar: bool | None = None,
                     **estimator_params: Any):
        """2-D embedding (PCA, or UMAP with ``umap-learn``) of the latent codes.

        ``color_by`` (a :class:`~hyperspy_mlspec.ClusterResult` or labels) draws a
        scatter plot right away; :func:`hyperspy_mlspec.plot_embedding` draws one
        later. See :func:`hyperspy_mlspec.workflows.latent.embedding_2d`.

        Returns
        -------
        hyperspy.signals.Signal1D
            Navigation axes of the signal, signal axis ``"embedding"`` of size 2.

        Examples
        --------
        >>> import hyperspy_mlspec
        >>> s = hyperspy_mlspec.data.eds_map((16, 16), n_channels=128)
        >>> emb = s.mlspec.embedding_2d(epochs=5, show_progressbar=False)
        >>> emb.data.shape
        (16, 16, 2)
        """
        from hyperspy_mlspec.workflows.latent import embedding_2d

        return embedding_2d(self._signal, model, method, color_by, normalize=normalize,
                            navigation_mask=navigation_mask, n_components=n_components,
                            random_state=random_state, show_progressbar=show_progressbar,
                            **estimator_params)


    # -- masked autoencoder: embeddings and few-label heads ----------------------------------
    def embed(self, model, *, navigation_mask=None):
        """Embedding of every pixel by a pretrained
        :class:`~hyperspy_mlspec.MaskedAutoencoder` (or its ``.mlspec`` file).

        The spectra are resampled and normalised as in pretraining. The embedding signal
        feeds HyperSpy's tools (``s.cluster_analysis(cluster_source=emb, ...)``) and
        :meth:`cluster` / :meth:`embedding_2d` take the model directly
        (``s.mlspec.cluster(mae, normalize="standard")``).

        Parameters
        ----------
        model
            A fitted ``MaskedAutoencoder`` or the path of a saved one.
        navigation_mask
            True excludes a pixel (its embedding is NaN).

        Returns
        -------
        hyperspy.signals.Signal1D
            Navigation axes of ``s``, signal axis ``"embedding"``; lazy when ``s`` is lazy.

        Examples
        --------
        >>> emb = s.mlspec.embed("mae.mlspec")  # doctest: +SKIP
        """
        return _model(model).embed(self._signal, navigation_mask=navigation_mask)

    def predict(self, model, *, navigation_mask=None, proba: bool = False,
                graph: bool | str = "auto"):
        """Phase map (class labels), values, or class probabilities (``proba=True``) from
        the few-label head of a :class:`~hyperspy_mlspec.MaskedAutoencoder` (see
        ``fit_probe``).

        On a linescan or a map the labels are spread over a graph of neighbouring pixels
        and similar embeddings by default (``graph="auto"``; ``graph=False``: pixel by
        pixel), with its strength chosen by cross-validation on the labels; see
        :meth:`hyperspy_mlspec.MaskedAutoencoder.predict`.

        Returns
        -------
        BaseSignal
            A navigation-shaped map with the navigation axes of ``s`` (Signal2D for a 2-D
            map); with ``proba`` a Signal1D with a ``"class"`` signal axis.

        Examples
        --------
        >>> phases = s.mlspec.predict(mae)  # doctest: +SKIP
        """
        model = _model(model)
        if not hasattr(model, "predict"):  # the MAE is a predictor once fit_probe has run
            raise ValueError(f"{type(model).__name__} has no few-label head yet: call "
                             "model.fit_probe(signal, labels, navigation_mask=...) first")
        if proba:
            return model.predict_proba(self._signal, navigation_mask=navigation_mask,
                                       graph=graph)
        return model.predict(self._signal, navigation_mask=navigation_mask, graph=graph)

    # -- GUI --------------------------------------------------------------------------------
    def gui(self, display: bool = True, toolkit=None, **options: Any):
        """Panel to train and apply the methods from a GUI (Jupyter or Qt).

        Choose a method (decomposition, denoise, anomaly_map, cluster, embed) and its
        options; Run trains in a background thread with a live loss curve, a progress bar
        and a Stop button (the best weights are kept), then shows the result with HyperSpy's
        plots. Results land where the API puts them (``decomposition`` fills
        ``s.learning_results``) and in the panel's ``result`` / ``results``. Needs the
        ``gui`` extra (``pip install "hyperspy_mlspec[gui]"``).

        Parameters
        ----------
        display
            True shows the panel; False returns HyperSpy's usual dict,
            ``{"ipywidgets": {"widget": ..., "wdict": {...}}}`` (and/or ``"traitsui"``).
        toolkit
            None (every toolkit enabled in ``hs.preferences.GUIs``), ``"ipywidgets"``,
            ``"traitsui"`` or a list of them.
        **options
            Initial panel values, e.g. ``method="denoise"``, ``epochs=20``, ``plot=False``.

        Returns
        -------
        MLSpecPanel or dict
            The panel (``display=True``) or the widgets (``display=False``).

        Examples
        --------
        >>> panel = s.mlspec.gui()  # doctest: +SKIP
        >>> w = s.mlspec.gui(display=False, toolkit="ipywidgets")  # doctest: +SKIP
        >>> w["ipywidgets"]["wdict"]["run_button"].click()  # doctest: +SKIP
        """
        from hyperspy_mlspec.gui import MLSpecPanel, require_toolkit

        toolkits = require_toolkit(toolkit)
        panel = MLSpecPanel(self._signal, **options)
        widgets = panel.gui(display=display, toolkit=toolkits)
        return panel if display else widgets


def _model(model):
    """A fitted model, loading it when given a path."""
    import os

    if isinstance(model, (str, os.PathLike)):
        from hyperspy_mlspec.persistence import load_model

        return load_model(model)
    return model


def _namespace(self) -> MLSpecNamespace:
    return MLSpecNamespace(self)


def register() -> None:
    """Attach ``mlspec`` to :class:`hyperspy.signal.BaseSignal` (idempotent, not cached) and
    install the signal glue (:func:`hyperspy_mlspec.signals.install`)."""
    from hyperspy.signal import BaseSignal

    sio.install()

    if not isinstance(getattr(BaseSignal, "mlspec", None), property):
        BaseSignal.mlspec = property(_namespace, doc="Machine-learning methods "
                                     "(hyperspy_mlspec): see :class:`MLSpecNamespace`.")
