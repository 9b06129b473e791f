r"""Adversarial training (GANs) as a method of the training core.

A generator G (z ~ N(0, I), x = G(z)) and a discriminator whose logit is D(x) play a game
whose payoff a *loss object* defines; :class:`AdversarialMethod` runs it: ``critic_steps``
updates of the discriminator, then one of the generator, each with its own Adam.

Losses, with r = D(x) on data, f = D(G(z)) on samples, sigma the logistic function and every
value per example ``(B,)``:

- :class:`Minimax` (Goodfellow et al. 2014, eq. 1): the discriminator minimizes
  -log sigma(r) - log(1 - sigma(f)) = softplus(-r) + softplus(f), the generator minimizes
  log(1 - sigma(f)) = -softplus(f). Against the optimal discriminator the game's value is
  2 JS(p_data || p_g) - log 4 (their theorem 1).
- :class:`NonSaturating` (the same paper, section 3): the generator minimizes
  -log sigma(f) = softplus(-f) instead, whose gradient does not vanish where sigma(f) -> 0.
- :class:`WGANGP` (Gulrajani et al. 2017, algorithm 1): the critic minimizes
  f - r + lam (||grad_x D(x_hat)||_2 - 1)^2 on x_hat = eps x + (1 - eps) G(z), eps ~ U(0, 1);
  the generator minimizes -f; ``r - f`` estimates the Wasserstein-1 distance.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dgm.methods.base import Method, Outcome

Tensor = torch.Tensor


class AdversarialLoss(ABC):
    """A GAN's payoff: per-example losses of the discriminator (or critic) and the generator.

    ``discriminator_terms`` returns the discriminator's loss ``"d_loss"`` and any terms
    named in :attr:`extra_metrics`, each ``(B,)``; a term's name is what a step reports as
    its fault when it is not finite. ``critic_steps``: the default number of discriminator
    updates per generator update.
    """

    #: per-example terms besides d_loss and g_loss that a step reports
    extra_metrics: tuple[str, ...] = ()
    #: the metric on the progress bar
    shown_metric: str = "d_loss"
    critic_steps: int = 1

    @abstractmethod
    def discriminator_loss(
        self,
        real_logits: Tensor,
        fake_logits: Tensor,
        x_real: Tensor | None = None,
        x_fake: Tensor | None = None,
        critic: nn.Module | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The discriminator's loss ``(B,)`` from logits ``(B,)`` on data and on samples;
        losses with a gradient penalty also need the inputs ``(B, D)`` and the critic, and
        draw through ``generator`` (default: the global torch RNG)."""

    @abstractmethod
    def generator_loss(self, fake_logits: Tensor) -> Tensor:
        """The generator's loss ``(B,)`` from the discriminator's logits on its samples."""

    def discriminator_terms(
        self,
        real_logits: Tensor,
        fake_logits: Tensor,
        x_real: Tensor | None = None,
        x_fake: Tensor | None = None,
        critic: nn.Module | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """``{"d_loss": ..., **extra}``, each ``(B,)``, the components before their sum."""
        d_loss = self.discriminator_loss(
            real_logits, fake_logits, x_real, x_fake, critic, generator
        )
        return {"d_loss": d_loss}


class Minimax(AdversarialLoss):
    r"""Goodfellow et al. 2014, eq. 1: min_G max_D E log D(x) + E log(1 - D(G(z))).

    d_loss = softplus(-r) + softplus(f), g_loss = log(1 - sigma(f)) = -softplus(f); its
    gradient in f, -sigma(f), vanishes when the discriminator rejects the samples.
    """

    def discriminator_loss(
        self,
        real_logits: Tensor,
        fake_logits: Tensor,
        x_real: Tensor | None = None,
        x_fake: Tensor | None = None,
        critic: nn.Module | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        # -log sigma(r) = softplus(-r); -log(1 - sigma(f)) = softplus(f)
        return F.softplus(-real_logits) + F.softplus(fake_logits)  # (B,)

    def generator_loss(self, fake_logits: Tensor) -> Tensor:
        return -F.softplus(fake_logits)  # log(1 - sigma(f)), (B,)


class NonSaturating(Minimax):
    r"""Goodfellow et al. 2014, section 3: the discriminator's loss of :class:`Minimax`; the
    generator maximizes log D(G(z)): g_loss = -log sigma(f) = softplus(-f), gradient in f
    -sigma(-f) = -(1 - D), which tends to -1 (not 0) as D(G(z)) -> 0. Both generator losses
    push f up; their gradients differ by the factor e^f = D / (1 - D).
    """

    def generator_loss(self, fake_logits: Tensor) -> Tensor:
        return F.softplus(-fake_logits)  # -log sigma(f), (B,)


class WGANGP(AdversarialLoss):
    r"""Gulrajani et al. 2017 (algorithm 1): the critic's loss

        D(x~) - D(x) + lam (||grad_{x_hat} D(x_hat)||_2 - 1)^2,  x_hat = eps x + (1 - eps) x~,

    eps ~ U(0, 1) per example, and the generator's -D(x~); ``wasserstein`` = D(x) - D(x~)
    estimates W_1(p_data, p_g) (for a 1-Lipschitz critic), ``penalty`` is the last term.
    ``lam`` = 10 and ``critic_steps`` = 5 are the paper's.
    """

    extra_metrics = ("wasserstein", "penalty")
    shown_metric = "wasserstein"

    def __init__(self, lam: float = 10.0, critic_steps: int = 5) -> None:
        if lam < 0 or critic_steps < 1:
            raise ValueError(f"need lam >= 0 and critic_steps >= 1, got {lam}, {critic_steps}")
        self.lam, self.critic_steps = lam, critic_steps

    def penalty(
        self,
        critic: nn.Module,
        x_real: Tensor,
        x_fake: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """lam (||grad D(x_hat)||_2 - 1)^2 ``(B,)`` on random interpolates. Differentiable in
        the critic's parameters when gradients are enabled (a double backward); under
        ``no_grad`` only its value."""
        differentiable = torch.is_grad_enabled()
        eps = torch.rand(
            x_real.shape[0], 1, generator=generator, device=x_real.device, dtype=x_real.dtype
        )  # (B, 1)
        x_hat = (eps * x_real.detach() + (1 - eps) * x_fake.detach()).requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(
                critic(x_hat).sum(), x_hat, create_graph=differentiable
            )  # (B, D): each example's D(x_hat_i) depends on x_hat_i only
        return self.lam * (torch.linalg.vector_norm(grad, dim=-1) - 1).pow(2)  # (B,)

    def discriminator_terms(
        self,
        real_logits: Tensor,
        fake_logits: Tensor,
        x_real: Tensor | None = None,
        x_fake: Tensor | None = None,
        critic: nn.Module | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        if x_real is None or x_fake is None or critic is None:
            raise ValueError("WGAN-GP's penalty needs x_real, x_fake and the critic")
        wasserstein = real_logits - fake_logits  # (B,)
        penalty = self.penalty(critic, x_real, x_fake, generator)  # (B,)
        return {"wasserstein": wasserstein, "penalty": penalty, "d_loss": penalty - wasserstein}

    def discriminator_loss(
        self,
        real_logits: Tensor,
        fake_logits: Tensor,
        x_real: Tensor | None = None,
        x_fake: Tensor | None = None,
        critic: nn.Module | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        terms = self.discriminator_terms(
            real_logits, fake_logits, x_real, x_fake, critic, generator
        )
        return terms["d_loss"]

    def generator_loss(self, fake_logits: Tensor) -> Tensor:
        return -fake_logits  # (B,)


def _nonfinite(terms: dict[str, Tensor]) -> str | None:
    """The first term (in order) holding a NaN or an infinity, or None."""
    return next((name for name, t in terms.items() if not bool(torch.isfinite(t).all())), None)


def _finite_gradients(grads: tuple[Tensor, ...]) -> bool:
    return all(bool(torch.isfinite(g).all()) for g in grads)


class AdversarialMethod(Method):
    r"""A GAN trained by the core: ``critic_steps`` discriminator updates, then one generator
    update, on each batch ``x`` ``(B, D)``.

    Every critic update uses the same batch x against B fresh samples G(z), z ~ N(0, I) (as
    Gulrajani et al.'s algorithm 1 draws a fresh minibatch per critic step, but here one batch
    of the core's data serves all of them, so an epoch is one pass over the data for the
    generator and the critic alike); the generator update draws B more. All noise comes from
    the global torch RNG, which the core's checkpoints hold, so a resumed run continues bit for
    bit. Reported per example: d_loss of the last critic update (the critic the generator
    was trained against), g_loss, and the loss's extra terms (WGAN-GP: wasserstein, penalty).

    A non-finite loss or gradient ends the step at once: that update is not made (nor any
    that would follow in the step; earlier critic updates of the step stand) and the outcome
    names the term: a loss's term (``d_loss``, ``penalty``, ...), ``g_loss``,
    ``discriminator gradient`` or ``generator gradient``.

    ``seed`` fixes the 64 latent vectors of :meth:`fixed_samples` (``fixed_noise``) and the
    noise of :meth:`evaluate`, both drawn from their own generators: neither touches the
    global RNG.
    """

    remedies = "fewer critic steps, or a discriminator without batch normalization for WGAN-GP"

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        loss: AdversarialLoss,
        latent_dim: int,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        critic_steps: int | None = None,
        device: torch.device | str = "cpu",
        seed: int = 0,
        eval_batch_size: int = 1000,
    ) -> None:
        own = getattr(generator, "latent_dim", latent_dim)
        if own != latent_dim:
            raise ValueError(f"latent_dim {latent_dim} but the generator's is {own}")
        self.critic_steps = loss.critic_steps if critic_steps is None else critic_steps
        if self.critic_steps < 1:
            raise ValueError(f"critic_steps must be >= 1, got {self.critic_steps}")
        self.device = torch.device(device)
        self.generator = generator.to(self.device)
        self.discriminator = discriminator.to(self.device)
        self.loss, self.latent_dim = loss, latent_dim
        self.seed, self.eval_batch_size = seed, eval_batch_size
        self.g_params = [p for p in self.generator.parameters() if p.requires_grad]
        self.d_params = [p for p in self.discriminator.parameters() if p.requires_grad]
        self.g_optimizer = torch.optim.Adam(self.g_params, lr=lr, betas=betas)
        self.d_optimizer = torch.optim.Adam(self.d_params, lr=lr, betas=betas)
        fixed = torch.Generator().manual_seed(seed)  # on the CPU: the same grid on any device
        self.fixed_noise = torch.randn(64, latent_dim, generator=fixed).to(self.device)  # (64, d)

    # -- what the core asks ------------------------------------------------------------------
    @property
    def metric_names(self) -> tuple[str, ...]:
        return ("d_loss", "g_loss", *self.loss.extra_metrics)

    @property
    def shown_metric(self) -> str:
        return self.loss.shown_metric

    def set_lr(self, lr: float) -> None:
        for optimizer in (self.g_optimizer, self.d_optimizer):
            for group in optimizer.param_groups:
                group["lr"] = lr

    def train_mode(self) -> None:
        self.generator.train()
        self.discriminator.train()

    # -- one step ------------------------------------------------------------------------------
    def noise(self, n: int) -> Tensor:
        """z ~ N(0, I): ``(n, latent_dim)`` from the global torch RNG."""
        return torch.randn(n, self.latent_dim, device=self.device)

    def step(self, x: Tensor, index: Tensor, step: int) -> list[Outcome]:
        return [self.train_step(x, step)]

    def train_step(self, x: Tensor, step: int) -> Outcome:
        """``critic_steps`` discriminator updates, then one generator update (see the class)."""
        b = x.shape[0]
        terms: dict[str, Tensor] = {}
        for _ in range(self.critic_steps):
            with torch.no_grad():
                x_fake = self.generator(self.noise(b))  # (B, D), G held fixed
            real_logits, fake_logits = self.discriminator(x), self.discriminator(x_fake)  # (B,)
            terms = self.loss.discriminator_terms(
                real_logits, fake_logits, x, x_fake, self.discriminator
            )
            fault = _nonfinite(terms)
            if fault is not None:
                return Outcome(step, None, fault)
            grads = torch.autograd.grad(terms["d_loss"].mean(), self.d_params)
            if not _finite_gradients(grads):
                return Outcome(step, None, "discriminator gradient")
            for p, g in zip(self.d_params, grads, strict=True):
                p.grad = g
            self.d_optimizer.step()
            self.d_optimizer.zero_grad(set_to_none=True)
        # the generator against the updated discriminator; only G's gradients are computed
        g_loss = self.loss.generator_loss(self.discriminator(self.generator(self.noise(b))))
        if _nonfinite({"g_loss": g_loss}) is not None:
            return Outcome(step, None, "g_loss")
        grads = torch.autograd.grad(g_loss.mean(), self.g_params)
        if not _finite_gradients(grads):
            return Outcome(step, None, "generator gradient")
        for p, g in zip(self.g_params, grads, strict=True):
            p.grad = g
        self.g_optimizer.step()
        self.g_optimizer.zero_grad(set_to_none=True)
        metrics = {name: t.detach() for name, t in terms.items()}
        metrics["g_loss"] = g_loss.detach()
        return Outcome(step, {name: metrics[name] for name in self.metric_names})

    # -- judging ---------------------------------------------------------------------------------
    def evaluate(self, x: Tensor) -> dict[str, float]:
        """Mean losses on held-out ``x`` ``(N, D)`` against N samples (chunks of
        ``eval_batch_size``), modules in evaluation mode: ``test_d_loss``, ``test_g_loss``
        and ``test_<extra>``. The noise (and WGAN-GP's interpolation weights) come from a
        generator seeded by ``seed``: the same draws every epoch, the global RNG untouched."""
        draws = torch.Generator(self.device).manual_seed(self.seed + 1)
        names = ("d_loss", "g_loss", *self.loss.extra_metrics)
        sums = dict.fromkeys(names, 0.0)
        modes = self.generator.training, self.discriminator.training
        self.generator.eval()
        self.discriminator.eval()
        try:
            with torch.no_grad():
                for x_real in x.split(self.eval_batch_size):
                    z = torch.randn(
                        x_real.shape[0], self.latent_dim, generator=draws, device=x.device
                    )
                    x_fake = self.generator(z)  # (n, D)
                    fake_logits = self.discriminator(x_fake)  # (n,)
                    real_logits = self.discriminator(x_real)  # (n,)
                    terms = self.loss.discriminator_terms(
                        real_logits, fake_logits, x_real, x_fake, self.discriminator, draws
                    )
                    terms["g_loss"] = self.loss.generator_loss(fake_logits)
                    for name in names:
                        sums[name] += terms[name].double().sum().item()
        finally:
            self.generator.train(modes[0])
            self.discriminator.train(modes[1])
        return {f"test_{name}": total / max(x.shape[0], 1) for name, total in sums.items()}

    def fixed_samples(self) -> Tensor:
        """G(z) on the 64 fixed latent vectors, evaluation mode: ``(64, D)`` in [0, 1]."""
        mode = self.generator.training
        self.generator.eval()
        try:
            with torch.no_grad():
                return self.generator(self.fixed_noise)
        finally:
            self.generator.train(mode)

    # -- checkpoints -----------------------------------------------------------------------------
    def checkpoint_modules(self) -> dict[str, dict[str, Tensor]]:
        return {
            "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(),
        }

    def restorable(self, saved: dict[str, dict[str, Tensor]]) -> list[tuple[Any, Any]]:
        # a missing entry restores nothing, which the core's loader refuses by name
        return [
            (self.generator, saved.get("generator", {})),
            (self.discriminator, saved.get("discriminator", {})),
        ]

    def optimizer_state(self) -> dict[str, Any]:
        return {
            "generator": self.g_optimizer.state_dict(),
            "discriminator": self.d_optimizer.state_dict(),
        }

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        if set(state) != {"generator", "discriminator"}:
            raise ValueError(
                f"expected optimizer states for generator/discriminator, found {sorted(state)}"
            )
        self.g_optimizer.load_state_dict(state["generator"])
        self.d_optimizer.load_state_dict(state["discriminator"])
