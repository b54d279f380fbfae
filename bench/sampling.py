"""Sampling throughput: jaxdiff vs PyTorch + diffusers, alternating A/B in one run.

    python -m bench.sampling --net=cifar10 --sampler=ddim              # DDIM 50 steps, batch 16
    python -m bench.sampling --net=cifar10 --sampler=ddpm --run-steps=50
    python -m bench.sampling --net=mnist --sampler=ddpm --run-steps=0  # all 1000 steps

jaxdiff runs the whole sampler as one compiled ``lax.scan``; diffusers runs ``UNet2DModel`` in the
usual Python loop over ``scheduler.timesteps`` under ``torch.inference_mode``. ``--run-steps=K``
times only the first K network calls of the sampler on both sides and reports images/s for the full
sampler (every step costs the same: one network call plus a few elementwise ops), which keeps a
1000-step DDPM run of the 35.7M-parameter network within minutes on two cores.
"""

from __future__ import annotations

import argparse
import sys
import time

from bench import harness, nets
from bench.train_step import add_side_args, machine, report, save_json, sides_for


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", choices=sorted(nets.NETS), default="cifar10")
    p.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddim")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (DDPM always walks all 1000)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--run-steps", type=int, default=-1,
                   help="network calls timed per run (0 = all; default 50 for ddpm, all for ddim)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=1)
    add_side_args(p)
    args = p.parse_args(argv)
    run_steps = args.run_steps if args.run_steps >= 0 else (50 if args.sampler == "ddpm" else 0)
    total = 1000 if args.sampler == "ddpm" else args.steps
    print(f"sampling {args.sampler.upper()} {total} steps, net={args.net}, batch {args.batch}, "
          f"timing {run_steps or total}/{total} network calls; machine: {machine()}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    print(f"command: python -m bench.sampling {' '.join(argv if argv is not None else sys.argv[1:])}")
    kw = dict(net=args.net, sampler=args.sampler, steps=total, batch=args.batch, run_steps=run_steps)
    result = harness.run_ab(sides_for("sample", kw, args), args.rounds, args.reps)
    report(result)
    save_json(args.json, result, args)


if __name__ == "__main__":
    main()
