"""Validated configuration (pydantic), one model per concern, saved with every run.

A config is built from defaults, then a TOML file, then ``--set key=value`` overrides and CLI
flags. Every problem (an unknown key, a wrong type, an impossible value, invalid TOML) becomes one
:class:`~dgm.errors.ConfigError` line that names the key and what was expected.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

import dgm.registry as registry
from dgm.errors import ConfigError, shorten

#: seeds go to torch.manual_seed (which takes less than 2**64) after an offset per rank
MAX_SEED = 2**63


def check_seed(seed: int) -> int:
    """``seed`` if 0 <= seed < 2**63, else ValueError (one line)."""
    if not 0 <= seed < MAX_SEED:
        raise ValueError("expected a seed 0 <= seed < 2**63")
    return seed


Seed = Annotated[int, AfterValidator(check_seed)]

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(i)?)?b?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes in a size like ``8GiB``, ``512 MB``, ``1.5g`` or ``4096``; ValueError otherwise."""
    m = _SIZE.fullmatch(text)
    if m is None:
        raise ValueError("expected a size like '8GiB', '512MB' or a number of bytes")
    number, unit, binary = m.groups()
    power = "kmgt".index(unit.lower()) + 1 if unit else 0
    size = float(number) * (1024 if binary else 1000) ** power
    if not 1 <= size < 2**80:
        raise ValueError("expected a size of at least 1 byte, like '8GiB'")
    return int(size)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    dataset: str = "mnist"
    data_dir: str | None = None
    download: bool = False
    binarize: Literal["dynamic", "static", "none"] = "dynamic"
    binarize_seed: Seed = 0  # the fixed draw for `static`, and for the test set under `dynamic`
    # with binarize = "none": x = (pixel + u) / 256, u ~ U[0, 1), fresh per batch (test: fixed)
    dequantize: bool = False
    train_limit: PositiveInt | None = None  # use only the first N training examples
    test_limit: PositiveInt | None = None  # use only the first N test examples


CLASSICAL = ("ppca", "gmm")
#: families trained by their own method on the training core, each with a config section
#: (gan, diffusion, rbm) and its own defaults (see Config._family_defaults)
FAMILIES = ("gan", "diffusion", "rbm", "ebm")


class UpperLayer(_Section):
    latent_dim: PositiveInt
    hidden: list[PositiveInt] = Field(default_factory=lambda: [100, 100])


POSTERIOR_FLOWS = ("planar", "radial", "iaf", "sylvester")
MAX_FLOW_STEPS = 128  # the papers use up to 80 planar steps


MAX_SIVI_DRAWS = 10_000


def parse_posterior(text: str) -> tuple[str, int]:
    """``gaussian`` -> ("gaussian", 0); ``iaf:4`` -> ("iaf", 4); ``sivi:10`` -> ("sivi", 10)
    (J = 10 extra draws of the mixing distribution); anything else: ValueError."""
    name, _, steps = text.partition(":")
    if name == "gaussian" and not steps:
        return name, 0
    if name in POSTERIOR_FLOWS and steps.isdigit() and 0 < int(steps) <= MAX_FLOW_STEPS:
        return name, int(steps)
    if name == "sivi" and steps.isdigit() and int(steps) <= MAX_SIVI_DRAWS:
        return name, int(steps)
    raise ValueError(
        f"expected gaussian, FLOW:L with FLOW one of {', '.join(POSTERIOR_FLOWS)} and "
        f"1 <= L <= {MAX_FLOW_STEPS} flow steps (e.g. iaf:4), or sivi:J with 0 <= J <= "
        f"{MAX_SIVI_DRAWS} extra draws of its mixing distribution (e.g. sivi:10)"
    )


