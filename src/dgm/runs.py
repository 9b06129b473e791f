r"""A trained run as Python sees it: :class:`Run`, made by :func:`dgm.fit`, :func:`dgm.resume`
and :func:`dgm.load_run` (:mod:`dgm.api`).

A :class:`Run` holds a run directory's configuration, the trained model p_theta(x, z) and
posterior q_phi(z | x) (``torch.distributions`` in, ``torch.distributions`` out), the test split
with its labels, and methods to evaluate (importance sampling, AIS, BDMC), sample, encode, decode
and reconstruct, and to measure gradient variance and the inference gaps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributions import Distribution

import dgm.build as build
import dgm.families as families
from dgm.ais import AISResult, ais_log_likelihood, bdmc
from dgm.config import Config
from dgm.data import TensorBatches, binarize_fixed, dequantize_fixed
from dgm.data.arrays import Data
from dgm.errors import UsageError
from dgm.estep import held_out_posterior
from dgm.estimators import ScoreFunction
from dgm.evaluate import active_units, importance_log_likelihood, inference_gaps, posterior_mean
from dgm.gradvar import compare_estimators, warm_up_baseline
from dgm.metrics import Reference, Report, report
from dgm.variational import LocalGaussian

#: a family's samplers draw at most this many images at once
SAMPLE_CHUNK = 500


@dataclass
class Run:
    """A trained run: its directory, configuration, modules and data (see the module doc)."""

    path: Path
    config: Config
    model: nn.Module
    # None for PPCA and the GMM (exact posteriors) and the families of dgm.families (the
    # GAN's generator, a diffusion model, an RBM: no q(z | x))
    posterior: nn.Module | None
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
    def family(self) -> families.Family | None:
        """The run's family (:mod:`dgm.families`: gan, diffusion, rbm), or None (a VAE, an
        autoencoder, PPCA or the GMM)."""
        return families.family(self.kind)

    @property
    def exact(self) -> bool:
        """Whether the model's log p(x) and posterior are exact (PPCA, the GMM): no q."""
        return self.posterior is None and self.family is None

    def _require_variational(self, what: str) -> None:
        if self.family is not None:
            raise UsageError(f"{self.path}: a '{self.kind}' run has no q(z | x): {what}")

    @property
    def provides(self) -> frozenset[str]:
        """What the run's q offers (see :mod:`dgm.variational`); empty for exact models."""
        return getattr(self.posterior, "provides", frozenset())

    def encode(self, x: torch.Tensor) -> Distribution:
        """q(z | x) for images x (B, D): the encoder's, or (per-datapoint inference, held-out
        x) a q_n fitted to each x with theta fixed (``inference.test_steps`` Adam steps)."""
        self._require_variational("nothing to encode with")
        if self.posterior is None:
            return self.model.posterior(x)
        return self._test_posterior(x)(x, torch.arange(x.shape[0], device=x.device))

    def decode(self, z: torch.Tensor) -> Distribution:
        """p(x | z) for latent codes z (..., d)."""
        self._require_variational("no decoder p(x | z)")
        return self.model.likelihood(z)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of p(x | z) at z = E_q[z | x]: (B, D) -> (B, D)."""
        return self.decode(posterior_mean(self.encode(x))).mean

    @torch.inference_mode()
    def sample(
        self, n: int, seed: int | None = None, mean: bool = True, steps: int | None = None
    ) -> torch.Tensor:
        """n images from the model, z ~ p(z): the means of p(x | z) (``mean``, to look at) or
        draws x ~ p(x | z) (the model's samples, clamped to [0, 1] for Gaussian pixels): (n, D).
        A Gaussian mixture's mean is the mean of the drawn component. The families' samplers
        (:mod:`dgm.families`): a GAN's G(z); a diffusion model's chain (DDIM on ``steps`` time
        steps, or ancestral with ``steps`` = T; default ``diffusion.sampling_steps``); an RBM's
        Gibbs chains (``steps`` sweeps; default ``rbm.sampling_steps``)."""
        if n < 1:
            raise UsageError(f"sample: n = {n}; expected a positive number of samples")
        if seed is not None:
            torch.manual_seed(seed)
        model = self.model.eval()
        family = self.family
        if family is not None:
            if steps is not None and not family.sampler_has_steps:
                raise UsageError(
                    f"sample: a '{self.kind}' run samples in one step; steps do not apply"
                )
            steps = family.sampling_steps(self.config) if steps is None else steps
            options = {} if steps is None else {"steps": steps}
            try:  # in chunks: a U-Net's feature maps for 10,000 images would not fit
                chunks = [
                    model.generate(min(SAMPLE_CHUNK, n - i), mean=mean, **options)
                    for i in range(0, n, SAMPLE_CHUNK)
                ]
                return torch.cat(chunks).float().clamp(0, 1)
            except (TypeError, ValueError) as err:
                raise UsageError(f"sample: {self.path} ({self.kind}): {err}") from None
        if steps is not None:
            raise UsageError(f"sample: a '{self.kind}' run samples in one step; steps do not apply")
        z, p_x = model.sample(n)
        if isinstance(p_x, torch.Tensor):  # a Gaussian mixture draws x itself, z is the component
            x = model.means[z] if mean else p_x
        else:
            x = p_x.mean if mean else p_x.sample()
        return x.float().clamp(0, 1)

    def score(
        self,
        n: int = 10000,
        seed: int = 0,
        mean: bool = False,
        on_stage: Callable[[str], None] | None = None,
        steps: int | None = None,
        **options: Any,
    ) -> Report:
        """Sample quality in the shipped MNIST feature space (:mod:`dgm.metrics`): ``n`` samples
        (draws, or with ``mean`` the means of p(x | z)) against the test set as the run evaluates
        it (binarized for binary data; the grey test images for means), beside the floor
        (training images of the same kind) and the ceiling (independent pixels). ``options`` go
        to :func:`dgm.metrics.score`; ``on_stage`` hears "sampling" and "scoring"."""
        if self.data.image_shape != (28, 28):
            raise UsageError(
                f"score: {self.path} has {self.data.image_shape} images; the shipped feature "
                "network reads 28 x 28 (MNIST-like) images"
            )
        if on_stage is not None:
            on_stage("sampling")
        samples = self.sample(n, seed=seed, mean=mean, steps=steps)
        train = self.data.x_train
        if mean:
            test = build.grey_test_images(self.config, self.device)
            real = train
        else:
            test = self.data.x_test
            real = build.as_evaluated(self.config, train, self.config.data.binarize_seed + 1)
        if on_stage is not None:
            on_stage("scoring")
        reference = Reference.of(test, train)
        return report(samples, reference, real, seed=seed, **options)

    def evaluate(
        self, k: int = 5000, limit: int | None = None, seed: int = 0, on_batch: Any = None
    ) -> dict[str, Any]:
        """The test set's log p(x) with ``k`` importance samples per example (Burda et al. 2015,
        eq. 8), the ELBO, their standard errors, and the active units; exact for PPCA and the
        GMM. ``limit``: the first examples only."""
        if k < 1:
            raise UsageError(f"evaluate: k = {k}; expected a positive number of samples")
        x = self.data.x_test[:limit]
        if self.family is not None:
            summary = self.family.bound(self.model, self.config, x, k, seed, on_batch)
            return {**summary, "epoch": self.epoch}
        if self.exact:
            from dgm.train.classical import test_log_likelihood

            r = test_log_likelihood(self.model, x)
            # the names of every other model's ln p(x) (the test_ names are read for a release)
            same = {"log_likelihood": r["test_log_likelihood"]}
            same["log_likelihood_stderr"] = r["test_log_likelihood_stderr"]
            return {**same, **r, "exact": True, "epoch": self.epoch}
        self._require_density("has no likelihood bound to evaluate")
        torch.manual_seed(seed)
        posterior = self._test_posterior(x)
        result = importance_log_likelihood(self.model, posterior, x, k, on_batch=on_batch)
        summary: dict[str, Any] = {**result.summary(), "epoch": self.epoch}
        summary.update(active_units(posterior, x))
        return summary

    def evaluate_ais(
        self,
        steps: int | None = None,
        chains: int | None = None,
        limit: int | None = None,
        seed: int = 0,
        batch_size: int = 100,
        on_batch: Callable[[int], None] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """The test set's log p(x) by annealed importance sampling from the prior with HMC
        (:func:`dgm.ais.ais_log_likelihood`: ``steps`` temperatures, ``chains`` chains), in
        batches of ``batch_size`` examples; a stochastic lower bound, tighter than the
        importance-sampled one for enough steps. ``steps`` and ``chains`` not given are the
        family's (an RBM's ``rbm.temperatures`` and ``rbm.runs``; 1,000 and 16 otherwise), as
        ``dgm eval`` takes them."""
        self._require_decoder()
        default_steps, default_chains = (
            self.family.ais_settings(self.config) if self.family is not None else (1000, 16)
        )
        steps = default_steps if steps is None else steps
        chains = default_chains if chains is None else chains
        torch.manual_seed(seed)
        x = self.data.x_test[:limit]
        if self.family is not None and "partition" in self.family.provides:
            if steps < 3:
                raise UsageError(f"--steps {steps}: AIS needs at least 3 temperatures")
            model = self.model.eval()
            result = self.family.log_likelihood(model, self.data, x, steps, chains, seed)
            return {**result, "method": "ais", "epoch": self.epoch}
        model = self._annealed_model(options.pop("scale", None))
        parts, acceptance = [], 0.0
        for start in range(0, x.shape[0], batch_size):
            r = ais_log_likelihood(model, x[start : start + batch_size], steps, chains, **options)
            parts.append(r.log_likelihood)
            acceptance += r.acceptance * r.log_likelihood.numel()
            if on_batch is not None:
                on_batch(start + r.log_likelihood.numel())
        result = AISResult(torch.cat(parts), steps, chains, acceptance / x.shape[0], "forward")
        summary = {**result.summary(), "method": "ais", "epoch": self.epoch}
        if hasattr(model, "scale"):  # an observation model's sigma
            summary["observation_scale"] = model.scale
        return summary

    def _annealed_model(self, scale: float | None = None) -> nn.Module:
        """The model AIS anneals over z: the decoder model, or a family's
        (:meth:`dgm.families.base.Family.annealed_model`)."""
        if self.family is not None:
            return self.family.annealed_model(self.model.eval(), self.config, scale)
        if scale is not None:
            raise UsageError(f"{self.path}: --scale is the GAN's observation model's sigma")
        return self.model.eval()

    def bdmc(
        self, n: int = 100, steps: int = 1000, chains: int = 16, seed: int = 0, **options: Any
    ) -> dict[str, Any]:
        """Bidirectional Monte Carlo (Grosse et al. 2015) on ``n`` examples simulated from the
        model: AIS's lower and reverse AIS's upper bound on their log p(x), and the gap."""
        self._require_decoder()
        if self.family is not None and "partition" in self.family.provides:
            raise UsageError(
                f"{self.path}: BDMC anneals over z of a decoder model; a '{self.kind}' has none"
            )
        torch.manual_seed(seed)
        model = self._annealed_model(options.pop("scale", None))
        return {**bdmc(model, n, steps, chains, **options), "epoch": self.epoch}

    def _require_decoder(self) -> None:
        if self.exact:
            raise UsageError(f"{self.path}: a '{self.kind}' run has an exact log p(x): use IS")
        if self.family is not None and "ais" not in self.family.provides:
            raise UsageError(
                f"{self.path}: a '{self.kind}' run has no AIS estimate here; its bound is "
                "dgm eval's default method"
            )

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
        self._require_variational(what)
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
        ic = self.config.inference
        return held_out_posterior(
            self.model,
            self.posterior.eval(),
            x,
            steps=ic.test_steps,
            lr=ic.test_lr,
            batch_size=self.config.train.eval_batch_size,
        )
