"""The methods the training panel offers and the options each one reads.

Kept apart from :mod:`~hyperspy_mlspec.gui.panel` so that the toolkit views
(:mod:`~hyperspy_mlspec.gui.ipywidgets_ui`, :mod:`~hyperspy_mlspec.gui.traitsui_ui`) can read
them without importing the panel that imports the views.
"""

from __future__ import annotations

__all__ = ["METHODS", "METHOD_OPTIONS"]

METHODS = ("decomposition", "denoise", "anomaly_map", "cluster", "embed")
# which options each method reads (the toolkits show only these)
METHOD_OPTIONS = {
    "decomposition": ("n_components", "epochs", "random_state", "decoder", "loss",
                      "use_signal_range", "signal_range_start", "signal_range_end"),
    "denoise": ("epochs", "random_state", "noise", "spatial", "use_signal_range",
                "signal_range_start", "signal_range_end"),
    "anomaly_map": ("anomaly_method", "guard", "outer", "n_components", "epochs",
                    "random_state", "metric", "robust", "smoothing", "threshold", "k", "q",
                    "alpha"),
    "cluster": ("n_components", "epochs", "random_state", "n_clusters", "cluster_method",
                "normalize"),
    "embed": ("epochs", "random_state", "model_file"),
}