class ModelConfig(_Section):
    # vae: VB with a stochastic q; ae: the plain autoencoder baseline; ppca, gmm: the classical
    # models of the lecture's first slides, fitted by exact EM (see the `em` section); gan,
    # diffusion, rbm: the lecture's last slide, each configured by its own section
    kind: Literal["vae", "ae", "ppca", "gmm", "gan", "diffusion", "rbm", "ebm"] = "vae"
    latent_dim: PositiveInt = 50
    hidden: list[PositiveInt] = Field(default_factory=lambda: [200, 200])
    activation: Literal["tanh", "relu", "elu", "softplus", "leaky_relu", "gelu"] = "tanh"
    # gaussian: fixed sigma (gaussian_scale); gaussian-learned: sigma(z) per pixel from the
    # decoder; gaussian-isotropic: one learned sigma (PPCA's likelihood with a linear decoder)
    likelihood: Literal["bernoulli", "gaussian", "gaussian-learned", "gaussian-isotropic"] = (
        "bernoulli"
    )
    init_output_bias: bool = True  # decoder output bias from the training data's mean
    gaussian_scale: PositiveFloat = 1.0  # sigma of the fixed-variance Gaussian likelihood
    min_scale: PositiveFloat = 0.01  # floor on sigma(z) of the learned-variance Gaussian
    # q(z | x): gaussian (diagonal), or a flow of L steps on it whose parameters come from the
    # encoder: planar:L, radial:L (Rezende and Mohamed 2015), iaf:L (Kingma et al. 2016),
    # sylvester:L (Householder Sylvester flows, van den Berg et al. 2018)
    # sivi:J: semi-implicit VI (Yin and Zhou 2018), q(z | x) = int N(z; psi, sigma^2(x))
    # q(psi | x) dpsi with psi from noise through a network, its density along a draw the
    # mixture over J further draws of psi (dgm.variational.semi_implicit)
    posterior: str = "gaussian"
    sivi_noise_dim: PositiveInt = 10  # sivi: the noise epsilon fed to the mixing network
    sivi_eval_draws: NonNegativeInt = 1000  # sivi: J when evaluating (dgm eval, AIS)
    # stochastic layers above z (= z_1): p(z_L) p(z_{L-1} | z_L) ... p(z_1 | z_2) p(x | z_1) and
    # q(z_1 | x) q(z_2 | z_1) ...; each has a latent_dim and the hidden widths of the MLPs that
    # connect it to the layer below (the IWAE paper's 2-layer model: [{latent_dim = 50,
    # hidden = [100, 100]}] over latent_dim = 100, hidden = [200, 200])
    upper: list[UpperLayer] = Field(default_factory=list)
    components: PositiveInt = 10  # gmm: mixture components
    covariance: Literal["full", "diag"] = "full"  # gmm: covariance of each component
    reg_covar: float = Field(1e-6, ge=0)  # gmm: added to every covariance's diagonal

    @field_validator("posterior")
    @classmethod
    def _check_posterior(cls, v: str) -> str:
        parse_posterior(v)
        return v


class EMConfig(_Section):
    """Fitting the classical models (model.kind = ppca | gmm)."""

    # ppca only: the Tipping-Bishop maximum-likelihood solution (exact, instant: the default) or
    # EM, which converges to it (tested) but slowly when sigma^2 is small
    method: Literal["closed-form", "em"] = "closed-form"
    max_iter: PositiveInt = 100
    tol: float = Field(1e-4, ge=0)  # stop when an iteration gains less (nats per example)


