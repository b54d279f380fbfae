"""The optimiser, its learning-rate schedule and the EMA of the parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adam", "adamw")


LR_SCHEDULES = ("constant", "cosine", "inverse_sqrt")


def learning_rate_schedule(learning_rate: float, warmup_steps: int = 0, *, decay: str = "constant",
                           decay_steps: int = 0) -> optax.Schedule:
    """Linear warm-up from 0 over ``warmup_steps`` (DDPM's), then, with ``m = n - warmup_steps``:

    - ``constant``: ``learning_rate``;
    - ``cosine``: ``learning_rate * (1 + cos(pi * min(m / decay_steps, 1))) / 2`` (to 0 at ``decay_steps``);
    - ``inverse_sqrt``: ``learning_rate / sqrt(max(m / decay_steps, 1))`` (EDM2's, which needs no end step).
    """
    if decay not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {decay!r}; choose one of {', '.join(LR_SCHEDULES)}")
    if decay != "constant" and decay_steps <= 0:
        raise ValueError(f"the {decay} learning-rate schedule needs decay_steps > 0, got {decay_steps}")
    if decay == "constant":
        return optax.linear_schedule(0.0, learning_rate, warmup_steps) if warmup_steps else (
            optax.constant_schedule(learning_rate))
    if decay == "cosine":
        after = optax.cosine_decay_schedule(learning_rate, decay_steps)
    else:
        after = lambda m: learning_rate * jax.lax.rsqrt(jnp.maximum(m / decay_steps, 1.0))  # noqa: E731
    if warmup_steps == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, learning_rate, warmup_steps), after], [warmup_steps])


def make_optimizer(learning_rate: float | optax.Schedule, *, optimizer: str = "adam", b1: float = 0.9,
                   b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
                   grad_clip_norm: float = 0.0) -> optax.GradientTransformation:
    """Global-norm clipping (when ``grad_clip_norm > 0``) followed by Adam or AdamW.

    Args:
      learning_rate: a float or an optax schedule (:func:`learning_rate_schedule`).
      optimizer: ``"adam"`` or ``"adamw"`` (decoupled ``weight_decay``).
      b1, b2, eps: Adam's moment decays and epsilon.
      weight_decay: AdamW's decay (ignored by Adam).
      grad_clip_norm: clip the global gradient norm to this (0 = no clipping).
    """
    if optimizer == "adamw":
        opt = optax.adamw(learning_rate, b1, b2, eps, weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = optax.adam(learning_rate, b1, b2, eps)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    return optax.chain(optax.clip_by_global_norm(grad_clip_norm), opt) if grad_clip_norm > 0 else opt


def ema_decay(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
    """EMA decay for update number ``step``: ``min(decay, (1 + n) / (10 + n))`` with warm-up, else ``decay``."""
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    n = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


def ema_update(ema, params, decay: jax.Array):
    """``ema <- decay * ema + (1 - decay) * params``, leaf by leaf."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
