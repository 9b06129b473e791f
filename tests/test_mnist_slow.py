"""The long end-to-end run (excluded by default; ``python -m pytest -m slow``, about 15 minutes).

Trains the standard model of ``configs/mnist_vae.toml`` (the IWAE paper's 784-200-200-50 tanh VAE,
100 epochs) on the full MNIST and checks the issue's bar: test log p(x) >= -90 nats with k = 5000
importance samples on the full test set.
"""

from pathlib import Path

import pytest

from dgm.config import load_config
from dgm.evaluate import importance_log_likelihood
from dgm.train import train_run
from dgm.train.run import prepare_new_run

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "mnist_vae.toml"


@pytest.mark.slow
def test_standard_mnist_vae_reaches_minus_90_nats(tmp_path):
    config = load_config(CONFIG, {"train.device": "cpu"})
    prepare_new_run(config, tmp_path / "run")
    trainer = train_run(config, tmp_path / "run")
    result = importance_log_likelihood(trainer.model, trainer.posterior, trainer.data.x_test, 5000)
    summary = result.summary()
    assert summary["n"] == 10_000
    assert summary["log_likelihood"] >= -90.0, summary
    assert summary["elbo"] < summary["log_likelihood"]
