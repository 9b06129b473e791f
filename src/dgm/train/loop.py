"""The training loop: VB with a gradient estimator, one epoch at a time.

With an amortized encoder every step updates theta and phi together. With per-datapoint
(``local``) inference every batch runs the lecture's VB-EM alternation: ``inner_steps - 1``
E-steps on the batch's rows (lambda_n, eta_n) with theta frozen, then one step that updates both
the rows (the last E-step) and theta (the M-step) from the same gradient evaluation.

The trainer owns everything a run needs to continue exactly: the model, the posterior, the
optimizer, the step counters and the random number generators (the global torch RNG, used by
``rsample``, and the data generator, used for shuffling and dynamic binarization).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dgm.build import build_estimator, build_model, build_posterior
from dgm.config import Config, validate
from dgm.data import (
    TensorBatches,
    binarize_fixed,
    dequantize_fixed,
    load_dataset,
    to_unit_interval,
)
from dgm.errors import CheckpointError, ConfigError, UsageError
from dgm.estep import fit_local_posterior, frozen
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
    elif dc.dequantize:  # likewise one fixed dequantization of the test set
        x_test = dequantize_fixed(x_test, dc.binarize_seed)
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
        self.local = config.inference.kind == "local"
        self.model = build_model(config.model, data_dim).to(self.device)
        self.posterior = build_posterior(config, data_dim, self.data.x_train.shape[0])
        self.posterior = self.posterior.to(self.device)
        if config.model.init_output_bias:
            self.model.init_output_bias(self.data.x_train.mean(0))  # grey levels' mean, (D,)
        self.estimator = build_estimator(config, data_dim).to(self.device)
        tc = config.train
        global_params = [*self.model.parameters(), *self.estimator.parameters()]
        if not self.local:
            global_params += list(self.posterior.parameters())
        self.optimizer = torch.optim.Adam(global_params, lr=tc.lr, betas=tc.betas, eps=tc.eps)
        # the per-datapoint tables: lazy (sparse) Adam touches only the rows in the batch
        self.local_optimizer = (
            torch.optim.SparseAdam(
                list(self.posterior.parameters()), lr=config.inference.local_lr, betas=tc.betas
            )
            if self.local
            else None
        )
        self.generator = torch.Generator(self.device).manual_seed(config.train.seed)
        self.batches = TensorBatches(
            self.data.x_train,
            batch_size=tc.batch_size,
            shuffle=True,
            binarize=config.data.binarize,
            generator=self.generator,
            static_seed=config.data.binarize_seed,
            dequantize=config.data.dequantize,
        )
        self.epoch = 0
        self.step = 0
        self.train_time_s = 0.0
        self.stop_signal: int | None = None  # set by stop_on_signals: finish the epoch, stop

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
        self.estimator.train()
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
            est = self.train_step(x, index)
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

    def train_step(self, x: torch.Tensor, index: torch.Tensor) -> Estimate:
        """One step on the batch (x, index): E-steps first under local inference, then the
        update of theta (and phi, or the batch's rows) from one gradient evaluation."""
        beta = self.kl_weight(self.step)
        if self.local_optimizer is not None:
            self.e_step(x, index, self.config.inference.inner_steps - 1, beta)
        est = self.estimator(self.model, self.posterior(x, index), x, beta)
        loss = -est.surrogate.mean()
        self.optimizer.zero_grad(set_to_none=True)
        if self.local_optimizer is not None:
            self.local_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.local_optimizer is not None:
            self.local_optimizer.step()
        self.step += 1
        return est

    def e_step(self, x: torch.Tensor, index: torch.Tensor, steps: int, beta: float = 1.0) -> None:
        """``steps`` updates of the rows (lambda_n, eta_n) of the batch, theta frozen."""
        if self.local_optimizer is None:
            raise UsageError("e_step needs per-datapoint inference (inference.kind = 'local')")
        with frozen(self.model), frozen(self.estimator):
            for _ in range(steps):
                est = self.estimator(self.model, self.posterior(x, index), x, beta)
                self.local_optimizer.zero_grad(set_to_none=True)
                (-est.surrogate.mean()).backward()
                self.local_optimizer.step()

    def test_posterior(self, x: torch.Tensor) -> torch.nn.Module:
        """The q used on held-out x: the encoder, or (local inference) a fresh E-step fit."""
        if not self.local:
            return self.posterior
        ic = self.config.inference
        return fit_local_posterior(
            self.model,
            x,
            steps=ic.test_steps,
            lr=ic.test_lr,
            batch_size=self.config.train.eval_batch_size,
        )

    def evaluate(self, x: torch.Tensor | None = None) -> dict[str, float]:
        """Test-set bound with the training estimator's settings (K samples, its KL mode).

        Under local inference the test examples' q_n are first fitted with theta frozen
        (``inference.test_steps`` Adam steps each): the E-step of VB-EM.
        """
        x = self.data.x_test if x is None else x
        posterior = self.test_posterior(x)
        return self._evaluate_with(posterior, x)

    @torch.inference_mode()
    def _evaluate_with(self, posterior: torch.nn.Module, x: torch.Tensor) -> dict[str, float]:
        self.model.eval()
        posterior.eval()
        self.estimator.eval()
        totals = torch.zeros(3, device=self.device, dtype=torch.float64)
        bs = self.config.train.eval_batch_size
        for start in range(0, x.shape[0], bs):
            x_b = x[start : start + bs]
            index = torch.arange(start, start + x_b.shape[0], device=x.device)
            est = self.estimator(self.model, posterior(x_b, index), x_b)
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
            modules={
                "model": self.model.state_dict(),
                "posterior": self.posterior.state_dict(),
                "estimator": self.estimator.state_dict(),
            },
            optimizer=self._optimizer_state(),
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
        try:  # compare validated configs: keys added since the checkpoint take their defaults
            saved = validate(ckpt.config, f"{path}/state.json")
        except ConfigError as err:
            raise CheckpointError(str(err)) from None
        if saved.model != self.config.model:
            raise CheckpointError(
                f"{path}: was written for a different model configuration than {self.run_dir}"
            )
        saved_inference = saved.inference.kind
        if saved_inference != self.config.inference.kind:
            raise CheckpointError(
                f"{path}: was written with inference.kind = {saved_inference!r}, "
                f"not {self.config.inference.kind!r}"
            )
        load_module_state(self.model, ckpt.modules["model"], path)
        load_module_state(self.posterior, ckpt.modules["posterior"], path)
        # runs saved before estimators had state (issue 2) carry no "estimator" entry
        load_module_state(self.estimator, ckpt.modules.get("estimator", {}), path)
        self.epoch, self.step = ckpt.epoch, ckpt.step
        if weights_only:
            return path
        try:
            self._load_optimizer_state(ckpt.optimizer)
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

    def _optimizer_state(self) -> dict[str, Any]:
        state = {"global": self.optimizer.state_dict()}
        if self.local_optimizer is not None:
            state["local"] = self.local_optimizer.state_dict()
        return state

    def _load_optimizer_state(self, state: dict[str, Any]) -> None:
        if "param_groups" in state:  # a single optimizer's state, as runs before VB-EM saved it
            state = {"global": state}
        if set(state) != ({"global", "local"} if self.local else {"global"}):
            raise ValueError(f"expected optimizer states for global/local, found {sorted(state)}")
        self.optimizer.load_state_dict(state["global"])
        if self.local_optimizer is not None:
            self.local_optimizer.load_state_dict(state["local"])

    # -- the whole run ---------------------------------------------------------------------------
    def fit(
        self,
        progress: bool = False,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Train until ``train.epochs``; after each epoch evaluate, checkpoint, and report."""
        history = []
        while self.epoch < self.config.train.epochs and self.stop_signal is None:
            metrics: dict[str, Any] = self.train_epoch(progress)
            self.epoch += 1
            metrics = {"epoch": self.epoch, "step": self.step, **self.evaluate(), **metrics}
            metrics["train_time_s"] = self.train_time_s
            self.checkpoint(metrics)
            history.append(metrics)
            if on_epoch is not None:
                on_epoch(metrics)
        return history

    @contextmanager
    def stop_on_signals(self) -> Iterator[None]:
        """SIGINT or SIGTERM asks :meth:`fit` to stop after the current epoch's checkpoint.

        The first signal is recorded in ``stop_signal`` and training continues to the end of the
        epoch, which is then evaluated and checkpointed as usual, so ``--resume`` continues
        exactly. A second signal acts at once with the default behaviour (the partial epoch is
        lost; the last checkpoint is intact). Only the main thread can install handlers;
        elsewhere this does nothing.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, frame: object) -> None:
            if self.stop_signal is not None:  # the second one: do what it would have done
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
                return
            self.stop_signal = signum

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
