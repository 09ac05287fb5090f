"""GUI panel and explorers, driven from Python as hyperspy_gui_ipywidgets tests its tools:
get the wdict, set values, click, assert on the signal."""

import subprocess
import sys
import textwrap
import threading
import time

import hyperspy.api as hs
import matplotlib.pyplot as plt
import numpy as np
import pytest
from conftest import quick_anomalies

import hyperspy_mlspec
from hyperspy_mlspec.gui import AnomalyExplorer, LatentExplorer, MLSpecPanel
from hyperspy_mlspec.gui.explorers import outline_segments
from hyperspy_mlspec.gui.panel import loss_svg

KW = {"toolkit": "ipywidgets", "display": False}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def small():
    return hyperspy_mlspec.data.eels_map((8, 8), n_channels=64, random_state=0)


def _wdict(panel):
    return panel.gui(**KW)["ipywidgets"]["wdict"]


def _wait_status(wdict, statuses, timeout=60.0):
    """Poll the status widget (what a user sees) until it shows one of ``statuses``."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if any(f">{s}<" in wdict["status"].value for s in statuses):
            return
        time.sleep(0.02)
    raise AssertionError(f"status still {wdict['status'].value!r} after {timeout} s")


def test_toolkeys_registered_the_hyperspy_way():
    from hyperspy.ui_registry import UI_REGISTRY

    for key in ("hyperspy_mlspec.MLSpecPanel", "hyperspy_mlspec.AnomalyExplorer",
                "hyperspy_mlspec.LatentExplorer"):
        assert set(UI_REGISTRY[key]) == {"ipywidgets", "traitsui"}


def test_namespace_gui_returns_hyperspy_dict_and_decomposition_fills_learning_results(small):
    s = small
    before = s.data.copy()
    widgets = s.mlspec.gui(**KW)
    assert set(widgets) == {"ipywidgets"}
    assert set(widgets["ipywidgets"]) == {"widget", "wdict"}
    wd = widgets["ipywidgets"]["wdict"]
    assert wd["method"].options == ("decomposition", "denoise", "anomaly_map", "cluster",
                                    "embed")
    for key in ("n_components", "epochs", "run_button", "noise", "spatial",
                "signal_range_start", "threshold", "n_clusters", "model_file"):
        assert key in wd
    wd["n_components"].value = 3
    wd["epochs"].value = 2
    wd["run_button"].click()
    _wait_status(wd, ("done",))
    assert s.learning_results.factors.shape == (64, 3)
    assert s.learning_results.loadings.shape == (64, 3)
    assert "3 components" in wd["message"].value and "2 epoch(s)" in wd["message"].value
    assert wd["progress"].value == wd["progress"].max == 2
    assert wd["loss_plot"].value.count("<polyline") >= 1
    np.testing.assert_array_equal(s.data, before)


def test_options_follow_the_method(small):
    panel = MLSpecPanel(small)
    wd = _wdict(panel)
    assert wd["noise"].layout.display == "none" and wd["decoder"].layout.display == ""
    wd["method"].value = "denoise"
    assert wd["noise"].layout.display == "" and wd["decoder"].layout.display == "none"
    assert wd["signal_range_start"].layout.display == "none"
    wd["use_signal_range"].value = True
    assert wd["signal_range_start"].layout.display == ""
    wd["method"].value = "anomaly_map"
    assert wd["threshold"].layout.display == "" and wd["k"].layout.display == ""
    # options of a newer API appear only when the installed method takes them
    from conftest import spatial_score

    shown = wd["anomaly_method"].layout.display == ""
    assert shown == spatial_score() == ("anomaly_method" in panel.visible_options)


@pytest.mark.parametrize("method", ["denoise", "anomaly_map", "cluster", "embed"])
def test_each_method_runs_and_is_shown_with_hyperspy_plots(small, method):
    panel = MLSpecPanel(small, method=method, epochs=2, n_components=2, n_clusters=3)
    wd = _wdict(panel)
    wd["run_button"].click()
    result = panel.wait(120)
    assert panel.status == "done", panel.message
    assert panel.results[method] is result
    assert panel.figures, "the result was not plotted"
    if method == "denoise":
        d = result["denoised"]
        assert d.data.shape == small.data.shape
        assert d.axes_manager.signal_axes[0].units == small.axes_manager.signal_axes[0].units
        assert result["chi2_per_channel"].data.shape == (8, 8)
    elif method == "anomaly_map":
        assert result.score.data.shape == (8, 8)
        assert isinstance(panel.tools[0], AnomalyExplorer)
        # a picture of each figure (static backend) and the explorer's controls are shown
        # in the panel's result area
        children = wd["result"].children[0].children
        assert len(children) == 1 + len(panel.figures) + 1
        assert all(type(c).__name__ == "Image" for c in children[1:-1])
        assert "mlspec-anomaly-explorer" in children[-1]._dom_classes
    elif method == "cluster":
        assert result.labels.data.shape == (8, 8)
        assert set(np.unique(result.labels.data)) <= {0, 1, 2}
    else:
        assert result["embedding"].data.shape[:2] == (8, 8)
        assert result["embedding_2d"].data.shape == (8, 8, 2)
        assert isinstance(panel.tools[0], LatentExplorer)


def test_signal_range_reaches_the_method(small):
    panel = MLSpecPanel(small, method="denoise", epochs=2, use_signal_range=True, plot=False)
    axis = small.axes_manager.signal_axes[0]
    panel.signal_range_start, panel.signal_range_end = axis.axis[10], axis.axis[41]
    assert panel.run()
    panel.wait(60)
    assert panel.result["denoised"].data.shape == (8, 8, 32)
    panel.signal_range_start = panel.signal_range_end + 1
    assert not panel.run()
    assert panel.status == "failed" and "must be below its end" in panel.message


def test_run_twice_is_refused_and_the_first_result_kept(small):
    panel = MLSpecPanel(small, epochs=4, n_components=2, plot=False)
    wd = _wdict(panel)
    wd["run_button"].click()
    assert wd["run_button"].disabled and not wd["stop_button"].disabled
    assert panel.run() is False
    assert "Already training" in wd["message"].value
    panel.wait(60)
    assert panel.status == "done"
    assert small.learning_results.factors.shape == (64, 2)
    assert not wd["run_button"].disabled and wd["stop_button"].disabled


class _Slow:
    """Training observer that slows every epoch down and records them."""

    def __init__(self):
        self.epochs = 0
        self.started = threading.Event()

    def on_epoch_end(self, row):
        self.epochs += 1
        self.started.set()
        time.sleep(0.05)


def _run_watched(panel, observer):
    """Start a run whose worker thread also reports to ``observer``."""
    from hyperspy_mlspec.engine.progress import observe

    work = panel._work

    def watched(*args):
        with observe(observer):
            work(*args)

    panel._work = watched
    assert panel.run()


def test_stop_mid_training_keeps_best_weights_and_stores_the_result(small):
    panel = MLSpecPanel(small, epochs=500, n_components=2, plot=False)
    wd = _wdict(panel)
    slow = _Slow()
    _run_watched(panel, slow)
    assert slow.started.wait(30)
    wd["stop_button"].click()
    est = panel.wait(60)
    assert panel.status == "stopped"
    assert "stopped early, best weights kept" in wd["message"].value
    assert len(est.history_) < 500
    assert small.learning_results.factors.shape == (64, 2)


def test_closing_the_panel_stops_training_without_losing_the_result(small):
    panel = MLSpecPanel(small, method="denoise", epochs=500, plot=True)
    widgets = panel.gui(**KW)["ipywidgets"]
    slow = _Slow()
    _run_watched(panel, slow)
    assert slow.started.wait(30)
    widgets["wdict"]["close_button"].click()
    result = panel.wait(60)
    assert panel.status == "closed"
    assert result["denoised"].data.shape == small.data.shape
    assert panel.figures == []  # a closed panel draws nothing
    assert panel.run() is False and "closed" in panel.message


def test_lazy_signal(small):
    lazy = small.as_lazy()
    panel = MLSpecPanel(lazy, epochs=2, n_components=2)
    assert "Lazy signal" in panel.message
    panel.run()
    panel.wait(60)
    assert panel.status == "done", panel.message
    assert lazy._lazy
    assert lazy.learning_results.factors.shape == (64, 2)


@pytest.mark.parametrize("make, text", [
    (lambda: hs.signals.BaseSignal(np.ones((4, 5))).T, "signal dimension 0"),
    (lambda: hs.signals.Signal2D(np.ones((3, 8, 8))), "signal dimension 2"),
    (lambda: hs.signals.Signal1D(np.ones(32)), "single spectrum"),
])
def test_unusable_signal_gives_a_message_not_an_error(make, text):
    panel = MLSpecPanel(make())
    wd = _wdict(panel)
    assert text in wd["message"].value
    assert wd["run_button"].disabled
    assert panel.run() is False and panel.status == "idle"


def test_failure_in_the_method_is_shown_and_the_panel_recovers(small, tmp_path):
    panel = MLSpecPanel(small, method="embed", model_file=str(tmp_path / "none.mlspec"))
    assert panel.run() is False and "no model file" in panel.message
    (tmp_path / "bad.mlspec").write_text("not a model")
    panel.model_file = str(tmp_path / "bad.mlspec")
    assert panel.run()
    panel.wait(60)
    assert panel.status == "failed" and panel.error is not None
    assert panel.message.startswith("embed failed:")
    assert not panel.running
    panel.trait_set(method="decomposition", epochs=2, n_components=2, plot=False)
    assert panel.run()
    panel.wait(60)
    assert panel.status == "done"


def test_kernel_thread_is_free_while_training(small):
    panel = MLSpecPanel(small, epochs=500, n_components=2, plot=False)
    slow = _Slow()
    t0 = time.perf_counter()
    _run_watched(panel, slow)
    returned = time.perf_counter() - t0
    assert slow.started.wait(30)
    assert panel.running and returned < 0.5
    panel.stop()
    panel.wait(60)


def test_missing_gui_extra_names_it(small, monkeypatch):
    from hyperspy_mlspec.gui import _deps

    monkeypatch.setattr(_deps, "_installed", lambda module: False)
    with pytest.raises(ImportError, match=r"hyperspy_mlspec\[gui\]"):
        small.mlspec.gui(toolkit="ipywidgets")
    with pytest.raises(ImportError, match=r"hyperspy_mlspec\[gui\]"):
        small.mlspec.gui()


def test_core_imports_without_gui_packages():
    code = textwrap.dedent("""
        import sys
        for name in ("ipywidgets", "link_traits", "traitsui", "pyface", "ipympl"):
            sys.modules[name] = None  # import of any of them fails
        import hyperspy_mlspec
        s = hyperspy_mlspec.data.eels_map((4, 4), n_channels=32)
        try:
            s.mlspec.gui(toolkit="ipywidgets")
        except ImportError as err:
            print("ERR", err)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert out.returncode == 0, out.stderr
    assert 'ERR' in out.stdout and 'pip install "hyperspy_mlspec[gui]"' in out.stdout


