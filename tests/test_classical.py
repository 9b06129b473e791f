"""PPCA and the Gaussian mixture against closed forms, identities and scikit-learn (float64)."""

import math
import re

import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture as SklearnGaussianMixture
from torch.distributions import MultivariateNormal

from dgm.errors import DGMError
from dgm.evaluate import importance_log_likelihood
from dgm.models import PPCA, GaussianMixture
from dgm.models.gmm import m_step
from dgm.models.ppca import sample_moments

f64 = torch.float64


def ppca_data(n: int = 1000, D: int = 6, q: int = 2, noise: float = 1.0, seed: int = 0):
    """x = W z + mu + noise eps with signal std 3 down to 2 against noise std 1."""
    g = torch.Generator().manual_seed(seed)
    W = torch.linalg.qr(torch.randn(D, q, generator=g, dtype=f64))[0]  # orthonormal columns
    W = W * torch.linspace(3.0, 2.0, q, dtype=f64)  # (D, q)
    z = torch.randn(n, q, generator=g, dtype=f64)
    eps = torch.randn(n, D, generator=g, dtype=f64)
    return z @ W.T + 2.0 + noise * eps  # (n, D)


def gmm_data(n: int = 1500, seed: int = 0):
    """Three well-separated, anisotropic clusters in 2-D with weights (0.5, 0.3, 0.2)."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.tensor([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]], dtype=f64)
    A = torch.tensor(
        [[[1.0, 0.0], [0.6, 0.5]], [[0.5, 0.0], [0.0, 1.5]], [[1.0, 0.0], [-0.8, 0.7]]]
    )
    z = torch.multinomial(torch.tensor([0.5, 0.3, 0.2]), n, replacement=True, generator=g)
    eps = torch.randn(n, 2, generator=g, dtype=f64)
    return mu[z] + (A.to(f64)[z] @ eps[:, :, None])[..., 0]  # (n, 2)


# ---------------------------------------------------------------------------------------- PPCA


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ppca_em_never_decreases_the_log_likelihood(seed):
    x = ppca_data(seed=seed)
    _, history = PPCA.fit_em(x, 2, max_iter=200, tol=0.0, seed=seed)
    steps = torch.tensor(history, dtype=f64).diff()
    # Each entry is a sum of O(D) float64 terms of size ~10: roundoff ~1e-14, far below 1e-10.
    assert (steps >= -1e-10).all() and history[-1] > history[0] + 1.0


def test_ppca_em_fixed_point_is_the_closed_form():
    x = ppca_data()
    exact = PPCA.fit_closed_form(x, 2)
    em, history = PPCA.fit_em(x, 2, max_iter=5000, tol=1e-13, seed=3)
    assert len(history) < 5000  # converged by the tolerance, not the cap
    ll = exact.average_log_likelihood(x)
    # The ML is a maximum: EM approaches it from below; at a gain < 1e-13 per step and a linear
    # rate the remaining gap is far below 1e-9 nats.
    assert ll - 1e-9 < history[-1] <= ll + 1e-10
    # The log-likelihood is quadratic near its maximum, so a gap g leaves parameter errors of
    # order sqrt(g) ~ 3e-5 (curvature O(1) here): W W^T (rotation-free) and sigma^2 within 1e-3.
    assert torch.allclose(em.W @ em.W.T, exact.W @ exact.W.T, atol=1e-3, rtol=0)
    assert abs(em.sigma2.item() - exact.sigma2.item()) < 1e-3
    assert torch.allclose(em.mu, exact.mu, atol=1e-12, rtol=0)


def test_ppca_closed_form_equals_sklearn_pca_score_samples():
    x = ppca_data(n=500, D=8, q=3)
    n = x.shape[0]
    model = PPCA.fit_closed_form(x, 3)
    # sklearn estimates the covariance with 1/(n - 1), the ML with 1/n. Shrinking the data about
    # its mean by sqrt((n - 1)/n) makes sklearn's covariance our S exactly, hence the same model.
    x_bar = x.mean(0)
    y = x_bar + math.sqrt((n - 1) / n) * (x - x_bar)
    pca = PCA(n_components=3).fit(y.numpy())
    expected = torch.from_numpy(pca.score_samples(x.numpy()))
    # Same float64 formula evaluated two ways (Woodbury vs dense precision): ~1e-12 apart.
    assert torch.allclose(model.log_prob(x), expected, atol=1e-9, rtol=0)
    # And sklearn on x itself (the unbiased covariance) is not the ML: strictly lower on x.
    unbiased = PCA(n_components=3).fit(x.numpy()).score(x.numpy())
    assert unbiased < model.average_log_likelihood(x) - 1e-6


def test_ppca_log_joint_is_marginal_times_posterior_for_any_z():
    x = ppca_data(n=50)
    model = PPCA.fit_closed_form(x, 2)
    z = 3.0 * torch.randn(7, 50, 2, dtype=f64)  # arbitrary z, far from the posterior too
    lhs = model.log_joint(x, z)  # (7, 50)
    rhs = model.log_prob(x) + model.posterior(x).log_prob(z)  # (50,) + (7, 50)
    # An exact identity; values ~ -100, float64 roundoff ~1e-13.
    assert lhs.shape == (7, 50) and torch.allclose(lhs, rhs, atol=1e-10, rtol=0)


def test_ppca_log_prob_equals_the_dense_gaussian_and_the_moment_formula():
    x = ppca_data(n=300)
    model = PPCA.fit_closed_form(x, 2)
    model.mu += 0.3  # away from the sample mean, so the mean term of the moment formula counts
    cov = model.W @ model.W.T + model.sigma2 * torch.eye(6, dtype=f64)
    dense = MultivariateNormal(model.mu, covariance_matrix=cov).log_prob(x)
    assert torch.allclose(model.log_prob(x), dense, atol=1e-10, rtol=0)
    from_moments = model.average_log_likelihood_from_moments(*sample_moments(x, chunk_size=64))
    assert from_moments == pytest.approx(dense.mean().item(), abs=1e-10)
    assert model.average_log_likelihood(x, chunk_size=64) == pytest.approx(dense.mean().item())


def test_ppca_samples_have_the_model_mean_and_covariance():
    model = PPCA.fit_closed_form(ppca_data(n=400, D=4), 2)
    n = 200_000
    z, p_x = model.sample(n)
    x = p_x.sample()  # (n, D)
    assert z.shape == (n, 2) and x.shape == (n, 4)
    C = model.W @ model.W.T + model.sigma2 * torch.eye(4, dtype=f64)
    xc = x - model.mu
    # Standard errors of a Gaussian's sample mean (sqrt(C_ii / n)) and of the sample second
    # moment about the true mean (sqrt((C_ii C_jj + C_ij^2) / n)); 4 of them.
    se_mean = (C.diagonal() / n).sqrt()
    assert ((xc.mean(0)).abs() < 4 * se_mean).all()
    se_cov = ((C.diagonal()[:, None] * C.diagonal()[None, :] + C.square()) / n).sqrt()
    assert ((xc.T @ xc / n - C).abs() < 4 * se_cov).all()


def test_ppca_exact_posterior_makes_importance_sampling_exact():
    x = ppca_data(n=20)
    model = PPCA.fit_closed_form(x, 2)
    # With q = p(z | x), every weight p(x, z) / q(z | x) equals p(x): any k gives log p(x).
    est = importance_log_likelihood(model, model.posterior, x, k=4, batch_size=8)
    assert torch.allclose(est.log_likelihood, model.log_prob(x), atol=1e-10, rtol=0)
    assert torch.allclose(est.elbo, model.log_prob(x), atol=1e-10, rtol=0)


def test_ppca_refuses_data_with_no_noise_left():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 2, generator=g, dtype=f64) @ torch.randn(2, 5, generator=g, dtype=f64)
    with pytest.raises(DGMError, match="span at most 2 dimensions"):
        PPCA.fit_closed_form(x, 2)


# ----------------------------------------------------------------------------------------- GMM


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_gmm_em_never_decreases_the_log_likelihood(covariance_type, init):
    x = gmm_data(n=600)
    # Four components for three clusters: EM has real work to do after the k-means start.
    _, history = GaussianMixture.fit_em(
        x, 4, covariance_type, max_iter=60, tol=0.0, seed=1, init=init, lloyd_iter=1
    )
    steps = torch.tensor(history, dtype=f64).diff()
    # Sums of 600 float64 terms of size ~5, divided by 600: roundoff ~1e-14.
    assert len(history) == 61 and (steps >= -1e-10).all()


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_gmm_matches_sklearn(covariance_type):
    x = gmm_data()
    sk = SklearnGaussianMixture(
        3, covariance_type=covariance_type, tol=1e-10, max_iter=500, random_state=0
    ).fit(x.numpy())
    # Our log p(x) at sklearn's parameters is sklearn's score_samples (same formula, float64).
    ours_at_sk = GaussianMixture.from_covariances(
        torch.from_numpy(sk.weights_),
        torch.from_numpy(sk.means_),
        torch.from_numpy(sk.covariances_),
        covariance_type,
    )
    expected = torch.from_numpy(sk.score_samples(x.numpy()))
    assert torch.allclose(ours_at_sk.log_prob(x), expected, atol=1e-10, rtol=0)
    assert torch.allclose(ours_at_sk.distribution().log_prob(x), expected, atol=1e-10, rtol=0)
    # Fitted independently, both reach the same maximum of well-separated data. Both stop when a
    # step gains < 1e-10; EM converges linearly here, so each is within ~1e-9 of the fixed point.
    model, history = GaussianMixture.fit_em(x, 3, covariance_type, tol=1e-10, max_iter=500)
    assert history[-1] == pytest.approx(sk.score(x.numpy()), abs=1e-7)
    assert history[-1] == pytest.approx(model.log_prob(x).mean().item(), abs=1e-12)


def test_gmm_responsibilities_are_the_posterior_over_components():
    x = gmm_data(n=200)
    model, _ = GaussianMixture.fit_em(x, 3, max_iter=5)
    resp = model.responsibilities(x)  # (B, K)
    assert torch.allclose(resp.sum(-1), torch.ones(200, dtype=f64), atol=1e-12, rtol=0)
    z = torch.arange(3)[:, None].expand(3, 200)  # (K, B): every component for every example
    bayes = (model.log_joint(x, z) - model.log_prob(x)).exp().T  # p(z) p(x|z) / p(x), (B, K)
    assert torch.allclose(resp, bayes, atol=1e-12, rtol=0)
    assert torch.allclose(model.log_prob(x, chunk_size=7), model.log_prob(x), atol=1e-12, rtol=0)


def test_gmm_fit_does_not_depend_on_the_chunk_size():
    x = gmm_data(n=300)
    a, ha = GaussianMixture.fit_em(x, 3, max_iter=10, tol=0.0)
    b, hb = GaussianMixture.fit_em(x, 3, max_iter=10, tol=0.0, chunk_size=17)
    # Only the summation order differs: float64 roundoff.
    assert torch.allclose(torch.tensor(ha), torch.tensor(hb), atol=1e-10, rtol=0)
    assert torch.allclose(a.scale_tril, b.scale_tril, atol=1e-9, rtol=0)


def test_gmm_samples_follow_the_weights_and_means():
    model, _ = GaussianMixture.fit_em(gmm_data(n=500), 3, max_iter=5)
    n = 100_000
    z, x = model.sample(n, generator=torch.Generator().manual_seed(0))
    pi = model.weights
    # Binomial standard error of each frequency: sqrt(pi (1 - pi) / n); 4 of them.
    freq = torch.bincount(z, minlength=3) / n
    assert ((freq - pi).abs() < 4 * (pi * (1 - pi) / n).sqrt()).all()
    for k in range(3):  # component means within 4 standard errors sqrt(Sigma_k,ii / n_k)
        se = (model.covariances()[k].diagonal() / (z == k).sum()).sqrt()
        assert ((x[z == k].mean(0) - model.means[k]).abs() < 4 * se).all()


def suggested_reg_covar(message: str) -> float:
    return float(re.search(r"--set model\.reg_covar=(\S+)\)", message).group(1))


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_gmm_constant_coordinate_is_a_clear_error_and_the_hint_fixes_it(covariance_type):
    x = gmm_data(n=300)
    x = torch.cat([x, torch.full((300, 1), 5.0, dtype=f64)], 1)  # a constant pixel
    with pytest.raises(DGMError) as info:
        GaussianMixture.fit_em(x, 3, covariance_type, reg_covar=0.0)
    message = str(info.value)
    assert "\n" not in message
    assert re.match(
        r"GMM component \d has a singular covariance at initialization \(reg_covar = 0, ", message
    )
    model, history = GaussianMixture.fit_em(
        x, 3, covariance_type, reg_covar=suggested_reg_covar(message)
    )
    assert math.isfinite(history[-1])


def test_gmm_duplicated_points_name_their_component():
    x = gmm_data(n=300)
    pile = torch.tensor([30.0, -30.0], dtype=f64)
    x = torch.cat([x, pile.expand(20, 2)])  # 20 copies of one far point: a zero covariance
    with pytest.raises(DGMError, match="singular covariance") as info:
        GaussianMixture.fit_em(x, 4, reg_covar=0.0)
    model, _ = GaussianMixture.fit_em(x, 4, reg_covar=suggested_reg_covar(str(info.value)))
    # The same seed gives the same start, so the named component is the one holding the pile.
    k = int((model.means - pile).norm(dim=-1).argmin())
    assert str(info.value).startswith(f"GMM component {k} ")
    assert torch.allclose(model.means[k], pile) and model.weights[k] * 320 == pytest.approx(20)


def test_gmm_empty_component_and_too_few_points_are_clear_errors():
    x = gmm_data(n=50)
    resp = torch.zeros(50, 3, dtype=f64)
    resp[:, 0], resp[:25, 1], resp[:25, 0] = 1.0, 1.0, 0.0  # component 2 holds nothing
    with pytest.raises(DGMError, match=r"GMM component 2 is empty at EM iteration 7"):
        m_step(x, resp, "full", 1e-6, 7, 16)
    with pytest.raises(DGMError, match="fewer than 3 distinct points"):
        GaussianMixture.fit_em(torch.ones(10, 2, dtype=f64).cumsum(0) % 2, 3)
