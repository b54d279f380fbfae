"""Classifier-free guidance in front of a network, with its guidance interval."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff.core.network_contract import check_denoiser_output
from jaxdiff.core.sampler import DenoiseFn


def guided_denoise_fn(apply_fn, labels: jax.Array | None, guidance_scale: float,
                      null_label: int | None, interval: tuple[float, float] | None = None) -> DenoiseFn:
    """Classifier-free guidance: ``out = out_uncond + w (out_cond - out_uncond)``.

    ``apply_fn(x, t, y)`` is the network; ``null_label=None`` means an unconditional model (called
    with ``y=None``). ``labels=None`` samples unconditionally (null label); ``w = 1`` is plain
    conditional sampling, ``w = 0`` unconditional. Both branches run in one batched call of size ``2B``.
    With ``interval = (lo, hi)`` in network time units, guidance applies only where
    ``lo < t <= hi`` (Kynkäänniemi et al. 2024) and the other steps run the conditional branch alone.
    A network output of another shape than its input is refused when the sampler is traced
    (:func:`check_denoiser_output`).

    The returned ``fn(x, t, span=None)`` passes a second time ``span`` (a few-step family's jump,
    :attr:`~jaxdiff.core.family.Family.jump`) on as ``apply_fn(x, t, y, span)``; without it the network
    is called as ``apply_fn(x, t, y)``.
    """
    def net(x, t, y, span=None):
        out = apply_fn(x, t, y) if span is None else apply_fn(x, t, y, span)
        return check_denoiser_output(out, x)

    if null_label is None:
        if labels is not None:
            raise ValueError("labels given, but null_label=None: a network without classes has no class "
                             "embedding to take them")
        return lambda x, t, span=None: net(x, t, None, span)
    if labels is None:
        return lambda x, t, span=None: net(x, t, jnp.full((x.shape[0],), null_label, jnp.int32), span)
    if guidance_scale == 1.0:
        return lambda x, t, span=None: net(x, t, labels, span)

    def guided(x, t, span=None):
        y = jnp.concatenate([labels, jnp.full_like(labels, null_label)])
        both = None if span is None else jnp.concatenate([span, span])
        out = net(jnp.concatenate([x, x]), jnp.concatenate([t, t]), y, both)
        cond, uncond = jnp.split(out, 2)
        return uncond + guidance_scale * (cond - uncond)

    if interval is None:
        return guided
    lo, hi = (float(v) for v in interval)

    def fn(x, t, *span):  # span: () or (span,)
        active = (t[0] > lo) & (t[0] <= hi)
        return jax.lax.cond(active, guided, lambda xx, tt, *ss: net(xx, tt, labels, *ss), x, t, *span)

    return fn
