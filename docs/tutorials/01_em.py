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
# # PPCA and the Gaussian mixture, fitted by EM
#
# A generative model describes how data are made by a joint density over the data $x$ and a
# latent variable $z$,
#
# $$p(x, z) = p(x \mid z)\, p(z),$$
#
# and the lecture starts from the two classical examples, whose posterior $p(z \mid x)$ is known
# exactly:
#
# - **probabilistic PCA**: $p(z) = \mathcal{N}(z; 0, I)$ and
#   $p(x \mid z) = \mathcal{N}(x; Wz + \mu, \sigma^2 I)$, so that
#   $p(x) = \mathcal{N}(x; \mu, WW^\top + \sigma^2 I)$ in closed form;
# - **the Gaussian mixture (GMM)**: $p(z) = \mathrm{Cat}(z; \pi)$ and
#   $p(x \mid z) = \prod_m \mathcal{N}(x; \mu_m, \Sigma_m)^{z_m}$.
#
# Both are fitted by **EM**. Each iteration computes the posterior at the current parameters
# $p(z \mid x; \theta^{(t)})$ (the E-step), then maximizes
# $\mathbb{E}_{p(z \mid x; \theta^{(t)})}[\ln p(x, z; \theta)]$ over $\theta$ (the M-step). Because
# the E-step is exact, the lower bound it builds touches $\ln p(x; \theta^{(t)})$, and no
# iteration can lower the log-likelihood. Everything in this tutorial is exact: no sampling, no
# bound.
#
# The data are MNIST grey levels, **dequantized**: $x = (\text{pixel} + u) / 256$ with
# $u \sim U[0, 1)$, a density on $[0, 1)^{784}$. Numbers are nats per image, and bits per
# dimension, $(784 \ln 256 - \ln p(x)) / (784 \ln 2)$, on which a uniform density scores 8.
# To keep the page quick we use 5,000 training and 1,000 test images.

# %%
import math

import matplotlib.pyplot as plt
import torch

import dgm
from dgm.data import dequantize_fixed

torch.manual_seed(0)
config = {"model": {"kind": "ppca"}, "data": {"train_limit": 5000, "test_limit": 1000}}
data = dgm.load_data(config)  # training images as grey levels, the test set dequantized once
x_train = dequantize_fixed(data.x_train, seed=1).double()  # (5000, 784)
x_test = data.x_test.double()  # (1000, 784)
D = x_train.shape[1]


def bits_per_dim(log_px: float) -> float:
    return (D * math.log(256) - log_px) / (D * math.log(2))


print(f"train {tuple(x_train.shape)}, test {tuple(x_test.shape)}, values in [0, 1)")

# %% [markdown]
# ## PPCA: the closed form and EM
#
# PPCA's maximum-likelihood solution is known (Tipping and Bishop 1999): $\mu$ is the data mean,
# $\sigma^2$ the average of the discarded eigenvalues of the sample covariance, and
# $W = U_q (L_q - \sigma^2 I)^{1/2}$ from the $q$ leading eigenvectors and eigenvalues.
# `PPCA.fit_closed_form` computes it; `PPCA.fit_em` climbs to the same maximum by EM, and
# returns the log-likelihood after every iteration.

# %%
q = 20
closed = dgm.PPCA.fit_closed_form(x_train, q)
em, history = dgm.PPCA.fit_em(x_train, q, max_iter=300, tol=0.0, seed=0)
history = torch.tensor(history)
steps = history.diff()
closed_train = closed.average_log_likelihood(x_train)

print(f"closed form: sigma^2 = {closed.sigma2.item():.3e}")
print(
    f"train ln p(x): closed form {closed_train:.2f}, EM after {len(history) - 1} iterations "
    f"{history[-1].item():.2f} (started at {history[0].item():.2f})"
)
print(
    f"smallest change of ln p(x) over an EM iteration: {steps.min().item():+.2e} nats "
    "(never negative)"
)
for name, model in (("closed form", closed), ("EM", em)):
    ll = model.average_log_likelihood(x_test)
    print(f"test ln p(x), {name}: {ll:.2f} nats per image, {bits_per_dim(ll):.3f} bits/dim")

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(history.numpy(), label="EM")
ax.axhline(closed_train, color="k", ls="--", label="closed form (the maximum)")
ax.set_ylim(history[5].item(), closed_train + 0.1 * (closed_train - history[5].item()))
ax.set_xlabel("EM iteration")
ax.set_ylabel("train ln p(x), nats per image")
ax.set_title(f"PPCA, q = {q}: EM never decreases the log-likelihood")
ax.legend()
plt.show()

