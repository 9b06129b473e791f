# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Per-datapoint against amortized inference
#
# On a training set $\{x_n\}_{n=1}^N$ the VB-EM objective is the average ELBO
#
# $$\mathcal{L}(\mathcal{X}; \theta, \phi) = \frac{1}{N} \sum_{n=1}^{N}
#   \Big(\mathbb{E}_{q_\phi(z \mid x_n)}[\ln p_\theta(x_n \mid z)]
#        - \mathrm{KL}(q_\phi(z \mid x_n) \,\|\, p(z))\Big).$$
#
# The lecture first gives every example its own posterior parameters,
# $q(z_n \mid x_n) = \mathcal{N}(z_n; \lambda_n, \mathrm{diag}(\eta_n^2))$: a table of
# $(\lambda_n, \eta_n)$, one row per image. Then $\theta$ is updated on every minibatch, but each
# $\phi_n$ only when its own image comes round, once an epoch, so the rows lag behind the model
# unless they get several updates (E-steps) for each update of $\theta$ (an M-step).
#
# **Amortization** replaces the table by an encoder network,
# $\lambda_n = g_{\phi_1}(x_n)$ and $\eta_n = g_{\phi_2}(x_n)$: its weights are shared by all
# images, so every minibatch improves the posterior of every image, and a new image gets its
# posterior by one forward pass. The price is that one network may not give each image its best
# Gaussian: the **amortization gap**.

# %%
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import dgm

torch.manual_seed(0)
workdir = Path(tempfile.mkdtemp())
base = {
    "data": {"train_limit": 5000, "test_limit": 200},
    "model": {"latent_dim": 10, "hidden": [200]},
    "train": {"epochs": 5},
}
variants = {
    "amortized (an encoder)": {"kind": "amortized"},
    "per-datapoint, 1 E-step per M-step": {"kind": "local", "inner_steps": 1},
    "per-datapoint, 5 E-steps per M-step": {"kind": "local", "inner_steps": 5},
}
runs = {}
for name, inference in variants.items():
    runs[name] = dgm.fit(
        {**base, "inference": inference},
        out=workdir / inference["kind"] / str(inference.get("inner_steps", 0)),
    )
    m = runs[name].metrics
    print(
        f"{name:<37} test ELBO by epoch: "
        + ", ".join(f"{r['test_elbo']:.1f}" for r in m)
        + f"   ({sum(r['epoch_time_s'] for r in m):.1f} s of training)"
    )


# %% [markdown]
# Test images have no rows in the table: before each evaluation dgm fits a $q_n$ to every test
# image with $\theta$ frozen (`inference.test_steps` Adam steps, the E-step), so the
# per-datapoint test ELBO is that of well-fitted posteriors. What lags is the *model*: with one
# E-step per M-step, $\theta$ is trained against posteriors that are far from its own.

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for name, run in runs.items():
    ax.plot(
        [m["epoch"] for m in run.metrics],
        [m["test_elbo"] for m in run.metrics],
        marker="o",
        label=name,
    )
ax.set_xticks([m["epoch"] for m in run.metrics])
ax.set_xlabel("epoch")
ax.set_ylabel("test ELBO, nats per image")
ax.legend(fontsize=8)
ax.set_title("the encoder learns faster per epoch")
plt.show()

# %% [markdown]
# ## The inference gaps of the amortized run
#
# For the trained VAE, the distance from the ELBO to $\ln p(x)$ splits in two (Cremer et al.
# 2018):
#
# $$\ln p(x) - \mathcal{L}[q_\text{encoder}]
#   = \underbrace{\ln p(x) - \mathcal{L}[q^*]}_\text{approximation gap}
#   + \underbrace{\mathcal{L}[q^*] - \mathcal{L}[q_\text{encoder}]}_\text{amortization gap},$$
#
# where $q^*$ is the best diagonal Gaussian for each image, found by optimizing a
# $(\lambda_n, \eta_n)$ per test image starting from the encoder's answer, exactly the
# per-datapoint posterior of the lecture, fitted at test time. The approximation gap is the cost of
# the Gaussian family; the amortization gap is the cost of sharing one encoder. `Run.gaps` (and
# `dgm gap RUN_DIR`) measures both.

# %%
amortized = runs["amortized (an encoder)"]
gaps = amortized.gaps(k=500, steps=200, elbo_samples=200, limit=200)
for key in (
    "log_likelihood",
    "elbo_optimized",
    "elbo_amortized",
    "approximation_gap",
    "amortization_gap",
):
    print(f"{key:<18} {gaps[key]:9.2f} ± {gaps[key + '_stderr']:.2f}")
share = gaps["amortization_gap"] / gaps["inference_gap"]
print(f"the encoder's share of the inference gap: {share:.0%}")

# %%
fig, ax = plt.subplots(figsize=(6, 2.2))
ax.barh(["gap"], [gaps["approximation_gap"]], label="approximation (the Gaussian family)")
ax.barh(
    ["gap"],
    [gaps["amortization_gap"]],
    left=[gaps["approximation_gap"]],
    label="amortization (one shared encoder)",
)
ax.set_xlabel("nats per test image")
ax.legend(fontsize=8, loc="lower right")
ax.set_title("ln p(x) - ELBO of the encoder's q, split in two")
plt.tight_layout()
plt.show()

# %% [markdown]
# This small VAE has trained for a few epochs only, but the split is not an artefact of that: on
# the standard MNIST VAE after 100 epochs the amortization gap is still the larger part (see
# [`dgm gap`](../../guide/evaluation/#the-inference-gaps-dgm-gap)), and per-image optimization
# recovers nats that the encoder leaves behind.
# The two ideas are complementary: amortize during training, and refine per datapoint at test
# time when a tighter bound or a better importance-sampling proposal is worth the cost.
