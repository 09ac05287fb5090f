"""Denoising autoencoder: self-supervised (binomial splitting, channel masking) or supervised.

How intensities are handled
---------------------------
The network sees spectra divided by the engine's per-spectrum :class:`~hyperspy_mlspec.engine.
Normalizer` scale (``"sum"`` by default: the mean counts per channel), so it learns spectral
*shape* and is independent of dose and thickness. For count data (Poisson loss) the output is
then **count-conserving**: the denoised spectrum is the predicted shape times the spectrum's own
total counts, ``d(x) = sum(x) * p(x / sum(x))``. The total of a Poisson spectrum is the
sufficient, unbiased statistic of its intensity, so denoising only redistributes counts between
channels and is unbiased in total counts at any dose. Data that are not counts (MSE loss) are
mapped back with the normaliser's multiplier only.

Noise models
------------
``"poisson-split"``
    Each count spectrum ``x`` is thinned into two independent Poisson halves,
    ``a ~ Binomial(x, 1/2)`` and ``b = x - a``. The network sees ``a`` (normalised) and
    predicts the full-dose spectrum ``sum(x) * p(a)``; the loss is the Poisson deviance of
    ``b`` under half that rate. The noise of ``a`` and ``b`` is independent, so the best
    prediction is the noise-free shape (Noise2Noise for Poisson data); no clean data are
    needed. At inference the predictions from several binomial halves of the spectrum are
    averaged (``inference_splits``), so the network only ever sees inputs like those it was
    trained on, and rescaled to the spectrum's total counts.
``"mask"``
    Noise2Self channel masking: a random 10-25 % of the channels are replaced by the mean of
    their neighbours and the loss is computed on those channels only. Works for counts
    (Poisson deviance) and for any other data (``loss="mse"``).
``"supervised"``
    ``fit(clean)``: every minibatch scales each clean spectrum to a dose drawn log-uniformly
    from ``dose`` (mean counts per channel), draws Poisson counts, adds Gaussian
    ``read_noise`` and trains noisy -> clean. Because of the per-spectrum normalisation the
    model applies to data at any dose in (and near) that range.
"""

from __future__ import annotations

import functools
import numbers

import numpy as np
import torch
from sklearn.base import TransformerMixin
from sklearn.utils.validation import check_is_fitted

from hyperspy_mlspec.arrays.counts import NOISE_LAGS, detector_noise
from hyperspy_mlspec.engine import Normalizer
from hyperspy_mlspec.engine.losses import (
    gaussian_loss,
    poisson_deviance,
    poisson_deviance_elements,
)
from hyperspy_mlspec.engine.sampling import colour_noise, recorrupted_half, split_counts
from hyperspy_mlspec.estimators.base import SpectralEstimator, is_dask, looks_like_counts
from hyperspy_mlspec.models.denoiser import ConvDenoiser, DenseDenoiser, default_hidden_sizes
from hyperspy_mlspec.persistence import register_model

NOISE_MODELS = ("poisson-split", "mask", "supervised")
ARCHITECTURES = ("dense", "conv")
_MIN_COUNTS_TO_SPLIT = 2.0  # median counts per spectrum below which splitting is hopeless


def _as_range(value, name: str, low_bound: float, high_bound: float) -> tuple[float, float]:
    """A number or a ``(low, high)`` pair as a validated range."""
    if isinstance(value, numbers.Real):
        lo = hi = float(value)
    else:
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number or a (low, high) pair, got "
                             f"{value!r}") from None
    if not (low_bound < lo <= hi <= high_bound) or not np.isfinite([lo, hi]).all():
        raise ValueError(f"{name} must lie in ({low_bound}, {high_bound}] with low <= high, "
                         f"got {value!r}")
    return lo, hi


