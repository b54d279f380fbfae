"""The DDPM ancestral sampler core: no noise at the last step, keys used, trajectory layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.core import ddpm_chain, schedules

TABLES = schedules.make_tables(schedules.make_betas("linear", 20, 1e-3, 0.2))


def _denoise(x, t):
    return 0.3 * x + 0.01 * t[:, None, None, None].astype(jnp.float32)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_last_step_adds_no_noise_but_others_do(variance):
    sampler = ddpm_chain.ddpm_sampler(TABLES, np.arange(19, -1, -1), "eps", variance, clip_x0=True)
    step = sampler.step  # step(net, x, position, key, state); position 19 is t = 0, position 14 is t = 5
    x = jax.random.normal(jax.random.key(0), (4, 3, 3, 1))
    out_a, _, _ = step(_denoise, x, 19, jax.random.key(1), ())
    out_b, _, _ = step(_denoise, x, 19, jax.random.key(2), ())
    np.testing.assert_array_equal(out_a, out_b)
    out_c, _, _ = step(_denoise, x, 14, jax.random.key(1), ())
    out_d, _, _ = step(_denoise, x, 14, jax.random.key(2), ())
    assert not np.allclose(out_c, out_d)


def test_sampler_visits_every_timestep_once_in_order():
    seen = []

    def denoise(x, t):
        jax.debug.callback(lambda tt: seen.append(int(tt[0])), t)
        return jnp.zeros_like(x)

    x_T = jnp.zeros((2, 2, 2, 1))
    out = ddpm_chain.ddpm_sample(denoise, TABLES, x_T, jax.random.key(0), trajectory_every=5)
    jax.block_until_ready(out.samples)
    assert seen == list(range(19, -1, -1))  # t = T-1 ... 0: never T, never skipping 0
    assert out.trajectory_xt.shape == (5, 2, 2, 2, 1)  # steps 0, 5, 10, 15 and the final sample
    assert list(out.trajectory_t) == [19, 14, 9, 4, -1]
    np.testing.assert_array_equal(out.trajectory_xt[0], x_T)
    np.testing.assert_array_equal(out.trajectory_xt[-1], out.samples)


def test_same_key_same_samples_different_key_different_samples():
    x_T = jax.random.normal(jax.random.key(0), (2, 2, 2, 1))
    a = ddpm_chain.ddpm_sample(_denoise, TABLES, x_T, jax.random.key(1)).samples
    b = ddpm_chain.ddpm_sample(_denoise, TABLES, x_T, jax.random.key(1)).samples
    c = ddpm_chain.ddpm_sample(_denoise, TABLES, x_T, jax.random.key(2)).samples
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
