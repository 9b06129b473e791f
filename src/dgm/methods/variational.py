"""Variational Bayes with a gradient estimator, as a method of the training core.

With an amortized encoder every step updates theta and phi together. With per-datapoint
(``local``) inference every batch runs the lecture's VB-EM alternation: ``inner_steps - 1``
E-steps on the batch's rows (lambda_n, eta_n) with theta frozen, then one step that updates both
the rows (the last E-step) and theta (the M-step) from the same gradient evaluation.

A step takes one of three paths: eager (forward, backward, a one-pass check, the update), the
whole step compiled (:mod:`dgm.methods.compiled`), or, on CUDA, either with deferred checks
(:mod:`dgm.methods.deferred`): the device skips a non-finite update itself and the host reads
the flag one step later.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from dgm.build import build_estimator, build_model, build_posterior
from dgm.errors import UsageError
from dgm.estep import frozen, held_out_posterior
from dgm.estimators import Estimate
from dgm.methods.base import Method, Outcome
from dgm.methods.compiled import CompiledStep, decide
from dgm.methods.compiled import supports as whole_step_supported
from dgm.methods.deferred import Deferred
from dgm.methods.objective import Objective, data_parallel, fault_term
from dgm.methods.optim import FusedAdam, nonfinite_gradients
from dgm.methods.tables import own_rows, whole_rows


class VariationalMethod(Method):
    """Model, posterior and estimator from ``config``; Adam (fused) on the global parameters,
    SparseAdam on per-datapoint tables. ``x_train``: ``(N, D)``, for the shapes and the output
    bias; ``dist``: the run's :class:`dgm.train.distributed.Distributed`."""

    remedies = "objective.kl_warmup_epochs, or a larger model.min_scale for Gaussian likelihoods"

    def __init__(self, config: Any, x_train: torch.Tensor, device: torch.device, dist: Any):
        self.config, self.device, self.dist = config, device, dist
        data_dim = x_train.shape[1]
        self.local = config.inference.kind == "local"
        self.shard_examples = self.local  # each rank trains the rows it holds
        self.bfloat16 = config.train.precision == "bfloat16"  # autocast in the step only
        self.model = build_model(config.model, data_dim).to(device)
        shard = (dist.rank, dist.world)  # a per-datapoint table: this rank's rows
        self.posterior = build_posterior(config, data_dim, x_train.shape[0], shard)
        self.posterior = self.posterior.to(device)
        if config.model.init_output_bias:
            self.model.init_output_bias(x_train.mean(0))  # grey levels' mean, (D,)
        self.estimator = build_estimator(config, data_dim).to(device)
        tc = config.train
        global_params = [*self.model.parameters(), *self.estimator.parameters()]
        if not self.local:
            global_params += list(self.posterior.parameters())
        self.global_parameters = global_params
        # fused: one kernel for all parameters (on the CPU torch's default is a per-tensor loop)
        self.optimizer = FusedAdam(global_params, lr=tc.lr, betas=tc.betas, eps=tc.eps)
        self._found_inf = torch.zeros((), device=device)  # set when a gradient is not finite
        # the per-datapoint tables: lazy (sparse) Adam touches only the rows in the batch
        self.local_optimizer = (
            torch.optim.SparseAdam(
                list(self.posterior.parameters()), lr=config.inference.local_lr, betas=tc.betas
            )
            if self.local
            else None
        )
        self.ddp: torch.nn.Module | None = None
        # the training forward: the estimator on (model, posterior); tables stay outside it
        objective = Objective(self.model, None if self.local else self.posterior, self.estimator)
        if dist.enabled:
            self.ddp = data_parallel(objective, device)  # tables: each rank's own rows
        forward = self.ddp if self.ddp is not None else objective
        # train.compile: forward, gradient and check as one compiled graph, then the fused Adam
        # kernel, where dgm.methods.compiled supports it (one process, amortized, float32, a
        # pathwise estimator), else torch.compile of the training forward (and so of its
        # backward); the modules stay uncompiled, so checkpoints and evaluation are unchanged
        # ("auto": the whole step where it can be and the run is long enough, else eager)
        why_not = (
            "torchrun" if dist.enabled
            else "per-datapoint tables" if self.local
            else "bfloat16" if self.bfloat16
            else None if whole_step_supported(self.estimator, self.optimizer)
            else f"objective.estimator = '{config.objective.estimator}'"
        )  # fmt: skip
        steps = tc.epochs * -(-x_train.shape[0] // tc.batch_size)
        self.decision = decide(tc.compile, why_not, steps, device)
        self.compiled = self.decision.compiled
        self.notices = (self.decision.reason,) if tc.compile == "auto" else ()
        self.whole_step: CompiledStep | None = None
        if self.decision.mode == "whole":
            self.whole_step = CompiledStep(objective, global_params, self.optimizer)
        self.forward = torch.compile(forward) if self.decision.mode == "forward" else forward
        self.deferred = Deferred(self)
        self.steps_per_epoch = 0

    # -- what the core asks ------------------------------------------------------------------
    @property
    def bound_name(self) -> str:
        """``elbo`` or ``iwae``: the name of the training bound in the metrics."""
        return self.estimator.bound.name

    @property
    def metric_names(self) -> tuple[str, ...]:
        bound = (self.bound_name,) if self.estimator.bound.bounds_log_p else ()
        return ("recon", "kl", *bound)

    @property
    def shown_metric(self) -> str:
        return self.bound_name

    def attach(self, steps_per_epoch: int) -> None:
        self.steps_per_epoch = steps_per_epoch

    def kl_weight(self, step: int) -> float:
        """KL warm-up: beta = min(1, step / W), W = kl_warmup_steps, or kl_warmup_epochs times
        the steps per epoch."""
        oc = self.config.objective
        warmup_steps = oc.kl_warmup_steps or oc.kl_warmup_epochs * self.steps_per_epoch
        return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train_mode(self) -> None:
        self.model.train()
        self.posterior.train()
        self.estimator.train()

    @property
    def defer_checks(self) -> bool:
        """Whether :meth:`step` defers its checks: on CUDA, without per-datapoint tables (set
        it True or False to force it, None for the default)."""
        return self.deferred.enabled

    @defer_checks.setter
    def defer_checks(self, value: bool | None) -> None:
        self.deferred.requested = value

    # -- one step ------------------------------------------------------------------------------
    def step(self, x: torch.Tensor, index: torch.Tensor, step: int) -> list[Outcome]:
        if self.defer_checks:
            return self.deferred.step(x, index, step)
        return [self.train_step(x, index, step)]

    def flush(self) -> list[Outcome]:
        return self.deferred.flush()

    def done(self, step: int, est: Estimate) -> Outcome:
        """A good step's outcome: its per-example metrics, and the estimate as its detail."""
        metrics = {"recon": est.log_lik.detach(), "kl": est.kl.detach()}
        metrics[self.bound_name] = est.bound.detach()
        return Outcome(step, metrics, None, est)

    def train_step(self, x: torch.Tensor, index: torch.Tensor, step: int) -> Outcome:
        """One step on the batch (x, index), checked at once: E-steps first under local
        inference, then the update of theta (and phi, or the batch's rows) from one gradient
        evaluation. A non-finite loss or gradient skips the update (an outcome without
        metrics, with the term at fault)."""
        if self.whole_step is not None:  # updated (or skipped) inside the compiled step
            est, loss, bad = self.compiled_step(x, index, step)
            if bool(bad):
                self.optimizer.zero_grad(set_to_none=True)  # as the eager path leaves them
                return Outcome(step, None, fault_term(est, loss))
            return self.done(step, est)
        est, loss, bad = self.gradient(x, index, step)
        fault = None if not bool(bad) else self._fault(est, loss)
        if self.dist.any(fault is not None) and fault is None:  # another rank's fault: skip too
            fault = "loss or gradient on another process"
        if fault is not None:
            self.optimizer.zero_grad(set_to_none=True)
            if self.local_optimizer is not None:
                self.local_optimizer.zero_grad(set_to_none=True)
            return Outcome(step, None, fault)
        self.optimizer.step()
        if self.local_optimizer is not None:
            self.local_optimizer.step()
        return self.done(step, est)

    def compiled_step(
        self, x: torch.Tensor, index: torch.Tensor, step: int
    ) -> tuple[Estimate, torch.Tensor, torch.Tensor]:
        """The whole step compiled (dgm.methods.compiled): the estimate (its surrogate is the
        bound, detached), the loss and the () float32 flag, 1.0 if the update was skipped."""
        bound, log_lik, kl, loss, bad = self.whole_step(x, index, self.kl_weight(step))
        return Estimate(bound, bound, log_lik, kl), loss, bad

    def gradient(
        self, x: torch.Tensor, index: torch.Tensor, step: int
    ) -> tuple[Estimate, torch.Tensor, torch.Tensor]:
        """The step's estimate, loss and gradients (in ``.grad``), and a () float32 flag on
        the device: 1.0 if the loss or a gradient is not finite, else 0.0."""
        beta = self.kl_weight(step)
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
            est = Estimate(*self.forward(x, index, beta, q))
        loss = -est.surrogate.mean()
        self.optimizer.zero_grad(set_to_none=True)
        if self.local_optimizer is not None:
            self.local_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in self.global_parameters if p.grad is not None]
        bad = nonfinite_gradients(grads, self._found_inf)  # () float32: 1 if a gradient is bad
        bad.add_(torch.isfinite(loss).logical_not()).clamp_(max=1.0)  # or the loss
        return est, loss, bad

    def _fault(self, est: Estimate, loss: torch.Tensor) -> str | None:
        """Which term is non-finite: the log-likelihood, the KL, the loss or the gradient."""
        if bool(torch.isfinite(loss)):
            grads = [p.grad for p in self.global_parameters if p.grad is not None]
            if not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads))):
                return None
        return fault_term(est, loss)

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

    # -- held-out data -------------------------------------------------------------------------
    def test_posterior(self, x: torch.Tensor, shard: tuple[int, int] = (0, 1)) -> torch.nn.Module:
        """The q used on held-out x: the encoder, or (local inference) a fresh E-step fit (of
        the examples n % world == rank only, with ``shard=(rank, world)``)."""
        ic = self.config.inference
        return held_out_posterior(
            self.model,
            self.posterior,
            x,
            steps=ic.test_steps,
            lr=ic.test_lr,
            batch_size=self.config.train.eval_batch_size,
            shard=shard,
        )

    def evaluate(self, x: torch.Tensor) -> dict[str, float]:
        """Test-set bound with the training estimator's settings (K samples, its KL mode).

        Under local inference the test examples' q_n are first fitted with theta frozen
        (``inference.test_steps`` Adam steps each): the E-step of VB-EM.
        """
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
        out = {"test_recon": log_lik, "test_kl": kl}
        if self.estimator.bound.bounds_log_p:
            out[f"test_{self.bound_name}"] = bound
        return out

    # -- checkpoints ---------------------------------------------------------------------------
    def _sharded(self) -> bool:
        return self.local and self.dist.enabled

    def _whole_rows(self, state: dict[str, Any]) -> dict[str, Any]:
        return whole_rows(state, self.dist) if self._sharded() else state

    def _own_rows(self, state: dict[str, Any]) -> dict[str, Any]:
        return own_rows(state, self.dist) if self._sharded() else state

    def checkpoint_modules(self) -> dict[str, dict[str, torch.Tensor]]:
        return {
            "model": self.model.state_dict(),
            "posterior": self._whole_rows(self.posterior.state_dict()),
            "estimator": self.estimator.state_dict(),
        }

    def restorable(self, saved: dict[str, dict[str, torch.Tensor]]) -> list[tuple[Any, Any]]:
        return [
            (self.model, saved.get("model", {})),  # a missing one: refused by name on loading
            (self.posterior, self._own_rows(saved.get("posterior", {}))),
            # runs saved before estimators had state carry no "estimator" entry
            (self.estimator, saved.get("estimator", {})),
        ]

    def incompatibility(self, saved: Any) -> str | None:
        if saved.inference.kind != self.config.inference.kind:
            return (
                f"was written with inference.kind = {saved.inference.kind!r}, "
                f"not {self.config.inference.kind!r}"
            )
        return None

    def optimizer_state(self) -> dict[str, Any]:
        state = {"global": self.optimizer.state_dict()}
        if self.local_optimizer is not None:
            local = self.local_optimizer.state_dict()
            per_param = local["state"]
            local["state"] = {i: self._whole_rows(per_param[i]) for i in sorted(per_param)}
            state["local"] = local
        return state

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        if "param_groups" in state:  # a single optimizer's state, as runs before VB-EM saved it
            state = {"global": state}
        if set(state) != ({"global", "local"} if self.local else {"global"}):
            raise ValueError(f"expected optimizer states for global/local, found {sorted(state)}")
        self.optimizer.load_state_dict(state["global"])
        if self.local_optimizer is not None:
            local = dict(state["local"])
            local["state"] = {i: self._own_rows(v) for i, v in local["state"].items()}
            self.local_optimizer.load_state_dict(local)