class ObjectiveConfig(_Section):
    # elbo: (1/K) sum_k log w_k; iwae: log (1/K) sum_k w_k (Burda et al. 2015), K = k
    bound: Literal["elbo", "iwae"] = "elbo"
    k: PositiveInt = 1  # samples of z per example in the training bound
    # the ELBO's KL: analytic (closed form), mc (Monte Carlo from the same samples), or auto:
    # analytic where one exists (diagonal-Gaussian q, one stochastic layer), else mc. The IWAE
    # bound has no KL term (it works on log-weights); its logged KL is the Monte Carlo estimate.
    kl: Literal["auto", "analytic", "mc"] = "auto"
    kl_warmup_epochs: float = Field(0.0, ge=0)  # KL weight rises linearly from 0 to 1 over these
    kl_warmup_steps: NonNegativeInt = 0  # or over these optimizer steps (not both)
    # free bits (Kingma et al. 2016): the KL of a latent dimension gets no gradient while its
    # minibatch average is below this many nats (0: off; ELBO with estimator reparam only)
    free_bits: float = Field(0.0, ge=0)
    # a name in dgm.registry.ESTIMATORS: reparam (pathwise), score (the lecture's naive
    # score-function gradient), score-baseline (with a control variate, see `baseline`), stl
    # ("sticking the landing", ELBO), dreg (doubly reparameterized, IWAE), ...
    estimator: str = "reparam"
    # auto: leave-one-out when k > 1, else NVIL's learned baseline (see dgm.build)
    baseline: Literal["auto", "running", "learned", "loo"] = "auto"
    baseline_decay: float = Field(0.9, ge=0, lt=1)  # running-mean decay, per step
    baseline_hidden: PositiveInt = 100  # hidden units of NVIL's baseline network

    @field_validator("estimator")
    @classmethod
    def _known_estimator(cls, name: str) -> str:
        if name not in registry.ESTIMATORS:
            raise ValueError(f"expected one of {', '.join(registry.ESTIMATORS)}")
        return name

    @model_validator(mode="after")
    def _check_baseline(self) -> ObjectiveConfig:
        if self.estimator == "score-baseline" and self.baseline == "loo" and self.k < 2:
            raise ValueError("baseline = 'loo' (leave-one-out) needs k >= 2 samples")
        if self.kl_warmup_epochs > 0 and self.kl_warmup_steps > 0:
            raise ValueError(
                "kl_warmup_epochs and kl_warmup_steps both set: give the warm-up's length once"
            )
        if self.free_bits > 0 and (self.bound != "elbo" or self.estimator != "reparam"):
            raise ValueError(
                "free_bits applies to the ELBO's KL with estimator = 'reparam' (got bound = "
                f"'{self.bound}', estimator = '{self.estimator}')"
            )
        return self


class GANConfig(_Section):
    """Adversarial training (model.kind = gan): z ~ N(0, I) of model.latent_dim dimensions."""

    # dcgan: Radford et al. 2016's convolutional nets sized for 28 x 28; mlp: Goodfellow et
    # al. 2014's fully connected ones (ReLU generator, leaky-ReLU discriminator, `hidden` wide)
    architecture: Literal["dcgan", "mlp"] = "dcgan"
    # non-saturating and minimax: Goodfellow et al. 2014; wgan-gp: Gulrajani et al. 2017
    loss: Literal["non-saturating", "minimax", "wgan-gp"] = "non-saturating"
    critic_steps: PositiveInt | None = None  # discriminator updates per generator update
    penalty: float = Field(10.0, ge=0)  # WGAN-GP's gradient-penalty weight lambda
    channels: PositiveInt = 64  # dcgan: the generator is (2c, c) wide, the discriminator (c, 2c)
    hidden: list[PositiveInt] = Field(default_factory=lambda: [512, 512])  # mlp: widths of both
    # the discriminator's normalization; auto: batch for the minimax losses, layer norm for
    # WGAN-GP (its penalty is per example, which batch statistics break)
    norm: Literal["auto", "batch", "layer", "none"] = "auto"
    # sigma of the Gaussian observation model p(x | z) = N(G(z), sigma^2 I) under which AIS
    # estimates the generator's log p(x) (Wu et al. 2017); dgm eval --scale overrides it
    observation_scale: PositiveFloat = 0.05

    def resolved_critic_steps(self) -> int:
        return self.critic_steps or (5 if self.loss == "wgan-gp" else 1)

    def resolved_norm(self) -> str:
        if self.norm != "auto":
            return self.norm
        return "layer" if self.loss == "wgan-gp" else "batch"


