"""The VB-EM commands end to end on a small subset: gradvar, gap, local inference, PPCA, GMM."""

import json
import math

import pytest

from dgm.registry import ESTIMATORS
from dgm.train.run import read_metrics
from tests.test_cli import SMALL, run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from dgm.cli import main

    run_dir = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--epochs", "2", "--out", str(run_dir), *SMALL]) == 0
    return run_dir


def test_gradvar_json_reports_every_estimator_and_k(trained, capsys):
    code, out, _ = run(
        capsys, "gradvar", str(trained), "--k", "1,4", "--repeats", "20", "--batch-size", "10",
        "--baseline-steps", "5", "--json",
    )  # fmt: skip
    assert code == 0
    summary = json.loads(out)
    records = summary["results"]
    keys = {"estimator", "k", "variance", "mean_sq_norm", "snr", "variance_ratio_to_reparam"}
    assert all(keys <= set(r) for r in records)
    seen = {(r["estimator"], r["baseline"], r["k"]) for r in records}
    assert ("reparam", None, 1) in seen and ("score", None, 4) in seen
    assert ("score-baseline", "loo", 4) in seen and ("score-baseline", "loo", 1) not in seen
    assert {("stl", "elbo", 1), ("reparam", "iwae", 4), ("dreg", "iwae", 4)} <= {
        (r["estimator"], r["bound"], r["k"]) for r in records
    }
    for r in records:
        assert r["variance"] > 0 and math.isfinite(r["snr"])
        iwae_bound = r["bound"] == "iwae"
        assert (r["snr_common"] is None) if iwae_bound else (r["snr_common"] > 0)
        if r["estimator"] == "reparam" and not iwae_bound:
            assert r["variance_ratio_to_reparam"] == 1.0
        if r["estimator"] == "reparam" and iwae_bound:
            assert r["variance_ratio_to_iwae"] == 1.0
        if r["estimator"] == "score":  # the naive estimator: far noisier, even on 10 digits
            assert r["variance_ratio_to_reparam"] > 10
    assert (trained / "gradvar.png").exists() and (trained / "gradvar.json").exists()
    code, out, _ = run(
        capsys, "gradvar", str(trained), "--epoch", "1", "--k", "1", "--repeats", "20",
        "--batch-size", "5", "--baseline-steps", "1", "--json",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["target"].endswith("(epoch 1)")
    code, _, err = run(capsys, "gradvar", str(trained), "--epoch", "7")
    assert code == 2 and "epoch-0007" in err


def test_gap_json_has_both_gaps_and_they_add_up(trained, capsys):
    code, out, _ = run(
        capsys, "gap", str(trained), "--k", "50", "--steps", "20", "--elbo-samples", "50",
        "--limit", "20", "--json",
    )  # fmt: skip
    assert code == 0
    r = json.loads(out)
    keys = {"log_likelihood", "elbo_amortized", "elbo_optimized"}
    assert keys | {"amortization_gap", "approximation_gap"} <= set(r)
    assert r["amortization_gap"] == pytest.approx(r["elbo_optimized"] - r["elbo_amortized"])
    assert r["approximation_gap"] == pytest.approx(r["log_likelihood"] - r["elbo_optimized"])
    assert r["elbo_optimized"] > r["elbo_amortized"]  # 20 steps from the encoder's q only help
    assert r["n"] == 20 and (trained / "gap.png").exists()


def test_gap_shows_each_stage_progressing_to_every_example(trained, capsys):
    code, _, err = run(
        capsys, "gap", str(trained), "--k", "10", "--steps", "5", "--elbo-samples", "10",
        "--limit", "12",
    )  # fmt: skip
    assert code == 0
    stages = ["optimizing q per example", "log p(x), k = 10", "the encoder's ELBO",
              "the optimized ELBO"]  # fmt: skip
    for stage in stages:  # a bar per stage, each reaching all 12 examples
        assert stage in err and "12/12" in err.split(stage, 1)[1].split("\n")[0].split("\r")[-1]
    code, _, err = run(capsys, "gap", str(trained), "--k", "10", "--steps", "5", "--elbo-samples",
                       "10", "--limit", "12", "--quiet")  # fmt: skip
    assert code == 0 and "12/12" not in err


def test_local_inference_and_score_estimator_from_the_cli(tmp_path, capsys):
    run_dir = tmp_path / "local"
    code, out, _ = run(
        capsys, "train", "--epochs", "1", "--inference", "local", "--inner-steps", "2",
        "--estimator", "score-baseline", "--baseline", "running", "--set",
        "inference.test_steps=5", "--out", str(run_dir), *SMALL,
    )  # fmt: skip
    assert code == 0 and "epoch   1" in out
    config = json.loads((run_dir / "config.json").read_text())
    assert config["inference"] == {**config["inference"], "kind": "local", "inner_steps": 2}
    assert config["objective"]["estimator"] == "score-baseline"
    code, out, _ = run(capsys, "eval", str(run_dir), "--k", "10", "--limit", "10", "--json")
    assert code == 0 and json.loads(out)["n"] == 10
    code, _, err = run(capsys, "gap", str(run_dir), "--limit", "5")
    assert code == 2 and "amortized" in err
    # gradvar measures the batch's rows of the local tables (lambda_n, eta_n)
    code, out, _ = run(
        capsys, "gradvar", str(run_dir), "--k", "2", "--repeats", "20", "--batch-size", "8",
        "--baseline-steps", "3", "--json",
    )  # fmt: skip
    summary = json.loads(out)
    assert code == 0 and summary["parameters"] == "per-datapoint tables"
    estimators = {r["estimator"] for r in summary["results"]}
    assert estimators == set(ESTIMATORS)  # every registered estimator is measured
    assert {("reparam", "iwae"), ("dreg", "iwae")} <= {
        (r["estimator"], r["bound"]) for r in summary["results"]
    }


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--estimator", "score", "--model", "ae"], "estimator"),
        (["--baseline", "loo", "--estimator", "score-baseline"], "k >= 2"),
        (["--inference", "nearby"], "inference.kind"),
        (["--model", "ppca", "--binarize", "dynamic"], "dequantize"),
    ],
)
def test_bad_combinations_are_one_line_usage_errors(tmp_path, capsys, argv, match):
    code, _, err = run(capsys, "train", "--out", str(tmp_path / "r"), *argv, "--quiet")
    assert code == 2 and match in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_ppca_and_gmm_report_exact_test_log_likelihoods(tmp_path, capsys):
    small = ["--train-limit", "2000", "--test-limit", "300", "--device", "cpu", "--quiet"]
    results = {}
    for name, argv in {
        "ppca": ["--model", "ppca", "--latent-dim", "5"],
        "gmm": ["--model", "gmm", "--covariance", "diag", "--components", "3"],
    }.items():
        run_dir = tmp_path / name
        code, out, _ = run(capsys, "train", *argv, "--out", str(run_dir), *small)
        assert code == 0 and "test log p(x)" in out and "bits/dim" in out
        code, out, _ = run(capsys, "eval", str(run_dir), "--json")
        results[name] = json.loads(out)
        last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
        assert results[name]["test_log_likelihood"] == pytest.approx(last["test_log_likelihood"])
        assert results[name]["exact"] and results[name]["n"] == 300
        assert (run_dir / "samples.png").exists() and (run_dir / "model.safetensors").exists()
        code, out, _ = run(
            capsys, "sample", str(run_dir), "--n", "4", "--out", str(run_dir / "s.png")
        )
        assert code == 0 and (run_dir / "s.png").exists()
    for r in results.values():
        # a density on [0, 1)^784: better than the uniform's 8 bits per dimension
        assert 0 < r["test_bits_per_dim"] < 8


