"""The contract between the training core (:mod:`dgm.train.core`) and a family's method.

The core owns the loop: the data and its order, the step counter, the learning-rate schedule,
metric sums, divergence and recovery, checkpoints, signals, the progress bar and torchrun's
reductions. A :class:`Method` owns everything that knows what is being trained: its modules, its
optimizers, how one step on a batch computes losses and updates them, and how it is judged on
held-out data.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Outcome:
    """A training step's result once settled.

    ``step``: its index (the core's counter when it was taken). ``metrics``: per-example
    tensors, name -> ``(B,)``, detached, or None when the step was skipped (its update not made,
    because a loss or a gradient was not finite); ``fault`` then names the term at fault.
    ``detail``: the method's own record of the step, for callers that want more than metrics.
    """

    step: int
    metrics: dict[str, torch.Tensor] | None
    fault: str | None = None
    detail: Any = None


class Method(ABC):
    """One family's training, run by the core without knowing its kind.

    Contract:

    - :meth:`step` ``(x, index, step)`` does one training step on the batch (``x``: ``(B, D)``,
      ``index``: ``(B,)`` the examples' ids) whose index is ``step``: it computes the losses and
      steps the method's own optimizers, skipping the update when a value is not finite. It
      returns the outcomes settled so far, in step order: one per call when checks are
      synchronous, none on the first call and the previous step's after it when they are
      deferred (the host reads a step's flag one step late). :meth:`flush` returns what is
      still pending; the core calls it after an epoch's last step and before a recovery.
    - Every good :class:`Outcome` carries the per-example metrics named in
      :attr:`metric_names` (the core reports their means as ``train_<name>``, in this order)
      and :attr:`shown_metric` (the one the progress bar shows).
    - :meth:`checkpoint_modules` and :meth:`optimizer_state` are what checkpoints hold (whole,
      whatever the process's share); :meth:`restorable` and :meth:`load_optimizer_state` take
      them back. Either may use collectives under torchrun: every rank calls them.
    - :meth:`set_lr` sets the rate of the optimizers the schedule drives; :meth:`train_mode`
      switches the modules to training; :meth:`evaluate` returns held-out metrics.
    """

    #: per-example metrics reported by the core, in order
    metric_names: tuple[str, ...]
    #: the metric on the progress bar (in every good outcome, reported or not)
    shown_metric: str
    #: under torchrun, whether each rank trains only its own examples (ids n % world == rank)
    shard_examples: bool = False
    #: what to try after divergence, besides a lower learning rate (for the error message)
    remedies: str = ""
    #: whether its training step is compiled (a metrics row records it)
    compiled: bool = False
    #: lines to show once before training (how the step computes, where it was decided)
    notices: tuple[str, ...] = ()

    def attach(self, steps_per_epoch: int) -> None:  # noqa: B027 (optional)
        """Told once, before training, how many steps an epoch has (for step schedules)."""

    @abstractmethod
    def step(self, x: torch.Tensor, index: torch.Tensor, step: int) -> list[Outcome]:
        """One training step; the outcomes settled by now (see the class docstring)."""

    def flush(self) -> list[Outcome]:
        """The outcomes of steps taken but not yet settled (none without deferred checks)."""
        return []

    @abstractmethod
    def set_lr(self, lr: float) -> None:
        """The learning rate of the scheduled optimizers from now on."""

    @abstractmethod
    def train_mode(self) -> None:
        """Put the modules in training mode (the core calls it before each epoch)."""

    @abstractmethod
    def evaluate(self, x: torch.Tensor) -> dict[str, float]:
        """Metrics on held-out ``x`` (``test_<name>``: float), reduced over every rank."""

    @abstractmethod
    def checkpoint_modules(self) -> dict[str, dict[str, torch.Tensor]]:
        """Name -> state dict of every module a checkpoint holds."""

    @abstractmethod
    def restorable(
        self, saved: dict[str, dict[str, torch.Tensor]]
    ) -> list[tuple[torch.nn.Module, dict[str, torch.Tensor]]]:
        """From a checkpoint's modules: each module to restore and the state it takes."""

    @abstractmethod
    def optimizer_state(self) -> dict[str, Any]:
        """The optimizers' states as checkpoints hold them."""

    @abstractmethod
    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        """Take :meth:`optimizer_state`'s output back (ValueError, KeyError: it does not fit)."""

    def incompatibility(self, saved: Any) -> str | None:
        """Why a checkpoint written under the validated config ``saved`` cannot be resumed
        here (beyond a different ``model``, which the core refuses), or None."""
        return None
