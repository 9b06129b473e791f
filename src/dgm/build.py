"""Configuration -> objects: the one place that maps names in a config to classes."""

from __future__ import annotations

from torch import nn

from dgm.config import Config, ModelConfig
from dgm.estimators import Reparameterized
from dgm.models import (
    BernoulliLikelihood,
    DeepLatentModel,
    GaussianLikelihood,
    LearnedGaussianLikelihood,
    Likelihood,
    StandardNormalPrior,
)
from dgm.nn import MLP
from dgm.variational import DeterministicEncoder, GaussianEncoder


def build_likelihood(cfg: ModelConfig) -> Likelihood:
    if cfg.likelihood == "bernoulli":
        return BernoulliLikelihood()
    if cfg.likelihood == "gaussian":
        return GaussianLikelihood(cfg.gaussian_scale)
    return LearnedGaussianLikelihood(cfg.min_scale)


def build_model(cfg: ModelConfig, data_dim: int) -> DeepLatentModel:
    """The decoder mirrors the encoder: latent_dim -> reversed(hidden) -> likelihood parameters."""
    likelihood = build_likelihood(cfg)
    decoder = MLP(
        cfg.latent_dim, list(reversed(cfg.hidden)), likelihood.param_size(data_dim), cfg.activation
    )
    return DeepLatentModel(StandardNormalPrior(cfg.latent_dim), decoder, likelihood, data_dim)


def build_posterior(cfg: ModelConfig, data_dim: int) -> nn.Module:
    if cfg.kind == "ae":
        return DeterministicEncoder(
            MLP(data_dim, cfg.hidden, cfg.latent_dim, cfg.activation), cfg.latent_dim
        )
    return GaussianEncoder(
        MLP(data_dim, cfg.hidden, 2 * cfg.latent_dim, cfg.activation), cfg.latent_dim
    )


def build_estimator(cfg: Config) -> Reparameterized:
    """The AE trains on reconstruction alone (no KL); the VAE on the K-sample ELBO."""
    kl = "none" if cfg.model.kind == "ae" else cfg.objective.kl
    return Reparameterized(k=cfg.objective.k, kl=kl)