def test_anomaly_explorer_threshold_outlines_regions():
    s = hyperspy_mlspec.data.eds_map((12, 12), n_channels=64, rare_phase=True,
                                     rare_fraction=0.05, random_state=0)
    found = quick_anomalies(s)
    ex = AnomalyExplorer(s, found)
    wd = ex.gui(**KW)["ipywidgets"]["wdict"]
    assert wd["threshold"].value == pytest.approx(found.threshold)
    assert ex.n_anomalous == found.n_anomalous
    ex.plot()
    # the anomaly map is the navigator; reconstruction and residual follow the cursor
    assert s._plot.navigator_plot is not None
    s.axes_manager.indices = (2, 5)
    rec, res = (line.line.get_ydata() for line in ex._lines)
    spectrum = s.inav[2, 5].data
    np.testing.assert_allclose(rec + res, spectrum, rtol=1e-5, atol=1e-4)
    low = float(np.nanpercentile(found.score.data, 50))
    wd["threshold"].value = low
    assert ex.n_anomalous == int((found.score.data > low).sum())
    expected = outline_segments(found.score.data > low,
                                s.axes_manager.navigation_axes[0].axis,
                                s.axes_manager.navigation_axes[1].axis)
    np.testing.assert_allclose(ex._outline.marker.kwargs["segments"], expected)
    assert str(ex.n_anomalous) in wd["summary"].value
    if hasattr(found.model, "expected"):
        # the spatial-context score: the dual-window model's expectation, computed on the
        # neighbourhood the window reaches, equals the one computed on the whole map
        full = found.model.expected(np.asarray(s.data, dtype=float))
        np.testing.assert_allclose(rec, full[5, 2], rtol=1e-4, atol=1e-4)
    else:
        direct = s.inav[2, 5].mlspec.reconstruct(found.model).data
        np.testing.assert_allclose(rec, direct, rtol=1e-5)


