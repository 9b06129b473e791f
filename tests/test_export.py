"""Sharing a model: ``dgm export`` writes weights and config only, ``dgm.load_run`` reads the
export as the run itself, the main job's VAE ships as ``pretrained:mnist-vae``, and the
configurations ship by name; a wheel holds both and works from a clean directory."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dgm
from dgm.config import CONFIGS_DIR, ConfigError, load_config, same_run, shipped_configs
from dgm.export import EXPORT, PRETRAINED_DIR, WEIGHTS, export_run, pretrained_names
from tests.test_cli import SMALL, run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from dgm.cli import main

    run_dir = tmp_path_factory.mktemp("export") / "run"
    assert main(["train", "--epochs", "2", "--out", str(run_dir), *SMALL]) == 0
    return run_dir


def _same_modules(a, b):
    for left, right in ((a.model, b.model), (a.posterior, b.posterior)):
        if left is None:
            assert right is None
            continue
        sa, sb = left.state_dict(), right.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_an_export_holds_only_the_weights_and_loads_as_the_run(trained, tmp_path, capsys):
    out = tmp_path / "shared"
    code, printed, _ = run(capsys, "export", str(trained), str(out))
    assert code == 0 and printed.startswith(str(out))
    assert sorted(p.name for p in out.iterdir()) == ["config.json", EXPORT, WEIGHTS]
    tensors = load_file(str(out / WEIGHTS))  # no optimizer moments, no random-number state
    assert tensors and all(k.split(".", 1)[0] in ("model", "posterior") for k in tensors)
    info = json.loads((out / EXPORT).read_text())
    assert info["epoch"] == 2 and info["metrics"]["epoch"] == 2
    source, shared = dgm.load_run(trained), dgm.load_run(out)
    _same_modules(source, shared)
    assert shared.epoch == 2 and shared.config == source.config
    assert torch.equal(source.sample(8, seed=3), shared.sample(8, seed=3))
    a, b = source.evaluate(k=10, limit=20, seed=1), shared.evaluate(k=10, limit=20, seed=1)
    assert a["log_likelihood"] == b["log_likelihood"] and a["elbo"] == b["elbo"]
    # the commands read it as a run; an export of the export is the same weights
    assert run(capsys, "sample", str(out), "--n", "4")[0] == 0
    assert (out / "samples-n4-seed0.png").exists()
    assert run(capsys, "export", str(out), str(tmp_path / "again"))[0] == 0
    _same_modules(shared, dgm.load_run(tmp_path / "again"))


def test_export_never_replaces_what_is_there(trained, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = run(capsys, "export", str(trained), str(out))
    assert code == 2 and "already exists" in err and err.count("\n") == 1
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"
    code, _, err = run(capsys, "export", str(tmp_path / "nothing"), str(tmp_path / "o"))
    assert code == 2 and "config.json" in err and not (tmp_path / "o").exists()


def test_an_earlier_checkpoint_can_be_exported(trained, tmp_path):
    first = trained / "checkpoints" / "epoch-0001"
    out = export_run(trained, tmp_path / "first", checkpoint=first)
    assert dgm.load_run(out).epoch == 1
    _same_modules(dgm.load_run(trained, checkpoint=first), dgm.load_run(out))


@pytest.mark.parametrize("kind", ["gan", "ppca"])
def test_other_kinds_export_too(tmp_path, capsys, kind):
    run_dir = tmp_path / kind
    extra = ["--set", "gan.architecture=mlp", "--set", "gan.hidden=[16]"] if kind == "gan" else []
    argv = ["--model", kind, "--epochs", "1", "--latent-dim", "4", *extra]
    assert run(capsys, "train", *argv, "--train-limit", "200", "--test-limit", "40",
               "--out", str(run_dir), "--quiet")[0] == 0  # fmt: skip
    out = export_run(run_dir, tmp_path / f"{kind}-export")
    source, shared = dgm.load_run(run_dir), dgm.load_run(out)
    sa, sb = source.model.state_dict(), shared.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    if kind == "gan":
        assert torch.equal(source.sample(6, seed=0), shared.sample(6, seed=0))
    else:
        assert source.evaluate() == shared.evaluate()


def test_the_pretrained_vae_is_the_main_jobs(tmp_path, monkeypatch, capsys):
    assert "mnist-vae" in pretrained_names()
    shipped = dgm.load_run("pretrained:mnist-vae")
    info = json.loads((PRETRAINED_DIR / "mnist-vae" / EXPORT).read_text())
    assert shipped.epoch == shipped.config.train.epochs == 20
    # the main job, `dgm train` with no arguments, up to how it computed (it trained eagerly)
    assert same_run(shipped.config, load_config())
    # its test ELBO on 1,000 test images agrees with the one training recorded on all 10,000
    result = shipped.evaluate(k=20, limit=1000, seed=0)
    recorded = info["metrics"]["test_elbo"]
    assert abs(result["elbo"] - recorded) < 4 * result["elbo_stderr"] + 0.5
    assert result["log_likelihood"] > result["elbo"] and result["log_likelihood"] < -80
    before = sorted(p.name for p in (PRETRAINED_DIR / "mnist-vae").iterdir())
    monkeypatch.chdir(tmp_path)  # what a command measures goes here, not into the package
    code, out, _ = run(capsys, "sample", "pretrained:mnist-vae", "--n", "9")
    assert code == 0 and Path(out.strip()) == tmp_path / "pretrained-mnist-vae/samples-n9-seed0.png"
    assert run(capsys, "latent", "pretrained:mnist-vae", "--limit", "500")[0] == 0
    assert run(capsys, "report", "pretrained:mnist-vae")[0] == 0
    page = (tmp_path / "pretrained-mnist-vae" / "report.html").read_text()
    assert "latent.png" in page and f"{recorded:.6g}" in page  # its view, its recorded ELBO
    assert sorted(p.name for p in (PRETRAINED_DIR / "mnist-vae").iterdir()) == before
    code, _, err = run(capsys, "sample", "pretrained:mnist-vea")
    assert code == 2 and "pretrained:mnist-vae" in err and err.count("\n") == 1


def test_configurations_ship_by_name(tmp_path, monkeypatch, capsys):
    assert {"mnist_vae", "mnist_gan", "mnist_diffusion", "iwae/1l_iwae_k50"} <= set(
        shipped_configs()
    )
    monkeypatch.chdir(tmp_path)  # no configs/ here
    by_name = load_config("mnist_gan")
    assert by_name == load_config(CONFIGS_DIR / "mnist_gan.toml")
    assert load_config("configs/mnist_gan.toml") == by_name  # README's spelling, anywhere
    with pytest.raises(ConfigError, match="did you mean 'mnist_vae'"):
        load_config("mnist_vea")
    code, _, err = run(capsys, "train", "mnist_gann", "--epochs", "1")
    assert code == 2 and "did you mean 'mnist_gan'" in err and err.count("\n") == 1


def test_a_wheel_holds_the_configs_and_the_pretrained_vae(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         str(ROOT), "-w", str(tmp_path / "wheel")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheel").glob("dgm-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"dgm/configs/mnist_vae.toml", "dgm/pretrained/mnist-vae/weights.safetensors"} <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)  # MIT, as pyproject says
    script = (
        "import dgm, pathlib; assert pathlib.Path(dgm.__file__).is_relative_to(pathlib.Path("
        f"{str(site)!r})); print(dgm.load_config('mnist_vae').train.epochs); "
        "print(tuple(dgm.load_run('pretrained:mnist-vae').sample(4).shape))"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["100", "(4,", "784)"]


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda out: (out / EXPORT).write_text("{not json"), EXPORT),
        (lambda out: (out / EXPORT).write_text('{"format": 9}'), "format"),
        (lambda out: (out / WEIGHTS).write_bytes(b"\x00" * 16), WEIGHTS),
        (lambda out: (out / WEIGHTS).unlink(), WEIGHTS),
    ],
)
def test_a_damaged_export_is_one_line_naming_the_file(trained, tmp_path, capsys, damage, named):
    out = export_run(trained, tmp_path / "shared")
    damage(out)
    code, _, err = run(capsys, "sample", str(out), "--n", "2")
    assert code == 4 and named in err and err.count("\n") == 1
