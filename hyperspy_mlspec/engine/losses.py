"""Noise models: per-element losses in the units of the data.

Both losses return the mean over all elements of a batch so that learning rates do not
depend on the number of channels. The Poisson deviance is 1 per channel on average for a
perfect model of Poisson data, which makes loss histories easy to read.
"""

from __future__ import annotations

import torch

_EPS = 1e-8


def poisson_deviance(rate: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean Poisson deviance ``2 [x log(x / mu) - (x - mu)]``.

    Parameters
    ----------
    rate
        Predicted expected counts ``mu`` (non-negative).
    counts
        Observed counts ``x``.

    Returns
    -------
    torch.Tensor
        Scalar mean deviance per element.

    Examples
    --------
    >>> import torch
    >>> float(poisson_deviance(torch.ones(3), torch.ones(3)))
    0.0
    """
    return poisson_deviance_elements(rate, counts).mean()


def poisson_deviance_elements(rate: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Element-wise Poisson deviance (see :func:`poisson_deviance`)."""
    rate = rate.clamp_min(_EPS)
    log_term = torch.where(counts > 0, counts * torch.log(counts.clamp_min(_EPS) / rate), 0.0)
    return 2.0 * (log_term - (counts - rate))


def gaussian_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error (Gaussian negative log-likelihood up to constants).

    Examples
    --------
    >>> import torch
    >>> float(gaussian_loss(torch.zeros(2), torch.ones(2)))
    1.0
    """
    return torch.mean((prediction - target) ** 2)


LOSSES = ("poisson", "mse")
