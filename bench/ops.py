"""Op-level timings behind the training-step gap (issue 7): jaxdiff's XLA:CPU programs vs PyTorch.

    python -m bench.ops                 # ~3 min on 2 cores; --json=PATH saves the table

Everything runs in this one process, one op at a time (median of ``--reps`` after warm-up, 2 threads
on both sides). It measures, at the layer shapes of the two benchmark networks:

1. ``sum over H, W`` of an NHWC tensor (GroupNorm statistics, bias and time-embedding gradients):
   ``jnp.sum`` (a strided loop on XLA:CPU) vs the same sum as a batched product with ones.
2. GroupNorm + swish, forward and forward + backward: Flax autodiff, the hand-written VJP below
   (forward saves only ``x`` and the group moments; backward is two streaming passes whose sums are
   products with ones), and ``torch.nn.GroupNorm`` + ``F.silu``.
3. 3x3 convolution: forward, input gradient and kernel gradient in XLA vs PyTorch's forward + both
   gradients (oneDNN).
4. The whole network: forward (train mode) and forward + backward of the L2 loss, both sides.

The hand-written GroupNorm is checked against Flax before it is timed. It is not used by the
library: in the U-Net it made the training step no faster (bench/README.md says why).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

# ------------------------------------------------------------------------------------------ sums


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
    return dx.astype(x.dtype), d_scale.astype(scale.dtype), d_bias.astype(bias.dtype)


group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)


# ------------------------------------------------------------------------------------- benchmark


def median_ms(fn, reps: int) -> float:
    """Median wall time of ``fn()`` in ms (``fn`` blocks until its result exists), after one warm-up."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def jax_timer(f, *args):
    f = jax.jit(f)
    return lambda: jax.block_until_ready(f(*args))


def bench_sums(shape, reps):
    x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
    return {"jnp.sum": median_ms(jax_timer(lambda x: jnp.sum(x, axis=(1, 2)), x), reps),
            "dot with ones": median_ms(jax_timer(lambda x: sum_leading(x, 1), x), reps)}


def bench_group_norm(shape, reps, torch):
    import flax.linen as nn
    b, h, w, c = shape
    rng = np.random.default_rng(0)
    x, dy = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(2))
    scale, bias = jnp.asarray(1 + 0.3 * rng.standard_normal(c), jnp.float32), jnp.asarray(0.3 * rng.standard_normal(c), jnp.float32)
    flax_gn = nn.GroupNorm(32, epsilon=1e-6)

    def flax_fn(x, scale, bias):
        return nn.swish(flax_gn.apply({"params": {"scale": scale, "bias": bias}}, x))

    def vjp_fn(x, scale, bias):
        return group_norm(x, scale, bias, 32, 1e-6, True)

    grads = {}
    out = {}
    for name, f in (("flax autodiff", flax_fn), ("hand-written VJP", vjp_fn)):
        backward = lambda x, s, b, f=f: jax.vjp(f, x, s, b)[1](dy)  # noqa: E731
        grads[name] = jax.jit(backward)(x, scale, bias)
        out[name] = (median_ms(jax_timer(f, x, scale, bias), reps),
                     median_ms(jax_timer(backward, x, scale, bias), reps))
    for a, v in zip(grads["flax autodiff"], grads["hand-written VJP"]):
        np.testing.assert_allclose(np.asarray(v), np.asarray(a), rtol=2e-3, atol=2e-3 * float(jnp.max(jnp.abs(a))))
    xt = torch.randn(b, c, h, w, requires_grad=True)
    gn = torch.nn.GroupNorm(32, c, eps=1e-6)
    dyt = torch.randn(b, c, h, w)

    def torch_fwd():
        with torch.no_grad():
            torch.nn.functional.silu(gn(xt))

    def torch_fwd_bwd():
        torch.autograd.grad(torch.nn.functional.silu(gn(xt)), [xt, *gn.parameters()], dyt)

    out["torch"] = (median_ms(torch_fwd, reps), median_ms(torch_fwd_bwd, reps))
    return out


