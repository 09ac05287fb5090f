"""The masked autoencoder: pretraining (:mod:`.estimator`), its inputs (:mod:`.pool`) and
its few-label heads (:mod:`.probe`)."""

from hyperspy_mlspec.estimators.mae.estimator import NORMALIZATIONS, MaskedAutoencoder

__all__ = ["NORMALIZATIONS", "MaskedAutoencoder"]