def test_anomaly_explorer_with_an_autoencoder(small):
    panel = MLSpecPanel(small, method="anomaly_map", anomaly_method="autoencoder", epochs=2,
                        n_components=2, plot=False)
    panel.run()
    found = panel.wait(60)
    assert panel.status == "done", panel.message
    ex = AnomalyExplorer(small, found)
    direct = small.inav[3, 1].mlspec.reconstruct(found.model).data
    np.testing.assert_allclose(ex.reconstruction((3, 1)), direct, rtol=1e-5)


def test_outline_of_one_pixel_is_its_four_edges():
    m = np.zeros((3, 4), bool)
    m[1, 2] = True
    seg = outline_segments(m, np.array([0.0, 2.0, 4.0, 6.0]), np.array([0.0, 1.0, 2.0]))
    assert seg.shape == (4, 2, 2)
    assert seg[..., 0].min() == 3.0 and seg[..., 0].max() == 5.0
    assert seg[..., 1].min() == 0.5 and seg[..., 1].max() == 1.5


def test_latent_explorer_selects_both_ways():
    s = hyperspy_mlspec.data.eds_map((10, 12), n_channels=64, random_state=0)
    xy = s.mlspec.embedding_2d(epochs=2, random_state=0, show_progressbar=False)
    ex = LatentExplorer(s, xy)
    wd = ex.gui(**KW)["ipywidgets"]["wdict"]
    ex.plot()
    pts = xy.data.reshape(-1, 2)
    # a ROI in the embedding selects the pixels whose point is inside it
    left, right = np.percentile(pts[:, 0], [0, 50])
    top, bottom = pts[:, 1].min() - 1, pts[:, 1].max() + 1
    ex.latent_roi.bottom, ex.latent_roi.top = bottom, top
    ex.latent_roi.left, ex.latent_roi.right = left, right
    expected = (pts[:, 0] >= left) & (pts[:, 0] <= right)
    assert wd["n_selected_pixels"].value == int(expected.sum())
    assert len(ex._markers["pixels"]) > 0
    # a ROI on the map highlights the points of its pixels
    x, y = (ax.axis for ax in s.axes_manager.navigation_axes)
    ex.map_roi.left, ex.map_roi.right = x[0], x[4] + 1e-9
    ex.map_roi.top, ex.map_roi.bottom = y[0], y[1] + 1e-9
    assert wd["n_selected_points"].value == 5 * 2
    chosen = ex._markers["chosen"].items["offsets"]
    np.testing.assert_allclose(np.sort(chosen[:, 0]),
                               np.sort(xy.data[:2, :5, 0].ravel()))
    # the cursor's pixel is marked in the embedding
    s.axes_manager.indices = (7, 3)
    np.testing.assert_allclose(ex._markers["cursor"].items["offsets"], xy.data[3, 7][None])


def test_loss_svg():
    svg = loss_svg([(1, 0, 3.0, 3.5), (1, 1, 2.0, 2.5), (2, 0, 1.0, None)])
    assert svg.count("<polyline") == 2 and svg.count("<line") == 1  # a second run starts
    assert "3 epoch(s)" in svg
