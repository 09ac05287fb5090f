"""The training panel behind ``s.mlspec.gui()``, independent of any widget toolkit.

:class:`MLSpecPanel` holds the choices (method and options) as traits, runs the chosen
``s.mlspec`` method in a background thread inside :func:`hyperspy_mlspec.engine.progress.
observe` (so the loss curve, the progress bar and the Stop button see every training run),
stores the result and hands the plotting to the UI thread. The toolkits only draw widgets
linked to these traits (:mod:`~hyperspy_mlspec.gui.ipywidgets_ui`,
:mod:`~hyperspy_mlspec.gui.traitsui_ui`).

Threads: training runs in a worker thread, never in the kernel's or Qt's main thread, so the
session stays responsive. Trait changes made by the worker (progress, losses, messages) are
cheap; anything that draws with matplotlib is passed to the toolkit's dispatcher (the
kernel's event loop, Qt's ``invoke_later``) or, without one, queued until :meth:`wait`.
"""

from __future__ import annotations

import inspect
import math
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import traits.api as t
from hyperspy.ui_registry import add_gui_method

from hyperspy_mlspec.gui._options import METHOD_OPTIONS, METHODS


class _PanelObserver:
    """Training observer of one panel run (see :func:`~hyperspy_mlspec.engine.progress.
    observe`): reports epochs to the panel and asks to stop when Stop was pressed."""

    def __init__(self, panel: MLSpecPanel) -> None:
        self.panel = panel
        self.runs = 0
        self.stopped = False

    def on_train_begin(self, info: dict) -> None:
        self.runs += 1
        self.panel._train_begin(self.runs, info)

    def on_epoch_end(self, row: dict) -> None:
        self.panel._epoch_end(self.runs, row)

    def on_train_end(self, result) -> None:
        self.stopped = self.stopped or bool(getattr(result, "stopped", False))

    def stop_requested(self) -> bool:
        return self.panel._stop_event.is_set()


def signal_problem(signal) -> str | None:
    """Why the panel cannot run on ``signal`` (None when it can).

    Examples
    --------
    >>> import numpy as np, hyperspy.api as hs
    >>> signal_problem(hs.signals.BaseSignal(np.ones((4, 4))).T) is not None
    True
    """
    from hyperspy_mlspec.signals import check_signal

    try:
        check_signal(signal)
    except (TypeError, ValueError) as err:
        return str(err)
    if signal.axes_manager.navigation_dimension == 0:
        return ("This signal holds a single spectrum: the methods learn from many spectra. "
                "Open the panel on a spectrum image or a line scan.")
    return None