class DiffusionConfig(_Section):
    """Diffusion (model.kind = diffusion): Ho et al. 2020 as a latent-variable model."""

    steps: PositiveInt = 1000  # T, the length of the chain
    schedule: Literal["linear", "cosine"] = "linear"  # Ho et al. 2020; Nichol and Dhariwal 2021
    # elbo: the bound itself, one random t per example; simple: Ho et al.'s unweighted noise
    # loss (the true bound is reported either way)
    objective: Literal["elbo", "simple"] = "simple"
    channels: PositiveInt = 32  # the U-Net's base width
    channel_mult: list[PositiveInt] = Field(default_factory=lambda: [1, 2])
    blocks: PositiveInt = 1  # residual blocks per level
    dropout: float = Field(0.0, ge=0, lt=1)
    ema: float | None = Field(0.999, ge=0, lt=1)  # decay of the weights' average (None: none)
    grad_clip: PositiveFloat | None = 1.0
    # the bound after every epoch: on the first eval_examples test examples, from eval_steps
    # stratified time steps per example (an unbiased estimate; none: all T steps summed)
    eval_examples: PositiveInt | None = 1000
    eval_steps: Annotated[int, Field(ge=2)] | None = 10  # at most diffusion.steps
    # sampling: DDIM on this many time steps (Song et al. 2021; at most diffusion.steps), or
    # none for ancestral sampling over all T
    sampling_steps: Annotated[int, Field(ge=2)] | None = 100


class RBMConfig(_Section):
    """The restricted Boltzmann machine (model.kind = rbm), trained by CD-k or PCD-k."""

    hidden: PositiveInt = 500
    k: PositiveInt = 1  # Gibbs sweeps per update
    persistent: bool = False  # PCD (Tieleman 2008): chains carried across updates
    chains: PositiveInt = 100  # persistent chains
    momentum: float = Field(0.9, ge=0, lt=1)
    initial_momentum: float = Field(0.5, ge=0, lt=1)
    momentum_switch_epochs: float = Field(5.0, ge=0)
    weight_decay: float = Field(2e-4, ge=0)
    # AIS for log Z (dgm eval): inverse temperatures and independent runs; sampling sweeps
    temperatures: PositiveInt = 14_500
    runs: PositiveInt = 100
    sampling_steps: PositiveInt = 1000


class EBMConfig(_Section):
    """A deep energy-based model (model.kind = ebm): a convolutional energy network trained by
    short-run Langevin dynamics with a replay buffer (Du and Mordatch 2019)."""

    channels: PositiveInt = 32
    langevin_steps: PositiveInt = 20  # per training step
    step_size: PositiveFloat = 10.0  # x <- x - step_size grad E + noise xi
    noise: float = Field(0.005, ge=0)
    buffer_size: PositiveInt = 10_000
    reinit: float = Field(0.05, ge=0, le=1)  # chains restarted at uniform noise
    alpha: float = Field(1.0, ge=0)  # weight of the energies' squares
    sampling_steps: PositiveInt = 200  # dgm sample: Langevin steps from uniform noise


class InferenceConfig(_Section):
    # amortized: an encoder network q_phi(z | x); local: a (lambda_n, eta_n) table per example
    kind: Literal["amortized", "local"] = "amortized"
    inner_steps: PositiveInt = 1  # E-steps on the batch's phi_n per M-step on theta (local)
    local_lr: PositiveFloat = 1e-2  # SparseAdam learning rate of the local tables
    # test-time E-step for local inference: Adam steps and learning rate per test example
    test_steps: PositiveInt = 300
    test_lr: PositiveFloat = 0.1


