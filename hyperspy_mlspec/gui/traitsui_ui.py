"""traitsui (Qt) implementation of the hyperspy_mlspec tools.

Registered in ``hyperspy_extension.yaml``. As in ``hyperspy_gui_traitsui``, ``display=True``
opens the window (``edit_traits``) and ``display=False`` returns the traits object, whose
default view is the one shown here (``tool.edit_traits()``, ``traitsui.testing``'s
``UITester().create_ui(tool)``).

Threads: traitsui editors update on the Qt thread by themselves (their observers use
``dispatch="ui"``); the loss curve and the result plots are drawn there too, through
``pyface``'s ``GUI.invoke_later``.
"""

from __future__ import annotations

import threading

from traits.etsconfig.api import ETSConfig

from hyperspy_mlspec.gui._deps import GUI_EXTRA


def _select_toolkit() -> None:
    """Choose the ETS toolkit from matplotlib's backend, as hyperspy_gui_traitsui does,
    before traitsui is imported: left unset, importing traitsui starts a Qt application,
    which aborts the process (a Jupyter kernel) on a machine without a display."""
    if ETSConfig.toolkit == "":
        import matplotlib

        ETSConfig.toolkit = "qt" if "qt" in matplotlib.get_backend().lower() else "null"


_select_toolkit()

try:
    import traitsui.api as tu
except ImportError as _err:  # pragma: no cover - the message is what matters
    raise ImportError(f"The Qt GUI of hyperspy_mlspec needs traitsui and PyQt5: {GUI_EXTRA}"
                      ) from _err

from hyperspy_mlspec.gui._options import METHOD_OPTIONS  # noqa: E402

_LABELS = {
    "n_components": "Components", "epochs": "Epochs (0 = auto)", "random_state": "Seed",
    "decoder": "Decoder", "loss": "Noise model", "noise": "Noise", "spatial": "Spatial",
    "use_signal_range": "Signal range", "signal_range_start": "Start",
    "signal_range_end": "End", "anomaly_method": "Score", "guard": "Guard radius",
    "outer": "Outer radius", "metric": "Metric", "robust": "Robust fraction",
    "smoothing": "Smoothing", "threshold": "Threshold", "k": "k (MAD)", "q": "Quantile",
    "alpha": "p-value", "n_clusters": "Clusters", "cluster_method": "Clustering",
    "normalize": "Normalise", "model_file": "Model file",
}


def _check_toolkit() -> None:
    """traitsui needs a GUI toolkit (Qt); HyperSpy skips this GUI without one."""
    if ETSConfig.toolkit not in ("qt", "qt4"):
        raise NotImplementedError(
            "The traitsui GUI of hyperspy_mlspec needs Qt: use the Qt matplotlib backend "
            "(%matplotlib qt) or set ETS_TOOLKIT=qt before importing traitsui.")


def _figure_editor():
    """A traitsui editor showing a matplotlib Figure on a Qt canvas."""
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from traitsui.basic_editor_factory import BasicEditorFactory
    from traitsui.qt.editor import Editor

    class _FigureEditor(Editor):
        scrollable = True

        def init(self, parent):
            self.control = FigureCanvasQTAgg(self.value)
            self.control.setMinimumSize(320, 170)

        def update_editor(self):
            self.value.canvas.draw_idle()

    class FigureEditor(BasicEditorFactory):
        klass = _FigureEditor

    return FigureEditor()


class _LossCurve:
    """The loss curve on the panel's figure: the worker thread asks for a redraw after
    each epoch, the Qt thread draws the latest losses once however many requests queued
    (redrawing on every notification piled up events and overflowed the stack)."""

    def __init__(self, panel) -> None:
        from matplotlib.figure import Figure

        self.panel = panel
        self.figure = Figure(figsize=(4.2, 2.2), layout="tight")
        ax = self.figure.add_subplot(111)
        ax.set_xlabel("epoch (all runs)")
        ax.set_ylabel("loss")
        (self.train,) = ax.plot([], [], color="C0", lw=1.5, label="train")
        (self.val,) = ax.plot([], [], color="C1", ls="--", lw=1.5, label="validation")
        ax.legend(loc="upper right", fontsize="small")
        self._pending = threading.Lock()

    def request(self, event=None) -> None:
        if self._pending.acquire(blocking=False):  # one redraw queued at a time
            from pyface.api import GUI

            GUI.invoke_later(self.draw)

    def draw(self) -> None:
        self._pending.release()
        losses = list(self.panel.losses)
        ax = self.figure.axes[0]
        self.train.set_data(range(len(losses)), [row[2] for row in losses])
        val = [(i, row[3]) for i, row in enumerate(losses) if row[3] is not None]
        self.val.set_data([i for i, _ in val], [v for _, v in val])
        values = [v for row in losses for v in row[2:] if v is not None and v > 0]
        ax.set_yscale("log" if values and max(values) / min(values) > 10 else "linear")
        ax.relim()
        ax.autoscale_view()
        self.figure.canvas.draw_idle()


