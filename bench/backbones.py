"""Training speed per backbone on the CPU configs: the digits U-Net, the digits DiT, the digits
autoencoder (``--mode=train_autoencoder``) and latent diffusion on its 4x4x4 latents (U-Net and DiT),
all at batch 64, in one run.

    python -m bench.backbones [--rounds=5] [--steps=20] [--json=bench/backbones.json]

Each workload builds the experiment its config gives (the compiled train step, donated state), runs
one warm-up step (the compile, timed apart), then ``rounds`` rounds of ``steps`` steps on a fixed batch
(no input pipeline), with the CPU tuning ``main.py`` applies (tcmalloc, XLA flags); prints the
median steps/s and images/s and the parameter count. Round-robin over
the workloads so that a slow spell of the machine hits all of them alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])

from bench.train_step import machine  # noqa: E402
from jaxdiff.common import cpu_tuning  # noqa: E402
from configs import digits, digits_dit, digits_latent  # noqa: E402
from jaxdiff.common import parallel  # noqa: E402
from jaxdiff.drivers.autoencoder_experiment import AutoencoderExperiment  # noqa: E402
from jaxdiff.drivers.data_config import load_source  # noqa: E402
from jaxdiff.drivers.experiment import Experiment  # noqa: E402
from jaxdiff.models.unet import count_params  # noqa: E402

BATCH = 64


class FakeLatentSpace:
    """A latent space's shape without an autoencoder checkpoint: the step's cost does not depend on
    the latents' values."""

    def __init__(self, shape):
        self.shape, self.info = shape, {}


def workloads():
    """``{name: (experiment, batch)}``."""
    source = load_source(digits.get_config().data, "train")
    images, labels = source[np.arange(BATCH)]
    pixel = {"image": np.asarray(images), "label": np.asarray(labels)}
    latent = {"image": np.random.default_rng(0).standard_normal((BATCH, 4, 4, 4)).astype(np.float32),
              "label": np.asarray(labels)}
    out = {}
    for name, module, batch, space in (("unet", digits, pixel, None), ("dit", digits_dit, pixel, None),
                                       ("latent_unet", digits_latent, latent, FakeLatentSpace((4, 4, 4)))):
        config = module.get_config()
        config.training.batch_size = BATCH
        config.parallel.num_devices = 1
        out[name] = (Experiment(config, batch["image"].shape[-1], 10, latent=space), batch)
    config = digits_latent.get_config()
    config.training.batch_size = BATCH
    config.latent.autoencoder = ""
    config.model.backbone = "dit"
    config.parallel.num_devices = 1
    out["latent_dit"] = (Experiment(config, 4, 10, latent=FakeLatentSpace((4, 4, 4))), latent)
    ae_config = digits_latent.get_config()
    ae_config.training.batch_size = BATCH
    ae_config.parallel.num_devices = 1
    out["autoencoder"] = (AutoencoderExperiment(ae_config, 1), {"image": pixel["image"]})
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    cpu_tuning.reexec_with_tcmalloc()  # as main.py runs
    cpu_tuning.apply()
    runs = {}
    for name, (experiment, batch) in workloads().items():
        state = experiment.init()
        batch = parallel.global_batch(batch, experiment.mesh)
        t0 = time.perf_counter()
        state, metrics = experiment.step(state, batch)
        jax.block_until_ready(metrics)
        runs[name] = {"experiment": experiment, "state": state, "batch": batch, "rates": [],
                      "compile_s": time.perf_counter() - t0, "params": count_params(state.params)}
    for _ in range(args.rounds):
        for name, run in runs.items():
            state, step, batch = run["state"], run["experiment"].step, run["batch"]
            t0 = time.perf_counter()
            for _ in range(args.steps):
                state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
            run["rates"].append(args.steps / (time.perf_counter() - t0))
            run["state"] = state
    result = {name: {"steps_per_s": statistics.median(r["rates"]),
                     "images_per_s": BATCH * statistics.median(r["rates"]), "compile_s": round(r["compile_s"], 2),
                     "params": r["params"], "rounds": r["rates"]} for name, r in runs.items()}
    print(f"| workload (batch {BATCH}) | parameters | steps/s | images/s | first step (compile) |")
    print("|---|---|---|---|---|")
    for name, r in result.items():
        print(f"| {name} | {r['params']:,} | {r['steps_per_s']:.1f} | {r['images_per_s']:.0f} "
              f"| {r['compile_s']:.1f} s |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": result, "args": vars(args), "machine": machine()}, f, indent=1)


if __name__ == "__main__":
    main()
