"""Configuration -> objects: the one place that maps names in a config to classes."""

from __future__ import annotations

import torch
from torch import nn

import dgm.registry as registry
from dgm.baselines import Baseline, LearnedBaseline, LeaveOneOut, RunningMean
from dgm.config import CLASSICAL, Config, ModelConfig, ObjectiveConfig, parse_posterior
from dgm.data import binarize_fixed, dequantize_fixed, load_dataset, to_unit_interval
from dgm.data.arrays import Data
from dgm.estimators import Estimator, Reparameterized, ScoreFunction
from dgm.models import (
    BernoulliLikelihood,
    DeepLatentModel,
    GaussianLikelihood,
    HierarchicalPrior,
    IsotropicGaussianLikelihood,
    LearnedGaussianLikelihood,
    Likelihood,
    StandardNormalPrior,
)
from dgm.nn import ACTIVATIONS, MLP
from dgm.objectives import Bound
from dgm.variational import (
    DeterministicEncoder,
    FlowEncoder,
    GaussianEncoder,
    HierarchicalEncoder,
    LocalGaussian,
    build_flow_steps,
)
from dgm.variational.semi_implicit import SemiImplicitEncoder


def build_data(config: Config, device: torch.device | str = "cpu") -> Data:
    """The run's data set: training images as grey levels, the test images binarized (or
    dequantized) once with the fixed seed ``data.binarize_seed``, so that every evaluation of a
    run sees the same test images; and the test labels."""
    dc = config.data
    ds = load_dataset(dc.dataset, data_dir=dc.data_dir, download=dc.download)
    x_train = to_unit_interval(ds.train_images[: dc.train_limit]).to(device)
    x_test = to_unit_interval(ds.test_images[: dc.test_limit]).to(device)
    x_test = as_evaluated(config, x_test, dc.binarize_seed)
    labels = ds.test_labels[: dc.test_limit].to(device)
    return Data(x_train, x_test, tuple(ds.train_images.shape[1:]), labels)


def as_evaluated(config: Config, x: torch.Tensor, seed: int) -> torch.Tensor:
    """Grey images ``(N, D)`` in [0, 1] as the run evaluates its test set: binarized (or
    dequantized) once with ``seed``, or unchanged."""
    if config.data.binarize != "none":
        return binarize_fixed(x, seed)
    if config.data.dequantize:
        return dequantize_fixed(x, seed)
    return x


def grey_test_images(config: Config, device: torch.device | str = "cpu") -> torch.Tensor:
    """The run's test images as grey levels in [0, 1], before binarization: ``(M, D)``."""
    dc = config.data
    ds = load_dataset(dc.dataset, data_dir=dc.data_dir, download=dc.download)
    return to_unit_interval(ds.test_images[: dc.test_limit]).to(device)


def build_likelihood(cfg: ModelConfig) -> Likelihood:
    if cfg.likelihood == "bernoulli":
        return BernoulliLikelihood()
    if cfg.likelihood == "gaussian":
        return GaussianLikelihood(cfg.gaussian_scale)
    if cfg.likelihood == "gaussian-isotropic":
        return IsotropicGaussianLikelihood(cfg.gaussian_scale)
    return LearnedGaussianLikelihood(cfg.min_scale)


def latent_sizes(cfg: ModelConfig) -> list[int]:
    """(d_1, ..., d_L): z_1 = latent_dim, then the upper layers'."""
    return [cfg.latent_dim, *(layer.latent_dim for layer in cfg.upper)]


def build_model(cfg: ModelConfig, data_dim: int) -> DeepLatentModel:
    """The decoder mirrors the encoder: latent_dim -> reversed(hidden) -> likelihood parameters;
    with upper stochastic layers, p(z_i | z_{i+1}) mirrors q(z_{i+1} | z_i) likewise."""
    likelihood = build_likelihood(cfg)
    decoder = MLP(
        cfg.latent_dim, list(reversed(cfg.hidden)), likelihood.param_size(data_dim), cfg.activation
    )
    if not cfg.upper:
        return DeepLatentModel(StandardNormalPrior(cfg.latent_dim), decoder, likelihood, data_dim)
    sizes = latent_sizes(cfg)
    nets = [  # p(z_i | z_{i+1}): d_{i+1} -> reversed(hidden) -> 2 d_i
        MLP(sizes[i + 1], list(reversed(layer.hidden)), 2 * sizes[i], cfg.activation)
        for i, layer in enumerate(cfg.upper)
    ]
    return DeepLatentModel(HierarchicalPrior(sizes, nets), decoder, likelihood, data_dim)


def _trunk(cfg: ModelConfig, data_dim: int) -> tuple[int, nn.Module]:
    """The encoder's trunk up to its last hidden layer (activated), and that layer's width."""
    if not cfg.hidden:
        return data_dim, nn.Identity()
    trunk = nn.Sequential(
        MLP(data_dim, cfg.hidden[:-1], cfg.hidden[-1], cfg.activation),
        ACTIVATIONS[cfg.activation](),
    )
    return cfg.hidden[-1], trunk


