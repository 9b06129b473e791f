r"""The public Python API: train a run, load one, and use what it learned.

    >>> import dgm
    >>> run = dgm.fit({"train": {"epochs": 1}}, out="runs/first")      # doctest: +SKIP
    >>> run = dgm.load_run("runs/first")                                 # doctest: +SKIP
    >>> run.evaluate(k=100)["log_likelihood"]                            # doctest: +SKIP
    >>> images = run.sample(16)                                          # doctest: +SKIP

A :class:`Run` holds a run directory's configuration, the trained model p_theta(x, z) and
posterior q_phi(z | x) (``torch.distributions`` in, ``torch.distributions`` out), the test split
with its labels, and methods to evaluate, sample, encode, decode and reconstruct, and to measure
gradient variance and the inference gaps. Loading a run builds no optimizer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributions import Distribution

import dgm.build as build
from dgm.config import Config, load_config, load_run_config, validate
from dgm.data import TensorBatches, binarize_fixed, dequantize_fixed
from dgm.data.arrays import Data
from dgm.errors import CheckpointError, UsageError
from dgm.estep import fit_local_posterior
from dgm.estimators import ScoreFunction
from dgm.evaluate import active_units, importance_log_likelihood, inference_gaps, posterior_mean
from dgm.files import run_lock
from dgm.gradvar import compare_estimators, warm_up_baseline
from dgm.train.checkpoint import latest_checkpoint, load_checkpoint, load_module_state
from dgm.train.data import resolve_device
from dgm.variational import LocalGaussian

ConfigLike = Config | dict[str, Any] | str | Path | None


def as_config(config: ConfigLike) -> Config:
    """A :class:`Config` from a Config, nested dicts, a TOML path, or None (the defaults)."""
    if isinstance(config, Config):
        return config
    if isinstance(config, dict):
        return validate(config)
    return load_config(config)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The complete lines of a run's ``metrics.jsonl`` (see dgm.train.run.read_metrics)."""
    from dgm.train.run import read_metrics as read

    return read(run_dir)


def load_data(config: ConfigLike = None, device: torch.device | str = "cpu") -> Data:
    """The data set of ``config`` (None: the defaults, the MNIST that ships with dgm) as a run
    sees it: training images as grey levels, the test images binarized once with a fixed seed
    (or dequantized), and the test labels."""
    return build.build_data(as_config(config), device)


