"""Anomaly maps, anomalous regions, latent phase maps and embeddings (public entry points).

The code lives by job in :mod:`hyperspy_mlspec.workflows` (what ``s.mlspec`` calls:
:mod:`~hyperspy_mlspec.workflows.anomaly`, :mod:`~hyperspy_mlspec.workflows.latent`,
:mod:`~hyperspy_mlspec.workflows.batch`) and in the array-only core
:mod:`hyperspy_mlspec.scoring`; this module gathers the public names in one place.
"""

from hyperspy_mlspec.scoring.latent import cluster_labels
from hyperspy_mlspec.scoring.scores import effective_dof, smoothed_mean_square, threshold_value
from hyperspy_mlspec.workflows.anomaly import (
    AnomalyRegion,
    AnomalyResult,
    anomalies,
    anomaly_map,
)
from hyperspy_mlspec.workflows.batch import anomaly_files
from hyperspy_mlspec.workflows.latent import (
    ClusterResult,
    cluster,
    embedding_2d,
    plot_embedding,
)

__all__ = [
    "AnomalyRegion",
    "AnomalyResult",
    "ClusterResult",
    "anomalies",
    "anomaly_files",
    "anomaly_map",
    "cluster",
    "cluster_labels",
    "effective_dof",
    "embedding_2d",
    "plot_embedding",
    "smoothed_mean_square",
    "threshold_value",
]
