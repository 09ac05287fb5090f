"""GUI panels for HyperSpy sessions: Jupyter (ipywidgets) and Qt (traitsui).

The tools here are traits objects decorated with HyperSpy's ``add_gui_method``, so
``tool.gui(display=True, toolkit=None)`` behaves like every HyperSpy tool and
``hs.preferences.GUIs`` picks the toolkit. Their toolkeys are declared in
``hyperspy_extension.yaml``; the widgets live in :mod:`~hyperspy_mlspec.gui.ipywidgets_ui`
and :mod:`~hyperspy_mlspec.gui.traitsui_ui`, imported only when a GUI is asked for (the
``gui`` extra: ``pip install "hyperspy_mlspec[gui]"``).

- :class:`MLSpecPanel` (``s.mlspec.gui()``): choose a method and its options, Run trains in
  a background thread with a live loss curve, a progress bar and a Stop button (the best
  weights are kept), then shows the result with HyperSpy's plots;
- :class:`AnomalyExplorer`: anomaly map as navigator, spectrum / reconstruction / residual
  at the cursor, a threshold slider that outlines the anomalous regions;
- :class:`LatentExplorer`: 2-D embedding scatter linked to the map with ROIs both ways.

Nothing here fits a model itself: every run goes through the public ``s.mlspec`` methods.
"""

from __future__ import annotations

import importlib
from typing import Any

from hyperspy_mlspec.gui._deps import GUI_EXTRA, available_toolkits, require_toolkit

__all__ = [
    "GUI_EXTRA",
    "AnomalyExplorer",
    "LatentExplorer",
    "MLSpecPanel",
    "available_toolkits",
    "require_toolkit",
]

_LAZY = {
    "MLSpecPanel": "hyperspy_mlspec.gui.panel",
    "AnomalyExplorer": "hyperspy_mlspec.gui.explorers",
    "LatentExplorer": "hyperspy_mlspec.gui.explorers",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
