"""Shared fixtures: small spectrum images with known clean data, progress bars off."""

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

import hyperspy.api as hs  # noqa: E402

import hyperspy_mlspec  # noqa: E402, F401  (registers s.mlspec)

hs.preferences.General.show_progressbar = False

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


FAST = dict(epochs=8, random_state=0, show_progressbar=False)
