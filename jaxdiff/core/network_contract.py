"""The network contract: what jaxdiff requires of a network ``net(x, t, y) -> output``, checked when a
program is traced (shapes are static, so the checks cost nothing when it runs)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def check_denoiser_output(out: jax.Array, x: jax.Array) -> jax.Array:
    """``out``, the network's output for input ``x``, if it has the shape of ``x``; else ``ValueError``.

    Shapes are static, so under ``jit`` this runs once, when the program is traced, and costs nothing
    when it runs.
    """
    if jnp.shape(out) == jnp.shape(x):
        return out
    if jnp.shape(out)[:-1] == jnp.shape(x)[:-1]:
        c_out, c_in = jnp.shape(out)[-1], jnp.shape(x)[-1]
        raise ValueError(f"the network outputs {c_out} channel{'s' * (c_out != 1)} for images of {c_in} "
                         f"channel{'s' * (c_in != 1)}: build it with out_ch={c_in}")
    raise ValueError(f"the network maps inputs of shape {tuple(jnp.shape(x))} to outputs of shape "
                     f"{tuple(jnp.shape(out))}: a denoiser's output has the shape of its input")


def check_network_classes(apply_fn, num_classes: int) -> None:
    """``ValueError`` if ``apply_fn`` says how many classes its network has (the attribute ``num_classes``
    of :func:`jaxdiff.models.denoiser_apply`'s apply functions) and that is not ``num_classes``; an apply
    function without the attribute is not checked."""
    own = getattr(apply_fn, "num_classes", None)
    if own is None or int(own) == int(num_classes):
        return
    built = f"a class embedding of {own + 1} rows, the last the null label" if own else "no class embedding"
    raise ValueError(f"num_classes={num_classes}, but the network was built with num_classes={own} ({built}): "
                     f"pass num_classes={own}")