def _shape_weights(clean: np.ndarray) -> np.ndarray:
    """Per-channel loss weights from how much the spectra's shape varies there relative to
    the Poisson noise of that channel (see ``channel_weights``)."""
    x = np.clip(np.asarray(clean, dtype=np.float64), 0, None)
    total = x.sum(axis=1, keepdims=True)
    p = x[total[:, 0] > 0] / total[total[:, 0] > 0] * x.shape[1]
    if len(p) < 2:
        return np.ones(x.shape[1], dtype=np.float32)
    mean = np.maximum(p.mean(axis=0), 1e-12 * max(float(p.mean()), 1e-300))
    snr = np.sqrt(p.var(axis=0) / mean)
    w = snr / max(float(snr.mean()), 1e-300)
    w = np.clip(w, 0.1, 10.0)
    return (w / w.mean()).astype(np.float32)


def _halves(x: torch.Tensor, k: int, seed: int, gain: float = 1.0, correlation=None):
    """``k`` binomial halves ``~ Binomial(x, 1/2)`` of each count spectrum, for inference
    (of the electrons ``x / gain``, returned in the data's units).

    The draws must not depend on which other spectra share the batch (lazy and in-memory
    data, any chunking, must give the same result), so every spectrum uses the same
    standard normal numbers ``z[i, channel]`` (seeded) and the half is the rounded normal
    approximation ``round(x/2 + sqrt(x)/2 z)`` clipped to ``[0, x]``: right mean and variance,
    and within 0.01 of the exact binomial probabilities already for 1-3 counts. With noise
    correlated between channels (``correlation``) the halves are recorrupted pairs
    ``(x + sqrt(gain x) z') / 2``, ``z'`` of that correlation (as in training,
    :func:`~hyperspy_mlspec.engine.sampling.split_counts`).
    """
    gen = torch.Generator(device=x.device).manual_seed(seed)
    z = torch.randn(k, x.shape[1], generator=gen, device=x.device, dtype=x.dtype)
    if correlation is not None and np.any(correlation):
        z = colour_noise(z, correlation)
        for i in range(k):
            yield recorrupted_half(x, z[i], gain)
        return
    counts = (x.clamp_min(0) / gain).round()
    root = counts.sqrt()
    for i in range(k):
        yield gain * torch.minimum((0.5 * counts + 0.5 * root * z[i]).round().clamp_min(0),
                                   counts)


