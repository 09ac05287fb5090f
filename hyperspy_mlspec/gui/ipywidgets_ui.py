"""ipywidgets implementation of the hyperspy_mlspec tools (Jupyter, Voila).

Registered in ``hyperspy_extension.yaml``; HyperSpy calls these functions through the
tools' ``gui()`` with ``display`` and returns ``{"widget": ..., "wdict": {...}}`` when
``display=False``, as ``hyperspy_gui_ipywidgets`` does.

The worker thread of a run only changes traits (progress, losses, messages): the links
send those to the browser. The result is drawn on the kernel's event loop (captured when
the panel is made and at each click), inside the panel's result area; without an event
loop (plain Python, tests) it is drawn by ``panel.wait()``.
"""

from __future__ import annotations

import asyncio
import contextvars
import html
import io

from hyperspy_mlspec.gui._deps import GUI_EXTRA

try:
    import ipywidgets
    from link_traits import link
except ImportError as _err:  # pragma: no cover - the message is what matters
    raise ImportError("The Jupyter GUI of hyperspy_mlspec needs ipywidgets and link_traits: "
                      f"{GUI_EXTRA}") from _err

from hyperspy_mlspec.gui._options import METHOD_OPTIONS, METHODS

_LABELS = {
    "method": "Method", "n_components": "Components", "epochs": "Epochs (0: auto)",
    "random_state": "Seed", "decoder": "Decoder", "loss": "Noise model", "noise": "Noise",
    "spatial": "Spatial", "use_signal_range": "Signal range", "signal_range_start": "Start",
    "signal_range_end": "End", "anomaly_method": "Score", "guard": "Guard radius",
    "outer": "Outer radius", "metric": "Metric", "robust": "Robust fraction",
    "smoothing": "Smoothing", "threshold": "Threshold", "k": "k (MAD)", "q": "Quantile",
    "alpha": "p-value", "n_clusters": "Clusters", "cluster_method": "Clustering",
    "normalize": "Normalise", "model_file": "Model file",
}
_STYLE = {"description_width": "10em"}


def _display_or_return(widget, wdict: dict, display: bool):
    if display:
        from IPython.display import display as show

        show(widget)
        return None
    return {"widget": widget, "wdict": wdict}


