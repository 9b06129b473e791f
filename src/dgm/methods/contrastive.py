r"""Contrastive divergence (Hinton 2002) and persistent CD (Tieleman 2008) for an RBM, as a method
of the training core.

The log-likelihood's gradient of an energy-based model p(v) = exp(-F(v)) / Z is

    d/dtheta (1/B) sum_n log p(v_n) = -E_data[dF/dtheta] + E_model[dF/dtheta],

so the loss F(v_data).mean() - F(v_model).mean(), with the negative samples v_model held fixed
(drawn without gradient), has minus that gradient when v_model ~ p. For the RBM, dF/dW_ji =
-sigmoid(c_j + W_j . v) v_i: the familiar E_data[v h^T] - E_model[v h^T], with h replaced by its
conditional mean (Rao-Blackwellized). The samples come from k block Gibbs sweeps started at the
batch (CD-k: biased for small k, the chains far from p) or at persistent chains that carry over
from step to step (PCD: the chains track p as it changes slowly).

The optimizer is SGD with momentum and L2 weight decay on W only, as in the code behind
Hinton & Salakhutdinov (2006) and Salakhutdinov & Murray (2008) (Hinton 2010, "A practical guide
to training restricted Boltzmann machines", secs. 9-10): momentum ``initial_momentum`` for the
first ``momentum_switch_step`` steps, then ``momentum``. Every draw uses the global torch RNG,
which the core checkpoints, and the persistent chains are a buffer of a module the checkpoint
holds, so a resumed run continues bit for bit. One process only: the method does not average
gradients across torchrun's ranks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dgm.errors import CheckpointError, UsageError
from dgm.methods.base import Method, Outcome
from dgm.models.rbm import RBM, bernoulli_draw


class PersistentChains(nn.Module):
    """The persistent chains' visible states: a buffer ``v`` (chains, V) (empty for CD-k)."""

    def __init__(self, v: Tensor) -> None:
        super().__init__()
        self.register_buffer("v", v)