# %% [markdown]
# EM climbs every iteration, and slowly: the noise variance $\sigma^2$ is tiny next to the
# leading eigenvalues (the border pixels are nearly constant), and EM's steps in $W$ shrink with
# it. That is why dgm fits PPCA in closed form by default (`dgm train --model ppca`) and offers EM
# as `--set em.method=em`.
#
# The posterior is exact too: $p(z \mid x) = \mathcal{N}(M^{-1} W^\top (x - \mu), \sigma^2 M^{-1})$
# with $M = W^\top W + \sigma^2 I$. Below, test images, their reconstruction from the posterior
# mean, $W\,\mathbb{E}[z \mid x] + \mu$, and samples $x \sim p(x \mid z)$, $z \sim p(z)$ (the
# means of $p(x \mid z)$, to look at).

# %%
x = x_test[:8]
z_mean = closed.posterior(x).mean  # (8, q): E[z | x], exact
recon = closed.likelihood(z_mean).mean  # (8, 784)
torch.manual_seed(1)
_, p_x = closed.sample(8)
rows = {"test images": x, "from E[z | x]": recon, "samples (means)": p_x.mean}
fig, axes = plt.subplots(3, 8, figsize=(8, 3.3))
for r, (title, images) in enumerate(rows.items()):
    for c in range(8):
        axes[r, c].imshow(images[c].clamp(0, 1).reshape(28, 28), cmap="gray")
        axes[r, c].axis("off")
    axes[r, 0].set_title(title, fontsize=9, loc="left")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The Gaussian mixture by EM
#
# For the mixture the E-step is the responsibilities
# $r_{nm} = p(z = m \mid x_n) = \pi_m \mathcal{N}(x_n; \mu_m, \Sigma_m) / p(x_n)$, and the M-step
# re-estimates each component from the data weighted by them. `GaussianMixture.fit_em` starts from
# k-means++ and returns the log-likelihood after every iteration. We fit 10 components with
# diagonal covariances.

# %%
gmm, gmm_history = dgm.GaussianMixture.fit_em(
    x_train, 10, covariance_type="diag", max_iter=30, tol=0.0, seed=0
)
gmm_history = torch.tensor(gmm_history)
gmm_test = gmm.log_prob(x_test).mean().item()
print(
    f"train ln p(x): {gmm_history[0].item():.1f} after the first M-step, "
    f"{gmm_history[-1].item():.1f} after {len(gmm_history) - 1} EM iterations"
)
print(
    f"smallest change over an EM iteration: {gmm_history.diff().min().item():+.2e} nats "
    "(never negative; zero once EM has converged)"
)
still = (gmm_history.diff().abs() < 1e-9).nonzero()  # iterations that changed nothing
if len(still):
    print(f"no change from iteration {int(still[0]) + 1} on: EM has converged")
print(f"test ln p(x): {gmm_test:.1f} nats per image, {bits_per_dim(gmm_test):.3f} bits/dim")
resp = gmm.responsibilities(x_test[:1])[0]
top = resp.argsort(descending=True)[:3]
print(
    "the first test image's responsibilities, largest three:",
    ", ".join(f"component {int(m)}: {resp[m].item():.4f}" for m in top),
)

# %%
fig = plt.figure(figsize=(9, 2.8), layout="constrained")
left, right = fig.subfigures(1, 2, width_ratios=[1, 2])
ax = left.subplots()
ax.plot(gmm_history.numpy(), marker=".")
ax.set_xlabel("EM iteration")
ax.set_ylabel("train ln p(x)")
ax.set_title("GMM: monotone too")
axes = right.subplots(2, 5)
for ax, m in zip(axes.flat, gmm.weights.argsort(descending=True), strict=True):
    ax.imshow(gmm.means[m].clamp(0, 1).reshape(28, 28), cmap="gray")
    ax.set_title(f"pi = {gmm.weights[m].item():.2f}", fontsize=8)
    ax.axis("off")
right.suptitle("the 10 component means", fontsize=10)
plt.show()

# %% [markdown]
# The responsibilities of a 784-dimensional image are nearly one-hot, and EM soon converges:
# once the assignments stop changing, so does the log-likelihood. With 5,000 training images the
# mixture overfits: each component's tiny variances for the border pixels fit the training
# images better than the test images.

# %% [markdown]
# ## What the numbers say
#
# Both models are exact densities on the same data, so their log-likelihoods compare directly.
# PPCA is a poor density for MNIST, close to the uniform's 8 bits per dimension: one isotropic
# noise variance has to cover both the ink and the nearly constant border. The mixture, with a
# variance per pixel and per component, does far better. Neither has a neural network; the
# [next tutorial](../02_vbem/) puts one between $z$ and $x$, and the exact E-step is lost.

# %%
print(
    f"bits/dim on the test images: PPCA (q = {q}) "
    f"{bits_per_dim(closed.average_log_likelihood(x_test)):.3f}, "
    f"GMM (10 diagonal components) {bits_per_dim(gmm_test):.3f}, uniform 8.000"
)
