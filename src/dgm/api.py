r"""The public Python API: train a run, continue one, load one.

    >>> import dgm
    >>> run = dgm.fit({"train": {"epochs": 1}}, out="runs/first")      # doctest: +SKIP
    >>> run = dgm.load_run("runs/first")                                 # doctest: +SKIP
    >>> run.evaluate(k=100)["log_likelihood"]                            # doctest: +SKIP
    >>> images = run.sample(16)                                          # doctest: +SKIP

Each returns a :class:`dgm.runs.Run`. Loading a run builds no optimizer; training goes through
the training core (:mod:`dgm.train`), imported only when a run is trained.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import dgm.build as build
import dgm.export as export
import dgm.families as families
import dgm.sizes as sizes
from dgm.config import Config, load_config, load_run_config, validate
from dgm.data.arrays import Data
from dgm.errors import UsageError
from dgm.files import run_lock
from dgm.runs import Run
from dgm.train.checkpoint import load_checkpoint, load_module_state, run_checkpoint
from dgm.train.data import resolve_device

if TYPE_CHECKING:
    from dgm.callbacks.base import Callback

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


def _notify(trainer: Any, on_notice: Callable[[str], None] | None) -> None:
    if on_notice is not None:
        for line in trainer.method.notices:
            on_notice(line)


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
    on_removed: Callable[[list[Path]], None] | None = None,
    callbacks: Sequence[Callback] = (),
    on_notice: Callable[[str], None] | None = None,
) -> Run:
    """Train a run from ``config`` (a :class:`Config`, nested dicts, a TOML path, or None for the
    defaults) on ``data`` (None: the config's data set) in the run directory ``out`` (None: a
    new one under ``runs/``; ``force`` replaces a run already there), and return it.

    ``on_start(run_dir)`` is called once the device and data are checked, before anything is
    written; ``on_epoch(metrics)`` after every epoch; ``on_removed(paths)`` with what ``force``
    removed of the run that was there (only files dgm wrote: :func:`dgm.manifest.remove_run`).
    With ``stop_on_signals``, SIGINT/SIGTERM stop the run after the current epoch's checkpoint
    (``Run.stop_signal`` says which). ``callbacks``: :class:`dgm.callbacks.Callback` objects
    (such as :class:`dgm.callbacks.TensorBoardLogger`), called around training.
    ``on_notice(line)`` gets each line the method has to say once before training (how
    ``train.compile = "auto"`` decided). Under
    torchrun every process calls it with the same ``out``; only rank 0 writes (and calls the
    callbacks)."""
    from dgm.train import Trainer  # the training core and its figures: only when training
    from dgm.train.run import check_new_run, default_run_dir, is_main_process, prepare_new_run

    config = as_config(config)
    # the memory it needs, from the config alone: refused before anything is built or written
    sizes.check(sizes.training(config, data), config, resolve_device(config.train.device))
    main = is_main_process()
    if out is None and not main:
        raise UsageError("torchrun: give the run directory with --out (every rank needs it)")
    run_dir = Path(out) if out is not None else default_run_dir(config)
    if main:
        check_new_run(run_dir, force=force)
    if build.fitted_by_em(config):
        from dgm.train.classical import run_classical

        if callbacks:
            raise UsageError(
                f"callbacks: model.kind = '{config.model.kind}' is fitted by EM in one go, "
                "with no epochs to call them after"
            )
        if on_start is not None:
            on_start(run_dir)
        run_classical(config, run_dir, on_iter=on_epoch, force=force, on_removed=on_removed)
        return load_run(run_dir)
    trainer = Trainer(config, run_dir, data=data)  # device and data checked before any write
    if on_start is not None:
        on_start(run_dir)
    _notify(trainer, on_notice)
    if not main:  # distributed: rank 0 creates the run directory; the others only train
        return _trained(
            trainer, config, run_dir, False, progress, on_epoch, stop_on_signals, callbacks
        )
    with run_lock(run_dir):  # from here no other process creates, replaces or trains it
        check_new_run(run_dir, force=force)  # again: another may have started meanwhile
        removed = prepare_new_run(config, run_dir, force=force)
        if removed and on_removed is not None:
            on_removed(removed)
        return _trained(
            trainer, config, run_dir, False, progress, on_epoch, stop_on_signals, callbacks
        )


def resume(
    path: str | Path,
    epochs: int | None = None,
    *,
    compile: bool | None = None,  # noqa: A002 (train.compile)
    device: str | None = None,
    lr: float | None = None,
    progress: bool = False,
    on_start: Callable[[Path], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    stop_on_signals: bool = False,
    callbacks: Sequence[Callback] = (),
    on_notice: Callable[[str], None] | None = None,
) -> Run:
    """Continue the run in ``path`` from its last checkpoint, exactly as if it had not stopped;
    ``epochs`` extends a constant-rate run; ``compile`` and ``device`` change how it computes
    from here on (:data:`dgm.config.RUNTIME_KEYS`); ``lr`` sets a new learning rate from the
    last checkpoint on (a diverged run goes on at a smaller one; the first metrics row after
    it holds ``lr_change``); ``callbacks`` as in :func:`fit`."""
    from dgm.train import Trainer
    from dgm.train.run import is_main_process, open_resume

    run_dir = Path(path)
    with run_lock(run_dir, create=False) if is_main_process() else nullcontext():
        config = open_resume(run_dir, epochs, lr)
        if compile is not None:
            config.train.compile = compile
        if device is not None:
            config.train.device = device
        sizes.check(sizes.training(config), config, resolve_device(config.train.device))
        trainer = Trainer(config, run_dir)
        if on_start is not None:
            on_start(run_dir)
        _notify(trainer, on_notice)
        return _trained(
            trainer, config, run_dir, True, progress, on_epoch, stop_on_signals, callbacks
        )


def _trained(  # noqa: ANN001
    trainer, config, run_dir, resume, progress, on_epoch, stop_on_signals, callbacks=()
) -> Run:
    from dgm.callbacks.base import CallbackList
    from dgm.train.run import train_run

    # the callbacks see the modules being trained (rank 0 only: train_run calls it alone)
    hooks = CallbackList(callbacks, lambda: _run_of(trainer, config, run_dir))

    def epoch_end(metrics: dict[str, Any]) -> None:
        if on_epoch is not None:
            on_epoch(metrics)
        hooks.epoch_end(metrics)

    try:
        trainer = train_run(
            config,
            run_dir,
            resume=resume,
            progress=progress,
            on_epoch=epoch_end if callbacks else on_epoch,
            trainer=trainer,
            stop_on_signals=stop_on_signals,
            on_ready=hooks.start if callbacks else None,
        )
    finally:
        hooks.end(trainer.stop_signal)
    run = _run_of(trainer, config, run_dir)
    run.model.eval()
    if run.posterior is not None:
        run.posterior.eval()
    return run


def _run_of(trainer, config: Config, run_dir: Path) -> Run:  # noqa: ANN001
    """A :class:`Run` on the modules ``trainer`` trains (its metrics: rank 0's file)."""
    return Run(
        run_dir,
        config,
        trainer.model,
        trainer.posterior,
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
    evaluation and sampling; no optimizer is built. ``path`` may also be an export
    (:func:`dgm.export.export_run`: weights and config only) or ``"pretrained:NAME"``, one that
    ships with dgm (``pretrained:mnist-vae``). ``data``: the run's own data when it was
    trained on arrays (:meth:`Data.from_arrays`); else the config's data set is loaded."""
    path = export.resolve(path)
    config = load_run_config(path / "config.json")  # a one-line error if it is not a run
    if device is not None:
        config.train.device = device
    dev = resolve_device(config.train.device)
    sizes.check(sizes.evaluation(config, 1, 1, data=data), config, dev, f"loading {path}")
    data = build.build_data(config, dev) if data is None else data.to(dev)
    if export.is_export(path):
        if checkpoint is not None:
            raise UsageError(f"{path}: an export holds one set of weights and no checkpoints")
        exported = export.read_export(path)
        modules, epoch, source = exported.modules, exported.epoch, path / export.WEIGHTS
        metrics = [exported.info["metrics"]] if exported.info.get("metrics") else []
    elif build.fitted_by_em(config):
        from dgm.train.classical import WEIGHTS, load_classical

        model = load_classical(config, path / WEIGHTS).to(dev)
        return Run(path, config, model, None, data, 0, dev, read_metrics(path))
    else:
        source = run_checkpoint(path, checkpoint)
        ckpt = load_checkpoint(source)
        modules, epoch, metrics = ckpt.modules, ckpt.epoch, read_metrics(path)
    if build.fitted_by_em(config):  # an exported PPCA or GMM
        from dgm.train.classical import classical_model

        model = classical_model(config, modules.get("model", {}), source).to(dev)
        return Run(path, config, model, None, data, epoch, dev, metrics)
    data_dim, n_train = data.x_train.shape[1], data.x_train.shape[0]
    torch.manual_seed(config.train.seed)
    family = families.family(config.model.kind)
    if family is not None:  # a GAN's generator, a diffusion model, an RBM
        model = family.model(config, data).to(dev)
        for module, state in family.restorable(model, modules):
            load_module_state(module, state, source)
        return Run(path, config, model.eval(), None, data, epoch, dev, metrics)
    model = build.build_model(config.model, data_dim).to(dev)
    posterior = build.build_posterior(config, data_dim, n_train).to(dev)
    load_module_state(model, modules.get("model", {}), source)
    load_module_state(posterior, modules.get("posterior", {}), source)
    return Run(path, config, model.eval(), posterior.eval(), data, epoch, dev, metrics)


def initial_run(config: ConfigLike = None, device: str | None = None) -> Run:
    """A run of ``config`` at initialization, untrained, as ``dgm train`` would start it (the same
    seed and initialization, the decoder's output bias from the data's mean): for measuring
    gradient estimators before training. It has no directory (``path`` is the config's name)."""
    config = as_config(config)
    if build.fitted_by_em(config) or families.family(config.model.kind) is not None:
        raise UsageError(
            f"model.kind = '{config.model.kind}' has no variational q: no gradient estimator "
            "to measure"
        )
    if device is not None:
        config.train.device = device
    dev = resolve_device(config.train.device)
    sizes.check(sizes.evaluation(config, 1, 1), config, dev, "this model")
    data = build.build_data(config, dev)
    data_dim, n_train = data.x_train.shape[1], data.x_train.shape[0]
    torch.manual_seed(config.train.seed)
    model = build.build_model(config.model, data_dim).to(dev)
    posterior = build.build_posterior(config, data_dim, n_train).to(dev)
    if config.model.init_output_bias:
        model.init_output_bias(data.x_train.mean(0))
    return Run(Path("initial"), config, model.eval(), posterior.eval(), data, 0, dev)
