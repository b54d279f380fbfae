"""Consistency models (iCT, ECT, sCT) against the closed forms of Gaussian data (GUIDE section 14.5).

For ``x0 ~ N(mu, s^2 I)`` the consistency function, the probability-flow ODE's map to the data, is linear:
on ``x = x0 + sigma z`` it is ``f(x, sigma) = mu + s (x - mu) / sqrt(s^2 + sigma^2)`` (the ODE maps
``x_sigma`` to ``x_sigma' = mu + sqrt(s^2 + sigma'^2) / sqrt(s^2 + sigma^2) (x - mu)``); on the interpolant
it is ``x - t u(x, 0, t)``; on TrigFlow ``x_t = cos t x0 + sin t z`` (``z ~ N(0, sd^2)``) it is
``mu + (s / v_t)(x - cos t mu)``, ``v_t^2 = cos^2 t s^2 + sin^2 t sd^2``. Each family's parameterisation,
fed the network that makes ``f`` exact, must be constant along the ODE, sample the data in 1, 2 and 4
steps, and (sCT) give a zero tangent; the training levels are checked against NumPy references.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.core import consistency, processes, trigflow
from jaxdiff.core.family import NETWORK_TIME_SCALE
from jaxdiff.core.sampler import run_sampler
from jaxdiff.core.sampler_registry import make_sampler
from tests.test_meanflow import exact_u

MU, STD = 0.3, 0.5  # tests.test_meanflow's Gaussian, whose exact average velocity is exact_u
SHAPE = (2, 2, 1)
SD = 0.5  # sigma_data
col = lambda v, x: processes.expand_to(v, x)  # noqa: E731


def f_ve(x, sigma):
    return MU + STD * (x - MU) / jnp.sqrt(STD ** 2 + col(sigma, x) ** 2)


def ode_ve(x, sigma, to):
    return MU + jnp.sqrt(STD ** 2 + to ** 2) / jnp.sqrt(STD ** 2 + sigma ** 2) * (x - MU)


def exact_consistency_net(x_in, c_noise):
    """The EDM network ``F`` that makes :func:`consistency.consistency`'s ``f`` exact: ``(f - c_skip x) / c_out``."""
    sigma = jnp.exp(4.0 * c_noise)
    c_skip, c_out, c_in, _ = consistency.boundary_preconditioning(sigma, SD, 0.002)
    x = x_in / col(c_in, x_in)
    return jnp.where(col(c_out, x) > 0, (f_ve(x, sigma) - col(c_skip, x) * x) / col(jnp.maximum(c_out, 1e-12), x), 0.0)


def exact_flow_net(x, t_in):
    """The flow network whose ``f = x - t v`` is the exact map to the data: ``v = u(x, 0, t)``."""
    t = t_in / NETWORK_TIME_SCALE
    return exact_u(x, jnp.zeros_like(t), t)


def f_trig(x, t, mu=MU):
    v = jnp.sqrt(jnp.cos(t) ** 2 * STD ** 2 + jnp.sin(t) ** 2 * SD ** 2)
    return mu + col(STD / v, x) * (x - col(jnp.cos(t), x) * mu)


def exact_trig_net(x_scaled, t_in, mu=MU):
    """TrigFlow's ``F(x / sd, c(t))`` with ``cos t x - sin t sd F = f`` exact."""
    t = t_in / trigflow.TIME_SCALE
    x = SD * x_scaled
    return (col(jnp.cos(t), x) * x - f_trig(x, t, mu)) / col(jnp.sin(t) * SD, x)


def test_the_consistency_function_is_constant_along_the_ode_at_every_ict_discretisation():
    """The family's ``f`` (its boundary preconditioning around the exact ``F``) at ``x`` and at the ODE's
    image of ``x`` one level down agree, for iCT's level pairs at 11, 81 and 1281 levels."""
    family = consistency.consistency()
    x0 = jnp.linspace(-1.0, 1.5, 64).reshape(64, 1, 1, 1)
    for n in (11, 81, 1281):
        i = jnp.linspace(1, n - 1, 64).round()
        hi = consistency.karras_level(i + 1, n, 0.002, 80.0, 7.0)
        lo = consistency.karras_level(i, n, 0.002, 80.0, 7.0)
        x = x0 + col(hi, x0) * 0.7
        f_hi = family.predict(exact_consistency_net, x, hi, 1.0, col(hi, x))[0]
        f_lo = family.predict(exact_consistency_net, ode_ve(x, col(hi, x), col(lo, x)), lo, 1.0, col(lo, x))[0]
        np.testing.assert_allclose(f_hi, f_lo, atol=2e-5)
        np.testing.assert_allclose(f_hi, f_ve(x, hi), atol=2e-5)


