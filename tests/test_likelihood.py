"""Bits/dim: the discretised decoder, the KL terms against float64 NumPy, and the analytic Gaussian
model against its closed-form bound."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats

from jaxdiff.core import diffusion, likelihood, schedules

GRID = np.arange(256) / 127.5 - 1.0


# ----------------------------------------------------------------------------- decoder and KL


@settings(max_examples=25, deadline=None)
@given(mean=st.floats(-1.5, 1.5), log_scale=st.floats(math.log(1e-3), math.log(3.0)))
def test_decoder_masses_sum_to_one(mean, log_scale):
    logp = likelihood.discretized_gaussian_log_likelihood(jnp.asarray(GRID, jnp.float32), mean, log_scale)
    assert np.all(np.isfinite(np.asarray(logp)))
    assert abs(float(jnp.sum(jnp.exp(logp))) - 1.0) < 2e-4


def _decoder_reference(x, mean, scale):
    """float64 SciPy: log mass of the bin of x, edge bins open."""
    plus, minus = (x - mean + 1 / 255) / scale, (x - mean - 1 / 255) / scale
    mid = np.where(minus > 0, np.log(stats.norm.sf(minus) - stats.norm.sf(plus)),
                   np.log(stats.norm.cdf(plus) - stats.norm.cdf(minus)))
    return np.where(x < -0.999, stats.norm.logcdf(plus), np.where(x > 0.999, stats.norm.logsf(minus), mid))


def test_decoder_matches_scipy():
    rng = np.random.default_rng(0)
    x = GRID[rng.integers(0, 256, 2000)]
    x[:20], x[20:40] = -1.0, 1.0
    mean = x + rng.normal(0, 0.05, x.shape)
    scale = np.exp(rng.uniform(np.log(3e-3), np.log(0.3), x.shape))
    ours = likelihood.discretized_gaussian_log_likelihood(jnp.asarray(x, jnp.float32), jnp.asarray(mean, jnp.float32),
                                                          jnp.asarray(np.log(scale), jnp.float32))
    with np.errstate(divide="ignore"):
        ref = _decoder_reference(x, mean, scale)
    ours = np.asarray(ours)
    assert np.all(np.isfinite(ours)) and np.all(ours <= 0)
    ok = np.isfinite(ref)  # float64 differences of CDFs underflow far in the tails; ours do not
    assert ok.mean() > 0.9
    np.testing.assert_allclose(ours[ok], ref[ok], rtol=2e-3, atol=2e-3)


@settings(max_examples=30, deadline=None)
@given(m1=st.floats(-3, 3), m2=st.floats(-3, 3), lv1=st.floats(-8, 2), lv2=st.floats(-8, 2))
def test_normal_kl_matches_numpy(m1, m2, lv1, lv2):
    v1, v2 = np.exp(lv1), np.exp(lv2)
    ref = 0.5 * (np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1.0)
    ours = float(likelihood.normal_kl(jnp.float32(m1), jnp.float32(lv1), jnp.float32(m2), jnp.float32(lv2)))
    assert ours >= -1e-5
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- analytic Gaussian data

MU, S = 0.1, 0.5  # data x0 ~ N(MU, S^2 I)
SHAPE = (4, 4, 1)  # D = 16


@pytest.fixture(scope="module")
def tables():
    return schedules.make_tables(schedules.linear_betas(40, scale_to_t=True))  # T=40, abar_T ~ 1e-5


def analytic_eps_apply(tables):
    """The optimal eps predictor for Gaussian data: sqrt(1-abar)(x_t - sqrt(abar) mu)/(abar s^2 + 1 - abar)."""
    def apply(params, x, t):
        del params
        abar = diffusion.extract(tables.alphas_cumprod, t, x.ndim)
        return jnp.sqrt(1 - abar) * (x - jnp.sqrt(abar) * MU) / (abar * S ** 2 + 1 - abar)
    return apply


def numpy_terms(tables, x0, noises, variance):
    """float64 NumPy L_T and L_i (i = 0..T-1) per image for the analytic model, given the noise draws."""
    ab, abp, betas = tables.alphas_cumprod, tables.alphas_cumprod_prev, tables.betas
    post_var = betas * (1 - abp) / (1 - ab)
    model_var = post_var.copy() if variance == "fixed_small" else betas.copy()
    model_var[0] = post_var[1]  # both conventions use the t=2 posterior variance at t=1
    axes = tuple(range(1, x0.ndim))
    prior = np.sum(0.5 * (-1 - np.log(1 - ab[-1]) + (1 - ab[-1]) + ab[-1] * x0 ** 2), axis=axes)
    terms = []
    for i in range(len(betas)):
        xt = np.sqrt(ab[i]) * x0 + np.sqrt(1 - ab[i]) * noises[i]
        eps = np.sqrt(1 - ab[i]) * (xt - np.sqrt(ab[i]) * MU) / (ab[i] * S ** 2 + 1 - ab[i])
        x0_hat = (xt - np.sqrt(1 - ab[i]) * eps) / np.sqrt(ab[i])
        c0, ct = betas[i] * np.sqrt(abp[i]) / (1 - ab[i]), (1 - abp[i]) * np.sqrt(1 - betas[i]) / (1 - ab[i])
        model_mean = c0 * x0_hat + ct * xt
        if i == 0:
            terms.append(-np.sum(_decoder_reference(x0, model_mean, np.sqrt(model_var[0])), axis=axes))
        else:
            q_mean, q_var = c0 * x0 + ct * xt, betas[i] * (1 - abp[i]) / (1 - ab[i])
            kl = 0.5 * (np.log(model_var[i] / q_var) + (q_var + (q_mean - model_mean) ** 2) / model_var[i] - 1)
            terms.append(np.sum(kl, axis=axes))
    return prior, np.stack(terms)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_bound_terms_match_numpy_float64(tables, variance):
    """Every term the compiled scan returns equals an independent float64 NumPy computation on the
    same images and noise draws (noise i = normal(fold_in(key, i)))."""
    rng = np.random.default_rng(1)
    x0 = GRID[np.clip(np.rint((rng.normal(MU, S, (6,) + SHAPE) + 1) * 127.5), 0, 255).astype(int)]
    key = jax.random.PRNGKey(3)
    bpd_fn = likelihood.make_bpd_fn(analytic_eps_apply(tables), tables, "eps", variance)
    out = jax.device_get(bpd_fn(None, jnp.asarray(x0, jnp.float32), key))
    noises = [np.asarray(jax.random.normal(jax.random.fold_in(key, i), x0.shape, jnp.float32), np.float64)
              for i in range(tables.num_timesteps)]
    prior, terms = numpy_terms(tables, x0, noises, variance)
    nats = np.prod(SHAPE) * math.log(2)
    np.testing.assert_allclose(out.prior * nats, prior, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.terms * nats, terms, rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(out.bpd, (prior + terms.sum(0)) / nats, rtol=2e-4)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_analytic_gaussian_bound_matches_closed_form(tables, variance):
    """For continuous x0 ~ N(mu, s^2) and the optimal predictor, E[L_T] and every E[L_{t-1}], t >= 2,
    have closed forms: with q(x_{t-1}|x_t,x0) = N(c0 x0 + ct x_t, vq) and the model mean
    c0 E[x0|x_t] + ct x_t, E[KL] = 0.5 (log(vp/vq) + vq/vp - 1 + c0^2 Var[x0|x_t] / vp) per dim,
    Var[x0|x_t] = s^2 (1 - abar) / (abar s^2 + 1 - abar). The Monte Carlo bound agrees within its error."""
    ab, abp, betas = tables.alphas_cumprod, tables.alphas_cumprod_prev, tables.betas
    vq = tables.posterior_variance[1:]
    vp = np.exp(diffusion.reverse_log_variance(tables, variance))[1:]
    c0 = (betas * np.sqrt(abp) / (1 - ab))[1:]
    post_var = (S ** 2 * (1 - ab) / (ab * S ** 2 + 1 - ab))[1:]
    d = np.prod(SHAPE)
    expected_kl = d * 0.5 * (np.log(vp / vq) + vq / vp - 1 + c0 ** 2 * post_var / vp)
    expected_prior = d * 0.5 * (-1 - np.log(1 - ab[-1]) + (1 - ab[-1]) + ab[-1] * (MU ** 2 + S ** 2))

    x0 = np.random.default_rng(2).normal(MU, S, (4000,) + SHAPE).astype(np.float32)
    bpd_fn = likelihood.make_bpd_fn(analytic_eps_apply(tables), tables, "eps", variance)
    out = jax.device_get(bpd_fn(None, jnp.asarray(x0), jax.random.PRNGKey(4)))
    nats = d * math.log(2)
    kl_sum = (out.terms[1:].sum(0) + out.prior) * nats  # per image, nats
    expected = expected_kl.sum() + expected_prior
    stderr = kl_sum.std() / math.sqrt(len(kl_sum))
    assert abs(kl_sum.mean() - expected) < 5 * stderr + 1e-3 * expected, (kl_sum.mean(), expected, stderr)
    # per term too (each is a mean over 4000 images)
    per_t = out.terms[1:] * nats
    err = per_t.std(axis=1) / math.sqrt(per_t.shape[1])
    assert np.all(np.abs(per_t.mean(axis=1) - expected_kl) < 5 * err + 1e-3 * expected_kl + 1e-6)


def test_bad_names_fail_before_tracing(tables):
    with pytest.raises(ValueError, match="variance"):
        likelihood.make_bpd_fn(analytic_eps_apply(tables), tables, "eps", "learned")
    with pytest.raises(ValueError, match="target"):
        likelihood.make_bpd_fn(analytic_eps_apply(tables), tables, "score", "fixed_small")

# The trained-vs-untrained U-Net comparison lives in tests/test_evaluate.py, on the checkpoint that
# its --mode=eval test trains (one compiled U-Net for both).
