"""Autoencoder modules for 1-D spectra.

Design choices that the estimators rely on:

* Decoders are positively homogeneous: ``decode(a * z) = a * decode(z)`` for ``a > 0``
  (the linear decoder has no bias; the nonlinear one corrects it with an ordinary MLP of
  the direction ``z / |z|``, which is of degree zero). The per-spectrum intensity scale
  can therefore be folded into the latent code (HyperSpy's "loadings") and the
  reconstruction from loadings alone is exact, with a linear or a nonlinear decoder.
* With ``nonnegative=True`` outputs are non-negative (valid Poisson rates): codes and the
  linear weights are softplus-parameterised (NMF-like, interpretable components) and the
  nonlinear correction is multiplicative.
* With ``linear_path=True`` (signed codes and weights) the encoder has a linear skip from
  its input to the code and :meth:`SpectralAutoencoder.init_from_pca` starts the whole
  network at the Poisson-weighted PCA of the data (skip = projection on the components,
  decoder = the components, MLP corrections at zero): training can only move away from
  the linear solution where the loss says it is better. ``clip_negative`` floors the
  rates at zero (a ReLU, homogeneous too), as counts are.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hyperspy_mlspec.arrays.counts import quadratic_noise

_INIT_ROWS = 4096  # rows of the k-means initialisation


def default_hidden_sizes(n_features: int, n_components: int) -> tuple[int, int]:
    """Hidden widths chosen from the data: an eighth of the channels, 64 to 256.

    Narrower than the quarter (up to 512) of earlier versions: the same or lower errors
    against the truth on the benchmark maps at half the FLOPs (training and inference; see
    ``benchmarks/RESULTS.md``, speed section).

    Examples
    --------
    >>> default_hidden_sizes(1024, 4)
    (128, 64)
    >>> default_hidden_sizes(2048, 4), default_hidden_sizes(160, 4)
    ((256, 128), (64, 32))
    """
    h1 = int(min(256, max(64, n_features // 8, 8 * n_components)))
    return h1, max(32, h1 // 2, 4 * n_components)


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """``x`` with ``softplus(x) = y`` (y > 0), stable for large ``y``."""
    return y + torch.log(-torch.expm1(-y))


def optimal_shrinkage(singular_values: torch.Tensor, shape: tuple[int, int],
                      noise_var: float | torch.Tensor) -> torch.Tensor:
    """Factors ``eta(y) / y`` of the Frobenius-optimal singular-value shrinker for a
    ``shape`` matrix with white noise of variance ``noise_var`` per element (Gavish and
    Donoho, "Optimal shrinkage of singular values", 2017): 0 at or below the noise edge
    ``1 + sqrt(beta)``, towards 1 for strong components. ``noise_var`` may be one value
    per singular value (noise correlated between channels is stronger along some
    components).

    Examples
    --------
    >>> import torch
    >>> f = optimal_shrinkage(torch.tensor([400.0, 60.0, 10.0]), (1000, 100), 1.0)
    >>> [round(float(v), 3) for v in f]
    [0.993, 0.672, 0.0]
    """
    n, m = max(shape), min(shape)
    beta = m / n
    level = torch.as_tensor(noise_var, dtype=torch.float64, device=singular_values.device)
    y = singular_values.double() / (level.sqrt() * n ** 0.5)
    edge = 1.0 + beta ** 0.5
    inner = ((y**2 - beta - 1.0) ** 2 - 4.0 * beta).clamp_min(0.0)
    eta = torch.where(y > edge, inner.sqrt() / y.clamp_min(1e-12), torch.zeros_like(y))
    return (eta / y.clamp_min(1e-12)).clamp(0.0, 1.0)


class NonNegativeLinear(nn.Module):
    """Bias-free linear map with weights ``softplus(raw)`` (non-negative, smooth)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        # initialise so softplus(raw) ~ U(0, 2/n_in): outputs start near the data scale
        init = torch.rand(n_out, n_in) * (2.0 / n_in) + 1e-4
        self.raw = nn.Parameter(inverse_softplus(init))

    @property
    def weight(self) -> torch.Tensor:
        return F.softplus(self.raw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T


class DenseEncoder(nn.Module):
    """Fully connected encoder ``D -> h1 -> h2 -> features``."""

    def __init__(self, n_features: int, hidden: tuple[int, int]) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_features, hidden[0]), nn.SiLU(),
            nn.Linear(hidden[0], hidden[1]), nn.SiLU(),
        )
        self.out_features = hidden[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvEncoder(nn.Module):
    """1-D convolutional encoder: nearby channels share filters (peaks, edges)."""

    def __init__(self, n_features: int, hidden: tuple[int, int]) -> None:
        super().__init__()
        widths = (1, 16, 32, 64)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Conv1d(c_in, c_out, kernel_size=7, stride=2, padding=3), nn.SiLU()]
        n_pool = max(4, min(32, n_features // 8))
        self.conv = nn.Sequential(*layers, nn.AdaptiveAvgPool1d(n_pool))
        self.head = nn.Sequential(nn.Linear(widths[-1] * n_pool, hidden[1]), nn.SiLU())
        self.out_features = hidden[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x.unsqueeze(1)).flatten(1))


class SpectralAutoencoder(nn.Module):
    """Encoder, latent head (optionally variational) and homogeneous decoder.

    Parameters
    ----------
    n_features
        Channels per spectrum.
    n_components
        Latent dimensions.
    encoder
        ``"dense"`` or ``"conv"``.
    decoder
        ``"linear"`` (``x = z W``) or ``"nonlinear"`` (the linear decoder corrected by an
        MLP of ``z / |z|``: multiplied by ``exp(h)`` when non-negative, plus ``|z| h``
        otherwise).
    variational
        Add a log-variance head and sample latents during training (VAE).
    nonnegative
        Constrain outputs to be non-negative (needed by the Poisson loss).
    hidden
        Hidden widths ``(h1, h2)``; see :func:`default_hidden_sizes`.
    linear_path
        Add a linear skip from the (standardised) input to the latent code, so the network
        can represent PCA exactly (see :meth:`init_from_pca`). Needs ``nonnegative=False``.
    clip_negative
        Floor the decoder's output at zero (signed models of non-negative data).

    Examples
    --------
    >>> import torch
    >>> ae = SpectralAutoencoder(64, 3, hidden=(32, 16))
    >>> ae(torch.rand(5, 64))[0].shape
    torch.Size([5, 64])
    """

    def __init__(self, n_features: int, n_components: int, encoder: str = "dense",
                 decoder: str = "nonlinear", variational: bool = False,
                 nonnegative: bool = True, hidden: tuple[int, int] = (256, 128),
                 linear_path: bool = False, clip_negative: bool = False) -> None:
        super().__init__()
        if linear_path and nonnegative:
            raise ValueError("linear_path=True needs signed codes (nonnegative=False)")
        hidden = (int(hidden[0]), int(hidden[1]))
        # encoder inputs are standardised per channel: the variation between spectra, not
        # their common mean, drives the first layer (set with ``standardize_inputs``)
        self.register_buffer("input_shift", torch.zeros(n_features))
        self.register_buffer("input_scale", torch.ones(n_features))
        if encoder == "dense":
            self.encoder = DenseEncoder(n_features, hidden)
        elif encoder == "conv":
            self.encoder = ConvEncoder(n_features, hidden)
        else:
            raise ValueError(f"encoder must be 'dense' or 'conv', got {encoder!r}")
        self.mu = nn.Linear(self.encoder.out_features, n_components)
        self.skip = nn.Linear(n_features, n_components) if linear_path else None
        self.clip_negative = bool(clip_negative)
        # the additive correction |z| h: |z| is the code's norm, ~sqrt(C) times a
        # channel's value, so h is scaled down to act on the scale of one channel
        self.correction_scale = float(n_features) ** -0.5 if linear_path else 1.0
        self.logvar = nn.Linear(self.encoder.out_features, n_components) if variational else None
        if decoder not in ("linear", "nonlinear"):
            raise ValueError(f"decoder must be 'linear' or 'nonlinear', got {decoder!r}")
        self.linear_decoder = decoder == "linear"
        self.nonnegative = bool(nonnegative)
        self.out = (NonNegativeLinear(n_components, n_features) if nonnegative
                    else nn.Linear(n_components, n_features, bias=False))
        self.hidden_decoder = None
        if decoder == "nonlinear":
            # a correction h(z / |z|) of the linear decoder: degree zero in z, so the decoder
            # stays homogeneous; it starts at zero, i.e. at the (data-initialised) linear model
            self.hidden_decoder = nn.Sequential(
                nn.Linear(n_components, hidden[1]), nn.SiLU(),
                nn.Linear(hidden[1], hidden[0]), nn.SiLU(),
                nn.Linear(hidden[0], n_features),
            )

    def latent_activation(self, z: torch.Tensor) -> torch.Tensor:
        """Non-negative codes for non-negative decoders (NMF-like); identity else."""
        return F.softplus(z) if self.nonnegative else z

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the latent mean and log-variance (None unless variational)."""
        u = (x - self.input_shift) / self.input_scale
        h = self.encoder(u)
        mu = self.mu(h) if self.skip is None else self.mu(h) + self.skip(u)
        return mu, (self.logvar(h) if self.logvar is not None else None)

    def encode_counts(self, x: torch.Tensor, row_scale: torch.Tensor,
                      channel_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`encode` of ``x / (row_scale * channel_scale)`` for raw spectra ``x``.

        With the dense encoder the normalisation and the input standardisation are folded
        into the first layer (weights times the per-channel ``a``, the row scale and
        ``b`` applied to its ``(n, h1)`` output), for training and inference alike: no
        ``(n, C)`` temporary besides the product.
        """
        a = 1.0 / (channel_scale * self.input_scale)
        b = -self.input_shift / self.input_scale
        first = self.encoder.net[0] if isinstance(self.encoder, DenseEncoder) else None
        if first is not None:
            # the scales folded into the first layer's weights, stacked with the skip
            # path's (one (n, C) x (C, h1 + k) product instead of a second, thin (C, k)
            # one, measured at a tenth of the matmul rate), the row scale applied to the
            # small output: one pass over the (n, C) input, the matmul's
            w, bias = first.weight, first.bias
            if self.skip is not None:
                w = torch.cat([w, self.skip.weight])
                bias = torch.cat([bias, self.skip.bias])
            out = torch.mm(x, (w * a).T)
            if torch.is_grad_enabled():
                out = out.div(row_scale).add(bias + w @ b)
            else:
                out = out.div_(row_scale).add_(bias + w @ b)
            n1 = first.out_features
            h = self.encoder.net[1:](out[:, :n1])
            mu = self.mu(h)
            if self.skip is not None:
                mu = mu + out[:, n1:]
        else:
            u = torch.addcmul(b, x * (1.0 / row_scale), a)
            h = self.encoder(u)
            mu = self.mu(h) if self.skip is None else self.mu(h) + self.skip(u)
        return mu, (self.logvar(h) if self.logvar is not None else None)

    def rates(self, x: torch.Tensor, row_scale: torch.Tensor, channel_scale: torch.Tensor,
              sample: bool = False):
        """Reconstruction of raw spectra in their own units, with the latent code.

        Equals ``decode(code) * row_scale * channel_scale`` for the code of
        ``x / (row_scale * channel_scale)``; by homogeneity the row scale is applied to the
        ``(n, k)`` code and the channel scale to the decoder's output weights, so no
        ``(n, C)`` multiplier is ever built. Returns ``(rates, code * row_scale, mu,
        logvar)``; ``sample`` draws latents (variational models, training).
        """
        mu, logvar = self.encode_counts(x, row_scale, channel_scale)
        z = mu
        if sample and logvar is not None:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        loadings = self.latent_activation(z) * row_scale
        return self.decode(loadings, channel_scale), loadings, mu, logvar

    def rate_parts(self, x: torch.Tensor, row_scale: torch.Tensor,
                   channel_scale: torch.Tensor, sample: bool = False):
        """:meth:`rates` of a nonlinear non-negative decoder as its two factors, ``(linear,
        h, mu, logvar)`` with rates ``linear * exp(clamp(h, -10, 10))``, for a loss that
        fuses the product (:func:`~hyperspy_mlspec.engine.losses.poisson_deviance_exp`)."""
        mu, logvar = self.encode_counts(x, row_scale, channel_scale)
        z = mu
        if sample and logvar is not None:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        code = self.latent_activation(z) * row_scale
        linear = code @ (self.out.weight * channel_scale[:, None]).T
        scale = code.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return linear, self.hidden_decoder(code / scale), mu, logvar

    def decode(self, code: torch.Tensor,
               channel_scale: torch.Tensor | None = None) -> torch.Tensor:
        """Map (activated) latent codes to normalised spectra (times ``channel_scale`` when
        given, folded into the output weights); homogeneous of degree one."""
        if channel_scale is None:
            linear = self.out(code)
        else:
            linear = code @ (self.out.weight * channel_scale[:, None]).T
        if self.linear_decoder:
            return linear.clamp_min(0.0) if self.clip_negative else linear
        scale = code.norm(dim=1, keepdim=True).clamp_min(1e-12)
        h = self.hidden_decoder(code / scale)
        if not torch.is_grad_enabled():  # inference: in place, no (n, C) temporaries
            if self.nonnegative:
                return linear.mul_(h.clamp_(-10.0, 10.0).exp_())
            out = linear.add_(h.mul_(scale * self.correction_scale))
            return out.clamp_min_(0.0) if self.clip_negative else out
        if self.nonnegative:  # multiplicative correction keeps rates non-negative
            return linear * torch.exp(h.clamp(-10.0, 10.0))
        out = linear + (scale * self.correction_scale) * h
        return out.clamp_min(0.0) if self.clip_negative else out

    def forward(self, x: torch.Tensor, sample: bool = False):
        """Return ``(reconstruction, code, mu, logvar)``; sample latents if ``sample``."""
        mu, logvar = self.encode(x)
        z = mu
        if sample and logvar is not None:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        code = self.latent_activation(z)
        return self.decode(code), code, mu, logvar

    @torch.no_grad()
    def standardize_inputs(self, x: torch.Tensor) -> None:
        """Set the encoder's input shift and scale from a sample of (normalised) spectra."""
        self.input_shift.copy_(x.mean(0))
        std = x.std(0) if len(x) > 1 else torch.ones_like(self.input_scale)
        floor = std[std > 0].mean() * 1e-3 if bool((std > 0).any()) else 1.0
        self.input_scale.copy_(std.clamp_min(floor))

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor) -> None:
        """Start near the data: the linear part from k-means centres of the typical spectra
        (as NMF initialisations do), the nonlinear correction at zero. Far fewer epochs than
        a random start."""
        if len(x) == 0:
            return
        if self.skip is not None:
            self.init_from_pca(x, getattr(self, "noise_var", None),
                               noise_correlation=getattr(self, "noise_rho", None))
            return
        x = x[:_INIT_ROWS]  # a random sample already: k-means centres need no more
        if not self.linear_decoder:
            last = self.hidden_decoder[-1]
            last.weight.zero_()
            last.bias.zero_()
        k = self.out.weight.shape[1]
        # ignore the 2 % most atypical spectra, so rare phases do not seed components (the
        # anomaly tools rely on a model that has not learnt them), then refine
        # farthest-point seeds with a few Lloyd iterations: centroids average many spectra
        far = ((x - x.median(0).values) ** 2).sum(1)
        x = x[far <= torch.quantile(far, 0.98)] if len(x) >= 50 else x
        chosen = [int(torch.argmax(x.sum(1)))]
        dist = ((x - x[chosen[0]]) ** 2).sum(1)
        for _ in range(1, k):
            chosen.append(int(torch.argmax(dist)))
            dist = torch.minimum(dist, ((x - x[chosen[-1]]) ** 2).sum(1))
        centres = x[chosen].clone()
        for _ in range(10):
            label = torch.cdist(x, centres).argmin(1)
            for j in range(k):
                if bool((label == j).any()):
                    centres[j] = x[label == j].mean(0)
        code = self.latent_activation(torch.zeros(1, k, device=x.device))
        code_scale = float(code.mean()) if self.nonnegative else 1.0
        w = centres.T / (k * code_scale)  # (n_features, k)
        if isinstance(self.out, NonNegativeLinear):
            self.out.raw.copy_(inverse_softplus(w.clamp_min(1e-4)))
        else:
            self.out.weight.copy_(w)

    @torch.no_grad()
    def init_from_pca(self, x: torch.Tensor, noise_var: float | None = None,
                      freeze: bool = True, noise_correlation=None) -> torch.Tensor:
        """Start at the truncated SVD of ``x`` (normalised spectra, Poisson-weighted
        for counts; no centring, as HyperSpy's PCA): the skip projects on the first
        components, the decoder's linear part is them, the MLP paths start at zero, so the
        network's output equals the PCA reconstruction. Needs ``linear_path=True``.

        With ``noise_var`` (the mean noise variance of an element of ``x``) each
        component's code is shrunk by the Frobenius-optimal factor of Gavish and Donoho
        (2017) for its singular value: components at the noise level are dropped, strong
        ones barely touched, so the start is at least as good as the plain truncation
        when the noise is white in these units (as Poisson noise is after the Keenan-Kotula
        weighting). With ``noise_correlation`` (correlation of the noise between channels
        1, 2, ... apart, a detector's point-spread function) each component's noise is
        that of the correlated noise along it (stronger along smooth components).
        ``freeze`` keeps the linear path fixed while training fits the nonlinear
        corrections. Returns the shrinkage factors."""
        if self.skip is None:
            raise ValueError("init_from_pca needs linear_path=True")
        k = self.out.weight.shape[1]
        # randomised SVD (as HyperSpy's default solver for a few components), seeded:
        # ~0.1 s for 4096 x 1024 where the full SVD takes over 1 s
        q = min(min(x.shape), k + 10)
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(0)
            _, sv, v = torch.svd_lowrank(x, q=q, niter=6)
        r = min(k, v.shape[1])  # fewer spectra than components: the rest stay at zero
        v = torch.cat([v[:, :r].T, v.new_zeros(k - r, v.shape[0])])  # (k, C)
        w = torch.ones(k, dtype=x.dtype, device=x.device)
        if noise_var is not None and noise_var > 0:
            level = torch.tensor(float(noise_var), dtype=torch.float64)
            if noise_correlation is not None and np.any(noise_correlation):
                level = level * torch.as_tensor(quadratic_noise(
                    v[:r].T.double().cpu().numpy(), np.asarray(noise_correlation)))
            w[:r] = optimal_shrinkage(sv[:r], x.shape, level.to(sv.device)).to(x.dtype)
        for head in (self.mu, *(() if self.logvar is None else (self.logvar,))):
            head.weight.zero_()
            head.bias.zero_()
        # code = x v^T with x = u * scale + shift for the standardised input u
        self.skip.weight.copy_(v * self.input_scale * w[:, None])
        self.skip.bias.copy_((v @ self.input_shift) * w)
        self.out.weight.copy_(v.T)
        if freeze:  # the closed-form linear model stays; training fits the corrections
            for p in (*self.skip.parameters(), *self.out.parameters()):
                p.requires_grad_(False)
        if self.hidden_decoder is not None:
            last = self.hidden_decoder[-1]
            last.weight.zero_()
            last.bias.zero_()
        return w

    @torch.no_grad()
    def permute_latent(self, order: torch.Tensor) -> None:
        """Reorder latent dimensions in place (e.g. by explained variance)."""
        heads = [self.mu] + ([self.logvar] if self.logvar is not None else [])
        heads += [self.skip] if self.skip is not None else []
        for head in heads:
            head.weight.copy_(head.weight[order])
            head.bias.copy_(head.bias[order])
        if isinstance(self.out, NonNegativeLinear):
            self.out.raw.copy_(self.out.raw[:, order])
        else:
            self.out.weight.copy_(self.out.weight[:, order])
        if self.hidden_decoder is not None:
            first = self.hidden_decoder[0]
            first.weight.copy_(first.weight[:, order])
