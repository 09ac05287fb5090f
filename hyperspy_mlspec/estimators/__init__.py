"""Estimators: scikit-learn API objects binding a model, the engine and a noise model."""

from hyperspy_mlspec.estimators.decomposition import AutoencoderDecomposition
from hyperspy_mlspec.estimators.denoising import DenoisingAutoencoder
from hyperspy_mlspec.estimators.mae import MaskedAutoencoder

__all__ = ["AutoencoderDecomposition", "DenoisingAutoencoder", "MaskedAutoencoder"]
