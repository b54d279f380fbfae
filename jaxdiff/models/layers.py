"""The U-Net's layers as XLA:CPU trains them fast: Conv, Dense, GroupNorm(+swish) and Dropout.

Each equals its Flax counterpart (``nn.Conv``, ``nn.Dense``, ``nn.GroupNorm`` followed by
``nn.swish``, ``nn.Dropout``): the same parameters (names, shapes, initial values, so checkpoints are
interchangeable), the same dropout mask for the same key, outputs and gradients equal to float32
rounding (``tests/test_layers.py``). They differ in how XLA:CPU is asked to compute the backward pass:

* Autodiff turns every per-channel broadcast (a bias, a GroupNorm scale, shift or statistic) into a
  reduction over the batch and spatial axes. XLA:CPU emits these as strided loops, 5-20x slower
  than the same sum written as a product with ones (:func:`sum_leading`), and fuses the whole
  elementwise chain that produces their input into every one of them. The hand-written VJPs of
  :func:`group_norm` and :func:`add_bias` take those sums as products with ones.
* XLA:CPU fuses an elementwise producer into each of its consumers, recomputing it. That is cheap
  for an add, not for a dropout mask (threefry, ~100 integer operations an element) or a GroupNorm
  gradient with four consumers and ten inputs. :func:`materialise` makes XLA compute such a value
  once.

The CPU-specific formulations are chosen with ``lax.platform_dependent``; GPU and TPU run the plain
``jnp.sum`` and the values themselves. Measured gains are in ``bench/README.md``.

JAX refuses forward-mode autodiff (``jax.jvp``) of a ``custom_vjp`` function, so each layer has a
switch ``jvp=False``: ``jvp=True`` computes the same values with the plain formulation
(``group_norm.fun``, ``add_bias.fun``) and JAX's own derivative rules, which ``jax.jvp`` (MeanFlow's
and continuous-time consistency's time derivative) and ``jax.grad`` both accept; the parameters are
the same, the backward pass on CPU is then the slower default one.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def sum_leading(x: jax.Array, num_batch: int) -> jax.Array:
    """``sum(x, axis=(num_batch, ..., ndim - 2))``: sum over every axis except the first ``num_batch``
    and the last, in float32. ``[B, H, W, C] -> [B, C]`` with ``num_batch=1``, ``-> [C]`` with 0.

    On CPU this is ``dot_general(ones, x)`` contracting the summed axes (batched over the first
    ``num_batch``); on other platforms it is ``jnp.sum``.
    """
    summed = tuple(range(num_batch, x.ndim - 1))
    batch = tuple(range(num_batch))

    def as_dot(x):
        ones = jnp.ones(x.shape[:-1], x.dtype)
        return jax.lax.dot_general(ones, x, ((summed, summed), (batch, batch)),
                                   preferred_element_type=jnp.float32)

    def as_sum(x):
        return jnp.sum(x.astype(jnp.float32), axis=summed)

    return jax.lax.platform_dependent(x, cpu=as_dot, default=as_sum)


def materialise(x: jax.Array) -> jax.Array:
    """``x`` (floating or bool), computed once into its own buffer on CPU.

    XLA:CPU fuses an elementwise producer into each of its consumers, so a value with several
    consumers (a GroupNorm gradient feeds the previous convolution's input gradient, its kernel
    gradient, its bias gradient and the skip connection; a dropout mask, ~100 integer operations
    an element, feeds the forward select and every backward fusion of the masked gradient) is
    recomputed from all its inputs in every one of them, with strided reads where the consumer is a
    transpose. XLA never duplicates a reduction into its consumers, so on CPU ``x`` is taken as
    ``max(x, lowest)`` (``-inf``, or ``False``) over a new leading axis of size 2 and read from that
    result: the same bits as ``x`` computed without it, NaN and -0.0 included (XLA:CPU flushes
    subnormals to zero either way). Other platforms get ``x`` itself.
    """
    def reduced(x):
        lowest = jnp.zeros_like(x) if x.dtype == jnp.bool_ else jnp.full_like(x, -jnp.inf)
        return jnp.max(jnp.stack([x, lowest]), axis=0)

    return jax.lax.platform_dependent(x, cpu=reduced, default=lambda x: x)


# ------------------------------------------------------------------------------------ GroupNorm


def _group_sum(v: jax.Array, groups: int) -> jax.Array:
    """``[B, C] -> [B, G]``: sum over the channels of each group."""
    return v.reshape(v.shape[0], groups, v.shape[1] // groups).sum(-1)


def _per_channel(v: jax.Array, channels: int) -> jax.Array:
    """``[B, G] -> [B, C]``: each group's value repeated over its channels."""
    return jnp.repeat(v, channels // v.shape[1], axis=1)


def _moments(x, groups, eps):
    """Per-(example, group) mean ``mu`` and inverse std ``r = 1 / sqrt(var + eps)`` over H, W and the
    group's channels, with ``var = E[x^2] - mu^2`` clipped at 0 (as flax's fast variance)."""
    n = x.shape[1] * x.shape[2] * (x.shape[3] // groups)
    xf = x.astype(jnp.float32)
    mean = _group_sum(sum_leading(xf, 1), groups) / n
    mean_sq = _group_sum(sum_leading(xf * xf, 1), groups) / n
    var = jnp.maximum(mean_sq - mean * mean, 0.0)
    return mean, jax.lax.rsqrt(var + eps)


def _scale_shift(channels, scale, bias, mean, rstd):
    """``x_hat * scale + bias = x * a + b`` with per-(example, channel) ``a = r scale``,
    ``b = bias - mu r scale``; returned as ``[B, 1, 1, C]``."""
    a = _per_channel(rstd, channels) * scale
    b = bias - _per_channel(mean, channels) * a
    return a[:, None, None, :], b[:, None, None, :]


def _normalise(x, scale, bias, mean, rstd, swish):
    a, b = _scale_shift(x.shape[-1], scale, bias, mean, rstd)
    z = x.astype(jnp.float32) * a + b
    s = jax.nn.sigmoid(z) if swish else None
    return z, s


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, eps: float,
               swish: bool) -> jax.Array:
    """GroupNorm of NHWC ``x`` over ``groups`` channel groups, optionally followed by swish.

    Forward: ``z = (x - mu) r * scale + bias`` (``mu``, ``r`` from :func:`_moments`), output ``z``
    or ``swish(z) = z sigmoid(z)``, in ``x.dtype`` (statistics in float32).

    Backward, with ``s = sigmoid(z)``, ``dz = dy * s (1 + z (1 - s))`` (or ``dy`` without swish),
    ``x_hat = (x - mu) r``, per example ``b`` and channel ``c`` the sums over H, W
    ``A = sum dz`` and ``X = sum dz x``, and ``n`` elements per group:

    * ``d bias = sum_b A``, ``d scale = sum_b (X - mu A) r``;
    * with ``S1 = sum_{c in g} scale A`` and ``S2 = sum_{c in g} scale (X - mu A) r``,
      ``dx = r (dz scale - S1 / n - x_hat S2 / n)
           = dz (r scale) - x (r^2 S2 / n) + (mu r^2 S2 - r S1) / n``.
    """
    z, s = _normalise(x, scale, bias, *_moments(x, groups, eps), swish)
    return (z * s if swish else z).astype(x.dtype)


def _group_norm_fwd(x, scale, bias, groups, eps, swish):
    mean, rstd = _moments(x, groups, eps)
    z, s = _normalise(x, scale, bias, mean, rstd, swish)
    return (z * s if swish else z).astype(x.dtype), (x, scale, bias, mean, rstd)


def _group_norm_bwd(groups, eps, swish, res, dy):
    x, scale, bias, mean, rstd = res
    channels = x.shape[-1]
    n = x.shape[1] * x.shape[2] * (channels // groups)
    z, s = _normalise(x, scale, bias, mean, rstd, swish)
    dz = dy.astype(jnp.float32)
    if swish:
        dz = dz * (s * (1 + z * (1 - s)))
    dz = materialise(dz)  # read by both sums and by dx: computed from dy once
    xf = x.astype(jnp.float32)
    sum_dz = sum_leading(dz, 1)
    sum_dz_x = sum_leading(dz * xf, 1)
    mean_c, rstd_c = _per_channel(mean, channels), _per_channel(rstd, channels)
    centred = (sum_dz_x - mean_c * sum_dz) * rstd_c          # sum dz x_hat, per (b, c)
    d_bias, d_scale = sum_dz.sum(0), centred.sum(0)
    s1 = _group_sum(scale * sum_dz, groups)
    s2 = _group_sum(scale * centred, groups)
    coef_x = _per_channel(-(rstd ** 2) * s2 / n, channels)
    coef_1 = _per_channel((mean * rstd ** 2 * s2 - rstd * s1) / n, channels)
    dx = (dz * (rstd_c * scale)[:, None, None, :] + xf * coef_x[:, None, None, :]
          + coef_1[:, None, None, :])
    return materialise(dx.astype(x.dtype)), d_scale.astype(scale.dtype), d_bias.astype(bias.dtype)


group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)


class GroupNorm(nn.Module):
    """``nn.GroupNorm`` (parameters ``scale``, ``bias``; float32 statistics, ``var = E[x^2] - mu^2``)
    on NHWC inputs, optionally fused with the swish that follows it, computed by :func:`group_norm`."""

    num_groups: int = 32
    epsilon: float = 1e-6
    swish: bool = False
    dtype: Any = jnp.float32
    jvp: bool = False  # the plain formulation: jax.jvp works (see the module docstring)

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        norm = group_norm.fun if self.jvp else group_norm
        return norm(x.astype(self.dtype), scale, bias, self.num_groups, self.epsilon, self.swish)


# ------------------------------------------------------------------------------------------ bias


@jax.custom_vjp
def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """``y + bias`` along the last axis of ``y``: ``bias [C]`` is shared by every position, ``bias
    [B, C]`` is per example, broadcast over the axes between. The bias gradient is
    :func:`sum_leading` of ``dy`` over every axis but the last (and, for ``[B, C]``, the first).
    """
    if bias.ndim == 2:
        bias = bias.reshape(bias.shape[0], *([1] * (y.ndim - 2)), bias.shape[1])
    return y + bias.astype(y.dtype)


def _add_bias_fwd(y, bias):
    return add_bias(y, bias), bias


def _add_bias_bwd(bias, dy):
    return dy, sum_leading(dy, bias.ndim - 1).astype(bias.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


def bias_adder(jvp: bool) -> Callable:
    """:func:`add_bias`, or with ``jvp`` its plain formulation (``y + bias``, JAX's derivative rules),
    which ``jax.jvp`` accepts."""
    return add_bias.fun if jvp else add_bias


class Dense(nn.Module):
    """``nn.Dense`` (parameters ``kernel [in, out]`` and ``bias [out]``, computed in ``dtype``) whose
    bias is added by :func:`add_bias`."""

    features: int
    kernel_init: Callable = nn.initializers.lecun_normal()
    dtype: Any = jnp.float32
    jvp: bool = False  # the plain formulation: jax.jvp works (see the module docstring)

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                                (((x.ndim - 1,), (0,)), ((), ())))
        return bias_adder(self.jvp)(y, bias)


class Conv(nn.Module):
    """``nn.Conv`` on NHWC inputs (parameters ``kernel [kh, kw, in, out]`` and ``bias [out]``, computed
    in ``dtype``) whose bias is added by :func:`add_bias`."""

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] = (1, 1)
    padding: Any = "SAME"
    kernel_init: Callable = nn.initializers.lecun_normal()
    dtype: Any = jnp.float32
    jvp: bool = False  # the plain formulation: jax.jvp works (see the module docstring)

    @nn.compact
    def __call__(self, x):
        shape = (*self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        y = jax.lax.conv_general_dilated(x.astype(self.dtype), kernel.astype(self.dtype), tuple(self.strides),
                                         self.padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return bias_adder(self.jvp)(y, bias)


# --------------------------------------------------------------------------------------- dropout


class Dropout(nn.Module):
    """``nn.Dropout`` (same random mask for the same key: ``bernoulli(make_rng("dropout"), 1 - rate)``,
    kept values scaled by ``1 / (1 - rate)``) whose mask XLA:CPU computes once (:func:`materialise`)."""

    rate: float
    deterministic: bool = False

    @nn.compact
    def __call__(self, x):
        if self.deterministic or self.rate == 0.0:
            return x
        if self.rate == 1.0:
            return jnp.zeros_like(x)
        keep = 1.0 - self.rate
        # ~100 integer operations an element (threefry), read by the forward select and by every
        # backward fusion of the masked gradient: computed once.
        mask = materialise(jax.random.bernoulli(self.make_rng("dropout"), keep, x.shape))
        return jax.lax.select(mask, x / keep, jnp.zeros_like(x))
