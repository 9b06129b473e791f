"""The public Python API: README's example as written, and a run made by ``dgm train`` loaded,
evaluated and sampled from Python."""

import re
from pathlib import Path

import pytest
import torch

import dgm
from dgm.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example() -> str:
    """The first ```python block of README.md."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert blocks, "README.md has no python example"
    return blocks[0]


def test_the_readme_example_trains_an_epoch_and_its_numbers_are_bounds(capsys):
    """README's code runs as written: one epoch on MNIST, then log p(x) by importance sampling,
    which is above the ELBO (same draws: log mean w >= mean log w) and far above the untrained
    model's (about -544 nats per image under the data's mean, init_output_bias off)."""
    code = readme_example()
    namespace: dict = {}
    torch.manual_seed(0)
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102
    summary = (
        namespace["dgm"]
        .importance_log_likelihood(
            namespace["model"], namespace["posterior"], namespace["data"].x_test[:200], k=20
        )
        .summary()
    )
    printed = capsys.readouterr().out
    assert "log_likelihood" in printed
    assert summary["log_likelihood"] >= summary["elbo"]
    assert -130 < summary["log_likelihood"] < -80  # after one epoch of a 784-400-20 VAE


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("api") / "run"
    argv = ["train", "--epochs", "1", "--train-limit", "2000", "--test-limit", "200", "--quiet"]
    assert main([*argv, "--latent-dim", "8", "--hidden", "64", "--out", str(run_dir)]) == 0
    return run_dir


def test_load_run_from_a_str_path_evaluates_and_samples(cli_run):
    run = dgm.load_run(str(cli_run))
    assert isinstance(run, dgm.Run) and run.epoch == 1 and run.kind == "vae"
    assert not hasattr(run, "optimizer")
    result = run.evaluate(k=100)
    assert result["n"] == 200 and result["k"] == 100
    assert result["log_likelihood"] >= result["elbo"]  # the IWAE bound above the ELBO
    # the ELBO estimate agrees with the training loop's test ELBO (same model and test set),
    # within 4 standard errors of the difference of two Monte Carlo estimates
    test_elbo = run.metrics[-1]["test_elbo"]
    assert abs(result["elbo"] - test_elbo) < 4 * result["elbo_stderr"] + 1.0
    images = run.sample(16, seed=0)
    assert images.shape == (16, 784) and images.min() >= 0 and images.max() <= 1
    assert torch.equal(images, run.sample(16, seed=0))  # a seed fixes the draws


def test_encode_decode_reconstruct_and_the_labels(cli_run):
    run = dgm.load_run(Path(cli_run))
    x = run.data.x_test[:5]
    q = run.encode(x)
    assert isinstance(q, torch.distributions.Distribution) and q.event_shape == (8,)
    p = run.decode(q.mean)
    assert p.event_shape == (784,)
    assert torch.allclose(run.reconstruct(x), p.mean)
    assert run.data.test_labels is not None and run.data.test_labels.shape == (200,)
    assert run.data.test_labels[:3].tolist() == [7, 2, 1]  # MNIST's first test digits


def test_data_from_arrays_trains_with_fit(tmp_path):
    torch.manual_seed(0)
    train = (torch.rand(300, 6, 6) < 0.3).float()
    test = (torch.rand(50, 6, 6) < 0.3).float()
    data = dgm.Data.from_arrays(train, test, test_labels=torch.zeros(50, dtype=torch.long))
    assert data.image_shape == (6, 6) and data.x_train.shape == (300, 36)
    config = {
        "model": {"latent_dim": 2, "hidden": [16]},
        "train": {"epochs": 2, "batch_size": 50},
    }
    run = dgm.fit(config, data=data, out=tmp_path / "arrays")
    assert run.epoch == 2 and len(run.metrics) == 2
    assert run.sample(4).shape == (4, 36)
    with pytest.raises(dgm.DataError, match="expected the same"):
        dgm.Data.from_arrays(train, torch.zeros(5, 7, 7))
    with pytest.raises(dgm.DataError, match="floats in"):
        dgm.Data.from_arrays(train * 2, test)


def test_eval_by_ais_and_bdmc_from_the_cli(cli_run, capsys):
    """``dgm eval --method ais`` gives a finite lower bound per test image with its error and
    HMC's acceptance; ``--method bdmc`` brackets simulated data (lower below upper)."""
    import json

    argv = ["eval", str(cli_run), "--steps", "30", "--chains", "2", "--json"]
    assert main([*argv, "--method", "ais", "--limit", "20"]) == 0
    ais = json.loads(capsys.readouterr().out)
    assert ais["n"] == 20 and ais["method"] == "ais" and ais["steps"] == 30
    assert -300 < ais["log_likelihood"] < 0 and 0 < ais["acceptance"] <= 1
    assert (cli_run / f"eval-ais-t30-c2-n20-seed0-epoch{ais['epoch']}.json").exists()
    assert main([*argv, "--method", "bdmc", "--n", "10"]) == 0
    bd = json.loads(capsys.readouterr().out)
    assert bd["n"] == 10 and bd["gap"] > -4 * bd["gap_stderr"]


def test_score_from_the_cli_writes_every_key_and_a_picture(cli_run, capsys, tmp_path):
    """``dgm score`` writes score-nN-seedS-epochE.json with the model's metrics and floor and
    ceiling objects of the same keys, and its picture; real images (the floor) beat
    independent pixels (the ceiling)."""
    import json

    assert main(["score", str(cli_run), "--n", "200", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    keys = {"fid", "kid", "kid_stderr", "precision", "recall", "c2st_accuracy", "label_entropy"}
    assert keys <= set(summary) and summary["n"] == 200 and summary["samples"] == "draws"
    for row in (summary, summary["floor"], summary["ceiling"]):
        assert keys | {"label_histogram", "nearest_train_distance"} <= set(row)
        assert abs(sum(row["label_histogram"]) - 1) < 1e-9
    assert summary["floor"]["fid"] < 0.2 * summary["ceiling"]["fid"]
    assert summary["floor"]["recall"] > 0.5 > summary["ceiling"]["recall"]
    name = f"score-n200-seed0-epoch{summary['epoch']}"  # another --n or seed: another file
    assert json.loads((cli_run / f"{name}.json").read_text()) == summary
    assert (cli_run / f"{name}.png").stat().st_size > 0
    assert main(["score", str(cli_run), "--n", "1"]) == 2  # refused in one line
    assert "--n 1" in capsys.readouterr().err


def test_score_of_an_exact_model(tmp_path):
    """PPCA samples are scored too (the means of p(x | z) against the grey test images)."""
    run_dir = tmp_path / "ppca"
    argv = ["train", "--model", "ppca", "--train-limit", "2000", "--test-limit", "200"]
    assert main([*argv, "--latent-dim", "8", "--out", str(run_dir), "--quiet"]) == 0
    result = dgm.load_run(run_dir).score(200, mean=True)
    assert result.samples.shape == (32, 784) and result.nearest.shape == (32, 784)
    assert result.model["fid"] > result.floor["fid"]
