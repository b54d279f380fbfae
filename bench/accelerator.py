"""The accelerator table for the DDPM CIFAR-10 network, in one short run for the first time a GPU or
TPU is at hand: training and sampling in float32 and bfloat16, images/s, MFU against the chip's
peak, compile time and memory.

    python -m bench.accelerator --json=bench/accelerator.json        # ~5 minutes on one GPU
    python -m bench.accelerator --net=mnist --batch=8 --steps=3      # a smoke run on a CPU

Training is the library's compiled step as the command line builds it (``Experiment.step``: loss,
backward, clipping, Adam, EMA, state donated; ``training.dtype`` for the network's compute dtype,
float32 state); sampling is one compiled ``lax.scan`` of the network (``jaxdiff.run_sampler``,
DDIM with ``--sample-steps`` steps). Each figure is the median of ``--rounds`` timed rounds of
``--steps`` calls after a warm-up. FLOPs are XLA's cost analysis of the programs (a sampler's
loop body counted once per step); MFU = FLOPs/s / the chip's dense peak for that dtype (the table
below, or ``--peak-tflops``). Memory is the device's ``peak_bytes_in_use`` (GPU/TPU) or XLA's
estimate of arguments + temporaries (CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench import nets, workloads

# Dense peak TFLOP/s per chip (vendor data sheets): (float32, bfloat16). float32 is the non-tensor-core
# rate on GPUs (XLA runs float32 matmuls in TF32 on Ampere+ only with the default precision, which
# jaxdiff does not change).
PEAK_TFLOPS = {
    "H200": (67.0, 989.0), "H100": (67.0, 989.0), "A100": (19.5, 312.0), "L4": (30.3, 121.0),
    "A10": (31.2, 125.0), "V100": (15.7, 125.0), "TPU v4": (275.0, 275.0), "TPU v5 lite": (197.0, 197.0),
    "TPU v5e": (197.0, 197.0), "TPU v5p": (459.0, 459.0), "TPU v6 lite": (918.0, 918.0), "TPU v6e": (918.0, 918.0),
}


def chip_peak(device, dtype: str, override: float = 0.0) -> float | None:
    """The peak TFLOP/s of ``device`` for ``dtype`` (``None`` when the chip is not in the table)."""
    if override:
        return override
    kind = getattr(device, "device_kind", "")
    for name, (fp32, bf16) in PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            return bf16 if dtype == "bfloat16" else fp32
    return None


def device_peak_mib(device) -> float | None:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return stats.get("peak_bytes_in_use", 0) / 2 ** 20 if stats else None


def timed(fn, steps: int, rounds: int) -> float:
    """Median seconds per call of ``fn`` over ``rounds`` rounds of ``steps`` calls (after one warm-up)."""
    fn()
    per_call = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        per_call.append((time.perf_counter() - t0) / steps)
    return statistics.median(per_call)


def train_row(net: str, batch: int, dtype: str, steps: int, rounds: int, peak: float) -> dict:
    from jaxdiff.drivers.experiment import Experiment

    n = nets.NETS[net]
    config = workloads.jax_config(net, batch)
    config.training.dtype = dtype
    experiment = Experiment(config, n["channels"], num_classes=0)
    state = experiment.init()
    data = {"image": jax.device_put(workloads.fake_images(net, batch)),
            "label": jax.device_put(np.zeros((batch,), np.int32))}
    t0 = time.perf_counter()
    compiled = experiment.step.lower(state, data).compile()
    info = workloads._compiled_info(compiled, t0)
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], data)
        metrics["loss"].block_until_ready()

    seconds = timed(run, steps, rounds)
    return _row("train", net, dtype, batch, seconds, info, peak)


def sample_row(net: str, batch: int, dtype: str, sample_steps: int, steps: int, rounds: int, peak: float) -> dict:
    from jaxdiff.core import families, sampler_registry
    from jaxdiff.core.sampler import run_sampler

    n = nets.NETS[net]
    model = nets.jax_unet(net, dtype=jnp.dtype(dtype))
    shape = (batch, n["image_size"], n["image_size"], n["channels"])
    params = model.init(jax.random.PRNGKey(0), jnp.zeros(shape), jnp.zeros((batch,), jnp.int32))["params"]
    sampler = sampler_registry.make_sampler(families.ddpm(workloads.make_tables()), "ddim", sample_steps, "leading")

    def sample(params, x_T, key):
        return run_sampler(sampler, lambda x, t: model.apply({"params": params}, x, t), x_T, key).samples

    x_T, key = jax.random.normal(jax.random.PRNGKey(1), shape), jax.random.PRNGKey(2)
    t0 = time.perf_counter()
    compiled = jax.jit(sample).lower(params, x_T, key).compile()
    info = workloads._compiled_info(compiled, t0)
    fwd = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t)).lower(params, x_T, jnp.zeros((batch,), jnp.int32))
    info["flops"] = workloads._compiled_info(fwd.compile(), 0.0)["flops"] * sample_steps
    seconds = timed(lambda: compiled(params, x_T, key).block_until_ready(), steps, rounds)
    return _row(f"sample (ddim {sample_steps})", net, dtype, batch, seconds, info, peak)


def _row(what, net, dtype, batch, seconds, info, peak) -> dict:
    device = jax.devices()[0]
    tflops = info["flops"] / seconds / 1e12
    memory = device_peak_mib(device)
    return {"workload": what, "net": net, "dtype": dtype, "batch": batch, "images_per_s": batch / seconds,
            "seconds_per_call": seconds, "compile_s": info["compile_s"], "tflops_per_s": tflops,
            "mfu": tflops / peak if peak else None,
            "memory_mib": memory if memory is not None else info.get("xla_args_mib", 0) + info.get("xla_temp_mib", 0),
            "memory_source": "peak_bytes_in_use" if memory is not None else "xla estimate"}


def markdown(rows, device) -> str:
    lines = [f"Device: {device.platform} {getattr(device, 'device_kind', '')} ({jax.device_count()} devices, "
             f"jax {jax.__version__}; one device used)", "",
             "| workload | dtype | batch | images/s | TFLOP/s | MFU | compile (s) | memory (MiB) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        lines.append(f"| {r['workload']} | {r['dtype']} | {r['batch']} | {r['images_per_s']:.1f} | "
                     f"{r['tflops_per_s']:.2f} | {mfu} | {r['compile_s']:.1f} | {r['memory_mib']:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default="cifar10", choices=sorted(nets.NETS))
    p.add_argument("--batch", type=int, default=128, help="training batch (DDPM: 128); sampling uses the same")
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--steps", type=int, default=20, help="timed calls per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="override the chip's peak (both dtypes)")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    device = jax.devices()[0]
    rows = []
    for dtype in args.dtypes.split(","):
        peak = chip_peak(device, dtype, args.peak_tflops)
        rows.append(train_row(args.net, args.batch, dtype, args.steps, args.rounds, peak))
        print(json.dumps(rows[-1]), flush=True)
        rows.append(sample_row(args.net, args.batch, dtype, args.sample_steps, max(1, args.steps // 10),
                               args.rounds, peak))
        print(json.dumps(rows[-1]), flush=True)
    table = markdown(rows, device)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": getattr(device, "device_kind", device.platform), "args": vars(args), "rows": rows,
                       "table": table}, f, indent=1)


if __name__ == "__main__":
    main()
