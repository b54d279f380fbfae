"""The calling convention shared by jaxdiff's denoising networks, as plain functions.

A denoiser is a Flax module called as ``module(x [B, H, W, C], t int [B], y int [B] | None,
train=False)`` with an integer attribute ``num_classes`` (0: unconditional; otherwise the label
``num_classes`` is the null label of classifier-free guidance). The training step, the samplers
and the likelihood take the network as an *apply function* of its parameters, so they work with
any module (or any function) of that shape. The apply function of :func:`denoiser_apply` carries the
module's class count as its attribute ``num_classes``: the train step and ``generate`` refuse a
``num_classes`` argument that differs from it.

A network built with ``span_embedding=True`` (:class:`~jaxdiff.models.unet.UNet`,
:class:`~jaxdiff.models.dit.DiT`) takes a second time, ``module(..., span=s)``: the span of the jump
it is asked to make (MeanFlow's ``t - r``, a shortcut model's step ``d``), embedded like ``t`` and
added to ``t``'s embedding through a branch whose last layer starts at zero. The apply function
passes it on and says so (``apply.span_embedding``); :func:`with_span_params` completes the
parameters of a network trained without it, which then computes the same function.
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
from flax import traverse_util

ApplyFn = Callable  # apply(params, x, t, y=None, dropout_key=None, span=None) -> output [B, H, W, C]

# The span branch: the top-level parameter names of a span_embedding network that start with this,
# and its last (zero-initialised) layer in the U-Net and in the DiT.
SPAN_PREFIX = "span_"
SPAN_OUTPUT_LAYERS = ("span_dense1", "span_embedder_mlp_2")


def denoiser_apply(module) -> ApplyFn:
    """The apply function of a denoiser module.

    Args:
      module: a Flax module called as ``module(x, t, y, train)`` (:class:`~jaxdiff.models.unet.UNet`),
        and ``module(..., span=span)`` when it has ``span_embedding``.

    Returns:
      ``apply(params, x, t, y=None, dropout_key=None, span=None) -> output``: train mode (dropout on)
      exactly when a ``dropout_key`` is given, inference otherwise; ``span`` (the second time) is
      passed to the module only when it is not ``None``, so modules without the keyword work. Its
      attributes ``apply.num_classes`` and ``apply.span_embedding`` are the module's (False when it
      has none). The train step, the samplers and the likelihood all take it.
    """

    def apply(params, x, t, y=None, dropout_key=None, span=None):
        kwargs = {} if span is None else {"span": span}
        if dropout_key is None:
            return module.apply({"params": params}, x, t, y, **kwargs)
        return module.apply({"params": params}, x, t, y, train=True, rngs={"dropout": dropout_key}, **kwargs)

    apply.num_classes = int(module.num_classes)
    apply.span_embedding = bool(getattr(module, "span_embedding", False))
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
    if getattr(module, "span_embedding", False):
        return module.init({"params": key}, x, t, y, span=jnp.zeros((1,), jnp.float32))["params"]
    return module.init({"params": key}, x, t, y)["params"]


def has_span_branch(params: Mapping) -> bool:
    """Whether ``params`` hold a span branch (a network built with ``span_embedding``)."""
    return any(k.startswith(SPAN_PREFIX) for k in params)


def with_span_params(params: Mapping, span_params: Mapping) -> dict:
    """The parameters of a network without the span branch, completed into those of its
    ``span_embedding`` twin.

    ``params`` (e.g. a trained U-Net or DiT) keep every value; the span branch (the top-level entries
    of ``span_params`` named ``span_*``) comes from ``span_params``, a fresh :func:`init_denoiser` of
    the twin, with its last layer (``span_dense1`` / ``span_embedder_mlp_2``) set to zeros. The twin
    then computes ``params``' function for every span: ``temb + 0``.

    Raises:
      ValueError: ``span_params`` has no span branch, or its other parameters differ from ``params``
        in names or shapes (another architecture).
    """
    branch = {k: v for k, v in span_params.items() if k.startswith(SPAN_PREFIX)}
    outputs = [k for k in branch if k in SPAN_OUTPUT_LAYERS]
    if not outputs:
        raise ValueError(f"span_params has no span branch ({' or '.join(SPAN_OUTPUT_LAYERS)}): initialise the "
                         "network with span_embedding=True")
    if has_span_branch(params):
        raise ValueError("params already have a span branch: with_span_params completes a network without one")
    shared = traverse_util.flatten_dict({k: v for k, v in span_params.items() if k not in branch}, sep="/")
    given = traverse_util.flatten_dict(dict(params), sep="/")
    for name in sorted(set(shared) | set(given)):
        if name not in shared or name not in given:
            where = "the span network" if name not in shared else "params"
            raise ValueError(f"parameter {name} is missing from {where}: the two networks differ in architecture")
        if jnp.shape(shared[name]) != jnp.shape(given[name]):
            raise ValueError(f"parameter {name} has shape {tuple(jnp.shape(given[name]))} in params but "
                             f"{tuple(jnp.shape(shared[name]))} in the span network: the two differ in architecture")
    for k in outputs:
        branch[k] = jax.tree_util.tree_map(jnp.zeros_like, branch[k])
    return {**params, **branch}
