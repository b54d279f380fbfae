"""The optimiser, its learning-rate schedule and the EMA of the parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adam", "adamw")


def learning_rate_schedule(learning_rate: float, warmup_steps: int = 0) -> optax.Schedule:
    """``lr(n) = learning_rate * min(n / warmup_steps, 1)`` (DDPM's linear warm-up from 0)."""
    if warmup_steps == 0:
        return optax.constant_schedule(learning_rate)
    return optax.linear_schedule(0.0, learning_rate, warmup_steps)


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
