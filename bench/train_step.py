"""Training-step throughput: jaxdiff vs PyTorch + diffusers, alternating A/B in one run.

    python -m bench.train_step --net=mnist            # small MNIST U-Net, batch 64
    python -m bench.train_step --net=cifar10          # DDPM CIFAR-10 U-Net, batch 16
    python -m bench.train_step --net=mnist --untuned  # also jaxdiff with JAXDIFF_CPU_TUNING=0

The jaxdiff side runs as ``main.py`` runs (tcmalloc preloaded when installed, see
``jaxdiff/cpu_tuning.py``); ``--glibc-malloc`` adds a side without it and ``--torch-tcmalloc`` a
PyTorch side with it.

One step = L_simple loss, backward, global-norm clip 1.0, Adam (lr 2e-4, eps 1e-8) and an EMA
update of every parameter, on a fixed uint8 batch (no input pipeline on either side). Prints
images/s per side (median over rounds), the median per-round ratio to PyTorch, compile time, XLA's
FLOP count for the step, model FLOP utilisation against each side's measured float32 matmul peak,
and peak memory. Add ``--json=PATH`` to save everything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

from bench import harness, nets


def save_json(path: str, result: dict, args) -> None:
    """Write a benchmark's result, its arguments and the machine to ``path`` (nothing if empty)."""
    if path:
        with open(path, "w") as f:
            json.dump(dict(result, args=vars(args), machine=machine()), f, indent=1)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def add_side_args(p: argparse.ArgumentParser) -> None:
    """The options every A/B entry point shares: the sides it runs (see :func:`sides_for`) and --json."""
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch intra-op threads")
    p.add_argument("--untuned", action="store_true", help="also time jaxdiff with JAXDIFF_CPU_TUNING=0")
    p.add_argument("--glibc-malloc", action="store_true",
                   help="also time jaxdiff tuned but without the tcmalloc main.py runs under")
    p.add_argument("--torch-tcmalloc", action="store_true",
                   help="also time PyTorch with tcmalloc preloaded, as jaxdiff's main.py runs")
    p.add_argument("--also-threads", type=int, default=0,
                   help="also time PyTorch with this many threads (an extra side, for contention)")
    p.add_argument("--json", default="")


def tcmalloc_env() -> dict:
    """``{"LD_PRELOAD": ...}`` as ``main.py`` restarts itself with (``jaxdiff.common.cpu_tuning``), or
    {} when tcmalloc is not installed."""
    from jaxdiff.common import cpu_tuning

    value = cpu_tuning.tcmalloc_preload(dict(os.environ))
    return {"LD_PRELOAD": value} if value else {}


def sides_for(kind: str, kw: dict, args) -> list[harness.Side]:
    """jaxdiff side(s) first, the PyTorch reference last (ratios are taken against it). ``kw`` are
    the workload's arguments; the jaxdiff side runs in the process ``main.py`` would give it."""
    malloc = tcmalloc_env()
    sides = [harness.Side("jaxdiff", f"jax_{kind}", kw, env=malloc)]
    if args.glibc_malloc:
        sides.append(harness.Side("jaxdiff-glibc-malloc", f"jax_{kind}", kw))
    if args.untuned:
        sides.append(harness.Side("jaxdiff-untuned", f"jax_{kind}", kw, env={"JAXDIFF_CPU_TUNING": "0"}))
    if args.also_threads:
        sides.append(harness.Side(f"torch {args.also_threads} thread(s)", f"torch_{kind}",
                                  dict(kw, threads=args.also_threads)))
    if args.torch_tcmalloc:
        sides.append(harness.Side("torch+tcmalloc", f"torch_{kind}", dict(kw, threads=args.threads),
                                  env=malloc))
    sides.append(harness.Side("torch+diffusers", f"torch_{kind}", dict(kw, threads=args.threads)))
    return sides


def report(result: dict) -> None:
    """Print the table of one run. Model FLOPs per image come from XLA's cost analysis of the
    jaxdiff program (the smallest count among jaxdiff sides: the same network on both sides);
    MFU = FLOPs/image x images/s / the machine's measured float32 matmul peak (best of
    jax and torch, before and after the timed rounds)."""
    peaks = result["peaks"]
    print("matmul peak (2048^3 float32): " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s"
                                                         for k, v in peaks.items()))
    fpi = min((s["flops_per_image"] for s in result["sides"].values() if s.get("flops_per_image")),
              default=None)
    for label, s in result["sides"].items():
        peak = max(peaks.values(), default=None)  # the machine's peak: best of both libraries
        line = f"{label:18s} {s['images_per_s']:8.3f} img/s  per run {s['step_s'] * 1e3:9.1f} ms"
        if fpi and peak:
            line += f"  MFU {fpi * s['images_per_s'] / peak * 100:5.1f}%"
        line += f"  compile {s.get('compile_s', 0):6.1f} s  peak RSS {s.get('peak_rss_mib', 0):7.0f} MiB"
        print(line)
    for k, v in result["ratios"].items():
        print(f"ratio {k}: {v:.3f}x (median of per-round ratios)")
    if fpi:
        print(f"XLA cost analysis: {fpi / 1e9:.3f} GFLOP per image")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", choices=sorted(nets.NETS), default="mnist")
    p.add_argument("--batch", type=int, default=0, help="default: the network's benchmark batch")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--reps", type=int, default=3, help="steps per side per round")
    add_side_args(p)
    args = p.parse_args(argv)
    print(f"train step, net={args.net}, machine: {machine()}, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"command: python -m bench.train_step {' '.join(argv if argv is not None else sys.argv[1:])}")
    kw = dict(net=args.net, **({"batch": args.batch} if args.batch else {}))
    result = harness.run_ab(sides_for("train", kw, args), args.rounds, args.reps)
    report(result)
    save_json(args.json, result, args)


if __name__ == "__main__":
    main()
