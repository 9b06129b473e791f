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
# # Tighter bounds and flow posteriors
#
# The lecture ends with ways to improve on the VAE, and the first is better inference: the ELBO
# is $\ln p(x)$ minus $\mathrm{KL}(q \,\|\, p(z \mid x))$, so a $q$ closer to the true posterior,
# or a bound that forgives a poor $q$, trains a better model. Two of them are here:
#
# - the **importance-weighted bound** (IWAE, Burda et al. 2015) averages $K$ importance weights
#   $w_k = p(x, z_k) / q(z_k \mid x)$ *inside* the logarithm,
#
#   $$\mathcal{L}_K(x) = \mathbb{E}\Big[\ln \frac{1}{K} \sum_{k=1}^{K} w_k\Big],
#     \qquad \mathcal{L}_1 = \text{ELBO} \le \mathcal{L}_K \le \mathcal{L}_{K+1}
#     \le \ln p(x),$$
#
#   and tends to $\ln p(x)$ as $K$ grows;
# - a **normalizing flow** pushes the Gaussian's sample through invertible maps,
#   $z_L = f_L \circ \dots \circ f_1(z_0)$, whose density is known by the change of variables,
#   $\ln q(z_L) = \ln q_0(z_0) - \sum_l \ln \lvert \det \partial f_l / \partial z_{l-1} \rvert$,
#   so that $q$ can take shapes a Gaussian cannot (Rezende and Mohamed 2015; Kingma et al. 2016).
#
# Both are checked here on models whose $\ln p(x)$ is known.

# %%
import math

import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.distributions import Independent, Normal

import dgm
from dgm.variational import FlowEncoder, build_flow_steps

torch.manual_seed(0)

# %% [markdown]
# ## The IWAE bound on a linear-Gaussian model
#
# A linear-Gaussian model, $p(z) = \mathcal{N}(0, I)$ and
# $p(x \mid z) = \mathcal{N}(Wz + \mu, \sigma^2 I)$, is PPCA: its $\ln p(x)$ and its posterior
# are closed forms (`dgm.PPCA`). We choose a $W$ whose columns are nearly parallel, so that the
# posterior of $z$ is strongly correlated, and take as $q$ the best *diagonal* Gaussian (the
# posterior's mean, and the variances $1 / \Lambda_{ii}$ from its precision $\Lambda$), which
# cannot be exact.

# %%
W = torch.tensor([[1.0, 0.9], [1.0, 1.1], [0.5, 0.4], [1.0, 1.0]], dtype=torch.float64)
model = dgm.PPCA(W, torch.zeros(4, dtype=torch.float64), 0.1)
x = model.marginal().sample((50,))  # (50, 4): data from the model itself
exact = model.log_prob(x)  # (50,) the exact ln p(x)
post = model.posterior(x)  # the exact p(z | x), a full-covariance Gaussian
q = Independent(Normal(post.mean, post.precision_matrix.diagonal(dim1=-2, dim2=-1).rsqrt()), 1)
corr = post.covariance_matrix[0, 0, 1] / post.covariance_matrix[0].diagonal().prod().sqrt()
print(f"posterior correlation of z_1 and z_2: {corr.item():.3f}")

bounds = {}
for K in (1, 2, 5, 10, 100, 1000):
    R = {1: 1000, 2: 1000, 5: 1000, 10: 1000, 100: 200, 1000: 20}[K]  # replicates of the bound
    z = q.sample((K * R,))  # (K R, 50, 2)
    log_w = model.log_joint(x, z) - q.log_prob(z)  # (K R, 50)
    per_rep = dgm.iwae(log_w.reshape(K, R * 50)).reshape(R, 50).mean(1)  # (R,) the bound
    bounds[K] = (per_rep.mean().item(), per_rep.std().item() / math.sqrt(R))
print(f"exact ln p(x), averaged over the 50 points: {exact.mean().item():.4f}")
for K, (b, se) in bounds.items():
    print(
        f"K = {K:4d}: IWAE bound {b:.4f} ± {se:.4f}   (ln p(x) - bound = "
        f"{exact.mean().item() - b:.4f})"
    )
z = post.sample((1000,))
log_w = model.log_joint(x, z) - post.log_prob(z)
print(
    f"with q = the exact posterior every log-weight is ln p(x): largest deviation "
    f"{(log_w - exact).abs().max().item():.1e}"
)

# %%
Ks = list(bounds)
means = [bounds[K][0] for K in Ks]
errs = [4 * bounds[K][1] for K in Ks]
plt.figure(figsize=(5.5, 3.3))
plt.errorbar(Ks, means, yerr=errs, marker="o", capsize=3, label="IWAE bound (± 4 s.e.)")
plt.axhline(exact.mean().item(), color="k", ls="--", label="exact ln p(x)")
plt.xscale("log")
plt.xlabel("K")
plt.ylabel("nats, averaged over the points")
plt.legend()
plt.title("K = 1 is the ELBO; the bound rises with K")
plt.show()