def build_posterior(
    config: Config, data_dim: int, num_examples: int, shard: tuple[int, int] = (0, 1)
) -> nn.Module:
    """An encoder (amortized), or a per-datapoint table with one row per training example
    (with ``shard=(rank, world)``, only the rows of the examples that rank owns)."""
    cfg = config.model
    if config.inference.kind == "local":
        return LocalGaussian(num_examples, cfg.latent_dim, shard=shard)
    if cfg.kind == "ae":
        return DeterministicEncoder(
            MLP(data_dim, cfg.hidden, cfg.latent_dim, cfg.activation), cfg.latent_dim
        )
    flow, steps = parse_posterior(cfg.posterior)
    if flow == "sivi":
        context, trunk = _trunk(cfg, data_dim)
        return SemiImplicitEncoder(
            trunk,
            context,
            cfg.latent_dim,
            cfg.sivi_noise_dim,
            [context],
            cfg.activation,
            extra=steps,
            eval_extra=cfg.sivi_eval_draws,
        )
    if flow != "gaussian":
        context = cfg.hidden[-1] if cfg.hidden else data_dim
        trunk = (
            nn.Sequential(
                MLP(data_dim, cfg.hidden[:-1], cfg.hidden[-1], cfg.activation),
                ACTIVATIONS[cfg.activation](),
            )
            if cfg.hidden
            else nn.Identity()
        )
        return FlowEncoder(
            trunk, context, cfg.latent_dim, build_flow_steps(flow, steps, cfg.latent_dim, context)
        )
    net = MLP(data_dim, cfg.hidden, 2 * cfg.latent_dim, cfg.activation)
    if not cfg.upper:
        return GaussianEncoder(net, cfg.latent_dim)
    sizes = latent_sizes(cfg)
    nets = [  # q(z_{i+1} | z_i): d_i -> hidden -> 2 d_{i+1}
        MLP(sizes[i], layer.hidden, 2 * sizes[i + 1], cfg.activation)
        for i, layer in enumerate(cfg.upper)
    ]
    return HierarchicalEncoder(net, nets, sizes)


def fitted_by_em(config: Config) -> bool:
    """Whether the config's model is fitted by exact EM (PPCA, the GMM: ``dgm.train.classical``)
    rather than trained by a method on the training core."""
    return config.model.kind in CLASSICAL


def _posterior_class(config: Config) -> type:
    cfg = config.model
    flow, _ = parse_posterior(cfg.posterior)
    local = config.inference.kind == "local"
    return registry.posterior_class(flow, len(cfg.upper), local, cfg.kind == "ae")


def resolve_kl(config: Config) -> str:
    """``auto``: the closed form when there is one (a q with a closed-form KL, the ELBO, an
    estimator that can use it), else Monte Carlo (see :func:`dgm.registry.resolve_kl`)."""
    oc = config.objective
    return registry.resolve_kl(oc.bound, oc.kl, oc.estimator, _posterior_class(config).provides)


def build_bound(config: Config) -> Bound:
    """The training bound: the ELBO (with the resolved KL mode), the IWAE bound, or the
    autoencoder's reconstruction objective."""
    autoencoder = config.model.kind == "ae"
    return registry.make_bound(config.objective.bound, resolve_kl(config), autoencoder)


def build_baseline(cfg: ObjectiveConfig, data_dim: int) -> Baseline:
    """``auto`` is leave-one-out when K > 1 and NVIL's learned baseline when K = 1.

    Leave-one-out needs no parameters and no state, is fitted to each example and to the current
    model at every step, and measured the lowest variance of the three at K = 10 and 100 on the
    trained MNIST VAE (README, "Gradient variance"); with one sample it does not exist, and the
    input-dependent NVIL baseline beats a running mean because log p(x | z) varies far more
    across images than across samples of z for one image.
    """
    name = cfg.baseline
    if name == "auto":
        name = "loo" if cfg.k > 1 else "learned"
    if name == "loo":
        return LeaveOneOut()
    if name == "running":
        return RunningMean(cfg.baseline_decay)
    return LearnedBaseline(data_dim, cfg.baseline_hidden, cfg.baseline_decay)


def build_estimator(cfg: Config, data_dim: int) -> Estimator:
    """The configured estimator of the configured bound's gradient (the AE: the pathwise
    gradient of its reconstruction objective); the combination was checked by the config."""
    oc = cfg.objective
    bound = build_bound(cfg)
    cls = registry.ESTIMATORS[oc.estimator]
    if cls is Reparameterized:
        return Reparameterized(bound, k=oc.k, free_bits=oc.free_bits)
    if cls is ScoreFunction:
        baseline = build_baseline(oc, data_dim) if oc.estimator == "score-baseline" else None
        return ScoreFunction(bound, k=oc.k, baseline=baseline)
    return cls(k=oc.k, bound=bound)
