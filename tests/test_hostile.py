"""Hostile input to the CLI: every case ends in one line with its documented exit code, and
nothing of the user's (or of the run's last good state) is touched."""

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError

from dgm.cli import main
from dgm.errors import EXIT_CODES
from dgm.train.run import read_metrics

SMALL = [
    "--train-limit", "200", "--test-limit", "50", "--hidden", "16", "--latent-dim", "2",
    "--batch-size", "50", "--device", "cpu", "--quiet",
]  # fmt: skip
USAGE, CHECKPOINT = 2, 4


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err, code, expected, *words):
    assert code == expected, err
    assert err.startswith("dgm: error: ") and err.count("\n") == 1, err
    assert len(err) < 1100, len(err)
    for w in words:
        assert w in err, (w, err)


def snapshot(path):
    """Every file under ``path`` with its bytes."""
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--epochs", "2", "--out", str(run_dir), *SMALL]) == 0
    return run_dir


@pytest.fixture
def run_dir(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def state_path(run_dir, epoch=2):
    return run_dir / "checkpoints" / f"epoch-{epoch:04d}" / "state.json"


def edit_state(run_dir, edit=None, text=None):
    path = state_path(run_dir)
    if text is None:
        state = json.loads(path.read_text())
        edit(state)
        text = json.dumps(state)
    path.write_text(text)


def setter(key, value):
    def edit(state):
        node = state
        *parents, last = key.split(".")
        for k in parents:
            node = node[k]
        node[last] = value

    return edit


# -- tampered state.json --------------------------------------------------------------------

TAMPERED = {
    "optimizer=5": dict(edit=setter("optimizer", 5)),
    "extra=[1,2]": dict(edit=setter("extra", [1, 2])),
    "train_time_s=abc": dict(edit=setter("extra.train_time_s", "abc")),
    "lr_scale=[1]": dict(edit=setter("extra.lr_scale", [1])),
    "lr_scale=1e308": dict(edit=setter("extra.lr_scale", 1e308)),
    "recoveries=1e400": dict(edit=setter("extra.recoveries", "INF")),
    "epoch=1e400": dict(edit=setter("epoch", "INF")),
    "epoch=5000 digits": dict(edit=setter("epoch", "BIG")),
    "epoch=-5": dict(edit=setter("epoch", -5)),
    "epoch=10**18": dict(edit=setter("epoch", 10**18)),
    "nested 100000 deep": dict(text="[" * 100_000 + "]" * 100_000),
}


def tamper(run_dir, case):
    spec = TAMPERED[case]
    if "text" in spec:
        edit_state(run_dir, text=spec["text"])
        return
    edit_state(run_dir, spec["edit"])
    path = state_path(run_dir)  # values JSON cannot hold as Python writes it, put in as text
    text = path.read_text().replace('"INF"', "1e400").replace('"BIG"', "9" * 5000)
    path.write_text(text)


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_tampered_state_json_is_one_line_naming_it(run_dir, capsys, case):
    tamper(run_dir, case)
    before = snapshot(run_dir / "checkpoints")
    code, _, err = run(capsys, "train", "--resume", run_dir, "--quiet")
    one_line(err, code, CHECKPOINT, "state.json")
    assert snapshot(run_dir / "checkpoints") == before  # nothing overwritten or pruned
    if case.startswith(("epoch", "nested")):
        for command in (["eval", run_dir, "--k", "2"], ["sample", run_dir, "--n", "4"]):
            code, _, err = run(capsys, *command)
            one_line(err, code, CHECKPOINT, "state.json")


def test_a_negative_epoch_never_overwrites_intact_checkpoints(run_dir, capsys):
    (run_dir / "checkpoints" / "epoch-0001" / "state.json").write_text(
        state_path(run_dir).read_text()
    )  # epoch-0001 claiming epoch 2: refused by its name, not trusted
    edit_state(run_dir, setter("epoch", -5))
    before = snapshot(run_dir / "checkpoints")
    code, _, err = run(capsys, "train", "--resume", run_dir, "--quiet")
    one_line(err, code, CHECKPOINT, "'epoch'")
    assert snapshot(run_dir / "checkpoints") == before


def test_an_edited_config_json_does_not_resume_with_another_objective(run_dir, capsys):
    config = json.loads((run_dir / "config.json").read_text())
    config["objective"]["bound"] = "iwae"
    config["train"]["epochs"] = 3
    (run_dir / "config.json").write_text(json.dumps(config))
    code, _, err = run(capsys, "train", "--resume", run_dir, "--epochs", "3", "--quiet")
    one_line(err, code, CHECKPOINT, "objective.bound", "'iwae'", "'elbo'")


# -- a full disk ------------------------------------------------------------------------------


def test_safetensors_own_full_disk_error_is_one_line_and_keeps_the_last_checkpoint(
    run_dir, capsys, monkeypatch
):
    """safetensors raises SafetensorError (not an OSError) when the disk is full."""
    import dgm.train.checkpoint as checkpoint

    def full(tensors, path):
        open(path, "wb").close()
        raise SafetensorError("Error while serializing: IoError(No space left on device)")

    monkeypatch.setattr(checkpoint, "save_file", full)
    before = snapshot(run_dir / "checkpoints")
    code, _, err = run(capsys, "train", "--resume", run_dir, "--epochs", "3", "--quiet")
    one_line(err, code, USAGE, "epoch-0003/tensors.safetensors", "No space left")
    assert snapshot(run_dir / "checkpoints") == before
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]


