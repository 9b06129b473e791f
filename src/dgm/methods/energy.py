r"""Training a deep energy-based model by short-run Langevin dynamics with a replay buffer (Du
and Mordatch 2019), on the training core.

Each step draws B negatives: from the replay buffer, or (each with probability ``reinit``)
fresh uniform noise; runs ``langevin_steps`` Langevin updates from them; takes one Adam step on

    loss = mean E(x+) - mean E(x-) + alpha (mean E(x+)^2 + mean E(x-)^2),

the maximum-likelihood gradient's estimate with Du and Mordatch's regularizer on the energies'
magnitude; and writes the negatives back into the buffer at the slots they came from. The
buffer (``ReplayBuffer``, its images as a tensor) is part of every checkpoint, so a resumed run
continues bit for bit. Reported per example: ``contrast`` E(x+) - mean E(x-) (the loss without
its regularizer) and ``energy`` E(x+).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dgm.errors import CheckpointError
from dgm.methods.base import Method, Outcome
from dgm.models.ebm import EnergyModel, langevin


class ReplayBuffer(nn.Module):
    """The buffer's images ``x`` (size, D), started at uniform noise."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("x", torch.rand(size, dim))


class LangevinMethod(Method):
    """Adam on ``model``'s energy network with Langevin negatives from a replay buffer."""

    metric_names = ("contrast", "energy")
    shown_metric = "contrast"
    remedies = "a larger alpha, a smaller Langevin step, or fewer channels"

    def __init__(
        self,
        model: EnergyModel,
        langevin_steps: int = 20,
        buffer_size: int = 10_000,
        reinit: float = 0.05,
        alpha: float = 1.0,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.0, 0.999),
        device: torch.device | str = "cpu",
        eval_batch_size: int = 1000,
    ) -> None:
        if langevin_steps < 1 or buffer_size < 1 or not 0 <= reinit <= 1:
            raise ValueError("need langevin_steps >= 1, buffer_size >= 1 and 0 <= reinit <= 1")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.buffer = ReplayBuffer(buffer_size, model.dim).to(self.device)
        self.steps, self.reinit, self.alpha = langevin_steps, reinit, alpha
        self.eval_batch_size = eval_batch_size
        self.parameters = [p for p in model.energy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.parameters, lr=lr, betas=betas)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train_mode(self) -> None:
        self.model.train()

    def negatives(self, b: int) -> tuple[Tensor, Tensor]:
        """The buffer's slots ``(b,)``, distinct, drawn (global RNG), and the Langevin chains'
        last states from them ``(b, D)``, a share ``reinit`` of them restarted at uniform noise.
        Distinct slots make writing the chains back deterministic (with a slot drawn twice,
        which write lands is up to the threads)."""
        size = self.buffer.x.shape[0]
        if b > size:
            raise ValueError(f"a batch of {b} needs a replay buffer of at least {b}, not {size}")
        slots = torch.randperm(size, device=self.device)[:b]
        start = self.buffer.x[slots]
        fresh = torch.rand(b, 1, device=self.device) < self.reinit
        start = torch.where(fresh, torch.rand_like(start), start)
        m = self.model
        return slots, langevin(m.energy, start, self.steps, m.step_size, m.noise)

    def step(self, x: Tensor, index: Tensor, step: int) -> list[Outcome]:
        slots, x_neg = self.negatives(x.shape[0])
        e_pos, e_neg = self.model(x), self.model(x_neg)  # (B,), (B,)
        loss = (
            e_pos.mean()
            - e_neg.mean()
            + self.alpha * (e_pos.square().mean() + e_neg.square().mean())
        )
        if not bool(torch.isfinite(loss)):
            return [Outcome(step, None, "loss")]
        grads = torch.autograd.grad(loss, self.parameters)
        if not all(bool(torch.isfinite(g).all()) for g in grads):
            return [Outcome(step, None, "gradient")]
        for p, g in zip(self.parameters, grads, strict=True):
            p.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.buffer.x[slots] = x_neg
        contrast = (e_pos - e_neg.mean()).detach()
        return [Outcome(step, {"contrast": contrast, "energy": e_pos.detach()})]

    @torch.no_grad()
    def evaluate(self, x: Tensor) -> dict[str, float]:
        """The mean energy of held-out images and of the buffer (no draws): their gap is what
        training pushes apart."""
        self.model.eval()
        test = torch.cat([self.model(b) for b in x.split(self.eval_batch_size)]).double().mean()
        buf = self.buffer.x[: self.eval_batch_size]
        return {
            "test_energy": test.item(),
            "test_buffer_energy": self.model(buf).double().mean().item(),
        }

    def checkpoint_modules(self) -> dict[str, dict[str, Tensor]]:
        return {"energy": self.model.energy.state_dict(), "buffer": self.buffer.state_dict()}

    def restorable(self, saved: dict[str, dict[str, Tensor]]) -> list[tuple[nn.Module, Any]]:
        missing = sorted({"energy", "buffer"} - set(saved))
        if missing:
            raise CheckpointError(f"the checkpoint holds no {' or '.join(missing)} module")
        return [(self.model.energy, saved["energy"]), (self.buffer, saved["buffer"])]

    def optimizer_state(self) -> dict[str, Any]:
        return {"energy": self.optimizer.state_dict()}

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        if set(state) != {"energy"}:
            raise ValueError(f"expected the optimizer state 'energy', found {sorted(state)}")
        self.optimizer.load_state_dict(state["energy"])