def test_the_boundary_condition_holds_for_any_network():
    """``f(x, sigma_min) = x`` whatever ``F`` is (c_skip = 1, c_out = 0), and the flow form's ``f(x, 0) = x``."""
    x = jax.random.normal(jax.random.PRNGKey(0), (4, *SHAPE))
    anything = lambda x_in, t_in: 3.0 + x_in ** 2  # noqa: E731
    at_min = consistency.consistency().predict(anything, x, 0.002, 1.0, 0.002)[0]
    np.testing.assert_allclose(at_min, x, atol=1e-6)
    flow = consistency.consistency_flow()
    np.testing.assert_allclose(flow.jump(anything, x, 0.0, 0.0, jax.random.PRNGKey(1))[1], x, atol=1e-6)


@pytest.mark.parametrize("family, net", [("consistency", exact_consistency_net), ("consistency_flow", exact_flow_net),
                                         ("scm", exact_trig_net)])
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_multistep_consistency_sampling_with_the_exact_function_samples_the_data(family, net, steps):
    fam = {"consistency": consistency.consistency, "consistency_flow": consistency.consistency_flow,
           "scm": trigflow.trigflow}[family]()
    sampler = make_sampler(fam, "jump", steps, clip_x0=False)
    assert sampler.evaluations == steps
    key = jax.random.PRNGKey(steps)
    x_T = sampler.prior_scale * jax.random.normal(key, (40_000, *SHAPE))
    out = np.asarray(run_sampler(sampler, net, x_T, jax.random.fold_in(key, 1)).samples, np.float64)
    # one step from the prior: the prior is sigma_max z, not x0 + sigma_max z (and TrigFlow's cos t_max x0
    # is left out), which biases the mean by about mu s / sigma_max: below 0.01 relative
    assert abs(out.mean() - MU) < 0.01 and abs(out.std() / STD - 1) < 0.01, (out.mean(), out.std())


def test_a_wrong_boundary_preconditioning_breaks_the_boundary_condition():
    """The boundary test fails on a wrong formula: EDM's unshifted c_skip and c_out give ``f(x, sigma_min) != x``."""
    x = jax.random.normal(jax.random.PRNGKey(0), (4, *SHAPE))
    edm = processes.edm_preconditioning(jnp.float32(0.002), SD)
    wrong = edm.c_skip * x + edm.c_out * (3.0 + (edm.c_in * x) ** 2)
    assert float(jnp.max(jnp.abs(wrong - x))) > 1e-3


def test_ict_curriculum_and_level_distribution_match_numpy():
    """``N(k) = min(s0 2^floor(k / K'), s1) + 1``, and the drawn pairs are adjacent Karras levels with
    frequencies ``erf((ln s_{i+1} - Pm) / (sqrt 2 Ps)) - erf((ln s_i - Pm) / (sqrt 2 Ps))``, normalised."""
    assert [int(consistency.ict_discretisation(jnp.int32(k), 100)) for k in (0, 99, 100, 250, 10**6)] == \
        [11, 11, 21, 41, 1281]
    n = 11
    hi, lo = consistency.ict_levels(jax.random.PRNGKey(0), 200_000, jnp.int32(n))
    ref = processes.karras_sigmas(n, 0.002, 80.0, 7.0)[:-1][::-1]  # increasing
    i = np.searchsorted(ref, np.asarray(lo) * (1 - 1e-6))
    np.testing.assert_allclose(np.asarray(lo), ref[i], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(hi), ref[i + 1], rtol=1e-5)
    erf = np.vectorize(math.erf)
    p = erf((np.log(ref[1:]) + 1.1) / (np.sqrt(2) * 2.0)) - erf((np.log(ref[:-1]) + 1.1) / (np.sqrt(2) * 2.0))
    freq = np.bincount(i, minlength=n - 1) / len(i)
    np.testing.assert_allclose(freq, p / p.sum(), atol=4e-3)