class ContrastiveDivergence(Method):
    r"""CD-k or (``persistent``) PCD-k training of ``rbm``: each step draws the negative samples
    by k Gibbs sweeps from the batch or from ``chains`` persistent chains (started at draws from
    prod_i Bernoulli(sigmoid(b_i)), the RBM's visible biases), and takes one SGD step on
    F(v_data).mean() - F(v_model).mean().

    Metrics per example: ``free_energy_gap``, F(v_n) - mean_m F(v_model,m) (its mean is the
    loss), and ``reconstruction``, :meth:`dgm.models.rbm.RBM.reconstruction` (nats).
    """

    metric_names = ("free_energy_gap", "reconstruction")
    shown_metric = "reconstruction"
    remedies = "a smaller momentum, or more Gibbs steps per update (k)"

    def __init__(
        self,
        rbm: RBM,
        k: int = 1,
        persistent: bool = False,
        chains: int = 100,
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 2e-4,
        initial_momentum: float = 0.5,
        momentum_switch_step: int = 0,
        eval_batch_size: int = 1000,
        device: torch.device | str | None = None,
    ) -> None:
        if k < 1:
            raise UsageError(f"contrastive divergence needs at least one Gibbs step, got k = {k}")
        if persistent and chains < 1:
            raise UsageError(f"persistent CD needs at least one chain, got {chains}")
        self.device = torch.device(device) if device is not None else rbm.W.device
        self.rbm = rbm.to(self.device)
        self.k, self.persistent = k, persistent
        self.momentum, self.initial_momentum = momentum, initial_momentum
        self.momentum_switch_step = momentum_switch_step
        self.eval_batch_size = eval_batch_size
        with torch.no_grad():
            b = self.rbm.b.detach()
            start = bernoulli_draw(b.expand(chains if persistent else 0, -1))  # (chains, V)
        self.chains = PersistentChains(start).to(self.device)
        self.optimizer = torch.optim.SGD(
            [
                {"params": [self.rbm.W], "weight_decay": weight_decay},
                {"params": [self.rbm.b, self.rbm.c], "weight_decay": 0.0},
            ],
            lr=lr,
            momentum=momentum,
        )

    # -- what the core asks ------------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train_mode(self) -> None:
        self.rbm.train()

    def momentum_at(self, step: int) -> float:
        """``initial_momentum`` before ``momentum_switch_step``, ``momentum`` from it on."""
        return self.initial_momentum if step < self.momentum_switch_step else self.momentum

    # -- one step ------------------------------------------------------------------------------
    def negative_phase(self, x: Tensor) -> Tensor:
        """v_model ``(M, V)``: k Gibbs sweeps from the batch x (CD-k, M = B) or from the
        persistent chains (PCD-k, M = chains; the chains themselves are left as they are)."""
        start = self.chains.v if self.persistent else x
        return self.rbm.gibbs(start, self.k)

    def loss(self, x: Tensor, v_model: Tensor) -> tuple[Tensor, Tensor]:
        """The loss F(x).mean() - F(v_model).mean() ``()``, whose gradient estimates minus the
        log-likelihood's, and the per-example gap F(x_n) - mean_m F(v_model,m) ``(B,)``."""
        gap = self.rbm.free_energy(x) - self.rbm.free_energy(v_model.detach()).mean()  # (B,)
        return gap.mean(), gap

    def step(self, x: Tensor, index: Tensor, step: int) -> list[Outcome]:
        """One update from the batch x ``(B, V)`` (binary); the persistent chains move on only
        when the update is made. A non-finite loss or gradient skips both."""
        x = x.to(self.device, self.rbm.W.dtype)
        for group in self.optimizer.param_groups:
            group["momentum"] = self.momentum_at(step)
        v_model = self.negative_phase(x)
        loss, gap = self.loss(x, v_model)
        self.optimizer.zero_grad(set_to_none=True)
        if not bool(torch.isfinite(loss)):
            return [Outcome(step, None, "loss")]
        loss.backward()
        grads = [p.grad for p in self.rbm.parameters() if p.grad is not None]
        if not bool(torch.isfinite(torch.nn.utils.get_total_norm(grads))):
            self.optimizer.zero_grad(set_to_none=True)
            return [Outcome(step, None, "gradient")]
        with torch.no_grad():
            reconstruction = self.rbm.reconstruction(x)  # (B,), before the update, as the gap
        self.optimizer.step()
        if self.persistent:
            self.chains.v.copy_(v_model)
        metrics = {"free_energy_gap": gap.detach(), "reconstruction": reconstruction}
        return [Outcome(step, metrics)]

    # -- held-out data -------------------------------------------------------------------------
    @torch.inference_mode()
    def evaluate(self, x: Tensor) -> dict[str, float]:
        """Mean reconstruction cross-entropy and mean free energy F(x) on held-out x ``(N, V)``
        (no draws). Not ln p(x): that needs log Z (:func:`dgm.models.rbm.ais_log_partition`)."""
        self.rbm.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)
        for x_b in x.split(self.eval_batch_size):
            x_b = x_b.to(self.device, self.rbm.W.dtype)
            parts = (self.rbm.reconstruction(x_b).sum(), self.rbm.free_energy(x_b).sum())
            totals += torch.stack(parts).double()
        reconstruction, free_energy = (totals / max(x.shape[0], 1)).tolist()
        return {"test_reconstruction": reconstruction, "test_free_energy": free_energy}

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint_modules(self) -> dict[str, dict[str, Tensor]]:
        return {"rbm": self.rbm.state_dict(), "chains": self.chains.state_dict()}

    def restorable(self, saved: dict[str, dict[str, Tensor]]) -> list[tuple[nn.Module, Any]]:
        missing = sorted({"rbm", "chains"} - set(saved))
        if missing:
            raise CheckpointError(f"the checkpoint holds no {' or '.join(missing)} module")
        return [(self.rbm, saved["rbm"]), (self.chains, saved["chains"])]

    def optimizer_state(self) -> dict[str, Any]:
        return {"rbm": self.optimizer.state_dict()}

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        if set(state) != {"rbm"}:
            raise ValueError(f"expected the optimizer state 'rbm', found {sorted(state)}")
        self.optimizer.load_state_dict(state["rbm"])