@pytest.mark.parametrize("name", ["mnist_vae", "mnist_ppca", "mnist_gmm", "mnist_linear_vae",
                                  "mnist_vbem_local"])  # fmt: skip
def test_shipped_configs_validate(name):
    from pathlib import Path

    from dgm.config import load_config

    path = Path(__file__).parent.parent / "configs" / f"{name}.toml"
    config = load_config(path)
    assert config.data.dataset == "mnist"


def test_more_bad_input_is_one_line_and_leaves_nothing(trained, tmp_path, capsys):
    small = ["--train-limit", "200", "--test-limit", "20", "--device", "cpu", "--quiet"]
    for argv, match in [
        (["gradvar", str(trained), "--k", "1,x"], "--k"),
        (["gap", str(trained), "--lr", "0"], "--lr"),
        (["gradvar", "configs/mnist_vae.toml", "--epoch", "3"], "--epoch"),
        (["train", "--model", "ppca", "--latent-dim", "784", "--out", str(tmp_path / "p"), *small],
         "model.latent_dim"),
        (["train", "--model", "gmm", "--components", "300", "--out", str(tmp_path / "g"), *small],
         "model.components"),
    ]:  # fmt: skip
        code, _, err = run(capsys, *argv)
        assert code == 2 and match in err and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "p").exists() and not (tmp_path / "g").exists()
    # a classical run has no encoder; a single test example has no standard error
    run_dir = tmp_path / "one"
    code, out, _ = run(
        capsys, "train", "--model", "ppca", "--latent-dim", "3", "--out", str(run_dir),
        "--train-limit", "300", "--test-limit", "1", "--device", "cpu", "--quiet",
    )  # fmt: skip
    assert code == 0 and "no standard error" in out
    code, _, err = run(capsys, "gap", str(run_dir))
    assert code == 2 and "ppca" in err
    before = (run_dir / "metrics.jsonl").read_bytes()
    code, _, err = run(capsys, "train", "--resume", str(run_dir), "--quiet")
    assert code == 2 and "nothing to resume" in err
    assert (run_dir / "metrics.jsonl").read_bytes() == before  # the fit is untouched
    code, out, _ = run(capsys, "eval", str(trained), "--k", "5", "--limit", "1", "--quiet")
    assert code == 0 and "no standard error" in out


