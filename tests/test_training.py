"""Training on a subset of MNIST: it learns, it is reproducible, and resume is exact."""

import json

import pytest
import torch

from dgm.config import load_config
from dgm.errors import CheckpointError, ConfigError
from dgm.train import Trainer, train_run
from dgm.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from dgm.train.loop import iwae_stage
from dgm.train.run import prepare_new_run, read_metrics

SMALL = {
    "data.train_limit": 1000,
    "data.test_limit": 500,
    "model.hidden": [64],
    "model.latent_dim": 8,
    "train.batch_size": 50,
    "train.device": "cpu",
}


def small_config(**overrides):
    return load_config(None, {**SMALL, **overrides})


def test_short_training_improves_the_test_elbo_by_a_clear_margin(tmp_path):
    config = small_config(**{"train.epochs": 4, "train.batch_size": 20})
    trainer = Trainer(config, tmp_path / "run")
    before = trainer.evaluate()["test_elbo"]
    history = trainer.fit()
    after = history[-1]["test_elbo"]
    # The decoder starts at the data's mean image (about -205 nats here); 200 steps on 1,000
    # digits must beat it by far more than the test ELBO's standard error (about 2 nats).
    assert after > before + 25, (before, after)
    assert history[-1]["train_elbo"] > history[0]["train_elbo"]


def test_output_bias_initialization_starts_at_the_data_mean(tmp_path):
    plain = Trainer(small_config(**{"model.init_output_bias": False}), tmp_path / "a")
    biased = Trainer(small_config(), tmp_path / "b")
    # Zero-ish decoder output: p = 1/2 per pixel, about -784 ln 2 = -543 nats; the data mean's
    # Bernoulli is far better.
    assert plain.evaluate()["test_elbo"] < -450
    assert biased.evaluate()["test_elbo"] > -260


@pytest.mark.parametrize("kl", ["analytic", "mc"])
def test_same_seed_same_numbers(tmp_path, kl):
    config = small_config(**{"train.epochs": 1, "objective.kl": kl})
    a = Trainer(config, tmp_path / "a").fit()
    b = Trainer(config, tmp_path / "b").fit()
    assert _numbers(a) == _numbers(b)
    c = Trainer(
        small_config(**{"train.epochs": 1, "objective.kl": kl, "train.seed": 1}), tmp_path / "c"
    )
    assert _numbers(c.fit()) != _numbers(a)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


#: what a metrics row records of how the epoch computed, not what it computed
HOW = {"threads", "compiled", "device"}


def _numbers(rows):
    return [
        {k: v for k, v in r.items() if "time" not in k and "_per_s" not in k and k not in HOW}
        for r in rows
    ]


