"""Estimators: scikit-learn API objects binding a model, the engine and a noise model."""

from hyperspy_mlspec.estimators.decomposition import AutoencoderDecomposition

__all__ = ["AutoencoderDecomposition"]