def test_a_real_full_disk_on_a_tiny_tmpfs(tmp_path, capsys):
    mount = tmp_path / "tiny"
    mount.mkdir()
    ok = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True
    )
    if ok.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (the injected SafetensorError test covers it)")
    try:
        args = [*SMALL, "--hidden", "200"]  # a checkpoint of about 1.3 MB: more than fits
        code, _, err = run(capsys, "train", "--epochs", "2", "--out", mount / "run", *args)
        one_line(err, code, USAGE, str(mount / "run"), "No space left")
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


# -- flags and config files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, words",
    [
        (["--seed", "18446744073709551616"], ["seed"]),
        (["--device", "meta"], ["meta"]),
        (["--device", "mps"], ["mps"]),
        (["--latent-dim", "100000000"], ["memory"]),
        (["--hidden", "100000000"], ["memory"]),
        (["--k", "10000000"], ["memory"]),
        (["--posterior", "planar:128", "--latent-dim", "5000", "--hidden", "2000"], ["memory"]),
        (
            ["--estimator", "score-baseline", "--baseline", "learned", "--k", "1"]
            + ["--set", "objective.baseline_hidden=1000000000"],
            ["memory"],
        ),
    ],
)
def test_bad_flags_are_one_line_before_anything_is_written(tmp_path, capsys, args, words):
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--epochs", "1", "--out", out, *SMALL, *args)
    one_line(err, code, USAGE, *words)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("kind", ["seed", "nested", "fifo", "dev-zero", "huge-string"])
def test_hostile_config_files_are_one_line(tmp_path, capsys, kind):
    path = tmp_path / "c.toml"
    if kind == "seed":
        path.write_text("[train]\nseed = 123456789012345678901234567890\n")
    elif kind == "nested":
        path.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    elif kind == "fifo":
        os.mkfifo(path)  # reading it would block forever
    elif kind == "dev-zero":
        path = "/dev/zero"  # reading it would never end
    else:
        path.write_text('[model]\nposterior = "' + "x" * 50_000_000 + '"\n')
    code, _, err = run(capsys, "train", path, "--out", tmp_path / "run", *SMALL)
    one_line(err, code, USAGE)
    assert not (tmp_path / "run").exists()


# -- the user's files ---------------------------------------------------------------------------


def test_out_a_directory_that_is_not_a_run_is_refused_untouched(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "samples.png").write_bytes(b"my picture")
    (mine / "metrics.jsonl").write_text("my numbers\n")
    before = snapshot(mine)
    for extra in ([], ["--force"]):
        code, _, err = run(capsys, "train", "--epochs", "1", "--out", mine, *SMALL, *extra)
        one_line(err, code, USAGE, "not a dgm run")
        assert snapshot(mine) == before


def test_out_a_symlink_is_refused(tmp_path, capsys):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    code, _, err = run(capsys, "train", "--epochs", "1", "--out", tmp_path / "link", *SMALL)
    one_line(err, code, USAGE, "symbolic link")
    assert not any(target.iterdir())


def test_a_symlinked_metrics_file_is_never_followed(run_dir, tmp_path, capsys):
    outside = tmp_path / "outside.txt"
    outside.write_text("not dgm's\n")
    (run_dir / "metrics.jsonl").unlink()
    (run_dir / "metrics.jsonl").symlink_to(outside)
    code, _, err = run(capsys, "train", "--resume", run_dir, "--epochs", "3", "--quiet")
    one_line(err, code, USAGE, "metrics.jsonl", "symbolic link")
    assert outside.read_text() == "not dgm's\n"


def test_force_removes_only_what_the_run_wrote_and_says_so(run_dir, capsys):
    assert run(capsys, "gap", run_dir, "--k", "4", "--limit", "5")[0] == 0
    assert (run_dir / "gap.json").exists()
    (run_dir / "notes.txt").write_text("mine")
    (run_dir / "checkpoints" / "my_model.pt").write_bytes(b"mine too")
    code, out, _ = run(capsys, "train", "--epochs", "1", "--out", run_dir, "--force", *SMALL)
    assert code == 0 and "--force: removed" in out and "gap.json" in out
    assert (run_dir / "notes.txt").read_text() == "mine"
    assert (run_dir / "checkpoints" / "my_model.pt").read_bytes() == b"mine too"
    assert not (run_dir / "gap.json").exists()  # the old run's evaluation went with it
    assert [p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir()] == ["epoch-0001"]


