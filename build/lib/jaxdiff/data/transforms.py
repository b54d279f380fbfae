"""On-device preprocessing of uint8 batches, run inside the compiled train step so the host ships
one byte per pixel."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def preprocess(images, key, random_flip: bool = False):
    """uint8 ``[B, H, W, C]`` -> float32 ``x = images / 127.5 - 1`` in [-1, 1]; with ``random_flip``,
    ``x_i <- x_i[:, ::-1]`` (mirror left-right) for ``f_i ~ Bernoulli(1/2)`` drawn independently per
    example from ``key``. Pure and jittable; call it inside the train step. (XLA turns the division
    into a multiplication by a rounded reciprocal, so 255 would land one ulp above 1 without the clip.)"""
    x = jnp.clip(jnp.asarray(images).astype(jnp.float32) / 127.5 - 1.0, -1.0, 1.0)
    if random_flip:
        flip = jax.random.bernoulli(key, 0.5, (x.shape[0],))
        x = jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)
    return x
