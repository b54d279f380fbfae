"""jaxdiff.layers: the hand-written VJPs equal autodiff through Flax's own layers (values, gradients
and parameters), GroupNorm equals an independent float64 NumPy reference, the dropout mask is
Flax's bit for bit and ``materialise`` is the identity."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st

from jaxdiff.models import layers


def group_norm_reference(x, scale, bias, groups, eps, swish):
    """GroupNorm (+ swish) over NHWC in float64 NumPy: per example and group, mean and biased variance
    over H, W and the group's channels."""
    x = np.asarray(x, np.float64)
    b, h, w, c = x.shape
    g = x.reshape(b, h, w, groups, c // groups)
    mu = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    z = ((g - mu) / np.sqrt(var + eps)).reshape(b, h, w, c) * scale + bias
    return z / (1 + np.exp(-z)) if swish else z


def _inputs(seed, shape):
    k = jax.random.split(jax.random.key(seed), 4)
    x = 3.0 * jax.random.normal(k[0], shape) + 1.5  # an offset mean: E[x^2] - mu^2 must still be accurate
    scale = 1 + 0.3 * jax.random.normal(k[1], shape[-1:])
    bias = 0.3 * jax.random.normal(k[2], shape[-1:])
    dy = jax.random.normal(k[3], shape)
    return x, scale, bias, dy


_CASES = st.tuples(st.integers(1, 3), st.sampled_from([1, 3, 8]), st.sampled_from([(8, 4), (8, 8), (12, 3), (4, 1)]),
                   st.booleans(), st.integers(0, 2**16))


@settings(max_examples=12, deadline=None)
@given(_CASES)
def test_group_norm_matches_float64_reference_and_flax_gradients(case):
    b, hw, (c, groups), swish, seed = case
    x, scale, bias, dy = _inputs(seed, (b, hw, hw, c))
    # Conditioning: var = E[x^2] - mu^2 in float32 (Flax's fast variance, also used here) loses
    # ~1e-7 E[x^2] / (var + eps) relatively, and dx is a difference of terms of size r |dy| |scale|
    # (r = 1/sqrt(var + eps), up to 1/sqrt(eps) = 1000 for a group of one element). Both enter the
    # tolerances, which are 1e-4 for well-conditioned groups.
    g = np.asarray(x, np.float64).reshape(b, hw, hw, groups, c // groups)
    var = g.var(axis=(1, 2, 4))
    q = float(((g ** 2).mean(axis=(1, 2, 4)) / (var + 1e-6)).max())
    terms = float((1 / np.sqrt(var + 1e-6)).max() * jnp.abs(dy).max() * jnp.abs(scale).max())

    got = layers.group_norm(x, scale, bias, groups, 1e-6, swish)
    want = group_norm_reference(x, np.asarray(scale), np.asarray(bias), groups, 1e-6, swish)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4 + 1e-6 * q * (1 + np.abs(want).max()))

    flax_gn = nn.GroupNorm(groups, epsilon=1e-6)

    def flax_fn(x, scale, bias):
        z = flax_gn.apply({"params": {"scale": scale, "bias": bias}}, x)
        return nn.swish(z) if swish else z

    mine = jax.vjp(lambda *a: layers.group_norm(*a, groups, 1e-6, swish), x, scale, bias)[1](dy)
    ref = jax.vjp(flax_fn, x, scale, bias)[1](dy)
    for m, r in zip(mine, ref):
        np.testing.assert_allclose(np.asarray(m), np.asarray(r), rtol=2e-4,
                                   atol=1e-4 * (1 + float(jnp.abs(r).max())) + 1e-6 * q * terms)


def test_group_norm_module_is_flax_group_norm_with_swish():
    x, _, _, _ = _inputs(1, (2, 8, 8, 16))
    mine = layers.GroupNorm(4, 1e-6, swish=True)
    params = mine.init(jax.random.key(0), x)["params"]
    ref_params = nn.GroupNorm(4, epsilon=1e-6).init(jax.random.key(0), x)["params"]
    assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, ref_params)
    want = nn.swish(nn.GroupNorm(4, epsilon=1e-6).apply({"params": params}, x))
    np.testing.assert_allclose(np.asarray(mine.apply({"params": params}, x)), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_sum_leading_is_sum():
    x = jax.random.normal(jax.random.key(0), (3, 5, 7, 4))
    np.testing.assert_allclose(np.asarray(layers.sum_leading(x, 1)), np.asarray(x).sum(axis=(1, 2)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(layers.sum_leading(x, 0)), np.asarray(x).sum(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5)


def _assert_same_layer(mine, ref, x):
    """Same parameters (names, shapes, initial values), outputs and gradients (params and input)."""
    params = mine.init(jax.random.key(1), x)["params"]
    ref_params = ref.init(jax.random.key(1), x)["params"]
    jax.tree.map(np.testing.assert_array_equal, params, ref_params)
    params = dict(params, bias=jnp.arange(params["bias"].shape[0], dtype=jnp.float32))  # exercise the bias path

    def loss(module, p, x):
        return jnp.sum(jnp.sin(module.apply({"params": p}, x)))

    (lm, gm), (lr, gr) = [jax.value_and_grad(loss, argnums=(1, 2))(m, params, x) for m in (mine, ref)]
    np.testing.assert_allclose(float(lm), float(lr), rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5),
                 gm, gr)


def test_conv_is_flax_conv_with_the_same_parameters_values_and_gradients():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    for kw in (dict(kernel_size=(3, 3)), dict(kernel_size=(1, 1)),
               dict(kernel_size=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))):
        _assert_same_layer(layers.Conv(5, **kw), nn.Conv(5, **kw), x)


def test_dense_is_flax_dense_with_the_same_parameters_values_and_gradients():
    for shape in ((3, 4), (2, 6, 4)):
        x = jax.random.normal(jax.random.key(0), shape)
        _assert_same_layer(layers.Dense(5, nn.initializers.lecun_normal()), nn.Dense(5), x)


def test_add_bias_per_example_gradient_is_the_sum_over_positions():
    for shape in ((3, 4, 5, 6), (3, 6)):
        y = jax.random.normal(jax.random.key(0), shape)
        bias = jax.random.normal(jax.random.key(1), (3, 6))
        dy = jax.random.normal(jax.random.key(2), y.shape)
        out, vjp = jax.vjp(layers.add_bias, y, bias)
        expand = bias.reshape(3, *([1] * (len(shape) - 2)), 6)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(y + expand))
        dy_got, db_got = vjp(dy)
        np.testing.assert_array_equal(np.asarray(dy_got), np.asarray(dy))
        want = np.asarray(dy, np.float64).sum(axis=tuple(range(1, len(shape) - 1)))
        np.testing.assert_allclose(np.asarray(db_got), want, rtol=1e-5, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.one_of(st.floats(width=32), st.sampled_from([0.0, -0.0, float("inf"), float("-inf"), float("nan")])),
                min_size=1, max_size=40))
