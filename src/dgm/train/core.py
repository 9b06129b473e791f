"""The training core: epochs of steps of a method, with everything around them.

The core knows no family: a :class:`dgm.methods.base.Method` does each step. The core orders
the data, counts steps, applies the learning-rate schedule, sums the per-example metrics (over
torchrun's ranks too), counts non-finite steps and recovers from divergence, writes and restores
checkpoints (with every random number generator: the global torch RNG, the data generator for
shuffling and binarization, and under torchrun each rank's own), evaluates after every epoch,
draws the progress bar and stops cleanly on SIGINT or SIGTERM.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dgm.config import Config
from dgm.data import TensorBatches
from dgm.errors import CheckpointError, NumericalError
from dgm.methods.base import Method, Outcome
from dgm.train.checkpoint import (
    Checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_module_state,
    save_checkpoint,
)
from dgm.train.data import Data
from dgm.train.rngs import capture_rngs, restore_rngs
from dgm.train.schedule import changes_within_epoch, learning_rate
from dgm.train.signals import stop_on_signals
from dgm.train.validate import (
    check_loaded_optimizers,
    check_optimizer_state,
    check_trained_with,
    held_optimizers,
)


class _Diverged(Exception):
    """Internal: too many non-finite steps in a row (caught by TrainingCore.fit)."""


class TrainingCore:
    """Trains ``method`` on ``data`` as ``config.train`` says; checkpoints go to ``run_dir``.
    ``dist``: this process's :class:`dgm.train.distributed.Distributed`. Call it after the
    method's modules are built: under torchrun it reseeds the global RNG per rank."""

    def __init__(
        self, config: Config, run_dir: Path, method: Method, device: torch.device, dist, data: Data
    ) -> None:
        self.config, self.run_dir, self.method = config, Path(run_dir), method
        self.device, self.dist, self.data = device, dist, data
        tc = config.train
        self.generator = torch.Generator(device).manual_seed(tc.seed)
        # distributed: the shared generator orders the data alike on every rank; each rank's
        # noise (binarization, and the method's draws through the global RNG) is its own
        self.noise_generator = None
        if dist.enabled:
            rank_seed = tc.seed + 1_000_003 * (dist.rank + 1)
            self.noise_generator = torch.Generator(device).manual_seed(rank_seed)
            torch.manual_seed(rank_seed)
        self.batches = TensorBatches(
            data.x_train,
            batch_size=tc.batch_size,
            shuffle=True,
            binarize=config.data.binarize,
            generator=self.generator,
            static_seed=config.data.binarize_seed,
            dequantize=config.data.dequantize,
            shard=(dist.rank, dist.world),
            noise_generator=self.noise_generator,
            shard_examples=method.shard_examples,
        )
        method.attach(len(self.batches))
        self.epoch = 0
        self.step = 0
        self.train_time_s = 0.0
        self.stop_signal: int | None = None  # set by stop_on_signals: finish the epoch, stop
        # numerical faults: consecutive skipped steps, the last fault, restarts, lr multiplier
        self.bad_steps = 0
        self.last_fault: tuple[int, str] | None = None
        self.recoveries = 0
        self.lr_scale = 1.0

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def learning_rate(self, epoch: float) -> float:
        """The learning rate at (0-based, fractional) ``epoch`` (:mod:`dgm.train.schedule`)."""
        return learning_rate(self.config.train, epoch, self.lr_scale)

    # -- one epoch ---------------------------------------------------------------------------
    def record(self, outcome: Outcome) -> Outcome:
        """Count a settled step: a skipped one in ``bad_steps`` (consecutive) and ``last_fault``
        (its index and the term at fault)."""
        if outcome.metrics is None:
            self.bad_steps += 1
            self.last_fault = (outcome.step, outcome.fault or "loss")
        else:
            self.bad_steps = 0
        return outcome

    def train_epoch(self, progress: bool = False) -> dict[str, float]:
        lr = self.learning_rate(self.epoch)
        self.method.set_lr(lr)
        per_step = changes_within_epoch(self.config.train)
        self.method.train_mode()
        names, shown_name = self.method.metric_names, self.method.shown_metric
        # per good step, the metrics (each (B,)): summed at the end, no arithmetic per step
        parts: list[list[torch.Tensor]] = []
        shown_parts: list[torch.Tensor] = []  # the progress bar's metric, per good step
        shown, shown_steps = 0.0, 0  # the progress bar's running sum
        n = 0
        bar = tqdm(
            total=len(self.batches),
            desc=f"epoch {self.epoch + 1}/{self.config.train.epochs}",
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )
        start = time.perf_counter()
        skipped = 0
        last = len(self.batches) - 1
        for i, (x, index) in enumerate(self.batches):
            if per_step:
                self.method.set_lr(self.learning_rate(self.epoch + i / len(self.batches)))
            settled = self.method.step(x, index, self.step)
            self.step += 1
            if i == last:
                settled += self.method.flush()
            for outcome in settled:  # no metrics: a non-finite loss or gradient, step skipped
                if self.record(outcome).metrics is None:
                    skipped += 1
                    if self.bad_steps >= self.config.train.max_bad_steps:
                        raise _Diverged
                    continue
                parts.append([outcome.metrics[name] for name in names])
                shown_parts.append(outcome.metrics[shown_name])
                n += shown_parts[-1].shape[-1]
            if progress and len(parts) > shown_steps and (i % 50 == 0 or i == last):
                shown += torch.cat(shown_parts[shown_steps:]).double().sum().item()
                shown_steps = len(parts)
                bar.set_postfix({shown_name: f"{shown / n:.2f}"}, refresh=False)
            bar.update(1)
        bar.close()
        elapsed = time.perf_counter() - start
        self.train_time_s += elapsed
        totals = torch.zeros(len(names), device=self.device, dtype=torch.float64)
        if parts:
            totals = torch.stack(
                [torch.cat(column).double().sum() for column in zip(*parts, strict=True)]
            )
        if self.dist.enabled:  # every rank's examples
            summed = self.dist.sum(torch.cat([totals, totals.new_tensor([n, skipped])]))
            k = len(names)
            totals, n, skipped = summed[:k], int(summed[k]), int(summed[k + 1])
        means = (totals / max(n, 1)).tolist() if names else []
        out: dict[str, Any] = {f"train_{name}": v for name, v in zip(names, means, strict=True)}
        out["lr"] = lr
        out["skipped_steps"] = skipped
        out["epoch_time_s"] = elapsed
        out["images_per_s"] = n / elapsed if elapsed > 0 else 0.0
        # how this epoch computed (may change on resume): wall times mean little without it
        out["threads"] = torch.get_num_threads()
        out["compiled"] = self.method.compiled
        out["device"] = str(self.device)
        return out

    def evaluate(self, x: torch.Tensor | None = None) -> dict[str, float]:
        """The method's held-out metrics on ``x`` (default: the test set)."""
        return self.method.evaluate(self.data.x_test if x is None else x)

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint(self, metrics: dict[str, Any] | None = None) -> Path:
        ckpt = Checkpoint(
            epoch=self.epoch,
            step=self.step,
            config=self.config.to_dict(),
            modules=self.method.checkpoint_modules(),
            optimizer=self.method.optimizer_state(),
            rng=capture_rngs(self.generator, self.noise_generator, self.dist),
            extra={
                "train_time_s": self.train_time_s,
                "metrics": metrics or {},
                "lr_scale": self.lr_scale,
                "recoveries": self.recoveries,
            },
        )
        path = self.checkpoint_dir / f"epoch-{self.epoch:04d}"
        if self.dist.is_main:
            path = save_checkpoint(
                self.checkpoint_dir, ckpt, keep=self.config.train.keep_checkpoints
            )
        self.dist.barrier()  # no rank goes on before the checkpoint is complete
        return path

    def restore(self, path: Path | None = None, *, weights_only: bool = False) -> Path:
        """Load the latest (or the given) checkpoint; refuse one from a different model."""
        path = path or latest_checkpoint(self.checkpoint_dir)
        if path is None:
            raise CheckpointError(f"{self.checkpoint_dir}: no complete checkpoint to resume from")
        ckpt = load_checkpoint(path)  # every value checked, its config validated
        saved = ckpt.saved
        # the run's config.json against what its checkpoint was trained with: only how it
        # computes, its length and its learning rate may differ
        check_trained_with(self.config, self.run_dir / "config.json", saved, path)
        reason = self.method.incompatibility(saved)
        if reason is not None:
            raise CheckpointError(f"{path}: {reason}")
        for module, state in self.method.restorable(ckpt.modules):
            load_module_state(module, state, path)
        self.epoch, self.step = ckpt.epoch, ckpt.step
        if weights_only:
            return path
        check_optimizer_state(ckpt.optimizer, self.method.optimizer_state(), path / "state.json")
        try:
            self.method.load_optimizer_state(ckpt.optimizer)
        except (ValueError, KeyError, RuntimeError, TypeError) as err:
            raise CheckpointError(f"{path}: optimizer state does not match ({err})") from None
        check_loaded_optimizers(held_optimizers(self.method), path / "state.json")
        try:
            restore_rngs(ckpt.rng, self.generator, self.noise_generator, self.dist, path)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"{path}: random-number-generator state is invalid ({err})"
            ) from None
        self.train_time_s = float(ckpt.extra.get("train_time_s", 0.0))
        self.lr_scale = float(ckpt.extra.get("lr_scale", 1.0))
        self.recoveries = int(ckpt.extra.get("recoveries", 0))
        self.bad_steps = 0
        return path

    # -- the whole run ---------------------------------------------------------------------------
    def fit(
        self,
        progress: bool = False,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Train until ``train.epochs``; after each epoch evaluate, checkpoint, and report."""
        history = []
        while self.epoch < self.config.train.epochs and self.stop_signal is None:
            try:
                metrics: dict[str, Any] = self.train_epoch(progress)
            except _Diverged:
                self.method.flush()  # a step still in flight is dropped with its epoch
                self._recover()
                continue
            self.epoch += 1
            if self.dist.any(self.stop_signal is not None) and self.stop_signal is None:
                self.stop_signal = signal.SIGTERM  # another rank was asked to stop: all stop
            metrics = {"epoch": self.epoch, "step": self.step, **self.evaluate(), **metrics}
            metrics["train_time_s"] = self.train_time_s
            self.checkpoint(metrics)
            history.append(metrics)
            if on_epoch is not None:
                on_epoch(metrics)
        return history

    def _recover(self) -> None:
        """After ``max_bad_steps`` non-finite steps in a row: go back to the last checkpoint
        with the learning rate times ``recovery_lr_factor``, at most ``max_recoveries`` times;
        then stop with a message that says where, what and what to try."""
        tc = self.config.train
        step, term = self.last_fault or (self.step, "loss")
        path = latest_checkpoint(self.checkpoint_dir)
        if self.recoveries >= tc.max_recoveries or path is None:
            where = f"the last good checkpoint is {path}" if path else "no checkpoint was written"
            remedies = f", {self.method.remedies}" if self.method.remedies else ""
            raise NumericalError(
                f"step {step}: the {term} was non-finite for {tc.max_bad_steps} steps in a row "
                f"(after {self.recoveries} restart(s) from a checkpoint with a lower learning "
                f"rate); try a smaller train.lr (now {self.learning_rate(self.epoch):.3g})"
                f"{remedies}; {where}"
            )
        scale, recoveries = self.lr_scale * tc.recovery_lr_factor, self.recoveries + 1
        self.restore(path)
        self.lr_scale, self.recoveries = scale, recoveries

    def stop_on_signals(self) -> AbstractContextManager[None]:
        """SIGINT or SIGTERM asks :meth:`fit` to stop after the current epoch's checkpoint
        (:func:`dgm.train.signals.stop_on_signals`); ``stop_signal`` then says which."""
        return stop_on_signals(self)