class TrainConfig(_Section):
    epochs: PositiveInt = 20
    batch_size: PositiveInt = 100
    lr: PositiveFloat = 1e-3
    # constant: lr throughout; exponential: from lr at the first epoch to lr_final at the last;
    # iwae: Burda et al. (2015)'s stairs, stage i = 0..7 at lr * 10^(-i/7) for a share 3^i / 3280
    # of the epochs (train.epochs = 3280 is the paper's schedule exactly)
    lr_schedule: Literal["constant", "exponential", "iwae"] = "constant"
    lr_final: PositiveFloat = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    seed: Seed = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N (checked by dgm.devices when resolved)
    keep_checkpoints: PositiveInt = 3
    eval_batch_size: PositiveInt = 1000
    # numerical faults: a step with a non-finite loss or gradient is skipped; after
    # max_bad_steps in a row the run goes back to its last checkpoint with the learning rate
    # times recovery_lr_factor, at most max_recoveries times, and then stops with a message
    max_bad_steps: PositiveInt = 20
    max_recoveries: int = Field(2, ge=0)
    recovery_lr_factor: float = Field(0.5, gt=0, lt=1)
    # bfloat16: the training step's networks run under torch.autocast (matrix products in
    # bfloat16, everything else and all evaluation in float32); see README for its measured effect
    precision: Literal["float32", "bfloat16"] = "float32"
    # torch.compile of the training step: forward, gradient (torch.func) and non-finite check as
    # one graph before the fused Adam kernel, where dgm.methods.compiled supports it (one process,
    # amortized, float32, a pathwise estimator), else the forward and so its backward; off by
    # default (it compiles for 8-30 s first); measured in README's "Speed"
    compile: bool = False
    # refuse a run whose estimated memory (dgm.sizes: parameters, their gradients and Adam's
    # moments, activations of a step and of evaluation, the data) exceeds this, e.g. "8GiB";
    # the machine's available memory is always a limit
    max_memory: str | None = None

    @field_validator("max_memory")
    @classmethod
    def _check_max_memory(cls, v: str | None) -> str | None:
        if v is not None:
            parse_size(v)
        return v

    @model_validator(mode="after")
    def _check_betas(self) -> TrainConfig:
        for i, b in enumerate(self.betas):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"betas[{i}] must be in [0, 1), got {b}")
        return self


#: what each family changes in the defaults (a config or --set still overrides each): the
#: GAN's Adam (Radford et al. 2016) on dequantized grey levels (Wu et al. 2017's protocol);
#: diffusion's Adam rate (Ho et al. 2020); the RBM's SGD rate (Salakhutdinov and Murray 2008);
#: the deep EBM's Adam (Du and Mordatch 2019) on grey levels
FAMILY_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "gan": {
        "train": {"lr": 2e-4, "betas": (0.5, 0.999)},
        "data": {"binarize": "none", "dequantize": True},
    },
    "diffusion": {"train": {"lr": 2e-4}},
    "rbm": {"train": {"lr": 0.05}},
    "ebm": {
        "train": {"lr": 1e-4, "betas": (0.0, 0.999)},
        "data": {"binarize": "none", "dequantize": True},
    },
}


