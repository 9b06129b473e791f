r"""Diffusion models trained by their ELBO (or Ho et al.'s simple loss) on the training core.

Each step draws one time step t ~ U{1..T} and one noise epsilon per example from the global torch
RNG (whose state the core checkpoints, so a resumed run continues bit for bit), evaluates the
denoiser once, and takes one Adam step on either

- ``objective="elbo"``: the unbiased estimate L_T + T L_{t-1} of -ELBO
  (:meth:`dgm.models.diffusion.GaussianDiffusion.elbo_terms`), or
- ``objective="simple"``: L_simple = ||epsilon - epsilon_theta(y_t, t)||^2 (Ho et al. eq. 14).

Either way the reported ``elbo`` is the ELBO estimate (nats per example, larger is better), and
``simple`` the simple loss. Held-out data is judged by the bound with every step summed.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from dgm.methods.base import Method, Outcome
from dgm.models.diffusion import GaussianDiffusion

OBJECTIVES = ("elbo", "simple")


class DiffusionMethod(Method):
    r"""Adam on ``diffusion``'s denoiser, with gradient-norm clipping at ``grad_clip`` (None:
    none) and, with ``ema`` a decay, an exponential moving average of the denoiser's weights,
    theta_ema <- d_s theta_ema + (1 - d_s) theta after update s (0, 1, ...), which evaluation
    uses, with the warm-up d_s = min(ema, (1 + s) / (10 + s)) of diffusers' EMAModel: early on
    the average follows the weights, so that a short run is not judged on its initialization.

    :meth:`evaluate` reports ``test_elbo``, the bound on the first ``eval_examples`` examples
    (None: all), with all T steps summed (:meth:`GaussianDiffusion.elbo`) or, with
    ``eval_steps`` = k, its unbiased estimate from k stratified steps per example
    (:meth:`GaussianDiffusion.elbo_estimate`); ``eval_batch_size`` images per denoiser call,
    noise from a generator seeded ``eval_seed`` (the same draws every epoch; the global RNG is
    not touched).
    """

    metric_names = ("elbo", "simple")
    shown_metric = "elbo"
    remedies = "objective = 'simple', a smaller grad_clip, or an EMA of the weights"

    def __init__(
        self,
        diffusion: GaussianDiffusion,
        lr: float = 2e-4,
        objective: str = "elbo",
        grad_clip: float | None = 1.0,
        ema: float | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        eval_examples: int | None = 256,
        eval_batch_size: int = 2048,
        eval_seed: int = 0,
        eval_steps: int | None = None,
    ) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if ema is not None and not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must be a decay in [0, 1), got {ema}")
        self.diffusion, self.objective, self.grad_clip = diffusion, objective, grad_clip
        self.parameters = [p for p in diffusion.denoiser.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.parameters, lr=lr, betas=betas)
        self.ema_decay = ema
        self.ema: torch.nn.Module | None = None
        self.eval_diffusion = diffusion  # the model that evaluation and sampling use
        if ema is not None:
            self.ema = copy.deepcopy(diffusion.denoiser).requires_grad_(False)
            self.eval_diffusion = GaussianDiffusion(
                diffusion.schedule, self.ema, diffusion.data_decoder, diffusion.dim
            ).to(diffusion.beta.device)
        self.eval_examples, self.eval_batch_size = eval_examples, eval_batch_size
        self.eval_seed, self.eval_steps = eval_seed, eval_steps

    # -- training ------------------------------------------------------------------------------
    def step(self, x: torch.Tensor, index: torch.Tensor, step: int) -> list[Outcome]:
        """One Adam step on the batch ``x`` ``(B, D)``; skipped (an outcome without metrics)
        when the loss (``fault="loss"``) or the gradient's norm (``"gradient"``) is not finite."""
        terms = self.diffusion.elbo_terms(x)
        loss = (terms.estimate if self.objective == "elbo" else terms.simple).mean()
        self.optimizer.zero_grad(set_to_none=True)
        if not bool(torch.isfinite(loss)):
            return [Outcome(step, None, "loss")]
        loss.backward()
        grads = [p.grad for p in self.parameters if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)
        if not bool(torch.isfinite(norm)):
            self.optimizer.zero_grad(set_to_none=True)
            return [Outcome(step, None, "gradient")]
        if self.grad_clip is not None:
            torch.nn.utils.clip_grads_with_norm_(self.parameters, self.grad_clip, norm)
        self.optimizer.step()
        self._update_ema(step)
        metrics = {"elbo": -terms.estimate.detach(), "simple": terms.simple.detach()}
        return [Outcome(step, metrics, None, terms.t)]

    @torch.no_grad()
    def ema_decay_at(self, step: int) -> float:
        """d_s = min(ema, (1 + s) / (10 + s)): the decay of the average after update ``step``."""
        return min(self.ema_decay or 0.0, (1 + step) / (10 + step))

    def _update_ema(self, step: int) -> None:
        if self.ema is None or self.ema_decay is None:
            return
        for p_ema, p in zip(
            self.ema.parameters(), self.diffusion.denoiser.parameters(), strict=True
        ):
            p_ema.lerp_(p, 1.0 - self.ema_decay_at(step))
        for b_ema, b in zip(self.ema.buffers(), self.diffusion.denoiser.buffers(), strict=True):
            b_ema.copy_(b)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train_mode(self) -> None:
        self.diffusion.train()

    # -- held-out data -------------------------------------------------------------------------
    @torch.inference_mode()
    def evaluate(self, x: torch.Tensor) -> dict[str, float]:
        """``test_elbo``: the mean over (the first ``eval_examples`` of) ``x`` of the bound with
        every step summed, in nats."""
        model = self.eval_diffusion
        model.eval()
        if self.eval_examples is not None:
            x = x[: self.eval_examples]
        generator = torch.Generator(x.device).manual_seed(self.eval_seed)
        steps = model.T if self.eval_steps is None else min(self.eval_steps, model.T)
        per_call = max(1, self.eval_batch_size // steps)  # examples whose steps fit a call
        total = torch.zeros((), dtype=torch.float64, device=x.device)
        for start in range(0, x.shape[0], per_call):
            x_b = x[start : start + per_call]
            if self.eval_steps is None:
                bound = model.elbo(x_b, self.eval_batch_size, generator)
            else:
                bound = model.elbo_estimate(x_b, steps, self.eval_batch_size, generator)
            total += bound.double().sum()
        return {"test_elbo": (total / max(x.shape[0], 1)).item()}

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint_modules(self) -> dict[str, dict[str, torch.Tensor]]:
        modules = {"denoiser": self.diffusion.denoiser.state_dict()}
        if self.ema is not None:
            modules["ema"] = self.ema.state_dict()
        return modules

    def restorable(
        self, saved: dict[str, dict[str, torch.Tensor]]
    ) -> list[tuple[torch.nn.Module, dict[str, torch.Tensor]]]:
        """The denoiser, and the EMA (from the denoiser's weights when the checkpoint has none)."""
        pairs = [(self.diffusion.denoiser, saved["denoiser"])]
        if self.ema is not None:
            pairs.append((self.ema, saved.get("ema", saved["denoiser"])))
        return pairs

    def optimizer_state(self) -> dict[str, Any]:
        return {"denoiser": self.optimizer.state_dict()}

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        if set(state) != {"denoiser"}:
            raise ValueError(f"expected the optimizer state 'denoiser', found {sorted(state)}")
        self.optimizer.load_state_dict(state["denoiser"])
