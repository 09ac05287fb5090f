"""What the layers above may rely on when they are handed a fitted model.

Typed protocols instead of ``hasattr`` checks: any object satisfying them works (our
estimators, a user's own), and ``isinstance(model, FittedModel)`` says so at run time.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from hyperspy_mlspec.arrays import SpectraTable


@runtime_checkable
class FittedModel(Protocol):
    """A fitted model of spectra: ``n_features_in_`` channels in, codes out."""

    n_features_in_: int

    def transform(self, X: Any) -> Any: ...


@runtime_checkable
class Reconstructs(FittedModel, Protocol):
    """A fitted model that predicts each spectrum (what anomaly maps score against)."""

    def reconstruct(self, X: Any) -> Any: ...


@runtime_checkable
class TakesTables(Protocol):
    """A model with its own rule for bringing data onto its input grid (resampling, the
    MAE's common energy range); other models take the channels of ``signal_axis_``."""

    def prepare_table(self, table: SpectraTable) -> SpectraTable: ...
