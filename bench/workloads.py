"""Benchmark workloads. Each builder runs inside its own worker process and returns a
:class:`Workload`: ``run()`` does one unit of work and blocks until it is finished.

jaxdiff side: one compiled training step (loss + grad + global-norm clip + Adam + EMA, state donated)
and one compiled sampler (a single ``lax.scan``). Reference side: the same network as diffusers'
``UNet2DModel`` in PyTorch eager mode, trained with ``torch.optim.Adam`` + ``clip_grad_norm_`` +
a foreach EMA, sampled with diffusers' ``DDPMScheduler`` / ``DDIMScheduler`` loop under
``torch.inference_mode``.
"""

from __future__ import annotations

import dataclasses
import resource
import time
from typing import Callable

import numpy as np

from bench import nets

LR, ADAM_EPS, CLIP, EMA_DECAY = 2e-4, 1e-8, 1.0, 0.9999


@dataclasses.dataclass
class Workload:
    run: Callable[[], None]
    images: int  # images per run()
    info: dict  # compile_s, flops, memory ...


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fake_images(net: str, batch: int, seed: int = 0) -> np.ndarray:
    n = nets.NETS[net]
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (batch, n["image_size"], n["image_size"], n["channels"]), np.uint8)


# ----------------------------------------------------------------------------------------- jaxdiff


def _compiled_info(compiled, t0: float) -> dict:
    info = {"compile_s": time.perf_counter() - t0}
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    info["flops"] = float(cost.get("flops", 0.0)) if cost else 0.0
    mem = compiled.memory_analysis()
    if mem is not None:
        info["xla_temp_mib"] = mem.temp_size_in_bytes / 2**20
        info["xla_args_mib"] = mem.argument_size_in_bytes / 2**20
    return info


def jax_train(net: str, batch: int | None = None) -> Workload:
    """The jaxdiff training step on ``net`` (``jaxdiff.train`` when present, else an equivalent)."""
    import jax

    n = nets.NETS[net]
    batch = batch or n["train_batch"]
    model = nets.jax_unet(net)
    step_fn, state = _jax_train_step(model, n, batch)
    images = jax.device_put(fake_images(net, batch))
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, images, 0).compile()
    info = _compiled_info(compiled, t0)
    holder = {"state": state, "i": 0}

    def run():
        holder["state"], loss = compiled(holder["state"], images, holder["i"])
        holder["i"] += 1
        loss.block_until_ready()

    run()
    info["peak_rss_mib"] = peak_rss_mib()
    return Workload(run, batch, info)


def _jax_train_step(model, n, batch):
    """(jitted step(state, uint8 images, step) -> (state, loss), initial state)."""
    import jax
    import jax.numpy as jnp
    import optax

    from jaxdiff import diffusion

    tables = make_tables()
    tx = optax.chain(optax.clip_by_global_norm(CLIP), optax.adam(LR, eps=ADAM_EPS))
    shape = (batch, n["image_size"], n["image_size"], n["channels"])
    params = model.init(jax.random.PRNGKey(0), jnp.zeros(shape), jnp.zeros((batch,), jnp.int32))["params"]
    state = (params, jax.tree_util.tree_map(jnp.copy, params), tx.init(params))

    def step(state, images, i):
        params, ema, opt_state = state
        key = jax.random.fold_in(jax.random.PRNGKey(0), i)
        loss_key, drop_key = jax.random.split(key)
        x0 = images.astype(jnp.float32) / 127.5 - 1.0

        def loss_fn(p):
            fn = lambda x, t: model.apply({"params": p}, x, t, train=True,  # noqa: E731
                                          rngs={"dropout": drop_key})
            return diffusion.diffusion_loss(fn, tables, x0, loss_key)[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        ema = jax.tree_util.tree_map(lambda e, p: e + (1.0 - EMA_DECAY) * (p - e), ema, params)
        return (params, ema, opt_state), loss

    return jax.jit(step, donate_argnums=0), state


def make_tables():
    """DDPM's linear schedule over T=1000."""
    from jaxdiff import schedules
    return schedules.make_tables(schedules.linear_betas(1000))


# -------------------------------------------------------------------------- PyTorch + diffusers


def _torch_setup(threads: int):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return torch


def _torch_abar():
    from jaxdiff import schedules
    return schedules.make_tables(schedules.linear_betas(1000)).alphas_cumprod


def torch_train(net: str, batch: int | None = None, threads: int = 2) -> Workload:
    """The same step in PyTorch eager mode with diffusers' ``UNet2DModel``: L_simple, backward,
    ``clip_grad_norm_(1.0)``, ``Adam(lr 2e-4, eps 1e-8)`` (foreach), EMA via ``_foreach_lerp_``."""
    torch = _torch_setup(threads)
    import torch.nn.functional as F

    n = nets.NETS[net]
    batch = batch or n["train_batch"]
    model = nets.torch_unet(net).train()
    params = [p for p in model.parameters()]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=LR, eps=ADAM_EPS)
    abar = torch.tensor(_torch_abar(), dtype=torch.float32)
    images = torch.from_numpy(fake_images(net, batch)).permute(0, 3, 1, 2).contiguous()

    def run():
        x0 = images.float() / 127.5 - 1.0
        t = torch.randint(0, 1000, (batch,))
        noise = torch.randn_like(x0)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(model(xt, t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1.0 - EMA_DECAY)
        loss.item()

    t0 = time.perf_counter()
    run()
    info = {"compile_s": 0.0, "first_step_s": time.perf_counter() - t0, "peak_rss_mib": peak_rss_mib()}
    return Workload(run, batch, info)


# ------------------------------------------------------------------------------- matmul peak


def matmul_peak(side: str, n: int = 2048, reps: int = 5, threads: int = 2) -> float:
    """Measured float32 matrix-multiply throughput (FLOP/s) of ``side``: best of ``reps`` ``n x n``."""
    best = float("inf")
    if side == "jax":
        import jax
        import jax.numpy as jnp
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
        f = jax.jit(lambda a: a @ a)
        f(a).block_until_ready()
        for _ in range(reps):
            t0 = time.perf_counter()
            f(a).block_until_ready()
            best = min(best, time.perf_counter() - t0)
    else:
        torch = _torch_setup(threads)
        a = torch.randn(n, n)
        a @ a
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best
