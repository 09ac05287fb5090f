"""The Qt (traitsui) panel driven with traitsui.testing, offscreen (QT_QPA_PLATFORM=offscreen,
ETS_TOOLKIT=qt are set in conftest.py before anything imports Qt)."""

import time

import matplotlib.pyplot as plt
import numpy as np
import pytest
from conftest import quick_anomalies
from pyface.api import GUI
from traits.etsconfig.api import ETSConfig
from traitsui.testing.api import (
    DisplayedText,
    IsEnabled,
    IsVisible,
    KeyClick,
    KeySequence,
    MouseClick,
    UITester,
)

import hyperspy_mlspec
from hyperspy_mlspec.gui import AnomalyExplorer, LatentExplorer, MLSpecPanel


@pytest.fixture(autouse=True)
def _qt():
    assert ETSConfig.toolkit == "qt", "conftest.py must set ETS_TOOLKIT=qt"
    yield
    plt.close("all")


@pytest.fixture
def small():
    return hyperspy_mlspec.data.eels_map((8, 8), n_channels=64, random_state=1)


def _type(tester, ui, name, text):
    field = tester.find_by_name(ui, name)
    for _ in range(8):
        field.perform(KeyClick("Backspace"))
    field.perform(KeySequence(text))
    field.perform(KeyClick("Enter"))


def _process_until(predicate, timeout=60.0):
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        GUI.process_events()
        if predicate():
            GUI.process_events()
            return
        time.sleep(0.02)
    raise AssertionError(f"condition not met after {timeout} s")


def test_namespace_gui_traitsui_returns_the_tool(small):
    widgets = small.mlspec.gui(display=False, toolkit="traitsui")
    assert set(widgets) == {"traitsui"}
    assert isinstance(widgets["traitsui"], MLSpecPanel)


def test_qt_panel_run_from_the_window(small):
    panel = MLSpecPanel(small)
    tester = UITester()
    with tester.create_ui(panel) as ui:
        assert tester.find_by_name(ui, "run_button").inspect(IsEnabled())
        assert not tester.find_by_name(ui, "stop_button").inspect(IsEnabled())
        assert not tester.find_by_name(ui, "noise").inspect(IsVisible())
        _type(tester, ui, "n_components", "3")
        _type(tester, ui, "epochs", "2")
        assert (panel.n_components, panel.epochs) == (3, 2)
        tester.find_by_name(ui, "run_button").perform(MouseClick())
        _process_until(lambda: not panel.running and panel.figures)
        assert tester.find_by_name(ui, "status").inspect(DisplayedText()) == "done"
        assert "3 components" in tester.find_by_name(ui, "message").inspect(DisplayedText())
        assert small.learning_results.factors.shape == (64, 3)
        # the live loss curve on the Qt canvas: train and validation lines
        _process_until(lambda: len(panel.loss_figure.axes[0].lines[0].get_ydata()) == 2)
        train, val = panel.loss_figure.axes[0].lines
        np.testing.assert_allclose(train.get_ydata(), [row[2] for row in panel.losses])
        np.testing.assert_allclose(val.get_ydata(),
                                   [row[3] for row in panel.losses if row[3] is not None])
        panel.method = "denoise"
        GUI.process_events()
        assert tester.find_by_name(ui, "noise").inspect(IsVisible())
        assert not tester.find_by_name(ui, "n_components").inspect(IsVisible())


def test_qt_stop_button_and_closing_the_window(small):
    from hyperspy_mlspec.engine.progress import observe

    panel = MLSpecPanel(small, epochs=500, n_components=2)
    seen = []

    class Slow:
        def on_epoch_end(self, row):
            seen.append(row)
            time.sleep(0.05)

    work = panel._work
    panel._work = lambda *a: _with(observe(Slow()), work, *a)
    tester = UITester()
    with tester.create_ui(panel) as ui:
        tester.find_by_name(ui, "run_button").perform(MouseClick())
        stop = tester.find_by_name(ui, "stop_button")
        # enabled once the Qt thread has seen the run start (enabled_when="running")
        _process_until(lambda: len(seen) >= 1 and stop.inspect(IsEnabled()))
        stop.perform(MouseClick())
        _process_until(lambda: not panel.running)
        assert panel.status == "stopped" and len(seen) < 500
        assert small.learning_results.factors.shape == (64, 2)
        tester.find_by_name(ui, "run_button").perform(MouseClick())
        _process_until(lambda: len(seen) >= 3)
    # leaving the block closes the window: the running training stops, its result is kept
    panel.wait(60)
    assert panel.status == "closed" and panel.result is not None
    assert panel.run() is False


def _with(context, fn, *args):
    with context:
        return fn(*args)


def test_qt_explorers():
    s = hyperspy_mlspec.data.eds_map((10, 10), n_channels=64, rare_phase=True,
                                     rare_fraction=0.05, random_state=0)
    found = quick_anomalies(s)
    ex = AnomalyExplorer(s, found)
    assert ex.gui(display=False, toolkit="traitsui")["traitsui"] is ex
    tester = UITester()
    with tester.create_ui(ex) as ui:
        assert "anomalous pixel" in tester.find_by_name(ui, "summary").inspect(DisplayedText())
        ex.threshold = ex.threshold_low
        GUI.process_events()
        expected = int((found.score.data > ex.threshold_low).sum())
        assert ex.n_anomalous == expected
        assert f"{expected} anomalous" in tester.find_by_name(ui, "summary").inspect(
            DisplayedText())
    xy = s.mlspec.embedding_2d(epochs=2, show_progressbar=False)
    latent = LatentExplorer(s, xy)
    with tester.create_ui(latent) as ui:
        latent.n_selected_pixels = 7
        GUI.process_events()
        assert tester.find_by_name(ui, "n_selected_pixels").inspect(DisplayedText()) == "7"
