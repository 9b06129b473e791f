r"""The training step's forward, gradient and non-finite check as one compiled graph.

``train.compile`` used to compile the training forward only (``torch.compile`` of the
objective, with AOTAutograd's backward): autograd's engine ran that backward and the check
for non-finite gradients was a pass of its own. :class:`CompiledStep` compiles

    (grads, loss) = grad_and_value(-mean surrogate)(params)     (``torch.func``)
    bad = loss or any gradient not finite

as one function, so that inductor fuses the elementwise work of the forward, the backward and
the check around the matrix products, with no autograd engine at run time. The update stays
torch's fused Adam kernel (:class:`dgm.methods.optim.FusedAdam`), given ``bad`` as its
``found_inf``: a non-finite step is skipped on the device, with parameters, moments and step
counters left as they were, and the optimizer's state is the one ``torch.optim.Adam`` saves
whichever path trained. (Adam written into the graph too was slower than the fused kernel; see
``benchmarks/compile_speed.py``.)

It applies to functional estimators (reparameterized, STL, DReG) on amortized posteriors, in
float32, in one process: :func:`supports` says when; elsewhere ``train.compile`` compiles the
forward only.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass

import torch
from torch.func import functional_call, grad_and_value

from dgm.methods.optim import FusedAdam

#: ``train.compile = "auto"`` compiles the step of a run of at least this many training steps.
#: Compiling takes 10-30 s the first time (on this project's 2-core CPU; less once torch's
#: on-disk cache holds the graphs) and the whole step then saves about 1 ms of a 5-7 ms step
#: of the main job's model, so it pays after a few thousand steps.
AUTO_MIN_STEPS = 5_000


@dataclass(frozen=True)
class Decision:
    """How the training step computes: ``mode`` is ``"whole"`` (the step compiled whole),
    ``"forward"`` (the forward compiled, and so its backward) or ``"eager"``; ``reason`` is the
    line that says why (printed once when ``train.compile = "auto"`` decided)."""

    mode: str
    reason: str

    @property
    def compiled(self) -> bool:
        return self.mode != "eager"


def _compiler(device: torch.device) -> str | None:
    """Why torch.compile cannot build kernels for ``device`` here (None: it can)."""
    if device.type == "cuda":
        return None if importlib.util.find_spec("triton") else "no triton for the GPU"
    found = [os.environ.get("CXX")] + [shutil.which(c) for c in ("g++", "c++", "clang++")]
    return None if any(found) else "no C++ compiler for torch.compile on the CPU"


def decide(
    setting: bool | str, why_not_whole: str | None, steps: int, device: torch.device
) -> Decision:
    """The step's mode for ``train.compile = setting``: ``why_not_whole`` says why the step
    cannot be compiled whole (None: it can), ``steps`` is the run's number of training steps."""
    if setting is False:
        return Decision("eager", "train.compile = false: eager")
    if setting is True:
        if why_not_whole is None:
            return Decision("whole", "train.compile = true: the training step compiled whole")
        return Decision("forward", f"train.compile = true: the forward compiled ({why_not_whole})")
    auto = "train.compile = auto:"
    if why_not_whole is not None:
        return Decision(
            "eager", f"{auto} eager (the step cannot be compiled whole: {why_not_whole})"
        )
    if steps < AUTO_MIN_STEPS:
        return Decision(
            "eager",
            f"{auto} eager ({steps:,} training steps; compiling pays from about "
            f"{AUTO_MIN_STEPS:,}, train.compile = true compiles anyway)",
        )
    missing = _compiler(device)
    if missing is not None:
        return Decision("eager", f"{auto} eager ({missing})")
    return Decision(
        "whole",
        f"{auto} the training step compiled whole ({steps:,} steps; the first compile takes "
        "10-30 s, later ones less from torch's cache; train.compile = false for eager)",
    )


def supports(estimator: torch.nn.Module, optimizer: torch.optim.Optimizer) -> bool:
    """Whether the step can be compiled whole: an estimator that declares itself ``functional``
    (no state of its own to update: a score estimator's baselines update buffers), and dgm's
    fused Adam (its step takes the device-side flag ``found_inf``)."""
    return getattr(estimator, "functional", False) and isinstance(optimizer, FusedAdam)


class CompiledStep:
    """``step(x, index, kl_weight) -> (bound, log_lik, kl, loss, bad)``: one training step of
    ``objective`` (a :class:`dgm.methods.objective.Objective`: returns bound, surrogate,
    log_lik, kl) that updates ``params`` with ``optimizer`` (a :class:`FusedAdam`) unless the
    loss or a gradient is not finite. ``bad`` is a () float32 tensor, 1.0 when the update
    was skipped."""

    def __init__(
        self,
        objective: torch.nn.Module,
        params: list[torch.nn.Parameter],
        optimizer: FusedAdam,
        compile: bool = True,  # noqa: A002 (False: the same function eager, for tests)
    ) -> None:
        names = {id(p): name for name, p in objective.named_parameters()}
        missing = [p for p in params if id(p) not in names]
        if missing:
            raise ValueError(f"{len(missing)} parameter(s) to update are not the objective's")
        self.objective = objective
        self.params = list(params)
        self.names = [names[id(p)] for p in self.params]
        self.optimizer = optimizer
        # static shapes: a graph per batch size (the epoch's last, smaller batch has its own), not
        # one dynamic graph that automatic dynamic shapes would put first in the cache for all
        self._fn = torch.compile(self._gradient, dynamic=False) if compile else self._gradient

    def __call__(self, x: torch.Tensor, index: torch.Tensor, kl_weight: float):
        # KL warm-up: beta as a tensor, one graph for all its values (a float would be a
        # constant of the graph, a recompilation for each); 1.0 stays a float (no annealing)
        if kl_weight != 1.0:
            kl_weight = torch.tensor(kl_weight, dtype=x.dtype, device=x.device)
        # detached aliases: the gradient is torch.func's, outside autograd's graph
        params = tuple(p.detach() for p in self.params)
        bound, log_lik, kl, loss, bad, grads = self._fn(x, index, kl_weight, params)
        for p, g in zip(self.params, grads, strict=True):
            p.grad = g
        self.optimizer.step(found_inf=bad)  # skipped on the device where bad is 1.0
        return bound, log_lik, kl, loss, bad

    def _gradient(self, x, index, kl_weight, params):  # noqa: ANN001
        def loss_of(values):
            bound, surrogate, log_lik, kl = functional_call(
                self.objective, dict(zip(self.names, values, strict=True)), (x, index, kl_weight)
            )
            return -surrogate.mean(), (bound, log_lik, kl)

        grads, (loss, (bound, log_lik, kl)) = grad_and_value(loss_of, has_aux=True)(params)
        bad = torch.isfinite(loss).logical_not()
        for g in grads:
            bad = bad | torch.isfinite(g).all().logical_not()
        return bound, log_lik, kl, loss.detach(), bad.float(), grads
