"""The whole configuration (:class:`Config`): its sections, the checks across them (which
bound, estimator and posterior go together is asked of :mod:`dgm.registry`), one error line per
problem, and a run's configuration as it is saved, read back and compared on resume."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from pydantic import (
    Field,
    ValidationError,
    model_validator,
)

import dgm.registry as registry
from dgm.config.files import ECHO_LIMIT, check_depth, read_config_text, read_toml, set_key
from dgm.config.sections import (
    CLASSICAL,
    FAMILIES,
    FAMILY_DEFAULTS,
    DataConfig,
    DiffusionConfig,
    EBMConfig,
    EMConfig,
    GANConfig,
    InferenceConfig,
    ModelConfig,
    ObjectiveConfig,
    RBMConfig,
    Section,
    TrainConfig,
    parse_posterior,
)
from dgm.errors import ConfigError, shorten

#: at most this many problems are named in one error line
MAX_PROBLEMS = 3


class Config(Section):
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
        if self.train.precision != "float32" or self.train.compile is True:
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


def _did_you_mean(loc: tuple[Any, ...]) -> str:
    """``; did you mean 'train.lr'?`` for an unknown key close to a known one, else ``""``."""

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
    check_depth(data, str(path))
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
