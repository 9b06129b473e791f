"""The CLI end to end on a small subset, and its one-line errors."""

import json
import subprocess
import sys

import pytest

from dgm.cli import main

SMALL = [
    "--train-limit", "600", "--test-limit", "100", "--hidden", "32", "--latent-dim", "4",
    "--batch-size", "50", "--device", "cpu", "--quiet",
]  # fmt: skip


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_eval_sample_resume_end_to_end(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, out, _ = run(capsys, "train", "--epochs", "1", "--out", str(run_dir), *SMALL)
    assert code == 0 and f"run directory: {run_dir}" in out and "epoch   1" in out
    assert (run_dir / "samples.png").exists() and (run_dir / "checkpoints" / "epoch-0001").is_dir()

    code, out, _ = run(capsys, "eval", str(run_dir), "--k", "20", "--limit", "30", "--json")
    assert code == 0
    result = json.loads(out)
    assert {"elbo", "log_likelihood", "log_likelihood_stderr", "k", "n"} <= set(result)
    assert result["k"] == 20 and result["n"] == 30 and result["epoch"] == 1
    # On the same samples, mean log w <= log mean w (Jensen) for every example.
    assert result["log_likelihood"] < 0 and result["elbo"] <= result["log_likelihood"] + 1e-4
    first = (run_dir / "eval-k20-n30-seed0-epoch1.json").read_text()
    assert json.loads(first)["log_likelihood"] == result["log_likelihood"]

    code, out, _ = run(capsys, "eval", str(run_dir), "--k", "5", "--limit", "10", "--quiet")
    assert code == 0 and "test log p(x)" in out
    # the same k on other examples: another file, the first one kept as it was
    assert run(capsys, "eval", str(run_dir), "--k", "20", "--limit", "10", "--quiet")[0] == 0
    assert (run_dir / "eval-k20-n30-seed0-epoch1.json").read_text() == first
    assert json.loads((run_dir / "eval-k20-n10-seed0-epoch1.json").read_text())["n"] == 10
    # other draws (--seed): another file too
    assert run(capsys, "eval", str(run_dir), "--k", "20", "--limit", "30", "--seed", "1",
               "--quiet")[0] == 0  # fmt: skip
    assert (run_dir / "eval-k20-n30-seed0-epoch1.json").read_text() == first
    assert (run_dir / "eval-k20-n30-seed1-epoch1.json").exists()

    out_png = tmp_path / "s.png"
    code, out, _ = run(capsys, "sample", str(run_dir), "--n", "9", "--out", str(out_png))
    assert code == 0 and out_png.exists()

    code, out, _ = run(capsys, "train", "--resume", str(run_dir), "--epochs", "2", "--quiet")
    assert code == 0 and "epoch   2" in out and "epoch   1" not in out
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_config_file_and_set_overrides(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[model]\nlatent_dim = 3\nhidden = [16]\n[train]\nepochs = 1\nlr = 2e-3\n")
    run_dir = tmp_path / "run"
    code, _, _ = run(
        capsys, "train", str(cfg), "--set", "train.lr=5e-4", "--train-limit", "200",
        "--test-limit", "50", "--out", str(run_dir), "--quiet",
    )  # fmt: skip
    assert code == 0
    resolved = json.loads((run_dir / "config.json").read_text())
    assert resolved["model"]["latent_dim"] == 3 and resolved["train"]["lr"] == 5e-4


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--lr", "-1"], "train.lr"),
        (["--k", "0"], "objective.k"),
        (["--latent-dim", "0"], "model.latent_dim"),
        (["--set", "train.lrr=1"], "train.lrr': unknown key"),
        (["--set", "optimizer.lr=1"], "optimizer': unknown key"),
        (["--set", "train.epochs=abc"], "train.epochs"),
        (["--binarize", "sometimes"], "data.binarize"),
        (["--likelihood", "bernoulli", "--binarize", "none"], "needs binary data"),
        (["--hidden", "20,x"], "--hidden"),
        (["--dataset", "cifar"], "cifar"),
        (["--device", "cuda:7"], "train.device"),
    ],
)
def test_bad_configuration_is_one_clear_line(tmp_path, capsys, argv, needle):
    code, out, err = run(capsys, "train", "--out", str(tmp_path / "r"), "--quiet", *argv)
    assert code == 2
    assert err.startswith("dgm: error: ") and err.count("\n") == 1
    assert needle in err
    assert not (tmp_path / "r" / "config.json").exists()  # nothing written for a bad start


