"""The training loop: amortized VB with a gradient estimator, one epoch at a time.

The trainer owns everything a run needs to continue exactly: the model, the posterior, the
optimizer, the step counters and the random number generators (the global torch RNG, used by
``rsample``, and the data generator, used for shuffling and dynamic binarization).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dgm.build import build_estimator, build_model, build_posterior
from dgm.config import Config
from dgm.data import TensorBatches, binarize_fixed, load_dataset, to_unit_interval
from dgm.errors import CheckpointError, UsageError
from dgm.estimators import Estimate
from dgm.train.checkpoint import (
    Checkpoint,
    capture_rng,
    latest_checkpoint,
    load_checkpoint,
    load_module_state,
    restore_rng,
    save_checkpoint,
)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(
            f"train.device: unknown device {name!r} (expected auto, cpu, cuda, cuda:N)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            f"train.device = {name!r} but CUDA is not available here (use cpu or auto)"
        )
    return device


@dataclass
class Data:
    """Training data (grey levels in [0, 1], binarized per batch) and the fixed test set."""

    x_train: torch.Tensor  # (N, D) grey levels on the device
    x_test: torch.Tensor  # (M, D) as evaluated: binarized once with a fixed seed, or grey levels
    image_shape: tuple[int, int]


def load_data(config: Config, device: torch.device) -> Data:
    dc = config.data
    ds = load_dataset(dc.dataset, data_dir=dc.data_dir, download=dc.download)
    x_train = to_unit_interval(ds.train_images[: dc.train_limit]).to(device)
    x_test = to_unit_interval(ds.test_images[: dc.test_limit]).to(device)
    if dc.binarize != "none":
        # Under dynamic binarization the test set is still binarized once, with a fixed seed, so
        # that every evaluation of a run sees the same binary test images.
        x_test = binarize_fixed(x_test, dc.binarize_seed)
    return Data(x_train, x_test, tuple(ds.train_images.shape[1:]))


class Trainer:
    """Builds a run's objects from its config and trains them; checkpoints go to ``run_dir``."""

    def __init__(self, config: Config, run_dir: Path, data: Data | None = None) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.device = resolve_device(config.train.device)
        self.data = data if data is not None else load_data(config, self.device)
        data_dim = self.data.x_train.shape[1]

        torch.manual_seed(config.train.seed)
        self.model = build_model(config.model, data_dim).to(self.device)
        self.posterior = build_posterior(config.model, data_dim).to(self.device)
        if config.model.init_output_bias:
            self.model.init_output_bias(self.data.x_train.mean(0))  # grey levels' mean, (D,)
        self.estimator = build_estimator(config)
        tc = config.train
        self.optimizer = torch.optim.Adam(
            [*self.model.parameters(), *self.posterior.parameters()],
            lr=tc.lr,
            betas=tc.betas,
            eps=tc.eps,
        )
        self.generator = torch.Generator(self.device).manual_seed(config.train.seed)
        self.batches = TensorBatches(
            self.data.x_train,
            batch_size=tc.batch_size,
            shuffle=True,
            binarize=config.data.binarize,
            generator=self.generator,
            static_seed=config.data.binarize_seed,
        )
        self.epoch = 0
        self.step = 0
        self.train_time_s = 0.0

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    # -- one epoch ---------------------------------------------------------------------------
    def learning_rate(self, epoch: int) -> float:
        """The learning rate of (0-based) ``epoch``: a pure function, so resume needs no state."""
        tc = self.config.train
        if tc.lr_schedule == "constant" or tc.epochs == 1:
            return tc.lr
        return tc.lr * (tc.lr_final / tc.lr) ** (epoch / (tc.epochs - 1))

    def kl_weight(self, step: int) -> float:
        """KL warm-up: beta = min(1, step / (kl_warmup_epochs * steps per epoch))."""
        warmup_steps = self.config.objective.kl_warmup_epochs * len(self.batches)
        return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)

    def train_epoch(self, progress: bool = False) -> dict[str, float]:
        lr = self.learning_rate(self.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        self.posterior.train()
        totals = torch.zeros(3, device=self.device, dtype=torch.float64)  # bound, log_lik, kl
        n = 0
        bar = tqdm(
            total=len(self.batches),
            desc=f"epoch {self.epoch + 1}/{self.config.train.epochs}",
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )
        start = time.perf_counter()
        for i, (x, index) in enumerate(self.batches):
            beta = self.kl_weight(self.step)
            est: Estimate = self.estimator(self.model, self.posterior(x, index), x, beta)
            loss = -est.surrogate.mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            with torch.no_grad():
                batch = torch.stack([est.bound.sum(), est.log_lik.sum(), est.kl.sum()])
                totals += batch.double()
            n += x.shape[0]
            if progress and (i % 50 == 0 or i == len(self.batches) - 1):
                bar.set_postfix(elbo=f"{totals[0].item() / n:.2f}", refresh=False)
            bar.update(1)
        bar.close()
        elapsed = time.perf_counter() - start
        self.train_time_s += elapsed
        bound, log_lik, kl = (totals / n).tolist()
        out = {"train_log_lik": log_lik, "train_kl": kl}
        if self.config.model.kind == "vae":
            out["train_elbo"] = bound
        out["lr"] = lr
        out["epoch_time_s"] = elapsed
        out["images_per_s"] = n / elapsed
        return out

    @torch.inference_mode()
    def evaluate(self, x: torch.Tensor | None = None) -> dict[str, float]:
        """Test-set bound with the training estimator's settings (K samples, its KL mode)."""
        x = self.data.x_test if x is None else x
        self.model.eval()
        self.posterior.eval()
        totals = torch.zeros(3, device=self.device, dtype=torch.float64)
        bs = self.config.train.eval_batch_size
        for start in range(0, x.shape[0], bs):
            x_b = x[start : start + bs]
            est = self.estimator(self.model, self.posterior(x_b), x_b)
            totals += torch.stack([est.bound.sum(), est.log_lik.sum(), est.kl.sum()]).double()
        bound, log_lik, kl = (totals / x.shape[0]).tolist()
        out = {"test_log_lik": log_lik, "test_kl": kl}
        if self.config.model.kind == "vae":
            out["test_elbo"] = bound
        return out

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint(self, metrics: dict[str, Any] | None = None) -> Path:
        ckpt = Checkpoint(
            epoch=self.epoch,
            step=self.step,
            config=self.config.to_dict(),
            modules={"model": self.model.state_dict(), "posterior": self.posterior.state_dict()},
            optimizer=self.optimizer.state_dict(),
            rng=capture_rng(self.generator),
            extra={"train_time_s": self.train_time_s, "metrics": metrics or {}},
        )
        return save_checkpoint(self.checkpoint_dir, ckpt, keep=self.config.train.keep_checkpoints)

    def restore(self, path: Path | None = None, *, weights_only: bool = False) -> Path:
        """Load the latest (or the given) checkpoint; refuse one from a different model."""
        path = path or latest_checkpoint(self.checkpoint_dir)
        if path is None:
            raise CheckpointError(f"{self.checkpoint_dir}: no complete checkpoint to resume from")
        ckpt = load_checkpoint(path)
        if ckpt.config.get("model") != self.config.to_dict()["model"]:
            raise CheckpointError(
                f"{path}: was written for a different model configuration than {self.run_dir}"
            )
        load_module_state(self.model, ckpt.modules["model"], path)
        load_module_state(self.posterior, ckpt.modules["posterior"], path)
        self.epoch, self.step = ckpt.epoch, ckpt.step
        if weights_only:
            return path
        try:
            self.optimizer.load_state_dict(ckpt.optimizer)
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(f"{path}: optimizer state does not match ({err})") from None
        try:
            restore_rng(ckpt.rng, self.generator)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(
                f"{path}: random-number-generator state is invalid ({err})"
            ) from None
        self.train_time_s = float(ckpt.extra.get("train_time_s", 0.0))
        return path

    # -- the whole run ---------------------------------------------------------------------------
    def fit(
        self,
        progress: bool = False,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Train until ``train.epochs``; after each epoch evaluate, checkpoint, and report."""
        history = []
        while self.epoch < self.config.train.epochs:
            metrics: dict[str, Any] = self.train_epoch(progress)
            self.epoch += 1
            metrics = {"epoch": self.epoch, "step": self.step, **self.evaluate(), **metrics}
            metrics["train_time_s"] = self.train_time_s
            self.checkpoint(metrics)
            history.append(metrics)
            if on_epoch is not None:
                on_epoch(metrics)
        return history
