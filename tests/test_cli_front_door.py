"""What a new user meets first: --version, a typo'd key, and dgm sample's output file."""

import pytest

import dgm
from dgm.cli import main
from tests.test_cli import SMALL, run


def test_version_prints_the_package_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"dgm {dgm.__version__}"


@pytest.mark.parametrize(
    ("key", "suggestion"),
    [("train.lrr", "train.lr"), ("trian.lr", "train"), ("model.latnet_dim", "model.latent_dim")],
)
def test_a_typo_in_a_key_gets_a_suggestion(capsys, key, suggestion):
    code, _, err = run(capsys, "train", "--set", f"{key}=1", "--epochs", "1")
    assert code == 2 and f"did you mean '{suggestion}'?" in err and err.count("\n") == 1


def test_a_key_far_from_any_gets_no_suggestion(capsys):
    code, _, err = run(capsys, "train", "--set", "train.zzzzqqq=1")
    assert code == 2 and "unknown key" in err and "did you mean" not in err


def test_sample_writes_png_only_and_never_over_the_runs_own_picture(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert run(capsys, "train", "--epochs", "1", "--out", str(run_dir), *SMALL)[0] == 0
    own = (run_dir / "samples.png").read_bytes()
    code, out, _ = run(capsys, "sample", str(run_dir), "--n", "4", "--seed", "3")
    assert code == 0 and out.strip() == str(run_dir / "samples-n4-seed3.png")
    assert (run_dir / "samples.png").read_bytes() == own
    assert (run_dir / "samples-n4-seed3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _, err = run(capsys, "sample", str(run_dir), "--out", str(tmp_path / "s.jpg"))
    assert code == 2 and ".png" in err and not (tmp_path / "s.jpg").exists()
    code, _, err = run(capsys, "sample", str(run_dir), "--out", str(tmp_path))
    assert code == 2 and "a directory" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary left behind


def test_names_mean_one_thing(tmp_path, capsys):
    """The reconstruction term E_q[ln p(x | z)] is `recon` in the metrics, never `log_lik`; an
    exact model's `dgm eval --json` gives ln p(x) as `log_likelihood`, like every other model."""
    import json

    run_dir = tmp_path / "vae"
    assert run(capsys, "train", "--epochs", "1", "--out", str(run_dir), *SMALL)[0] == 0
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"train_recon", "test_recon"} <= set(row)
    assert not any("log_lik" in key for key in row)
    ppca = tmp_path / "ppca"
    args = ["--model", "ppca", "--latent-dim", "2", "--train-limit", "300", "--test-limit", "50"]
    assert run(capsys, "train", *args, "--out", str(ppca))[0] == 0
    code, out, _ = run(capsys, "eval", str(ppca), "--json")
    summary = json.loads(out)
    assert code == 0 and summary["log_likelihood"] == summary["test_log_likelihood"]