class Config(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    em: EMConfig = Field(default_factory=EMConfig)
    gan: GANConfig = Field(default_factory=GANConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    rbm: RBMConfig = Field(default_factory=RBMConfig)
    ebm: EBMConfig = Field(default_factory=EBMConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="before")
    @classmethod
    def _classical_data_defaults(cls, data: Any) -> Any:
        """PPCA and GMM are densities on grey levels: unless the config says otherwise, their
        data are dequantized grey levels (binarize = none, dequantize = true)."""
        if isinstance(data, dict):
            model = data.get("model")
            if isinstance(model, dict) and model.get("kind") in CLASSICAL:
                section = data.get("data")
                section = dict(section) if isinstance(section, dict) else {}
                section.setdefault("binarize", "none")
                section.setdefault("dequantize", True)
                data = {**data, "data": section}
            kind = model.get("kind") if isinstance(model, dict) else None
            if isinstance(kind, str) and kind in FAMILY_DEFAULTS:
                for name, defaults in FAMILY_DEFAULTS[kind].items():
                    section = data.get(name)
                    section = dict(section) if isinstance(section, dict) else {}
                    for key, value in defaults.items():
                        section.setdefault(key, value)
                    data = {**data, name: section}
        return data

    @model_validator(mode="after")
    def _check_combination(self) -> Config:
        if (
            self.model.likelihood == "bernoulli"
            and self.data.binarize == "none"
            and self.model.kind not in (*CLASSICAL, *FAMILIES)  # theirs is part of the model
        ):
            raise ValueError(
                "model.likelihood = 'bernoulli' needs binary data: set data.binarize to 'dynamic' "
                "or 'static', or use a gaussian likelihood for grey levels"
            )
        if self.data.dequantize and self.data.binarize != "none":
            raise ValueError(
                "data.dequantize acts on grey levels: set data.binarize = 'none' with it"
            )
        if self.model.kind in CLASSICAL and not (
            self.data.binarize == "none" and self.data.dequantize
        ):
            raise ValueError(
                f"model.kind = '{self.model.kind}' is a density on grey levels: it needs "
                "data.binarize = 'none' and data.dequantize = true (on the raw 256 levels the "
                "likelihood is unbounded)"
            )
        if self.model.kind in CLASSICAL and self.inference.kind == "local":
            raise ValueError(
                f"model.kind = '{self.model.kind}' has an exact posterior: inference.kind must "
                "stay 'amortized' (it is not used)"
            )
        if self.model.kind == "ae" and (
            self.objective.bound != "elbo" or self.objective.free_bits > 0
        ):
            raise ValueError(
                "model.kind = 'ae' trains on reconstruction alone: objective.bound = 'iwae' and "
                "objective.free_bits need model.kind = 'vae'"
            )
        if self.model.kind == "ae" and self.objective.estimator != "reparam":
            raise ValueError(
                "model.kind = 'ae' trains a deterministic code: objective.estimator must be "
                "'reparam' (score-function estimators need a stochastic q)"
            )
        posterior, _ = parse_posterior(self.model.posterior)
        structured = posterior != "gaussian" or self.model.upper
        what = (
            f"model.posterior = '{self.model.posterior}'"
            if posterior != "gaussian"
            else "model.upper (more than one stochastic layer)"
        )
        if structured and self.model.kind != "vae":
            raise ValueError(f"{what} needs model.kind = 'vae'")
        if structured and self.inference.kind == "local":
            raise ValueError(f"{what} is amortized: inference.kind must be 'amortized'")
        if self.model.kind == "vae":  # the bound, estimator and posterior objects decide
            oc = self.objective
            q = registry.posterior_class(
                posterior, len(self.model.upper), self.inference.kind == "local", False
            )
            kl = registry.resolve_kl(oc.bound, oc.kl, oc.estimator, q.provides)
            name = what if structured else "the diagonal-Gaussian posterior"
            registry.check(oc.estimator, registry.make_bound(oc.bound, kl), q, oc.k, name)
        if self.train.precision == "bfloat16" and posterior != "gaussian":
            raise ValueError(
                f"train.precision = 'bfloat16' is for the diagonal-Gaussian posterior; {what} "
                "trains in float32 (set train.precision = 'float32')"
            )
        if self.model.kind == "ae" and self.inference.kind == "local":
            raise ValueError("inference.kind = 'local' is per-datapoint VB: use model.kind = 'vae'")
        self._check_family()
        return self

    def _check_family(self) -> None:
        kind = self.model.kind
        if kind not in FAMILIES:
            return
        if self.inference.kind == "local":
            raise ValueError(
                f"model.kind = '{kind}' has no q(z | x): inference.kind = 'local' is VB"
            )
        if self.train.precision != "float32" or self.train.compile:
            raise ValueError(
                f"model.kind = '{kind}' trains in float32, eagerly: set train.precision = "
                "'float32' and train.compile = false"
            )
        if self.train.lr_schedule == "iwae":
            raise ValueError(f"train.lr_schedule = 'iwae' is the IWAE's; model.kind = '{kind}'")
        binary = self.data.binarize != "none"
        if kind == "rbm" and not binary:
            raise ValueError(
                "model.kind = 'rbm' is a Bernoulli-Bernoulli RBM: it needs data.binarize = "
                "'dynamic' or 'static'"
            )
        if kind == "diffusion" and self.data.dequantize:
            raise ValueError(
                "model.kind = 'diffusion' models binary pixels (Bernoulli decoder) or the 256 "
                "grey levels (discretized Gaussian decoder): set data.dequantize = false"
            )
        if kind == "ebm" and self.ebm.buffer_size < self.train.batch_size:
            raise ValueError(
                f"ebm.buffer_size = {self.ebm.buffer_size} is smaller than train.batch_size = "
                f"{self.train.batch_size}: each step draws a batch of distinct buffer slots"
            )
        if kind == "ebm" and binary:
            raise ValueError(
                "model.kind = 'ebm' samples grey levels by Langevin dynamics: set data.binarize "
                "= 'none'"
            )
        if kind == "gan" and binary:
            raise ValueError(
                "model.kind = 'gan' generates grey levels in [0, 1]: set data.binarize = 'none' "
                "(a discriminator tells binary images from grey ones at once)"
            )
        if kind == "gan" and self.gan.loss == "wgan-gp" and self.gan.resolved_norm() == "batch":
            raise ValueError(
                "gan.norm = 'batch' with gan.loss = 'wgan-gp': the gradient penalty is per "
                "example, which batch statistics break; use 'layer' or 'none'"
            )

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


#: echoed values and keys are cut to this many characters; at most this many problems are named
ECHO_LIMIT, MAX_PROBLEMS = 80, 3


def _did_you_mean(loc: tuple[Any, ...]) -> str:
    """``; did you mean 'train.lr'?`` for an unknown key close to a known one, else ``""``."""
    import difflib

    model: Any = Config
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None or not isinstance(field.annotation, type):
            return ""
        model = field.annotation
    known = list(getattr(model, "model_fields", {}))
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    if not close:
        return ""
    where = ".".join(str(p) for p in loc[:-1])
    return f"; did you mean '{where + '.' if where else ''}{close[0]}'?"


def _format_error(err: ValidationError, source: str) -> str:
    parts = []
    errors = err.errors()
    for e in errors[:MAX_PROBLEMS]:
        loc = shorten(".".join(str(p) for p in e["loc"]), ECHO_LIMIT)
        msg = shorten(e["msg"].removeprefix("Value error, "), 2 * ECHO_LIMIT)
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + _did_you_mean(e["loc"])
        given = (
            ""
            if e["type"] in ("missing", "extra_forbidden")
            else f" (got {shorten(repr(e['input']), ECHO_LIMIT)})"
        )
        parts.append(f"key '{loc}': {msg}{given}" if loc else f"{msg}")
    if len(errors) > MAX_PROBLEMS:
        parts.append(f"and {len(errors) - MAX_PROBLEMS} more")
    return f"{source}: " + "; ".join(parts)


def validate(data: dict[str, Any], source: str = "configuration") -> Config:
    """Build a :class:`Config` from nested dicts, or raise one ConfigError line."""
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


#: a config file (TOML, or a run's config.json) is read only if it is a regular file this small
MAX_CONFIG_BYTES = 1024**2
#: and its tables and arrays nest at most this deep (dgm's own go 4 deep: model.upper[0].hidden)
MAX_DEPTH = 16


def read_config_text(path: Path, what: str = "config file") -> str:
    """The text of ``path`` if it is a regular file of at most :data:`MAX_CONFIG_BYTES` in
    UTF-8; else one ConfigError line naming it. A FIFO or a device (``/dev/zero``) is refused
    without reading from it (it is opened non-blocking and checked before any read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read {what} ({err.strerror or err})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise ConfigError(f"{path}: {kind}; expected a {what} (a regular file)")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{path}: {info.st_size:,} bytes; a {what} is expected to be at most "
                f"{MAX_CONFIG_BYTES:,} bytes"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read {what} ({err.strerror or err})") from None
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:  # it grew while being read
        raise ConfigError(f"{path}: a {what} is expected to be at most {MAX_CONFIG_BYTES:,} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: cannot read {what} (not UTF-8: {err.reason})") from None


def depth(value: Any) -> int:
    """How deeply dicts and lists nest in ``value`` (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d + 1)
            if d + 1 <= MAX_DEPTH:  # deeper is refused anyway: stop walking
                stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def _check_depth(data: Any, where: str) -> None:
    if depth(data) > MAX_DEPTH:
        raise ConfigError(
            f"{where}: tables and arrays nested more than {MAX_DEPTH} deep; a dgm config nests "
            "at most a few levels (model.upper[0].hidden)"
        )


#: the configurations that ship with dgm (``dgm train mnist_vae``; ``configs/`` in a checkout)
CONFIGS_DIR = Path(__file__).parent / "configs"


def shipped_configs() -> list[str]:
    """The names of the configurations that ship with dgm: ``mnist_vae``, ``iwae/k5``..."""
    return sorted(p.relative_to(CONFIGS_DIR).with_suffix("").as_posix()
                  for p in CONFIGS_DIR.rglob("*.toml"))  # fmt: skip


def config_path(path: str | Path) -> Path:
    """The file a config argument names: a path to a TOML file; else the name of one that
    ships with dgm (``mnist_vae``, or ``configs/mnist_vae.toml`` outside a checkout)."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        return path
    name = path.as_posix().removeprefix("configs/").removesuffix(".toml")
    shipped = CONFIGS_DIR / f"{name}.toml"
    if name in shipped_configs() and shipped.is_file():
        return shipped
    if path.suffix != ".toml":
        close = difflib.get_close_matches(name, shipped_configs(), n=1)
        hint = f"did you mean '{close[0]}'?" if close else ", ".join(shipped_configs())
        raise ConfigError(
            f"{shorten(str(path), ECHO_LIMIT)}: no such file, and no configuration of that name "
            f"ships with dgm ({hint})"
        )
    return path  # a missing file: read_config_text names it


def read_toml(path: str | Path) -> dict[str, Any]:
    path = config_path(path)
    text = read_config_text(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML ({shorten(err, 2 * ECHO_LIMIT)})") from None
    except RecursionError:
        raise ConfigError(
            f"{path}: invalid TOML (arrays or tables nested too deeply; at most {MAX_DEPTH})"
        ) from None
    _check_depth(data, str(path))
    return data


def parse_value(text: str) -> Any:
    """A ``--set`` value is read as a TOML value (numbers, booleans, arrays), else as a string."""
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    except RecursionError:
        raise ConfigError(
            f"--set ...={shorten(text, 20)}: arrays or tables nested too deeply (at most "
            f"{MAX_DEPTH})"
        ) from None
    _check_depth(value, f"--set ...={shorten(text, 20)}")
    return value


def set_key(data: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key (``train.lr``) in nested dicts; unknown sections are left to validation."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"--set {shorten(key, ECHO_LIMIT)}: expected a dotted key like train.lr")
    node = data
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(
                f"--set {shorten(key, ECHO_LIMIT)}: '{shorten(p, ECHO_LIMIT)}' is a value, not "
                "a section"
            )
        node = child
    node[parts[-1]] = value


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Defaults, then the TOML file at ``path``, then dotted-key ``overrides``; validated."""
    data: dict[str, Any] = read_toml(path) if path is not None else {}
    source = str(path) if path is not None else "configuration"
    validate(data, source)  # errors in the file are reported against the file
    for key, value in (overrides or {}).items():
        set_key(data, key, value)
    return validate(data, source if not overrides else f"{source} with overrides")


def save_config(config: Config, path: Path) -> None:
    from dgm.files import atomic_write_text

    atomic_write_text(path, json.dumps(config.to_dict(), indent=2) + "\n")


def load_run_config(path: Path) -> Config:
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise ConfigError(f"{path}: not found (is this a dgm run directory?)")
    text = read_config_text(path, "run configuration")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: cannot read the run's configuration ({err})") from None
    except RecursionError:
        raise ConfigError(f"{path}: the run's configuration is nested too deeply") from None
    _check_depth(data, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object with the run's configuration")
    return validate(data, str(path))


#: how a run computes, not what: these may change when a run is resumed (a run moved to a GPU,
#: or compiled from its next epoch on); everything else is the run's identity
RUNTIME_KEYS = ("train.compile", "train.device")
#: what a resumed run may change: how it computes, more epochs, and a new learning rate (a
#: diverged run goes on at a smaller one; the change is recorded in metrics.jsonl)
RESUME_KEYS = (*RUNTIME_KEYS, "train.epochs", "train.lr")


def same_run(a: Config, b: Config) -> bool:
    """Whether ``a`` and ``b`` describe the same run, up to :data:`RUNTIME_KEYS`."""
    da, db = a.to_dict(), b.to_dict()
    for key in RUNTIME_KEYS:
        section, name = key.split(".")
        da[section].pop(name, None)
        db[section].pop(name, None)
    return da == db
