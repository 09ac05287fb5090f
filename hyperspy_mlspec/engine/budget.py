"""How much to train, in what batches, on how many threads: rules derived from the data.

The rules (measured in ``benchmarks/bench_speed.py``, see ``benchmarks/RESULTS.md``):

* **Batch size** grows with the data, about 1/16 of the training rows rounded to a power
  of two, between 16 (tiny maps still get a dozen steps per epoch) and a ceiling set by
  the machine: 1024 on a CPU (larger batches no
  longer raise the matmul rate of these networks, and activations stop fitting the
  caches), 8192 on a GPU (where small batches leave it idle).
* **Budget** in spectra seen: ``steps`` optimiser steps (300 by default: with the
  data-driven initialisation of the autoencoders, the reconstruction error against the
  truth stops improving after 200-300 steps of a cosine schedule on maps of 2,000 to
  16,000 spectra, and longer training only fits more noise), and at least one pass over the
  data, at most ``max_passes``. Small maps thus train for ~19 passes, large ones for one or
  two: the cost grows with the data, not with a fixed number of epochs.
* **Rounds**: the held-out split is evaluated once per epoch, or every ``2**17`` spectra
  when an epoch is longer; the split holds at most ``MAX_VALIDATION_ROWS`` rows, so a
  validation pass costs a few per cent of a round.
* **torch.compile** (CPU): measured on the default 1024-channel autoencoder at batch 1024,
  a compiled step is about 30 % faster (37 vs 54 ms on one thread) but compiling takes
  about 30 s (Inductor's C++ build); it pays after ~1,750 steps, so :func:`compile_pays`
  asks for at least ``COMPILE_MIN_STEPS`` planned steps of at least ``SMALL_STEP_FLOPS``
  each, and a C++ compiler: never for the maps of a few thousand spectra the defaults
  train in a few hundred steps, only for passes over very large maps.
* **Mixed precision** (CPU): on a processor with native bf16 matrix instructions
  (AVX512-BF16 or AMX; :func:`native_bf16`) the matrix products of a training step run
  in bf16 (``torch.autocast``; weights, optimiser and losses stay float32), because there
  bf16 products run at 2.2x the float32 rate (211 vs 94 GFLOP/s on one thread of the AMD
  EPYC of these benchmarks, 1024x1024x128): the default 1024-channel autoencoder's
  training loop runs 1.12x faster at batch 256 and 1.6x at batch 1024, to the same
  reconstruction error. Steps under ``SMALL_STEP_FLOPS`` stay float32: there the casts
  cost more than they save (160-channel networks at batch 62-128: 0.6-0.7x), and so does
  every CPU without those instructions (emulated bf16 is slower than float32). The choice
  depends on the machine and the network only, never on a timing, so the same seed gives
  the same result on the same machine. Inference always runs in float32.
* **Threads**: a training step of fewer than ``SMALL_STEP_FLOPS`` floating-point
  operations runs on one thread: the per-operation synchronisation of several threads
  costs more than they gain on such small matrices (measured 2x slower on two cores for
  the 160-channel networks). The choice depends on the network and batch only, so the
  same seed gives the same result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MAX_VALIDATION_ROWS = 4096
MIN_VALIDATION_ROWS = 8
ROUND_ROWS = 2**17
SMALL_STEP_FLOPS = 2e8
DEFAULT_STEPS = 300
COMPILE_MIN_STEPS = 5000


@dataclass(frozen=True)
class Budget:
    """A training plan (see the module docstring).

    Attributes
    ----------
    batch_size
        Rows per minibatch.
    max_samples
        Training rows to process in all.
    epochs
        Most passes over the training rows.
    eval_every
        Rows per round (None: one epoch).
    """

    batch_size: int
    max_samples: int
    epochs: int
    eval_every: int | None


def max_batch(device: torch.device | str) -> int:
    """Largest automatic batch on ``device``: 8192 on a GPU, 1024 on a CPU."""
    return 8192 if torch.device(device).type == "cuda" else 1024


def auto_batch_size(n_train: int, device: torch.device | str = "cpu", *, divisor: int = 16,
                    low: int = 16, high: int | None = None) -> int:
    """Batch size from the data and the machine: ``n_train / divisor`` rounded to a power
    of two, clipped to ``[low, high]`` (``high`` defaults to :func:`max_batch`) and to the
    number of rows.

    Examples
    --------
    >>> auto_batch_size(2000), auto_batch_size(4096), auto_batch_size(10**6)
    (128, 256, 1024)
    >>> auto_batch_size(10**6, "cuda")
    8192
    """
    high = max_batch(device) if high is None else int(high)
    n_train = max(1, int(n_train))
    target = max(1.0, n_train / divisor)
    size = 2 ** round(math.log2(target))
    return int(max(1, min(n_train, max(low, min(high, size)))))


def auto_budget(n_train: int, batch_size: int, *, steps: int = DEFAULT_STEPS,
                max_passes: int = 1000) -> Budget:
    """Budget of an ``epochs="auto"`` fit: ``steps`` steps of ``batch_size`` rows, at least
    one pass over ``n_train`` rows and at most ``max_passes``.

    Examples
    --------
    >>> b = auto_budget(4000, 256)
    >>> b.max_samples, b.epochs
    (76800, 1000)
    >>> auto_budget(10**6, 1024).max_samples  # one pass: more than 300 steps
    1000000
    """
    n_train = max(1, int(n_train))
    samples = max(int(steps) * int(batch_size), n_train)
    samples = min(samples, int(max_passes) * n_train)
    return Budget(batch_size=int(batch_size), max_samples=int(samples),
                  epochs=int(max_passes), eval_every=round_rows(n_train))


def round_rows(n_train: int) -> int | None:
    """Rows per round: None (one epoch) up to ``ROUND_ROWS`` training rows, else
    ``ROUND_ROWS``."""
    return None if n_train <= ROUND_ROWS else ROUND_ROWS


def validation_fraction(n_rows: int, fraction: float) -> float:
    """The held-out fraction actually used: ``fraction``, but none when it would hold
    fewer than ``MIN_VALIDATION_ROWS`` rows and at most ``MAX_VALIDATION_ROWS`` rows.

    Examples
    --------
    >>> validation_fraction(50, 0.1), validation_fraction(1000, 0.1)
    (0.0, 0.1)
    >>> round(validation_fraction(10**6, 0.1), 6)
    0.004096
    """
    if fraction <= 0 or n_rows * fraction < MIN_VALIDATION_ROWS:
        return 0.0
    return float(min(fraction, MAX_VALIDATION_ROWS / max(1, n_rows)))


def step_flops(module: torch.nn.Module, batch_size: int) -> float:
    """Floating-point operations of a training step, estimated as 6 x the weights of
    the module's matrices (multiply-adds of a dense forward pass, times 3 for the
    backward pass) x the batch size. Convolutions count once per weight, an under-count
    that only matters for the thread rule on convolutional models."""
    weights = sum(p.numel() for p in module.parameters() if p.dim() >= 2)
    return 6.0 * weights * int(batch_size)


def training_threads(module: torch.nn.Module, batch_size: int) -> int | None:
    """Threads for training: 1 for steps under ``SMALL_STEP_FLOPS``, else None (leave
    torch's setting).

    Examples
    --------
    >>> training_threads(torch.nn.Linear(160, 64), 128)
    1
    >>> training_threads(torch.nn.Linear(1024, 1024), 1024) is None
    True
    """
    return 1 if step_flops(module, batch_size) < SMALL_STEP_FLOPS else None


def compile_pays(n_steps: int, module: torch.nn.Module, batch_size: int,
                 device: torch.device | str = "cpu") -> bool:
    """Whether ``torch.compile`` of the training step pays for its start-up (see the
    module docstring): on a CPU with a C++ compiler, for at least ``COMPILE_MIN_STEPS``
    steps that are not tiny. On a GPU, never automatically (not measured here).

    Examples
    --------
    >>> compile_pays(300, torch.nn.Linear(1024, 1024), 1024)
    False
    """
    import shutil

    if torch.device(device).type != "cpu" or n_steps < COMPILE_MIN_STEPS:
        return False
    if step_flops(module, batch_size) < SMALL_STEP_FLOPS:
        return False
    return any(shutil.which(c) for c in ("c++", "g++", "clang++"))


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX tiles).

    Examples
    --------
    >>> isinstance(native_bf16(), bool)
    True
    """
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def amp_pays(module: torch.nn.Module, batch_size: int,
             device: torch.device | str = "cpu") -> bool | str:
    """The ``amp`` setting of :func:`~hyperspy_mlspec.engine.trainer.train` for this
    network (see the module docstring): ``"bf16"`` on a CPU with native bf16 matrix
    instructions for steps of at least ``SMALL_STEP_FLOPS``, False on other CPUs and for
    small steps, ``"auto"`` on a GPU (bf16 where the GPU supports it).

    Examples
    --------
    >>> amp_pays(torch.nn.Linear(160, 64), 128)
    False
    >>> amp_pays(torch.nn.Linear(1024, 1024), 1024) in ("bf16", False)
    True
    """
    if torch.device(device).type != "cpu":
        return "auto"
    if step_flops(module, batch_size) < SMALL_STEP_FLOPS or not native_bf16():
        return False
    return "bf16"
