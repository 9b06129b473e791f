"""train.compile = "auto": the step compiled whole for long runs where it can be, else eager."""

import subprocess
import sys

import pytest
import torch

from dgm.config import validate
from dgm.data.arrays import Data
from dgm.methods.compiled import AUTO_MIN_STEPS, decide
from dgm.train.loop import Trainer

CPU = torch.device("cpu")


def test_the_decision_follows_the_setting_and_the_run_length():
    assert decide(False, None, 10**9, CPU).mode == "eager"
    assert decide(True, None, 1, CPU).mode == "whole"
    assert decide(True, "per-datapoint tables", 1, CPU).mode == "forward"
    assert decide("auto", None, AUTO_MIN_STEPS - 1, CPU).mode == "eager"
    long_run = decide("auto", None, AUTO_MIN_STEPS, CPU)
    assert long_run.mode == "whole" and long_run.compiled
    refused = decide("auto", "objective.estimator = 'score'", 10**9, CPU)
    assert refused.mode == "eager" and "score" in refused.reason


def _method(tmp_path, epochs, **sections):
    train = {"epochs": epochs, "batch_size": 100, **sections.pop("train", {})}
    config = validate({"train": train, **sections})
    x = torch.bernoulli(torch.full((1000, 784), 0.3))
    return Trainer(config, tmp_path / "run", data=Data(x, x[:100], (28, 28))).method


# inductor's import warns of torch.jit.script_method in torch.utils.mkldnn (not dgm's)
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize(
    ("epochs", "sections", "mode"),
    [
        (1, {}, "eager"),  # 10 steps: a short run (and every test) stays eager
        (AUTO_MIN_STEPS // 10, {}, "whole"),  # 5,000 steps of 100 of 1,000 examples
        (AUTO_MIN_STEPS // 10, {"objective": {"estimator": "score"}}, "eager"),
        (AUTO_MIN_STEPS // 10, {"inference": {"kind": "local"}}, "eager"),
    ],
)
def test_a_method_decides_from_its_run(tmp_path, epochs, sections, mode):
    method = _method(tmp_path, epochs, **sections)
    assert method.decision.mode == mode
    assert method.compiled == (mode != "eager")
    assert (method.whole_step is not None) == (mode == "whole")
    assert method.notices == (method.decision.reason,)


def test_an_explicit_setting_says_nothing(tmp_path):
    method = _method(tmp_path, AUTO_MIN_STEPS, train={"compile": False})
    assert method.decision.mode == "eager" and method.notices == ()


def test_dgm_train_prints_the_decision_once(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "dgm", "train", "--epochs", "1", "--quiet", "--out",
         str(tmp_path / "run"), "--set", "data.train_limit=500", "--set", "data.test_limit=100"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    lines = [line for line in out.stdout.splitlines() if "train.compile" in line]
    assert lines == [
        "train.compile = auto: eager (5 training steps; compiling pays from about 5,000, "
        "train.compile = true compiles anyway)"
    ]
