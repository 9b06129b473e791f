"""The families of the lecture's last slide as plug-ins (dgm.families): each trains from the
same command line, resumes exactly after SIGKILL (even inside a checkpoint write), samples,
scores and is evaluated; bad combinations are one line; memory counts match the modules."""

import math
import signal
import time

import pytest
import torch
from safetensors.torch import load_file

import dgm
import dgm.counts as counts
import dgm.sizes as sizes
from dgm.cli import main
from dgm.config import ConfigError, validate
from dgm.families import FAMILIES, family
from dgm.train import Trainer
from dgm.train.run import read_metrics
from tests.test_reliability import _dgm, _wait_for
from tests.test_training import _numbers

DATA = ["--train-limit", "200", "--test-limit", "40", "--batch-size", "40", "--device", "cpu"]
FAMILY_ARGS = {
    "gan-mlp": [
        "--model", "gan", "--latent-dim", "4",
        "--set", "gan.architecture=mlp", "--set", "gan.hidden=[32]",
    ],
    "wgan-gp-dcgan": [
        "--model", "gan", "--latent-dim", "4", "--set", "gan.loss=wgan-gp",
        "--set", "gan.channels=4", "--set", "gan.critic_steps=2",
    ],
    "diffusion": [
        "--model", "diffusion", "--set", "diffusion.steps=10", "--set", "diffusion.channels=8",
        "--set", "diffusion.eval_examples=10", "--set", "diffusion.eval_steps=4",
        "--set", "diffusion.sampling_steps=5",
    ],
    "ebm": [
        "--model", "ebm", "--set", "ebm.channels=4", "--set", "ebm.langevin_steps=3",
        "--set", "ebm.buffer_size=100", "--set", "ebm.sampling_steps=5",
    ],
    "pcd": [
        "--model", "rbm", "--set", "rbm.hidden=12", "--set", "rbm.persistent=true",
        "--set", "rbm.chains=20", "--set", "rbm.sampling_steps=5",
    ],
}  # fmt: skip


