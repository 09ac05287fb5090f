"""Torch modules. They know tensors only: no HyperSpy, no normalisation, no training."""

from hyperspy_mlspec.models.autoencoder import SpectralAutoencoder, default_hidden_sizes

__all__ = ["SpectralAutoencoder", "default_hidden_sizes"]
