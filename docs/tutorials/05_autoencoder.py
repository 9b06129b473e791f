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
# # The autoencoder against the VAE
#
# Written out with the reparameterized samples and the amortized encoder, the VAE's objective is
#
# $$\mathcal{L} \approx \frac{1}{NK} \sum_{n=1}^{N} \sum_{k=1}^{K}
#   \ln p_\theta\big(x_n \mid g_{\phi_1}(x_n) + g_{\phi_2}(x_n) \odot \epsilon_n^{(k)}\big)
#   - \frac{1}{N} \sum_{n=1}^{N} \mathrm{KL}\big(q_\phi(z \mid x_n) \,\|\, p(z)\big):$$
#
# an encoder $g_\phi$ and a decoder $\mu_\theta$ trained to reconstruct $x$, like a plain
# **autoencoder**, with two additions: noise on the code, and the KL regularizer that pulls every
# $q_\phi(z \mid x_n)$ towards the prior $p(z) = \mathcal{N}(0, I)$. The autoencoder has neither:
# its code is a point, $z = g_\phi(x)$, and nothing ties the codes to $p(z)$.
#
# That is why only the VAE is a generative model: to make a new image we draw $z \sim p(z)$ and
# decode it, and that only works if the decoder has learned what to do with codes that look like
# draws from $p(z)$. In dgm the autoencoder is the same model with a point-mass $q$ and the
# reconstruction objective (`model.kind = "ae"`, `dgm train --model ae`).
#
# We train both, with the same networks and a 16-dimensional code, on 20,000 images.

# %%
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import dgm

torch.manual_seed(0)
workdir = Path(tempfile.mkdtemp())
base = {
    "data": {"train_limit": 20000, "test_limit": 1000},
    "model": {"latent_dim": 16, "hidden": [256]},
    "train": {"epochs": 8},
}
runs = {
    kind: dgm.fit({**base, "model": {**base["model"], "kind": kind}}, out=workdir / kind)
    for kind in ("ae", "vae")
}
for kind, run in runs.items():
    m = run.metrics[-1]
    print(f"{kind}: test E[ln p(x | z)] = {m['test_recon']:8.2f}, test KL = {m['test_kl']:.2f}")


# %% [markdown]
# The autoencoder reconstructs better: it spends nothing on the KL term and its codes carry no
# noise. Its "KL" is zero because it has none, not because its codes match the prior.
#
# ## Where the codes lie

# %%
x, labels = runs["vae"].data.x_test, runs["vae"].data.test_labels
codes = {}
with torch.no_grad():
    for kind, run in runs.items():
        codes[kind] = run.encode(x).mean  # (1000, 16): the AE's point, the VAE's E_q[z | x]
prior = torch.randn(len(x), 16, generator=torch.Generator().manual_seed(0))  # z ~ p(z)
for name, z in (*codes.items(), ("z ~ p(z)", prior)):
    print(
        f"{name:>8}: mean |z| = {z.norm(dim=1).mean():5.2f}; per coordinate, means within "
        f"[{z.mean(0).min():+.2f}, {z.mean(0).max():+.2f}], standard deviations within "
        f"[{z.std(0).min():.2f}, {z.std(0).max():.2f}]"
    )

fig, axes = plt.subplots(1, 3, figsize=(11, 3.5))
for name, z in (*codes.items(), ("z ~ p(z)", prior)):
    axes[0].hist(z.norm(dim=1), bins=40, histtype="step", density=True, label=name)
axes[0].set_xlabel("|z|")
axes[0].legend()
axes[0].set_title("lengths of the codes")
lim = 1.05 * max(z[:, :2].abs().max().item() for z in codes.values())
for ax, (kind, z) in zip(axes[1:], codes.items(), strict=True):
    ax.scatter(prior[:, 0], prior[:, 1], s=3, color="0.8", label="z ~ p(z)")
    ax.scatter(z[:, 0], z[:, 1], c=labels, cmap="tab10", s=3)
    ax.set_title(f"{kind}: two coordinates of the codes")
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
axes[1].legend(loc="upper left", fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# The VAE's codes fill the region where $p(z)$ puts its mass (coloured by digit, over grey draws
# from the prior). The autoencoder's codes sit wherever reconstruction put them, at their own
# scale, so draws from $p(z)$ land where the decoder was never trained.
#
# ## Samples from the prior

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
for ax, (kind, run) in zip(axes, runs.items(), strict=True):
    images = run.sample(36, seed=1)  # z ~ p(z), the means of p(x | z)
    grid = images.reshape(6, 6, 28, 28).permute(0, 2, 1, 3).reshape(6 * 28, 6 * 28)
    ax.imshow(grid, cmap="gray")
    ax.set_title(f"{kind}: decoded z ~ N(0, I)")
    ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# The same comparison in numbers: `Run.score` (or `dgm score RUN_DIR`) draws samples from each
# model and compares them with the test images in the feature space of an MNIST classifier that
# ships with dgm, beside a floor (real training images) and a ceiling (independent pixels with
# the training mean). Lower FID is better; a two-sample classifier's accuracy of 0.5 means it
# cannot tell samples from test images.

# %%
for kind, run in runs.items():
    report = run.score(n=1000)
    m, lo, hi = report.model, report.floor, report.ceiling
    print(
        f"{kind:>3}: FID {m['fid']:7.1f} (floor {lo['fid']:.1f}, ceiling {hi['fid']:.1f}); "
        f"two-sample accuracy {m['c2st_accuracy']:.3f} (floor {lo['c2st_accuracy']:.3f}, "
        f"ceiling {hi['c2st_accuracy']:.3f})"
    )

# %% [markdown]
# The autoencoder is the better compressor and the worse generator. Adding the noise and the KL
# term, the two things that separate the VAE from it, is what makes the prior meaningful.