class _PanelHandler(tu.Handler):
    def init(self, info):
        from pyface.api import GUI

        panel = info.object
        panel.dispatch = GUI.invoke_later
        panel.present = _present
        return True

    def closed(self, info, is_ok):
        info.object.close()


def _present(draw, panel) -> None:
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    tools = draw()
    panel.figures = [plt.figure(n) for n in plt.get_fignums() if n not in before]
    panel.tools = tools
    for tool in tools:
        tool.gui(display=True, toolkit="traitsui")


def panel_view(obj) -> tu.View:
    """The traitsui View of a :class:`~hyperspy_mlspec.gui.MLSpecPanel` (a matplotlib
    figure for the loss curve is attached to the panel on first use)."""
    if obj.loss_figure is None:
        curve = _LossCurve(obj)
        obj.loss_figure = curve.figure
        obj._loss_curve = curve  # traits holds method observers weakly
        obj.observe(curve.request, "losses")
    names = [n for n in _LABELS if any(n in opts for opts in METHOD_OPTIONS.values())]
    items = [tu.Item("method")]
    for name in names:
        when = f"{name!r} in visible_options"
        if name in ("signal_range_start", "signal_range_end"):
            when += " and use_signal_range"
        kw = {}
        trait_type = obj.trait(name).trait_type
        if type(trait_type).__name__ == "Range":  # typed values (spin boxes cannot be tested)
            kw["editor"] = tu.RangeEditor(low=trait_type._low, high=trait_type._high,
                                          mode="text")
        items.append(tu.Item(name, label=_LABELS[name], visible_when=when, **kw))
    options = tu.VGroup(*items, label="Options", show_border=True)
    controls = tu.VGroup(
        tu.HGroup(tu.Item("run_button", show_label=False,
                          enabled_when="can_run and not running"),
                  tu.Item("stop_button", show_label=False, enabled_when="running"),
                  tu.Item("close_button", show_label=False)),
        tu.Item("status", style="readonly"),
        tu.Item("progress", show_label=False,
                editor=tu.ProgressEditor(min=0, max_name="progress_max")),
        tu.Item("progress_text", style="readonly", show_label=False),
        tu.Item("loss_figure", show_label=False, editor=_figure_editor()),
        tu.Item("message", style="readonly", show_label=False),
        label="Training", show_border=True)
    return tu.View(tu.HGroup(options, controls), title="hyperspy_mlspec", resizable=True,
                   handler=_PanelHandler())


def _display(obj, view, display: bool):
    _check_toolkit()
    obj.displayed = getattr(obj, "displayed", False) or display
    if display:
        obj.edit_traits(view=view)
        return None
    return obj


def panel_traitsui(obj, display: bool = True, **kwargs):
    """The :class:`~hyperspy_mlspec.gui.MLSpecPanel` in a Qt window."""
    _check_toolkit()
    return _display(obj, panel_view(obj), display)


def anomaly_explorer_view(obj) -> tu.View:
    """Threshold slider and summary of an :class:`~hyperspy_mlspec.gui.AnomalyExplorer`."""
    return tu.View(
        tu.Item("threshold", editor=tu.RangeEditor(low_name="threshold_low",
                                                   high_name="threshold_high",
                                                   mode="slider", format_str="%.4g")),
        tu.Item("summary", style="readonly", show_label=False),
        title="Anomaly explorer", resizable=True)


def anomaly_explorer_traitsui(obj, display: bool = True, **kwargs):
    """The anomaly explorer's controls in a Qt window."""
    _check_toolkit()
    return _display(obj, anomaly_explorer_view(obj), display)


def latent_explorer_view(obj) -> tu.View:
    """Selection counts of a :class:`~hyperspy_mlspec.gui.LatentExplorer`."""
    return tu.View(
        tu.Item("n_selected_pixels", label="Pixels", style="readonly"),
        tu.Item("n_selected_points", label="Points", style="readonly"),
        tu.Item("summary", style="readonly", show_label=False),
        title="Latent explorer", resizable=True)


def latent_explorer_traitsui(obj, display: bool = True, **kwargs):
    """The latent explorer's controls in a Qt window."""
    _check_toolkit()
    return _display(obj, latent_explorer_view(obj), display)