def test_force_refuses_a_config_json_dgm_did_not_write(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}')
    code, _, err = run(capsys, "train", "--epochs", "1", "--out", mine, "--force", *SMALL)
    one_line(err, code, USAGE, "not a dgm run")
    assert (mine / "config.json").read_text() == '{"my": "settings"}'


def test_leftovers_of_a_killed_write_are_cleaned_at_the_next_start(run_dir, capsys):
    (run_dir / ".metrics.jsonl.abc123.tmp").write_text("half")
    half = run_dir / "checkpoints" / "epoch-0001"
    (half / "tensors.safetensors").unlink()  # a kill while pruning
    stale = run_dir / "checkpoints" / ".epoch-0003.xyz.tmp"
    stale.mkdir()
    code, _, _ = run(capsys, "train", "--resume", run_dir, "--epochs", "3", "--quiet")
    assert code == 0
    assert not (run_dir / ".metrics.jsonl.abc123.tmp").exists() and not stale.exists()
    assert not half.exists()
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1, 2, 3]


def test_a_run_resumes_with_a_smaller_learning_rate_recorded_in_its_metrics(run_dir, capsys):
    code, _, err = run(capsys, "train", "--resume", run_dir, "--epochs", "3", "--lr", "1e-4")
    assert code == 0, err
    rows = read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[2]["lr_change"] == {"epoch": 2, "from": 1e-3, "to": 1e-4}
    assert "lr_change" not in rows[1] and rows[2]["lr"] == pytest.approx(1e-4)
    assert json.loads((run_dir / "config.json").read_text())["train"]["lr"] == 1e-4
    code, _, err = run(capsys, "train", "--resume", run_dir, "--epochs", "3", "--lr", "-1")
    one_line(err, code, USAGE, "--lr")


def test_every_exit_code_is_documented():
    """The reliability guide's table has every code; README's one line names each of them."""
    root = Path(__file__).parents[1]
    guide = (root / "docs" / "guide" / "reliability.md").read_text()
    table = guide[guide.index("## Exit codes") :]
    for code in set(EXIT_CODES) - {0, 130}:
        assert f"| {code} |" in table, code
    assert "| 128 + N |" in table and "130" in table
    readme = (root / "README.md").read_text()
    line = readme[readme.index("exit code:") :].split("(")[0]
    for code in set(EXIT_CODES) - {0, 130}:
        assert f" {code} " in line, code
    assert "128 + N" in line and "reliability.md#exit-codes" in readme


# -- random and mutated run files -----------------------------------------------------------------

_MUTATIONS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def _paths(node, prefix=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list) and len(node) < 10:
        for i, v in enumerate(node):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_mutated_state_and_config_files_give_a_run_or_one_line(trained, capsys, data):
    """Random edits of state.json or config.json: resume, eval and sample each either work or
    end in one line with a documented exit code."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        shutil.copytree(trained, run_dir)
        _mutate_and_run(run_dir, capsys, data)


def _mutate_and_run(run_dir, capsys, data):
    target = data.draw(st.sampled_from([state_path(run_dir), run_dir / "config.json"]))
    if data.draw(st.booleans()):
        doc = json.loads(target.read_text())
        for _ in range(data.draw(st.integers(1, 3))):
            paths = sorted(_paths(doc), key=str)  # of the document as edited so far
            if not paths:
                break
            where = data.draw(st.sampled_from(paths))
            node = doc
            for k in where[:-1]:
                node = node[k]
            node[where[-1]] = data.draw(_MUTATIONS)
        target.write_text(json.dumps(doc))
    else:
        raw = bytearray(target.read_bytes())
        cut = data.draw(st.integers(0, len(raw)))
        flips = data.draw(st.lists(st.integers(0, max(len(raw) - 1, 0)), max_size=4))
        for i in flips:
            if i < len(raw):
                raw[i] ^= 0x20
        target.write_bytes(bytes(raw[:cut]) if data.draw(st.booleans()) else bytes(raw))
    command = data.draw(
        st.sampled_from(
            [
                ["train", "--resume", run_dir, "--epochs", "3", "--quiet"],
                ["eval", run_dir, "--k", "2", "--limit", "4"],
                ["sample", run_dir, "--n", "4"],
            ]
        )
    )
    code, _, err = run(capsys, *command)
    assert code in EXIT_CODES and code != 1, err
    if code != 0:
        one_line(err, code, code)


def test_a_line_that_is_not_a_metrics_row_does_not_crash_the_curves(run_dir, capsys):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("\n".join([lines[0], "not json", '{"epoch": []}']))
    (run_dir / "curves.png").unlink()
    code, _, err = run(capsys, "train", "--resume", run_dir, "--epochs", "3", "--quiet")
    assert code == 0, err
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1, 2, 3]  # epoch 2 from its checkpoint
    assert (run_dir / "curves.png").stat().st_size > 0
