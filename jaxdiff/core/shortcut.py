"""Shortcut models (Frans et al. 2024, "One Step Diffusion via Shortcut Models"; kvfrans/shortcut-models
``targets_shortcut.py``): one network of two times, trained on flow matching and on the self-consistency
of its own jumps, samples in 1, 2, 4, ... steps.

jaxdiff's time runs from the data (``t = 0``) to the noise (``t = 1``) as flow matching's; the paper's
runs the other way (``T = 1 - t``) and its velocity is ours negated. Its shortcut ``s(x, T, d)`` is, in
MeanFlow's notation (:mod:`jaxdiff.core.meanflow`), the average velocity ``u(x_t, t - d, t)`` over a jump
of span ``d``, so the network, ``jump`` and samplers are MeanFlow's. Training
(:func:`shortcut_targets`):

  flow rows (all but ``1 / bootstrap_every`` of a batch): ``t ~ U(0, 1)``, span 0, target the velocity
  ``eps - x0``;
  bootstrap rows: a level ``k ~ U{0 .. levels - 1}``, span ``D = 2^-k``, ``t = j D`` with
  ``j ~ U{1 .. 2^k}``; the target is two half jumps of the network itself,
  ``u_tgt = sg((u(x_t, t - D/2, t) + u(x', t - D, t - D/2)) / 2)``, ``x' = x_t - (D/2) u(x_t, t - D/2, t)``,
  clipped to [-4, 4] as the paper's;

the loss is the mean squared error over both. Where this differs from the paper: its bootstrap teacher
is the EMA of the parameters, here the current ones under stop-gradient; its flow rows use its smallest
step ``1/128`` as their span, here span 0 (the velocity, which every flow sampler evaluates); and the
bootstrap targets are computed for every row and kept where the span is positive (``jnp.where``: the row
kinds travel in the times, so gradient accumulation's micro-batches need no fixed row split).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff.core import processes
from jaxdiff.core.family import refuse_fields, NETWORK_TIME_SCALE, Family, per_example_mean
from jaxdiff.core.meanflow import average_velocity_family


def shortcut_targets(u_fn, z, t, span):
    """The bootstrap target for a jump of ``span`` from level ``t`` (``[B]`` each): two half jumps of
    ``u_fn(z, r, t)`` (the average velocity over ``[r, t]``), averaged and clipped to [-4, 4]."""
    half = 0.5 * span
    u1 = u_fn(z, t - half, t)
    u2 = u_fn(z - processes.expand_to(half, z) * u1, t - span, t - half)
    return jnp.clip(0.5 * (u1 + u2), -4.0, 4.0)


def shortcut(levels: int = 7, bootstrap_every: int = 8) -> Family:
    """The shortcut-model family (module docstring): spans ``2^-k`` for ``k < levels`` in one row of
    ``bootstrap_every``. Its ``time`` is ``[B, 2]``, the pair ``(t, span)``."""
    if not (isinstance(levels, int) and levels >= 1 and isinstance(bootstrap_every, int) and bootstrap_every >= 1):
        raise ValueError(f"shortcut needs levels >= 1 and bootstrap_every >= 1 (integers), got levels={levels!r}, "
                         f"bootstrap_every={bootstrap_every!r}")
    s = NETWORK_TIME_SCALE

    def draw(key, x0):
        b = x0.shape[0]
        k_key, j_key, t_key, noise_key = jax.random.split(key, 4)
        level = jax.random.randint(k_key, (b,), 0, levels)
        big = jnp.exp2(-level.astype(jnp.float32))
        j = jnp.floor(jax.random.uniform(j_key, (b,)) * jnp.exp2(level.astype(jnp.float32))) + 1.0
        bootstrap = jnp.arange(b) < b // bootstrap_every
        t = jnp.where(bootstrap, jnp.minimum(j * big, 1.0), jax.random.uniform(t_key, (b,)))
        span = jnp.where(bootstrap, big, 0.0)
        return jnp.stack([t, span], axis=1), jax.random.normal(noise_key, x0.shape, jnp.float32)

    def loss(net, x0, time, noise):
        t, span = time[:, 0], time[:, 1]
        tt = processes.expand_to(t, x0)
        z = (1.0 - tt) * x0 + tt * noise

        def u_fn(z_, r_, t_):
            return net(z_, s * t_, s * (t_ - r_)).astype(jnp.float32)

        u = u_fn(z, t - span, t)
        bootstrap = jax.lax.stop_gradient(shortcut_targets(u_fn, z, t, span))
        target = jnp.where(processes.expand_to(span, z) > 0, bootstrap, noise - x0)
        per_example = per_example_mean(jnp.square(u - target))
        return jnp.mean(per_example), per_example

    return average_velocity_family("shortcut", draw, loss)


def from_record(r) -> Family:
    """The shortcut family of a process record (``diffusion.shortcut``)."""
    refuse_fields(r, "shortcut", weighted=False)
    return shortcut(r["shortcut"]["levels"], r["shortcut"]["bootstrap_every"])
