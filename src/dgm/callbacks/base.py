"""The callback interface: code that :func:`dgm.fit` and :func:`dgm.resume` run around training.

A callback subclasses :class:`Callback` and overrides what it needs. Each hook receives a
:class:`dgm.runs.Run` of the training in progress: the run's directory, configuration and data,
and the very modules being trained, so ``run.sample``, ``run.reconstruct`` and ``run.encode``
show the model as it is at that epoch. Hooks run on the process that writes files (rank 0
under torchrun), after the epoch's checkpoint; a hook that draws random numbers must leave the
training's generators as it found them (:func:`torch.random.fork_rng`), or a resumed run would
no longer continue bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dgm.runs import Run


class Callback:
    """Hooks around a training; each does nothing until a subclass overrides it.

    >>> class PrintTestELBO(Callback):
    ...     def on_epoch_end(self, run, metrics):
    ...         print(metrics["epoch"], metrics["test_elbo"])
    >>> run = dgm.fit(config, callbacks=[PrintTestELBO()])          # doctest: +SKIP
    """

    def on_train_start(self, run: Run) -> None:
        """Before the first epoch trained here; a resumed run has ``run.epoch`` epochs done."""

    def on_epoch_end(self, run: Run, metrics: dict[str, Any]) -> None:
        """After each epoch's checkpoint, with its row of ``metrics.jsonl`` (``run.epoch`` is
        ``metrics["epoch"]``, and ``run.metrics`` ends with it)."""

    def on_train_end(self, run: Run) -> None:
        """When training ends, however it ends: finished, stopped by a signal after an epoch's
        checkpoint (``run.stop_signal`` says which) or by an error; after a run that finished
        has its pictures."""


class CallbackList:
    """Calls ``callbacks`` in their order with one :class:`Run` of the training in progress,
    which ``view()`` makes when training starts (how :func:`dgm.fit` drives them)."""

    def __init__(self, callbacks: Sequence[Callback], view: Callable[[], Run]) -> None:
        self.callbacks = list(callbacks)
        self._view = view
        self.run: Run | None = None

    def start(self) -> None:
        self.run = self._view()
        for callback in self.callbacks:
            callback.on_train_start(self.run)

    def epoch_end(self, metrics: dict[str, Any]) -> None:
        if self.run is None:
            return
        self.run.epoch = int(metrics["epoch"])
        self.run.metrics.append(metrics)
        for callback in self.callbacks:
            callback.on_epoch_end(self.run, metrics)

    def end(self, stop_signal: int | None) -> None:
        """``on_train_end``, once, if training started."""
        run, self.run = self.run, None
        if run is None:
            return
        run.stop_signal = stop_signal
        for callback in self.callbacks:
            callback.on_train_end(run)
