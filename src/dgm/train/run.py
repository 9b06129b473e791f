"""Run directories: the resolved config, ``metrics.jsonl``, checkpoints and pictures.

RUN_DIR/
    config.json         the validated configuration
    metrics.jsonl       one JSON line per epoch
    checkpoints/        see dgm.train.checkpoint
    samples.png  train_vs_generated.png  reconstructions.png  curves.png
    tensorboard/        with ``dgm train --tensorboard`` (dgm.callbacks.TensorBoardLogger)
    latent.png          the latent plane (latent_dim = 2; any run with ``dgm latent``)
    eval-k5000-n10000-seed0-epoch20.json  written by ``dgm eval`` (method, examples, seed, epoch)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

import dgm.latent as latent
import dgm.manifest as manifest
from dgm.build import fitted_by_em
from dgm.config import (
    RUNTIME_KEYS,
    Config,
    load_run_config,
    same_run,
    save_config,
)
from dgm.errors import UsageError
from dgm.evaluate import posterior_mean
from dgm.files import append_text, atomic_write_text, parse_json, run_lock
from dgm.plots import save_curves, save_grid, save_reconstructions, save_side_by_side
from dgm.train.checkpoint import latest_checkpoint, load_checkpoint
from dgm.train.loop import Trainer
from dgm.train.validate import metrics_row_fault

CONFIG = "config.json"
METRICS = "metrics.jsonl"


def default_run_dir(config: Config, root: Path = Path("runs")) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = root / f"{stamp}-{config.model.kind}-{config.data.dataset}"
    path, i = base, 1
    while path.exists():
        path, i = base.with_name(f"{base.name}-{i}"), i + 1
    return path


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` is a dgm run (:func:`dgm.manifest.is_run`)."""
    return Path(run_dir).is_dir() and manifest.is_run(Path(run_dir))


def check_new_run(run_dir: Path, force: bool = False) -> None:
    """Refuse a ``run_dir`` that is a symbolic link or a file, that holds files of its own (not
    a dgm run), or that holds a run (unless ``force``)."""
    manifest.check_writable(Path(run_dir), force)


