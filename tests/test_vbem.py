"""Per-datapoint VB-EM: local tables move only where the batch is, and the E-step finds the exact
posterior of a linear-Gaussian model."""

import math

import pytest
import torch

from dgm.config import load_config
from dgm.estep import fit_local_posterior
from dgm.train import Trainer
from dgm.train.loop import Data
from dgm.train.run import prepare_new_run, read_metrics, train_run
from tests.linear_gaussian import LinearGaussian
from tests.test_training import _numbers, same_weights, small_config

LOCAL = {"inference.kind": "local", "inference.test_steps": 20}


def test_a_step_changes_only_the_rows_of_the_batch(tmp_path):
    trainer = Trainer(small_config(**LOCAL, **{"inference.inner_steps": 3}), tmp_path / "r")
    table = trainer.posterior
    lam0, log_eta0 = table.lam.detach().clone(), table.log_eta.detach().clone()
    x, index = next(iter(trainer.batches))
    trainer.train_step(x, index)
    x2, index2 = next(iter(trainer.batches))
    trainer.train_step(x2, index2)
    touched = torch.zeros(table.num_examples, dtype=torch.bool)
    touched[index] = touched[index2] = True
    changed = (table.lam != lam0).any(1) | (table.log_eta != log_eta0).any(1)
    assert torch.equal(changed, touched)
    # the optimizer's moments exist only for those rows, too
    state = trainer.local_optimizer.state[table.lam]
    assert torch.equal((state["exp_avg"] != 0).any(1), touched)


def test_e_step_reaches_the_exact_posterior_of_a_linear_gaussian_model(tmp_path):
    """Orthogonal W: the exact posterior is a diagonal Gaussian, so VB can find it exactly."""
    lg = LinearGaussian(D=5, d=2, sigma=0.7, seed=3)
    x = lg.sample_x(40, seed=4)
    config = load_config(
        None,
        {
            **LOCAL,
            "model.latent_dim": 2,
            "model.hidden": [],
            "model.likelihood": "gaussian",
            "model.gaussian_scale": 0.7,
            "model.init_output_bias": False,
            "data.binarize": "none",
            "objective.k": 50,
            "inference.local_lr": 0.02,
            "train.device": "cpu",
        },
    )
    data = Data(x_train=x.float(), x_test=x.float(), image_shape=(1, 5))
    trainer = Trainer(config, tmp_path / "r", data=data)
    with torch.no_grad():
        trainer.model.decoder[0].weight.copy_(lg.W)
        trainer.model.decoder[0].bias.copy_(lg.b)
    torch.manual_seed(0)
    trainer.e_step(data.x_train, torch.arange(40), steps=1000)
    for group in trainer.local_optimizer.param_groups:  # then settle at a tenth of the rate
        group["lr"] = 0.002
    trainer.e_step(data.x_train, torch.arange(40), steps=1000)
    exact = lg.exact_posterior()(x)
    lam, eta = trainer.posterior.lam.detach().double(), trainer.posterior.log_eta.exp().double()
    # What is left is the noise of a stochastic optimizer at lr 0.002 with K = 50: far below the
    # posterior's own scale (0.3-0.6), and the starting error (the prior, off by ~1).
    assert (lam - exact.base_dist.loc).abs().max() < 0.03
    assert (eta / exact.base_dist.scale - 1).abs().max() < 0.05
    # The dense test-time E-step (Adam per chunk) gets to the same place.
    torch.manual_seed(0)
    fitted = fit_local_posterior(lg.model, x, steps=1500, lr=0.02, k=50, batch_size=16)
    assert (fitted.lam.detach() - exact.base_dist.loc).abs().max() < 0.03
    assert (fitted.log_eta.detach().exp() / exact.base_dist.scale - 1).abs().max() < 0.05
    # ... and the ELBO there is log p(x), within the optimizer's noise
    elbo = lg.elbo_closed_form(x, fitted.lam.detach(), fitted.log_eta.detach().exp())
    assert (lg.log_px(x) - elbo).max() < 0.01
    assert ((lg.log_px(x) - elbo) >= -1e-9).all()


def test_fit_local_posterior_does_not_touch_theta_and_starts_from_init(tmp_path):
    trainer = Trainer(small_config(**{"train.epochs": 1}), tmp_path / "r")
    x = trainer.data.x_test[:30]
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    fitted = fit_local_posterior(trainer.model, x, steps=0, init=trainer.posterior)
    q = trainer.posterior(x)
    assert torch.allclose(fitted.lam, q.base_dist.loc)
    fitted = fit_local_posterior(trainer.model, x, steps=30, lr=0.05, init=trainer.posterior)
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert all(p.requires_grad for p in trainer.model.parameters())
    # 30 steps of optimizing each q_n raise the ELBO over the encoder's (the amortization gap)
    est = trainer.estimator.eval()
    torch.manual_seed(1)
    with torch.no_grad():
        amortized = est(trainer.model, q, x).bound.mean()
        optimized = est(trainer.model, fitted(x, torch.arange(30)), x).bound.mean()
    assert optimized > amortized + 1.0


def test_score_function_training_improves_the_elbo_and_the_baseline_speeds_it_up(tmp_path):
    """8 epochs on 1,000 digits, K = 10: the naive score gradient still climbs (slowly; at
    K = 1 it does not get anywhere in this budget), and leave-one-out climbs much faster."""
    elbo = {}
    for estimator in ("score", "score-baseline"):
        config = small_config(
            **{
                "train.epochs": 8,
                "train.batch_size": 20,
                "objective.k": 10,
                "objective.estimator": estimator,
            }
        )
        trainer = Trainer(config, tmp_path / estimator)
        before = trainer.evaluate()["test_elbo"]
        elbo[estimator] = trainer.fit()[-1]["test_elbo"]
        # the test ELBO's standard error here is about 2 nats
        assert elbo[estimator] > before + 5, (estimator, before, elbo[estimator])
    assert elbo["score-baseline"] > elbo["score"] + 10


def test_local_inference_trains_and_resumes_exactly(tmp_path):
    config = small_config(
        **LOCAL,
        **{
            "train.epochs": 3,
            "inference.inner_steps": 2,
            "objective.estimator": "score-baseline",
            "objective.baseline": "learned",
        },
    )
    straight_dir, resumed_dir = tmp_path / "a", tmp_path / "b"
    prepare_new_run(config, straight_dir)
    straight = train_run(config, straight_dir)
    rows = read_metrics(straight_dir)
    assert math.isfinite(rows[-1]["test_elbo"]) and rows[-1]["train_elbo"] > rows[0]["train_elbo"]

    class Crash(Exception):
        pass

    def crash(metrics):
        if metrics["epoch"] == 1:
            raise Crash

    prepare_new_run(config, resumed_dir)
    with pytest.raises(Crash):
        train_run(config, resumed_dir, on_epoch=crash)
    resumed = train_run(config, resumed_dir, resume=True)
    assert _numbers(read_metrics(resumed_dir)) == _numbers(rows)
    for a, b in (
        (straight.model, resumed.model),
        (straight.posterior, resumed.posterior),
        (straight.estimator, resumed.estimator),
    ):
        assert same_weights(a, b)
