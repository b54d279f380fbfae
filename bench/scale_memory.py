"""Memory of one compiled train step under the scale-out options (XLA's own accounting).

For a config (default: configs/digits.py at a larger batch) this compiles the train step with
float32 / bfloat16 compute, with and without rematerialised res blocks, and with gradient
accumulation, and prints two numbers for each:

* residual MiB: what JAX keeps from the forward pass for the backward pass of one (micro-)batch
  (``saved_residuals`` of the network's loss; independent of the backend);
* XLA temp MiB: XLA's ``memory_analysis()`` of the compiled step on this device (activations,
  gradients, scratch), plus argument MiB (state and batch).

Nothing runs; only compiles. Writes ``bench/scale_memory.json``.

    python bench/scale_memory.py [--batch 256] [--ch 32]
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax._src.ad_checkpoint import saved_residuals  # noqa: E402  (no public alias in this JAX)

from configs import digits  # noqa: E402
from jaxdiff.common import parallel  # noqa: E402
from jaxdiff.drivers.experiment import Experiment  # noqa: E402

VARIANTS = [
    ("float32", {}),
    ("bfloat16", {"training.dtype": "bfloat16"}),
    ("float32 + remat", {"model.remat": True}),
    ("bfloat16 + remat", {"training.dtype": "bfloat16", "model.remat": True}),
    ("float32, 4 accumulated micro-batches", {"training.grad_accum_steps": 4}),
]


def memory(batch: int, ch: int, overrides: dict) -> dict:
    config = digits.get_config()
    config.model.ch = ch
    config.training.batch_size = batch
    config.parallel.num_devices = 1
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    trainer = Experiment(config, channels=1, num_classes=10)
    state = trainer.abstract_state()
    sharding = parallel.batch_sharded(trainer.mesh)
    batch_spec = {"image": jax.ShapeDtypeStruct((batch, 8, 8, 1), np.uint8, sharding=sharding),
                  "label": jax.ShapeDtypeStruct((batch,), np.int32, sharding=sharding)}
    m = trainer.step.lower(state, batch_spec).compile().memory_analysis()
    micro = batch // config.training.grad_accum_steps
    x, t = jnp.zeros((micro, 8, 8, 1)), jnp.zeros((micro,), jnp.int32)
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), state.params)
    res = saved_residuals(lambda p: jnp.sum(trainer.model.apply({"params": p}, x, t, t, train=True)), params)
    residual = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a, _ in res)
    return {"residual_bytes": residual, "argument_bytes": int(m.argument_size_in_bytes),
            "temp_bytes": int(m.temp_size_in_bytes), "output_bytes": int(m.output_size_in_bytes)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--ch", type=int, default=32)
    args = parser.parse_args()
    rows = []
    print(f"device: {jax.devices()[0].device_kind}, digits config, ch={args.ch}, batch={args.batch}")
    print(f"{'variant':40s} {'residual MiB':>12s} {'XLA temp MiB':>12s} {'args MiB':>9s}")
    for name, overrides in VARIANTS:
        m = memory(args.batch, args.ch, overrides)
        rows.append({"variant": name, **m})
        print(f"{name:40s} {m['residual_bytes'] / 2**20:12.1f} {m['temp_bytes'] / 2**20:12.1f} "
              f"{m['argument_bytes'] / 2**20:9.1f}", flush=True)
    out = {"device": jax.devices()[0].device_kind, "batch": args.batch, "ch": args.ch, "rows": rows}
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "scale_memory.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