def prepare_new_run(config: Config, run_dir: Path, force: bool = False) -> list[Path]:
    """Create ``run_dir`` for a new run: its record first, then config.json. With ``force``,
    a run already there is removed first, only what dgm wrote (:func:`dgm.manifest.remove_run`);
    returns what was removed."""
    run_dir = Path(run_dir)
    check_new_run(run_dir, force)
    removed: list[Path] = []
    if holds_run(run_dir):
        with run_lock(run_dir):  # never delete a run that another process is training
            removed = manifest.remove_run(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"{run_dir}: cannot write the run directory ({err.strerror})") from None
    manifest.create(run_dir)
    save_config(config, run_dir / CONFIG)
    manifest.record(run_dir, run_dir / CONFIG)
    return removed


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` up to its first line that is not one as dgm writes it (a
    torn last line after a crash, or an edited one: what follows is dropped too)."""
    path = Path(run_dir) / METRICS
    if not path.exists() or path.is_symlink() or not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = parse_json(line, max_depth=3)
        except ValueError:
            break
        if metrics_row_fault(row) is not None:
            break
        rows.append(row)
    return rows


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    """Append one row to ``metrics.jsonl``, never through a symbolic link."""
    append_text(Path(run_dir) / METRICS, json.dumps(row) + "\n")
    manifest.record(run_dir, Path(run_dir) / METRICS)


def _sync_metrics_with_checkpoint(run_dir: Path, epoch: int, last: dict[str, Any]) -> None:
    """Keep metrics lines up to the checkpoint's epoch; restore its line if the crash lost it."""
    rows = [r for r in read_metrics(run_dir) if r.get("epoch", 0) <= epoch]
    if last and (not rows or rows[-1].get("epoch") != epoch):
        rows.append(last)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    atomic_write_text(run_dir / METRICS, text)
    manifest.record(run_dir, run_dir / METRICS)


def open_resume(run_dir: Path, epochs: int | None = None, lr: float | None = None) -> Config:
    """The config of the run in ``run_dir``, optionally with more epochs or a new learning
    rate (recorded as ``lr_change`` in the first metrics row it trains)."""
    if not run_dir.is_dir():
        raise UsageError(f"--resume {run_dir}: no such run directory")
    config = load_run_config(run_dir / CONFIG)
    manifest.clean_leftovers(run_dir)  # what a killed write left behind
    if fitted_by_em(config):
        raise UsageError(
            f"--resume {run_dir}: a {config.model.kind} run is fitted by EM in one go and has "
            "nothing to resume; to refit it, train again with --force --out"
        )
    if lr is not None:
        if not (isinstance(lr, int | float) and 0 < lr < float("inf")):
            raise UsageError(f"--resume {run_dir} --lr {lr}: expected a positive learning rate")
        config.train.lr = float(lr)
    if epochs is None or epochs == config.train.epochs:
        return config
    done = latest_checkpoint(run_dir / "checkpoints")
    done_epochs = load_checkpoint(done).epoch if done is not None else 0
    if epochs < max(done_epochs, 1):
        raise UsageError(
            f"--resume {run_dir} --epochs {epochs}: expected at least {max(done_epochs, 1)} "
            f"(the run has finished {done_epochs} epochs)"
        )
    if config.train.lr_schedule != "constant":
        raise UsageError(
            f"--resume {run_dir} --epochs {epochs}: the run's learning-rate schedule "
            f"({config.train.lr_schedule!r}) is fixed by its {config.train.epochs} epochs"
        )
    config.train.epochs = epochs
    return config


def train_run(
    config: Config,
    run_dir: Path,
    *,
    resume: bool = False,
    progress: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    trainer: Trainer | None = None,
    stop_on_signals: bool = False,
    on_ready: Callable[[], None] | None = None,
) -> Trainer:
    """Train (or continue) the run in ``run_dir`` and write its metrics and pictures.

    With ``stop_on_signals``, SIGINT/SIGTERM stop the run cleanly after the current epoch's
    checkpoint (see :meth:`Trainer.stop_on_signals`); ``trainer.stop_signal`` then says which.
    ``on_ready()`` is called on the main process once the run is ready to train (a resumed
    one restored from its checkpoint), before its first epoch.
    """
    with run_lock(run_dir) if is_main_process() else nullcontext():
        return _train_run(
            config, run_dir, resume, progress, on_epoch, trainer, stop_on_signals, on_ready
        )


def is_main_process() -> bool:
    """Rank 0 under torchrun, or a single process: the one that writes files."""
    return int(os.environ.get("RANK", "0")) == 0


def _train_run(
    config: Config,
    run_dir: Path,
    resume: bool,
    progress: bool,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    trainer: Trainer | None,
    stop_on_signals: bool,
    on_ready: Callable[[], None] | None = None,
) -> Trainer:
    trainer = trainer or Trainer(config, run_dir)
    main = trainer.dist.is_main  # distributed: only rank 0 writes files
    change: dict[str, Any] = {}
    if resume:
        path = latest_checkpoint(trainer.checkpoint_dir)
        if path is not None:
            trainer.restore(path)
            ckpt = load_checkpoint(path)
            if ckpt.saved is not None and ckpt.saved.train.lr != config.train.lr:
                # a new learning rate (a diverged run goes on at a smaller one): the rate is
                # the one given from here, and the recoveries start afresh
                change = {"epoch": trainer.epoch, "from": ckpt.saved.train.lr}
                change["to"] = config.train.lr
                trainer.lr_scale, trainer.recoveries = 1.0, 0
            if main:
                _sync_metrics_with_checkpoint(run_dir, trainer.epoch, ckpt.extra.get("metrics", {}))
        elif main:
            (run_dir / METRICS).unlink(missing_ok=True)
        if main:
            save_config(config, run_dir / CONFIG)

    def record(metrics: dict[str, Any]) -> None:
        if not main:
            return
        if change:  # the first epoch after a change of learning rate says so
            metrics = {**metrics, "lr_change": dict(change)}
            change.clear()
        append_metrics(run_dir, metrics)
        if trainer.family is not None:
            written = trainer.family.on_epoch(trainer.method, run_dir, trainer.epoch)
            manifest.record(run_dir, *written)
        if on_epoch is not None:
            on_epoch(metrics)

    if on_ready is not None and main:
        on_ready()
    if stop_on_signals:
        with trainer.stop_on_signals():
            trainer.fit(progress=progress, on_epoch=record)
    else:
        trainer.fit(progress=progress, on_epoch=record)
    if trainer.stop_signal is None and main:
        write_figures(trainer, run_dir)
    return trainer


def write_figures(trainer: Trainer, run_dir: Path, seed: int = 0) -> None:
    """samples.png, train_vs_generated.png, reconstructions.png and curves.png (a family's
    own pictures for the families of :mod:`dgm.families`); latent.png (:mod:`dgm.latent`) when
    an encoder's latent space is a plane (latent_dim = 2)."""
    if trainer.family is not None:
        family, rows = trainer.family, read_metrics(run_dir)
        written = family.figures(trainer.config, trainer.method, trainer.data, run_dir, rows)
        manifest.record(run_dir, *written)
        return
    rng_state = torch.get_rng_state()  # figures must not disturb the training RNG stream
    torch.manual_seed(seed)
    x = trainer.data.x_test[:32]
    posterior = trainer.test_posterior(x)  # local inference: an E-step fit to these 32
    with torch.inference_mode():
        _write_figures(trainer, posterior, x, run_dir)
    torch.set_rng_state(rng_state)
    if trainer.config.model.latent_dim == 2 and latent.refusal(trainer.config) is None:
        latent.write_view(trainer, run_dir, seed=seed)  # latent.png; its own RNG, restored


def _write_figures(trainer: Trainer, posterior: torch.nn.Module, x: torch.Tensor, run_dir: Path):
    shape = trainer.data.image_shape
    model = trainer.model.eval()
    posterior.eval()
    _, p_x = model.sample(64)
    save_grid(p_x.mean, run_dir / "samples.png", shape)
    x_train = trainer.data.x_train[:64]
    x_train = torch.bernoulli(x_train) if trainer.config.data.binarize != "none" else x_train
    kind = "VAE" if trainer.estimator.bound.bounds_log_p else "AE"
    save_side_by_side(
        [("training digits", x_train), (f"generated by the {kind} (z ~ p(z))", p_x.mean)],
        run_dir / "train_vs_generated.png",
        shape,
    )
    index = torch.arange(x.shape[0], device=x.device)
    x_rec = model.likelihood(posterior_mean(posterior(x, index))).mean  # decode E_q[z]
    save_reconstructions(x, x_rec, run_dir / "reconstructions.png", shape)
    written = ["samples.png", "train_vs_generated.png", "reconstructions.png"]
    rows = read_metrics(run_dir)
    if rows:
        save_curves(rows, run_dir / "curves.png")
        written.append("curves.png")
    manifest.record(run_dir, *(run_dir / name for name in written))


def load_trained(run_dir: Path, device: str | None = None, limit: int | None = None) -> Trainer:
    """A trainer holding the latest checkpoint's weights, for evaluation and sampling."""
    config = load_run_config(run_dir / CONFIG)
    if device is not None:
        config.train.device = device
    if limit is not None:
        config.data.test_limit = min(limit, config.data.test_limit or limit)
    trainer = Trainer(config, run_dir)
    trainer.restore(weights_only=True)
    return trainer


def train_or_resume(
    config: Config,
    run_dir: Path,
    *,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    stop_on_signals: bool = True,
) -> tuple[list[dict[str, Any]], int | None]:
    """Bring the run in ``run_dir`` to ``config.train.epochs``: start it, resume it from its last
    checkpoint, or (already finished) leave it alone; a run directory whose saved config differs
    from ``config`` (beyond :data:`dgm.config.RUNTIME_KEYS`) is refused, never overwritten.
    Returns the run's metrics and the signal that stopped it early (None when it finished).
    For benchmarks that must survive interruption.
    """
    with run_lock(run_dir):
        return _train_or_resume(config, run_dir, on_epoch, stop_on_signals)


def _train_or_resume(
    config: Config,
    run_dir: Path,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    stop_on_signals: bool,
) -> tuple[list[dict[str, Any]], int | None]:
    done = latest_checkpoint(run_dir / "checkpoints")
    if holds_run(run_dir) and not same_run(load_run_config(run_dir / CONFIG), config):
        raise UsageError(
            f"{run_dir}: holds a run with another configuration (only "
            f"{', '.join(RUNTIME_KEYS)} may change on resume); use another directory"
        )
    if done is not None and load_checkpoint(done).epoch >= config.train.epochs:
        return read_metrics(run_dir), None
    if done is None:  # new, or stopped before its first checkpoint: nothing to keep
        prepare_new_run(config, run_dir, force=True)
    trainer = train_run(
        config, run_dir, resume=done is not None, on_epoch=on_epoch, stop_on_signals=stop_on_signals
    )
    return read_metrics(run_dir), trainer.stop_signal
