"""Op-level timings behind the training-step gap (issue 7): jaxdiff's XLA:CPU programs vs PyTorch.

    python -m bench.ops                 # ~3 min on 2 cores; --json=PATH saves the table

Everything runs in this one process, one op at a time (median of ``--reps`` after warm-up, 2 threads
on both sides). It measures, at the layer shapes of the two benchmark networks:

1. ``sum over H, W`` of an NHWC tensor (GroupNorm statistics, bias and time-embedding gradients):
   ``jnp.sum`` (a strided loop on XLA:CPU) vs the same sum as a batched product with ones.
2. GroupNorm + swish, forward and forward + backward: Flax autodiff, the library's hand-written VJP
   (:func:`jaxdiff.models.layers.group_norm`: forward saves only ``x`` and the group moments; backward is
   two streaming passes whose sums are products with ones), and ``torch.nn.GroupNorm`` + ``F.silu``.
3. 3x3 convolution: forward, input gradient and kernel gradient in XLA vs PyTorch's forward + both
   gradients (oneDNN).
4. The whole network: forward (train mode) and forward + backward of the L2 loss, both sides.

The hand-written GroupNorm is checked against Flax before it is timed (``tests/test_layers.py``
tests it against a float64 reference). Op-level times do not predict the training step: XLA fuses
each op's producers into it, so the whole-step A/B runs in bench/README.md decide what is kept.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.models.layers import group_norm, sum_leading

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