def _final(run_dir):
    ckpt = sorted((run_dir / "checkpoints").glob("epoch-*"))[-1]
    return load_file(str(ckpt / "tensors.safetensors"))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Each family trained 3 epochs without interruption (the reference runs), in a process of
    its own like the killed ones: the same threads, so the same floating-point sums."""
    root = tmp_path_factory.mktemp("families")
    runs = {}
    for name, args in FAMILY_ARGS.items():
        out = root / name
        proc = _dgm("train", *args, *DATA, "--epochs", "3", "--out", str(out), "--quiet")
        log, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, log
        runs[name] = out
    return runs


@pytest.mark.parametrize("name", list(FAMILY_ARGS))
def test_a_family_killed_inside_a_checkpoint_write_resumes_exactly(straight, tmp_path, name):
    """SIGKILL inside epoch 2's checkpoint write, then --resume: the metrics, every tensor of
    the last checkpoint (both GAN optimizers, the RBM's persistent chains, the diffusion
    model's EMA) and the GAN's fixed-noise rows are the uninterrupted run's."""
    run_dir = tmp_path / "killed"
    args = ["train", *FAMILY_ARGS[name], *DATA, "--epochs", "3", "--out", str(run_dir), "--quiet"]
    proc = _dgm(*args, delay=0.3)
    assert _wait_for(proc, "CHECKPOINT-WRITE", count=2)
    time.sleep(0.3)  # inside the write: the torn temporary exists
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert len(read_metrics(run_dir)) < 3
    resumed = _dgm("train", "--resume", str(run_dir), "--quiet")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert _numbers(read_metrics(run_dir)) == _numbers(read_metrics(straight[name]))
    a, b = _final(run_dir), _final(straight[name])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    kind = FAMILY_ARGS[name][1]
    if kind == "gan":  # optimizer states of both networks are in the checkpoint
        assert any(k.startswith("optimizer.generator") for k in a)
        assert any(k.startswith("optimizer.discriminator") for k in a)
        rows, ref = (
            load_file(str(r / "fixed_noise.safetensors")) for r in (run_dir, straight[name])
        )
        assert sorted(rows) == ["epoch-0001", "epoch-0002", "epoch-0003"]
        assert all(torch.equal(rows[k], ref[k]) for k in ref)
    if name == "pcd":
        assert any(k.startswith("chains.") for k in a)
    if kind == "diffusion":
        assert any(k.startswith("ema.") for k in a)
    if kind == "ebm":  # the replay buffer
        assert any(k.startswith("buffer.") for k in a)


@pytest.mark.parametrize("name", list(FAMILY_ARGS))
def test_every_family_samples_scores_and_draws_its_pictures(straight, name):
    run = dgm.load_run(straight[name])
    assert run.family is family(run.kind) and run.posterior is None and not run.exact
    x = run.sample(10, seed=0)
    assert x.shape == (10, 784) and x.min() >= 0 and x.max() <= 1
    assert torch.equal(x, run.sample(10, seed=0))  # seeded
    draws = run.sample(10, seed=1, mean=False)
    if run.kind not in ("gan", "ebm"):  # binary data: the draws are binary
        assert set(draws.unique().tolist()) <= {0.0, 1.0}
    report = run.score(n=60, seed=0, subset_size=30, n_subsets=5, memorization=60)
    assert 0 <= report.model["precision"] <= 1
    for picture in ("samples.png", "train_vs_generated.png", "curves.png"):
        assert (straight[name] / picture).stat().st_size > 0
    if run.kind == "gan":
        assert (straight[name] / "progress.png").stat().st_size > 0
    with pytest.raises(dgm.errors.UsageError, match="no q"):
        run.encode(run.data.x_test[:2])


def test_the_rbm_log_likelihood_through_the_cli_stack_matches_enumeration(tmp_path, capsys):
    """A trained RBM with 10 hidden units: Run.evaluate_ais (AIS for log Z from the base-rate
    RBM) against ln p(x) = -F(x) - log Z with log Z summed over the 2^10 hidden states."""
    out = tmp_path / "rbm"
    args = ["--model", "rbm", "--set", "rbm.hidden=10", "--set", "rbm.k=3", *DATA]
    assert main(["train", *args, "--epochs", "2", "--out", str(out), "--quiet"]) == 0
    run = dgm.load_run(out)
    log_z = run.model.exact_log_partition(over="hidden").item()
    exact = (-run.model.free_energy(run.data.x_test).double() - log_z).mean().item()
    est = run.evaluate_ais(steps=2000, chains=50, seed=0)
    assert abs(est["log_z"] - log_z) < 4 * est["log_z_stderr"] + 1e-3
    assert abs(est["log_likelihood"] - exact) < 4 * est["log_z_stderr"] + 1e-3
    assert main(["eval", str(out), "--steps", "500", "--chains", "20", "--json"]) == 0
    assert '"log_likelihood"' in capsys.readouterr().out
    # with no settings given, the run's own protocol (rbm.temperatures x rbm.runs), as dgm eval
    default = run.evaluate_ais(limit=2)
    assert (default["temperatures"], default["runs"]) == (
        run.config.rbm.temperatures,
        run.config.rbm.runs,
    )


def test_a_diffusion_bound_is_reported_in_nats_and_its_estimate_is_unbiased(straight):
    """dgm eval's bound: the estimate from k stratified steps has the mean of the full sum."""
    run = dgm.load_run(straight["diffusion"])
    full = [run.evaluate(k=10, limit=8, seed=s)["elbo"] for s in range(30)]
    part = [run.evaluate(k=3, limit=8, seed=100 + s)["elbo"] for s in range(60)]
    se = math.hypot(torch.tensor(full).std() / 30**0.5, torch.tensor(part).std() / 60**0.5)
    assert abs(sum(full) / 30 - sum(part) / 60) < 4 * float(se)
    summary = run.evaluate(k=10, limit=8)
    assert summary["time_steps"] == summary["steps"] == 10 and summary["elbo"] < 0


def test_a_gan_is_evaluated_by_ais_under_its_observation_model(straight):
    """Wu et al. 2017: AIS over z with p(x | z) = N(G(z), sigma^2 I); a larger sigma spreads
    the density over more of the space, so the estimates differ, and both are finite."""
    run = dgm.load_run(straight["gan-mlp"])
    a = run.evaluate_ais(steps=20, chains=2, limit=4)
    b = run.evaluate_ais(steps=20, chains=2, limit=4, scale=0.2)
    assert (
        a["observation_scale"] == run.config.gan.observation_scale and b["observation_scale"] == 0.2
    )
    assert math.isfinite(a["log_likelihood"]) and math.isfinite(b["log_likelihood"])
    assert a["log_likelihood"] != b["log_likelihood"]
    with pytest.raises(dgm.errors.UsageError, match="no bound"):
        run.evaluate(k=5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model.kind": "gan", "data.binarize": "dynamic", "data.dequantize": False}, "grey"),
        ({"model.kind": "gan", "gan.loss": "wgan-gp", "gan.norm": "batch"}, "per example"),
        ({"model.kind": "rbm", "data.binarize": "none"}, "Bernoulli-Bernoulli"),
        ({"model.kind": "diffusion", "data.binarize": "none", "data.dequantize": True}, "dequant"),
        ({"model.kind": "diffusion", "train.compile": True}, "eagerly"),
        ({"model.kind": "rbm", "inference.kind": "local"}, "no q"),
        ({"model.kind": "ebm", "data.binarize": "dynamic", "data.dequantize": False}, "grey"),
        ({"model.kind": "ebm", "ebm.buffer_size": 10}, "distinct"),
    ],
)
def test_bad_family_combinations_are_one_line(overrides, message):
    data: dict = {}
    for key, value in overrides.items():
        section, name = key.split(".")
        data.setdefault(section, {})[name] = value
    with pytest.raises(ConfigError, match=message) as err:
        validate(data)
    assert "\n" not in str(err.value)