@register_model
class DenoisingAutoencoder(TransformerMixin, SpectralEstimator):
    """Denoise spectra with a neural network; scikit-learn API, ``transform`` denoises.

    See the module docstring for the noise models and how intensities are treated.

    Parameters
    ----------
    noise
        ``"poisson-split"`` (default, self-supervised, count data), ``"mask"``
        (self-supervised channel masking, any data) or ``"supervised"`` (``fit`` on clean
        spectra, noise simulated).
    architecture
        ``"dense"``: fully connected bottleneck autoencoder (fast, global);
        ``"conv"``: 1-D convolutional U-Net with a global bottleneck (local detail such as
        fine structure and rare features; several times slower on a CPU).
    n_latent
        Width of the bottleneck, or ``"auto"`` (8).
    hidden_layer_sizes
        Widths ``(h1, h2)`` of the dense layers; None chooses them from the number of
        channels (narrow on purpose for the self-supervised noise models, wide for
        ``noise="supervised"``, see
        :func:`~hyperspy_mlspec.models.denoiser.default_hidden_sizes`).
    n_filters
        Filters of the first convolution level (``architecture="conv"``).
    dose
        ``noise="supervised"``: counts per channel (mean over the spectrum) at which Poisson
        noise is simulated, a number or a ``(low, high)`` range sampled log-uniformly per
        spectrum. None simulates Gaussian ``read_noise`` only (non-count data).
    read_noise
        ``noise="supervised"``: standard deviation of added Gaussian noise, in counts (in
        data units when ``dose`` is None).
    mask_fraction
        ``noise="mask"``: fraction of masked channels, a number or a ``(low, high)`` range
        sampled per minibatch.
    inference_splits
        ``noise="poisson-split"``: the denoised spectrum is the average of the predictions
        from this many binomial halves of the input, rescaled to the input's total counts.
        The network was trained on half-dose inputs and can misbehave on full-dose ones (the
        noise it learnt to see is missing); averaging halves stays in its training
        distribution. 0 feeds the full spectrum instead (``k`` times faster inference).
    channel_weights
        ``noise="supervised"``: ``"auto"`` weights each channel's loss by how much the
        training spectra's *shape* varies there relative to its Poisson noise
        (``sqrt(var(p_c) / mean(p_c))`` of the normalised spectra ``p``, scaled to mean 1
        and clipped to 0.1-10), so that fine structure which tells the spectra apart (a
        chemical shift, a white-line ratio) weighs as much as the background and the
        strong edges that dominate an unweighted deviance; ``"none"`` weights all
        channels equally. The self-supervised noise models always use equal weights.
    loss
        ``"auto"``: Poisson deviance for count data (supervised: whenever Poisson noise is
        simulated), else ``"mse"``. ``"poisson-split"`` needs the Poisson deviance.
    normalization
        Per-spectrum normalisation (see :class:`~hyperspy_mlspec.engine.Normalizer`);
        ``"auto"`` is ``"sum"`` for non-negative data, which makes the model dose-independent.
    epochs, batch_size
        Maximum passes and spectra per minibatch, or ``"auto"``: about 3000 optimiser steps
        (15-300 epochs; early stopping on a held-out split usually ends sooner) of
        ``n_spectra / 32`` spectra (8-128).
    learning_rate, weight_decay
        Adam settings.
    validation_fraction
        Fraction of spectra held out for early stopping (none below 80 spectra).
    patience
        Epochs without improvement before stopping; None trains for all ``epochs``.
    partial_fit_epochs
        Passes over each block given to :meth:`partial_fit`.
    device
        ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``...
    random_state
        Seed of weights, batch order and noise draws; same seed, same result on the CPU.
    show_progressbar
        None follows ``hs.preferences.General.show_progressbar``.

    Attributes
    ----------
    n_latent_ : int
        Bottleneck width used.
    loss_, normalization_ : str
        Loss and normalisation actually used.
    conserves_counts_ : bool
        True when denoised spectra keep the total counts of their input (Poisson loss).
    count_gain_ : float
        Detector gain of the counts (data units per electron, measured; 1 for plain
        counts): ``"poisson-split"`` halves split electrons.
    noise_correlation_ : ndarray
        Measured correlation of the noise between channels 1-4 apart (a detector's
        point-spread function; zeros when negligible): the halves are then recorrupted
        pairs with noise of that correlation.
    history_ : list of dict
        Loss per epoch.
    module_ : torch.nn.Module
        The trained network.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> clean = (rng.random((300, 2)) @ rng.random((2, 48)) + 0.1) * 5
    >>> noisy = rng.poisson(clean).astype(float)
    >>> dae = DenoisingAutoencoder(epochs=10, random_state=0, show_progressbar=False)
    >>> denoised = dae.fit_transform(noisy)
    >>> denoised.shape
    (300, 48)
    >>> bool(abs(denoised.sum() / noisy.sum() - 1) < 1e-3)   # counts are conserved
    True
    >>> sup = DenoisingAutoencoder(noise="supervised", dose=(1, 20), epochs=5,
    ...                            random_state=0, show_progressbar=False).fit(clean)
    >>> sup.denoise(noisy).shape
    (300, 48)
    """

    def __init__(self, noise: str = "poisson-split", *, architecture: str = "dense",
                 n_latent: int | str = "auto", hidden_layer_sizes: tuple[int, int] | None = None,
                 n_filters: int = 16, dose: float | tuple[float, float] | None = (1.0, 100.0),
                 read_noise: float = 0.0,
                 mask_fraction: float | tuple[float, float] = (0.1, 0.25),
                 inference_splits: int = 8, channel_weights: str = "auto",
                 loss: str = "auto", normalization: str = "auto", epochs: int | str = "auto",
                 batch_size: int | str = "auto", learning_rate: float = 1e-3,
                 weight_decay: float = 0.0, validation_fraction: float = 0.1,
                 patience: int | None = 10, partial_fit_epochs: int = 1, device: str = "auto",
                 random_state=None, show_progressbar: bool | None = None) -> None:
        self.noise = noise
        self.architecture = architecture
        self.n_latent = n_latent
        self.hidden_layer_sizes = hidden_layer_sizes
        self.n_filters = n_filters
        self.dose = dose
        self.read_noise = read_noise
        self.mask_fraction = mask_fraction
        self.inference_splits = inference_splits
        self.channel_weights = channel_weights
        self.loss = loss
        self.normalization = normalization
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.partial_fit_epochs = partial_fit_epochs
        self.device = device
        self.random_state = random_state
        self.show_progressbar = show_progressbar

    # -- validation -------------------------------------------------------------------------
    def _check_params(self) -> None:
        super()._check_params()
        if self.noise not in NOISE_MODELS:
            raise ValueError(f"noise must be one of {NOISE_MODELS}, got {self.noise!r}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, "
                             f"got {self.architecture!r}")
        if self.noise == "poisson-split" and self.loss == "mse":
            raise ValueError("noise='poisson-split' models Poisson counts and trains with the "
                             "Poisson deviance; for loss='mse' use noise='mask' (or "
                             "noise='supervised').")
        if self.noise == "supervised":
            if self.dose is not None:
                _as_range(self.dose, "dose", 0.0, np.inf)
            if not (np.isfinite(self.read_noise) and self.read_noise >= 0):
                raise ValueError(f"read_noise must be >= 0, got {self.read_noise!r}")
            if self.dose is None and self.read_noise == 0:
                raise ValueError("noise='supervised' needs noise to simulate: give a dose "
                                 "(Poisson) and/or read_noise > 0 (Gaussian).")
        if self.noise == "mask":
            _as_range(self.mask_fraction, "mask_fraction", 0.0, 0.9)
        if self.channel_weights not in ("auto", "none"):
            raise ValueError(f"channel_weights must be 'auto' or 'none', got "
                             f"{self.channel_weights!r}")
        if not (isinstance(self.inference_splits, numbers.Integral)
                and self.inference_splits >= 0):
            raise ValueError(f"inference_splits must be a non-negative integer, got "
                             f"{self.inference_splits!r}")

    def _resolve_from_sample(self, sample: np.ndarray) -> None:
        if sample.size and not np.any(sample):
            raise ValueError(
                "every spectrum is zero: there are no counts to denoise (or to split into "
                "halves). Check the data, or sum pixels (s.rebin) to raise the dose.")
        if self.noise == "poisson-split":
            if not looks_like_counts(sample):
                raise ValueError(
                    "noise='poisson-split' splits detector counts, but these data are not "
                    "counts (negative or non-integer values, e.g. after background subtraction "
                    "or gain correction). Use noise='mask' with loss='mse' (or undo the "
                    "scaling to get counts back).")
            median_total = float(np.median(sample.sum(axis=1)))
            if median_total < _MIN_COUNTS_TO_SPLIT:
                raise ValueError(
                    f"the dose is too low to split: a spectrum holds {median_total:g} counts "
                    "(median). Sum neighbouring pixels or channels first (s.rebin) to get at "
                    "least a few counts per spectrum.")
        # raw counts may carry a detector gain (variance = gain x counts): the halves must
        # split electrons, or they share most of their noise and the network learns it
        # (and a point-spread function correlates channels: halves are then recorrupted
        # pairs, and the gain is measured on held-out rows, which channel differences misread)
        g, rho = (detector_noise(sample) if self.noise == "poisson-split"
                  else (None, np.zeros(NOISE_LAGS)))
        self.noise_correlation_ = np.asarray(rho, dtype=np.float64)
        self.count_gain_ = 1.0 if g is None else float(g)
        if self.noise == "supervised" and self.dose is not None and sample.min() < 0:
            raise ValueError(
                "noise='supervised' with a dose simulates Poisson counts from the clean "
                "spectra, which must therefore be non-negative; these contain negative values. "
                "Use dose=None with read_noise > 0 to train with Gaussian noise only.")
        super()._resolve_from_sample(sample)
        self.conserves_counts_ = self.loss_ == "poisson"
        if self.noise != "supervised":
            return
        if self.loss == "auto":
            self.loss_ = "poisson" if self.dose is not None else "mse"
            self.conserves_counts_ = self.loss_ == "poisson"
        self.channel_weights_ = (_shape_weights(sample) if self.channel_weights == "auto"
                                 else np.ones(sample.shape[1], dtype=np.float32))
        # the network sees simulated noisy spectra: fit the normalisation (row floor) and
        # input standardisation on those, not on the clean ones
        gen = torch.Generator().manual_seed(0)
        noisy, _ = self._simulate(torch.as_tensor(sample, dtype=torch.float32), gen)
        self.normalizer_ = Normalizer(self.normalization_).fit(noisy.numpy())
        self._standardize_sample = noisy

    def _initialise(self, source, seed: int) -> None:
        super()._initialise(source, seed)
        noisy = self.__dict__.pop("_standardize_sample", None)
        if noisy is not None:
            xn, _ = self.normalizer_.forward(noisy)
            self.module_.standardize_inputs(xn.to(self.device_))

    def _block_check(self):
        check = super()._block_check()
        if not (self.noise == "supervised" and self.read_noise > 0):
            return check

        def finite_only(block: np.ndarray) -> None:  # read noise makes negative values normal
            if not np.isfinite(block).all():
                check(block)
        return finite_only

    # -- engine hooks -----------------------------------------------------------------------
    def _sizes(self, n_features: int) -> dict:
        if n_features < 2:
            raise ValueError(f"{n_features} feature(s): denoising learns each channel from "
                             "the others (or from its split counts across channels), so at "
                             "least 2 channels are needed.")
        k = self.n_latent
        if k == "auto":
            k = min(8, n_features)  # a bottleneck, not wider than the spectrum
        if not (isinstance(k, numbers.Integral) and 1 <= k <= n_features):
            raise ValueError(f"n_latent must be 'auto' or an integer between 1 and the number "
                             f"of channels ({n_features}), got {self.n_latent!r}")
        hidden = self.hidden_layer_sizes or default_hidden_sizes(
            n_features, supervised=self.noise == "supervised")
        return {"n_latent": int(k), "hidden": [int(h) for h in hidden],
                "n_filters": int(self.n_filters)}

    # the per-pixel DAE keeps its budget (about 3000 steps, 15-300 epochs, plateau decay):
    # self-supervised targets are noisy (see hyperspy_mlspec.engine.budget)
    _budget_steps = 3000
    _budget_passes = (15, 300)
    _schedule = "plateau"

    def _batch_size(self, n_rows: int) -> int:
        # many small steps: self-supervised targets are noisy and the plateau schedule of
        # the engine counts epochs, so small maps need more than a handful of steps per epoch
        if self.batch_size == "auto":
            return int(np.clip(n_rows // 32, 8, 128))
        return super()._batch_size(n_rows)

    def _build_module(self, n_features: int) -> torch.nn.Module:
        sizes = self.__dict__.pop("_restored_sizes", None) or self._sizes(n_features)
        self.n_latent_ = sizes["n_latent"]
        self.sizes_ = sizes
        if self.architecture == "conv":
            return ConvDenoiser(n_features, sizes["n_latent"], n_filters=sizes["n_filters"],
                                nonnegative=self.nonnegative_)
        return DenseDenoiser(n_features, sizes["n_latent"], hidden=tuple(sizes["hidden"]),
                             nonnegative=self.nonnegative_)

    def _predict(self, x: torch.Tensor, total: torch.Tensor | None = None) -> torch.Tensor:
        """Denoised spectra in data units; count-conserving models keep ``total`` (default:
        the input's own total counts)."""
        xn, m = self.normalizer_.forward(x)
        pred = self.module_(xn) * m
        if self.conserves_counts_:
            total = x.sum(1, keepdim=True) if total is None else total
            pred = pred * (total.clamp_min(0) / pred.sum(1, keepdim=True).clamp_min(1e-12))
        return pred

    def _inference_halves(self, x: torch.Tensor, k: int, seed: int):
        return _halves(x, k, seed, gain=float(getattr(self, "count_gain_", 1.0)),
                       correlation=getattr(self, "noise_correlation_", None))

    def _denoise_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Inference: for ``poisson-split`` the average prediction from ``inference_splits``
        binomial halves of ``x`` (the inputs the network was trained on), kept at the total
        counts of ``x``; otherwise the prediction from ``x`` itself."""
        k = int(self.inference_splits)
        if self.noise != "poisson-split" or k == 0:
            return self._predict(x)
        total = x.sum(1, keepdim=True)
        out = torch.zeros_like(x)
        for half in self._inference_halves(x, k, seed=0):
            out += self._predict(half, total=total)
        return out / k

    def _simulate(self, clean: torch.Tensor, gen: torch.Generator | None):
        """Noisy versions of clean spectra and the expected values they were drawn from."""
        expected = clean
        if self.dose is not None:
            lo, hi = _as_range(self.dose, "dose", 0.0, np.inf)
            u = torch.rand(len(clean), 1, generator=gen, device=clean.device)
            dose = lo * (hi / lo) ** u
            mean = clean.mean(1, keepdim=True)
            expected = clean.clamp_min(0) * torch.where(mean > 0, dose / mean.clamp_min(1e-30),
                                                        0.0)
            noisy = torch.poisson(expected, generator=gen)
        else:
            noisy = clean.clone()
        if self.read_noise > 0:
            noise = torch.randn(clean.shape, generator=gen, device=clean.device)
            noisy = noisy + self.read_noise * noise
        return noisy, expected

    def _step_loss(self):
        poisson = self.loss_ == "poisson"
        val_gen = torch.Generator(device=self.device_)
        module = self.module_
        norm = self.normalizer_

        def generator(training: bool) -> torch.Generator | None:
            # training draws from the trainer's seeded stream; validation draws are the
            # same at every epoch so early stopping compares like with like
            return None if training else val_gen.manual_seed(12345)

        gain = getattr(self, "count_gain_", 1.0)
        rho = getattr(self, "noise_correlation_", None)

        def split_step(x: torch.Tensor, training: bool) -> torch.Tensor:
            x = x.round()
            # exact Binomial(x, 1/2), 4-5x faster than torch.binomial on a CPU (engine.sampling);
            # raw counts with a detector gain are split in electrons
            a = split_counts(x, gain, generator=generator(training), correlation=rho)
            full = self._predict(a, total=x.sum(1, keepdim=True))
            return poisson_deviance(0.5 * full, x - a)

        lo, hi = _as_range(self.mask_fraction, "mask_fraction", 0.0, 0.9) \
            if self.noise == "mask" else (0.0, 0.0)

        def mask_step(x: torch.Tensor, training: bool) -> torch.Tensor:
            gen = generator(training)
            fraction = lo + (hi - lo) * float(torch.rand(1, generator=gen, device=x.device))
            mask = torch.rand(x.shape, generator=gen, device=x.device) < fraction
            padded = torch.nn.functional.pad(x.unsqueeze(1), (1, 1), mode="replicate")[:, 0]
            neighbours = 0.5 * (padded[:, :-2] + padded[:, 2:])
            xm = torch.where(mask, neighbours, x)
            if poisson:
                return poisson_deviance_elements(self._predict(xm), x)[mask].mean()
            xn, m = norm.forward(xm)
            return ((module(xn) - x / m) ** 2)[mask].mean()

        weights = torch.as_tensor(getattr(self, "channel_weights_", None)
                                  if getattr(self, "channel_weights_", None) is not None
                                  else np.ones(1, np.float32), device=self.device_)

        def supervised_step(clean: torch.Tensor, training: bool) -> torch.Tensor:
            noisy, expected = self._simulate(clean, generator(training))
            if poisson:
                dev = poisson_deviance_elements(self._predict(noisy), expected)
                return (dev * weights).mean()
            xn, m = norm.forward(noisy)
            return gaussian_loss(module(xn), expected / m)

        return {"poisson-split": split_step, "mask": mask_step,
                "supervised": supervised_step}[self.noise]

    # -- public API -------------------------------------------------------------------------
    def transform(self, X):
        """Denoised spectra, same shape as ``X``; dask in gives dask out.

        Parameters
        ----------
        X
            Array of shape ``(n_spectra, n_features)``, in the units the model was trained
            on (counts for the Poisson noise models; any dose for count-conserving models).

        Returns
        -------
        ndarray or dask array of shape (n_spectra, n_features)
        """
        X = self._validate_transform_input(X)
        return self._map_rows(X, self._denoise_tensor, self.n_features_in_)

    def denoise(self, X):
        """Alias of :meth:`transform`."""
        return self.transform(X)

    def uncertainty(self, X, n_resamples: int = 16, random_state: int = 0):
        """Standard deviation of the denoised counts from test-time binomial resampling.

        Each count spectrum ``x`` is thinned ``n_resamples`` times into a half
        ``a ~ Binomial(x, 1/2)`` (a rounded normal approximation that does not depend on
        the other spectra of the batch); ``2 d(a)`` is an independent-noise version of the
        denoised spectrum ``d(x)`` whose conditional variance, for a denoiser linear in
        the counts, equals the Poisson variance of ``d(x)`` exactly (``Var(2a | x) = x``).
        For the network it is a first-order estimate of the noise-induced scatter. It does
        not include the model's bias (what the network cannot represent): look at the
        residuals for that.

        Parameters
        ----------
        X
            Count spectra ``(n_spectra, n_features)``, numpy or dask.
        n_resamples
            Number of binomial halves per spectrum (at least 2).
        random_state
            Seed of the resampling.

        Returns
        -------
        ndarray or dask array of shape (n_spectra, n_features)

        Examples
        --------
        >>> import numpy as np
        >>> X = np.random.default_rng(0).poisson(20, (100, 32)).astype(float)
        >>> dae = DenoisingAutoencoder(epochs=3, random_state=0, show_progressbar=False)
        >>> dae.fit(X).uncertainty(X, n_resamples=4).shape
        (100, 32)
        """
        check_is_fitted(self, "module_")
        if not self.conserves_counts_:
            raise ValueError("uncertainty() resamples detector counts and needs a model of "
                             "count data (Poisson loss); this model uses "
                             f"loss={self.loss_!r}.")
        if int(n_resamples) < 2:
            raise ValueError(f"n_resamples must be at least 2, got {n_resamples!r}")
        X = self._validate_transform_input(X)
        if not is_dask(X) and np.asarray(X).min() < 0:
            raise ValueError("uncertainty() needs non-negative counts.")

        return self._map_rows(X, functools.partial(self._uncertainty_tensor,
                                                   n_resamples=int(n_resamples),
                                                   random_state=int(random_state)),
                              self.n_features_in_)

    def _uncertainty_tensor(self, x: torch.Tensor, n_resamples: int,
                            random_state: int) -> torch.Tensor:
        draws = torch.stack([2.0 * self._predict(half) for half in
                             self._inference_halves(x, n_resamples, seed=random_state)])
        return draws.std(0)

    # -- persistence ------------------------------------------------------------------------
    def _fitted_arrays(self) -> dict[str, np.ndarray]:
        out = super()._fitted_arrays()
        if getattr(self, "channel_weights_", None) is not None:
            out["channel_weights_"] = np.asarray(self.channel_weights_, dtype=np.float32)
        return out

    def _fitted_config(self) -> dict:
        return {**super()._fitted_config(), "sizes_": self.sizes_,
                "conserves_counts_": bool(self.conserves_counts_),
                "count_gain_": float(getattr(self, "count_gain_", 1.0)),
                "noise_correlation_": [float(r) for r in
                                       getattr(self, "noise_correlation_", np.zeros(0))]}

    def _restore(self, config, arrays, weights) -> None:
        self._restored_sizes = config["sizes_"]
        super()._restore(config, arrays, weights)
        self.conserves_counts_ = config["conserves_counts_"]
        self.count_gain_ = float(config.get("count_gain_", 1.0))  # files of older versions: 1
        self.noise_correlation_ = np.asarray(config.get("noise_correlation_", [0.0] * NOISE_LAGS),
                                             dtype=np.float64)
        if "channel_weights_" in arrays:
            self.channel_weights_ = np.asarray(arrays["channel_weights_"], dtype=np.float32)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        tags.transformer_tags.preserves_dtype = ["float32"]  # float32 throughout
        return tags
