"""Real-time monitoring of a spectrum image while it is being acquired.

:class:`StreamingMonitor` is fed spectra as they arrive (whole scan rows, or single pixels,
with their navigation positions) and keeps live HyperSpy maps that are updated **in place**:
the same signal objects, their ``data`` written and ``events.data_changed`` triggered, so
a map opened with ``.plot()`` redraws itself during the acquisition::

    monitor = StreamingMonitor(template, model=ae, n_components=4)
    monitor.anomaly_map.plot()                    # redraws while data arrive
    for positions, spectra in detector_stream():  # e.g. data.simulate_acquisition(s)
        monitor.update(spectra, positions)
    monitor.close()

Two analyses, either or both:

Fitted model
    Any of the package's estimators (:class:`~hyperspy_mlspec.AutoencoderDecomposition`,
    :class:`~hyperspy_mlspec.DenoisingAutoencoder`, a model loaded with
    :func:`~hyperspy_mlspec.load_model`) or a scikit-learn decomposition with
    ``transform``/``inverse_transform``. Each batch is run through the network once
    (``torch.inference_mode``, batched), giving the latent codes (``latent_map``) and the
    reconstruction; the anomaly score is computed by the same function as
    :func:`hyperspy_mlspec.anomaly.anomaly_map` (Poisson deviance or MSE per channel,
    optional residual smoothing), so once every pixel has been fed the live map equals the
    batch one.
Streaming PCA
    Covariance accumulation: spectra are buffered into chunks and each chunk is added with
    one symmetric rank-k update (BLAS ``ssyrk``, float32, O(chunk * C^2): the monitor's
    main cost at 2048 channels) to shifted sums, in a worker thread of its own that runs
    beside the model's forward pass (a bounded queue: ``update`` waits only when the
    worker is several chunks behind). Every ``refresh_every`` spectra the accumulated sums
    are handed to a background thread which merges them (in float64) and computes the top
    eigenpairs of the C x C covariance (Lanczos started from the previous basis, or
    ``np.linalg.eigh``);
    the new basis is swapped in atomically (one reference assignment), and spectra are
    scored with the latest basis available, so the stream never waits for a refresh.
    With Poisson (Keenan-Kotula) weighting, the weighting of
    :mod:`hyperspy_mlspec.engine.normalization` (``"poisson"``) is used: spectra are
    divided by the square root of their mean (per spectrum, accumulated) and the
    covariance by the square root of the running channel means (at each refresh). The
    residual score is the mean squared residual per channel in these units (about 1 for
    Poisson noise the basis explains).

Online fine-tuning (``fine_tune=True``) continues training a *copy* of the model on a
buffer of recent spectra (the ``fine_tune_trim`` highest-scoring ones left out, so that
anomalies are not learned) with its ``partial_fit``, in a background thread; the copy
replaces the model used for scoring when its training ends. The model passed in is never
modified.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from hyperspy_mlspec import signals as sio
from hyperspy_mlspec.arrays.axis import AxisInfo, alignment
from hyperspy_mlspec.scoring.scores import QUANTITY as _QUANTITY
from hyperspy_mlspec.scoring.scores import SCORE_VALUES as _SCORE_VALUES
from hyperspy_mlspec.scoring.scores import blocked_row_scores as _blocked_row_scores
from hyperspy_mlspec.scoring.scores import reconstruct as _reconstruct
from hyperspy_mlspec.streaming.finetune import TuningBuffer, fine_tuned
from hyperspy_mlspec.streaming.inference import (
    BLAS_LIMIT,
    forward_flops,
    infer,
    threads,
    torch_threads,
)
from hyperspy_mlspec.streaming.pca import StreamingPCA

__all__ = ["StreamingMonitor"]

_MAX_PENDING = 65_536  # spectra kept for PCA scoring until the first basis exists
_ADD_QUEUE_CHUNKS = 4  # chunks queued for the covariance worker before update() waits
_SMALL_FORWARD_FLOPS = 1e9  # a batch's forward pass under this runs on one torch thread


class StreamingMonitor:
    """Live anomaly, latent and PCA maps of a spectrum image during its acquisition.

    Parameters
    ----------
    template
        A HyperSpy signal with the navigation axes of the acquisition and the signal axis
        of its spectra (lazy is fine: only its axes are read), e.g. a previous scan or an
        empty lazy signal. Maps keep its navigation calibration. None: give
        ``navigation_shape`` and ``n_channels`` instead (uncalibrated axes).
    model
        A fitted model (see the module description). Spectra on another calibrated energy
        axis than the model's are resampled onto it, as for
        :func:`~hyperspy_mlspec.anomaly.anomaly_map`.
    navigation_shape
        Navigation shape in array order, ``(rows, columns)`` or ``(n,)``; without template.
    n_channels
        Channels per spectrum; without template.
    n_components
        Number of streaming PCA components; None disables the streaming PCA (then a model
        is required).
    metric
        Anomaly score of the model: ``"deviance"``, ``"mse"`` or ``"auto"`` (the model's
        noise model, else deviance when the first spectra are counts), as in
        :func:`~hyperspy_mlspec.anomaly.anomaly_map`.
    smoothing
        Residual smoothing of the model's score (Gaussian sigma in channels), as in
        :func:`~hyperspy_mlspec.anomaly.anomaly_map`.
    pca_weighting
        ``"poisson"`` (Keenan-Kotula), ``"none"``, or ``"auto"``: Poisson when the model's
        loss is Poisson, else when the first spectra are counts.
    refresh_every
        Spectra between two eigendecompositions of the PCA covariance (at least: in the
        background a refresh also waits ``refresh_pause`` times the duration of the
        previous one, so refreshes never take more than a fraction of a core however
        fast spectra arrive).
    refresh_pause
        See ``refresh_every`` (background refreshes only; 4: at most a fifth of a core).
    background
        Refresh the PCA basis (and fine-tune) in a background thread (True) or inside the
        :meth:`update` call that triggers it (False: deterministic, but the stream stalls).
    pca_chunk
        Spectra buffered before one rank-k covariance update (bigger chunks use BLAS
        better; single pixels are never added one by one).
    pca_dtype
        Precision of each chunk's update: ``"float32"`` (twice as fast; the sums are
        merged in float64 at each refresh) or ``"float64"`` (see
        :mod:`hyperspy_mlspec.streaming.pca`).
    batch_size
        Spectra per forward pass of the model.
    num_threads
        Threads used during :meth:`update` and :meth:`refresh`: torch intra-op threads,
        BLAS threads (threadpoolctl) and the scoring pool, set for the call and restored
        after. None: with the streaming PCA in the background, the model runs on torch's
        threads but one and the covariance worker on the remaining one (BLAS calls on one
        thread each: OpenBLAS's threaded rank-k update is slower than one thread at these
        sizes); without it, small forward passes (one scan row) run on one torch thread
        and larger ones on torch's setting. On a machine shared with other jobs, threads
        that wait for descheduled ones spin: see ``benchmarks/RESULTS.md``. With the
        covariance worker, the process's BLAS libraries keep that limit (one thread by
        default) from the first spectra to :meth:`close`: set and restored at every call,
        it woke OpenBLAS's idle threads, which spun beside the model and the worker.
    fine_tune
        Continue training (a copy of) the model on recent spectra, see the module
        description. Needs a model with ``partial_fit``.
    fine_tune_every
        Spectra between two fine-tuning rounds.
    fine_tune_buffer
        Most recent spectra kept for fine-tuning.
    fine_tune_trim
        Fraction of the buffer with the highest anomaly scores left out of fine-tuning.
    redraw_interval
        Least seconds between two ``data_changed`` events of the maps (open plots redraw
        on each); :meth:`notify` forces one.

    Attributes
    ----------
    anomaly_map
        Navigation map (Signal2D for a 2-D scan, Signal1D for a line) of the model's anomaly
        score, or of the PCA residual without a model; NaN where nothing was acquired yet.
    latent_map
        Latent codes of the model, navigation x components (Signal1D); None when the model
        has none (a denoiser).
    pca_loadings
        PCA scores, navigation x ``n_components`` (Signal1D; ``pca_loadings.T`` gives one
        image per component); computed with the basis available when the pixel arrived.
    pca_residual_map
        Mean squared PCA residual per channel (weighted units); the same object as
        ``anomaly_map`` without a model.
    coverage
        Navigation map of how many times each pixel was fed (0 = not acquired).
    n_seen_
        Spectra fed so far.
    model_
        The model used now (a fine-tuned copy after a fine-tuning round).

    Examples
    --------
    >>> import hyperspy_mlspec
    >>> from hyperspy_mlspec.data import eels_map, simulate_acquisition
    >>> s = eels_map((8, 8), n_channels=64)
    >>> mon = StreamingMonitor(s, n_components=3, refresh_every=16, background=False)
    >>> for positions, spectra in simulate_acquisition(s, rows_per_step=2):
    ...     mon.update(spectra, positions)
    >>> mon.n_seen_, mon.pca_components_.shape
    (64, (3, 64))
    >>> mon.close()
    """

    def __init__(self, template=None, model=None, *, navigation_shape=None,
                 n_channels: int | None = None, n_components: int | None = None,
                 metric: str = "auto", smoothing: float = 0.0, pca_weighting: str = "auto",
                 refresh_every: int = 4096, refresh_pause: float = 4.0,
                 background: bool = True, pca_chunk: int = 256,
                 pca_dtype: str = "float32", batch_size: int = 2048,
                 num_threads: int | None = None,
                 fine_tune: bool = False, fine_tune_every: int = 8192,
                 fine_tune_buffer: int = 8192, fine_tune_trim: float = 0.05,
                 redraw_interval: float = 0.2) -> None:
        self._check_params(model, n_components, metric, smoothing, pca_weighting,
                           refresh_every, pca_chunk, batch_size, num_threads, fine_tune,
                           fine_tune_every, fine_tune_buffer, fine_tune_trim)
        if pca_dtype not in ("float32", "float64"):
            raise ValueError(f"pca_dtype must be 'float32' or 'float64', got {pca_dtype!r}")
        template = self._template(template, navigation_shape, n_channels)
        self.template = template
        am = template.axes_manager
        self.navigation_shape = tuple(int(n) for n in template.data.shape[
            : am.navigation_dimension])
        self.n_channels = int(am.signal_axes[0].size)
        self._n_nav = int(np.prod(self.navigation_shape, dtype=np.int64))
        self.n_components = n_components
        self.smoothing = float(smoothing)
        self.refresh_every = int(refresh_every)
        if not (math.isfinite(refresh_pause) and refresh_pause >= 0):
            raise ValueError(f"refresh_pause must be >= 0, got {refresh_pause!r}")
        self.refresh_pause = float(refresh_pause)
        self._next_refresh = -math.inf  # perf_counter time before which none starts
        self.background = bool(background)
        self.pca_chunk = int(pca_chunk)
        self.batch_size = int(batch_size)
        self.num_threads = num_threads
        self.fine_tune = bool(fine_tune)
        self.fine_tune_every = int(fine_tune_every)
        self.fine_tune_buffer = int(fine_tune_buffer)
        self.fine_tune_trim = float(fine_tune_trim)
        self.redraw_interval = float(redraw_interval)
        self.n_seen_ = 0
        self.n_fine_tunes_ = 0
        self.model_ = model
        title = str(template.metadata.General.title or "acquisition")

        # model: metric, channel alignment, latent size
        self._resample = None
        self.metric_ = None
        n_latent = 0
        if model is not None:
            self._resample = self._model_alignment(model, template)
            loss = getattr(model, "loss_", None)
            if metric == "auto" and loss is not None:
                metric = "deviance" if loss == "poisson" else "mse"
            self.metric_ = None if metric == "auto" else metric  # else: from the first batch
            n_latent = self._latent_size(model)
        self._metric_arg = metric
        if pca_weighting == "auto" and model is not None and getattr(model, "loss_", None):
            pca_weighting = "poisson" if model.loss_ == "poisson" else "none"
        self.pca_weighting_ = None if pca_weighting == "auto" else pca_weighting

        # live maps (created once; only their data change)
        nan_nav = np.full(self.navigation_shape, np.nan)
        self.coverage = sio.navigation_image(template, np.zeros(self.navigation_shape,
                                                                np.int64),
                                             f"Coverage of {title}", "spectra acquired")
        self.latent_map = None
        self.pca_loadings = None
        self.pca_residual_map = None
        if n_components is not None:
            self.pca_loadings = sio.vector_signal(
                template, np.full(self.navigation_shape + (n_components,), np.nan),
                f"Streaming PCA loadings of {title}", "component")
            self.pca_residual_map = sio.navigation_image(
                template, nan_nav.copy(), f"Streaming PCA residual of {title}",
                "Mean squared residual per channel (PCA" + (
                    ", Poisson-weighted)" if self.pca_weighting_ == "poisson" else ")"))
        if model is not None:
            self.anomaly_map = sio.navigation_image(
                template, nan_nav.copy(), f"Live anomaly score of {title}",
                _QUANTITY.get(self.metric_ or "", "anomaly score"))
            if n_latent:
                self.latent_map = sio.vector_signal(
                    template, np.full(self.navigation_shape + (n_latent,), np.nan),
                    f"Live latent codes of {title}", "latent")
        else:
            self.anomaly_map = self.pca_residual_map
        for m in self._maps():
            sio.record(m, "streaming_monitor", model=type(model).__name__ if model else "",
                       n_components=int(n_components or 0))

        # streaming PCA: the stream adds to its sums and takes them out for a refresh; the
        # refresh thread merges them and swaps `_pca.basis` by reference
        self._pca = (StreamingPCA(self.n_channels, n_components, self.pca_weighting_,
                                  chunk=self.pca_chunk, dtype=np.dtype(pca_dtype))
                     if n_components is not None else None)
        self._since_refresh = 0
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_rows = 0
        self.n_unscored_ = 0
        self._refresh_future: Future | None = None
        self._tune_future: Future | None = None
        self._tuning = TuningBuffer(self.fine_tune_buffer, self.fine_tune_every,
                                    self.fine_tune_trim)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlspec-pca")
        # the covariance updates (the PCA's main cost, O(C^2) per spectrum) run in their own
        # worker, alongside the model's forward pass in the caller's thread
        self._add_executor = (ThreadPoolExecutor(max_workers=1,
                                                 thread_name_prefix="mlspec-pca-add")
                              if self._pca is not None and self.background else None)
        self._adds: deque[tuple[Future, int]] = deque()
        self._adds_rows = 0
        self._blas_release = None  # see _add_rows
        self._tune_executor = (ThreadPoolExecutor(max_workers=1,
                                                  thread_name_prefix="mlspec-tune")
                               if self.fine_tune else None)
        # scoring threads: as many as the model's (none beside the covariance worker)
        n_score = self._thread_plan()[0] or torch_threads()
        self._score_pool = (ThreadPoolExecutor(max_workers=n_score,
                                               thread_name_prefix="mlspec-score")
                            if n_score > 1 else None)
        self._lock = threading.Lock()  # guards swaps done from worker callbacks
        self._last_notify = -math.inf
        self._closed = False

    # -- construction helpers -------------------------------------------------------------
    @staticmethod
    def _check_params(model, n_components, metric, smoothing, pca_weighting, refresh_every,
                      pca_chunk, batch_size, num_threads, fine_tune, fine_tune_every,
                      fine_tune_buffer, fine_tune_trim) -> None:
        if model is None and n_components is None:
            raise ValueError("nothing to monitor: give a fitted model (model=...), a number "
                             "of streaming PCA components (n_components=...), or both.")
        if n_components is not None and not (isinstance(n_components, (int, np.integer))
                                             and n_components >= 1):
            raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
        if metric not in ("auto", "deviance", "mse"):
            raise ValueError(f"metric must be 'auto', 'deviance' or 'mse', got {metric!r}")
        if pca_weighting not in ("auto", "poisson", "none"):
            raise ValueError("pca_weighting must be 'auto', 'poisson' or 'none', got "
                             f"{pca_weighting!r}")
        if not (float(smoothing) >= 0 and math.isfinite(smoothing)):
            raise ValueError(f"smoothing must be >= 0 (channels), got {smoothing!r}")
        for name, value in (("refresh_every", refresh_every), ("pca_chunk", pca_chunk),
                            ("batch_size", batch_size), ("fine_tune_every", fine_tune_every),
                            ("fine_tune_buffer", fine_tune_buffer)):
            if not (isinstance(value, (int, np.integer)) and value >= 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if num_threads is not None and not (isinstance(num_threads, (int, np.integer))
                                            and num_threads >= 1):
            raise ValueError(f"num_threads must be None or a positive integer, got "
                             f"{num_threads!r}")
        if not (0 <= fine_tune_trim < 1):
            raise ValueError(f"fine_tune_trim must be in [0, 1), got {fine_tune_trim!r}")
        if fine_tune and (model is None or not hasattr(model, "partial_fit")):
            raise ValueError("fine_tune=True needs a model with partial_fit (e.g. an "
                             "AutoencoderDecomposition).")
        if model is not None and not (hasattr(model, "reconstruct") or hasattr(
                model, "_denoise_tensor") or (hasattr(model, "transform")
                                              and hasattr(model, "inverse_transform"))):
            raise TypeError(f"{type(model).__name__} cannot reconstruct spectra: a model "
                            "needs reconstruct(X), or transform and inverse_transform.")

    @staticmethod
    def _template(template, navigation_shape, n_channels):
        if template is None:
            if navigation_shape is None or n_channels is None:
                raise ValueError("give a template signal, or navigation_shape and n_channels")
            import dask.array as da
            from hyperspy.signals import LazySignal1D

            shape = ((int(navigation_shape),) if np.isscalar(navigation_shape)
                     else tuple(int(n) for n in navigation_shape))
            if not shape or min(shape) < 1 or int(n_channels) < 2:
                raise ValueError(f"navigation_shape {navigation_shape!r} and n_channels "
                                 f"{n_channels!r} must be positive (at least 2 channels)")
            # a lazy signal of zeros costs no memory: only its axes are used
            template = LazySignal1D(da.zeros(shape + (int(n_channels),), chunks=-1,
                                             dtype=np.float32))
            template.metadata.General.title = "acquisition"
        elif navigation_shape is not None or n_channels is not None:
            raise ValueError("give either a template signal or navigation_shape and "
                             "n_channels, not both")
        sio.check_signal(template)
        nav_dim = template.axes_manager.navigation_dimension
        if nav_dim not in (1, 2):
            raise ValueError(f"the monitor needs a line scan or a map (navigation dimension "
                             f"1 or 2); the template has {nav_dim}.")
        return template

    def _model_alignment(self, model, template):
        n_expected = getattr(model, "n_features_in_", None)
        axis_dict = getattr(model, "signal_axis_", None)
        if axis_dict is not None:
            data_axis = sio.axis_info(template.axes_manager.signal_axes[0])
            return alignment(data_axis, AxisInfo.from_dict(axis_dict))
        if n_expected is not None and int(n_expected) != self.n_channels:
            raise ValueError(f"the model expects {n_expected} channels but the spectra have "
                             f"{self.n_channels}; the model records no energy axis to "
                             "resample onto.")
        return None

    @staticmethod
    def _latent_size(model) -> int:
        if hasattr(model, "_encode_tensor") and hasattr(model, "n_components"):
            return int(model.n_components)
        if hasattr(model, "transform") and hasattr(model, "inverse_transform"):
            comps = getattr(model, "components_", None)
            return int(comps.shape[0]) if comps is not None else 0
        return 0

    def _maps(self) -> list:
        maps = [self.anomaly_map, self.latent_map, self.pca_loadings, self.pca_residual_map,
                self.coverage]
        out = []
        for m in maps:
            if m is not None and all(m is not o for o in out):
                out.append(m)
        return out

    # -- public API ------------------------------------------------------------------------
    def update(self, spectra, positions) -> None:
        """Feed spectra with their navigation positions.

        Parameters
        ----------
        spectra
            Array ``(n, n_channels)``, or one spectrum ``(n_channels,)``.
        positions
            Navigation indices in array order: ``(n, 2)`` ``(row, column)`` pairs for a map
            (one pair for one spectrum), or ``(n,)`` flat indices (C order). A pixel fed
            again is re-scored (the maps show its last spectrum; ``coverage`` counts both).

        Raises
        ------
        ValueError
            Wrong spectrum length, NaN or infinity, negative counts with Poisson scoring or
            weighting, positions out of range or not matching the spectra. Nothing is
            changed then: the monitor can take the next (correct) batch.

        Examples
        --------
        >>> mon.update(spectra, [(0, 0), (0, 1)])  # doctest: +SKIP
        """
        self._check_open()
        x, flat, owned = self._validate(spectra, positions)
        if x.shape[0] == 0:
            return
        with threads(*self._thread_plan(x.shape[0])):
            self._collect_refresh()
            model_out = self._apply_model(x) if self.model_ is not None else None
            pca_out = self._score_pca(x) if self.n_components is not None else None
            # everything is computed: now change the state
            self._commit(x, owned, flat, model_out, pca_out)

    def push_row(self, row_index: int, spectra, start: int = 0) -> None:
        """Feed (part of) one scan row of a map: ``spectra`` ``(n, n_channels)`` at columns
        ``start ... start + n - 1`` of row ``row_index``.

        Examples
        --------
        >>> mon.push_row(3, s.data[3])  # doctest: +SKIP
        """
        if len(self.navigation_shape) != 2:
            raise ValueError("push_row is for maps (2-D navigation); use update() with flat "
                             "indices for a line scan.")
        x = np.asarray(spectra)
        n = 1 if x.ndim == 1 else int(x.shape[0])
        cols = int(start) + np.arange(n)
        rows = np.full(n, _as_index(row_index, "row_index"))
        self.update(x, np.column_stack([rows, cols]))

    def push_pixel(self, position, spectrum) -> None:
        """Feed one spectrum at ``position`` (``(row, column)`` or a flat index).

        Examples
        --------
        >>> mon.push_pixel((2, 5), spectrum)  # doctest: +SKIP
        """
        x = np.asarray(spectrum)
        if x.ndim != 1:
            raise ValueError(f"push_pixel takes one spectrum (1-D), got shape {x.shape}")
        self.update(x, position)

    def refresh(self, wait: bool = True) -> None:
        """Refresh the PCA basis now from every spectrum fed so far (the chunk buffer is
        added first); with ``wait`` block until the new basis is in use (and pixels fed
        before the first basis are scored)."""
        self._check_open()
        if self.n_components is None:
            return
        with threads(*self._thread_plan()):
            self._drain_adds()  # the worker's sums are complete: pending is exact
            if self._pca.pending:
                self._start_refresh(force=True)
            if wait:
                self.wait()

    def wait(self) -> None:
        """Wait for the background refresh and fine-tuning in progress, then use their
        results (maps are updated and notified)."""
        self._drain_adds()
        for fut in (self._refresh_future, self._tune_future):
            if fut is not None:
                fut.result()
        self._collect_refresh()
        self.notify()

    def notify(self) -> None:
        """Trigger ``events.data_changed`` of every map now (open plots redraw)."""
        for m in self._maps():
            m.events.data_changed.trigger(obj=m)
        self._last_notify = time.perf_counter()

    def close(self) -> None:
        """Wait for background work and stop the worker threads (maps stay usable)."""
        if self._closed:
            return
        try:
            self.wait()
        finally:
            self._closed = True
            for ex in (self._add_executor, self._executor, self._tune_executor,
                       self._score_pool):
                if ex is not None:
                    ex.shutdown(wait=True)
            if self._blas_release is not None:
                self._blas_release()  # once: the limit of _add_rows is given back

    def __enter__(self) -> StreamingMonitor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        parts = [f"navigation {self.navigation_shape}", f"{self.n_channels} channels",
                 f"{self.n_seen_} spectra seen"]
        if self.model_ is not None:
            parts.append(f"model {type(self.model_).__name__} ({self.metric_ or 'auto'})")
        if self.n_components is not None:
            parts.append(f"PCA {self.n_components} components, basis "
                         f"v{self._basis.version if self._basis else 0}")
        return f"<StreamingMonitor: {', '.join(parts)}>"

    # fitted PCA attributes (of the latest basis)
    @property
    def _basis(self):
        return None if self._pca is None else self._pca.basis

    @property
    def n_refreshes_(self) -> int:
        """PCA bases computed so far."""
        return 0 if self._pca is None else self._pca.n_refreshes

    @property
    def last_refresh_seconds_(self) -> float:
        """Duration of the latest refresh (NaN before the first)."""
        return math.nan if self._pca is None else self._pca.last_refresh_seconds

    @property
    def pca_components_(self) -> np.ndarray | None:
        """Latest PCA components ``(n_components, n_channels)`` (orthonormal, in weighted
        units with Poisson weighting); None before the first refresh."""
        return None if self._basis is None else self._basis.components64.copy()

    @property
    def pca_mean_(self) -> np.ndarray | None:
        """Mean (weighted units) of the spectra the latest basis was computed from."""
        return None if self._basis is None else self._basis.mean.astype(np.float64)

    @property
    def pca_explained_variance_(self) -> np.ndarray | None:
        """Variances along the latest components."""
        return None if self._basis is None else self._basis.explained_variance.copy()

    @property
    def pca_explained_variance_ratio_(self) -> np.ndarray | None:
        b = self._basis
        return None if b is None else b.explained_variance / max(b.total_variance, 1e-300)

    @property
    def pca_channel_scale_(self) -> np.ndarray | None:
        """Channel weights ``sqrt(channel mean)`` of the Poisson weighting (None without)."""
        b = self._basis
        return None if b is None or b.channel_scale is None else b.channel_scale.copy()

    @property
    def pca_basis_version_(self) -> int:
        """Number of bases computed so far (0: none yet)."""
        return 0 if self._basis is None else self._basis.version

    @property
    def refreshing(self) -> bool:
        """True while a PCA refresh runs in the background."""
        return self._refresh_future is not None and not self._refresh_future.done()

    # -- validation (nothing is changed here) ----------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this StreamingMonitor is closed; make a new one.")

    def _validate(self, spectra, positions) -> tuple[np.ndarray, np.ndarray, bool]:
        """Float32 rows, flat positions, and whether the rows are a copy made here."""
        if hasattr(spectra, "compute"):
            spectra = spectra.compute()
        x = np.asarray(spectra)
        single = x.ndim == 1
        if single:
            x = x[None, :]
        if x.ndim != 2:
            raise ValueError(f"spectra must be (n, {self.n_channels}) or one spectrum "
                             f"({self.n_channels},), got shape {np.shape(spectra)}")
        if x.shape[1] != self.n_channels:
            raise ValueError(f"wrong spectrum length: got {x.shape[1]} channels, the monitor "
                             f"expects {self.n_channels} (the template's signal axis).")
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool) or np.iscomplexobj(x):
            raise ValueError(f"spectra must be real numbers, got dtype {x.dtype}")
        given = x
        x = np.ascontiguousarray(x, dtype=np.float32)
        flat = self._flat_positions(positions, x.shape[0], single)
        finite = np.isfinite(x).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise ValueError(f"{bad.size} spectra contain NaN or infinity (batch rows "
                             f"{bad[:5].tolist()}{'...' if bad.size > 5 else ''}); nothing "
                             "was added. Replace the values (np.nan_to_num) or leave those "
                             "pixels out.")
        if self._needs_counts() and x.size and x.min() < 0:
            bad = np.flatnonzero(x.min(axis=1) < 0)
            raise ValueError(f"{bad.size} spectra contain negative values (batch rows "
                             f"{bad[:5].tolist()}), but the scoring is Poisson "
                             f"(metric={self.metric_!r}, pca_weighting="
                             f"{self.pca_weighting_!r}); nothing was added. Remove the offset "
                             "that made counts negative, or use metric='mse' / "
                             "pca_weighting='none'.")
        return x, flat, not np.may_share_memory(x, given)

    def _needs_counts(self) -> bool:
        return self.metric_ == "deviance" or (self.n_components is not None
                                              and self.pca_weighting_ == "poisson")

    def _flat_positions(self, positions, n: int, single: bool) -> np.ndarray:
        nav = self.navigation_shape
        p = np.asarray(positions)
        if p.dtype == bool or not (np.issubdtype(p.dtype, np.integer) or (
                np.issubdtype(p.dtype, np.floating) and p.size
                and np.all(np.isfinite(p)) and np.all(p == np.round(p)))):
            if p.size:
                raise ValueError(f"positions must be integer navigation indices, got "
                                 f"{p.dtype} values {p.ravel()[:4].tolist()}")
        p = p.astype(np.int64)
        if p.ndim == 1 and single and len(nav) > 1 and p.size == len(nav):
            p = p[None, :]  # one (row, column) pair for one spectrum
        if p.ndim == 0:
            p = p[None]
        if p.ndim == 2 and p.shape[1] == len(nav):
            if p.shape[0] != n:
                raise ValueError(f"{p.shape[0]} positions for {n} spectra")
            for d, size in enumerate(nav):
                bad = (p[:, d] < 0) | (p[:, d] >= size)
                if bad.any():
                    order = "(row, column)" if len(nav) == 2 else "(index,)"
                    raise ValueError(
                        f"position out of range: index {p[bad][0].tolist()} is outside the "
                        f"navigation shape {nav} (array order, {order}); nothing was added.")
            return np.ravel_multi_index(tuple(p.T), nav).astype(np.int64)
        if p.ndim == 1:
            if p.size != n:
                raise ValueError(f"{p.size} positions for {n} spectra: give one flat index "
                                 f"per spectrum, or an ({n}, {len(nav)}) array of indices")
            bad = (p < 0) | (p >= self._n_nav)
            if bad.any():
                raise ValueError(f"position out of range: flat index {int(p[bad][0])} is "
                                 f"outside 0..{self._n_nav - 1} (navigation shape {nav}); "
                                 "nothing was added.")
            return p
        raise ValueError(f"positions of shape {np.shape(positions)} do not fit {n} spectra: "
                         f"give ({n}, {len(nav)}) indices or ({n},) flat indices")

    # -- model -----------------------------------------------------------------------------
    def _apply_model(self, x: np.ndarray):
        """Latent codes (or None), anomaly scores, metric and the model's input rows of a
        batch; pure (state untouched)."""
        model = self.model_
        xm = x if self._resample is None else np.ascontiguousarray(
            self._resample(x), dtype=np.float32)
        metric = self.metric_
        if metric is None:
            from hyperspy_mlspec.estimators.base import looks_like_counts

            metric = "deviance" if looks_like_counts(xm[:256]) else "mse"
            if metric == "deviance" and xm.min() < 0:
                metric = "mse"
        codes, recon = infer(model, xm, self.batch_size, _reconstruct)
        scores = self._scores(xm, recon, metric)
        return codes, scores, metric, xm

    def _scores(self, x: np.ndarray, recon: np.ndarray, metric: str) -> np.ndarray:
        """:func:`hyperspy_mlspec.anomaly` scores on cache-sized chunks, in parallel."""
        parallel = self._score_pool is not None and x.size >= 8 * _SCORE_VALUES
        return _blocked_row_scores(x, recon, metric, self.smoothing,
                                   self._score_pool.map if parallel else map)

    # -- streaming PCA ---------------------------------------------------------------------
    def _score_pca(self, x: np.ndarray):
        basis = self._basis
        if basis is None or self._pending:
            return None  # pending rows are scored first, in their order (see _collect_refresh)
        return StreamingPCA.project(x, basis)

    def _start_refresh(self, force: bool = False) -> None:
        """Hand the stream's sums to the refresh thread (or refresh here, not background)."""
        if self._refresh_future is not None and not self._refresh_future.done():
            if not force:
                return  # one refresh at a time; the sums keep growing meanwhile
            self._refresh_future.result()
            self._collect_refresh()
        self._since_refresh = 0
        if self._add_executor is not None:
            # the sums are taken in the covariance worker, after the rows queued before;
            # the refresh thread waits for them (the stream does not)
            taken = self._add_executor.submit(self._pca.take)
            self._refresh_future = self._executor.submit(self._refresh_job, taken)
            return
        delta = self._pca.take()
        if delta is None:
            return
        if self.background:
            self._refresh_future = self._executor.submit(self._refresh_job, delta)
        else:
            self._refresh_job(delta)

    def _refresh_job(self, delta) -> None:
        """Merge the sums (an Accumulator, or the future of one) and compute a new basis
        (the refresh thread)."""
        if isinstance(delta, Future):
            delta = delta.result()
            if delta is None:
                return
        t0 = time.perf_counter()
        try:
            with threads(None, blas=self._pca_blas_threads()):
                self._pca.refresh_with(delta)
        finally:
            end = time.perf_counter()
            self._next_refresh = end + self.refresh_pause * (end - t0)

    # -- the covariance worker -------------------------------------------------------------
    def _thread_plan(self, n_rows: int | None = None) -> tuple[int | None, int | None]:
        """``(torch, BLAS)`` threads of the stream's thread during :meth:`update`.

        ``num_threads`` when given. Else, with the covariance worker running beside the
        model: the model gets torch's threads but one (at least one) and BLAS calls one
        thread (small products; OpenBLAS's threaded rank-k update was measured 1.5-2.7x
        slower with 2 threads than with 1 at 2048 channels), so the two together use the
        cores torch would use. Without the worker, a batch whose forward pass is small
        (under ``_SMALL_FORWARD_FLOPS``, e.g. one scan row) runs on one torch thread:
        per-operation synchronisation of several threads costs more than they gain
        there (one 128-spectrum row at 2048 channels measured 20x slower on 2 threads than
        on 1 at load 2.5). Else torch's and BLAS's settings are left alone.
        """
        if self.num_threads is not None:
            return self.num_threads, self.num_threads
        if self._add_executor is not None:
            return max(1, torch_threads() - 1), 1
        if n_rows is not None and forward_flops(self.model_, n_rows) < _SMALL_FORWARD_FLOPS:
            return 1, None
        return None, None

    def _pca_blas_threads(self) -> int:
        return 1 if self.num_threads is None else self.num_threads

    def _add_job(self, x: np.ndarray) -> None:
        with threads(None, blas=self._pca_blas_threads()):
            self._pca.add(x, copy=False)

    def _add_rows(self, x: np.ndarray, owned: bool) -> None:
        """Add rows to the PCA's sums: in the covariance worker (a bounded queue: the
        stream waits when it is ``_ADD_QUEUE_CHUNKS`` chunks ahead), else here."""
        if self._add_executor is None:
            self._pca.add(x, copy=not owned)
            return
        if self._blas_release is None:
            # the process's BLAS limit is held from the first covariance job to close():
            # set and restored at every update() and job, it woke OpenBLAS's idle pool
            # threads, which then spun beside the model and the worker on the two cores
            # (measured: 8-10k instead of 14-15k spectra/s in 2 of 5 runs)
            BLAS_LIMIT.enter(self._pca_blas_threads())
            self._blas_release = weakref.finalize(self, BLAS_LIMIT.exit)
        self._check_adds()
        fut = self._add_executor.submit(self._add_job, x if owned else x.copy())
        self._adds.append((fut, len(x)))
        self._adds_rows += len(x)
        while self._adds and self._adds_rows > _ADD_QUEUE_CHUNKS * self.pca_chunk:
            self._pop_add()

    def _pop_add(self) -> None:
        fut, n = self._adds.popleft()
        self._adds_rows -= n
        fut.result()  # re-raise a failure of the worker here

    def _check_adds(self) -> None:
        while self._adds and self._adds[0][0].done():
            self._pop_add()

    def _drain_adds(self) -> None:
        while self._adds:
            self._pop_add()

    def _collect_refresh(self) -> None:
        """Surface errors of a finished refresh/fine-tune, adopt a fine-tuned model, and
        score the spectra that arrived before the first basis."""
        self._check_adds()
        fut = self._refresh_future
        if fut is not None and fut.done():
            self._refresh_future = None
            fut.result()  # re-raise a failure of the refresh thread here
        fut = self._tune_future
        if fut is not None and fut.done():
            self._tune_future = None
            tuned = fut.result()
            if tuned is not None:
                self.model_ = tuned
                self.n_fine_tunes_ += 1
        if self._pending and self._basis is not None:
            pending, self._pending, self._pending_rows = self._pending, [], 0
            loadings = self.pca_loadings.data.reshape(-1, self.n_components)
            residual = self.pca_residual_map.data.reshape(-1)
            for idx, x in pending:  # batch by batch: cache-sized temporaries
                loadings[idx], residual[idx] = StreamingPCA.project(x, self._basis)

    # -- fine-tuning -----------------------------------------------------------------------
    def _buffer_for_tuning(self, x: np.ndarray, scores: np.ndarray) -> None:
        self._tuning.add(x, scores)
        busy = self._tune_future is not None and not self._tune_future.done()
        if self._tuning.due() and not busy:
            data = self._tuning.training_rows()
            model = self.model_
            if self.background:
                self._tune_future = self._tune_executor.submit(fine_tuned, model, data)
            else:
                self.model_ = fine_tuned(model, data)
                self.n_fine_tunes_ += 1

    # -- committing a batch ----------------------------------------------------------------
    def _commit(self, x, owned, flat, model_out, pca_out) -> None:
        n = x.shape[0]
        if model_out is not None:
            codes, scores, metric, _ = model_out
            if self.metric_ is None:
                self.metric_ = metric
                self.anomaly_map.metadata.set_item("Signal.quantity", _QUANTITY[metric])
            self.anomaly_map.data.reshape(-1)[flat] = scores
            if codes is not None and self.latent_map is not None:
                self.latent_map.data.reshape(-1, codes.shape[1])[flat] = codes
        if self.n_components is not None:
            if self.pca_weighting_ is None:
                from hyperspy_mlspec.estimators.base import looks_like_counts

                self.pca_weighting_ = "poisson" if looks_like_counts(x[:256]) else "none"
                self._pca.weighting = self.pca_weighting_
                if self.pca_weighting_ == "poisson":
                    self.pca_residual_map.metadata.set_item(
                        "Signal.quantity", "Mean squared residual per channel (PCA, "
                        "Poisson-weighted)")
            if pca_out is not None:
                t, resid = pca_out
                self.pca_loadings.data.reshape(-1, self.n_components)[flat] = t
                self.pca_residual_map.data.reshape(-1)[flat] = resid
            if not owned and (pca_out is None or self._add_executor is not None):
                x, owned = x.copy(), True  # kept beyond this call: the caller may reuse x
            if pca_out is None:
                if self._pending_rows < _MAX_PENDING:
                    self._pending.append((flat.copy(), x))
                    self._pending_rows += n
                else:
                    self.n_unscored_ += n
            self._add_rows(x, owned)
            self._since_refresh += n
            if (self._since_refresh >= self.refresh_every and not self.refreshing
                    and (not self.background
                         or time.perf_counter() >= self._next_refresh)):
                self._start_refresh()
            if not self.background:
                self._collect_refresh()
        np.add.at(self.coverage.data.reshape(-1), flat, 1)
        self.n_seen_ += n
        if self.fine_tune and model_out is not None:
            self._buffer_for_tuning(model_out[3], model_out[1])
        if time.perf_counter() - self._last_notify >= self.redraw_interval:
            self.notify()


# -- helpers --------------------------------------------------------------------------------
def _as_index(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)