# %% [markdown]
# Training on $\mathcal{L}_K$ instead of the ELBO is `--objective iwae --k K` (`objective.bound =
# "iwae"`); `--estimator dreg` gives its gradient with lower variance for the encoder (Tucker et
# al. 2018). With $K = 1$ the two objectives are the same.
#
# ## A flow posterior on a curved posterior
#
# Now a nonlinear model with a two-dimensional $z$ and one observed number,
#
# $$p(z) = \mathcal{N}(0, I), \qquad p(x \mid z) = \mathcal{N}(x;\, z_2 + z_1^2,\, 0.3^2),$$
#
# observed at $x = 1$. The posterior is a banana along the parabola $z_2 = 1 - z_1^2$. In two
# dimensions $\ln p(x)$ can be computed on a grid, so we know exactly how far each bound is from
# it. We fit two posteriors by maximizing the ELBO (reparameterized, $K = 32$, the KL by
# Monte Carlo): the lecture's per-datapoint Gaussian $\mathcal{N}(\lambda, \mathrm{diag}(\eta^2))$
# (`dgm.LocalGaussian`, one row for our one observation), and an inverse autoregressive flow of
# four steps on a Gaussian (`FlowEncoder`).


# %%
class Banana(nn.Module):
    """The decoder: z (..., 2) -> the mean of p(x | z), (..., 1)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z[..., 1:] + z[..., :1] ** 2


banana = dgm.DeepLatentModel(dgm.StandardNormalPrior(2), Banana(), dgm.GaussianLikelihood(0.3), 1)
x_obs = torch.tensor([[1.0]])  # (1, 1): one observation
index = torch.tensor([0])

# ln p(x) on a grid: the integral of p(x, z) over z
side = torch.linspace(-4, 4, 801)
grid = torch.cartesian_prod(side, side)  # (801^2, 2): (z_1, z_2)
log_joint = banana.log_joint(x_obs, grid[:, None, :])[:, 0]  # (801^2,)
cell = (side[1] - side[0]) ** 2
log_px = (torch.logsumexp(log_joint, 0) + cell.log()).item()
print(f"ln p(x = 1) by quadrature: {log_px:.4f}")

posteriors = {
    "Gaussian": dgm.LocalGaussian(1, 2, sparse=False),  # (lambda, log eta): one row, d = 2
    # a trunk x -> h (32 units), q_0 from h, then 4 IAF steps that read h too
    "IAF flow, 4 steps": FlowEncoder(
        dgm.MLP(1, [32], 32), 32, 2, build_flow_steps("iaf", 4, 2, 32)
    ),
}
learning_rates = {"Gaussian": 1e-2, "IAF flow, 4 steps": 3e-3}
estimator = dgm.Reparameterized(dgm.ELBO(kl="mc"), k=32)
for name, posterior in posteriors.items():
    torch.manual_seed(1)
    optimizer = torch.optim.Adam(posterior.parameters(), lr=learning_rates[name])
    for _ in range(1000):  # Adam steps on the ELBO
        loss = -estimator(banana, posterior(x_obs, index), x_obs).surrogate.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

results = {}
for name, posterior in posteriors.items():
    torch.manual_seed(2)
    elbo = dgm.importance_log_likelihood(banana, posterior, x_obs, k=100000).elbo.item()
    iwae_100 = (
        torch.stack(
            [
                dgm.importance_log_likelihood(banana, posterior, x_obs, k=100).log_likelihood
                for _ in range(200)
            ]
        )
        .mean()
        .item()
    )
    results[name] = (elbo, iwae_100)
    print(
        f"{name:<18}: ELBO {elbo:.4f} (ln p(x) - ELBO = KL(q || p(z|x)) = {log_px - elbo:.4f});"
        f" IWAE bound, K = 100: {iwae_100:.4f}"
    )

# %%
posterior_density = (log_joint - log_px).exp().reshape(801, 801).T  # rows: z_2, columns: z_1
levels = posterior_density.max() * torch.tensor([0.05, 0.2, 0.4, 0.6, 0.8])
fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=True)
for ax, (name, posterior) in zip(axes, posteriors.items(), strict=True):
    with torch.no_grad():
        z = posterior(x_obs, index).rsample((2000,))[:, 0]  # (2000, 2)
    ax.contour(side, side, posterior_density, levels=levels, colors="k", linewidths=0.8)
    ax.scatter(z[:, 0], z[:, 1], s=2, alpha=0.4, color="C1" if "flow" in name else "C0")
    elbo, _ = results[name]
    ax.set_title(f"{name}: KL(q || p(z|x)) = {log_px - elbo:.3f}")
    ax.set_xlim(-2.5, 2.5)
    ax.set_ylim(-3, 1.8)
    ax.set_xlabel("z_1")
axes[0].set_ylabel("z_2")
fig.suptitle("samples of q over the contours of the true posterior")
plt.tight_layout()
plt.show()

# %% [markdown]
# The Gaussian can only cover the middle of the banana, and pays for it in KL; the flow bends with
# it, and its ELBO comes much closer to $\ln p(x)$. The IWAE bound tightens both, and more so the
# poorer proposal. On MNIST the same choices are configuration: `--posterior iaf:4` (or
# `planar:L`, `radial:L`, `sylvester:L`) for the flow, amortized by the encoder, and
# `--objective iwae --k K` for the bound; see [Models and methods](../../guide/models/).