@dataclass
class Run:
    """A trained run: its directory, configuration, modules and data (see the module doc)."""

    path: Path
    config: Config
    model: nn.Module
    posterior: nn.Module | None  # None for PPCA and the GMM (exact posteriors)
    data: Data
    epoch: int
    device: torch.device
    metrics: list[dict[str, Any]] = field(default_factory=list)
    #: the signal that stopped training after an epoch's checkpoint (None: it finished)
    stop_signal: int | None = None
    #: the number of torchrun processes that trained it here (1: one process)
    world: int = 1

    @property
    def kind(self) -> str:
        """``model.kind`` of the config (for display; the objects say what they can do)."""
        return self.config.model.kind

    @property
    def exact(self) -> bool:
        """Whether the model's log p(x) and posterior are exact (PPCA, the GMM): no q."""
        return self.posterior is None

    @property
    def provides(self) -> frozenset[str]:
        """What the run's q offers (see :mod:`dgm.variational`); empty for exact models."""
        return getattr(self.posterior, "provides", frozenset())

    def encode(self, x: torch.Tensor) -> Distribution:
        """q(z | x) for images x (B, D): the encoder's, or (per-datapoint inference, held-out
        x) a q_n fitted to each x with theta fixed (``inference.test_steps`` Adam steps)."""
        if self.posterior is None:
            return self.model.posterior(x)
        return self._test_posterior(x)(x, torch.arange(x.shape[0], device=x.device))

    def decode(self, z: torch.Tensor) -> Distribution:
        """p(x | z) for latent codes z (..., d)."""
        return self.model.likelihood(z)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of p(x | z) at z = E_q[z | x]: (B, D) -> (B, D)."""
        return self.decode(posterior_mean(self.encode(x))).mean

    @torch.inference_mode()
    def sample(self, n: int, seed: int | None = None) -> torch.Tensor:
        """n images from the model, the means of p(x | z) at z ~ p(z): (n, D)."""
        if n < 1:
            raise UsageError(f"sample: n = {n}; expected a positive number of samples")
        if seed is not None:
            torch.manual_seed(seed)
        if self.exact:
            from dgm.train.classical import classical_samples

            return classical_samples(self.model, n)
        _, p_x = self.model.eval().sample(n)
        return p_x.mean

    def evaluate(
        self, k: int = 5000, limit: int | None = None, seed: int = 0, on_batch: Any = None
    ) -> dict[str, Any]:
        """The test set's log p(x) with ``k`` importance samples per example (Burda et al. 2015,
        eq. 8), the ELBO, their standard errors, and the active units; exact for PPCA and the
        GMM. ``limit``: the first examples only."""
        if k < 1:
            raise UsageError(f"evaluate: k = {k}; expected a positive number of samples")
        x = self.data.x_test[:limit]
        if self.exact:
            from dgm.train.classical import test_log_likelihood

            return {**test_log_likelihood(self.model, x), "exact": True, "epoch": self.epoch}
        self._require_density("has no likelihood bound to evaluate")
        torch.manual_seed(seed)
        posterior = self._test_posterior(x)
        result = importance_log_likelihood(self.model, posterior, x, k, on_batch=on_batch)
        summary: dict[str, Any] = {**result.summary(), "epoch": self.epoch}
        summary.update(active_units(posterior, x))
        return summary

    def gaps(self, k: int = 5000, limit: int | None = None, seed: int = 0, **options: Any):
        """The approximation and amortization gaps on the test set (Cremer et al. 2018): see
        :func:`dgm.evaluate.inference_gaps` for the options."""
        self._require_density("has no encoder whose gaps could be measured")
        self._require_one_gaussian_layer("the amortization gap")
        if not getattr(self.posterior, "amortized", True):
            raise UsageError(
                f"{self.path}: the amortization gap needs a VAE with an encoder (inference.kind "
                "= 'amortized')"
            )
        torch.manual_seed(seed)
        x = self.data.x_test[:limit]
        return {
            **inference_gaps(self.model, self.posterior, x, k=k, **options),
            "epoch": self.epoch,
        }

    def gradient_variance(
        self,
        k: Sequence[int] = (1, 10, 100),
        repeats: int = 100,
        batch_size: int = 100,
        baseline_steps: int = 500,
        seed: int = 0,
        on_record: Callable[[dict[str, Any]], None] | None = None,
        on_baseline_step: Callable[[str, int], None] | None = None,
    ) -> dict[str, Any]:
        """The variance of every registered gradient estimator of every bound it supports, on
        one batch of ``batch_size`` training images, for each K: ``repeats`` independent
        estimates w.r.t. the encoder's parameters (or the batch's rows of the per-datapoint
        tables), after fitting the running and learned baselines for ``baseline_steps`` steps
        (see :mod:`dgm.gradvar`). Returns the summary that ``dgm gradvar --json`` prints."""
        self._require_density("has no variational posterior to measure")
        self._require_one_gaussian_layer("gradient variance")
        torch.manual_seed(seed)
        n = min(batch_size, self.data.x_train.shape[0])
        index = torch.arange(n, device=self.device)
        x = self.data.x_train[:n]
        if self.config.data.binarize != "none":
            x = binarize_fixed(x, seed)
        elif self.config.data.dequantize:
            x = dequantize_fixed(x, seed)
        posterior = self.posterior.eval()
        local = not getattr(posterior, "amortized", True)
        if local:  # only the batch's rows get a gradient: measure on a copy of those rows
            rows = LocalGaussian(n, posterior.latent_dim, sparse=False).to(self.device)
            with torch.no_grad():
                rows.lam.copy_(posterior.lam[index])
                rows.log_eta.copy_(posterior.log_eta[index])
        baselines = {}
        for name in ("running", "learned"):
            oc = self.config.objective.model_copy(update={"baseline": name, "k": 1})
            baseline = build.build_baseline(oc, x.shape[1]).to(self.device)
            step = (lambda i, name=name: on_baseline_step(name, i)) if on_baseline_step else None
            warm_up_baseline(
                ScoreFunction(k=1, baseline=baseline),
                self.model,
                posterior,
                self.training_batches(),
                baseline_steps,
                on_step=step,
            )
            baselines[name] = baseline.eval()
        measured = rows.eval() if local else posterior
        records = compare_estimators(
            self.model, measured, x, index, baselines, ks=k, repeats=repeats, on_record=on_record
        )
        return {
            "parameters": "per-datapoint tables" if local else "encoder",
            "batch_size": n,
            "repeats": repeats,
            "baseline_steps": baseline_steps,
            "results": records,
        }

    def training_batches(self) -> TensorBatches:
        """The training minibatches as the run draws them (shuffled, binarized per batch)."""
        tc, dc = self.config.train, self.config.data
        return TensorBatches(
            self.data.x_train,
            batch_size=tc.batch_size,
            shuffle=True,
            binarize=dc.binarize,
            generator=torch.Generator(self.device).manual_seed(tc.seed),
            static_seed=dc.binarize_seed,
            dequantize=dc.dequantize,
        )

    def _require_density(self, what: str) -> None:
        """Refuse exact models and point-mass codes (the autoencoder) in one line."""
        if "density" not in self.provides:
            code = "an exact model" if self.exact else "a point-mass code (an autoencoder)"
            raise UsageError(f"{self.path}: a '{self.kind}' run, {code}, {what}")

    def _require_one_gaussian_layer(self, what: str) -> None:
        """Gradient variance and the gaps are measured for one stochastic layer with a
        diagonal-Gaussian q (the lecture's family): a q with a closed-form KL to the prior."""
        if "closed_form_kl" in getattr(self.posterior, "provides", frozenset()):
            return
        m = self.config.model
        family = (
            f"posterior '{m.posterior}'"
            if m.posterior != "gaussian"
            else f"{1 + len(m.upper)} stochastic layers"
        )
        raise UsageError(
            f"{self.path}: {what} is measured for one stochastic layer with a diagonal-Gaussian "
            f"q; this run has {family}"
        )

    def _test_posterior(self, x: torch.Tensor) -> nn.Module:
        if getattr(self.posterior, "amortized", True):
            return self.posterior.eval()
        ic = self.config.inference
        return fit_local_posterior(
            self.model,
            x,
            steps=ic.test_steps,
            lr=ic.test_lr,
            batch_size=self.config.train.eval_batch_size,
        )


def fit(
    config: ConfigLike = None,
    data: Data | None = None,
    out: str | Path | None = None,
    *,
    force: bool = False,
    progress: bool = False,
    on_start: Callable[[Path], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    stop_on_signals: bool = False,
) -> Run:
    """Train a run from ``config`` (a :class:`Config`, nested dicts, a TOML path, or None for the
    defaults) on ``data`` (None: the config's data set) in the run directory ``out`` (None: a
    new one under ``runs/``; ``force`` replaces a run already there), and return it.

    ``on_start(run_dir)`` is called once the device and data are checked, before anything is
    written; ``on_epoch(metrics)`` after every epoch. With ``stop_on_signals``, SIGINT/SIGTERM
    stop the run after the current epoch's checkpoint (``Run.stop_signal`` says which). Under
    torchrun every process calls it with the same ``out``; only rank 0 writes."""
    from dgm.train import Trainer  # the training core and its figures: only when training
    from dgm.train.run import check_new_run, default_run_dir, is_main_process, prepare_new_run

    config = as_config(config)
    main = is_main_process()
    if out is None and not main:
        raise UsageError("torchrun: give the run directory with --out (every rank needs it)")
    run_dir = Path(out) if out is not None else default_run_dir(config)
    if main:
        check_new_run(run_dir, force=force)
    if build.fitted_by_em(config):
        from dgm.train.classical import run_classical

        if on_start is not None:
            on_start(run_dir)
        run_classical(config, run_dir, on_iter=on_epoch, force=force)
        return load_run(run_dir)
    trainer = Trainer(config, run_dir, data=data)  # device and data checked before any write
    if on_start is not None:
        on_start(run_dir)
    if not main:  # distributed: rank 0 creates the run directory; the others only train
        return _trained(trainer, config, run_dir, False, progress, on_epoch, stop_on_signals)
    with run_lock(run_dir):  # from here no other process creates, replaces or trains it
        check_new_run(run_dir, force=force)  # again: another may have started meanwhile
        prepare_new_run(config, run_dir, force=force)
        return _trained(trainer, config, run_dir, False, progress, on_epoch, stop_on_signals)


def resume(
    path: str | Path,
    epochs: int | None = None,
    *,
    compile: bool | None = None,  # noqa: A002 (train.compile)
    device: str | None = None,
    progress: bool = False,
    on_start: Callable[[Path], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    stop_on_signals: bool = False,
) -> Run:
    """Continue the run in ``path`` from its last checkpoint, exactly as if it had not stopped;
    ``epochs`` extends a constant-rate run; ``compile`` and ``device`` change how it computes
    from here on (:data:`dgm.config.RUNTIME_KEYS`)."""
    from dgm.train import Trainer
    from dgm.train.run import is_main_process, open_resume

    run_dir = Path(path)
    with run_lock(run_dir, create=False) if is_main_process() else nullcontext():
        config = open_resume(run_dir, epochs)
        if compile is not None:
            config.train.compile = compile
        if device is not None:
            config.train.device = device
        trainer = Trainer(config, run_dir)
        if on_start is not None:
            on_start(run_dir)
        return _trained(trainer, config, run_dir, True, progress, on_epoch, stop_on_signals)


def _trained(trainer, config, run_dir, resume, progress, on_epoch, stop_on_signals) -> Run:  # noqa: ANN001
    from dgm.train.run import train_run

    trainer = train_run(
        config,
        run_dir,
        resume=resume,
        progress=progress,
        on_epoch=on_epoch,
        trainer=trainer,
        stop_on_signals=stop_on_signals,
    )
    return Run(
        run_dir,
        config,
        trainer.model.eval(),
        trainer.posterior.eval(),
        trainer.data,
        trainer.epoch,
        trainer.device,
        read_metrics(run_dir) if trainer.dist.is_main else [],
        stop_signal=trainer.stop_signal,
        world=trainer.dist.world,
    )


def load_run(
    path: str | Path,
    device: str | None = None,
    data: Data | None = None,
    checkpoint: str | Path | None = None,
) -> Run:
    """The run in ``path`` with its latest checkpoint's weights (or ``checkpoint``'s), for
    evaluation and sampling; no optimizer is built. ``data``: the run's own data when it was
    trained on arrays (:meth:`Data.from_arrays`); else the config's data set is loaded."""
    path = Path(path)
    config = load_run_config(path / "config.json")  # a one-line error if it is not a run
    if device is not None:
        config.train.device = device
    dev = resolve_device(config.train.device)
    data = build.build_data(config, dev) if data is None else data.to(dev)
    if build.fitted_by_em(config):
        from dgm.train.classical import WEIGHTS, load_classical

        model = load_classical(config, path / WEIGHTS).to(dev)
        return Run(path, config, model, None, data, 0, dev, read_metrics(path))
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    ckpt_path = ckpt_path or latest_checkpoint(path / "checkpoints")
    if ckpt_path is None:
        raise CheckpointError(f"{path / 'checkpoints'}: no complete checkpoint to load")
    ckpt = load_checkpoint(ckpt_path)
    data_dim, n_train = data.x_train.shape[1], data.x_train.shape[0]
    torch.manual_seed(config.train.seed)
    model = build.build_model(config.model, data_dim).to(dev)
    posterior = build.build_posterior(config, data_dim, n_train).to(dev)
    load_module_state(model, ckpt.modules["model"], ckpt_path)
    load_module_state(posterior, ckpt.modules["posterior"], ckpt_path)
    return Run(
        path, config, model.eval(), posterior.eval(), data, ckpt.epoch, dev, read_metrics(path)
    )


def initial_run(config: ConfigLike = None, device: str | None = None) -> Run:
    """A run of ``config`` at initialization, untrained, as ``dgm train`` would start it (the same
    seed and initialization, the decoder's output bias from the data's mean): for measuring
    gradient estimators before training. It has no directory (``path`` is the config's name)."""
    config = as_config(config)
    if build.fitted_by_em(config):
        raise UsageError(
            f"model.kind = '{config.model.kind}' is fitted by exact EM: no q to measure"
        )
    if device is not None:
        config.train.device = device
    dev = resolve_device(config.train.device)
    data = build.build_data(config, dev)
    data_dim, n_train = data.x_train.shape[1], data.x_train.shape[0]
    torch.manual_seed(config.train.seed)
    model = build.build_model(config.model, data_dim).to(dev)
    posterior = build.build_posterior(config, data_dim, n_train).to(dev)
    if config.model.init_output_bias:
        model.init_output_bias(data.x_train.mean(0))
    return Run(Path("initial"), config, model.eval(), posterior.eval(), data, 0, dev)
