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
# # The naive score-function gradient against the reparameterization trick
#
# Training by VB-EM needs the gradient of $\mathbb{E}_{q_\phi(z \mid x)}[\ln p_\theta(x \mid z)]$.
# With respect to $\theta$ it is easy: the expectation does not depend on $\theta$, so the
# gradient moves inside and is estimated by the average of
# $\nabla_\theta \ln p_\theta(x \mid z^{(k)})$ over samples $z^{(k)} \sim q_\phi$. With respect
# to $\phi$ the samples themselves depend on $\phi$. The lecture first takes the naive route, the
# **score function** (REINFORCE, likelihood ratio):
#
# $$\nabla_\phi \mathbb{E}_{q_\phi}[\ln p_\theta(x \mid z)]
#   = \mathbb{E}_{q_\phi}\big[\nabla_\phi \ln q_\phi(z \mid x)\, \ln p_\theta(x \mid z)\big]
#   \approx \frac{1}{K} \sum_{k=1}^{K} \nabla_\phi \ln q_\phi(z^{(k)} \mid x)\,
#     \ln p_\theta(x \mid z^{(k)}),$$
#
# which is unbiased but whose variance is *very large*: $\ln p_\theta(x \mid z)$ is a large
# negative number (hundreds of nats for an MNIST image) multiplying a zero-mean score. The
# **reparameterization trick** writes the sample as a function of the parameters,
# $z = \lambda + \eta \odot \epsilon$ with $\epsilon \sim \mathcal{N}(0, I)$, and differentiates
# through it:
#
# $$\nabla_\phi \mathbb{E}_{q_\phi}[\ln p_\theta(x \mid z)]
#   = \mathbb{E}_{\epsilon}\big[
#       \nabla_\phi \ln p_\theta(x \mid \lambda + \eta \odot \epsilon)\big].$$
#
# Between the two sit **control variates**: since $\mathbb{E}_q[\nabla_\phi \ln q] = 0$, any
# baseline $b$ that does not depend on the sample can be subtracted,
# $\nabla_\phi \ln q(z)\,(\ln p(x \mid z) - b)$, with the same mean and (for a good $b$) much less
# variance. dgm has three: a running mean of the signal, NVIL's learned $b(x)$ (Mnih and Gregor
# 2014), and leave-one-out, the mean of the other $K - 1$ samples' signals (Kool et al. 2019).
#
# We measure all of them on one small VAE, then train with each.

# %%
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import dgm

torch.manual_seed(0)
workdir = Path(tempfile.mkdtemp())
small = {
    "data": {"train_limit": 5000, "test_limit": 500},
    "model": {"latent_dim": 10, "hidden": [200]},
    "train": {"epochs": 3},
}
run = dgm.fit(small, out=workdir / "vae")
print(
    f"a VAE trained for {run.epoch} epochs on 5,000 images: "
    f"test ELBO {run.metrics[-1]['test_elbo']:.2f}"
)


# %% [markdown]
# ## The variances, measured
#
# `Run.gradient_variance` draws `repeats` independent gradient estimates of one batch's ELBO with
# respect to the encoder's parameters, for every estimator dgm has and each $K$, after fitting the
# baselines for a few steps with the model frozen. For a random gradient $g$ it reports
# $\mathrm{tr}\,\mathrm{Cov}[g]$ (the variance) and the signal-to-noise ratio
# $\lVert \mathbb{E} g \rVert / \sqrt{\mathrm{tr}\,\mathrm{Cov}[g]}$. Every unbiased estimator
# has the same $\mathbb{E} g$, so their variances compare directly. (`dgm gradvar RUN_DIR` is the
# same measurement from the command line.)

# %%
result = run.gradient_variance(k=(1, 10), repeats=40, batch_size=50, baseline_steps=100)
elbo_rows = [r for r in result["results"] if r["bound"] == "elbo"]


def label(r: dict) -> str:
    return r["estimator"] + (f" + {r['baseline']}" if r["baseline"] else "")


print(
    f"gradients w.r.t. the {result['parameters']}'s parameters, batch of "
    f"{result['batch_size']}, {result['repeats']} draws each\n"
)
print(f"{'estimator':<25} {'K':>3} {'variance':>11} {'x reparam':>10} {'SNR':>7}")
for r in elbo_rows:
    print(
        f"{label(r):<25} {r['k']:>3} {r['variance']:>11.4g} "
        f"{r['variance_ratio_to_reparam']:>10.3g} {r['snr_common']:>7.3f}"
    )

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
for ax, k in zip(axes, (1, 10), strict=True):
    rows = [r for r in elbo_rows if r["k"] == k]
    ax.barh([label(r) for r in rows], [r["variance"] for r in rows], color="C0")
    ax.set_xscale("log")
    ax.set_title(f"K = {k}")
    ax.set_xlabel("tr Cov[g], log scale")
axes[0].invert_yaxis()
fig.suptitle("variance of one gradient estimate of the ELBO w.r.t. the encoder")
plt.tight_layout()
plt.show()

# %% [markdown]
# The naive score function is orders of magnitude noisier than the pathwise gradient, at every
# $K$ (both fall as $1/K$). Baselines recover part of the gap; leave-one-out, which needs
# $K \ge 2$, recovers the most, and is still noisier than reparameterization. "Sticking the
# landing" (`stl`, Roeder et al. 2017) drops the score term of the pathwise gradient, which has
# mean zero, and is quieter still.
#
# ## What the variance does to training
#
# The same model trained for three epochs with each estimator (`objective.estimator`, and
# `objective.baseline` for the control variate), at the learning rate that serves the pathwise
# gradient:

# %%
variants = {
    "reparam, K = 1": {"estimator": "reparam"},
    "score, K = 1 (naive)": {"estimator": "score"},
    "score + NVIL, K = 1": {"estimator": "score-baseline", "baseline": "learned"},
    "score + leave-one-out, K = 10": {"estimator": "score-baseline", "baseline": "loo", "k": 10},
}
curves = {}
for name, objective in variants.items():
    config = {**small, "objective": objective}
    trained = dgm.fit(config, out=workdir / name.replace(" ", "_").replace(",", ""))
    curves[name] = [m["test_elbo"] for m in trained.metrics]
    print(f"{name:<31} test ELBO after each epoch: " + ", ".join(f"{v:9.2f}" for v in curves[name]))


# %%
plt.figure(figsize=(6, 3.5))
for name, values in curves.items():
    plt.plot(range(1, len(values) + 1), values, marker="o", label=name)
plt.xticks(range(1, len(values) + 1))
plt.xlabel("epoch")
plt.ylabel("test ELBO, nats per image")
plt.legend(fontsize=8)
plt.title("training with each estimator")
plt.show()

# %% [markdown]
# With one sample and no baseline the score-function gradient is so noisy that the encoder's
# weights wander (Adam turns the noise into full-size steps) and the ELBO barely moves (over
# longer runs it collapses: the KL term grows without bound); a baseline makes it usable, and
# leave-one-out with ten samples comes close to the pathwise gradient per epoch, at ten times the
# decoder passes. The reparameterization trick is what makes the VAE train: one sample per image
# suffices.
