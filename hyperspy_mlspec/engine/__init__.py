"""Training engine shared by every estimator: one loop, noise models, data streaming.

The engine knows nothing about HyperSpy signals; it sees rows of spectra, either in memory
(:class:`ArraySource`) or streamed from a dask array (:class:`DaskSource`).
"""

from hyperspy_mlspec.engine.device import resolve_device
from hyperspy_mlspec.engine.losses import gaussian_loss, poisson_deviance
from hyperspy_mlspec.engine.normalization import Normalizer
from hyperspy_mlspec.engine.pool import PoolSource
from hyperspy_mlspec.engine.sources import ArraySource, DaskSource, RowSource, as_source
from hyperspy_mlspec.engine.trainer import TrainResult, train

__all__ = [
    "ArraySource",
    "DaskSource",
    "Normalizer",
    "PoolSource",
    "RowSource",
    "TrainResult",
    "as_source",
    "gaussian_loss",
    "poisson_deviance",
    "resolve_device",
    "train",
]
