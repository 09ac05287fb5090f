"""Masked autoencoder: pretrain on a lab's unlabelled spectra, embed any signal, learn from
a few labels.

:class:`MaskedAutoencoder` pretrains a 1-D patch transformer
(:class:`~hyperspy_mlspec.models.MaskedSpectrumTransformer`) on a pool of signals, arrays
and files of different channel counts and calibrations, then gives an embedding per spectrum
(:meth:`~MaskedAutoencoder.transform`, ``s.mlspec.embed``) and trains few-label heads on it
(:meth:`~MaskedAutoencoder.fit_probe`: a linear probe or LoRA adapters).

How spectra reach the model
---------------------------
Every spectrum is resampled (linear interpolation, :func:`hyperspy_mlspec.axis.alignment`)
onto ``n_channels`` evenly spaced bins spanning either its own signal range (default: the
model learns spectral *shapes*, whatever the calibration, so EELS, EDS, Raman and XRD can
share one pretraining pool) or a common ``signal_range`` (then positions are absolute: pint
converts eV and keV; incompatible units are refused). It is then normalised per spectrum
(``normalization``): ``"log"`` (``log1p`` of counts, then zero mean and unit variance per
spectrum: dose and thickness multiply a spectrum, which becomes an offset in log space and
is removed, while small edges stay visible next to a decade-spanning background) or
``"standard"`` (zero mean, unit variance: real-valued, e.g. background-subtracted, data).
``"auto"`` picks ``"log"`` when every item of the pool is non-negative.

The embedding
-------------
The encoder gives one token per patch; ``pooling`` turns them into one vector per spectrum.
``"segments"`` (default) averages the tokens of ``n_segments`` contiguous groups of patches
(energy windows: 8 windows of 8 patches for the default 64 patches) and concatenates them,
``n_segments * embed_dim`` features; ``"mean"`` averages all tokens, ``embed_dim`` features.
Where along the energy axis a feature sits is what tells an oxidation state (a 1-2 eV
chemical shift) or a peak area apart, and the global mean blurs it: in
``benchmarks/bench_mae.py`` the same pretrained encoder gave a 100-label linear probe about
8 accuracy points and 30 R^2 points more with 8 segments than with the mean. Pooling has
no weights, so it is fixed when the model is built and saved with it; model files written
before this option load with ``"mean"``, the pooling they were fitted with.
"""

from __future__ import annotations

import copy
import functools
import math
import numbers
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import TransformerMixin
from sklearn.utils.validation import check_is_fitted

from hyperspy_mlspec.arrays import (
    AxisInfo,
    SpectraTable,
    alignment,
    as_tables,
    convert,
    parse_position,
)
from hyperspy_mlspec.engine import ArraySource, DaskSource, PoolSource, resolve_device, train
from hyperspy_mlspec.engine.sources import RowSource, validation_rows
from hyperspy_mlspec.estimators.base import SpectralEstimator, is_dask
from hyperspy_mlspec.models.mae import POOLINGS, MaskedSpectrumTransformer, inject_lora
from hyperspy_mlspec.persistence import register_model

NORMALIZATIONS = ("auto", "log", "standard")
_ARCH = ("n_channels", "patch_size", "embed_dim", "depth", "heads", "decoder_dim",
         "decoder_depth", "decoder_heads")
_LORA_VALIDATION = 0.2  # labels held out to stop LoRA training (with >= 50 labels)


@dataclass
class _Item:
    """One entry of the pretraining pool: its rows and what was done to them."""

    source: RowSource
    transform: Callable[[np.ndarray], np.ndarray] | None
    record: dict