def test_family_defaults_are_the_papers_and_a_config_overrides_them():
    gan = validate({"model": {"kind": "gan"}})
    assert (gan.train.lr, gan.train.betas) == (2e-4, (0.5, 0.999))
    assert (gan.data.binarize, gan.data.dequantize) == ("none", True)
    assert validate({"model": {"kind": "gan"}, "train": {"lr": 1e-3}}).train.lr == 1e-3
    assert validate({"model": {"kind": "rbm"}}).train.lr == 0.05
    assert validate({"model": {"kind": "diffusion"}}).train.lr == 2e-4
    assert validate({}).train.lr == 1e-3  # the VAE's is untouched


@pytest.mark.parametrize(
    "config",
    [
        {"model": {"kind": "gan"}},
        {"model": {"kind": "gan"}, "gan": {"architecture": "mlp", "loss": "wgan-gp"}},
        {"model": {"kind": "diffusion"}},
        {"model": {"kind": "diffusion"}, "diffusion": {"ema": None, "channels": 16}},
        {"model": {"kind": "rbm"}, "rbm": {"persistent": True}},
        {"model": {"kind": "ebm"}, "ebm": {"buffer_size": 100}},
    ],
)
def test_memory_counts_are_the_built_modules_parameters(config):
    cfg = validate({**config, "data": {**config.get("data", {}), "train_limit": 100}})
    counted = sum(p.parameters for p in counts.networks(cfg, 784, 100))
    trainer = Trainer(cfg, "unused")
    modules = trainer.method.checkpoint_modules()
    built = sum(
        v.numel()
        for name, state in modules.items()
        if name not in ("chains", "buffer")
        for k, v in state.items()
        if v.is_floating_point() and "running_" not in k
    )
    assert counted == built
    assert sizes.training(cfg).total > 0


def test_every_family_is_registered_with_its_config_section():
    from dgm.config import FAMILIES as KINDS
    from dgm.config import Config

    assert set(FAMILIES) == set(KINDS)
    assert all(kind in Config.model_fields for kind in KINDS)
