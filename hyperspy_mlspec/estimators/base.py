"""Shared machinery of every hyperspy_mlspec estimator.

Subclasses provide ``_build_module`` and ``_step_loss``; this base class owns input
validation (numpy or dask), the choice of loss and normalisation from the data, the call
into the one training loop, batched inference (lazy in, lazy out), and the state saved in
model files. Following scikit-learn, ``__init__`` only stores parameters; everything learnt
ends with an underscore.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted, validate_data

from hyperspy_mlspec.engine import Normalizer, as_source, resolve_device, train
from hyperspy_mlspec.engine.budget import (
    DEFAULT_STEPS,
    amp_pays,
    auto_batch_size,
    auto_budget,
    compile_pays,
    round_rows,
    training_threads,
    validation_fraction,
)
from hyperspy_mlspec.engine.distributed import Group
from hyperspy_mlspec.engine.losses import LOSSES
from hyperspy_mlspec.engine.normalization import KINDS
from hyperspy_mlspec.engine.parallel import map_batches
from hyperspy_mlspec.engine.sources import DaskSource, RowSource
from hyperspy_mlspec.engine.trainer import make_optimizer

_STAT_ROWS = 8192  # rows sampled for data statistics (normalisation, standardisation)
_STAT_VALUES = 2**24  # ... but at most 64 MiB of float32: initialisation makes a few copies


def stat_rows(n_features: int) -> int:
    """Rows sampled for data statistics: ``_STAT_ROWS``, fewer for very long spectra so
    that memory stays bounded (4096 rows of 4096 channels)."""
    return int(min(_STAT_ROWS, max(1000, _STAT_VALUES // max(1, n_features))))


def is_dask(X: Any) -> bool:
    """True for a dask array."""
    return hasattr(X, "dask") and hasattr(X, "chunks")


def looks_like_counts(sample: np.ndarray) -> bool:
    """True when values are non-negative and integer-valued (detector counts)."""
    if not sample.size or sample.min() < 0 or not sample.max() > 0:
        return False
    return bool(np.abs(sample - np.rint(sample)).max() <= 1e-3)


class SpectralEstimator(BaseEstimator):
    """Base class: see the module docstring. Not for direct use."""

    # -- hooks for subclasses -------------------------------------------------------------
    def _build_module(self, n_features: int) -> torch.nn.Module:  # pragma: no cover
        raise TypeError(f"{type(self).__name__} must implement _build_module")

    def _step_loss(self) -> Callable[[torch.Tensor, bool], torch.Tensor]:  # pragma: no cover
        raise TypeError(f"{type(self).__name__} must implement _step_loss")

    def _after_fit(self, source: RowSource) -> None:
        """Derived fitted attributes (components, variances...)."""

    def _epoch_end_callback(self) -> Callable[[dict], None] | None:
        """Called by the loop after each epoch with its history row (checkpoints)."""
        return None

    # -- validation -------------------------------------------------------------------------
    def _check_params(self) -> None:
        if self.loss not in ("auto",) + LOSSES:
            raise ValueError(f"loss must be 'auto', 'poisson' or 'mse', got {self.loss!r}")
        if self.normalization not in ("auto",) + KINDS:
            raise ValueError(f"normalization must be 'auto' or one of {KINDS}, "
                             f"got {self.normalization!r}")
        self._check_training_params()

    def _check_training_params(self) -> None:
        """Checks of the parameters every estimator passes to the training loop."""
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if value != "auto" and not (isinstance(value, numbers.Integral) and value >= 1):
                raise ValueError(f"{name} must be 'auto' or a positive integer, got {value!r}")
        if not (0 <= self.validation_fraction < 1):
            raise ValueError("validation_fraction must be in [0, 1), "
                             f"got {self.validation_fraction!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}")

    def _source(self, X: Any, reset: bool) -> RowSource:
        """Validate ``X`` and wrap it as a row source (numpy checked now, dask per block)."""
        if isinstance(X, RowSource):
            source = X
        elif is_dask(X):
            if X.ndim != 2:
                raise ValueError(f"Expected a 2-D array of spectra, got shape {X.shape}.")
            if not reset:
                self._check_n_features(int(X.shape[1]))
            else:
                self.n_features_in_ = int(X.shape[1])
            source = DaskSource(X)
        else:
            X = validate_data(self, X, reset=reset, dtype=[np.float32, np.float64],
                              ensure_min_features=1)
            source = as_source(X)
        if reset:
            self.n_features_in_ = source.n_features
        else:
            self._check_n_features(source.n_features)
        return source

    def _check_n_features(self, n: int) -> None:
        if n != self.n_features_in_:
            raise ValueError(f"X has {n} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input.")

    def _block_check(self) -> Callable[[np.ndarray], None]:
        """Per-block checks applied while data stream in (lazy data are never read twice)."""
        poisson = getattr(self, "loss_", self.loss) == "poisson"

        def check(block: np.ndarray) -> None:
            if not block.size:
                return
            # min and max propagate NaN and reach +-inf: two read passes, no mask array
            lo, hi = block.min(), block.max()
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise ValueError(
                    "Input contains NaN or infinity. Remove or mask those spectra "
                    "(navigation_mask) or replace the values (e.g. np.nan_to_num) first.")
            if poisson and lo < 0:
                raise ValueError(
                    f"loss='poisson' needs non-negative counts, but the data contain negative "
                    f"values (minimum {lo:.4g}). Use loss='mse', or remove the "
                    "offset that made counts negative.")
        return check

    # -- fitting ----------------------------------------------------------------------------
    def _resolve_from_sample(self, sample: np.ndarray) -> None:
        """Pick loss, normalisation and positivity from a sample of the data."""
        counts = looks_like_counts(sample)
        nonneg = bool(sample.size and sample.min() >= 0)
        self.loss_ = ("poisson" if counts else "mse") if self.loss == "auto" else self.loss
        if self.loss_ == "poisson" and not nonneg:
            self._block_check()(sample)  # raises the explanatory error
        norm = self.normalization
        if norm == "auto":
            # counts: Keenan-Kotula weighting (measured better than "sum" on EELS and EDS
            # maps, see benchmarks/RESULTS.md); other non-negative data: per-spectrum sum
            norm = ("poisson" if counts else "sum") if nonneg and sample.mean() > 0 else "none"
        if norm in ("sum", "poisson") and not nonneg:
            raise ValueError(f"normalization={norm!r} needs non-negative data; the data contain "
                             "negative values. Use normalization='none' or 'max'.")
        self.normalization_ = norm
        self.normalizer_ = Normalizer(norm).fit(sample)
        self.nonnegative_ = nonneg or self.loss_ == "poisson"

    # the training budget of epochs="auto" (see hyperspy_mlspec.engine.budget): optimiser
    # steps, least and most passes over the data, and the learning-rate schedule
    _budget_steps = DEFAULT_STEPS
    _budget_passes = (1, 1000)
    _schedule = "cosine"
    _min_delta = 1e-4

    def _batch_size(self, n_rows: int) -> int:
        if self.batch_size == "auto":
            return auto_batch_size(n_rows, getattr(self, "device_", "cpu"))
        return int(self.batch_size)

    def _epochs(self, n_rows: int, batch_size: int) -> int:
        return self._plan(n_rows, batch_size)["epochs"]

    def _plan(self, n_train: int, batch_size: int) -> dict:
        """Keyword arguments of :func:`~hyperspy_mlspec.engine.train` for a fit: the
        budget in spectra for ``epochs="auto"``, else exactly ``epochs`` passes."""
        plan = {"eval_every": round_rows(n_train), "schedule": self._schedule,
                "min_delta": self._min_delta}
        if self.epochs == "auto":
            low, high = self._budget_passes
            budget = auto_budget(n_train, batch_size, steps=self._budget_steps,
                                 max_passes=high)
            samples = min(max(budget.max_samples, low * n_train), high * n_train)
            return {**plan, "epochs": budget.epochs, "max_samples": samples}
        return {**plan, "epochs": int(self.epochs), "max_samples": None}

    def _seed(self) -> int:
        # under torchrun every process must use the same seed: rank 0's (same data sample,
        # same initial weights, same batch order); a no-op in a single process
        return Group.current().broadcast_int(self._local_seed())

    def _local_seed(self) -> int:
        rs = self.random_state
        if isinstance(rs, numbers.Integral):
            return int(rs)
        if isinstance(rs, np.random.RandomState):
            return int(rs.randint(2**31))
        if isinstance(rs, np.random.Generator):
            return int(rs.integers(2**31))
        return int(np.random.SeedSequence().generate_state(1)[0] % 2**31)

    def _initialise(self, source: RowSource, seed: int) -> None:
        """Fit data statistics and build the module (first fit / partial_fit call)."""
        self._check_params()
        if source.n_rows < 1:
            raise ValueError("Found 0 spectra: at least one is required to fit.")
        rng = np.random.default_rng(seed)
        source.check = None
        sample = source.sample(stat_rows(source.n_features), rng)
        self._resolve_from_sample(sample)
        self.device_ = str(resolve_device(self.device))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.module_ = self._build_module(source.n_features).to(self.device_)
        if hasattr(self.module_, "standardize_inputs") and len(sample):
            xn, _ = self.normalizer_.forward(torch.as_tensor(sample, dtype=torch.float32))
            self.module_.standardize_inputs(xn.to(self.device_))
            if hasattr(self.module_, "init_from_data"):
                self.module_.init_from_data(xn.to(self.device_))
        self._optimizer = None
        self.history_: list[dict] = []
        self.n_epochs_ = 0
        self.signal_axis_ = None

    def _train(self, source: RowSource, epochs: int, batch_size: int, seed: int,
               patience: int | None, **options: Any) -> None:
        source.check = self._block_check()
        norm = getattr(self, "normalizer_", None)
        group = Group.current()
        if group.active and norm is not None and norm.channel_scale is not None:
            # data-derived normalisation: rank 0's, so every process agrees
            scale = torch.tensor(np.array(norm.channel_scale, np.float32))
            floor = torch.tensor([norm.row_floor], dtype=torch.float64)
            group.broadcast([scale, floor])
            norm.channel_scale, norm.row_floor = scale.numpy(), float(floor[0])
        if self._optimizer is None:
            self._optimizer = make_optimizer(self.module_.parameters(), self.learning_rate,
                                             self.weight_decay)
        options.setdefault("num_threads", training_threads(self.module_, batch_size))
        planned = options.get("max_samples") or epochs * max(1, source.count("train"))
        options.setdefault("compile", compile_pays(int(planned) // max(1, batch_size),
                                                   self.module_, batch_size, self.device_))
        options.setdefault("amp", amp_pays(self.module_, batch_size, self.device_))
        options.update(getattr(self, "_train_options", {}))  # benchmarks' experiments
        result = train(self.module_, self._step_loss(), source, epochs=epochs,
                       batch_size=batch_size, patience=patience, device=self.device_,
                       seed=seed, optimizer=self._optimizer,
                       show_progressbar=self.show_progressbar, desc=type(self).__name__,
                       on_epoch_end=self._epoch_end_callback(), **options)
        offset = self.n_epochs_
        for row in result.history:
            row["epoch"] += offset
        self.history_.extend(result.history)
        self.n_epochs_ += len(result.history)
        self.interrupted_ = result.interrupted
        self.n_samples_seen_ = getattr(self, "n_samples_seen_", 0) + result.n_samples_seen

    def fit(self, X, y=None):
        """Fit the model to spectra.

        Parameters
        ----------
        X
            Array of shape ``(n_spectra, n_channels)``: numpy, or dask (streamed chunk by
            chunk, never loaded whole).
        y
            Ignored.

        Returns
        -------
        self
        """
        source = self._source(X, reset=True)
        seed = self._seed()
        self._initialise(source, seed)
        if self.batch_size != "auto" and int(self.batch_size) > source.n_rows:
            raise ValueError(
                f"batch_size={self.batch_size} is larger than the number of spectra "
                f"({source.n_rows}): use a smaller batch_size or batch_size='auto'.")
        # a held-out split of at most a few thousand rows: early stopping costs a few
        # per cent of a round, and large maps keep almost all rows for training
        fraction = validation_fraction(source.n_rows, self.validation_fraction)
        source.validation_fraction, source.seed = fraction, seed
        n_train = source.count("train")
        batch_size = min(self._batch_size(n_train), max(1, n_train))
        plan = self._plan(n_train, batch_size)
        self._train(source, plan.pop("epochs"), batch_size, seed, self.patience, **plan)
        source.validation_fraction = 0.0
        self._after_fit(source)
        return self

    def partial_fit(self, X, y=None):
        """Continue training on a block of spectra (``partial_fit_epochs`` passes).

        The first call fits the normalisation and builds the model from this block.
        HyperSpy's lazy ``decomposition`` calls this once per navigation block.

        Returns
        -------
        self
        """
        first = not hasattr(self, "module_")
        source = self._source(X, reset=first)
        seed = self._seed() + getattr(self, "n_epochs_", 0)
        if first:
            self._initialise(source, seed)
        batch_size = min(self._batch_size(source.n_rows), source.n_rows)
        # a constant learning rate: blocks of a stream continue one run
        self._train(source, int(self.partial_fit_epochs), batch_size, seed, patience=None,
                    schedule="plateau")
        self._after_fit(source)
        return self

    # -- inference --------------------------------------------------------------------------
    def _map_rows(self, X: Any, fn: str | Callable[[torch.Tensor], torch.Tensor], n_out: int,
                  reset_check: bool = True):
        """Apply an inference method (float32 tensor -> tensor) over rows.

        ``fn`` is a method of this estimator: its name, the bound method, or a
        ``functools.partial`` of it with keyword arguments. Numpy in gives numpy out. Dask in
        gives dask out: one task per navigation chunk (the signal axis rechunked to one
        chunk), each calling a :class:`~hyperspy_mlspec.engine.remote.RowFunction` that holds
        the model's weights (a snapshot taken now), so the graph runs unchanged on worker
        processes and ``dask.distributed`` clusters.
        """
        from hyperspy_mlspec.engine.remote import ModelPayload, RowFunction, method_spec

        check_is_fitted(self, "module_")
        name, kwargs = method_spec(self, fn)
        if is_dask(X):
            if X.ndim != 2:
                raise ValueError(f"Expected a 2-D array, got shape {X.shape}.")
            if len(X.chunks[1]) > 1:  # a block must hold whole spectra
                X = X.rechunk({1: -1})
            block_fn = RowFunction(ModelPayload.from_estimator(self), name, n_out, **kwargs)
            return X.map_blocks(block_fn, chunks=(X.chunks[0], (n_out,)), dtype=np.float32,
                                name=f"mlspec-{name.strip('_')}")
        method = getattr(self, name)
        return self._apply_numpy(X, functools.partial(method, **kwargs) if kwargs else method)

    def _apply_numpy(self, X: np.ndarray, fn, batch: int = 1024) -> np.ndarray:
        """``fn`` over batches of rows, written into one preallocated float32 output, on
        torch's number of threads for large inputs
        (:func:`hyperspy_mlspec.engine.parallel.map_batches`). 1024 rows a batch: 20 %
        more spectra/s than 2048 for the autoencoder's reconstruct at 1024 channels (the
        activations stay in cache), the same for transform."""
        return map_batches(fn, X, batch, self.device_)

    def _validate_transform_input(self, X: Any) -> Any:
        check_is_fitted(self, "module_")
        if is_dask(X):
            if X.ndim != 2:
                raise ValueError(f"Expected a 2-D array, got shape {X.shape}.")
            self._check_n_features(int(X.shape[1]))
            return X
        # finiteness is part of the block check (one pass less than sklearn's and ours)
        X = validate_data(self, X, reset=False, dtype=[np.float32, np.float64],
                          ensure_all_finite=False)
        self._block_check()(np.asarray(X))
        return X

    # -- persistence ------------------------------------------------------------------------
    def save(self, path) -> None:
        """Save the fitted estimator: safetensors weights plus a JSON config (no pickle).

        Parameters
        ----------
        path
            File to write (conventionally ``*.mlspec``); load it with
            :func:`hyperspy_mlspec.load_model`.
        """
        from hyperspy_mlspec.persistence import save_model

        save_model(self, path)

    # subclasses extend these two for their own fitted arrays
    def _fitted_arrays(self) -> dict[str, np.ndarray]:
        return {"normalizer.channel_scale": np.asarray(self.normalizer_.channel_scale)}

    def _fitted_config(self) -> dict:
        return {
            "n_features_in_": int(self.n_features_in_), "loss_": self.loss_,
            "normalization_": self.normalization_, "nonnegative_": bool(self.nonnegative_),
            "normalizer": self.normalizer_.to_dict(), "n_epochs_": int(self.n_epochs_),
            "history_": self.history_, "signal_axis_": self.signal_axis_,
            "device_": "cpu",
        }

    def _restore(self, config: dict, arrays: dict[str, np.ndarray],
                 weights: dict[str, torch.Tensor]) -> None:
        for key in ("n_features_in_", "loss_", "normalization_", "nonnegative_",
                    "n_epochs_", "history_", "signal_axis_"):
            setattr(self, key, config[key])
        self.normalizer_ = Normalizer(**config["normalizer"],
                                      channel_scale=arrays["normalizer.channel_scale"])
        self.device_ = str(resolve_device(self.device))
        self.module_ = self._build_module(self.n_features_in_)
        self.module_.load_state_dict(weights)
        self.module_.to(self.device_).eval()
        self._optimizer = None
