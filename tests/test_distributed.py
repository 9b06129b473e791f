"""Training on 2 processes with torchrun (gloo, CPU, loopback only).

A run on 2 processes with per-process batch B / 2 sees the same global batches as one process
with batch B, but draws other noise (binarization, z ~ q), so its numbers agree with the
single-process run's statistically, not bit for bit: after 3 epochs on 3,000 images the test
ELBOs of single-process runs with different seeds spread by about 1 nat, and the distributed run
must land within TOLERANCE = 2 nats of the single-process one. Resume, on the other hand, is
exact: every rank's random-number-generator state is in the checkpoint.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TOLERANCE = 2.0  # nats of test ELBO (see the module docstring)
ARGS = ["--train-limit", "3000", "--test-limit", "500", "--batch-size", "100", "--quiet"]


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1")
    e.pop("RANK", None)
    e.pop("WORLD_SIZE", None)
    return e


def torchrun(*argv):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            "2", "-m", "dgm", *argv]  # fmt: skip


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "time" not in k and "_per_s" not in k} for r in rows]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run(
        [sys.executable, "-m", "dgm", "train", "--epochs", "3", "--out", str(one), *ARGS],
        env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr
    dist = subprocess.run(
        torchrun("train", "--epochs", "3", "--out", str(two), *ARGS),
        env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert dist.returncode == 0, dist.stderr
    assert dist.stdout.count("epoch   3") == 1  # only rank 0 prints
    a, b = metrics(one), metrics(two)
    assert len(a) == len(b) == 3
    assert a[-1]["test_elbo"] > a[0]["test_elbo"] + 5 and b[-1]["test_elbo"] > b[0]["test_elbo"] + 5
    assert abs(a[-1]["test_elbo"] - b[-1]["test_elbo"]) < TOLERANCE, (a[-1], b[-1])
    assert b[-1]["test_elbo"] != a[-1]["test_elbo"]  # other noise: not the same run
    assert (two / "samples.png").exists() and len(list((two / "checkpoints").iterdir())) == 3


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the torchrun worker with RANK=rank (a child of the agent ``parent``)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])  # after "pid (comm) state"
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    return None


def test_a_killed_rank_and_resume_give_the_uninterrupted_numbers(tmp_path):
    """SIGKILL rank 1 after the first checkpoint: torchrun ends the run with an error; resuming
    it with torchrun finishes with exactly the metrics of an uninterrupted distributed run."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = subprocess.run(
        torchrun("train", "--epochs", "3", "--out", str(straight), *ARGS),
        env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr

    agent = subprocess.Popen(
        torchrun("train", "--epochs", "3", "--out", str(killed), *ARGS),
        env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (killed / "metrics.jsonl").exists() or not metrics(killed):
            assert time.monotonic() < deadline and agent.poll() is None
            time.sleep(0.05)
        pid = _rank_pid(agent.pid, 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert agent.wait(timeout=120) != 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert 1 <= len(metrics(killed)) < 3  # it stopped early
    resumed = subprocess.run(
        torchrun("train", "--resume", str(killed), "--quiet"),
        env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert metrics(killed) == metrics(straight)


def test_a_distributed_checkpoint_resumes_only_on_as_many_processes(tmp_path, capsys):
    from dgm.cli import main

    run_dir = tmp_path / "run"
    done = subprocess.run(
        torchrun("train", "--epochs", "1", "--out", str(run_dir), *ARGS),
        env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert main(["train", "--resume", str(run_dir), "--epochs", "2", "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "written by 2 process(es)" in err and err.count("\n") == 1


def test_a_batch_that_cannot_be_split_is_refused(tmp_path):
    out = subprocess.run(
        torchrun("train", "--epochs", "1", "--out", str(tmp_path / "r"), *ARGS,
                 "--batch-size", "99"),
        env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode != 0
    assert "divisible" in out.stderr


LOCAL = """
[data]
train_limit = 1000
test_limit = 200
[model]
latent_dim = 10
hidden = [100]
[inference]
kind = "local"
inner_steps = 2
local_lr = 0.1
test_steps = 100
[train]
batch_size = 100
"""


def test_per_datapoint_tables_sharded_over_two_processes(tmp_path):
    """VB-EM with a (lambda_n, eta_n) table: each rank holds and trains the rows of its own
    examples. The test ELBO lands within TOLERANCE of one process's; a checkpoint holds the
    whole table (single-process tools read it); stopping after 2 epochs and resuming to 4
    gives exactly the metrics of 4 epochs straight (the rows and their Adam moments are put
    together on rank 0 and cut apart again on resume)."""
    from dgm.train.checkpoint import latest_checkpoint, load_checkpoint

    config = tmp_path / "local.toml"
    config.write_text(LOCAL)
    runs = {name: tmp_path / name for name in ("one", "two", "halves")}
    single = subprocess.run(
        [sys.executable, "-m", "dgm", "train", str(config), "--epochs", "4", "--out",
         str(runs["one"]), "--quiet"],
        env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr
    for name, epochs in (("two", "4"), ("halves", "2")):
        done = subprocess.run(
            torchrun("train", str(config), "--epochs", epochs, "--out", str(runs[name]),
                     "--quiet"),
            env=env(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    table = load_checkpoint(latest_checkpoint(runs["halves"] / "checkpoints")).modules["posterior"]
    assert table["lam"].shape == (1000, 10) and table["log_eta"].shape == (1000, 10)
    moved = (table["lam"].abs().sum(1) > 0).float().mean()  # rows trained on either rank
    assert moved == 1.0, moved
    resumed = subprocess.run(
        torchrun("train", "--resume", str(runs["halves"]), "--epochs", "4", "--quiet"),
        env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    one, two = metrics(runs["one"]), metrics(runs["two"])
    assert two[-1]["test_elbo"] > two[0]["test_elbo"] + 5, two
    assert abs(one[-1]["test_elbo"] - two[-1]["test_elbo"]) < TOLERANCE, (one[-1], two[-1])
    assert metrics(runs["halves"]) == two
