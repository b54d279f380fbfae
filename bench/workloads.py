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
    images: float  # images per run() (a fraction of a batch when only part of a sampler is timed)
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


def jax_config(net: str, batch: int | None = None):
    """configs/default.py with the benchmark network, DDPM's optimiser and EMA settings."""
    from configs import default
    n = nets.NETS[net]
    c = default.get_config()
    c.data.image_size = n["image_size"]
    for k in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout"):
        c.model[k] = n[k]
    c.training.batch_size = batch or n["train_batch"]
    c.training.learning_rate, c.training.adam_eps = LR, ADAM_EPS
    c.training.grad_clip_norm, c.training.ema_decay = CLIP, EMA_DECAY
    return c


def jax_train(net: str, batch: int | None = None) -> Workload:
    """``jaxdiff.drivers.experiment.Experiment.step`` (the library's compiled step, state donated) on ``net``."""
    import jax

    from jaxdiff.drivers.experiment import Experiment

    n = nets.NETS[net]
    config = jax_config(net, batch)
    batch = config.training.batch_size
    trainer = Experiment(config, n["channels"], num_classes=0)
    state = trainer.init()
    data = {"image": jax.device_put(fake_images(net, batch)),
            "label": jax.device_put(np.zeros((batch,), np.int32))}
    t0 = time.perf_counter()
    compiled = trainer.step.lower(state, data).compile()
    info = _compiled_info(compiled, t0)
    info["flops_per_image"] = info["flops"] / batch
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], data)
        metrics["loss"].block_until_ready()

    run()
    info["peak_rss_mib"] = peak_rss_mib()
    return Workload(run, batch, info)


def make_tables():
    """DDPM's linear schedule over T=1000."""
    from jaxdiff.core import schedules
    return schedules.make_tables(schedules.linear_betas(1000))


def jax_sample(net: str, sampler: str = "ddpm", steps: int = 1000, batch: int = 16,
               run_steps: int = 0) -> Workload:
    """jaxdiff sampling: ``jaxdiff.run_sampler`` (one compiled ``lax.scan``) with the EMA-free
    network. ``run_steps > 0`` times only the first ``run_steps`` of the ``steps`` network calls
    and counts the images as that fraction of a full run (the scan body is the same every step)."""
    import jax
    import jax.numpy as jnp

    from jaxdiff.core import families, sampler_registry
    from jaxdiff.core.sampler import run_sampler

    n = nets.NETS[net]
    model = nets.jax_unet(net)
    tables = make_tables()
    shape = (batch, n["image_size"], n["image_size"], n["channels"])
    params = model.init(jax.random.PRNGKey(0), jnp.zeros(shape), jnp.zeros((batch,), jnp.int32))["params"]
    # The library's sampler (DDPM over all 1000 steps, or DDIM eta 0 with diffusers' default
    # "leading" spacing and set_alpha_to_one), cut to its first `run` positions when asked.
    full = sampler_registry.make_sampler(families.ddpm(tables), sampler, 0 if sampler == "ddpm" else steps, "leading")
    timesteps = np.asarray(full.timesteps)
    run = len(timesteps) if not run_steps else min(run_steps, len(timesteps))
    timed = full._replace(timesteps=timesteps[:run])

    def sample(params, x_T, key):
        denoise = lambda x, t: model.apply({"params": params}, x, t)  # noqa: E731
        return run_sampler(timed, denoise, x_T, key).samples

    x_T = jax.random.normal(jax.random.PRNGKey(1), shape)
    key = jax.random.PRNGKey(2)
    t0 = time.perf_counter()
    compiled = jax.jit(sample).lower(params, x_T, key).compile()
    info = _compiled_info(compiled, t0)
    # XLA's cost analysis counts a loop body once, so count one network call and scale by the steps.
    fwd = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))
    fwd_flops = _compiled_info(fwd.lower(params, x_T, jnp.zeros((batch,), jnp.int32)).compile(), 0.0)["flops"]
    info["flops"] = fwd_flops * len(timesteps)  # per full sampling run of `batch` images
    info["flops_per_image"] = info["flops"] / batch
    info["timed_steps"] = f"{run}/{len(timesteps)}"

    def go():
        compiled(params, x_T, key).block_until_ready()

    go()
    info["peak_rss_mib"] = peak_rss_mib()
    return Workload(go, batch * run / len(timesteps), info)


# -------------------------------------------------------------------------- PyTorch + diffusers


def _torch_setup(threads: int):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return torch


def _torch_abar():
    from jaxdiff.core import schedules
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


def torch_sample(net: str, sampler: str = "ddpm", steps: int = 1000, batch: int = 16,
                 run_steps: int = 0, threads: int = 2) -> Workload:
    """diffusers sampling: ``UNet2DModel`` + ``DDPMScheduler`` (1000 steps) or ``DDIMScheduler``
    (eta 0) in the usual ``for t in scheduler.timesteps`` loop under ``torch.inference_mode``."""
    torch = _torch_setup(threads)
    from diffusers import DDIMScheduler, DDPMScheduler

    n = nets.NETS[net]
    model = nets.torch_unet(net).eval()
    kw = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
              clip_sample=True)
    sched = DDPMScheduler(**kw) if sampler == "ddpm" else DDIMScheduler(**kw)
    sched.set_timesteps(1000 if sampler == "ddpm" else steps)
    timesteps = sched.timesteps
    run = len(timesteps) if not run_steps else min(run_steps, len(timesteps))
    shape = (batch, n["channels"], n["image_size"], n["image_size"])
    gen = torch.Generator().manual_seed(0)

    def go():
        with torch.inference_mode():
            x = torch.randn(shape, generator=gen)
            for t in timesteps[:run]:
                out = model(x, t).sample
                x = (sched.step(out, t, x, generator=gen).prev_sample if sampler == "ddpm"
                     else sched.step(out, t, x, eta=0.0).prev_sample)
        float(x[0, 0, 0, 0])

    t0 = time.perf_counter()
    go()
    info = {"compile_s": 0.0, "first_run_s": time.perf_counter() - t0, "peak_rss_mib": peak_rss_mib(),
            "timed_steps": f"{run}/{len(timesteps)}"}
    return Workload(go, batch * run / len(timesteps), info)


# ------------------------------------------------------------------------------- matmul peak


def matmul_peak(side: str, n: int = 2048, reps: int = 10, threads: int = 2) -> float:
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
