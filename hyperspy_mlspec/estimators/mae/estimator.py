"""Masked autoencoder: pretrain on a lab's unlabelled spectra, embed any signal, learn from
a few labels.

:class:`MaskedAutoencoder` pretrains a 1-D patch transformer
(:class:`~hyperspy_mlspec.models.MaskedSpectrumTransformer`) on a pool of signals, arrays
and files of different channel counts and calibrations, then gives an embedding per spectrum
(:meth:`~MaskedAutoencoder.transform`, ``s.mlspec.embed``) and trains few-label heads on it
(:meth:`~MaskedAutoencoder.fit_probe`: a linear probe or LoRA adapters).

How spectra reach the model
---------------------------
Every spectrum is resampled (linear interpolation, :func:`hyperspy_mlspec.arrays.alignment`)
onto ``n_channels_`` evenly spaced bins (by default the pool's own channel count, rounded to
a multiple of a patch width chosen for about 32 patches:
:func:`~hyperspy_mlspec.estimators.mae.pool.auto_grid`) spanning either its own signal
range (default: the model learns spectral *shapes*, whatever the calibration, so EELS,
EDS, Raman and XRD can share one pretraining pool) or a common ``signal_range`` (then
positions are absolute: pint converts eV and keV; incompatible units are refused). It is
then normalised per spectrum
(``normalization``): ``"log"`` (``log1p`` of counts, then zero mean and unit variance per
spectrum: dose and thickness multiply a spectrum, which becomes an offset in log space and
is removed, while small edges stay visible next to a decade-spanning background) or
``"standard"`` (zero mean, unit variance: real-valued, e.g. background-subtracted, data).
``"auto"`` picks ``"log"`` when every item of the pool is non-negative.

The embedding
-------------
The encoder gives one token per patch; ``pooling`` turns them into one vector per spectrum.
``"segments"`` (default) averages the tokens of ``n_segments`` contiguous groups of patches
(energy windows: 8 windows of 4 patches for the default 32 patches) and concatenates them,
``n_segments * embed_dim`` features; ``"mean"`` averages all tokens, ``embed_dim`` features.
Where along the energy axis a feature sits is what tells an oxidation state (a 1-2 eV
chemical shift) or a peak area apart, and the global mean blurs it: in
``benchmarks/bench_mae.py`` the same pretrained encoder gave a 100-label linear probe about
8 accuracy points and 30 R^2 points more with 8 segments than with the mean. Pooling has
no weights, so it is fixed when the model is built and saved with it; model files written
before this option load with ``"mean"``, the pooling they were fitted with.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.base import TransformerMixin
from sklearn.utils.validation import check_is_fitted

from hyperspy_mlspec.engine import PoolSource, resolve_device
from hyperspy_mlspec.engine.budget import (
    DEFAULT_STEPS,
    auto_batch_size,
    auto_budget,
    validation_fraction,
)
from hyperspy_mlspec.estimators.base import SpectralEstimator
from hyperspy_mlspec.estimators.mae.pool import PoolInputs, _title
from hyperspy_mlspec.estimators.mae.probe import ProbeHeads
from hyperspy_mlspec.models.mae import POOLINGS, MaskedSpectrumTransformer
from hyperspy_mlspec.persistence import register_model

NORMALIZATIONS = ("auto", "log", "standard")
_ARCH = ("n_channels", "patch_size", "embed_dim", "depth", "heads", "decoder_dim",
         "decoder_depth", "decoder_heads")
_GRID = ("n_channels", "patch_size")  # may be "auto": resolved from the pool
_MAX_BATCH = 256
_MAX_PASSES = 200



@register_model
class MaskedAutoencoder(PoolInputs, ProbeHeads, TransformerMixin, SpectralEstimator):
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
        Bins every spectrum is resampled onto, a multiple of ``patch_size``, or ``"auto"``:
        the pool's own channel count (of its largest item, within ``signal_range``; at
        most 4096) rounded to a multiple of the patch width (162 channels -> 160).
    patch_size
        Bins per patch (token), or ``"auto"``: about ``n_channels / 32`` (32 patches: 5
        bins for 160 channels, 32 for 1024). The encoder's cost grows with the number of
        patches, not with the channels.
    mask_ratio
        Fraction of patches hidden during pretraining.
    embed_dim, depth, heads
        Encoder width, blocks and attention heads (64, 2, 4: the encoder of the
        few-label map benchmark, ``benchmarks/bench_mae_map.py``; 128 wide and 4 deep
        costs 6x more per spectrum).
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
        Passes over the pool, or ``"auto"``: a budget in spectra seen of about 300
        optimiser steps (at least one pass, at most 200): ~20 passes over a 64x64 map,
        one over a map of 80,000 spectra; early stopping on the held-out split often
        ends sooner.
    batch_size
        Spectra per minibatch or ``"auto"`` (about n/16, a power of two from 16 to 256).
    learning_rate, weight_decay
        Adam settings.
    validation_fraction
        Fraction of spectra held out for early stopping (none below 160 spectra, at most
        4096 spectra).
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
    n_channels_, patch_size_ : int
        The model's grid (``n_channels`` / ``patch_size`` resolved from the pool).
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
    >>> mae = MaskedAutoencoder(embed_dim=32, depth=1, decoder_dim=16, heads=2,
    ...                         epochs=2, random_state=0, show_progressbar=False).fit(s)
    >>> mae.n_channels_, mae.patch_size_  # the map's 256 channels in 32 patches
    (256, 8)
    >>> mae.transform(s).shape  # 32 patches in 8 segments of 32 features
    (256, 256)
    """

    def __init__(self, n_channels: int | str = "auto", patch_size: int | str = "auto", *,
                 mask_ratio: float = 0.75, embed_dim: int = 64, depth: int = 2,
                 heads: int = 4, decoder_dim: int = 32, decoder_depth: int = 1,
                 decoder_heads: int = 2, norm_pix_loss: bool = False,
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
            if name in _GRID and value == "auto":
                continue
            if not (isinstance(value, numbers.Integral) and not isinstance(value, bool)
                    and value >= 1):
                kind = "'auto' or a positive integer" if name in _GRID else "a positive integer"
                raise ValueError(f"{name} must be {kind}, got {value!r}")
        grid_known = "auto" not in (self.n_channels, self.patch_size)
        if grid_known and self.n_channels % self.patch_size:
            raise ValueError(f"n_channels={self.n_channels} must be a multiple of "
                             f"patch_size={self.patch_size} (e.g. 1024 and 32: 32 patches), "
                             "or leave either 'auto'")
        if grid_known and self.n_channels // self.patch_size < 2 or \
                self.n_channels != "auto" and self.n_channels < 2:
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
            most = self.n_patches if grid_known else None
            if n != "auto" and not (isinstance(n, numbers.Integral) and not isinstance(
                    n, bool) and 1 <= n <= (most or n)):
                raise ValueError(f"n_segments must be 'auto' or an integer from 1 to the "
                                 f"{most or 'number of'} patches of the model, got {n!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, "
                             f"got {self.normalization!r}")
        self._check_training_params()
        if self.signal_range is not None and len(self.signal_range) != 2:
            raise ValueError(f"signal_range must be (start, end), got {self.signal_range!r}")

    @property
    def n_patches(self) -> int:
        """Patches (tokens) per spectrum (of the fitted grid, else of explicit
        parameters)."""
        if hasattr(self, "n_channels_"):
            return self.n_channels_ // self.patch_size_
        if "auto" in (self.n_channels, self.patch_size):
            raise AttributeError("n_patches follows from the data with n_channels='auto' "
                                 "or patch_size='auto': fit the model first")
        return self.n_channels // self.patch_size

    def _build_module(self, n_features: int) -> MaskedSpectrumTransformer:
        return MaskedSpectrumTransformer(
            self.n_channels_, self.patch_size_, embed_dim=self.embed_dim, depth=self.depth,
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

    def _batch_size(self, n_rows: int) -> int:
        # the engine's rule, but at most 256: larger batches of a transformer's activations
        # leave the caches and give fewer steps of the same budget
        if self.batch_size == "auto":
            return auto_batch_size(n_rows, "cpu", high=_MAX_BATCH)
        return int(self.batch_size)

    def _epochs(self, n_rows: int, batch_size: int) -> int:
        # a budget in spectra seen (engine.budget), counted in whole passes so that
        # checkpoints and resume=True keep counting epochs
        if self.epochs == "auto":
            budget = auto_budget(n_rows, batch_size, steps=DEFAULT_STEPS,
                                 max_passes=_MAX_PASSES)
            return int(np.clip(math.ceil(budget.max_samples / max(1, n_rows)), 1,
                               _MAX_PASSES))
        return int(self.epochs)

    # -- the pool ---------------------------------------------------------------------------
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
        pool, records = self._pool(X, seed, resolve=not continuing)
        if not continuing:
            self._initialise_pool(pool, seed)
        else:
            self._drop_probe()
        batch_size = self._batch_size(pool.n_rows)
        if self.batch_size != "auto" and batch_size > pool.n_rows:
            raise ValueError(f"batch_size={batch_size} is larger than the number of spectra "
                             f"({pool.n_rows}): use a smaller batch_size or batch_size='auto'.")
        # at most a few thousand held-out spectra: a validation pass costs a small fraction
        # of an epoch on large pools
        fraction = validation_fraction(pool.n_rows, self.validation_fraction)
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
        pool, records = self._pool(X, seed, resolve=first)
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
            self.module_ = self._build_module(self.n_channels_).to(self.device_)
        self.n_features_in_ = self.n_channels_
        self._optimizer = None
        self.history_ = []
        self.n_epochs_ = 0
        self.signal_axis_ = None
        self.probe_ = None
        self._probe_net = None
        self._probe_labels = None

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
                    "_optimizer", "_probe_net", "_probe_labels"):
                setattr(self, key, value)
        # pooling plays no part in pretraining: keep this estimator's choice
        self.module_.set_pooling(self.pooling, self.n_segments)

    # -- embeddings -------------------------------------------------------------------------
    def _apply_numpy(self, X: np.ndarray, fn, batch: int = 2048) -> np.ndarray:
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
                         n_channels=int(self.n_channels_), patch_size=int(self.patch_size_),
                         normalization=self.normalization_,
                         signal_range=self.signal_range_, n_epochs=int(self.n_epochs_))

    # -- persistence ------------------------------------------------------------------------
    def _fitted_arrays(self) -> dict[str, np.ndarray]:
        arrays = self._probe_arrays()
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
            "n_channels_": int(self.n_channels_), "patch_size_": int(self.patch_size_),
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
        # the grid as fitted (files from before "auto" store explicit integer parameters)
        self.n_channels_ = int(config.get("n_channels_", self.n_channels))
        self.patch_size_ = int(config.get("patch_size_", self.patch_size))
        # the embedding the file's probe and users were fitted on, not today's default
        self.pooling = config.get("pooling", "mean")
        if self.pooling == "segments":
            self.n_segments = config["n_segments"]
        self.module_ = self._build_module(self.n_channels_)
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
        self._restore_probe(arrays)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        tags.transformer_tags.preserves_dtype = ["float32"]  # float32 throughout
        return tags
