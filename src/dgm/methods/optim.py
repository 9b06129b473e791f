r"""Adam with one fused kernel per step, and a one-pass check for non-finite gradients.

``torch.optim.Adam(fused=True)`` already updates every parameter in one kernel, but each step
first walks the parameter list in Python (``_init_group``: state look-ups, list building, checks),
a noticeable share of a small model's step on the CPU (``benchmarks/throughput.py``).
:class:`FusedAdam` keeps the
lists of parameters, moments and step counters once the state exists and calls the same kernel
(``torch._fused_adam_``, what ``torch.optim.Adam`` itself calls) directly; the state dict, and so
every checkpoint, is the one ``torch.optim.Adam`` writes and reads.

:func:`nonfinite_gradients` sets a flag when any gradient holds a NaN or an infinity, in one pass
over all of them (the kernel behind ``torch.amp.GradScaler``), instead of one norm per tensor.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

_KERNEL = getattr(torch, "_fused_adam_", None)


#: the kernel's inverse scale, 1.0, per device (made once, not per step)
_ONES: dict[torch.device, torch.Tensor] = {}


def nonfinite_gradients(grads: list[torch.Tensor], found_inf: torch.Tensor) -> torch.Tensor:
    """Set ``found_inf`` (a float32 scalar) to 1 if any of ``grads`` is not finite; return it."""
    found_inf.zero_()
    if grads:
        one = _ONES.get(found_inf.device)
        if one is None:
            one = _ONES[found_inf.device] = torch.ones((), device=found_inf.device)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, one)
    return found_inf


class FusedAdam(torch.optim.Adam):
    """``torch.optim.Adam(params, lr, betas, eps, fused=True)`` with a lean ``step``.

    The fast path needs every parameter to have a gradient,
    plain Adam (no amsgrad, no weight decay, not maximizing) and a float learning rate; otherwise
    ``step`` is ``torch.optim.Adam.step``.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, fused=True)
        self._lists: list[tuple[list, list, list, list]] | None = None

    @property
    def fast_path(self) -> bool:
        """Whether the last step ran the fused kernel over the cached tensor lists."""
        return self._lists is not None

    def zero_grad(self, set_to_none: bool = True) -> None:
        """``torch.optim.Adam.zero_grad``; with ``set_to_none`` (the default) a plain loop,
        without the profiler range and the ``torch.compile`` guard that torch's adds."""
        if not set_to_none:
            super().zero_grad(set_to_none=False)
            return
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._lists = None  # the moments are new tensors

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._lists = None

    def _cached_lists(self) -> list[tuple[list, list, list, list]] | None:
        """Per group: parameters, first and second moments, step counters (once all exist);
        None where the fast path does not apply (checked every step: options may change)."""
        if (
            getattr(self, "grad_scale", None) is not None
            or getattr(self, "found_inf", None) is not None
        ):
            return None  # GradScaler's flags: torch's own step handles them
        for group in self.param_groups:
            if (
                group["amsgrad"]
                or group["weight_decay"] != 0
                or group["maximize"]
                or isinstance(group["lr"], torch.Tensor)
            ):
                return None
        if self._lists is None:
            lists = []
            for group in self.param_groups:
                params = group["params"]
                if any(p not in self.state or "exp_avg" not in self.state[p] for p in params):
                    return None
                states = [self.state[p] for p in params]
                lists.append(
                    (
                        params,
                        [s["exp_avg"] for s in states],
                        [s["exp_avg_sq"] for s in states],
                        [s["step"] for s in states],
                    )
                )
            self._lists = lists
        return self._lists

    @torch.no_grad()
    def step(self, closure=None, found_inf: torch.Tensor | None = None):  # noqa: ANN001
        """One Adam step; with ``found_inf`` (a float32 scalar on the parameters' device, 1.0
        for "skip") the kernel itself skips the update and the step counters stay, so that a
        step can be skipped without the host reading the flag (GradScaler's mechanism)."""
        lists = self._cached_lists() if closure is None and _KERNEL is not None else None
        grads = None
        if lists is not None:
            grads = [[p.grad for p in params] for params, *_ in lists]
        if grads is None or any(g is None for gs in grads for g in gs):
            if found_inf is not None and bool(found_inf):  # no fast path yet: read the flag
                return None
            return super().step(closure)
        for group, (params, exp_avgs, exp_avg_sqs, steps), gs in zip(
            self.param_groups, lists, grads, strict=True
        ):
            beta1, beta2 = group["betas"]
            torch._foreach_add_(steps, 1)
            _KERNEL(
                params,
                gs,
                exp_avgs,
                exp_avg_sqs,
                [],
                steps,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                weight_decay=0.0,
                eps=group["eps"],
                amsgrad=False,
                maximize=False,
                grad_scale=None,
                found_inf=found_inf,
            )
            if found_inf is not None:  # a skipped step is not counted (as torch's Adam does)
                torch._foreach_sub_(steps, [found_inf] * len(steps))
        return None
