"""Shared fixtures: small spectrum images with known clean data, progress bars off."""

import os

# Qt tests (traitsui) run offscreen on a machine without a display; set before any import
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("ETS_TOOLKIT", "qt")

import matplotlib  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

matplotlib.use("Agg")

import hyperspy.api as hs  # noqa: E402

import hyperspy_mlspec  # noqa: E402, F401  (registers s.mlspec)

hs.preferences.General.show_progressbar = False
# HyperSpy's own widgets (navigation sliders of plots) in ipywidgets only: Qt windows are
# opened by the traitsui tests alone, with toolkit="traitsui"
hs.preferences.GUIs.enable_traitsui_gui = False

# pytest -n 2 runs two workers on two cores: one torch thread each avoids oversubscription
# (measured: the demo ran 10x slower with two threads per process on a busy 2-core machine)
torch.set_num_threads(1)


def mixture_map(shape=(12, 10), n_channels=96, dose=30.0, seed=0):
    """Non-negative 3-component mixture with Poisson noise on a calibrated eV axis.

    Returns ``(signal, clean)``; the signal is an exspy EELSSpectrum.
    """
    import exspy

    rng = np.random.default_rng(seed)
    e = np.linspace(0, 1, n_channels)
    comps = np.stack([np.exp(-((e - c) ** 2) / (2 * 0.05**2)) + 0.2 for c in (0.25, 0.5, 0.75)])
    abund = rng.dirichlet(np.ones(3), size=shape)
    clean = abund @ comps
    clean *= dose / clean.mean()
    s = exspy.signals.EELSSpectrum(rng.poisson(clean).astype(np.float32))
    ax = s.axes_manager.signal_axes[0]
    ax.name, ax.units, ax.offset, ax.scale = "Energy loss", "eV", 500.0, 0.5
    for nav, name in zip(s.axes_manager.navigation_axes, ("x", "y"), strict=True):
        nav.name, nav.units, nav.scale = name, "nm", 2.0
    s.metadata.General.title = "mixture"
    return s, clean.astype(np.float32)


@pytest.fixture
def mixture():
    return mixture_map()


def spatial_score() -> bool:
    """True when anomaly_map has the spatial-context score (no training) as its default."""
    import inspect

    from hyperspy_mlspec import MLSpecNamespace

    return "method" in inspect.signature(MLSpecNamespace.anomaly_map).parameters


def quick_anomalies(s):
    """s.mlspec.anomalies() with its defaults, a short fit where the default trains."""
    kw = {} if spatial_score() else {"epochs": 3, "random_state": 0}
    return s.mlspec.anomalies(show_progressbar=False, **kw)


FAST = dict(epochs=8, random_state=0, show_progressbar=False)
