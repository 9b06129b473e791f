"""The trainer: a config's method on the training core (:mod:`dgm.train.core`): the
variational method (:mod:`dgm.methods.variational`), or a family's (:mod:`dgm.families`).

The trainer owns everything a run needs to continue exactly: the model, the posterior, the
optimizers, the step counters and the random number generators (the global torch RNG, used by
``rsample``, and the data generator, used for shuffling and dynamic binarization).
"""

from __future__ import annotations

from pathlib import Path

import torch

from dgm.build import fitted_by_em
from dgm.config import Config
from dgm.errors import UsageError
from dgm.estimators import Estimate
from dgm.families import Family, family
from dgm.methods.variational import VariationalMethod
from dgm.train.core import NumericalError, TrainingCore
from dgm.train.data import Data, load_data, resolve_device
from dgm.train.distributed import from_environment
from dgm.train.schedule import iwae_stage

__all__ = ["Data", "NumericalError", "Trainer", "iwae_stage", "load_data", "resolve_device"]


class Trainer(TrainingCore):
    """Builds a run's objects from its config and trains them; checkpoints go to ``run_dir``.

    ``method`` is the :class:`VariationalMethod` (its model, posterior, estimator, optimizers
    and step functions are also reachable here under their names), or the method of the
    config's :attr:`family` (its trained model is :attr:`model`; :attr:`posterior` is None)."""

    method: VariationalMethod
    family: Family | None

    def __init__(self, config: Config, run_dir: Path, data: Data | None = None) -> None:
        if fitted_by_em(config):
            raise UsageError(
                f"model.kind = '{config.model.kind}' is fitted by EM (dgm.train.classical), "
                "not by the VB trainer"
            )
        device = resolve_device(config.train.device)
        dist = from_environment(device.type)  # torchrun: this rank of the group
        if dist.enabled:
            self._check_distributed(config, dist.world)
            if device.type == "cuda":
                device = torch.device("cuda", dist.local_rank)
        self.family = family(config.model.kind)
        if dist.enabled and self.family is not None:
            raise UsageError(
                f"model.kind = '{config.model.kind}' trains in one process: run it without torchrun"
            )
        data = data if data is not None else load_data(config, device)
        torch.manual_seed(config.train.seed)
        if self.family is not None:
            method = self.family.method(config, data, device)
        else:
            method = VariationalMethod(config, data.x_train, device, dist)
        super().__init__(config, run_dir, method, device, dist, data)

    @staticmethod
    def _check_distributed(config: Config, world: int) -> None:
        if config.train.batch_size % world:
            raise UsageError(
                f"train.batch_size = {config.train.batch_size} must be divisible by the "
                f"{world} processes (each takes an equal share of every global batch)"
            )

    # -- the method's objects --------------------------------------------------------------------
    @property
    def model(self) -> torch.nn.Module:
        if self.family is not None:
            return self.family.trained_model(self.method)
        return self.method.model

    @property
    def posterior(self) -> torch.nn.Module | None:
        return None if self.family is not None else self.method.posterior

    @property
    def estimator(self) -> torch.nn.Module:
        return self.method.estimator

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """Adam on the global parameters (theta, and phi when amortized)."""
        return self.method.optimizer

    @property
    def local_optimizer(self) -> torch.optim.Optimizer | None:
        """SparseAdam on the per-datapoint tables, or None."""
        return self.method.local_optimizer

    @property
    def global_parameters(self) -> list[torch.nn.Parameter]:
        """What :attr:`optimizer` updates, in its order."""
        return self.method.global_parameters

    @property
    def local(self) -> bool:
        """Per-datapoint inference (``inference.kind = 'local'``)."""
        return self.method.local

    @property
    def bound_name(self) -> str:
        """``elbo`` or ``iwae``: the name of the training bound in the metrics."""
        return self.method.bound_name

    @property
    def defer_checks(self) -> bool:
        """Whether train_epoch uses deferred checks: on CUDA, without per-datapoint tables;
        set True or False to force it (tables: never), None for the default."""
        return self.method.defer_checks

    @defer_checks.setter
    def defer_checks(self, value: bool | None) -> None:
        self.method.defer_checks = value

    def kl_weight(self, step: int) -> float:
        """KL warm-up: beta = min(1, step / W)."""
        return self.method.kl_weight(step)

    def e_step(self, x: torch.Tensor, index: torch.Tensor, steps: int, beta: float = 1.0) -> None:
        """``steps`` updates of the rows (lambda_n, eta_n) of the batch, theta frozen."""
        self.method.e_step(x, index, steps, beta)

    def test_posterior(self, x: torch.Tensor, shard: tuple[int, int] = (0, 1)) -> torch.nn.Module:
        """The q used on held-out x: the encoder, or (local inference) a fresh E-step fit."""
        return self.method.test_posterior(x, shard)

    def train_step(self, x: torch.Tensor, index: torch.Tensor) -> Estimate | None:
        """One step on the batch (x, index), checked at once: its estimate, or None when a
        non-finite loss or gradient skipped the update (recorded in ``bad_steps`` and
        ``last_fault``)."""
        outcome = self.method.train_step(x, index, self.step)
        self.step += 1
        return self.record(outcome).detail
