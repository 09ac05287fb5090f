"""Denoiser modules for 1-D spectra (torch only: no HyperSpy, no normalisation, no training).

Both modules map a normalised spectrum ``(batch, n_features)`` to a denoised normalised
spectrum of the same shape. Conventions the estimator relies on:

* inputs are standardised per channel with buffers set by :meth:`standardize_inputs`
  (the variation between spectra, not their common mean, drives the first layer);
* the output layer has a per-channel bias initialised from the mean input spectrum, so an
  untrained network already predicts the average spectrum and training learns deviations
  from it (a good start at very low dose, like PCA's mean);
* with ``nonnegative=True`` outputs go through a softplus (valid Poisson rates).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def _inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    y = y.clamp_min(1e-4)
    return y + torch.log(-torch.expm1(-y))


def default_hidden_sizes(n_features: int, supervised: bool = False) -> tuple[int, int]:
    """Hidden widths of :class:`DenseDenoiser`: narrow for self-supervised training
    (``n_features / 16`` clipped to 32-128, then half of it), wide for supervised training
    on clean spectra (``n_features / 2`` clipped to 128-512, then half of it).

    A denoiser trained on the noisy map itself can memorise the noise of its training
    spectra; the width of the last hidden layer bounds what it can reproduce per spectrum,
    and narrow layers keep it close to the low-dimensional signal manifold. Trained on a
    clean simulation library there is no noise to memorise, and the narrow layers are what
    loses the weak fine structure (on ``eels_map``, 1024 channels, a library-trained
    (64, 32) network gave a Fe3+ fraction error of 0.36 on noise-free input, (512, 256)
    0.19).

    Examples
    --------
    >>> default_hidden_sizes(1024), default_hidden_sizes(1024, supervised=True)
    ((64, 32), (512, 256))
    >>> default_hidden_sizes(162, supervised=True)
    (128, 64)
    """
    if supervised:
        h1 = int(min(512, max(128, n_features // 2)))
        return h1, h1 // 2
    h1 = int(min(128, max(32, n_features // 16)))
    return h1, max(16, h1 // 2)


class _Standardized(nn.Module):
    """Shared input standardisation and output bias of the denoisers."""

    def __init__(self, n_features: int, nonnegative: bool) -> None:
        super().__init__()
        self.n_features = int(n_features)
        self.nonnegative = bool(nonnegative)
        self.register_buffer("input_shift", torch.zeros(self.n_features))
        self.register_buffer("input_scale", torch.ones(self.n_features))
        self.output_bias = nn.Parameter(torch.zeros(self.n_features))

    def _standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_shift) / self.input_scale

    def _activate(self, y: torch.Tensor) -> torch.Tensor:
        y = y + self.output_bias
        return F.softplus(y) if self.nonnegative else y

    @torch.no_grad()
    def standardize_inputs(self, x: torch.Tensor) -> None:
        """Set input shift/scale and the output bias from a sample of normalised spectra."""
        mean = x.mean(0)
        self.input_shift.copy_(mean)
        std = x.std(0) if len(x) > 1 else torch.ones_like(self.input_scale)
        floor = std[std > 0].mean() * 1e-3 if bool((std > 0).any()) else 1.0
        self.input_scale.copy_(std.clamp_min(floor))
        self.output_bias.copy_(_inverse_softplus(mean) if self.nonnegative else mean)


class DenseDenoiser(_Standardized):
    """Fully connected bottleneck autoencoder ``D -> h1 -> h2 -> k -> h2 -> h1 -> D``.

    The ``k``-dimensional bottleneck is the regulariser: the network can only pass what it
    can describe with ``k`` nonlinear coordinates, so channel-independent noise is dropped.

    Parameters
    ----------
    n_features
        Channels per spectrum.
    n_latent
        Bottleneck width ``k``.
    hidden
        Hidden widths ``(h1, h2)``.
    nonnegative
        Softplus output (Poisson rates).

    Examples
    --------
    >>> import torch
    >>> DenseDenoiser(64, 4, hidden=(32, 16))(torch.rand(5, 64)).shape
    torch.Size([5, 64])
    """

    def __init__(self, n_features: int, n_latent: int, hidden: tuple[int, int] = (256, 128),
                 nonnegative: bool = True) -> None:
        super().__init__(n_features, nonnegative)
        h1, h2 = (int(h) for h in hidden)
        self.encoder = nn.Sequential(
            nn.Linear(n_features, h1), nn.SiLU(), nn.Linear(h1, h2), nn.SiLU(),
            nn.Linear(h2, n_latent),
        )
        self.decoder = nn.Sequential(
            nn.Linear(n_latent, h2), nn.SiLU(), nn.Linear(h2, h1), nn.SiLU(),
            nn.Linear(h1, n_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._activate(self.decoder(self.encoder(self._standardize(x))))


class _ConvBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel_size: int) -> None:
        pad = kernel_size // 2
        super().__init__(
            nn.Conv1d(c_in, c_out, kernel_size, padding=pad, padding_mode="replicate"),
            nn.SiLU(),
            nn.Conv1d(c_out, c_out, kernel_size, padding=pad, padding_mode="replicate"),
            nn.SiLU(),
        )


class ConvDenoiser(_Standardized):
    """1-D convolutional U-Net with a dense bottleneck for global context.

    Convolutions share filters along the energy axis (nearby channels are related: peaks,
    edges, fine structure); each level halves the resolution and doubles the filters, skip
    connections carry detail back up. At the coarsest level a dense ``n_latent`` bottleneck
    adds information about the whole spectrum (which phase, thickness), which purely local
    filters cannot see.

    Parameters
    ----------
    n_features
        Channels per spectrum (any length: padded internally to a multiple of
        ``2**depth``).
    n_latent
        Width of the dense global bottleneck.
    n_filters
        Filters of the first level (doubled at each level).
    depth
        Number of down-sampling levels.
    kernel_size
        Odd convolution kernel size.
    nonnegative
        Softplus output (Poisson rates).

    Examples
    --------
    >>> import torch
    >>> ConvDenoiser(100, 4, n_filters=4, depth=2)(torch.rand(3, 100)).shape
    torch.Size([3, 100])
    """

    def __init__(self, n_features: int, n_latent: int, n_filters: int = 16, depth: int = 3,
                 kernel_size: int = 5, nonnegative: bool = True) -> None:
        super().__init__(n_features, nonnegative)
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.depth = int(depth)
        multiple = 2 ** self.depth
        self.padded = int(math.ceil(n_features / multiple) * multiple)
        widths = [int(n_filters) * 2**i for i in range(self.depth + 1)]
        self.down = nn.ModuleList()
        c_in = 1
        for w in widths[:-1]:
            self.down.append(_ConvBlock(c_in, w, kernel_size))
            c_in = w
        self.bottom = _ConvBlock(widths[-2], widths[-1], kernel_size)
        n_coarse = self.padded // multiple
        n_squeeze = 4
        self.squeeze = nn.Conv1d(widths[-1], n_squeeze, 1)
        self.global_code = nn.Sequential(
            nn.Linear(n_squeeze * n_coarse, n_latent), nn.SiLU(),
            nn.Linear(n_latent, n_squeeze * n_coarse), nn.SiLU(),
        )
        self.unsqueeze = nn.Conv1d(n_squeeze, widths[-1], 1)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for w_low, w in zip(widths[:0:-1], widths[-2::-1], strict=True):
            self.up.append(nn.ConvTranspose1d(w_low, w, 2, stride=2))
            self.merge.append(_ConvBlock(2 * w, w, kernel_size))
        self.head = nn.Conv1d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._standardize(x).unsqueeze(1)
        if self.padded != self.n_features:
            h = F.pad(h, (0, self.padded - self.n_features), mode="replicate")
        skips = []
        for block in self.down:
            h = block(h)
            skips.append(h)
            h = F.avg_pool1d(h, 2)
        h = self.bottom(h)
        code = self.global_code(self.squeeze(h).flatten(1))
        h = h + self.unsqueeze(code.view(len(code), -1, h.shape[-1]))
        for up, merge, skip in zip(self.up, self.merge, reversed(skips), strict=True):
            h = merge(torch.cat([up(h), skip], dim=1))
        y = self.head(h).squeeze(1)[:, : self.n_features]
        return self._activate(y)
