"""The training loop: VB with a gradient estimator, one epoch at a time.

With an amortized encoder every step updates theta and phi together. With per-datapoint
(``local``) inference every batch runs the lecture's VB-EM alternation: ``inner_steps - 1``
E-steps on the batch's rows (lambda_n, eta_n) with theta frozen, then one step that updates both
the rows (the last E-step) and theta (the M-step) from the same gradient evaluation.

The trainer owns everything a run needs to continue exactly: the model, the posterior, the
optimizer, the step counters and the random number generators (the global torch RNG, used by
``rsample``, and the data generator, used for shuffling and dynamic binarization).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dgm.build import build_estimator, build_model, build_posterior
from dgm.config import CLASSICAL, Config, validate
from dgm.data import (
    TensorBatches,
    binarize_fixed,
    dequantize_fixed,
    load_dataset,
    to_unit_interval,
)
from dgm.errors import CheckpointError, ConfigError, DGMError, UsageError
from dgm.estep import fit_local_posterior, frozen
from dgm.estimators import Estimate
from dgm.train.checkpoint import (
    Checkpoint,
    capture_rng,
    latest_checkpoint,
    load_checkpoint,
    load_module_state,
    restore_rng,
    save_checkpoint,
    set_generator_state,
)
from dgm.train.distributed import from_environment
from dgm.train.optim import FusedAdam, nonfinite_gradients
from dgm.train.step import CompiledStep
from dgm.train.step import supports as whole_step_supported
from dgm.variational.local import gather_rows, shard_rows


class NumericalError(DGMError):
    """Training kept producing non-finite values; the run directory holds the last good state."""


def _fault_term(est: Estimate, loss: torch.Tensor) -> str:
    """The term at fault in a skipped step: the gradient under a finite loss, else the first
    non-finite one of the log-likelihood, the KL and the loss."""
    if bool(torch.isfinite(loss)):
        return "gradient of the loss"
    if not bool(torch.isfinite(est.log_lik).all()):
        return "expected log-likelihood E_q[log p(x|z)]"
    if not bool(torch.isfinite(est.kl).all()):
        return "KL(q || p)"
    return "loss"


@dataclass
class _Launched:
    """A step launched with deferred checks: its index, estimate, loss, its flags (skipped,
    and whether this rank's own loss or gradient was at fault) on their way to the host, and
    the CUDA event after their copy."""

    step: int
    est: Estimate
    loss: torch.Tensor
    flags: torch.Tensor
    event: torch.cuda.Event | None


class _Diverged(Exception):
    """Internal: too many non-finite steps in a row (caught by Trainer.fit)."""


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(
            f"train.device: unknown device {name!r} (expected auto, cpu, cuda, cuda:N)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            f"train.device = {name!r} but CUDA is not available here (use cpu or auto)"
        )
    return device


@dataclass
class Data:
    """Training data (grey levels in [0, 1], binarized per batch) and the fixed test set."""

    x_train: torch.Tensor  # (N, D) grey levels on the device
    x_test: torch.Tensor  # (M, D) as evaluated: binarized once with a fixed seed, or grey levels
    image_shape: tuple[int, int]


def load_data(config: Config, device: torch.device) -> Data:
    dc = config.data
    ds = load_dataset(dc.dataset, data_dir=dc.data_dir, download=dc.download)
    x_train = to_unit_interval(ds.train_images[: dc.train_limit]).to(device)
    x_test = to_unit_interval(ds.test_images[: dc.test_limit]).to(device)
    if dc.binarize != "none":
        # Under dynamic binarization the test set is still binarized once, with a fixed seed, so
        # that every evaluation of a run sees the same binary test images.
        x_test = binarize_fixed(x_test, dc.binarize_seed)
    elif dc.dequantize:  # likewise one fixed dequantization of the test set
        x_test = dequantize_fixed(x_test, dc.binarize_seed)
    return Data(x_train, x_test, tuple(ds.train_images.shape[1:]))


IWAE_STAGES = 8  # Burda et al. (2015), section 5: 3^i passes at 1e-3 * 10^(-i/7), i = 0..7


def iwae_stage(epoch: float, epochs: int) -> int:
    """The stage i at (0-based, fractional) ``epoch`` when ``epochs`` are shared among the IWAE
    paper's 8 stages in proportion 3^0 : 3^1 : ... : 3^7 (3,280 epochs: 1, 3, 9, ..., 2,187)."""
    total = sum(3**i for i in range(IWAE_STAGES))  # 3280
    done = 0
    for i in range(IWAE_STAGES):
        done += 3**i
        if epoch * total < done * epochs:  # epoch < epochs * done / total
            return i
    return IWAE_STAGES - 1


class _Objective(torch.nn.Module):
    """The estimator applied to (model, posterior) as one module, for DistributedDataParallel,
    which needs the forward pass to go through it (and for ``torch.compile``); returns the
    fields of :class:`Estimate` in its order, (bound, surrogate, log_lik, kl).

    A per-datapoint table stays outside (``posterior=None``, its q passed to ``forward``): its
    rows are each rank's own, and their gradients must not be averaged across ranks."""

    def __init__(self, model: torch.nn.Module, posterior: torch.nn.Module | None, estimator):
        super().__init__()
        self.model, self.posterior, self.estimator = model, posterior, estimator

    def forward(self, x: torch.Tensor, index: torch.Tensor, kl_weight: float, q=None):
        q = self.posterior(x, index) if q is None else q
        est = self.estimator(self.model, q, x, kl_weight)
        return est.bound, est.surrogate, est.log_lik, est.kl


def _data_parallel(objective: _Objective, device: torch.device) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(objective, device_ids=ids)


class Trainer:
    """Builds a run's objects from its config and trains them; checkpoints go to ``run_dir``."""

    def __init__(self, config: Config, run_dir: Path, data: Data | None = None) -> None:
        if config.model.kind in CLASSICAL:
            raise UsageError(
                f"model.kind = '{config.model.kind}' is fitted by EM (dgm.train.classical), "
                "not by the VB trainer"
            )
        self.config = config
        self.run_dir = Path(run_dir)
        self.device = resolve_device(config.train.device)
        self.dist = from_environment(self.device.type)  # torchrun: this rank of the group
        if self.dist.enabled:
            self._check_distributed(config, self.dist.world)
            if self.device.type == "cuda":
                self.device = torch.device("cuda", self.dist.local_rank)
        self.data = data if data is not None else load_data(config, self.device)
        data_dim = self.data.x_train.shape[1]

        torch.manual_seed(config.train.seed)
        self.local = config.inference.kind == "local"
        self.bfloat16 = config.train.precision == "bfloat16"  # autocast in train_step only
        self.model = build_model(config.model, data_dim).to(self.device)
        shard = (self.dist.rank, self.dist.world)  # a per-datapoint table: this rank's rows
        self.posterior = build_posterior(config, data_dim, self.data.x_train.shape[0], shard)
        self.posterior = self.posterior.to(self.device)
        if config.model.init_output_bias:
            self.model.init_output_bias(self.data.x_train.mean(0))  # grey levels' mean, (D,)
        self.estimator = build_estimator(config, data_dim).to(self.device)
        tc = config.train
        global_params = [*self.model.parameters(), *self.estimator.parameters()]
        if not self.local:
            global_params += list(self.posterior.parameters())
        self._global_params = global_params
        # fused: one kernel for all parameters; on the CPU the default is a per-tensor Python
        # loop, 30% of a batch-20 step of the IWAE paper's model (2.3 vs 3.1 ms per step)
        self.optimizer = FusedAdam(global_params, lr=tc.lr, betas=tc.betas, eps=tc.eps)
        self._found_inf = torch.zeros((), device=self.device)  # set when a gradient is not finite
        # the per-datapoint tables: lazy (sparse) Adam touches only the rows in the batch
        self.local_optimizer = (
            torch.optim.SparseAdam(
                list(self.posterior.parameters()), lr=config.inference.local_lr, betas=tc.betas
            )
            if self.local
            else None
        )
        self.generator = torch.Generator(self.device).manual_seed(config.train.seed)
        # distributed: the shared generator orders the data alike on every rank; each rank's
        # noise (binarization, and z ~ q through the global RNG) is its own
        self.noise_generator = None
        self.ddp: torch.nn.Module | None = None
        # the training forward: the estimator on (model, posterior); tables stay outside it
        objective = _Objective(self.model, None if self.local else self.posterior, self.estimator)
        if self.dist.enabled:
            rank_seed = config.train.seed + 1_000_003 * (self.dist.rank + 1)
            self.noise_generator = torch.Generator(self.device).manual_seed(rank_seed)
            torch.manual_seed(rank_seed)
            self.ddp = _data_parallel(objective, self.device)  # tables: each rank's own rows
        forward = self.ddp if self.ddp is not None else objective
        # train.compile: forward, gradient and check as one compiled graph, then the fused Adam
        # kernel, where dgm.train.step supports it (one process, amortized, float32, a pathwise
        # estimator), else torch.compile of the training forward (and so of its backward); the
        # modules themselves stay uncompiled, so checkpoints and evaluation are unchanged
        self._whole_step: CompiledStep | None = None
        if (
            tc.compile
            and not self.dist.enabled
            and not self.local
            and not self.bfloat16
            and whole_step_supported(self.estimator, self.optimizer)
        ):
            self._whole_step = CompiledStep(objective, global_params, self.optimizer)
        self._forward = (
            torch.compile(forward) if tc.compile and self._whole_step is None else forward
        )
        self.batches = TensorBatches(
            self.data.x_train,
            batch_size=tc.batch_size,
            shuffle=True,
            binarize=config.data.binarize,
            generator=self.generator,
            static_seed=config.data.binarize_seed,
            dequantize=config.data.dequantize,
            shard=(self.dist.rank, self.dist.world),
            noise_generator=self.noise_generator,
            shard_examples=self.local,  # each rank trains the rows it holds
        )
        self.epoch = 0
        self.step = 0
        self.train_time_s = 0.0
        self.stop_signal: int | None = None  # set by stop_on_signals: finish the epoch, stop
        # numerical faults: consecutive skipped steps, the last fault, restarts, lr multiplier
        self.bad_steps = 0
        self.last_fault: tuple[int, str] | None = None
        self._defer_checks: bool | None = None  # None: deferred on CUDA (see defer_checks)
        self.recoveries = 0
        self.lr_scale = 1.0

    @staticmethod
    def _check_distributed(config: Config, world: int) -> None:
        if config.train.batch_size % world:
            raise UsageError(
                f"train.batch_size = {config.train.batch_size} must be divisible by the "
                f"{world} processes (each takes an equal share of every global batch)"
            )

    @property
    def bound_name(self) -> str:
        """``elbo`` or ``iwae``: the name of the training bound in the metrics."""
        return self.estimator.bound.name

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    # -- one epoch ---------------------------------------------------------------------------
    def learning_rate(self, epoch: float) -> float:
        """The learning rate at (0-based) ``epoch``, fractional within an epoch for the ``iwae``
        stairs: a pure function, so resume needs no state."""
        tc = self.config.train
        if tc.lr_schedule == "iwae":
            return self.lr_scale * tc.lr * 10 ** (-iwae_stage(epoch, tc.epochs) / 7)
        if tc.lr_schedule == "constant" or tc.epochs == 1:
            return tc.lr * self.lr_scale
        epoch = int(epoch)
        return self.lr_scale * tc.lr * (tc.lr_final / tc.lr) ** (epoch / (tc.epochs - 1))

    def kl_weight(self, step: int) -> float:
        """KL warm-up: beta = min(1, step / W), W = kl_warmup_steps, or kl_warmup_epochs times
        the steps per epoch."""
        oc = self.config.objective
        warmup_steps = oc.kl_warmup_steps or oc.kl_warmup_epochs * len(self.batches)
        return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train_epoch(self, progress: bool = False) -> dict[str, float]:
        lr = self.learning_rate(self.epoch)
        self._set_lr(lr)
        # the iwae stairs may change within an epoch when train.epochs < 3280
        per_step = self.config.train.lr_schedule == "iwae"
        self.model.train()
        self.posterior.train()
        self.estimator.train()
        # per step (bound, log_lik, kl), each (B,): summed at the end, no arithmetic per step
        parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        shown, shown_steps = 0.0, 0  # the progress bar's running sum of the bound
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
        pending: _Launched | None = None  # deferred checks: the step whose flag is in flight
        last = len(self.batches) - 1
        for i, (x, index) in enumerate(self.batches):
            if per_step:
                self._set_lr(self.learning_rate(self.epoch + i / len(self.batches)))
            if self.defer_checks:  # launch this step, then settle the one before it
                launched = self._launch_step(x, index)
                settled = [] if pending is None else [self._settle(pending)]
                pending = launched
                if i == last:
                    settled.append(self._settle(pending))
                    pending = None
            else:
                settled = [self.train_step(x, index)]
            for done in settled:  # None: a non-finite loss or gradient, the step was skipped
                if done is None:
                    skipped += 1
                    if self.bad_steps >= self.config.train.max_bad_steps:
                        raise _Diverged
                    continue
                parts.append((done.bound.detach(), done.log_lik.detach(), done.kl.detach()))
                n += done.bound.shape[-1]
            if progress and len(parts) > shown_steps and (i % 50 == 0 or i == last):
                shown += torch.cat([p[0] for p in parts[shown_steps:]]).double().sum().item()
                shown_steps = len(parts)
                bar.set_postfix({self.bound_name: f"{shown / n:.2f}"}, refresh=False)
            bar.update(1)
        bar.close()
        elapsed = time.perf_counter() - start
        self.train_time_s += elapsed
        totals = torch.zeros(3, device=self.device, dtype=torch.float64)  # bound, log_lik, kl
        if parts:
            totals = torch.stack(
                [torch.cat(column).double().sum() for column in zip(*parts, strict=True)]
            )
        if self.dist.enabled:  # every rank's examples
            summed = self.dist.sum(torch.cat([totals, totals.new_tensor([n, skipped])]))
            totals, n, skipped = summed[:3], int(summed[3]), int(summed[4])
        bound, log_lik, kl = (totals / max(n, 1)).tolist()
        out = {"train_log_lik": log_lik, "train_kl": kl}
        if self.estimator.bound.bounds_log_p:
            out[f"train_{self.bound_name}"] = bound
        out["lr"] = lr
        out["skipped_steps"] = skipped
        out["epoch_time_s"] = elapsed
        out["images_per_s"] = n / elapsed if elapsed > 0 else 0.0
        # how this epoch computed (may change on resume): wall times mean little without it
        out["threads"] = torch.get_num_threads()
        out["compiled"] = self.config.train.compile
        out["device"] = str(self.device)
        return out

    def train_step(self, x: torch.Tensor, index: torch.Tensor) -> Estimate | None:
        """One step on the batch (x, index): E-steps first under local inference, then the
        update of theta (and phi, or the batch's rows) from one gradient evaluation.

        A non-finite loss or gradient skips the update (returns None) and is recorded in
        ``bad_steps`` (consecutive) and ``last_fault`` (the step and the term at fault)."""
        if self._whole_step is not None:  # updated (or skipped) inside the compiled step
            est, loss, bad = self._compiled_step(x, index)
            if bool(bad):
                self.optimizer.zero_grad(set_to_none=True)  # as the eager path leaves them
                self.bad_steps += 1
                self.last_fault = (self.step, _fault_term(est, loss))
                self.step += 1
                return None
            self.bad_steps = 0
            self.step += 1
            return est
        est, loss, bad = self._gradient(x, index)
        fault = None if not bool(bad) else self._fault(est, loss)
        if self.dist.any(fault is not None) and fault is None:  # another rank's fault: skip too
            fault = "loss or gradient on another process"
        if fault is not None:
            self.optimizer.zero_grad(set_to_none=True)
            if self.local_optimizer is not None:
                self.local_optimizer.zero_grad(set_to_none=True)
            self.bad_steps += 1
            self.last_fault = (self.step, fault)
            self.step += 1
            return None
        self.bad_steps = 0
        self.optimizer.step()
        if self.local_optimizer is not None:
            self.local_optimizer.step()
        self.step += 1
        return est

    def _compiled_step(
        self, x: torch.Tensor, index: torch.Tensor
    ) -> tuple[Estimate, torch.Tensor, torch.Tensor]:
        """The whole step compiled (dgm.train.step): the estimate (its surrogate is the bound,
        detached), the loss and the () float32 flag, 1.0 if the update was skipped."""
        bound, log_lik, kl, loss, bad = self._whole_step(x, index, self.kl_weight(self.step))
        return Estimate(bound, bound, log_lik, kl), loss, bad

    def _gradient(
        self, x: torch.Tensor, index: torch.Tensor
    ) -> tuple[Estimate, torch.Tensor, torch.Tensor]:
        """The step's estimate, loss and gradients (in ``.grad``), and a () float32 flag on
        the device: 1.0 if the loss or a gradient is not finite, else 0.0."""
        beta = self.kl_weight(self.step)
        if self.local_optimizer is not None:
            self.e_step(x, index, self.config.inference.inner_steps - 1, beta)
        # bfloat16: the networks under autocast; otherwise no context (it costs per step)
        precision = (
            torch.autocast(self.device.type, torch.bfloat16)
            if self.bfloat16
            else contextlib.nullcontext()
        )
        with precision:
            q = self.posterior(x, index) if self.local else None  # a table: the batch's rows
            # distributed: DDP averages the gradients across ranks during backward
            est = Estimate(*self._forward(x, index, beta, q))
        loss = -est.surrogate.mean()
        self.optimizer.zero_grad(set_to_none=True)
        if self.local_optimizer is not None:
            self.local_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in self._global_params if p.grad is not None]
        bad = nonfinite_gradients(grads, self._found_inf)  # () float32: 1 if a gradient is bad
        bad.add_(torch.isfinite(loss).logical_not()).clamp_(max=1.0)  # or the loss
        return est, loss, bad

    # -- deferred checks (CUDA): no host synchronization per step -------------------------------
    # The flag of a step goes to the fused Adam kernel, which skips the update on the device
    # itself, and to a pinned host buffer by an asynchronous copy; the host reads it one step
    # later, once the next step has been launched, so the GPU never waits for the host. The
    # bookkeeping (skipped steps, bad_steps, last_fault, divergence) is the synchronous path's,
    # one step late. Per-datapoint tables (SparseAdam, no device-side skip) keep that path.

    @property
    def defer_checks(self) -> bool:
        """Whether train_epoch uses deferred checks: on CUDA, without per-datapoint tables."""
        if self._defer_checks is None:
            return self.device.type == "cuda" and self.local_optimizer is None
        return self._defer_checks and self.local_optimizer is None  # tables: never

    def _launch_step(self, x: torch.Tensor, index: torch.Tensor) -> _Launched:
        """One step whose update the device skips by itself if it is not finite."""
        if self._whole_step is not None:  # one process: the compiled step skips by itself
            est, loss, bad = self._compiled_step(x, index)
            local = bad
        else:
            est, loss, bad = self._gradient(x, index)
            local = bad.clone()  # this rank's own flag, for the message
            if self.dist.enabled:  # every rank skips alike, without the host reading the flag
                self.dist.all_reduce_max(bad)
            self.optimizer.step(found_inf=bad)
        flags = torch.empty(2, pin_memory=self.device.type == "cuda")
        flags.copy_(torch.stack([bad, local]), non_blocking=True)
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))  # the run's GPU, not device 0
        launched = _Launched(self.step, est, loss, flags, event)
        self.step += 1
        return launched

    def _settle(self, launched: _Launched) -> Estimate | None:
        """The launched step's outcome, read once its flag has reached the host: its estimate,
        or None (skipped), with the synchronous path's bookkeeping."""
        if launched.event is not None:
            launched.event.synchronize()
        bad, local = (bool(v) for v in launched.flags.tolist())
        if not bad:
            self.bad_steps = 0
            return launched.est
        fault = "loss or gradient on another process"
        if local:  # the gradients in .grad are the next step's by now: judge by the loss
            fault = _fault_term(launched.est, launched.loss)
        self.bad_steps += 1
        self.last_fault = (launched.step, fault)
        return None

    def _fault(self, est: Estimate, loss: torch.Tensor) -> str | None:
        """Which term is non-finite: the log-likelihood, the KL, the loss or the gradient."""
        if bool(torch.isfinite(loss)):
            grads = [p.grad for p in self._global_params if p.grad is not None]
            if not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads))):
                return None
        return _fault_term(est, loss)

    def e_step(self, x: torch.Tensor, index: torch.Tensor, steps: int, beta: float = 1.0) -> None:
        """``steps`` updates of the rows (lambda_n, eta_n) of the batch, theta frozen."""
        if self.local_optimizer is None:
            raise UsageError("e_step needs per-datapoint inference (inference.kind = 'local')")
        with frozen(self.model), frozen(self.estimator):
            for _ in range(steps):
                est = self.estimator(self.model, self.posterior(x, index), x, beta)
                self.local_optimizer.zero_grad(set_to_none=True)
                (-est.surrogate.mean()).backward()
                self.local_optimizer.step()

    def test_posterior(self, x: torch.Tensor, shard: tuple[int, int] = (0, 1)) -> torch.nn.Module:
        """The q used on held-out x: the encoder, or (local inference) a fresh E-step fit (of
        the examples n % world == rank only, with ``shard=(rank, world)``)."""
        if not self.local:
            return self.posterior
        ic = self.config.inference
        return fit_local_posterior(
            self.model,
            x,
            steps=ic.test_steps,
            lr=ic.test_lr,
            batch_size=self.config.train.eval_batch_size,
            shard=shard,
        )

    def evaluate(self, x: torch.Tensor | None = None) -> dict[str, float]:
        """Test-set bound with the training estimator's settings (K samples, its KL mode).

        Under local inference the test examples' q_n are first fitted with theta frozen
        (``inference.test_steps`` Adam steps each): the E-step of VB-EM.
        """
        x = self.data.x_test if x is None else x
        posterior = self.test_posterior(x, shard=(self.dist.rank, self.dist.world))
        return self._evaluate_with(posterior, x)

    @torch.inference_mode()
    def _evaluate_with(self, posterior: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
        self.model.eval()
        posterior.eval()
        self.estimator.eval()
        totals = torch.zeros(3, device=self.device, dtype=torch.float64)
        bs = self.config.train.eval_batch_size
        rank, world = self.dist.rank, self.dist.world
        for start in range(0, x.shape[0], bs):
            # distributed: this rank's share of the test set, the ids n % world == rank
            first = start + (rank - start) % world
            index = torch.arange(first, min(start + bs, x.shape[0]), world, device=x.device)
            x_b = x[index]
            est = self.estimator(self.model, posterior(x_b, index), x_b)
            totals += torch.stack([est.bound.sum(), est.log_lik.sum(), est.kl.sum()]).double()
        totals = self.dist.sum(totals)
        bound, log_lik, kl = (totals / x.shape[0]).tolist()
        out = {"test_log_lik": log_lik, "test_kl": kl}
        if self.estimator.bound.bounds_log_p:
            out[f"test_{self.bound_name}"] = bound
        return out

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint(self, metrics: dict[str, Any] | None = None) -> Path:
        ckpt = Checkpoint(
            epoch=self.epoch,
            step=self.step,
            config=self.config.to_dict(),
            modules={
                "model": self.model.state_dict(),
                "posterior": self._posterior_state(),
                "estimator": self.estimator.state_dict(),
            },
            optimizer=self._optimizer_state(),
            rng=self._capture_rng(),
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

    def _capture_rng(self) -> dict[str, Any]:
        """The RNG states; distributed, every rank's (in ``ranks``), gathered on every rank."""
        rng = capture_rng(self.generator)
        if not self.dist.enabled:
            return rng
        mine = {"torch": rng["torch"], "noise": self.noise_generator.get_state()}
        return {**rng, "ranks": self.dist.gather(mine)}

    def _restore_rng(self, rng: dict[str, Any], path: Path) -> None:
        restore_rng(rng, self.generator)
        ranks = rng.get("ranks")
        if (ranks is not None and len(ranks) != self.dist.world) or (
            ranks is None and self.dist.enabled
        ):
            written = len(ranks) if ranks is not None else 1
            raise CheckpointError(
                f"{path}: was written by {written} process(es); resume it with as many "
                f"(now {self.dist.world})"
            )
        if ranks is not None:
            torch.set_rng_state(ranks[self.dist.rank]["torch"])
            set_generator_state(self.noise_generator, ranks[self.dist.rank]["noise"])

    def restore(self, path: Path | None = None, *, weights_only: bool = False) -> Path:
        """Load the latest (or the given) checkpoint; refuse one from a different model."""
        path = path or latest_checkpoint(self.checkpoint_dir)
        if path is None:
            raise CheckpointError(f"{self.checkpoint_dir}: no complete checkpoint to resume from")
        ckpt = load_checkpoint(path)
        try:  # compare validated configs: keys added since the checkpoint take their defaults
            saved = validate(ckpt.config, f"{path}/state.json")
        except ConfigError as err:
            raise CheckpointError(str(err)) from None
        if saved.model != self.config.model:
            raise CheckpointError(
                f"{path}: was written for a different model configuration than {self.run_dir}"
            )
        saved_inference = saved.inference.kind
        if saved_inference != self.config.inference.kind:
            raise CheckpointError(
                f"{path}: was written with inference.kind = {saved_inference!r}, "
                f"not {self.config.inference.kind!r}"
            )
        load_module_state(self.model, ckpt.modules["model"], path)
        load_module_state(self.posterior, self._own_rows(ckpt.modules["posterior"]), path)
        # runs saved before estimators had state (issue 2) carry no "estimator" entry
        load_module_state(self.estimator, ckpt.modules.get("estimator", {}), path)
        self.epoch, self.step = ckpt.epoch, ckpt.step
        if weights_only:
            return path
        try:
            self._load_optimizer_state(ckpt.optimizer)
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"{path}: optimizer state does not match ({err})") from None
        try:
            self._restore_rng(ckpt.rng, path)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"{path}: random-number-generator state is invalid ({err})"
            ) from None
        self.train_time_s = float(ckpt.extra.get("train_time_s", 0.0))
        self.lr_scale = float(ckpt.extra.get("lr_scale", 1.0))
        self.recoveries = int(ckpt.extra.get("recoveries", 0))
        self.bad_steps = 0
        return path

    # per-datapoint tables on several processes: each rank holds the rows n % world == rank
    # (LocalGaussian(shard=...)); checkpoints hold whole tables, assembled on rank 0 and cut
    # into each rank's rows on restore. The tables' Adam moments are sharded the same way.
    _ROWS = ("lam", "log_eta", "exp_avg", "exp_avg_sq")

    def _whole_rows(self, state: dict[str, Any]) -> dict[str, Any]:
        """``state`` with its row tensors (``_ROWS``) put together from every rank's rows, on
        rank 0; the other ranks (which write nothing) get their own ``state`` back."""
        if not (self.local and self.dist.enabled):
            return state
        shards = self.dist.gather_to_main(state)
        if shards is None:
            return state
        return {
            k: gather_rows([shard[k] for shard in shards]) if k in self._ROWS else v
            for k, v in state.items()
        }

    def _own_rows(self, state: dict[str, Any]) -> dict[str, Any]:
        """``state`` with its whole-table row tensors cut down to this rank's rows."""
        if not (self.local and self.dist.enabled):
            return state
        rank, world = self.dist.rank, self.dist.world
        return {k: shard_rows(v, rank, world) if k in self._ROWS else v for k, v in state.items()}

    def _posterior_state(self) -> dict[str, Any]:
        return self._whole_rows(self.posterior.state_dict())

    def _optimizer_state(self) -> dict[str, Any]:
        state = {"global": self.optimizer.state_dict()}
        if self.local_optimizer is not None:
            local = self.local_optimizer.state_dict()
            per_param = local["state"]
            local["state"] = {i: self._whole_rows(per_param[i]) for i in sorted(per_param)}
            state["local"] = local
        return state

    def _load_optimizer_state(self, state: dict[str, Any]) -> None:
        if "param_groups" in state:  # a single optimizer's state, as runs before VB-EM saved it
            state = {"global": state}
        if set(state) != ({"global", "local"} if self.local else {"global"}):
            raise ValueError(f"expected optimizer states for global/local, found {sorted(state)}")
        self.optimizer.load_state_dict(state["global"])
        if self.local_optimizer is not None:
            local = dict(state["local"])
            local["state"] = {i: self._own_rows(v) for i, v in local["state"].items()}
            self.local_optimizer.load_state_dict(local)

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
            raise NumericalError(
                f"step {step}: the {term} was non-finite for {tc.max_bad_steps} steps in a row "
                f"(after {self.recoveries} restart(s) from a checkpoint with a lower learning "
                f"rate); try a smaller train.lr (now {self.learning_rate(self.epoch):.3g}), "
                "objective.kl_warmup_epochs, or a larger model.min_scale for Gaussian "
                f"likelihoods; {where}"
            )
        scale, recoveries = self.lr_scale * tc.recovery_lr_factor, self.recoveries + 1
        self.restore(path)
        self.lr_scale, self.recoveries = scale, recoveries

    @contextmanager
    def stop_on_signals(self) -> Iterator[None]:
        """SIGINT or SIGTERM asks :meth:`fit` to stop after the current epoch's checkpoint.

        The first signal is recorded in ``stop_signal`` and training continues to the end of the
        epoch, which is then evaluated and checkpointed as usual, so ``--resume`` continues
        exactly. A second signal acts at once with the default behaviour (the partial epoch is
        lost; the last checkpoint is intact). Only the main thread can install handlers;
        elsewhere this does nothing.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, frame: object) -> None:
            if self.stop_signal is not None:  # the second one: do what it would have done
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
                return
            self.stop_signal = signum

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