class _ProbeNet(torch.nn.Module):
    """Frozen (or LoRA-adapted) encoder + standardisation + linear head.

    Classification outputs logits; regression outputs values in the units of ``y``.
    """

    def __init__(self, encoder: MaskedSpectrumTransformer, n_out: int) -> None:
        super().__init__()
        d = encoder.embedding_dim  # the pooled embedding (see MaskedSpectrumTransformer.pool)
        self.encoder = encoder
        self.head = torch.nn.Linear(d, n_out)
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("scale", torch.ones(d))
        self.register_buffer("y_mean", torch.zeros(n_out))
        self.register_buffer("y_std", torch.ones(n_out))

    @torch.no_grad()
    def set_head(self, coef, intercept, mean, scale, y_mean, y_std) -> None:
        """Load a linear head fitted outside torch (numpy arrays)."""
        for tensor, value in ((self.head.weight, coef), (self.head.bias, intercept),
                              (self.mean, mean), (self.scale, scale), (self.y_mean, y_mean),
                              (self.y_std, y_std)):
            tensor.copy_(torch.as_tensor(np.asarray(value), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (self.encoder.embed(x) - self.mean) / self.scale
        return self.head(z)

    def output(self, x: torch.Tensor, task: str) -> torch.Tensor:
        out = self(x)
        return out if task == "classification" else out * self.y_std + self.y_mean


def _as_list(X: Any) -> list:
    if isinstance(X, (list, tuple)):
        if X and isinstance(X[0], (list, tuple)) and X[0] and isinstance(
                X[0][0], numbers.Number):
            return [np.asarray(X)]  # a nested list of numbers is one array
        return list(X)
    return [X]


def _title(t: SpectraTable) -> str:
    return t.name.strip("'")


@register_model
class MaskedAutoencoder(TransformerMixin, SpectralEstimator):
    """Masked autoencoder for spectra (He et al. 2022), with few-label heads.

    Pretraining (:meth:`fit`) hides ``mask_ratio`` of the patches of each spectrum and
    learns to predict them from the rest; the encoder then gives a vector per spectrum
    (:meth:`transform`; the encoder outputs of all patches, nothing masked, no CLS token,
    averaged per energy segment: ``pooling``). :meth:`fit_probe` trains a linear probe or
    LoRA adapters plus a linear head on a few labelled spectra; :meth:`predict` /
    :meth:`predict_proba` apply it.

    Parameters
    ----------
    n_channels
        Bins every spectrum is resampled onto; a multiple of ``patch_size``.
    patch_size
        Bins per patch (token): 2048 / 32 gives 64 patches.
    mask_ratio
        Fraction of patches hidden during pretraining.
    embed_dim, depth, heads
        Encoder width, blocks and attention heads.
    decoder_dim, decoder_depth, decoder_heads
        The lighter decoder's width, blocks and heads.
    norm_pix_loss
        Predict per-patch standardised bins (the MAE paper's option).
    pooling
        How the encoder's patch tokens become the embedding: ``"segments"`` (mean per
        contiguous group of patches, concatenated: ``n_segments * embed_dim`` features that
        keep where along the energy axis a feature is, e.g. a chemical shift) or ``"mean"``
        (over all patches, ``embed_dim`` features). See "The embedding" in the module
        docstring.
    n_segments
        Segments of ``"segments"`` pooling: an integer up to the number of patches
        (unequal numbers of patches per segment differ by at most one) or ``"auto"`` (8, or
        every patch when there are fewer).
    normalization
        Per-spectrum normalisation: ``"log"``, ``"standard"`` or ``"auto"`` (see the module
        docstring).
    signal_range
        None: each spectrum is resampled over its own signal range. ``(start, end)``: over
        this range, as numbers (in the units of the first calibrated signal of the pool) or
        strings/pint quantities (``("0.4 keV", "0.9 keV")``), converted to each signal's
        units; signals whose units cannot be converted are refused.
    epochs
        Passes over the pool, or ``"auto"`` (about 2000 optimiser steps, 10-200 epochs);
        early stopping on a held-out split often ends sooner.
    batch_size
        Spectra per minibatch or ``"auto"`` (n/8 clipped to 8-256).
    learning_rate, weight_decay
        Adam settings.
    validation_fraction
        Fraction of spectra held out for early stopping (none below 160 spectra).
    patience
        Epochs without improvement before stopping; None trains for all ``epochs``.
    partial_fit_epochs
        Passes over the pool per :meth:`partial_fit` call.
    checkpoint
        Path of a model file written after every epoch (weights, optimizer state, history;
        a normal ``.mlspec`` file). ``fit(..., resume=True)`` continues from it.
    device
        ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``...
    random_state
        Seed of weights, masks and batch order.
    show_progressbar
        None follows ``hs.preferences.General.show_progressbar``.

    Attributes
    ----------
    module_ : MaskedSpectrumTransformer
        The pretrained network.
    pool_ : list of dict
        One record per pretraining item: ``name``, ``kind`` (signal, array, file),
        ``n_spectra``, ``n_channels`` (original), ``range``, ``units``, ``resampled``,
        ``lazy``.
    normalization_ : str
        The normalisation used (``"log"`` or ``"standard"``).
    signal_range_ : list or None
        ``[start, end, units]`` of a common range, None for per-spectrum ranges.
    history_ : list of dict
        Pretraining loss per epoch.
    probe_ : dict or None
        The few-label head (``head``, ``task``, ``classes``, ...), after :meth:`fit_probe`.

    Examples
    --------
    >>> from hyperspy_mlspec.data import eels_map
    >>> s = eels_map((16, 16), n_channels=256)
    >>> mae = MaskedAutoencoder(256, 16, embed_dim=32, depth=1, decoder_dim=16,
    ...                         decoder_depth=1, heads=2, decoder_heads=2, epochs=2,
    ...                         random_state=0, show_progressbar=False).fit(s)
    >>> mae.transform(s).shape  # 16 patches in 8 segments of 32 features
    (256, 256)
    """

    def __init__(self, n_channels: int = 2048, patch_size: int = 32, *,
                 mask_ratio: float = 0.75, embed_dim: int = 128, depth: int = 4,
                 heads: int = 4, decoder_dim: int = 64, decoder_depth: int = 2,
                 decoder_heads: int = 4, norm_pix_loss: bool = False,
                 pooling: str = "segments", n_segments: int | str = "auto",
                 normalization: str = "auto", signal_range=None,
                 epochs: int | str = "auto", batch_size: int | str = "auto",
                 learning_rate: float = 1e-3, weight_decay: float = 0.0,
                 validation_fraction: float = 0.05, patience: int | None = 10,
                 partial_fit_epochs: int = 1, checkpoint: str | os.PathLike | None = None,
                 device: str = "auto", random_state=None,
                 show_progressbar: bool | None = None) -> None:
        self.n_channels = n_channels
        self.patch_size = patch_size
        self.mask_ratio = mask_ratio
        self.embed_dim = embed_dim
        self.depth = depth
        self.heads = heads
        self.decoder_dim = decoder_dim
        self.decoder_depth = decoder_depth
        self.decoder_heads = decoder_heads
        self.norm_pix_loss = norm_pix_loss
        self.pooling = pooling
        self.n_segments = n_segments
        self.normalization = normalization
        self.signal_range = signal_range
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.partial_fit_epochs = partial_fit_epochs
        self.checkpoint = checkpoint
        self.device = device
        self.random_state = random_state
        self.show_progressbar = show_progressbar

    # -- parameters -------------------------------------------------------------------------
    def _check_params(self) -> None:
        for name in _ARCH + ("partial_fit_epochs",):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Integral) and value >= 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_channels % self.patch_size:
            raise ValueError(f"n_channels={self.n_channels} must be a multiple of "
                             f"patch_size={self.patch_size} (e.g. 2048 and 32: 64 patches)")
        if self.n_channels // self.patch_size < 2:
            raise ValueError("n_channels // patch_size must give at least 2 patches")
        if self.embed_dim % self.heads or self.decoder_dim % self.decoder_heads:
            raise ValueError("embed_dim must be divisible by heads and decoder_dim by "
                             "decoder_heads")
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {self.mask_ratio!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.pooling == "segments":
            n = self.n_segments
            if n != "auto" and not (isinstance(n, numbers.Integral) and not isinstance(
                    n, bool) and 1 <= n <= self.n_patches):
                raise ValueError(f"n_segments must be 'auto' or an integer from 1 to the "
                                 f"{self.n_patches} patches of the model, got {n!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, "
                             f"got {self.normalization!r}")
        self._check_training_params()
        if self.signal_range is not None and len(self.signal_range) != 2:
            raise ValueError(f"signal_range must be (start, end), got {self.signal_range!r}")

    @property
    def n_patches(self) -> int:
        """Patches (tokens) per spectrum."""
        return self.n_channels // self.patch_size

    def _build_module(self, n_features: int) -> MaskedSpectrumTransformer:
        return MaskedSpectrumTransformer(
            self.n_channels, self.patch_size, embed_dim=self.embed_dim, depth=self.depth,
            heads=self.heads, decoder_dim=self.decoder_dim, decoder_depth=self.decoder_depth,
            decoder_heads=self.decoder_heads, mask_ratio=self.mask_ratio,
            norm_pix_loss=self.norm_pix_loss, input_transform=self.normalization_,
            pooling=self.pooling, n_segments=self.n_segments)

    @property
    def n_embedding(self) -> int:
        """Features per spectrum of :meth:`transform` (``n_segments * embed_dim`` for
        segment pooling, ``embed_dim`` for the mean), for a fitted model."""
        check_is_fitted(self, "module_")
        return int(self.module_.embedding_dim)

    def _step_loss(self):
        module = self.module_

        def step(x: torch.Tensor, training: bool) -> torch.Tensor:
            return module(x)[0]
        return step

    def _epochs(self, n_rows: int, batch_size: int) -> int:
        if self.epochs == "auto":
            steps_per_epoch = max(1, math.ceil(n_rows / batch_size))
            return int(np.clip(math.ceil(2000 / steps_per_epoch), 10, 200))
        return int(self.epochs)

    # -- the pool ---------------------------------------------------------------------------
    def _range_for(self, axis: AxisInfo, name: str) -> tuple[float, float]:
        """``(start, end)`` of the resampling grid of a spectrum on ``axis``."""
        lo_data, hi_data = float(axis.values.min()), float(axis.values.max())
        rng = getattr(self, "signal_range_", None)
        if rng is None:
            return lo_data, hi_data
        lo, hi, units = rng
        if axis.units is None:
            raise ValueError(f"{name}: signal_range={self.signal_range!r} needs a calibrated "
                             "signal axis, but this one has no units. Set the axis units "
                             "(s.axes_manager[-1].units = 'eV') or drop signal_range.")
        try:
            lo, hi = (float(v) for v in convert([lo, hi], units, axis.units))
        except ValueError:
            raise ValueError(
                f"{name}: its signal axis is in {axis.units!r}, which cannot be converted to "
                f"the pool's signal_range units {units!r}. Pretrain separately on signals "
                "of comparable units, or use signal_range=None (each spectrum over its own "
                "range).") from None
        return lo, hi

    def _resolve_range(self, tables: list[SpectraTable]) -> None:
        """Fix ``signal_range_`` = ``[start, end, units]`` from the parameter and the pool."""
        if self.signal_range is None:
            self.signal_range_ = None
            return
        units = next((t.axis.units for t in tables if t.axis.units is not None), None)
        if units is None:
            raise ValueError("signal_range needs calibrated signals (with axis units) in the "
                             "pool; none has units. Use signal_range=None.")
        lo, hi = (parse_position(v, units) for v in self.signal_range)
        if lo >= hi:
            raise ValueError(f"signal_range start {lo} is not below its end {hi}")
        self.signal_range_ = [float(lo), float(hi), units]

    def _resampler(self, axis: AxisInfo, name: str):
        """``(resample function or None, target axis)`` for spectra on ``axis``."""
        if axis.size < self.n_patches:
            raise ValueError(
                f"{name} has {axis.size} channels, fewer than the {self.n_patches} patches of "
                f"the model (n_channels={self.n_channels}, patch_size={self.patch_size}): "
                "resampling it would invent the spectral detail the model looks at. Use "
                "signals with more channels, or a model with fewer patches (smaller "
                "n_channels or larger patch_size).")
        lo, hi = self._range_for(axis, name)
        units = axis.units or "channel"  # same placeholder on both sides: no pint involved
        target = AxisInfo(axis.name, units, np.linspace(lo, hi, self.n_channels))
        try:
            fn = alignment(AxisInfo(axis.name, units, axis.values), target)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        return fn, target

    def _grid(self, t: SpectraTable):
        """``(t restricted to the common signal_range, resampling function or None, the
        model's grid)``: how ``t`` reaches the model."""
        rng = getattr(self, "signal_range_", None)
        if rng is not None:  # keep only channels in (a half-step around) the common range
            if t.axis.units is None and t.reassemble is None:
                raise ValueError(f"{t.name}: an array has no energy axis to apply "
                                 "signal_range to; wrap it in a HyperSpy signal with a "
                                 "calibrated axis, or use signal_range=None.")
            lo, hi = self._range_for(t.axis, t.name)
            values = t.axis.values
            half = 0.5 * float(np.median(np.abs(np.diff(values)))) if values.size > 1 else 0.0
            keep = np.flatnonzero((values >= lo - half) & (values <= hi + half))
            if keep.size < 2:
                raise ValueError(f"{t.name} covers {values.min():.4g}-{values.max():.4g} "
                                 f"{t.axis.units}, outside signal_range {lo:.4g}-{hi:.4g}")
            channels = keep if t.channels is None else t.channels[keep]
            t = t.with_rows(t.rows[:, keep], AxisInfo(t.axis.name, t.axis.units,
                                                      values[keep]), channels)
        fn, target = self._resampler(t.axis, t.name)
        return t, fn, target

    def prepare_table(self, table: SpectraTable) -> SpectraTable:
        """``table`` as this model sees it: on its grid (resampled like the pretraining
        data). Used for every input, so ``s.mlspec.cluster(model=mae)`` and friends
        resample like :meth:`transform`."""
        check_is_fitted(self, "module_")
        t, fn, target = self._grid(table)
        return t.with_rows(t.rows if fn is None else t.map_rows(fn, self.n_channels), target,
                           t.channels if fn is None else None)

    def _items(self, X) -> list[_Item]:
        tables: list[SpectraTable] = []
        for k, obj in enumerate(_as_list(X)):
            name = f"item {k}"
            if is_dask(obj) or isinstance(obj, np.ndarray):
                name += f" (array {tuple(obj.shape)})"
            tables.extend(as_tables(obj, name))
        if not tables:
            raise ValueError("no spectra to fit: the list of signals is empty")
        self._resolve_range(tables)
        items = []
        for t in tables:
            kind = "array" if t.reassemble is None else (
                "signal" if t.name.startswith("item ") else "file")
            restricted, fn, _ = self._grid(t)
            if t.rows.shape[0] < 1:
                raise ValueError(f"{t.name} holds no spectra")
            span = restricted.axis.values
            rows = restricted.rows
            source = DaskSource(rows) if restricted.lazy else ArraySource(rows)
            record = {"name": t.name, "kind": kind, "n_spectra": int(rows.shape[0]),
                      "n_channels": int(t.axis.size),
                      "range": [float(span.min()), float(span.max())],
                      "units": t.axis.units,
                      "resampled": bool(fn is not None or t.axis.size != self.n_channels),
                      "lazy": bool(restricted.lazy)}
            items.append(_Item(source, fn, record))
        return items

    def _pool(self, X, seed: int) -> tuple[PoolSource, list[dict]]:
        items = self._items(X)
        pool = PoolSource([it.source for it in items], [it.transform for it in items],
                          n_features=self.n_channels, seed=seed)
        return pool, [it.record for it in items]

    def _block_check(self):
        def check(block: np.ndarray) -> None:
            if not np.isfinite(block).all():
                raise ValueError(
                    "Input contains NaN or infinity. Remove or mask those spectra (crop the "
                    "signal, or replace the values with np.nan_to_num) first.")
        return check

    # -- pretraining ------------------------------------------------------------------------
    def fit(self, X, y=None, *, resume: bool = False):
        """Pretrain on a pool of spectra.

        Parameters
        ----------
        X
            One item or a list of items: HyperSpy signals (any navigation shape, lazy ones
            are streamed), 2-D numpy/dask arrays ``(n_spectra, n_channels)``, or file paths
            and globs (``"maps/*.hspy"``, loaded lazily with ``hs.load(lazy=True)``). Items
            may differ in channel count and calibration (see the module docstring).
        y
            Ignored.
        resume
            Continue an earlier training instead of starting anew: from this fitted
            estimator, or else from the ``checkpoint`` file when it exists (the optimizer
            state and history are restored; training runs up to ``epochs`` in total).
            Without an earlier state training starts from scratch.

        Returns
        -------
        self
        """
        self._check_params()
        if resume and not hasattr(self, "module_") and self.checkpoint is not None \
                and Path(self.checkpoint).is_file():
            self._load_checkpoint(self.checkpoint)
        continuing = resume and hasattr(self, "module_")
        seed = self._seed() + (self.n_epochs_ if continuing else 0)
        pool, records = self._pool(X, seed)
        if not continuing:
            self._initialise_pool(pool, seed)
        else:
            self._drop_probe()
        batch_size = self._batch_size(pool.n_rows)
        if self.batch_size != "auto" and batch_size > pool.n_rows:
            raise ValueError(f"batch_size={batch_size} is larger than the number of spectra "
                             f"({pool.n_rows}): use a smaller batch_size or batch_size='auto'.")
        fraction = self.validation_fraction if pool.n_rows * self.validation_fraction >= 8 \
            else 0.0
        pool.validation_fraction = fraction
        total = self._epochs(pool.count("train"), batch_size)
        if not continuing:
            self.epochs_ = total
        remaining = total - (self.n_epochs_ if continuing else 0)
        self.pool_ = records
        if remaining <= 0:
            warnings.warn(f"nothing to resume: {self.n_epochs_} of {total} epochs are done; "
                          "raise epochs to train longer", stacklevel=2)
            return self
        self._train(pool, remaining, batch_size, seed, self.patience if fraction > 0 else None)
        return self

    def partial_fit(self, X, y=None):
        """Continue pretraining for ``partial_fit_epochs`` passes over ``X`` (the first
        call builds the model).

        Returns
        -------
        self
        """
        self._check_params()
        first = not hasattr(self, "module_")
        seed = self._seed() + getattr(self, "n_epochs_", 0)
        pool, records = self._pool(X, seed)
        if first:
            self._initialise_pool(pool, seed)
            self.epochs_ = 0
        else:
            self._drop_probe()
        batch_size = min(self._batch_size(pool.n_rows), pool.n_rows)
        self.pool_ = records
        self._train(pool, int(self.partial_fit_epochs), batch_size, seed, patience=None)
        self.epochs_ = self.n_epochs_
        return self

    def _drop_probe(self) -> None:
        """Further pretraining changes the encoder: a head fitted on it is no longer valid."""
        if getattr(self, "probe_", None) is not None:
            warnings.warn("continuing pretraining discards the few-label head; call "
                          "fit_probe again afterwards", stacklevel=3)
        self.probe_, self._probe_net = None, None

    def _initialise_pool(self, pool: PoolSource, seed: int) -> None:
        rng = np.random.default_rng(seed)
        norm = self.normalization
        if norm == "auto":
            # a few rows of every item (one block each): counts -> log, signed data -> standard
            nonneg = True
            for src, fn in zip(pool.sources, pool.transforms, strict=True):
                sample = src.sample(64, rng)
                if fn is not None:
                    sample = fn(sample)
                self._block_check()(sample)
                nonneg &= bool(sample.size == 0 or sample.min() >= 0)
            norm = "log" if nonneg else "standard"
        self.normalization_ = norm
        self.device_ = str(resolve_device(self.device))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.module_ = self._build_module(self.n_channels).to(self.device_)
        self.n_features_in_ = self.n_channels
        self._optimizer = None
        self.history_ = []
        self.n_epochs_ = 0
        self.signal_axis_ = None
        self.probe_ = None
        self._probe_net = None

    # -- checkpoints ------------------------------------------------------------------------
    def _epoch_end_callback(self):
        from hyperspy_mlspec.engine.distributed import is_main_process

        # under torchrun all processes hold the same weights: one of them writes the file
        if self.checkpoint is None or not is_main_process():
            return None
        pending: list[dict] = []

        def save_checkpoint(row: dict) -> None:
            pending.append(dict(row, epoch=self.n_epochs_ + len(pending)))
            history, n_epochs = self.history_, self.n_epochs_
            self.history_, self.n_epochs_ = history + pending, n_epochs + len(pending)
            try:
                self._save_optimizer = True
                tmp = Path(str(self.checkpoint) + ".tmp")
                self.save(tmp)
                os.replace(tmp, self.checkpoint)  # never leave a half-written checkpoint
            finally:
                self._save_optimizer = False
                self.history_, self.n_epochs_ = history, n_epochs
        return save_checkpoint

    def _load_checkpoint(self, path) -> None:
        from hyperspy_mlspec.persistence import load_model

        other = load_model(path)
        if not isinstance(other, MaskedAutoencoder):
            raise ValueError(f"{path} holds a {type(other).__name__}, not a MaskedAutoencoder")
        self._adopt(other, str(path))

    def _adopt(self, other: MaskedAutoencoder, where: str) -> None:
        """Take the fitted state of ``other`` (same architecture) into this estimator."""
        diff = {k: (getattr(other, k), getattr(self, k)) for k in _ARCH
                if getattr(other, k) != getattr(self, k)}
        if diff:
            desc = ", ".join(f"{k}={a} (this estimator: {b})" for k, (a, b) in diff.items())
            raise ValueError(f"{where} holds a model of another shape: {desc}. Create the "
                             "estimator with the checkpoint's parameters, or start a new "
                             "training (resume=False).")
        for key, value in vars(other).items():
            # the optimizer keeps pointing at other.module_'s parameters, adopted here too
            if key.endswith("_") and not key.startswith("__") or key in (
                    "_optimizer", "_probe_net"):
                setattr(self, key, value)
        # pooling plays no part in pretraining: keep this estimator's choice
        self.module_.set_pooling(self.pooling, self.n_segments)

    # -- embeddings -------------------------------------------------------------------------
    def _apply_numpy(self, X: np.ndarray, fn, batch: int = 512) -> np.ndarray:
        return super()._apply_numpy(X, fn, batch=batch)

    @staticmethod
    def _check_finite(x: torch.Tensor) -> None:
        if not torch.isfinite(x).all():
            raise ValueError("Input contains NaN or infinity: exclude those spectra "
                             "(navigation_mask) or replace the values first.")

    # inference methods: _map_rows ships them to dask workers by name, with the weights
    def _embed_tensor(self, x: torch.Tensor) -> torch.Tensor:
        self._check_finite(x)
        return self.module_.embed(x)

    def _probe_tensor(self, x: torch.Tensor, what: str = "predict") -> torch.Tensor:
        self._check_finite(x)
        task = self.probe_["task"]
        out = self._probe_net.output(x, task)
        if task != "classification":
            return out
        proba = torch.softmax(out, dim=1)
        if what == "predict_proba":
            return proba
        return proba.argmax(1, keepdim=True).float()

    def _table(self, X, navigation_mask=None) -> SpectraTable:
        """One table of ``X`` (array, signal...) on the model's grid."""
        check_is_fitted(self, "module_")
        tables = as_tables(X, "X", navigation_mask)
        if len(tables) != 1:
            raise ValueError(f"X holds {len(tables)} signals; give one signal or array")
        return self.prepare_table(tables[0])

    def transform(self, X, *, navigation_mask=None):
        """Embedding of every spectrum: ``(n_spectra, n_embedding)`` (see ``pooling``).

        Parameters
        ----------
        X
            Array ``(n_spectra, channels)`` (numpy, or dask: lazy out) of any channel
            count, or a HyperSpy signal (rows in navigation array order; resampled like
            the pretraining data).
        navigation_mask
            Signals only: True excludes a pixel (it is left out of the rows).

        Returns
        -------
        ndarray or dask array
        """
        return self._map_rows(self._table(X, navigation_mask).rows, self._embed_tensor,
                              self.n_embedding)

    def embed(self, signal, navigation_mask=None):
        """Embedding per pixel as a Signal1D (signal axis ``"embedding"`` of
        :attr:`n_embedding` features: segment after segment for ``pooling="segments"``).

        Parameters
        ----------
        signal
            Any HyperSpy signal with one signal dimension; lazy in gives lazy out.
        navigation_mask
            True excludes a pixel (its embedding is NaN).

        Returns
        -------
        hyperspy.signals.Signal1D
            Navigation axes of ``signal``; recorded in ``metadata.MLSpec``.
        """
        t = self._table(signal, navigation_mask)
        codes = self._map_rows(t.rows, self._embed_tensor, self.n_embedding)
        return t.vectors(codes, f"MAE embedding of {_title(t)}", "embedding",
                         operation="embed", model=type(self).__name__,
                         embed_dim=int(self.embed_dim), pooling=self.module_.pooling,
                         n_segments=int(self.module_.n_segments),
                         n_channels=int(self.n_channels), normalization=self.normalization_,
                         signal_range=self.signal_range_, n_epochs=int(self.n_epochs_))

    # -- few-label heads --------------------------------------------------------------------
    def _labelled(self, X, y, navigation_mask) -> tuple[np.ndarray, np.ndarray]:
        """Labelled rows (numpy, on the model grid) and their targets."""
        t = self._table(X, navigation_mask)
        rows = t.rows
        if is_dask(rows):
            rows = rows.compute()  # only the labelled pixels: small
        rows = np.asarray(rows, dtype=np.float32)
        if hasattr(y, "axes_manager"):
            y = y.data
        if hasattr(y, "compute"):
            y = y.compute()
        y = np.asarray(y)
        n = len(rows)
        if t.reassemble is not None and y.shape[:len(t.nav_shape)] == t.nav_shape:
            # navigation-shaped labels (checked first: a 100x100 map with 100 labelled
            # pixels must not be read as 100 labels of 100 targets)
            y = y.reshape((t.n_nav,) + y.shape[len(t.nav_shape):])
            if t.nav_index is not None:
                y = y[t.nav_index]
        elif y.ndim in (1, 2) and y.shape[0] == n:
            pass
        else:
            where = (f"navigation_mask selects {n} of the {t.n_nav} pixels"
                     if t.nav_index is not None else f"X holds {n} spectra")
            raise ValueError(f"y has shape {y.shape} but {where}: give one label per labelled "
                             "spectrum"
                             + (f", or a navigation-shaped array {t.nav_shape}"
                                if t.reassemble is not None else ""))
        if n < 2:
            raise ValueError(f"at least 2 labelled spectra are needed, got {n}")
        return rows, y

    def fit_probe(self, X, y, *, head: str = "linear", task: str = "auto",
                  navigation_mask=None, rank: int = 4, lora_alpha: float = 8.0,
                  lora_targets: Sequence[str] = ("q", "v"), C: float | str = "auto",
                  epochs: int | str = "auto", learning_rate: float = 1e-3,
                  random_state=None):
        """Train a few-label head on the frozen (``"linear"``) or adapted (``"lora"``) encoder.

        Parameters
        ----------
        X
            Labelled spectra: an array ``(n, channels)``, or a signal whose
            ``navigation_mask`` (True = excluded, as everywhere in hyperspy_mlspec) leaves
            the labelled pixels.
        y
            One label/value per labelled spectrum (``(n,)``, or ``(n, k)`` for several
            regression targets), or a navigation-shaped array/signal from which the
            labelled pixels are taken.
        head
            ``"linear"``: logistic regression (classification) or ridge regression with
            cross-validated strength (regression) on standardised embeddings.
            ``"lora"``: the linear probe (fitted on the labels not held out), then LoRA
            adapters of rank ``rank`` on the ``lora_targets`` attention projections of
            every encoder block, trained with the engine through that fixed head
            (cross-entropy or MSE on standardised targets; 20% of the labels held out for
            early stopping when there are at least 50, the untrained start being a
            candidate too), then the head refitted on all labels on the adapted encoder.
        task
            ``"classification"``, ``"regression"`` or ``"auto"`` (classification for
            integer, boolean or integer-valued labels, else regression).
        navigation_mask
            Signals only (see ``X``).
        rank, lora_alpha, lora_targets
            LoRA rank, scale (update ``alpha / rank * B A``) and wrapped projections
            (subset of ``("q", "k", "v", "out")``).
        C
            Inverse L2 strength of the logistic regression, or ``"auto"``: chosen by
            stratified cross-validation on the labels (up to 5 folds, one value per decade
            from 1e-3 to 1e3; ``C=1`` when a class has a single label). The right strength
            depends on the embedding width (``n_segments * embed_dim`` features from 100
            labels) and on the labels, so it is not fixed; regression cross-validates its
            ridge strength the same way.
        epochs
            LoRA training passes, or ``"auto"`` (about 300 optimiser steps, 20-200 epochs).
        learning_rate
            Adam learning rate of the LoRA head.
        random_state
            Seed (default: the estimator's).

        Returns
        -------
        self
        """
        check_is_fitted(self, "module_")
        if head not in ("linear", "lora"):
            raise ValueError(f"head must be 'linear' or 'lora', got {head!r}")
        if task not in ("auto", "classification", "regression"):
            raise ValueError(f"task must be 'auto', 'classification' or 'regression', "
                             f"got {task!r}")
        if C != "auto" and not (isinstance(C, numbers.Real) and C > 0):
            raise ValueError(f"C must be a positive number or 'auto', got {C!r}")
        rows, y = self._labelled(X, y, navigation_mask)
        if not np.issubdtype(y.dtype, np.number) and y.dtype != bool:
            raise ValueError(f"y must hold numbers (dtype {y.dtype}); encode class names as "
                             "integers, e.g. with np.unique(y, return_inverse=True)")
        y = y.astype(np.float64)
        if not np.isfinite(y).all():
            raise ValueError("y contains NaN or infinity: select only labelled spectra "
                             "(navigation_mask) or fill the labels")
        if task == "auto":
            task = "classification" if y.ndim == 1 and np.all(y == np.round(y)) \
                else "regression"
        seed = self._seed() if random_state is None else int(random_state)
        emb = self._apply_numpy(rows, self._embed_tensor).astype(np.float64)
        mean, scale = emb.mean(0), emb.std(0)
        scale = np.where(scale > 1e-8, scale, 1.0)
        z = (emb - mean) / scale
        info: dict[str, Any] = {"head": head, "task": task, "n_labels": int(len(rows))}
        # LoRA holds out labels for early stopping: the linear probe that starts it must not
        # see them, or the held-out loss is optimistic from the start and training stalls
        fraction = _LORA_VALIDATION if head == "lora" and len(rows) >= 50 else 0.0
        seen = ~validation_rows(np.arange(len(rows)), fraction, seed)
        if task == "classification":
            if y.ndim != 1:
                raise ValueError(f"classification needs one label per spectrum, y has shape "
                                 f"{y.shape}")
            classes, target = np.unique(y, return_inverse=True)
            if np.all(classes == np.round(classes)):
                classes = classes.astype(np.int64)  # integer labels give integer maps
            if len(classes) < 2:
                raise ValueError(f"y holds a single class ({classes[0]:g}): a classifier needs "
                                 "labelled spectra of at least two classes")
            if len(np.unique(target[seen])) < len(classes):
                seen[:] = True  # a class only among held-out labels: use them all
            y_mean, y_std = np.zeros(len(classes)), np.ones(len(classes))
            info["classes"] = classes.tolist()
            n_out = len(classes)
        else:
            y2 = y.reshape(len(y), -1)
            y_mean, y_std = y2.mean(0), y2.std(0)
            y_std = np.where(y_std > 0, y_std, 1.0)
            target = (y2 - y_mean) / y_std
            info["n_targets"] = int(y2.shape[1])
            info["target_shape"] = list(y.shape[1:])
            n_out = y2.shape[1]
        coef, intercept, info["strength"] = self._linear_head(task, z[seen], target[seen], C)
        encoder = self.module_
        if head == "lora":
            rank = int(rank)
            encoder = copy.deepcopy(self.module_)
            # adapters in the encoder only (the decoder plays no part in embeddings); all
            # pretrained weights frozen, so the saved adapters + head rebuild the probe
            encoder.requires_grad_(False)
            inject_lora(encoder.blocks, rank, lora_alpha, tuple(lora_targets))
            info.update(rank=rank, lora_alpha=float(lora_alpha),
                        lora_targets=list(lora_targets))
        net = _ProbeNet(encoder, n_out).to(self.device_)
        net.set_head(coef, intercept, mean, scale, y_mean, y_std)
        if head == "lora":
            info["history"] = self._train_lora(net, rows, target, task, epochs,
                                               learning_rate, seed, fraction)
            if fraction:
                # the held-out labels chose the epoch; now the head learns from every label,
                # on the adapted encoder (cheap: a closed-form, cross-validated fit)
                emb = self._apply_numpy(rows, net.encoder.embed).astype(np.float64)
                mean, scale = emb.mean(0), emb.std(0)
                scale = np.where(scale > 1e-8, scale, 1.0)
                coef, intercept, info["strength"] = self._linear_head(
                    task, (emb - mean) / scale, target, C)
                net.set_head(coef, intercept, mean, scale, y_mean, y_std)
        self.probe_ = info
        self._probe_net = net.eval()
        return self

    @staticmethod
    def _linear_head(task: str, z: np.ndarray, target: np.ndarray, C) -> tuple:
        """``(weights, bias, strength)`` of the linear head on standardised embeddings:
        logistic regression (softmax form, classes ``0..k-1``) or ridge regression, with
        cross-validated strength (``C="auto"``; ridge always)."""
        from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, RidgeCV

        if task != "classification":
            reg = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(z, target)
            return np.atleast_2d(reg.coef_), np.atleast_1d(reg.intercept_), float(reg.alpha_)
        folds = int(np.bincount(target).min())
        if C == "auto" and folds >= 2:
            clf = LogisticRegressionCV(Cs=np.logspace(-3, 3, 7), cv=min(5, folds),
                                       scoring="accuracy", max_iter=5000)
        else:
            clf = LogisticRegression(C=1.0 if C == "auto" else float(C), max_iter=5000)
        with warnings.catch_warnings():  # sklearn 1.9 announces a change of C_'s shape
            warnings.simplefilter("ignore", FutureWarning)
            clf.fit(z, target)
        coef, intercept = clf.coef_, clf.intercept_
        if coef.shape[0] == 1:  # two classes: sigmoid(w z + b) == softmax([0, w z + b])
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.array([0.0, intercept[0]])
        return coef, intercept, float(np.ravel(clf.C_)[0] if hasattr(clf, "C_") else clf.C)

    def _train_lora(self, net: _ProbeNet, rows: np.ndarray, target: np.ndarray, task: str,
                    epochs, learning_rate: float, seed: int, fraction: float) -> list[dict]:
        n, c = rows.shape
        # targets travel as extra columns of the rows so the engine's sources and its one
        # training loop can be used unchanged
        t = np.asarray(target, dtype=np.float32).reshape(n, -1)
        data = np.concatenate([rows, t], axis=1)
        source = ArraySource(data, validation_fraction=fraction, seed=seed)
        batch_size = int(np.clip(source.count("train") // 4, 4, 32))
        if epochs == "auto":
            steps = max(1, source.count("train") // batch_size)
            epochs = int(np.clip(math.ceil(300 / steps), 20, 200))
        classification = task == "classification"

        def step(batch: torch.Tensor, training: bool) -> torch.Tensor:
            out = net(batch[:, :c])
            if classification:
                return torch.nn.functional.cross_entropy(out, batch[:, c].long())
            return torch.nn.functional.mse_loss(out, batch[:, c:])
        # only the adapters learn: the head is the cross-validated linear probe, and
        # training it too with Adam on ~80 labels undid its regularisation (benchmark:
        # -5 R^2 points on one draw, never better); it is refitted on all labels afterwards
        net.head.requires_grad_(False)
        params = [p for p in net.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=learning_rate, weight_decay=1e-4)
        held_out = validation_rows(np.arange(n), fraction, seed)  # the source's split
        start_loss, start_state = None, None
        if held_out.any():
            # the linear probe LoRA starts from is a candidate too: the engine's early
            # stopping only compares states after whole epochs, so with 100 labels a first
            # epoch that hurts would otherwise be kept over the better start
            start_loss = self._held_out_loss(net, step, data[held_out])
            start_state = copy.deepcopy(net.state_dict())
        result = train(net, step, source, epochs=int(epochs), batch_size=batch_size,
                       patience=10 if fraction else None, device=self.device_, seed=seed,
                       optimizer=optimizer, show_progressbar=self.show_progressbar,
                       desc="LoRA probe")
        history = list(result.history)
        if start_loss is not None:
            best = min(h.get("val_loss", math.inf) for h in history) if history else math.inf
            if start_loss <= best:
                net.load_state_dict(start_state)
            history.insert(0, {"epoch": -1, "val_loss": start_loss, "kept": start_loss <= best})
        return history

    def _held_out_loss(self, net: _ProbeNet, step, rows: np.ndarray) -> float:
        net.eval()
        with torch.no_grad():
            batch = torch.as_tensor(rows, dtype=torch.float32, device=self.device_)
            return float(step(batch, False))

    def _probe_outputs(self, X, navigation_mask, what: str):
        if getattr(self, "_probe_net", None) is None:
            raise ValueError("no few-label head: call fit_probe(X, y) first")
        t = self._table(X, navigation_mask)
        task = self.probe_["task"]
        if what in ("predict_proba",) and task != "classification":
            raise ValueError("predict_proba needs a classification head")
        n_out = (len(self.probe_["classes"]) if what == "predict_proba"
                 else (1 if task == "classification" else self.probe_["n_targets"]))
        out = self._map_rows(t.rows, functools.partial(self._probe_tensor, what=what), n_out)
        return out, t

    def predict(self, X, *, navigation_mask=None):
        """Class labels or regression values of the few-label head.

        Parameters
        ----------
        X
            Array ``(n, channels)`` or a HyperSpy signal.
        navigation_mask
            Signals only: True excludes a pixel (NaN in the map).

        Returns
        -------
        ndarray or signal
            ``(n,)`` (or ``(n, k)`` for several regression targets) for arrays; for a
            signal, a navigation-shaped map (Signal2D for a 2-D map) with its navigation
            axes, lazy for a lazy signal.
        """
        out, t = self._probe_outputs(X, navigation_mask, "predict")
        task = self.probe_["task"]
        if task == "classification":
            classes = np.asarray(self.probe_["classes"])
            if is_dask(out):
                out = out.map_blocks(lambda b: classes[b.astype(int)], dtype=classes.dtype)
            else:
                out = classes[out.astype(int)]
            # labels are integers unless a mask leaves NaN holes
            if t.reassemble is not None and t.nav_index is not None:
                out = out.astype(np.float64)
        squeeze = task == "classification" or not self.probe_["target_shape"]
        details = dict(operation="predict", model=type(self).__name__,
                       head=self.probe_["head"], task=task, n_labels=int(self.probe_["n_labels"]))
        title = ("MAE phase map" if task == "classification" else "MAE regression") + \
            f" of {_title(t)}"
        if not squeeze:  # several targets: one spectrum-like vector per pixel
            return t.vectors(out, title, "target", **details)
        if t.reassemble is None:
            return out[:, 0]
        return t.image(out[:, 0], title, "class" if task == "classification" else "value",
                       **details)

    def predict_proba(self, X, *, navigation_mask=None):
        """Class probabilities ``(n, n_classes)``; for a signal a Signal1D with the
        navigation axes and a ``"class"`` signal axis (order of ``probe_["classes"]``).
        """
        out, t = self._probe_outputs(X, navigation_mask, "predict_proba")
        return t.vectors(out, f"Class probabilities of {_title(t)}", "class",
                         operation="predict_proba", model=type(self).__name__,
                         classes=self.probe_["classes"])

    # -- persistence ------------------------------------------------------------------------
    def _fitted_arrays(self) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        net = getattr(self, "_probe_net", None)
        if net is not None:
            for key, value in net.state_dict().items():
                if key.startswith("encoder.") and "lora_" not in key:
                    continue  # the frozen encoder is module_ itself
                arrays[f"probe.{key}"] = value.detach().cpu().numpy()
        if getattr(self, "_save_optimizer", False) and self._optimizer is not None:
            state = self._optimizer.state_dict()["state"]
            for idx, st in state.items():
                for key, value in st.items():
                    arrays[f"optimizer.{idx}.{key}"] = np.atleast_1d(
                        value.detach().cpu().numpy())
        return arrays

    def _fitted_config(self) -> dict:
        config = {
            "n_features_in_": int(self.n_features_in_), "normalization_": self.normalization_,
            "signal_range_": self.signal_range_, "pool_": self.pool_,
            "n_epochs_": int(self.n_epochs_), "epochs_": int(self.epochs_),
            "history_": self.history_, "probe_": self.probe_,
            "n_samples_seen_": int(getattr(self, "n_samples_seen_", 0)),
            # pooling as built (files from before the option hold none: mean pooling)
            "pooling": self.module_.pooling, "n_segments": int(self.module_.n_segments),
        }
        if getattr(self, "_save_optimizer", False) and self._optimizer is not None:
            groups = self._optimizer.state_dict()["param_groups"]
            config["optimizer"] = {"param_groups": groups}
        return config

    def _restore(self, config: dict, arrays: dict[str, np.ndarray],
                 weights: dict[str, torch.Tensor]) -> None:
        for key in ("n_features_in_", "normalization_", "signal_range_", "pool_",
                    "n_epochs_", "epochs_", "history_", "probe_", "n_samples_seen_"):
            setattr(self, key, config[key])
        self.signal_axis_ = None
        self.device_ = str(resolve_device(self.device))
        # the embedding the file's probe and users were fitted on, not today's default
        self.pooling = config.get("pooling", "mean")
        if self.pooling == "segments":
            self.n_segments = config["n_segments"]
        self.module_ = self._build_module(self.n_channels)
        self.module_.load_state_dict(weights)
        self.module_.to(self.device_).eval()
        self._optimizer = None
        if "optimizer" in config:
            opt = torch.optim.Adam(self.module_.parameters(), lr=self.learning_rate,
                                   weight_decay=self.weight_decay)
            state = {}
            for key, value in arrays.items():
                if key.startswith("optimizer."):
                    _, idx, name = key.split(".", 2)
                    v = torch.as_tensor(value)
                    state.setdefault(int(idx), {})[name] = v.reshape(()) if name == "step" \
                        else v.to(self.device_)
            opt.load_state_dict({"state": state, **config["optimizer"]})
            self._optimizer = opt
        self._probe_net = None
        if self.probe_ is not None:
            p = self.probe_
            encoder = self.module_
            if p["head"] == "lora":
                encoder = copy.deepcopy(self.module_)
                inject_lora(encoder.blocks, p["rank"], p["lora_alpha"],
                            tuple(p["lora_targets"]))
            n_out = len(p["classes"]) if p["task"] == "classification" else p["n_targets"]
            net = _ProbeNet(encoder, n_out)
            probe = {k[len("probe."):]: torch.as_tensor(v) for k, v in arrays.items()
                     if k.startswith("probe.")}
            expected = {k for k in net.state_dict() if not k.startswith("encoder.")
                        or "lora_" in k}
            if set(probe) != expected:
                raise KeyError(f"probe weights {sorted(set(probe) ^ expected)}")
            net.load_state_dict(probe, strict=False)
            self._probe_net = net.to(self.device_).eval()


__all__ = ["MaskedAutoencoder"]
