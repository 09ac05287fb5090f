"""Anomaly scores, spatial-context models, regions and latent phase maps on arrays.

The numeric core of the anomaly and latent-map workflows (:mod:`hyperspy_mlspec.workflows`):
numpy/dask arrays and fitted models in, arrays out; nothing here imports HyperSpy.
"""

from hyperspy_mlspec.scoring.latent import cluster_labels, features
from hyperspy_mlspec.scoring.scores import (
    effective_dof,
    reconstruct,
    row_scores,
    smoothed_mean_square,
    threshold_value,
)

__all__ = [
    "cluster_labels",
    "effective_dof",
    "features",
    "reconstruct",
    "row_scores",
    "smoothed_mean_square",
    "threshold_value",
]
