"""Noise models: per-element losses in the units of the data.

Both losses return the mean over all elements of a batch so that learning rates do not
depend on the number of channels. The Poisson deviance is 1 per channel on average for a
perfect model of Poisson data, which makes loss histories easy to read.

:func:`poisson_deviance` is fused: one autograd node whose forward makes three passes over
the batch (ratio, log, sums) and whose backward one (``1 - x / mu``), instead of the ten
element-wise nodes (and their saved temporaries) of the textbook expression, which
:func:`poisson_deviance_elements` keeps for per-element use. It always computes in
float32, also under autocast (bf16 rates would round the log term away).
"""

from __future__ import annotations

import torch

_EPS = 1e-8


class _FusedPoissonDeviance(torch.autograd.Function):
    """Mean of ``2 [x log(x / mu) - (x - mu)]`` with ``mu`` floored at ``_EPS``.

    Gradient with respect to the rate: ``2 (1 - x / mu) / N`` where ``mu >= _EPS``, zero
    where the floor is active (as ``clamp_min`` gives). The counts get no gradient.
    """

    @staticmethod
    def forward(ctx, rate: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        ratio = counts / rate.clamp_min(_EPS)  # x / mu; 0 where x = 0
        # x log(x / mu) with 0 log 0 = 0: the ratio is 0 exactly where x is, and the
        # floor only keeps log finite there (0 * log(tiny) = 0)
        log_term = torch.dot(counts.reshape(-1),
                             torch.log(ratio.clamp_min(1e-30)).reshape(-1))
        total = log_term - counts.sum() + rate.clamp_min(_EPS).sum()
        # where the floor is active the gradient is zero; on a CPU one read pass tells
        # whether it is anywhere (usually not), on a GPU the mask is applied without asking
        ctx.floored = rate.is_cuda or float(rate.detach().amin()) < _EPS
        ctx.save_for_backward(rate, ratio)
        return total * (2.0 / max(1, counts.numel()))

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        rate, ratio = ctx.saved_tensors
        scale = grad_output * (2.0 / max(1, ratio.numel()))
        grad = torch.sub(1.0, ratio).mul_(scale)
        if ctx.floored:
            grad.masked_fill_(rate < _EPS, 0.0)
        return grad, None


class _FusedPoissonDevianceExp(torch.autograd.Function):
    """Mean deviance of ``mu = linear * exp(clamp(h, -10, 10))`` (a multiplicative,
    log-link correction of a linear model), with ``mu`` floored at ``_EPS``.

    One node for the correction and the deviance: ``d/dlinear = g exp(h)``, ``d/dh =
    g mu`` with ``g = 2 (1 - x / mu) / N``, zero where a clamp is active. Eight passes over
    the batch forward and four backward, instead of the twenty of the separate nodes.
    """

    @staticmethod
    def forward(ctx, linear: torch.Tensor, h: torch.Tensor, counts: torch.Tensor):
        clamped = bool(h.is_cuda) or float(h.detach().abs().amax()) > 10.0
        e = h.clamp(-10.0, 10.0).exp_() if clamped else torch.exp(h)
        rate = torch.mul(linear, e)
        floored = bool(rate.is_cuda) or float(rate.amin()) < _EPS
        if floored:
            rate.clamp_min_(_EPS)
        ratio = counts / rate
        log_term = torch.dot(counts.reshape(-1),
                             torch.log(ratio.clamp_min(1e-30)).reshape(-1))
        total = log_term - counts.sum() + rate.sum()
        ctx.clamped, ctx.floored = clamped, floored
        ctx.save_for_backward(h if clamped else e[:0], e, rate, ratio)
        return total * (2.0 / max(1, counts.numel()))

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        h, e, rate, ratio = ctx.saved_tensors
        g = torch.sub(1.0, ratio).mul_(grad_output * (2.0 / max(1, ratio.numel())))
        if ctx.floored:
            g.masked_fill_(rate <= _EPS, 0.0)
        grad_linear = g * e
        grad_h = g.mul_(rate)
        if ctx.clamped:
            grad_h.masked_fill_(h.abs() > 10.0, 0.0)
        return grad_linear, grad_h, None


def poisson_deviance_exp(linear: torch.Tensor, h: torch.Tensor,
                         counts: torch.Tensor) -> torch.Tensor:
    """:func:`poisson_deviance` of ``linear * exp(clamp(h, -10, 10))`` in one node (the
    nonlinear, non-negative decoder of :class:`~hyperspy_mlspec.models.SpectralAutoencoder`
    followed by its loss).

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[1.0, 2.0]])
    >>> float(poisson_deviance_exp(x, torch.zeros(1, 2), x))
    0.0
    """
    linear, h, counts = linear.float(), h.float(), counts.float()
    if counts.requires_grad or torch.compiler.is_compiling():
        return poisson_deviance(linear * torch.exp(h.clamp(-10.0, 10.0)), counts)
    return _FusedPoissonDevianceExp.apply(linear, h, counts.detach())


def poisson_deviance(rate: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean Poisson deviance ``2 [x log(x / mu) - (x - mu)]`` (fused, float32).

    Parameters
    ----------
    rate
        Predicted expected counts ``mu`` (non-negative; floored at 1e-8).
    counts
        Observed counts ``x`` (no gradient flows to them).

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
    rate = rate.float()
    counts = counts.float()
    # the plain graph when counts need a gradient (no estimator's noise model does) and
    # under torch.compile, which fuses it itself (the custom node would break the graph)
    if counts.requires_grad or torch.compiler.is_compiling():
        return poisson_deviance_elements(rate, counts).mean()
    return _FusedPoissonDeviance.apply(rate, counts.detach())


def poisson_deviance_elements(rate: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Element-wise Poisson deviance (see :func:`poisson_deviance`); the reference
    expression, differentiable in both arguments."""
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
    return torch.mean((prediction.float() - target.float()) ** 2)


LOSSES = ("poisson", "mse")
