"""Torch modules. They know tensors only: no HyperSpy, no normalisation, no training."""

from hyperspy_mlspec.models.autoencoder import SpectralAutoencoder, default_hidden_sizes
from hyperspy_mlspec.models.mae import (
    LoRALinear,
    MaskedSpectrumTransformer,
    inject_lora,
    merge_lora,
    unmerge_lora,
)

__all__ = ["LoRALinear", "MaskedSpectrumTransformer", "SpectralAutoencoder",
           "default_hidden_sizes", "inject_lora", "merge_lora", "unmerge_lora"]
