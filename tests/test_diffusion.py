"""Forward process, parameterisations and loss against float64 NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxdiff.core import diffusion, schedules

TABLES = {name: schedules.make_tables(schedules.make_betas(name, 1000)) for name in ("linear", "cosine")}


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(sorted(TABLES)), t=st.integers(0, 999), seed=st.integers(0, 2**31 - 1))
def test_eps_x0_v_round_trip(name, t, seed):
    tab = TABLES[name]
    rng = np.random.default_rng(seed)
    x0 = jnp.asarray(rng.uniform(-1, 1, (2, 4, 4, 1)), jnp.float32)
    eps = jnp.asarray(rng.standard_normal((2, 4, 4, 1)), jnp.float32)
    tt = jnp.full((2,), t)
    xt = diffusion.q_sample(tab, x0, tt, eps)
    v = diffusion.v_from_x0_eps(tab, x0, tt, eps)
    for target, out in (("eps", eps), ("x0", x0), ("v", v)):
        x0_hat, eps_hat = diffusion.x0_eps_from_output(tab, xt, tt, out, target)
        # Converting through x0 at t where sqrt(abar) is tiny amplifies float32 rounding: compare in
        # the well-conditioned direction for each quantity.
        np.testing.assert_allclose(diffusion.q_sample(tab, x0_hat, tt, eps_hat), xt, atol=2e-5)
        if tab.alphas_cumprod[t] > 1e-2:
            np.testing.assert_allclose(x0_hat, x0, atol=5e-4)
        if tab.alphas_cumprod[t] < 0.99:
            np.testing.assert_allclose(eps_hat, eps, atol=5e-4)


def test_q_sample_matches_float64_reference():
    tab = TABLES["linear"]
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (5, 3, 3, 2))
    eps = rng.standard_normal(x0.shape)
    t = np.array([0, 1, 499, 998, 999])
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[t][:, None, None, None]
    ref = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps
    out = diffusion.q_sample(tab, jnp.asarray(x0, jnp.float32), jnp.asarray(t), jnp.asarray(eps, jnp.float32))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("t", [0, 100, 999])
def test_q_sample_mean_and_variance_statistically(t):
    tab = TABLES["cosine"]
    n = 40000
    x0 = jnp.full((n, 1, 1, 1), 0.7)
    noise = jax.random.normal(jax.random.key(t), x0.shape)
    xt = np.asarray(diffusion.q_sample(tab, x0, jnp.full((n,), t), noise), np.float64).ravel()
    mean, var = np.sqrt(tab.alphas_cumprod[t]) * 0.7, 1 - tab.alphas_cumprod[t]
    assert abs(xt.mean() - mean) < 5 * np.sqrt(var / n)
    assert abs(xt.var() / var - 1) < 5 * np.sqrt(2 / n)


def test_posterior_and_reverse_variances():
    tab = TABLES["linear"]
    x0, xt, t = jnp.ones((1, 1, 1, 1)), jnp.zeros((1, 1, 1, 1)), jnp.array([10])
    mean, var, logvar = diffusion.q_posterior(tab, x0, xt, t)
    np.testing.assert_allclose(mean.ravel(), tab.posterior_mean_coef_x0[10], rtol=1e-6)
    np.testing.assert_allclose(var.ravel(), tab.posterior_variance[10], rtol=1e-6)
    large = diffusion.reverse_log_variance(tab, "fixed_large")
    np.testing.assert_allclose(large[1:], np.log(tab.betas[1:]))
    assert large[0] == np.log(tab.posterior_variance[1])
    with pytest.raises(ValueError, match="fixed_medium"):
        diffusion.reverse_log_variance(tab, "fixed_medium")


def test_clip_x0_recomputes_consistent_eps():
    tab = TABLES["linear"]
    xt = jnp.full((1, 2, 2, 1), 3.0)
    t = jnp.array([5])
    x0, eps = diffusion.x0_eps_from_output(tab, xt, t, jnp.zeros_like(xt), "eps", clip_x0=True)
    assert float(jnp.max(jnp.abs(x0))) <= 1.0
    np.testing.assert_allclose(diffusion.q_sample(tab, x0, t, eps), xt, rtol=1e-5)


@pytest.mark.parametrize("target", diffusion.TARGETS)
def test_min_snr_weights(target):
    tab = TABLES["linear"]
    t = jnp.array([0, 300, 999])
    s = tab.alphas_cumprod[[0, 300, 999]] / (1 - tab.alphas_cumprod[[0, 300, 999]])
    ref = {"eps": np.minimum(s, 5) / s, "x0": np.minimum(s, 5), "v": np.minimum(s, 5) / (s + 1)}[target]
    np.testing.assert_allclose(diffusion.loss_weight(tab, t, target, "min_snr", 5.0), ref, rtol=1e-5)
    np.testing.assert_array_equal(diffusion.loss_weight(tab, t, target, "none"), 1.0)


def test_loss_of_zero_predictor_is_target_second_moment():
    tab = TABLES["linear"]
    x0 = jnp.zeros((512, 4, 4, 1))
    loss, per_example = diffusion.diffusion_loss(lambda x, t: jnp.zeros_like(x), tab, x0, jax.random.key(0))
    assert per_example.shape == (512,)
    assert abs(float(loss) - 1.0) < 0.05  # E[eps^2] = 1
