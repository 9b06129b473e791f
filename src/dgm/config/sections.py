"""The sections of a configuration, one pydantic model per concern (``[data]``, ``[model]``,
``[objective]``, ``[em]``, ``[inference]``, ``[train]``, and one per family: ``[gan]``,
``[diffusion]``, ``[rbm]``, ``[ebm]``), each with its keys' defaults and checks, and what each
family changes in those defaults (:data:`FAMILY_DEFAULTS`)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

import dgm.registry as registry

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


class Section(BaseModel):
    """A section of a configuration: unknown keys are refused, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
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


class UpperLayer(Section):
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


class ModelConfig(Section):
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


class EMConfig(Section):
    """Fitting the classical models (model.kind = ppca | gmm)."""

    # ppca only: the Tipping-Bishop maximum-likelihood solution (exact, instant: the default) or
    # EM, which converges to it (tested) but slowly when sigma^2 is small
    method: Literal["closed-form", "em"] = "closed-form"
    max_iter: PositiveInt = 100
    tol: float = Field(1e-4, ge=0)  # stop when an iteration gains less (nats per example)


class ObjectiveConfig(Section):
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


class GANConfig(Section):
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


class DiffusionConfig(Section):
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


class RBMConfig(Section):
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


class EBMConfig(Section):
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


class InferenceConfig(Section):
    # amortized: an encoder network q_phi(z | x); local: a (lambda_n, eta_n) table per example
    kind: Literal["amortized", "local"] = "amortized"
    inner_steps: PositiveInt = 1  # E-steps on the batch's phi_n per M-step on theta (local)
    local_lr: PositiveFloat = 1e-2  # SparseAdam learning rate of the local tables
    # test-time E-step for local inference: Adam steps and learning rate per test example
    test_steps: PositiveInt = 300
    test_lr: PositiveFloat = 0.1


class TrainConfig(Section):
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
    # one graph before the fused Adam kernel, where dgm.methods.compiled supports it (one
    # process, amortized, float32, a pathwise estimator), else the forward and so its backward.
    # "auto" (the default): the step compiled whole where it can be and the run is long enough
    # for compiling (10-30 s, less from torch's on-disk cache) to pay, eager otherwise; the
    # decision is printed once. Measured in the docs' Speed page
    compile: bool | Literal["auto"] = "auto"
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
