"""Energy-based models as families. The restricted Boltzmann machine (``model.kind = "rbm"``):
CD-k or PCD-k
(:class:`dgm.methods.contrastive.ContrastiveDivergence`, the persistent chains in every
checkpoint); a loaded run holds the RBM, samples by Gibbs chains, and estimates ln p(x) by AIS
over inverse temperatures from the base-rate RBM (Salakhutdinov and Murray 2008). The deep EBM
(``model.kind = "ebm"``): a convolutional energy trained by short-run Langevin dynamics with a
replay buffer (Du and Mordatch 2019), in every checkpoint; no likelihood, judged by its
samples."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from dgm.config import Config
from dgm.data.arrays import Data
from dgm.families.base import Family
from dgm.methods.base import Method
from dgm.methods.contrastive import ContrastiveDivergence
from dgm.methods.energy import LangevinMethod
from dgm.models.ebm import ConvEnergy, EnergyModel
from dgm.models.rbm import RBM, ais_log_partition, base_rate_bias, rbm_log_likelihood


class RestrictedBoltzmann(Family):
    kind = "rbm"
    modules = ("rbm",)
    provides = frozenset({"ais", "partition"})
    evaluation = "ais"
    curves = (
        ("reconstruction, nats", ("train_reconstruction", "test_reconstruction")),
        ("free energy", ("train_free_energy_gap", "test_free_energy")),
    )

    def sampling_steps(self, config: Config) -> int | None:
        return config.rbm.sampling_steps

    def method(self, config: Config, data: Data, device: torch.device) -> Method:
        rc, tc = config.rbm, config.train
        rbm = self.model(config, data)
        with torch.no_grad():  # visible biases at the data's log-odds (Hinton 2010, sec. 8.1)
            rbm.b.copy_(base_rate_bias(data.x_train).to(rbm.b.dtype))
        steps_per_epoch = math.ceil(data.x_train.shape[0] / tc.batch_size)
        return ContrastiveDivergence(
            rbm.to(device),
            k=rc.k,
            persistent=rc.persistent,
            chains=rc.chains,
            lr=tc.lr,
            momentum=rc.momentum,
            weight_decay=rc.weight_decay,
            initial_momentum=rc.initial_momentum,
            momentum_switch_step=round(rc.momentum_switch_epochs * steps_per_epoch),
            eval_batch_size=tc.eval_batch_size,
            device=device,
        )

    def model(self, config: Config, data: Data) -> nn.Module:
        return RBM(data.x_train.shape[1], config.rbm.hidden)

    def trained_model(self, method: Method) -> nn.Module:
        return method.rbm  # type: ignore[attr-defined]

    def samples_title(self, config: Config) -> str:
        return f"Gibbs samples of the RBM ({config.rbm.sampling_steps} sweeps)"

    def networks(self, config: Config, data_dim: int) -> list[tuple[str, str, nn.Module]]:
        with torch.device("meta"):
            return [("RBM", "rbm.hidden", RBM(data_dim, config.rbm.hidden))]

    def activation_floats(self, config: Config, data_dim: int, batch: int) -> int:
        rc = config.rbm
        chains = rc.chains if rc.persistent else batch
        return 4 * (batch + chains) * (data_dim + rc.hidden)

    def ais_settings(self, config: Config) -> tuple[int, int]:
        return config.rbm.temperatures, config.rbm.runs

    def log_likelihood(
        self,
        model: nn.Module,
        data: Data,
        x: torch.Tensor,
        steps: int,
        runs: int,
        seed: int = 0,
    ) -> dict[str, Any]:
        """The mean of ln p(x) = -F(x) - log Z over ``x``, log Z by AIS with ``runs`` runs over
        ``steps`` inverse temperatures from the base-rate RBM of the training images.
        Two standard errors: the examples' spread (``_stderr_data``) and log Z's, common to every
        example (``_stderr_log_z``); ``log_likelihood_stderr`` combines them."""
        generator = torch.Generator(model.W.device).manual_seed(seed)
        base = base_rate_bias(data.x_train).to(model.W.device)
        partition = ais_log_partition(model, steps, runs, base, generator)
        log_z = partition.log_z
        ll = rbm_log_likelihood(model, x, log_z)  # (N,)
        n = ll.numel()
        se_data = float(ll.std() / math.sqrt(n)) if n > 1 else 0.0
        se_z = partition.stderr or 0.0
        return {
            "log_likelihood": float(ll.mean()),
            "log_likelihood_stderr": math.hypot(se_data, se_z),
            "log_likelihood_stderr_data": se_data,
            "log_likelihood_stderr_log_z": se_z,
            **partition.summary(),
            "log_z_interval_3se": list(partition.interval()),
            "examples": n,
        }


class DeepEnergy(Family):
    kind = "ebm"
    modules = ("energy",)
    curves = (
        ("energy", ("train_energy", "test_energy", "test_buffer_energy")),
        ("E(x+) - E(x-)", ("train_contrast",)),
    )

    def sampling_steps(self, config: Config) -> int | None:
        return config.ebm.sampling_steps

    def _check(self, data_dim: int) -> None:
        if data_dim != 784:
            from dgm.errors import UsageError

            raise UsageError(
                f"model.kind = 'ebm' is sized for 28 x 28 images; these have {data_dim}"
            )

    def model(self, config: Config, data: Data) -> nn.Module:
        self._check(data.x_train.shape[1])
        ec = config.ebm
        return EnergyModel(ConvEnergy(ec.channels), ec.step_size, ec.noise)

    def restorable(self, model, saved):  # noqa: ANN001, ANN201
        return [(model.energy, saved.get("energy", {}))]

    def method(self, config: Config, data: Data, device: torch.device) -> Method:
        ec, tc = config.ebm, config.train
        return LangevinMethod(
            self.model(config, data),
            langevin_steps=ec.langevin_steps,
            buffer_size=ec.buffer_size,
            reinit=ec.reinit,
            alpha=ec.alpha,
            lr=tc.lr,
            betas=tc.betas,
            device=device,
            eval_batch_size=tc.eval_batch_size,
        )

    def trained_model(self, method: Method) -> nn.Module:
        return method.model  # type: ignore[attr-defined]

    def samples_title(self, config: Config) -> str:
        return f"Langevin samples of the EBM ({config.ebm.sampling_steps} steps from noise)"

    def networks(self, config: Config, data_dim: int) -> list[tuple[str, str, nn.Module]]:
        with torch.device("meta"):
            return [("energy network", "ebm.channels", ConvEnergy(config.ebm.channels))]

    def activation_floats(self, config: Config, data_dim: int, batch: int) -> int:
        c = config.ebm.channels
        per = 2 * (c * 784 + 2 * c * 196 + 2 * c * 49) + data_dim
        return 3 * batch * per + config.ebm.buffer_size * data_dim
