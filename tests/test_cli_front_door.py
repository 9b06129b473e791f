"""What a new user meets first: --version, the defaults in --help, a typo'd key, dgm sample's
output file, the modes of run files, and a one-epoch run's curves."""

import argparse
import os
import stat

import pytest

import dgm
from dgm.cli import main
from tests.test_cli import SMALL, run


def test_version_prints_the_package_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"dgm {dgm.__version__}"


def _commands():
    from dgm.cli import build_parser

    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


@pytest.mark.parametrize("command", ["train", "eval", "gradvar", "gap", "sample", "score"])
def test_help_shows_every_default(command):
    parser = _commands()[command]
    text = " ".join(parser.format_help().split())  # unwrapped
    for action in parser._actions:
        default = action.default
        if not action.option_strings or default in (None, False, argparse.SUPPRESS):
            continue
        shown = ",".join(map(str, default)) if isinstance(default, list | tuple) else str(default)
        assert f"default: {shown}" in text or f"({shown})" in text, (command, action.dest)
    if command == "train":  # flags that override the config show the config's default
        assert "[train.epochs; default: 20]" in text and "[model.hidden; default: 200,200]" in text
        assert "[train.lr; default: 0.001]" in text


@pytest.mark.parametrize(
    "argv",
    [["train", "--lr", "abc"], ["eval", "run", "--k", "many"], ["sample"], ["trian"]],
)
def test_a_bad_flag_is_one_line_with_a_pointer_to_help(capsys, argv):
    code, out, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 2, err  # the error, then where to look
    assert lines[0].startswith("dgm") and "error:" in lines[0] and "usage:" not in err
    assert lines[1].startswith("see dgm") and lines[1].endswith("--help")


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


def test_run_files_are_readable_by_others_under_the_usual_umask(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        run_dir = tmp_path / "run"
        assert run(capsys, "train", "--epochs", "1", "--out", str(run_dir), *SMALL)[0] == 0
        paths = [p for p in run_dir.rglob("*") if not p.name.startswith(".")]
        assert any(p.is_dir() for p in paths) and any(p.suffix == ".png" for p in paths)
        for path in paths:  # as open() and mkdir() would make them: 0644 and 0755
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))
    finally:
        os.umask(old)


def test_a_one_epoch_runs_curves_show_a_marker_for_its_point(tmp_path, monkeypatch):
    import dgm.plots as plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    rows = [{"epoch": 1, "train_elbo": -150.0, "test_elbo": -140.0, "test_kl": 20.0}]
    plots.save_curves(rows, tmp_path / "curves.png")
    lines = [line for ax in figures[0].axes for line in ax.get_lines()]
    assert len(lines) == 3 and all(len(line.get_xdata()) == 1 for line in lines)
    assert all(line.get_marker() not in (None, "None", "", " ") for line in lines)