@add_gui_method(toolkey="hyperspy_mlspec.MLSpecPanel")
class MLSpecPanel(t.HasTraits):
    """Train and apply a model of ``hyperspy_mlspec`` on a signal from a GUI.

    Run calls ``signal.mlspec.<method>(...)`` in a background thread with the options set
    here; results land where the API puts them (``decomposition`` fills
    ``signal.learning_results``) and in :attr:`results` / :attr:`result`.

    Parameters
    ----------
    signal
        A spectrum image or line scan (lazy or not). A signal the methods cannot use
        opens a panel that says why and will not run.
    plot
        Show each result with HyperSpy's plots when it is ready.
    **options
        Initial values of the traits (``method="denoise"``, ``epochs=5``...).

    Attributes
    ----------
    results
        The last result of each method, by method name.
    result
        The result of the last finished run (None before).
    error
        The exception of the last failed run (None otherwise).

    Examples
    --------
    >>> import hyperspy_mlspec
    >>> s = hyperspy_mlspec.data.eels_map((8, 8), n_channels=64)
    >>> panel = MLSpecPanel(s, n_components=2, epochs=2, plot=False)
    >>> panel.run()
    True
    >>> est = panel.wait()
    >>> panel.status, s.learning_results.factors.shape
    ('done', (64, 2))
    >>> panel.gui(display=False, toolkit="ipywidgets")  # doctest: +SKIP
    """

    method = t.Enum(METHODS, desc="the s.mlspec method to run")
    n_components = t.Range(1, 256, 4, desc="latent dimensions of the fitted model")
    epochs = t.Range(0, 100000, 0, desc="training epochs; 0 = derived from the data")
    random_state = t.Int(0, desc="seed (same seed, same result on the CPU)")
    # decomposition
    decoder = t.Enum("nonlinear", "linear", desc="linear: non-negative NMF-like components")
    loss = t.Enum("auto", "poisson", "mse", desc="noise model: auto = Poisson for counts")
    # denoise
    noise = t.Enum("poisson-split", "mask", desc="self-supervision of the denoiser")
    spatial = t.Enum("auto", "on", "off",
                     desc="use neighbouring pixels when the method supports it")
    # signal range (decomposition, denoise)
    use_signal_range = t.Bool(False, desc="fit only the channels between start and end")
    signal_range_start = t.Float(desc="start of the signal range, in axis units")
    signal_range_end = t.Float(desc="end of the signal range, in axis units")
    # anomaly map
    anomaly_method = t.Enum("auto", "context", "autoencoder",
                            desc="auto/context: spatial-context score (no training); "
                            "autoencoder: a network fitted on the map")
    guard = t.Range(0, 20, 1, desc="context score: pixels around a pixel left out")
    outer = t.Range(1, 30, 3, desc="context score: outer radius of the predicting ring")
    metric = t.Enum("auto", "deviance", "mse", desc="per-pixel error measure")
    robust = t.Range(0.0, 0.5, 0.05, desc="fraction of worst pixels left out of the fit")
    smoothing = t.Range(0.0, 50.0, 0.0, desc="Gaussian sigma of the residuals, channels")
    threshold = t.Enum("mad", "quantile", "pvalue", desc="how anomalous pixels are chosen")
    k = t.Range(0.0, 100.0, 5.0, desc="threshold = median + k MAD")
    q = t.Range(0.0, 1.0, 0.99, desc="threshold = quantile q of the score")
    alpha = t.Range(0.0, 1.0, 1e-3, desc="p-value of the chi-squared test")
    # cluster
    n_clusters = t.Range(2, 64, 4, desc="number of clusters")
    cluster_method = t.Enum("kmeans", "gmm", "agglomerative", desc="clustering algorithm")
    normalize = t.Enum("shape", "standard", "none", desc="code normalisation")
    # embed
    model_file = t.Str("", desc="a saved MaskedAutoencoder (.mlspec); empty: pretrain one "
                       "on this signal")

    # buttons (also usable from Python: panel.run_button = True fires it)
    run_button = t.Button("Run")
    stop_button = t.Button("Stop")
    close_button = t.Button("Close")

    # state, written by the panel only
    running = t.Bool(False)
    can_run = t.Bool(True)
    status = t.Enum("idle", "running", "stopping", "done", "stopped", "failed", "closed")
    message = t.Str("")
    progress = t.Int(0)
    progress_max = t.Int(1)
    progress_text = t.Str("")
    losses = t.List(desc="(run, epoch, train_loss, val_loss) of every epoch so far")
    visible_options = t.List(t.Str, desc="the options of the current method")
    loss_figure = t.Any(None)  # matplotlib figure of the Qt panel (made by traitsui_ui)

    def __init__(self, signal, plot: bool = True, **options: Any) -> None:
        super().__init__()
        self.signal = signal
        self.plot = bool(plot)
        self.results: dict[str, Any] = {}
        self.result: Any = None
        self.error: BaseException | None = None
        self.figures: list = []
        self.tools: list = []
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._pending: list[Callable[[], None]] = []
        self._pending_lock = threading.Lock()
        # set by a toolkit: run a callable on the UI thread / inside the result display
        self.dispatch: Callable[[Callable[[], None]], None] | None = None
        self.present: Callable[[Callable[[], list], MLSpecPanel], None] | None = None
        self._closed = False
        self.displayed = False  # set by a toolkit that showed the panel
        self._t0 = 0.0
        problem = signal_problem(signal)
        if problem is None:
            axis = signal.axes_manager.signal_axes[0]
            self.signal_range_start = float(axis.low_value)
            self.signal_range_end = float(axis.high_value)
            if getattr(signal, "_lazy", False):
                self.message = ("Lazy signal: each run streams it chunk by chunk; results "
                                "are lazy and computed when plotted.")
        else:
            self.can_run = False
            self.message = problem
        self.trait_set(**options)
        self.visible_options = list(self.options())

    def __repr__(self) -> str:
        title = self.signal.metadata.get_item("General.title", "")
        return f"<MLSpecPanel: {self.method} on {title!r}, {self.status}>"

    def _ipython_display_(self) -> None:
        # ``panel = s.mlspec.gui()`` shows the widgets once; showing the panel object again
        # (the value of the cell) must not draw a second copy or a line of text under it
        if self.displayed:
            return
        from hyperspy_mlspec.engine.progress import in_kernel

        if in_kernel():
            self.gui(display=True, toolkit="ipywidgets")
        else:
            print(repr(self))

    def default_traits_view(self):
        """The Qt view (``panel.edit_traits()``; needs the ``gui`` extra)."""
        from hyperspy_mlspec.gui.traitsui_ui import panel_view

        return panel_view(self)

    # -- what the toolkits call ---------------------------------------------------------------
    def _run_button_fired(self) -> None:
        self.run()

    def _stop_button_fired(self) -> None:
        self.stop()

    def _close_button_fired(self) -> None:
        self.close()

    def options(self) -> tuple[str, ...]:
        """Names of the options the current method reads (those the installed method
        supports: ``spatial`` and the anomaly score options come with newer versions)."""
        names = METHOD_OPTIONS[self.method]
        if self.method in ("denoise", "anomaly_map"):
            params = inspect.signature(getattr(type(self.signal.mlspec), self.method)).parameters
            optional = {"spatial": "spatial", "anomaly_method": "method", "guard": "window",
                        "outer": "window"}
            names = tuple(n for n in names if n not in optional or optional[n] in params)
        return names

    @t.observe("method")
    def _method_changed(self, event) -> None:
        self.visible_options = list(self.options())

    def run(self) -> bool:
        """Start the current method in a background thread.

        Returns
        -------
        bool
            False (and a message) when nothing was started: already running, closed, or a
            signal or options the method cannot use.
        """
        if self._closed:
            self.message = "This panel was closed: open a new one with s.mlspec.gui()."
            return False
        if self.running:
            self.message = ("Already training: press Stop (the best weights are kept) or "
                            "wait for this run to finish before starting another.")
            return False
        if not self.can_run:
            problem = signal_problem(self.signal)
            self.message = problem or self.message
            return False
        method = self.method
        try:
            call = self._call(method)
        except (TypeError, ValueError) as err:
            self.status, self.message = "failed", f"{method}: {err}"
            return False
        self._stop_event.clear()
        self.error = None
        self.losses = []
        self.progress, self.progress_max, self.progress_text = 0, 1, ""
        self.status, self.running = "running", True
        self.message = f"Running {method}..."
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._work, args=(method, call),
                                        name=f"mlspec-gui-{method}", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        """Ask the training to stop after the current step; the best weights are kept and
        the method finishes with them (its result is stored as usual)."""
        if self.running:
            self._stop_event.set()
            self.status = "stopping"
            self.message = ("Stopping after the current step: the best weights so far are "
                            "kept and the result is computed with them.")
        else:
            self.message = "Nothing is running."

    def close(self) -> None:
        """Close the panel: a running training is stopped (its result is still stored, not
        plotted) and Run is refused from now on."""
        self._closed = True
        if self.running:
            self._stop_event.set()
            self.message = ("Panel closed while training: stopping; the result will be in "
                            "panel.result.")
        self.status = "closed" if not self.running else "stopping"

    def wait(self, timeout: float | None = None):
        """Wait for the running method (if any), run the UI work queued without a
        dispatcher (plots), and return :attr:`result`.

        Raises
        ------
        TimeoutError
            When the run is still going after ``timeout`` seconds.
        """
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise TimeoutError(f"{self.method} is still running after {timeout} s")
        self._drain()
        return self.result

    # -- the work, in the background thread ---------------------------------------------------
    def _kwargs(self, method: str) -> dict[str, Any]:
        """Keyword arguments of ``s.mlspec.<method>`` from the traits; options the installed
        method does not take (e.g. ``spatial`` before it exists) are left out."""
        kw: dict[str, Any] = {"show_progressbar": False, "random_state": self.random_state}
        if self.epochs:
            kw["epochs"] = int(self.epochs)
        if method in ("decomposition", "denoise") and self.use_signal_range:
            if not self.signal_range_start < self.signal_range_end:
                raise ValueError(f"the signal range start ({self.signal_range_start}) must "
                                 f"be below its end ({self.signal_range_end})")
            kw["signal_range"] = (self.signal_range_start, self.signal_range_end)
        if method == "decomposition":
            kw.update(n_components=self.n_components, decoder=self.decoder, loss=self.loss)
        elif method == "denoise":
            kw["noise"] = self.noise
            if self.spatial != "auto":
                kw["spatial"] = self.spatial == "on"
        elif method == "anomaly_map":
            kw.update(n_components=self.n_components, metric=self.metric,
                      robust=self.robust, return_model=True)
            if self.smoothing:
                kw["smoothing"] = self.smoothing
            params = inspect.signature(self.signal.mlspec.anomaly_map).parameters
            if "method" in params:  # the spatial-context score (no network) is the default
                kw["method"] = self.anomaly_method
                if self.anomaly_method != "autoencoder":
                    kw.pop("epochs", None)
                    if not self.guard < self.outer:
                        raise ValueError(f"the guard radius ({self.guard}) must be below "
                                         f"the outer radius ({self.outer})")
                    kw["window"] = (int(self.guard), int(self.outer))
        elif method == "cluster":
            kw.update(n_components=self.n_components, n_clusters=self.n_clusters,
                      method=self.cluster_method, normalize=self.normalize)
        if method != "embed":
            params = inspect.signature(getattr(self.signal.mlspec, method)).parameters
            if "spatial" in kw and "spatial" not in params:
                del kw["spatial"]  # the installed denoise has no spatial option
        return kw

    def _call(self, method: str) -> Callable[[], tuple[Any, str]]:
        """The call to run in the thread; options are validated here, in the UI thread."""
        s = self.signal
        kw = self._kwargs(method)
        if method == "decomposition":
            def call():
                est = s.mlspec.decomposition(**kw)
                return est, (f"decomposition: {est.n_components} components in "
                             "s.learning_results (plot_decomposition_results, "
                             "get_decomposition_model work as usual)")
        elif method == "denoise":
            def call():
                denoised, stats = s.mlspec.denoise(residual_statistics=True, **kw)
                stats = {name: _computed(m) for name, m in stats.items()}
                chi2 = float(np.nanmean(stats["chi2_per_channel"].data))
                return ({"denoised": denoised, **stats},
                        f"denoise: mean chi2 per channel of the residuals {chi2:.3g} "
                        "(about 1 where only noise was removed)")
        elif method == "anomaly_map":
            found_kw = {"threshold": self.threshold, "k": self.k, "q": self.q,
                        "alpha": self.alpha}

            def call():
                score, model = s.mlspec.anomaly_map(**kw)
                found = s.mlspec.anomalies(anomaly_map=_computed(score), model=model,
                                           **found_kw)
                return found, (f"anomaly_map: {found.n_anomalous} anomalous pixel(s) in "
                               f"{len(found.regions)} region(s), threshold "
                               f"{found.threshold:.4g} ({found.method})")
        elif method == "cluster":
            def call():
                res = s.mlspec.cluster(**kw)
                res.labels = _computed(res.labels)
                sizes = ", ".join(str(int(n)) for n in res.sizes)
                return res, f"cluster: {len(res.sizes)} clusters of {sizes} pixels"
        else:
            path = self.model_file.strip()
            if path:
                import os

                if not os.path.exists(path):
                    raise ValueError(f"no model file {path!r}: give the path of a saved "
                                     "MaskedAutoencoder, or leave it empty to pretrain one")

            def call():
                from hyperspy_mlspec.estimators import MaskedAutoencoder
                from hyperspy_mlspec.persistence import load_model

                if path:
                    mae = load_model(path)
                else:
                    # the grid comes from the data (n_channels/patch_size "auto")
                    mae = MaskedAutoencoder(epochs=kw.get("epochs", "auto"),
                                            random_state=self.random_state,
                                            show_progressbar=False).fit(s)
                emb = s.mlspec.embed(mae)
                xy = _computed(s.mlspec.embedding_2d(mae, normalize="standard",
                                                     show_progressbar=False))
                return ({"model": mae, "embedding": emb, "embedding_2d": xy},
                        f"embed: {emb.axes_manager.signal_axes[0].size} features per pixel")
        return call

    def _work(self, method: str, call: Callable[[], tuple[Any, str]]) -> None:
        from hyperspy_mlspec.engine.progress import observe

        observer = _PanelObserver(self)
        try:
            with observe(observer):
                result, summary = call()
        except Exception as err:  # shown in the panel: the session must go on
            self.error = err
            self.running = False
            self.status = "failed"
            detail = traceback.format_exception_only(type(err), err)[-1].strip()
            self.message = f"{method} failed: {detail}"
            return
        seconds = time.perf_counter() - self._t0
        # stored before anything is drawn: a closed panel or a failing plot loses nothing
        self.results[method] = result
        self.result = result
        stopped = observer.stopped
        self.running = False
        if self._closed:
            self.status = "closed"
        else:
            self.status = "stopped" if stopped else "done"
        epochs = len(self.losses)
        trained = f"{epochs} epoch(s) in {seconds:.1f} s" if epochs else (
            f"no training, {seconds:.1f} s")
        if not epochs:
            self.progress, self.progress_text = self.progress_max, "no training needed"
        self.message = (f"{summary}. {trained}"
                        + ("; stopped early, best weights kept" if stopped else "") + ".")
        if self.plot and not self._closed:
            self._ui(lambda: self._show(method, result))

    # -- observer callbacks (worker thread) -----------------------------------------------------
    def _train_begin(self, run: int, info: dict) -> None:
        self.progress, self.progress_max = 0, max(int(info.get("epochs") or 1), 1)
        self.progress_text = f"{info.get('desc', 'training')} (run {run}): starting"

    def _epoch_end(self, run: int, row: dict) -> None:
        val = row.get("val_loss")
        self.losses = [*self.losses, (run, int(row["epoch"]), float(row["train_loss"]),
                                      None if val is None else float(val))]
        self.progress = min(int(row["epoch"]) + 1, self.progress_max)
        text = (f"run {run}, epoch {self.progress}/{self.progress_max}: "
                f"train {row['train_loss']:.4g}")
        if val is not None:
            text += f", validation {val:.4g}"
        self.progress_text = text

    # -- the UI thread --------------------------------------------------------------------------
    def _ui(self, fn: Callable[[], None]) -> None:
        if self.dispatch is not None:
            self.dispatch(fn)
        else:
            with self._pending_lock:
                self._pending.append(fn)

    def _drain(self) -> None:
        with self._pending_lock:
            pending, self._pending = self._pending, []
        for fn in pending:
            fn()

    def _show(self, method: str, result) -> None:
        """Plot ``result`` with HyperSpy (inside the toolkit's display, if any)."""
        def draw() -> list:
            return show_result(self.signal, method, result)

        try:
            if self.present is not None:
                self.present(draw, self)
            else:
                import matplotlib.pyplot as plt

                before = set(plt.get_fignums())
                self.tools = draw()
                self.figures = [plt.figure(n) for n in plt.get_fignums() if n not in before]
        except Exception as err:  # the result is stored; say why it is not shown
            self.message += f" (could not plot it: {type(err).__name__}: {err})"

    # -- the loss curve, for toolkits without matplotlib in the panel --------------------------
    def loss_svg(self, width: int = 360, height: int = 140) -> str:
        """The loss curve so far as a small SVG image (train solid, validation dashed,
        grey lines where a new training run starts), for HTML widgets."""
        return loss_svg(self.losses, width, height)


