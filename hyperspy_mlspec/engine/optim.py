"""Adam without ``torch.optim``'s machinery: one fused kernel per step, nothing imported.

Constructing any ``torch.optim`` optimiser imports ``torch._dynamo`` (its methods are
decorated to be skipped by the compiler), which takes 0.8-2.5 s on the 2-core machine the
package is benchmarked on: longer than a whole fit of a small map. This Adam calls the same
fused kernel that ``torch.optim.Adam(fused=True)`` uses (``torch._fused_adam_``: one pass
over all parameters) and falls back to the ``torch._foreach_*`` form of the same update
where that kernel is missing (older torch, unusual devices or dtypes). Its
``state_dict`` has the layout of ``torch.optim.Adam``'s, so either can load the other's.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class Adam:
    """Adam (Kingma & Ba) with L2 ``weight_decay`` added to the gradient, as torch's.

    Parameters
    ----------
    params
        Parameters to optimise.
    lr, betas, eps, weight_decay
        The usual Adam settings.

    Attributes
    ----------
    param_groups
        One group (a dict with ``params``, ``lr``, ``betas``, ``eps``, ``weight_decay``),
        as in ``torch.optim``: schedules change ``param_groups[0]["lr"]``.

    Examples
    --------
    >>> lin = torch.nn.Linear(2, 1)
    >>> opt = Adam(lin.parameters(), lr=0.1)
    >>> lin(torch.ones(4, 2)).pow(2).mean().backward()
    >>> opt.step(); opt.zero_grad()
    >>> int(opt.state_dict()["state"][0]["step"])
    1
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        if not lr > 0:
            raise ValueError(f"learning rate must be positive, got {lr!r}")
        self.param_groups = [{"params": params, "lr": float(lr),
                              "betas": (float(betas[0]), float(betas[1])),
                              "eps": float(eps), "weight_decay": float(weight_decay)}]
        self.state: dict[torch.nn.Parameter, dict[str, torch.Tensor]] = {}
        self._fused = hasattr(torch, "_fused_adam_")

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients (set them to None by default, as torch does)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every parameter that has a gradient."""
        for group in self.param_groups:
            buckets: dict[tuple, list] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state.get(p)
                if st is None:
                    st = self.state[p] = {
                        "step": torch.zeros((), dtype=torch.float32, device=p.device),
                        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                        "exp_avg_sq": torch.zeros_like(p,
                                                       memory_format=torch.preserve_format)}
                buckets.setdefault((p.device, p.dtype), []).append((p, st))
            for items in buckets.values():
                self._update(group, items)

    def _update(self, group: dict, items: list) -> None:
        params = [p for p, _ in items]
        grads = [p.grad for p in params]
        avgs = [st["exp_avg"] for _, st in items]
        sqs = [st["exp_avg_sq"] for _, st in items]
        steps = [st["step"] for _, st in items]
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        if self._fused:
            try:
                torch._foreach_add_(steps, 1)
                torch._fused_adam_(params, grads, avgs, sqs, [], steps, lr=lr, beta1=beta1,
                                   beta2=beta2, weight_decay=wd, eps=eps, amsgrad=False,
                                   maximize=False)
                return
            except (RuntimeError, NotImplementedError, TypeError):
                torch._foreach_sub_(steps, 1)  # undo: the fallback counts the step itself
                self._fused = False
        torch._foreach_add_(steps, 1)
        if wd:
            grads = torch._foreach_add(grads, params, alpha=wd)
        torch._foreach_lerp_(avgs, grads, 1 - beta1)
        torch._foreach_mul_(sqs, beta2)
        torch._foreach_addcmul_(sqs, grads, grads, 1 - beta2)
        for p, m, v, t in zip(params, avgs, sqs, steps, strict=True):
            n = float(t)
            bias1, bias2 = 1 - beta1 ** n, 1 - beta2 ** n
            denom = (v.sqrt() / bias2 ** 0.5).add_(eps)
            p.addcdiv_(m, denom, value=-lr / bias1)

    # -- torch.optim-compatible state -----------------------------------------------------
    def state_dict(self) -> dict:
        """``{"state": {index: {"step", "exp_avg", "exp_avg_sq"}}, "param_groups": [...]}``
        in ``torch.optim.Adam``'s layout (JSON-able groups)."""
        index = {id(p): i for i, p in enumerate(self.param_groups[0]["params"])}
        state = {index[id(p)]: dict(st) for p, st in self.state.items() if id(p) in index}
        groups = []
        for g in self.param_groups:
            groups.append({"lr": g["lr"], "betas": list(g["betas"]), "eps": g["eps"],
                           "weight_decay": g["weight_decay"], "amsgrad": False,
                           "maximize": False, "foreach": None, "capturable": False,
                           "differentiable": False, "fused": None,
                           "decoupled_weight_decay": False,
                           "params": [index[id(p)] for p in g["params"]]})
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state saved by this class or by ``torch.optim.Adam``."""
        params = self.param_groups[0]["params"]
        saved = state_dict["param_groups"][0]
        if len(saved["params"]) != len(params):
            raise ValueError("the saved optimizer state is for a different number of "
                             "parameters")
        group = self.param_groups[0]
        group["lr"] = float(saved["lr"])
        group["betas"] = tuple(float(b) for b in saved["betas"])
        group["eps"] = float(saved["eps"])
        group["weight_decay"] = float(saved["weight_decay"])
        self.state = {}
        for i, st in state_dict["state"].items():
            p = params[int(i)]
            self.state[p] = {
                "step": torch.as_tensor(st["step"], dtype=torch.float32,
                                        device=p.device).reshape(()).clone(),
                "exp_avg": st["exp_avg"].to(p.device, p.dtype).clone(),
                "exp_avg_sq": st["exp_avg_sq"].to(p.device, p.dtype).clone()}