def test_iwae_flows_and_two_layers_from_the_cli(tmp_path, capsys):
    """--objective iwae with a flow posterior, and a two-layer DReG run, train, resume and
    evaluate from the CLI (active units per layer); gradvar and gap, which measure a one-layer
    diagonal Gaussian, refuse them in one line."""
    small = ["--train-limit", "200", "--test-limit", "20", "--device", "cpu", "--quiet"]
    flow = tmp_path / "flow"
    code, out, _ = run(
        capsys, "train", "--posterior", "sylvester:2", "--objective", "iwae", "--k", "3",
        "--epochs", "1", "--out", str(flow), *small,
    )  # fmt: skip
    assert code == 0 and "test_iwae" in out
    code, out, _ = run(capsys, "eval", str(flow), "--k", "20", "--json")
    summary = json.loads(out)
    assert code == 0 and summary["latent_units"] == 50 and summary["log_likelihood"] < 0
    two = tmp_path / "two"
    code, _, _ = run(
        capsys, "train", "--objective", "iwae", "--estimator", "dreg", "--k", "2", "--latent-dim",
        "8", "--set", "model.upper=[{latent_dim = 4, hidden = [16]}]", "--epochs", "1",
        "--out", str(two), *small,
    )  # fmt: skip
    assert code == 0
    code, _, _ = run(capsys, "train", "--resume", str(two), "--epochs", "2", "--quiet")
    assert code == 0 and len(read_metrics(two)) == 2
    code, out, _ = run(capsys, "eval", str(two), "--k", "10", "--json")
    assert code == 0 and len(json.loads(out)["active_units_per_layer"]) == 2
    for argv, match in [
        (["gradvar", str(flow), "--k", "1"], "posterior 'sylvester:2'"),
        (["gap", str(two)], "2 stochastic layers"),
    ]:
        code, _, err = run(capsys, *argv)
        assert code == 2 and match in err and err.count("\n") == 1, (argv, err)
