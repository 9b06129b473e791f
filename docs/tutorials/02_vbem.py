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
# # The deep generative model and VB-EM
#
# To model images better, the lecture puts a neural network $T_\theta$ between $z$ and $x$:
#
# $$p_\theta(x, z) = p(x \mid T_\theta(z))\, p(z), \qquad p(z) = \mathcal{N}(z; 0, I).$$
#
# The price is the E-step: the posterior $p_\theta(z \mid x)$ and the expectation of
# $\ln p_\theta(x, z)$ under it have no closed form any more. **VB-EM** replaces the exact
# posterior by a simple $q_\phi(z \mid x)$ and maximizes the evidence lower bound
#
# $$\mathcal{L}(x; \theta, \phi)
#   = \mathbb{E}_{q_\phi(z \mid x)}[\ln p_\theta(x \mid z)]
#     - \mathrm{KL}(q_\phi(z \mid x) \,\|\, p(z))
#   = \ln p_\theta(x) - \mathrm{KL}(q_\phi(z \mid x) \,\|\, p_\theta(z \mid x))
#   \le \ln p_\theta(x)$$
#
# over both $\theta$ and $\phi$. With a diagonal Gaussian
# $q_\phi(z \mid x) = \mathcal{N}(z; \lambda, \mathrm{diag}(\eta^2))$ the KL term is a closed form;
# the expected log-likelihood is estimated with samples $z = \lambda + \eta \odot \epsilon$,
# $\epsilon \sim \mathcal{N}(0, I)$ (the reparameterization trick, the subject of the
# [third tutorial](../03_gradients/)), and $\lambda, \eta$ come from an encoder network (the
# amortization of the [fourth](../04_amortization/)).
#
# Here we compose the four pieces by hand (a model, a variational family, a bound and a gradient
# estimator), train on 10,000 binarized MNIST images for a few epochs, and check that the ELBO
# sits below $\ln p(x)$.

# %%
import matplotlib.pyplot as plt
import torch

import dgm

torch.manual_seed(0)
data = dgm.load_data({"data": {"train_limit": 10000, "test_limit": 300}})
d, D = 10, data.x_train.shape[1]  # latent and data dimensions
model = dgm.DeepLatentModel(  # p(z) = N(0, I), p(x | z) = Bernoulli(decoder(z))
    dgm.StandardNormalPrior(d), dgm.MLP(d, [200], D), dgm.BernoulliLikelihood(), D
)
model.init_output_bias(data.x_train.mean(0))  # start p(x | z) at the mean image
posterior = dgm.GaussianEncoder(dgm.MLP(D, [200], 2 * d), latent_dim=d)  # q(z | x)
estimator = dgm.Reparameterized(dgm.ELBO(kl="analytic"), k=1)
optimizer = torch.optim.Adam([*model.parameters(), *posterior.parameters()], lr=1e-3)
generator = torch.Generator().manual_seed(0)
batches = dgm.TensorBatches(data.x_train, 100, True, "dynamic", generator)

history = []  # per epoch: the ELBO and its two terms, averaged over the training images
for epoch in range(8):
    sums = torch.zeros(3)
    for x, index in batches:
        est = estimator(model, posterior(x, index), x)  # one z per image
        loss = -est.surrogate.mean()  # its value is -ELBO, its gradient the estimator's
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sums += torch.stack([est.bound.sum(), est.log_lik.sum(), est.kl.sum()]).detach()
    history.append((sums / len(data.x_train)).tolist())
    print(
        f"epoch {epoch + 1}: ELBO {history[-1][0]:8.2f} = E_q[ln p(x|z)] "
        f"{history[-1][1]:8.2f} - KL {history[-1][2]:6.2f}"
    )

# %%
history = torch.tensor(history)
epochs = range(1, len(history) + 1)
fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
axes[0].plot(epochs, history[:, 0], marker="o", label="ELBO")
axes[0].plot(epochs, history[:, 1], marker=".", label="E_q[ln p(x | z)]")
axes[0].set_xlabel("epoch")
axes[0].set_ylabel("nats per image")
axes[0].legend()
axes[0].set_title("training: the bound and its likelihood term")
axes[1].plot(epochs, history[:, 2], marker="o", color="C2")
axes[1].set_xlabel("epoch")
axes[1].set_title("KL(q(z | x) || p(z))")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Samples
#
# The model generates by ancestral sampling: $z \sim p(z)$, then $x \sim p(x \mid z)$. We show the
# means of $p(x \mid z)$, the pixel probabilities, which are easier to look at than binary draws.

# %%
model.eval()
torch.manual_seed(1)
with torch.no_grad():
    z, p_x = model.sample(32)
images = p_x.mean.reshape(4, 8, 28, 28).permute(0, 2, 1, 3).reshape(4 * 28, 8 * 28)
plt.figure(figsize=(8, 4))
plt.imshow(images, cmap="gray")
plt.axis("off")
plt.title("means of p(x | z), z ~ p(z), after a few epochs")
plt.show()

# %% [markdown]
# ## The ELBO is below $\ln p(x)$
#
# $\ln p(x) = \ln \mathbb{E}_{q(z \mid x)}[p(x, z) / q(z \mid x)]$ is estimated by importance
# sampling with $k$ samples from $q$,
#
# $$\widehat{\ln p}(x) = \ln \frac{1}{k} \sum_{i=1}^{k} \frac{p(x, z_i)}{q(z_i \mid x)},
#   \qquad z_i \sim q(z \mid x),$$
#
# a stochastic lower bound that rises towards $\ln p(x)$ as $k$ grows (Burda et al. 2015), while
# the average of the log-weights themselves estimates the ELBO. The gap between the two is
# $\mathrm{KL}(q \,\|\, p(z \mid x))$: how far the Gaussian $q$ is from the true posterior.

# %%
x_test = data.x_test  # 300 test images, binarized once with a fixed seed
estimates = {}
for k in (1, 10, 100, 1000):
    torch.manual_seed(2)
    estimates[k] = dgm.importance_log_likelihood(model, posterior, x_test, k=k)
    s = estimates[k].summary()
    print(
        f"k = {k:4d}: ln p(x) >= {s['log_likelihood']:8.2f} ± {s['log_likelihood_stderr']:.2f}"
        f"   (ELBO from the same draws {s['elbo']:8.2f} ± {s['elbo_stderr']:.2f})"
    )
top = estimates[1000]
gap = (top.log_likelihood - top.elbo).double()
print(
    f"ln p(x) - ELBO at k = 1000: {gap.mean().item():.2f} nats per image on average; "
    f"positive for {(gap > 0).double().mean().item():.0%} of the test images"
)

# %%
ks = list(estimates)
ll = [estimates[k].summary()["log_likelihood"] for k in ks]
plt.figure(figsize=(5, 3.2))
plt.semilogx(ks, ll, marker="o", label="importance-sampled ln p(x)")
plt.axhline(estimates[1000].summary()["elbo"], color="k", ls="--", label="ELBO")
plt.xlabel("k, samples per image")
plt.ylabel("nats per test image")
plt.legend()
plt.title("a tighter estimate with more samples")
plt.show()

# %% [markdown]
# The same run from the command line is `dgm train --epochs 8 --latent-dim 10 --hidden 200
# --train-limit 10000` (dgm's defaults are a larger model and the full training set), and its
# importance-sampled $\ln p(x)$ is `dgm eval RUN_DIR --k 1000`; from Python, `dgm.fit(config)`
# trains it and `run.evaluate(k=1000)` evaluates it.