def test_ect_pairs_match_the_papers_ratio_and_halve_their_gap_each_stage():
    t, r = consistency.ect_levels(jax.random.PRNGKey(0), 4096, 0.0)
    t64 = np.asarray(t, np.float64)
    ref = np.maximum(t64 * (1 - 2.0 ** -1 * (1 + 8 / (1 + np.exp(t64)))), 0.0)
    np.testing.assert_allclose(np.asarray(r), ref, rtol=1e-5, atol=1e-7)
    _, r3 = consistency.ect_levels(jax.random.PRNGKey(0), 4096, 3.0)
    gap0, gap3 = t64 - np.asarray(r), t64 - np.asarray(r3)
    big = t64 > 5  # where the ratio is not clipped at 0
    np.testing.assert_allclose(gap3[big] / gap0[big], 2.0 ** -3, rtol=1e-3)


def test_the_ct_loss_is_zero_when_both_levels_are_the_data_and_huber_is_the_papers():
    x = jnp.ones((3, *SHAPE))
    d = consistency.pseudo_huber(x, 0.0)
    np.testing.assert_allclose(d, 2.0, rtol=1e-6)  # the L2 norm of four ones
    np.testing.assert_allclose(consistency.pseudo_huber(x, 1.0), np.sqrt(5.0) - 1.0, rtol=1e-6)
    family = consistency.consistency(huber_c=0.0)
    per_example = family.loss(lambda x_in, t_in: jnp.zeros_like(x_in), x, jnp.array([[0.002, 0.0]] * 3),
                              jnp.zeros_like(x))[1]
    np.testing.assert_allclose(per_example, 0.0, atol=1e-6)  # f(x0, sigma_min) = x0 = the target at r = 0


def test_the_sct_tangent_vanishes_for_the_exact_network_and_not_for_a_wrong_one():
    """``g = cos(t) df/dt`` along the data's ODE: zero for the exact ``F`` (to float32 precision), not
    for the exact ``F`` of another mean; and the JVP agrees with a central finite difference."""
    key = jax.random.PRNGKey(0)
    x0 = MU + STD * jax.random.normal(key, (256, *SHAPE))
    z = SD * jax.random.normal(jax.random.fold_in(key, 1), x0.shape)
    t = jnp.linspace(0.1, 1.5, 256)
    c, s = col(jnp.cos(t), x0), col(jnp.sin(t), x0)
    x_t = c * x0 + s * z
    # the data's conditional velocity averages to the ODE's: use the exact ODE velocity as dx/dt
    v = lambda x, t: col(-jnp.sin(t), x) * MU + (x - col(jnp.cos(t), x) * MU) * col(  # noqa: E731
        jnp.cos(t) * jnp.sin(t) * (SD ** 2 - STD ** 2) / (jnp.cos(t) ** 2 * STD ** 2 + jnp.sin(t) ** 2 * SD ** 2), x)
    F = lambda xs, tt: exact_trig_net(xs, trigflow.TIME_SCALE * tt)  # noqa: E731
    _, g = trigflow.trigflow_tangent(F, x_t, t, v(x_t, t), SD, 1.0)
    assert float(jnp.max(jnp.abs(g))) < 1e-4
    wrong = lambda xs, tt: exact_trig_net(xs, trigflow.TIME_SCALE * tt, mu=MU + 0.2)  # noqa: E731
    _, g_wrong = trigflow.trigflow_tangent(wrong, x_t, t, v(x_t, t), SD, 1.0)
    assert float(jnp.max(jnp.abs(g_wrong))) > 1e-2
    # the JVP: cos t sin t dF/dt against a central difference of F along (dx/dt / sd, 1)
    h = 1e-3
    dxs = v(x_t, t) / SD
    fd = (F(x_t / SD + h * dxs, t + h) - F(x_t / SD - h * dxs, t - h)) / (2 * h)
    _, jvp = jax.jvp(F, (x_t / SD, t), (dxs, jnp.ones_like(t)))
    np.testing.assert_allclose(jvp, fd, rtol=2e-2, atol=2e-2)


def test_sct_training_times_and_warmup():
    family = trigflow.trigflow(warmup_steps=100)
    x0 = jnp.zeros((20_000, *SHAPE))
    time, noise = family.draw(jax.random.PRNGKey(0), x0, jnp.int32(25))
    t = np.asarray(time[:, 0], np.float64)
    assert np.all((t > 0) & (t < np.pi / 2)) and np.allclose(time[:, 1], 0.25)
    tau = np.log(SD * np.tan(t))  # t = arctan(exp(tau) / sd)
    assert abs(tau.mean() + 1.0) < 0.03 and abs(tau.std() - 1.4) < 0.03
    assert float(family.draw(jax.random.PRNGKey(0), x0, jnp.int32(500))[0][0, 1]) == 1.0