def _computed(signal):
    """A navigation-sized result in memory (lazy maps are small; computing them in the
    worker keeps the UI thread from doing it)."""
    if getattr(signal, "_lazy", False):
        signal = signal.deepcopy()
        signal.compute(show_progressbar=False)
    return signal


def show_result(signal, method: str, result) -> list:
    """Plot a panel result with HyperSpy's plots; returns the interactive tools made
    (explorers), whose own ``gui()`` the toolkit shows next to the plots."""
    from hyperspy_mlspec.gui.explorers import AnomalyExplorer, LatentExplorer

    if method == "decomposition":
        signal.plot_decomposition_results()
        return []
    if method == "denoise":
        denoised = result["denoised"]
        navigator = result["chi2_per_channel"]
        denoised.plot(navigator=navigator)
        return []
    if method == "anomaly_map":
        explorer = AnomalyExplorer(signal, result)
        explorer.plot()
        return [explorer]
    if method == "cluster":
        import hyperspy.api as hs

        result.labels.plot(cmap="tab10", colorbar=True)
        hs.plot.plot_spectra(result.centers, legend="auto")
        return []
    explorer = LatentExplorer(signal, result["embedding_2d"])
    explorer.plot()
    return [explorer]


def loss_svg(losses, width: int = 360, height: int = 140) -> str:
    """SVG polylines of ``(run, epoch, train, val)`` rows (log scale when the losses span
    more than a decade).

    Examples
    --------
    >>> loss_svg([(1, 0, 2.0, None), (1, 1, 1.0, None)]).startswith("<svg")
    True
    """
    pad = 28
    if not losses:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
                f'<text x="{pad}" y="{height // 2}" font-size="12" fill="#777">'
                "loss curve: press Run</text></svg>")
    values = [v for row in losses for v in row[2:] if v is not None and math.isfinite(v)]
    positive = bool(values) and min(values) > 0
    log = positive and max(values) / min(values) > 10
    f = (lambda v: math.log10(v)) if log else (lambda v: v)
    lo, hi = (f(min(values)), f(max(values))) if values else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    n = len(losses)

    def xy(i: int, v: float) -> str:
        x = pad + (width - 2 * pad) * (i / max(n - 1, 1))
        y = height - pad + (2 * pad - height) * ((f(v) - lo) / (hi - lo))
        return f"{x:.1f},{y:.1f}"

    lines = []
    for i in range(1, n):  # where a new training run starts (anomaly maps train in rounds)
        if losses[i][0] != losses[i - 1][0]:
            x = pad + (width - 2 * pad) * ((i - 0.5) / max(n - 1, 1))
            lines.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{pad // 2}" '
                         f'y2="{height - pad}" stroke="#ddd"/>')
    for col, style in ((2, 'stroke="#1f77b4"'), (3, 'stroke="#ff7f0e" stroke-dasharray="4 3"')):
        points = [xy(i, row[col]) for i, row in enumerate(losses)
                  if row[col] is not None and math.isfinite(row[col])]
        if len(points) > 1:
            lines.append(f'<polyline fill="none" {style} stroke-width="1.5" '
                         f'points="{" ".join(points)}"/>')
        elif points:
            x, y = points[0].split(",")
            lines.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="#1f77b4"/>')
    last = losses[-1][2]
    scale = "log " if log else ""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'class="mlspec-loss">'
            f'<rect x="{pad}" y="{pad // 2}" width="{width - 2 * pad}" '
            f'height="{height - pad - pad // 2}" fill="none" stroke="#ccc"/>'
            + "".join(lines)
            + f'<text x="{pad}" y="{height - 6}" font-size="11">{n} epoch(s), {scale}loss '
            f'{last:.4g}</text>'
            f'<text x="{width - pad}" y="{height - 6}" font-size="11" text-anchor="end" '
            f'fill="#ff7f0e">--- validation</text></svg>')
