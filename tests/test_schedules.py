"""Schedule maths: hypothesis properties and golden comparisons with independent float64 NumPy."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxdiff.core import schedules

T_ = st.integers(min_value=2, max_value=2000)


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(schedules.SCHEDULES), T=T_)
def test_betas_in_open_unit_interval_and_alpha_bar_decreasing(name, T):
    betas = schedules.make_betas(name, T)
    assert betas.dtype == np.float64 and betas.shape == (T,)
    assert np.all(betas > 0) and np.all(betas < 1)
    tab = schedules.make_tables(betas)
    abar = tab.alphas_cumprod
    assert np.all(abar > 0) and np.all(abar <= 1)
    assert np.all(np.diff(abar) < 0)
    assert tab.alphas_cumprod_prev[0] == 1.0


@settings(max_examples=20, deadline=None)
@given(T=st.integers(min_value=10, max_value=4000))
def test_cosine_matches_formula_and_is_capped(T):
    betas = schedules.cosine_betas(T)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    expected = [min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)]
    # 1 - f(i+1)/f(i) cancels for small betas: ~1e-16 absolute error in the ratio is ~1e-11 relative.
    np.testing.assert_allclose(betas, expected, rtol=1e-9, atol=0)
    assert betas.max() == 0.999 and betas[-1] == 0.999  # abar(1) = 0 would give beta = 1


def test_linear_is_ddpm_and_scaled_variant():
    np.testing.assert_array_equal(schedules.make_betas("linear", 1000), np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(schedules.linear_betas(250, scale_to_t=True), np.linspace(4e-4, 0.08, 250))


def test_sigmoid_variants_are_different_named_schedules():
    geo = schedules.make_betas("sigmoid_geodiff", 1000)
    np.testing.assert_allclose(geo, 1 / (1 + np.exp(-np.linspace(-6, 6, 1000))) * (0.02 - 1e-4) + 1e-4)
    abar = schedules.make_tables(schedules.make_betas("sigmoid_abar", 1000)).alphas_cumprod
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    u = np.arange(1, 1001) / 1000
    ref = (sig(3) - sig(u * 6 - 3)) / (sig(3) - sig(-3))
    np.testing.assert_allclose(abar[:-1], ref[:-1], rtol=1e-9)  # the last beta is capped


def _reference_tables(betas):
    """An independent, loop-based float64 computation of the posterior from Gaussian conditioning:
    q(x_{t-1}|x_t,x_0) ∝ N(x_t; sqrt(a_t) x_{t-1}, b_t) N(x_{t-1}; sqrt(abar_{t-1}) x_0, 1-abar_{t-1})."""
    abar, prod = [], 1.0
    for b in betas:
        prod *= 1.0 - b
        abar.append(prod)
    coef_x0, coef_xt, var = [], [], []
    for i, b in enumerate(betas):
        ap = abar[i - 1] if i > 0 else 1.0
        a = 1.0 - b
        if i == 0:  # x_{t-1} = x_0 exactly
            coef_x0.append(1.0), coef_xt.append(0.0), var.append(0.0)
            continue
        precision = a / b + 1.0 / (1.0 - ap)
        var.append(1.0 / precision)
        coef_xt.append(math.sqrt(a) / b / precision)
        coef_x0.append(math.sqrt(ap) / (1.0 - ap) / precision)
    return np.array(abar), np.array(coef_x0), np.array(coef_xt), np.array(var)


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(schedules.SCHEDULES), T=st.integers(min_value=2, max_value=300))
def test_posterior_equals_independent_gaussian_conditioning(name, T):
    betas = schedules.make_betas(name, T)
    tab = schedules.make_tables(betas)
    abar, c0, ct, var = _reference_tables(betas)
    np.testing.assert_allclose(tab.alphas_cumprod, abar, rtol=1e-12)
    np.testing.assert_allclose(tab.posterior_mean_coef_x0, c0, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(tab.posterior_mean_coef_xt, ct, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(tab.posterior_variance, var, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(tab.posterior_log_variance_clipped[1:], np.log(var[1:]), rtol=1e-12)
    assert tab.posterior_log_variance_clipped[0] == tab.posterior_log_variance_clipped[1]


def test_bad_schedule_inputs():
    with pytest.raises(ValueError, match="unknown schedule 'quadratic'"):
        schedules.make_betas("quadratic", 10)
    with pytest.raises(ValueError, match="num_timesteps must be positive"):
        schedules.make_betas("linear", 0)
    for bad in ([0.5, 1.5], [1.0, 0.5], [0.0, 0.5]):
        with pytest.raises(ValueError, match=r"in \(0, 1\)"):
            schedules.make_tables(np.array(bad))
    assert schedules.make_tables(np.array([0.5, 1.0])).alphas_cumprod[-1] == 0  # zero terminal SNR is allowed