def test_kl_warmup_rises_linearly_over_epochs_or_steps():
    """beta = min(1, step / W): W = kl_warmup_epochs times the steps per epoch, or
    kl_warmup_steps; giving both is refused in one line naming them."""
    epochs = Trainer(small_config(**{"objective.kl_warmup_epochs": 2}), "unused")
    assert len(epochs.batches) == 20  # 1,000 images in batches of 50
    assert [epochs.kl_weight(s) for s in (0, 10, 20, 40, 60)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    steps = Trainer(small_config(**{"objective.kl_warmup_steps": 8}), "unused")
    assert [steps.kl_weight(s) for s in (0, 2, 4, 8, 100)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert Trainer(small_config(), "unused").kl_weight(0) == 1.0  # no warm-up
    with pytest.raises(ConfigError, match="kl_warmup_epochs and kl_warmup_steps"):
        small_config(**{"objective.kl_warmup_epochs": 1, "objective.kl_warmup_steps": 5})


def test_learning_rate_schedules():
    constant = Trainer(small_config(**{"train.epochs": 5}), "unused")
    assert [constant.learning_rate(e) for e in range(5)] == [1e-3] * 5
    decay = small_config(
        **{"train.epochs": 5, "train.lr_schedule": "exponential", "train.lr_final": 1e-5}
    )
    lrs = [Trainer(decay, "unused").learning_rate(e) for e in range(5)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-5)
    ratios = [b / a for a, b in zip(lrs, lrs[1:], strict=False)]
    assert ratios == pytest.approx([10 ** (-0.5)] * 4)


def test_iwae_schedule_is_the_papers_stairs():
    """3,280 epochs: 3^i passes at 1e-3 * 10^(-i/7); fewer epochs keep the proportions."""
    full = Trainer(small_config(**{"train.epochs": 3280, "train.lr_schedule": "iwae"}), "unused")
    lrs = [full.learning_rate(e) for e in range(3280)]
    stages = [lrs.count(1e-3 * 10 ** (-i / 7)) for i in range(8)]
    assert stages == [3**i for i in range(8)]
    assert lrs == sorted(lrs, reverse=True)
    short = Trainer(small_config(**{"train.epochs": 328, "train.lr_schedule": "iwae"}), "unused")
    # a tenth of the epochs: stage 7 starts at epoch 109.3 (1093 / 10), within an epoch
    assert iwae_stage(109.2, 328) == 6 and iwae_stage(109.4, 328) == 7
    assert short.learning_rate(109.4) == pytest.approx(1e-3 * 10 ** (-1))


def test_resume_gives_the_numbers_of_an_uninterrupted_run(tmp_path):
    schedule = {"train.lr_schedule": "exponential", "train.lr_final": 3e-4}
    config = small_config(**{"train.epochs": 4, "objective.k": 2, **schedule})
    straight_dir = tmp_path / "straight"
    prepare_new_run(config, straight_dir)
    straight = train_run(config, straight_dir)

    interrupted_dir = tmp_path / "interrupted"
    prepare_new_run(config, interrupted_dir)

    class Crash(Exception):
        pass

    def crash_after_two(metrics):
        if metrics["epoch"] == 2:
            raise Crash

    with pytest.raises(Crash):
        train_run(config, interrupted_dir, on_epoch=crash_after_two)
    # The crash lost epoch 2's metrics line (written after its checkpoint) and left a torn
    # line: resume drops the torn line and restores epoch 2's line from the checkpoint.
    lines = (interrupted_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    (interrupted_dir / "metrics.jsonl").write_text(lines[0] + "\n" + '{"epoch": 2, "trunc')
    resumed = train_run(config, interrupted_dir, resume=True)

    assert resumed.epoch == straight.epoch == 4 and resumed.step == straight.step
    assert _numbers(read_metrics(interrupted_dir)) == _numbers(read_metrics(straight_dir))
    assert same_weights(straight.model, resumed.model)
    assert same_weights(straight.posterior, resumed.posterior)


def test_checkpoint_round_trip_and_keep(tmp_path):
    config = small_config(**{"train.epochs": 5, "train.keep_checkpoints": 2})
    trainer = Trainer(config, tmp_path / "run")
    trainer.fit()
    kept = list_checkpoints(trainer.checkpoint_dir)
    assert [p.name for p in kept] == ["epoch-0004", "epoch-0005"]
    assert not list(trainer.checkpoint_dir.glob(".*"))  # no temporary leftovers
    ckpt = load_checkpoint(latest_checkpoint(trainer.checkpoint_dir))
    assert ckpt.epoch == 5 and ckpt.step == trainer.step
    fresh = Trainer(config, tmp_path / "run")
    fresh.restore()
    assert same_weights(trainer.model, fresh.model)
    assert same_weights(trainer.posterior, fresh.posterior)
    # Adam's moments survived.
    state_a, state_b = trainer.optimizer.state_dict(), fresh.optimizer.state_dict()
    for i in state_a["state"]:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(state_a["state"][i][key], state_b["state"][i][key])


def test_checkpoint_of_another_model_is_refused(tmp_path):
    trainer = Trainer(small_config(**{"train.epochs": 1}), tmp_path / "run")
    trainer.fit()
    other = Trainer(small_config(**{"model.latent_dim": 4}), tmp_path / "run")
    with pytest.raises(CheckpointError, match="'model.latent_dim' is 4, but .* trained with 8"):
        other.restore()
    # Tampered tensors file: refused with the file's name, nothing unpickled.
    path = latest_checkpoint(trainer.checkpoint_dir)
    (path / "tensors.safetensors").write_bytes(b"\x80\x04\x95 not a safetensors file")
    with pytest.raises(CheckpointError, match="tensors.safetensors"):
        Trainer(small_config(**{"train.epochs": 1}), tmp_path / "run").restore()


def test_run_writes_metrics_config_and_pictures(tmp_path):
    config = small_config(**{"train.epochs": 2})
    run_dir = tmp_path / "run"
    prepare_new_run(config, run_dir)
    train_run(config, run_dir)
    rows = read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"train_elbo", "test_elbo", "test_kl", "images_per_s"} <= set(rows[0])
    # how each epoch computed, since resume may change it (dgm.config.RUNTIME_KEYS)
    assert rows[0]["threads"] == torch.get_num_threads()
    assert (rows[0]["compiled"], rows[0]["device"]) == (False, "cpu")
    assert json.loads((run_dir / "config.json").read_text())["model"]["latent_dim"] == 8
    from PIL import Image

    for name in ("samples.png", "train_vs_generated.png", "reconstructions.png", "curves.png"):
        with Image.open(run_dir / name) as img:
            assert img.width > 50 and img.height > 50


def test_autoencoder_baseline_trains_on_reconstruction(tmp_path):
    config = small_config(**{"train.epochs": 4, "train.batch_size": 20, "model.kind": "ae"})
    trainer = Trainer(config, tmp_path / "run")
    before = trainer.evaluate()
    history = trainer.fit()
    assert "test_elbo" not in history[-1]
    assert history[-1]["test_kl"] == 0.0
    # Starts at the data's mean image (about -200 nats); reconstruction alone improves fast.
    assert history[-1]["test_recon"] > before["test_recon"] + 40


def test_train_or_resume_starts_continues_and_refuses_another_config(tmp_path):
    """A benchmark's run: started, then continued from its checkpoint to the same numbers as an
    uninterrupted run; a finished run is left alone; a different config is refused."""
    from dgm.errors import UsageError
    from dgm.train.run import train_or_resume

    config = small_config(**{"train.epochs": 2})
    straight, _ = train_or_resume(config, tmp_path / "straight")

    class Stop(Exception):
        pass

    def stop_after_one(m):
        raise Stop

    with pytest.raises(Stop):
        train_or_resume(config, tmp_path / "split", on_epoch=stop_after_one)
    split, stopped = train_or_resume(config, tmp_path / "split")
    assert stopped is None and _numbers(split) == _numbers(straight)
    before = (tmp_path / "split" / "metrics.jsonl").read_bytes()
    again, _ = train_or_resume(config, tmp_path / "split")  # finished: nothing to do
    assert (tmp_path / "split" / "metrics.jsonl").read_bytes() == before and len(again) == 2
    other = small_config(**{"train.epochs": 2, "train.lr": 5e-4})
    with pytest.raises(UsageError, match="another configuration"):
        train_or_resume(other, tmp_path / "split")
    assert (tmp_path / "split" / "metrics.jsonl").read_bytes() == before


def _step_loss_and_grads(trainer, x):
    """One train_step on x: its loss, its gradients, and the dtypes the first layer saw."""
    seen = []
    first = next(m for m in trainer.posterior.modules() if isinstance(m, torch.nn.Linear))
    hook = first.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    torch.manual_seed(3)  # the same eps for both precisions
    est = trainer.train_step(x, torch.arange(x.shape[0]))
    hook.remove()
    grads = [p.grad.clone() for p in trainer.global_parameters if p.grad is not None]
    return est, grads, seen


def test_bfloat16_step_is_the_float32_step_to_bfloat16_precision(tmp_path):
    """With train.precision = bfloat16 the networks compute in bfloat16, every distribution and
    the logged bound stay float32, and the loss and gradient agree with float32's to
    bfloat16's precision (8 bits)."""
    x = Trainer(small_config(), tmp_path / "data").data.x_test[:50]
    t16 = Trainer(small_config(**{"train.precision": "bfloat16"}), tmp_path / "a")
    t32 = Trainer(small_config(), tmp_path / "b")  # the same seed: the same initial weights
    est16, g16, seen16 = _step_loss_and_grads(t16, x)
    est32, g32, seen32 = _step_loss_and_grads(t32, x)
    assert seen16 == [torch.bfloat16] and seen32 == [torch.float32]
    assert est16.bound.dtype == est16.kl.dtype == est16.log_lik.dtype == torch.float32
    bound16, bound32 = est16.bound.mean().item(), est32.bound.mean().item()
    assert bound16 != bound32  # bfloat16 did change the arithmetic
    assert abs(bound16 - bound32) < 0.01 * abs(bound32)
    flat16, flat32 = torch.cat([g.flatten() for g in g16]), torch.cat([g.flatten() for g in g32])
    assert torch.nn.functional.cosine_similarity(flat16, flat32, dim=0) > 0.99
    assert (flat16 - flat32).norm() < 0.1 * flat32.norm()


def test_bfloat16_training_learns_as_float32_does_and_is_refused_with_a_flow(tmp_path):
    settings = {"train.epochs": 4, "train.batch_size": 20}
    trainer = Trainer(small_config(**settings, **{"train.precision": "bfloat16"}), tmp_path / "a")
    before = trainer.evaluate()["test_elbo"]
    after = trainer.fit()[-1]["test_elbo"]
    assert after > before + 25, (before, after)  # as test_short_training_improves_...
    reference = Trainer(small_config(**settings), tmp_path / "b").fit()[-1]["test_elbo"]
    assert abs(after - reference) < 5, (after, reference)  # the same seed, data and steps
    with pytest.raises(Exception, match="train.precision = 'bfloat16'"):
        small_config(**{"train.precision": "bfloat16", "model.posterior": "planar:2"})


def test_the_forward_that_ddp_and_compile_wrap_returns_the_estimators_fields(tmp_path):
    """The training forward of several processes (and of train.compile) is the estimator
    wrapped as one module; its outputs must land in the right fields: with the score-function
    estimator the surrogate has the bound's values but carries the estimator's gradient."""
    from dgm.estimators import Estimate
    from dgm.methods.objective import Objective

    trainer = Trainer(small_config(**{"objective.estimator": "score"}), tmp_path / "run")
    x, index = trainer.data.x_test[:20], torch.arange(20)
    encoder = list(trainer.posterior.parameters())

    def grad(t):  # of the batch mean, to the encoder
        return torch.cat([g.flatten() for g in torch.autograd.grad(t.mean(), encoder)])

    torch.manual_seed(0)
    ref = trainer.estimator(trainer.model, trainer.posterior(x, index), x, 1.0)
    torch.manual_seed(0)
    wrapped = Objective(trainer.model, trainer.posterior, trainer.estimator)
    out = Estimate(*wrapped(x, index, 1.0))
    for name in ("bound", "surrogate", "log_lik", "kl"):
        assert torch.equal(getattr(out, name), getattr(ref, name)), name
    ref_grad = grad(ref.surrogate)  # the bound has the same values and no such gradient
    assert ref_grad.abs().sum() > 0 and not ref.bound.requires_grad
    assert torch.equal(grad(out.surrogate), ref_grad)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("extra", [{}, {"objective.free_bits": 0.5}], ids=["plain", "free-bits"])
def test_a_compiled_forward_is_the_eager_step(tmp_path, monkeypatch, request, extra):
    """train.compile = true where the whole step cannot be compiled (dgm.methods.compiled.supports
    says no; here patched so): torch.compile (inductor) of the training forward gives the eager
    step's bound and gradients to float32 rounding (inductor's own random numbers switched to
    torch's, so that both draw the same eps), in one graph: no graph break; with free bits too
    (their per-unit KL once went through torch's KL dispatch, a graph break)."""
    import torch._inductor.config
    from torch._dynamo.utils import counters

    monkeypatch.setattr("dgm.methods.variational.whole_step_supported", lambda *args: False)

    # config.patch, not monkeypatch: inductor's config module undoes a setattr by deleting
    patch = torch._inductor.config.patch(fallback_random=True)
    patch.__enter__()
    request.addfinalizer(lambda: patch.__exit__(None, None, None))
    # as in a fresh process: torch's KL dispatch is a graph break until memoized by a call
    monkeypatch.setattr(torch.distributions.kl, "_KL_MEMOIZE", {})
    counters.clear()
    x, index = Trainer(small_config(), tmp_path / "data").data.x_test[:50], torch.arange(50)
    runs = {}
    for name, compile_ in (("compiled", True), ("eager", False)):
        trainer = Trainer(small_config(**{"train.compile": compile_, **extra}), tmp_path / name)
        assert (
            isinstance(trainer.method.forward, torch._dynamo.eval_frame.OptimizedModule) == compile_
        )
        torch.manual_seed(3)
        est = trainer.train_step(x, index)
        grads = [p.grad.clone() for p in trainer.global_parameters if p.grad is not None]
        runs[name] = (est, grads)
    (eager, g_eager), (compiled, g_compiled) = runs["eager"], runs["compiled"]
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    torch.testing.assert_close(compiled.bound, eager.bound, rtol=1e-5, atol=1e-4)
    assert len(g_eager) == len(g_compiled) > 0
    for a, b in zip(g_compiled, g_eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _adam_state(trainer):
    return [trainer.optimizer.state[p] for p in trainer.global_parameters]


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"objective.free_bits": 0.5, "objective.kl_warmup_steps": 10},
        {"objective.estimator": "stl", "objective.kl": "mc"},
        {
            "objective.bound": "iwae",
            "objective.k": 5,
            "objective.estimator": "dreg",
            "objective.kl": "mc",
            "objective.kl_warmup_steps": 10,
        },
        {"model.posterior": "iaf:2"},
    ],
    ids=["plain", "free-bits-warm-up", "stl", "dreg-iwae-warm-up", "iaf"],
)
def test_the_whole_compiled_step_is_the_eager_step_and_adam(tmp_path, request, extra):
    """train.compile = true with a pathwise estimator: forward, gradient and check are one
    compiled graph (dgm.methods.compiled) before the fused Adam kernel, and three steps of it leave
    the parameters and Adam's moments and counters where the eager step leaves them, to
    float32 rounding (inductor's random numbers switched to torch's); one graph, no break and
    no recompilation, though the KL weight changes every step under warm-up."""
    import torch._inductor.config
    from torch._dynamo.utils import counters

    patch = torch._inductor.config.patch(fallback_random=True)
    patch.__enter__()
    request.addfinalizer(lambda: patch.__exit__(None, None, None))
    counters.clear()
    x = Trainer(small_config(), tmp_path / "data").data.x_train[:60]
    runs = {}
    for name, compile_ in (("compiled", True), ("eager", False)):
        trainer = Trainer(small_config(**{"train.compile": compile_, **extra}), tmp_path / name)
        assert (trainer.method.whole_step is not None) == compile_
        torch.manual_seed(3)
        bounds = [trainer.train_step(x[i : i + 20], torch.arange(20)).bound for i in (0, 20, 40)]
        runs[name] = (bounds, trainer)
    (b_eager, eager), (b_compiled, compiled) = runs["eager"], runs["compiled"]
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    assert compiled.step == eager.step == 3
    for a, b in zip(b_compiled, b_eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    # Adam's step m / (sqrt(v) + eps) of a gradient near zero magnifies its rounding: the
    # parameters agree to a small fraction of one step (lr) everywhere, and almost exactly
    # almost everywhere (the update itself is checked exactly in float64 below)
    lr = eager.config.train.lr
    pairs = zip(compiled.global_parameters, eager.global_parameters, strict=True)
    diffs = torch.cat([(p - q).abs().flatten() for p, q in pairs])
    assert diffs.max() < 0.5 * lr and (diffs < 1e-3 * lr).float().mean() > 0.999
    for s, t in zip(_adam_state(compiled), _adam_state(eager), strict=True):
        assert s.keys() == t.keys() and s["step"].dtype == t["step"].dtype
        assert float(s["step"]) == float(t["step"]) == 3.0
        torch.testing.assert_close(s["exp_avg"], t["exp_avg"], rtol=1e-3, atol=1e-6)
        torch.testing.assert_close(s["exp_avg_sq"], t["exp_avg_sq"], rtol=1e-3, atol=1e-9)


def test_the_whole_steps_update_is_torchs_adam_in_float64(tmp_path):
    """The whole step's gradient and update (its function run uncompiled, in float64) are
    torch.optim.Adam's (the per-tensor reference implementation) on autograd's gradient of the
    same surrogate with the same noise, over three steps: parameters and moments to 1e-9
    relative."""
    import copy

    from dgm.methods.compiled import CompiledStep
    from dgm.methods.objective import Objective
    from dgm.methods.optim import FusedAdam

    trainer = Trainer(small_config(), tmp_path / "run")
    objective = Objective(trainer.model, trainer.posterior, trainer.estimator).double()
    reference = copy.deepcopy(objective)
    hyper = {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6}
    optimizer = FusedAdam(objective.parameters(), **hyper)
    ref_optimizer = torch.optim.Adam(reference.parameters(), foreach=False, **hyper)
    step = CompiledStep(objective, list(objective.parameters()), optimizer, compile=False)
    x, index = trainer.data.x_train[:60].double(), torch.arange(20)
    start = [p.detach().clone() for p in objective.parameters()]
    for i in range(3):
        torch.manual_seed(i)
        bound, *_ = step(x[20 * i : 20 * i + 20], index, 1.0)
        torch.manual_seed(i)
        ref_bound, surrogate, *_ = reference(x[20 * i : 20 * i + 20], index, 1.0)
        ref_optimizer.zero_grad()
        (-surrogate.mean()).backward()
        ref_optimizer.step()
        torch.testing.assert_close(bound, ref_bound.detach(), rtol=1e-12, atol=1e-10)
    for p, q, p0 in zip(objective.parameters(), reference.parameters(), start, strict=True):
        assert (q - p0).abs().max() > 1e-3  # every tensor moved: the comparison is not empty
        torch.testing.assert_close(p - p0, q - p0, rtol=1e-9, atol=1e-12)
        s, t = optimizer.state[p], ref_optimizer.state[q]
        assert float(s["step"]) == float(t["step"]) == 3.0
        torch.testing.assert_close(s["exp_avg"], t["exp_avg"], rtol=1e-9, atol=1e-15)
        torch.testing.assert_close(s["exp_avg_sq"], t["exp_avg_sq"], rtol=1e-9, atol=1e-18)


def test_the_whole_step_skips_a_non_finite_update_on_the_device(tmp_path):
    """A NaN in the batch makes the loss non-finite: the (uncompiled, same function) whole step
    leaves parameters, moments and counters as they were, and the trainer records the skipped
    step and the term at fault, as the eager path does; the next good step goes on."""
    from dgm.methods.compiled import CompiledStep

    trainer = Trainer(small_config(**{"train.compile": True}), tmp_path / "run")
    trainer.method.whole_step = CompiledStep(
        trainer.method.forward, trainer.global_parameters, trainer.optimizer, compile=False
    )
    x = trainer.data.x_train[:20].clone()
    assert trainer.train_step(x, torch.arange(20)) is not None
    before = [p.detach().clone() for p in trainer.global_parameters]
    moments = [s["exp_avg_sq"].clone() for s in _adam_state(trainer)]
    x[3, 5] = float("nan")
    assert trainer.train_step(x, torch.arange(20)) is None
    assert trainer.bad_steps == 1 and trainer.last_fault == (
        1,
        "expected log-likelihood E_q[log p(x|z)]",
    )
    for p, q in zip(trainer.global_parameters, before, strict=True):
        assert torch.equal(p, q) and p.grad is None  # the bad gradients are not kept
    for s, m in zip(_adam_state(trainer), moments, strict=True):
        assert torch.equal(s["exp_avg_sq"], m) and float(s["step"]) == 1.0
    x[3, 5] = 0.0
    assert trainer.train_step(x, torch.arange(20)) is not None and trainer.bad_steps == 0
    assert float(_adam_state(trainer)[0]["step"]) == 2.0


def test_a_generator_state_from_another_device_type_seeds_the_generator_reproducibly():
    """A CUDA generator's state (16 bytes) cannot be set on a CPU generator (5,056 bytes), as
    when a run is resumed with another train.device: the generator is seeded from a hash of the
    state instead, the same way every time; a state of its own kind is restored exactly."""
    from dgm.train.checkpoint import set_generator_state

    cuda_like = torch.arange(16, dtype=torch.uint8)  # the size of a CUDA generator's state
    with pytest.raises(RuntimeError):
        torch.Generator().set_state(cuda_like)
    draws = []
    for _ in range(2):
        g = torch.Generator().manual_seed(123)
        set_generator_state(g, cuda_like)
        draws.append(torch.rand(5, generator=g))
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], torch.rand(5, generator=torch.Generator().manual_seed(123)))
    other = cuda_like.clone()
    other[0] = 99
    g = torch.Generator()
    set_generator_state(g, other)
    assert not torch.equal(torch.rand(5, generator=g), draws[0])  # another state, another seed
    source = torch.Generator().manual_seed(7)
    torch.rand(3, generator=source)
    g = torch.Generator()
    set_generator_state(g, source.get_state())
    assert torch.equal(torch.rand(5, generator=g), torch.rand(5, generator=source))