def bench_conv(shape, out_ch, reps, torch):
    b, h, w, c = shape
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    k = jnp.asarray(0.1 * rng.standard_normal((3, 3, c, out_ch)), jnp.float32)
    dy = jnp.asarray(rng.standard_normal((b, h, w, out_ch)), jnp.float32)
    conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",  # noqa: E731
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    res = {"jax fwd": median_ms(jax_timer(conv, x, k), reps),
           "jax dx": median_ms(jax_timer(lambda x, k: jax.vjp(conv, x, k)[1](dy)[0], x, k), reps),
           "jax dk": median_ms(jax_timer(lambda x, k: jax.vjp(conv, x, k)[1](dy)[1], x, k), reps)}
    xt = torch.randn(b, c, h, w, requires_grad=True)
    kt = torch.randn(out_ch, c, 3, 3, requires_grad=True)
    dyt = torch.randn(b, out_ch, h, w)

    def torch_fwd():
        with torch.no_grad():
            torch.nn.functional.conv2d(xt, kt, padding=1)

    res["torch fwd"] = median_ms(torch_fwd, reps)
    res["torch fwd+dx+dk"] = median_ms(
        lambda: torch.autograd.grad(torch.nn.functional.conv2d(xt, kt, padding=1), (xt, kt), dyt), reps)
    res["gflop"] = 2 * b * h * w * 9 * c * out_ch / 1e9
    return res


def bench_network(net, reps, torch):
    from bench import nets
    n = nets.NETS[net]
    b, s, c = n["train_batch"], n["image_size"], n["channels"]
    model = nets.jax_unet(net)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((b, s, s, c)), jnp.float32)
    t = jnp.asarray(rng.integers(0, 1000, b), jnp.int32)
    params = model.init(jax.random.PRNGKey(0), x, t)["params"]
    key = jax.random.PRNGKey(1)

    def loss(p):
        out = model.apply({"params": p}, x, t, train=True, rngs={"dropout": key})
        return jnp.mean((out - x) ** 2)

    res = {"jax fwd": median_ms(jax_timer(loss, params), reps),
           "jax fwd+bwd": median_ms(jax_timer(jax.value_and_grad(loss), params), reps)}
    tm = nets.torch_unet(net).train()
    xt, tt = torch.randn(b, c, s, s), torch.randint(0, 1000, (b,))

    def torch_fwd():
        with torch.no_grad():
            ((tm(xt, tt).sample - xt) ** 2).mean()

    def torch_fwd_bwd():
        tm.zero_grad(set_to_none=True)
        ((tm(xt, tt).sample - xt) ** 2).mean().backward()

    res["torch fwd"] = median_ms(torch_fwd, reps)
    res["torch fwd+bwd"] = median_ms(torch_fwd_bwd, reps)
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--net-reps", type=int, default=5)
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(2)
    import jaxdiff  # noqa: F401 (the library's CPU settings, as in training)
    shapes = {"MNIST 64x28x28x64": (64, 28, 28, 64), "CIFAR 16x32x32x128": (16, 32, 32, 128)}
    result = {"sums": {}, "group_norm_swish": {}, "conv3x3": {}, "network": {}}
    for name, shape in shapes.items():
        r = result["sums"][name] = bench_sums(shape, args.reps)
        print(f"sum over H,W  {name}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in r.items()), flush=True)
    for name, shape in shapes.items():
        r = result["group_norm_swish"][name] = bench_group_norm(shape, args.reps, torch)
        print(f"GroupNorm+swish {name} (fwd / fwd+bwd ms): "
              + ", ".join(f"{k} {f:.2f} / {fb:.2f}" for k, (f, fb) in r.items()), flush=True)
    for name, (shape, out_ch) in {"MNIST 64x28x28 32->32": ((64, 28, 28, 32), 32),
                                  "MNIST 64x28x28 96->32": ((64, 28, 28, 96), 32),
                                  "CIFAR 16x32x32 128->128": ((16, 32, 32, 128), 128),
                                  "CIFAR 16x8x8 256->256": ((16, 8, 8, 256), 256)}.items():
        r = result["conv3x3"][name] = bench_conv(shape, out_ch, args.reps, torch)
        print(f"conv3x3 {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()), flush=True)
    for net in ("mnist", "cifar10"):
        r = result["network"][net] = bench_network(net, args.net_reps, torch)
        print(f"network {net} (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in r.items()), flush=True)
    from bench.train_step import save_json
    save_json(args.json, result, args)


if __name__ == "__main__":
    main()
