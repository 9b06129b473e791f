"""The bridge from the lecture's first slide to its DGM: a deep latent model with a linear decoder
and an isotropic Gaussian likelihood, trained by VB, reaches probabilistic PCA's maximum
likelihood (Tipping and Bishop 1999; Lucas et al. 2019)."""

import torch

from dgm.config import load_config
from dgm.models import PPCA
from dgm.train import Trainer
from dgm.train.loop import Data


def test_linear_vae_trained_by_vb_reaches_the_ppca_log_likelihood(tmp_path):
    torch.manual_seed(0)
    D, q, n = 8, 2, 2000
    truth = PPCA(torch.randn(D, q, dtype=torch.float64) * 1.5, torch.randn(D).double(), 0.3)
    x = truth.sample(n)[1].sample().float()  # (n, D)
    ml = PPCA.fit_closed_form(x.double(), q)
    ll_ml = ml.log_prob(x.double()).mean().item()

    config = load_config(
        None,
        {
            "model.latent_dim": q,
            "model.hidden": [],
            "model.likelihood": "gaussian-isotropic",
            "data.binarize": "none",
            "train.epochs": 300,
            "train.batch_size": 100,
            "train.lr": 5e-2,
            "train.lr_schedule": "exponential",
            "train.lr_final": 1e-4,
            "train.device": "cpu",
        },
    )
    trainer = Trainer(config, tmp_path / "run", data=Data(x, x, (1, D)))
    for _ in range(config.train.epochs):
        trainer.train_epoch()
        trainer.epoch += 1
    # The trained generative model is itself a PPCA: its exact log-likelihood is computable.
    linear = trainer.model.decoder[0]
    sigma2 = trainer.model.head.log_sigma.exp().item() ** 2
    learned = PPCA(linear.weight.double().detach(), linear.bias.double().detach(), sigma2)
    ll_vae = learned.log_prob(x.double()).mean().item()
    elbo = trainer.evaluate(x)["test_elbo"]
    # PPCA's closed form is the maximum: nothing linear-Gaussian can beat it on its own data.
    assert ll_vae <= ll_ml + 1e-6
    # VB reaches it: within 0.02 nats per example (the starting point is ~10 nats below) ...
    assert ll_vae > ll_ml - 0.02, (ll_vae, ll_ml)
    # ... and the ELBO is tight there (diagonal q is exact for the rotation VB picks), up to the
    # Monte Carlo error of a K = 1 estimate over 2,000 examples (~0.02 nats)
    assert ll_ml - 0.06 < elbo < ll_ml + 0.06, (elbo, ll_ml)
