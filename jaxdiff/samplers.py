"""Reverse-process samplers, each one compiled ``jax.lax.scan`` over reversed timesteps.

A sampler is a *step function* ``step(x_t, t, t_prev, key, model_out) -> (x_prev, x0_hat)`` plus the
descending timestep sequence it walks; :func:`run_sampler` scans it. The network enters only through
``denoise_fn(x, t) -> output`` (an eps, x0 or v prediction, see ``target``), so guidance or any other
wrapper composes in front of every sampler.

Keys: step ``i`` of the scan draws its noise from ``fold_in(key, i)``; nothing falls back to a fixed key.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import diffusion
from jaxdiff.schedules import DiffusionTables

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]


class SampleOutput(NamedTuple):
    """Final samples ``[B, H, W, C]`` and, if asked for, the trajectory: the input ``x_t`` of every
    k-th step with the ``x0`` predicted from it (each ``[num_frames, B, H, W, C]``, first frame the
    pure noise, last frame the final sample twice), and the table timesteps ``t`` (-1 for the end)."""

    samples: jax.Array
    trajectory_xt: jax.Array | None = None
    trajectory_x0: jax.Array | None = None
    trajectory_t: np.ndarray | None = None


def ddpm_step(tables: DiffusionTables, target: str, variance: str = "fixed_small",
              clip_x0: bool = True):
    """Ancestral DDPM step: ``x_{t-1} = mu~(x0_hat, x_t) + exp(0.5 log var) z``, no noise at t=0.

    ``x0_hat`` comes from the network output (clipped to [-1, 1] with ``clip_x0``); ``mu~`` is the
    posterior mean of q(x_{t-1} | x_t, x0_hat); ``var`` is fixed-small or fixed-large.
    """
    log_var = diffusion.reverse_log_variance(tables, variance)

    def step(x, t, t_prev, key, out):
        del t_prev  # DDPM always steps to t - 1.
        tb = jnp.full((x.shape[0],), t)
        x0, _ = diffusion.x0_eps_from_output(tables, x, tb, out, target, clip_x0)
        mean, _, _ = diffusion.q_posterior(tables, x0, x, tb)
        noise = jax.random.normal(key, x.shape, x.dtype)
        std = jnp.where(t > 0, jnp.exp(0.5 * diffusion.extract(log_var, tb, x.ndim)), 0.0)
        return mean + std * noise, x0

    return step


def run_sampler(step_fn, denoise_fn: DenoiseFn, timesteps: np.ndarray, x_T: jax.Array,
                key: jax.Array, trajectory_every: int = 0) -> SampleOutput:
    """Scan ``step_fn`` over the descending ``timesteps`` starting from ``x_T``.

    ``timesteps[i]`` is the current table index and ``timesteps[i + 1]`` (or -1 after the last) the
    one stepped to. With ``trajectory_every = k > 0`` every k-th ``(x_t, x0_hat)`` is returned too.
    """
    timesteps = np.asarray(timesteps, np.int32)
    if timesteps.ndim != 1 or len(timesteps) == 0 or np.any(np.diff(timesteps) >= 0):
        raise ValueError("sampler timesteps must be a non-empty strictly decreasing sequence")
    prev = np.append(timesteps[1:], -1).astype(np.int32)

    def body(x, inputs):
        i, t, t_prev = inputs
        out = denoise_fn(x, jnp.full((x.shape[0],), t, jnp.int32))
        x_prev, x0 = step_fn(x, t, t_prev, jax.random.fold_in(key, i), out)
        return x_prev, (x, x0) if trajectory_every else None

    xs = (jnp.arange(len(timesteps)), jnp.asarray(timesteps), jnp.asarray(prev))
    final, traj = jax.lax.scan(body, x_T, xs)
    if not trajectory_every:
        return SampleOutput(final)
    keep = np.arange(0, len(timesteps), trajectory_every)
    return SampleOutput(final,
                        jnp.concatenate([traj[0][keep], final[None]]),
                        jnp.concatenate([traj[1][keep], final[None]]),
                        np.append(timesteps[keep], -1))


def guided_denoise_fn(apply_fn, labels: jax.Array | None, guidance_scale: float,
                      null_label: int) -> DenoiseFn:
    """Classifier-free guidance: ``out = out_uncond + w (out_cond - out_uncond)``.

    ``apply_fn(x, t, y)`` is the network. ``labels=None`` samples unconditionally (null label);
    ``w = 1`` is plain conditional sampling. Both branches run in one batched call of size ``2B``.
    """
    if labels is None:
        return lambda x, t: apply_fn(x, t, jnp.full((x.shape[0],), null_label, jnp.int32))
    if guidance_scale == 1.0:
        return lambda x, t: apply_fn(x, t, labels)

    def fn(x, t):
        y = jnp.concatenate([labels, jnp.full_like(labels, null_label)])
        out = apply_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), y)
        cond, uncond = jnp.split(out, 2)
        return uncond + guidance_scale * (cond - uncond)

    return fn


def ddpm_sample(denoise_fn: DenoiseFn, tables: DiffusionTables, x_T: jax.Array, key: jax.Array,
                target: str = "eps", variance: str = "fixed_small", clip_x0: bool = True,
                trajectory_every: int = 0) -> SampleOutput:
    """DDPM ancestral sampling over all T steps, from ``x_T`` (usually ``N(0, I)``)."""
    timesteps = np.arange(tables.num_timesteps - 1, -1, -1)
    return run_sampler(ddpm_step(tables, target, variance, clip_x0), denoise_fn, timesteps,
                       x_T, key, trajectory_every)
