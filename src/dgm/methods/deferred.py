"""Deferred checks (CUDA): a training step with no host synchronization.

The flag of a step goes to the fused Adam kernel, which skips the update on the device itself,
and to a pinned host buffer by an asynchronous copy; the host reads it one step later, once the
next step has been launched, so the GPU never waits for the host. The outcomes (skipped steps
and the term at fault) are the synchronous path's, one step late. Per-datapoint tables
(SparseAdam, no device-side skip) keep the synchronous path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dgm.estimators import Estimate
from dgm.methods.base import Outcome
from dgm.methods.objective import fault_term


@dataclass
class Launched:
    """A step launched with deferred checks: its index, estimate, loss, its flags (skipped,
    and whether this rank's own loss or gradient was at fault) on their way to the host, and
    the CUDA event after their copy."""

    step: int
    est: Estimate
    loss: torch.Tensor
    flags: torch.Tensor
    event: torch.cuda.Event | None


class Deferred:
    """The deferred-check path of a :class:`dgm.methods.variational.VariationalMethod`: one
    step launched and the one before it settled per :meth:`step`; ``requested`` forces it on
    or off (None: on CUDA), never with per-datapoint tables."""

    def __init__(self, method: Any) -> None:
        self.method = method
        self.requested: bool | None = None
        self.pending: Launched | None = None  # the step whose flag is in flight

    @property
    def enabled(self) -> bool:
        m = self.method
        if self.requested is None:
            return m.device.type == "cuda" and m.local_optimizer is None
        return self.requested and m.local_optimizer is None  # tables: never

    def step(self, x: torch.Tensor, index: torch.Tensor, step: int) -> list[Outcome]:
        """Launch this step, then settle the one before it."""
        launched = self.launch(x, index, step)
        settled = [] if self.pending is None else [self.settle(self.pending)]
        self.pending = launched
        return settled

    def flush(self) -> list[Outcome]:
        if self.pending is None:
            return []
        pending, self.pending = self.pending, None
        return [self.settle(pending)]

    def launch(self, x: torch.Tensor, index: torch.Tensor, step: int) -> Launched:
        """One step whose update the device skips by itself if it is not finite."""
        m = self.method
        if m.whole_step is not None:  # one process: the compiled step skips by itself
            est, loss, bad = m.compiled_step(x, index, step)
            own = bad
        else:
            est, loss, bad = m.gradient(x, index, step)
            own = bad.clone()  # this rank's own flag, for the message
            if m.dist.enabled:  # every rank skips alike, without the host reading the flag
                m.dist.all_reduce_max(bad)
            m.optimizer.step(found_inf=bad)
        flags = torch.empty(2, pin_memory=m.device.type == "cuda")
        flags.copy_(torch.stack([bad, own]), non_blocking=True)
        event = None
        if m.device.type == "cuda":
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(m.device))  # the run's GPU, not device 0
        return Launched(step, est, loss, flags, event)

    def settle(self, launched: Launched) -> Outcome:
        """The launched step's outcome, read once its flag has reached the host."""
        if launched.event is not None:
            launched.event.synchronize()
        bad, own = (bool(v) for v in launched.flags.tolist())
        if not bad:
            return self.method.done(launched.step, launched.est)
        fault = "loss or gradient on another process"
        if own:  # the gradients in .grad are the next step's by now: judge by the loss
            fault = fault_term(launched.est, launched.loss)
        return Outcome(launched.step, None, fault)