def test_invalid_toml_and_missing_file(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 1\n")
    code, _, err = run(capsys, "train", str(bad), "--quiet")
    assert code == 2 and "bad.toml: invalid TOML" in err and err.count("\n") == 1
    code, _, err = run(capsys, "train", str(tmp_path / "nope.toml"), "--quiet")
    assert code == 2 and "config file not found" in err


def test_existing_run_is_never_overwritten_without_force(tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["train", "--epochs", "1", "--out", str(run_dir), *SMALL]
    assert run(capsys, *args)[0] == 0
    before = (run_dir / "metrics.jsonl").read_bytes()
    code, _, err = run(capsys, *args)
    assert code == 2 and "already holds a run" in err and "--resume" in err
    assert (run_dir / "metrics.jsonl").read_bytes() == before
    keep = run_dir / "notes.txt"
    keep.write_text("mine")
    assert run(capsys, *args, "--force", "--seed", "3")[0] == 0
    assert (run_dir / "metrics.jsonl").read_bytes() != before
    assert keep.read_text() == "mine"  # --force removes dgm's files only


def test_resume_refuses_changes_and_missing_runs(tmp_path, capsys):
    code, _, err = run(capsys, "train", "--resume", str(tmp_path / "none"), "--quiet")
    assert code == 2 and "no such run directory" in err
    code, _, err = run(capsys, "train", "--resume", str(tmp_path), "--k", "3", "--quiet")
    assert code == 2 and "only --epochs, --lr, --compile and --device may change" in err


def test_resume_may_change_how_a_run_computes_not_what(tmp_path, capsys):
    """--device (and --compile) may change on resume: the run goes on, and its config.json
    says how it computes now; train_or_resume accepts such a config and refuses any other."""
    from dgm.config import load_run_config
    from dgm.errors import UsageError
    from dgm.train.run import train_or_resume

    run_dir = tmp_path / "run"
    assert run(capsys, "train", "--epochs", "1", "--out", str(run_dir), *SMALL)[0] == 0
    config = load_run_config(run_dir / "config.json")
    assert config.train.device == "cpu"
    args = ["train", "--resume", str(run_dir), "--epochs", "2", "--device", "auto", "--quiet"]
    assert run(capsys, *args)[0] == 0
    resumed = load_run_config(run_dir / "config.json")
    assert resumed.train.device == "auto" and resumed.train.epochs == 2
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    resumed.train.device = "cpu"
    resumed.train.compile = True
    assert resumed.train.epochs == 2  # already there: nothing to train, nothing compiled
    metrics, stopped = train_or_resume(resumed, run_dir)
    assert len(metrics) == 2 and stopped is None
    resumed.train.lr *= 2
    with pytest.raises(UsageError, match="another configuration"):
        train_or_resume(resumed, run_dir)


def test_same_run_ignores_only_the_runtime_keys():
    from dgm.config import RUNTIME_KEYS, load_config, same_run

    base = load_config(None, {})
    assert RUNTIME_KEYS == ("train.compile", "train.device")
    assert same_run(base, load_config(None, {"train.compile": True, "train.device": "cpu"}))
    for key, value in (("train.lr", 0.5), ("train.seed", 1), ("model.latent_dim", 3)):
        assert not same_run(base, load_config(None, {key: value})), key


def test_resume_epochs_must_be_possible(tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["train", "--epochs", "2", "--out", str(run_dir), *SMALL]
    assert run(capsys, *args, "--set", 'train.lr_schedule="exponential"')[0] == 0
    code, _, err = run(capsys, "train", "--resume", str(run_dir), "--epochs", "3", "--quiet")
    assert code == 2 and "schedule" in err and err.count("\n") == 1
    code, _, err = run(capsys, "train", "--resume", str(run_dir), "--epochs", "0", "--quiet")
    assert code == 2 and "expected at least 2" in err and err.count("\n") == 1


def test_unwritable_output_is_one_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run(capsys, "train", "--epochs", "1", "--out", str(run_dir), *SMALL)[0] == 0
    (tmp_path / "taken").mkdir()
    code, _, err = run(capsys, "sample", str(run_dir), "--out", str(tmp_path / "taken"))
    assert code == 2 and err.startswith("dgm: error: ") and err.count("\n") == 1
    (run_dir / "config.json").write_bytes(b"\xff\xfe not utf-8")
    code, _, err = run(capsys, "eval", str(run_dir))
    assert code == 2 and "config.json" in err and err.count("\n") == 1


def test_eval_and_sample_refuse_bad_arguments(tmp_path, capsys):
    code, _, err = run(capsys, "eval", str(tmp_path), "--k", "0")
    assert code == 2 and "--k 0" in err
    code, _, err = run(capsys, "eval", str(tmp_path))
    assert code == 2 and "config.json: not found" in err
    code, _, err = run(capsys, "sample", str(tmp_path), "--n", "0")
    assert code == 2 and "--n 0" in err


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["sample"]])
def test_help(command):
    result = subprocess.run(
        [sys.executable, "-m", "dgm", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "usage: dgm" in result.stdout


def test_switches_and_valued_flags_parse_to_their_keys():
    from dgm.cli import build_parser
    from dgm.cli.train import overrides as _overrides

    args = build_parser().parse_args(["train", "--compile", "--hidden", "8,4", "--download"])
    assert _overrides(args) == {
        "train.compile": True,
        "model.hidden": [8, 4],
        "data.download": True,
    }
    assert _overrides(build_parser().parse_args(["train"])) == {}
