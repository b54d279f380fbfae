"""The calling convention shared by jaxdiff's denoising networks, as plain functions.

A denoiser is a Flax module called as ``module(x [B, H, W, C], t int [B], y int [B] | None,
train=False)`` with an integer attribute ``num_classes`` (0: unconditional; otherwise the label
``num_classes`` is the null label of classifier-free guidance). The training step, the samplers
and the likelihood take the network as an *apply function* of its parameters, so they work with
any module (or any function) of that shape. The apply function of :func:`denoiser_apply` carries the
module's class count as its attribute ``num_classes``: the train step and ``generate`` refuse a
``num_classes`` argument that differs from it.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

ApplyFn = Callable  # apply(params, x, t, y=None, dropout_key=None) -> output [B, H, W, C]


def denoiser_apply(module) -> ApplyFn:
    """The apply function of a denoiser module.

    Args:
      module: a Flax module called as ``module(x, t, y, train)`` (:class:`~jaxdiff.models.unet.UNet`).

    Returns:
      ``apply(params, x, t, y=None, dropout_key=None) -> output``: train mode (dropout on) exactly
      when a ``dropout_key`` is given, inference otherwise, with the attribute ``apply.num_classes``
      (the module's). The train step, the samplers and the likelihood all take it.
    """

    def apply(params, x, t, y=None, dropout_key=None):
        if dropout_key is None:
            return module.apply({"params": params}, x, t, y)
        return module.apply({"params": params}, x, t, y, train=True, rngs={"dropout": dropout_key})

    apply.num_classes = int(module.num_classes)
    return apply


def init_denoiser(module, key: jax.Array, image_shape: tuple[int, int, int]):
    """Fresh parameters of a denoiser module.

    Args:
      module: the Flax module.
      key: the initialisation key.
      image_shape: ``(H, W, C)`` of the images it will see.

    Returns:
      the ``params`` pytree (what :func:`jaxdiff.training.state.init_train_state` takes).
    """
    x = jnp.zeros((1, *image_shape), jnp.float32)
    t = jnp.zeros((1,), jnp.int32)
    y = jnp.zeros((1,), jnp.int32) if module.num_classes else None
    return module.init({"params": key}, x, t, y)["params"]
