"""The discrete DDPM chain's own samplers, over table rows (the step from abar ``a = abar_t`` to
``a' = abar_{t'}``):

  ddpm           ancestral on the (re)spaced chain: ``beta' = 1 - a / a'``,
                 ``x' = mu~(x0_hat, x_t) + sigma z``, sigma^2 = ``beta' (1 - a') / (1 - a)`` (fixed_small)
                 or ``beta'`` (fixed_large); with all T steps this is DDPM, otherwise improved-diffusion's
                 respacing (recomputed betas over the subsequence).
  ddim           ``x' = sqrt(a') x0_hat + sqrt(1 - a' - sigma^2) eps_hat + sigma z``,
                 ``sigma = eta sqrt((1 - a') / (1 - a)) sqrt(1 - a / a')``; no noise on the last step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.core import diffusion
from jaxdiff.core.sampler import DenoiseFn, SampleOutput, Sampler, run_sampler
from jaxdiff.core.schedules import DiffusionTables


def _abar_pairs(tables: DiffusionTables, timesteps: np.ndarray, final_abar: float):
    """float64 ``(abar_t, abar_next)`` per position; ``abar_next`` of the last position is ``final_abar``."""
    abar = tables.alphas_cumprod[timesteps]
    return abar, np.append(abar[1:], final_abar)


def final_alpha_cumprod(tables: DiffusionTables, set_alpha_to_one: bool) -> float:
    """The ``abar`` the last step goes to: 1 (``set_alpha_to_one``) or ``abar_0`` (diffusers' option)."""
    return 1.0 if set_alpha_to_one else float(tables.alphas_cumprod[0])


def _f32(a) -> jax.Array:
    return jnp.asarray(np.asarray(a, np.float64), jnp.float32)


def _check_timesteps(timesteps, num_timesteps: int) -> np.ndarray:
    timesteps = np.asarray(timesteps, np.int32)
    if (timesteps.ndim != 1 or len(timesteps) == 0 or np.any(np.diff(timesteps) >= 0)
            or timesteps[0] >= num_timesteps or timesteps[-1] < 0):
        raise ValueError(f"sampler timesteps must be a non-empty strictly decreasing sequence in [0, {num_timesteps})")
    return timesteps


# --------------------------------------------------------------------------- samplers

def ddpm_sampler(tables: DiffusionTables, timesteps, target: str = "eps",
                 variance: str = "fixed_small", clip_x0: bool = True) -> Sampler:
    """Ancestral sampling on the chain respaced to ``timesteps`` (all T: plain DDPM).

    With ``a = abar_t``, ``a' = abar`` of the next visited step (1 after the last) and
    ``beta' = 1 - a / a'`` (improved-diffusion's recomputed betas):
    ``x' = beta' sqrt(a') / (1 - a) x0_hat + (1 - a') sqrt(1 - beta') / (1 - a) x_t + sigma z`` with
    ``sigma^2 = beta' (1 - a') / (1 - a)`` (fixed_small) or ``beta'`` (fixed_large); no noise on the last step.
    """
    if variance not in diffusion.VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(diffusion.VARIANCES)}")
    timesteps = _check_timesteps(timesteps, tables.num_timesteps)
    a, a_next = _abar_pairs(tables, timesteps, 1.0)
    beta = 1.0 - a / a_next
    var = beta * (1.0 - a_next) / (1.0 - a) if variance == "fixed_small" else beta.copy()
    var[-1] = 0.0  # no noise on the last step
    coef_x0 = _f32(beta * np.sqrt(a_next) / (1.0 - a))
    coef_xt = _f32((1.0 - a_next) * np.sqrt(1.0 - beta) / (1.0 - a))
    std = _f32(np.sqrt(var))
    ts = jnp.asarray(timesteps)

    def step(net, x, i, key, state):
        t = jnp.full((x.shape[0],), ts[i], jnp.int32)
        x0, _ = diffusion.x0_eps_from_output(tables, x, t, net(x, t), target, clip_x0)
        noise = jax.random.normal(key, x.shape, x.dtype)
        return coef_x0[i] * x0 + coef_xt[i] * x + std[i] * noise, x0, state

    return Sampler(timesteps, step, sigma_to_input=functools.partial(diffusion.table_index_at, tables))


def ddim_sampler(tables: DiffusionTables, timesteps, target: str = "eps", eta: float = 0.0,
                 clip_x0: bool = True, set_alpha_to_one: bool = True) -> Sampler:
    """DDIM (Song et al. 2021, eq. 12) over ``timesteps``; the previous step is the next entry of the
    sequence itself (not ``t - T // S``).

    ``x' = sqrt(a') x0_hat + sqrt(1 - a' - sigma^2) eps_hat + sigma z``,
    ``sigma = eta sqrt((1 - a') / (1 - a)) sqrt(1 - a / a')``; ``eps_hat`` is recomputed from the
    clipped ``x0_hat`` when ``clip_x0``; ``sigma = 0`` on the last step. ``eta = 0`` is deterministic in
    ``x_T``; ``eta = 1`` over all T steps is DDPM with fixed-small variance. For ``eta > 1`` the
    direction coefficient is clamped at 0.
    """
    if not eta >= 0:
        raise ValueError(f"eta must be non-negative, got {eta}")
    timesteps = _check_timesteps(timesteps, tables.num_timesteps)
    a, a_next = _abar_pairs(tables, timesteps, final_alpha_cumprod(tables, set_alpha_to_one))
    sigma = eta * np.sqrt((1.0 - a_next) / (1.0 - a)) * np.sqrt(np.maximum(1.0 - a / a_next, 0.0))
    sigma[-1] = 0.0
    c_x0 = _f32(np.sqrt(a_next))
    c_eps = _f32(np.sqrt(np.maximum(1.0 - a_next - sigma ** 2, 0.0)))
    c_z = _f32(sigma)
    ts = jnp.asarray(timesteps)

    def step(net, x, i, key, state):
        t = jnp.full((x.shape[0],), ts[i], jnp.int32)
        x0, eps = diffusion.x0_eps_from_output(tables, x, t, net(x, t), target, clip_x0)
        noise = jax.random.normal(key, x.shape, x.dtype)
        return c_x0[i] * x0 + c_eps[i] * eps + c_z[i] * noise, x0, state

    return Sampler(timesteps, step, sigma_to_input=functools.partial(diffusion.table_index_at, tables))


def ddpm_sample(denoise_fn: DenoiseFn, tables: DiffusionTables, x_T: jax.Array, key: jax.Array,
                target: str = "eps", variance: str = "fixed_small", clip_x0: bool = True,
                trajectory_every: int = 0) -> SampleOutput:
    """DDPM ancestral sampling over all T steps, from ``x_T`` (usually ``N(0, I)``)."""
    timesteps = np.arange(tables.num_timesteps - 1, -1, -1)
    return run_sampler(ddpm_sampler(tables, timesteps, target, variance, clip_x0), denoise_fn,
                       x_T, key, trajectory_every)