def test_materialise_returns_its_input_bit_for_bit(values):
    """The same bits as the program without it (XLA:CPU flushes subnormals to zero in both)."""
    x = jnp.asarray(np.asarray(values, np.float32))
    got = jax.jit(lambda x: layers.materialise(x * 1.5))(x)
    want = jax.jit(lambda x: x * 1.5)(x)
    np.testing.assert_array_equal(np.asarray(got).view(np.uint32), np.asarray(want).view(np.uint32))


@settings(max_examples=8, deadline=None)
@given(st.sampled_from([(2, 5, 5, 3), (1, 7), (4, 4, 4, 8), (3,)]), st.sampled_from([0.1, 0.5, 0.9]),
       st.integers(0, 2**16))
def test_dropout_is_flax_dropout_with_the_same_mask_and_gradient(shape, rate, seed):
    """The same key gives Flax's mask bit for bit, and the gradient is the mask over the keep probability."""
    x = jax.random.normal(jax.random.key(seed), shape) + 2.0  # no exact zeros: a kept value stays non-zero
    rngs = {"dropout": jax.random.key(seed + 1)}

    def run(module):
        return jax.jit(lambda x: jax.vjp(lambda x: module.apply({}, x, rngs=rngs), x))(x)

    (mine, mine_vjp), (ref, ref_vjp) = run(layers.Dropout(rate)), run(nn.Dropout(rate, deterministic=False))
    np.testing.assert_array_equal(np.asarray(mine), np.asarray(ref))
    dy = jnp.ones(shape)
    np.testing.assert_array_equal(np.asarray(mine_vjp(dy)[0]), np.asarray(ref_vjp(dy)[0]))
    assert layers.Dropout(rate, deterministic=True).apply({}, x) is x