def _dispatcher():
    """Run callables on the event loop of the calling thread (the kernel's), or None.

    They run in a copy of the caller's context: ipykernel keeps the parent message there,
    and output widgets capture only what is sent with the parent they expect (the click
    that started the run), so a plot drawn from a plain loop callback would go astray."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    context = contextvars.copy_context()
    return lambda fn: loop.call_soon_threadsafe(fn, context=context)


def _option_widget(obj, name: str):
    trait = obj.trait(name)
    kind = type(trait.trait_type).__name__
    desc = trait.desc or ""
    common = dict(description=_LABELS.get(name, name), style=_STYLE, tooltip=desc)
    if kind == "Enum":
        widget = ipywidgets.Dropdown(options=list(trait.trait_type.values), **common)
    elif kind == "Bool":
        widget = ipywidgets.Checkbox(**common, indent=False)
    elif kind == "Str":
        widget = ipywidgets.Text(placeholder="empty: pretrain on this signal", **common)
    elif kind == "Range" and isinstance(trait.trait_type._low, int):
        widget = ipywidgets.BoundedIntText(min=trait.trait_type._low,
                                           max=trait.trait_type._high, **common)
    elif kind == "Range":
        widget = ipywidgets.BoundedFloatText(min=trait.trait_type._low,
                                             max=trait.trait_type._high, step=0.01, **common)
    elif kind == "Int":
        widget = ipywidgets.IntText(**common)
    else:
        widget = ipywidgets.FloatText(**common)
    link((obj, name), (widget, "value"))
    widget.add_class(f"mlspec-opt-{name}")  # stable handles for browser tests and styling
    return widget


def panel_ipywidgets(obj, display: bool = True, **kwargs):
    """The :class:`~hyperspy_mlspec.gui.MLSpecPanel` as ipywidgets.

    ``wdict`` holds ``"method"``, every option by its trait name (``"n_components"``,
    ``"epochs"``, ``"noise"``, ``"threshold"``...), ``"run_button"``, ``"stop_button"``,
    ``"close_button"``, ``"progress"``, ``"progress_text"``, ``"status"``, ``"message"``,
    ``"loss_plot"`` (an SVG loss curve) and ``"result"`` (the result area).
    """
    wdict: dict = {}
    wdict["method"] = _option_widget(obj, "method")
    options = sorted({n for names in METHOD_OPTIONS.values() for n in names},
                     key=list(_LABELS).index)
    for name in options:
        wdict[name] = _option_widget(obj, name)

    run = ipywidgets.Button(description="Run", button_style="primary", icon="play",
                            tooltip="Train in the background and show the result")
    stop = ipywidgets.Button(description="Stop", button_style="warning", icon="stop",
                             tooltip="Stop training; the best weights so far are kept")
    close = ipywidgets.Button(description="Close", icon="times",
                              tooltip="Close the panel (a running training is stopped)")
    progress = ipywidgets.IntProgress(value=0, min=0, max=1, description="Training",
                                      style=_STYLE)
    link((obj, "progress"), (progress, "value"))
    link((obj, "progress_max"), (progress, "max"))
    progress_text = ipywidgets.Label()
    link((obj, "progress_text"), (progress_text, "value"))
    status = ipywidgets.HTML()
    message = ipywidgets.HTML(layout=ipywidgets.Layout(max_width="48em"))
    loss_plot = ipywidgets.HTML(obj.loss_svg())
    result = ipywidgets.VBox([])
    wdict.update(run_button=run, stop_button=stop, close_button=close, progress=progress,
                 progress_text=progress_text, status=status, message=message,
                 loss_plot=loss_plot, result=result)
    for name in ("status", "message", "progress", "progress_text", "loss_plot"):
        wdict[name].add_class(f"mlspec-{name}")
    for name in ("run_button", "stop_button", "close_button"):
        wdict[name].add_class(f"mlspec-{name.replace('_', '-')}")
    result.add_class("mlspec-result")

    def show_options(*_):
        wanted = set(obj.options())
        for name in options:
            wdict[name].layout.display = "" if name in wanted else "none"
        ranged = "use_signal_range" in wanted and obj.use_signal_range
        for name in ("signal_range_start", "signal_range_end"):
            wdict[name].layout.display = "" if ranged else "none"

    def show_state(*_):
        run.disabled = obj.running or not obj.can_run
        stop.disabled = not obj.running
        colour = {"failed": "#b00", "done": "#070", "stopped": "#a60"}.get(obj.status, "#333")
        status.value = f'<b style="color:{colour}">{html.escape(obj.status)}</b>'
        message.value = html.escape(obj.message)

    def show_losses(*_):
        loss_plot.value = obj.loss_svg()

    obj.observe(show_options, ["method", "use_signal_range"])
    obj.observe(show_state, ["running", "can_run", "status", "message"])
    obj.observe(show_losses, "losses")
    show_options()
    show_state()

    shown: list = []

    def present(draw, panel):
        import matplotlib.pyplot as plt

        for fig in shown:
            plt.close(fig)
        shown.clear()
        for old in result.children:  # a fresh area each run: no view of an old figure stays
            old.close()
        before = set(plt.get_fignums())
        output = ipywidgets.Output()  # what HyperSpy displays while plotting (sliders...)
        with output:
            tools = draw()
        figures = [plt.figure(n) for n in plt.get_fignums() if n not in before]
        children = [output]
        for fig in figures:
            if isinstance(fig.canvas, ipywidgets.DOMWidget):  # ipympl: a live figure
                if getattr(fig.canvas, "_closed", True):  # not shown by the plotting itself
                    children.append(fig.canvas)
                _unqueue_ipympl(fig)
            else:  # inline or another static backend: a picture of the figure
                buf = io.BytesIO()
                fig.savefig(buf, format="png", dpi=90)
                children.append(ipywidgets.Image(value=buf.getvalue(), format="png"))
        for tool in tools:
            children.append(tool.gui(display=False, toolkit="ipywidgets")
                            ["ipywidgets"]["widget"])
        result.children = [ipywidgets.VBox(children)]
        shown.extend(figures)
        panel.figures, panel.tools = figures, tools

    obj.present = present
    obj.dispatch = _dispatcher() or obj.dispatch

    def on_run(_):
        obj.dispatch = _dispatcher() or obj.dispatch
        obj.run()

    def on_close(_):
        obj.close()
        obj.observe(show_options, ["method", "use_signal_range"], remove=True)
        obj.observe(show_losses, "losses", remove=True)
        box.close()

    run.on_click(on_run)
    stop.on_click(lambda _: obj.stop())
    close.on_click(on_close)

    left = ipywidgets.VBox([wdict["method"]] + [wdict[n] for n in options])
    right = ipywidgets.VBox([ipywidgets.HBox([run, stop, close]), ipywidgets.HBox([status]),
                             progress, progress_text, loss_plot, message])
    box = ipywidgets.VBox([ipywidgets.HBox([left, right]), result])
    box.add_class("mlspec-panel")
    obj.displayed = obj.displayed or display
    return _display_or_return(box, wdict, display)


def _unqueue_ipympl(fig) -> None:
    """ipympl shows new figures again after the next cell runs; ours are shown already."""
    try:
        from ipympl.backend_nbagg import _Backend_ipympl
    except ImportError:  # pragma: no cover
        return
    if fig in _Backend_ipympl._to_show:
        _Backend_ipympl._to_show.remove(fig)


def anomaly_explorer_ipywidgets(obj, display: bool = True, **kwargs):
    """Threshold slider and summary of an :class:`~hyperspy_mlspec.gui.AnomalyExplorer`."""
    span = max(obj.threshold_high - obj.threshold_low, 1e-12)
    slider = ipywidgets.FloatSlider(min=obj.threshold_low, max=obj.threshold_high,
                                    step=span / 500, readout_format=".4g",
                                    description="Threshold", continuous_update=False,
                                    style=_STYLE, layout=ipywidgets.Layout(width="32em"))
    link((obj, "threshold_low"), (slider, "min"))
    link((obj, "threshold_high"), (slider, "max"))
    link((obj, "threshold"), (slider, "value"))
    summary = ipywidgets.Label()
    link((obj, "summary"), (summary, "value"))
    box = ipywidgets.VBox([slider, summary])
    box.add_class("mlspec-anomaly-explorer")
    return _display_or_return(box, {"threshold": slider, "summary": summary}, display)


def latent_explorer_ipywidgets(obj, display: bool = True, **kwargs):
    """Selection counts of a :class:`~hyperspy_mlspec.gui.LatentExplorer`."""
    pixels = ipywidgets.IntText(description="Pixels", disabled=True, style=_STYLE)
    points = ipywidgets.IntText(description="Points", disabled=True, style=_STYLE)
    link((obj, "n_selected_pixels"), (pixels, "value"))
    link((obj, "n_selected_points"), (points, "value"))
    summary = ipywidgets.Label()
    link((obj, "summary"), (summary, "value"))
    help_text = ipywidgets.HTML("Drag the orange rectangle in the embedding to see its "
                                "pixels on the map; drag the red one on the map to see "
                                "their points; the red circle follows the cursor.")
    box = ipywidgets.VBox([help_text, ipywidgets.HBox([pixels, points]), summary])
    box.add_class("mlspec-latent-explorer")
    return _display_or_return(box, {"n_selected_pixels": pixels, "n_selected_points": points,
                                    "summary": summary}, display)


__all__ = ["METHODS", "anomaly_explorer_ipywidgets", "latent_explorer_ipywidgets",
           "panel_ipywidgets"]
