"""Examples/s the input pipeline delivers versus examples/s the training step consumes.

Supply: ``jaxdiff.data.batch_stream`` over each kind of source, timed on this host after a warm-up
(uint8 batches ready on the host, as the train step receives them). Demand: one jitted
forward + backward (+ the on-device ``preprocess``) of the U-Net of a config, on the default JAX
backend, at that config's batch size. Then the two together: the train step fed by the stream,
reporting the fraction of wall time the loop waits for data ("stall").

    python bench/data_pipeline.py                 # writes bench/data_pipeline.png and .json
    python bench/data_pipeline.py --quick         # fewer steps

The local sources are built from Debian's Fashion-MNIST (``apt-get install dataset-fashion-mnist``);
the image-folder and TFDS cases first write 2,048 of its test images, as 32x32 RGB, to PNG files and to a
real ArrayRecord TFDS dataset (``jaxdiff.data.testing.write_tfds_dataset``) in a temporary folder, so they measure
PIL decoding plus the resize, per batch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import default, digits, fashion_mnist  # noqa: E402
from jaxdiff import data  # noqa: E402
from jaxdiff.data.testing import write_tfds_dataset  # noqa: E402
from jaxdiff.core import diffusion, families  # noqa: E402
from jaxdiff.drivers import data_config as data_block  # noqa: E402
from jaxdiff.drivers.model_config import model_from_config  # noqa: E402


def data_config(**overrides):
    d = ml_collections.ConfigDict(default.get_config().data.to_dict())
    d.update(overrides)
    return d


def supply_rate(source, batch_size, steps, num_workers, prefetch=4):
    """Examples/s of ``batch_stream`` over ``source`` (after ``prefetch`` + 2 warm-up batches)."""
    stream = data.batch_stream(source, seed=0, start_step=0, batch_size=batch_size, num_workers=num_workers,
                               prefetch=prefetch)
    for _ in range(prefetch + 2):
        next(stream)
    t0 = time.perf_counter()
    for _ in range(steps):
        next(stream)
    dt = time.perf_counter() - t0
    stream.close()
    return steps * batch_size / dt


def make_train_step(config, image_shape, num_classes):
    """A jitted ``params -> (loss, grads)`` step on a uint8 batch: preprocess + L_simple + backward."""
    tables = families.from_record(config.diffusion).tables
    model = model_from_config(config.model, image_shape[-1], num_classes if config.model.class_conditional else 0)
    b = config.training.batch_size
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_shape)), jnp.zeros((1,), jnp.int32))

    @jax.jit
    def step(params, images, labels, key):
        flip_key, loss_key, drop_key = jax.random.split(key, 3)
        x0 = data.preprocess(images, flip_key, config.data.random_flip)
        y = labels if config.model.class_conditional else None

        def loss_fn(p):
            fn = lambda xt, t: model.apply(p, xt, t, y, train=True, rngs={"dropout": drop_key})  # noqa: E731
            return diffusion.diffusion_loss(fn, tables, x0, loss_key)[0]

        return jax.value_and_grad(loss_fn)(params)

    images = jnp.zeros((b, *image_shape), jnp.uint8)
    labels = jnp.zeros((b,), jnp.int32)
    return step, params, images, labels


def demand_rate(step, params, images, labels, steps):
    jax.block_until_ready(step(params, images, labels, jax.random.PRNGKey(0)))  # compile
    t0 = time.perf_counter()
    for i in range(steps):
        out = step(params, images, labels, jax.random.PRNGKey(i))
    jax.block_until_ready(out)
    return steps * images.shape[0] / (time.perf_counter() - t0)


def stall_fraction(step, params, source, batch_size, steps, num_workers):
    """Train step fed by the stream: fraction of wall time spent waiting in ``next(stream)``."""
    stream = data.batch_stream(source, seed=0, start_step=0, batch_size=batch_size, num_workers=num_workers)
    batch = next(stream)
    jax.block_until_ready(step(params, batch["image"], batch["label"], jax.random.PRNGKey(0)))
    waited, t0 = 0.0, time.perf_counter()
    out = None
    for i in range(steps):
        w = time.perf_counter()
        batch = next(stream)
        waited += time.perf_counter() - w
        out = step(params, batch["image"], batch["label"], jax.random.PRNGKey(i))  # async dispatch
        jax.block_until_ready(out)  # one step in flight at a time, as a loop that logs the loss would be
    total = time.perf_counter() - t0
    stream.close()
    return waited / total


def write_png_folder(images, root):
    from PIL import Image

    for i, im in enumerate(images):
        Image.fromarray(im if im.shape[-1] == 3 else im[..., 0]).save(os.path.join(root, f"{i:05d}.png"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data_pipeline"))
    args = parser.parse_args()
    steps = 20 if args.quick else 60
    w = args.num_workers
    results = {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
               "host_cpus": os.cpu_count(), "num_workers": w, "supply": {}, "demand": {}, "stall": {}}

    fm = fashion_mnist.get_config()
    fashion = data_block.load_source(fm.data)
    fashion_test = data_block.load_source(fm.data, "test")
    supply = results["supply"]
    supply["digits 8x8 (memory), B=128"] = supply_rate(data.load_digits(), 128, steps, w)
    supply["Fashion-MNIST idx 28x28 (memory), B=128"] = supply_rate(fashion, 128, steps, w)
    rgb64 = data.ArraySource(data.resize_uint8(fashion_test.images[:4096], 64, 3), fashion_test.labels[:4096], 10,
                             "rgb64")
    supply["64x64x3 (memory), B=64"] = supply_rate(rgb64, 64, steps, w)
    tmp_dir = tempfile.TemporaryDirectory()
    tmp = tmp_dir.name
    os.makedirs(os.path.join(tmp, "png"))
    write_png_folder(data.resize_uint8(fashion_test.images[:2048], 32, 3), os.path.join(tmp, "png"))
    for size, b in ((32, 128), (64, 64)):
        lazy = data_block.load_source(data_config(dataset="image_folder", data_dir=os.path.join(tmp, "png"),
                                            image_size=size, cache_max_mb=0))
        for workers in sorted({1, w}):
            supply[f"PNG folder 32->{size} (decode per batch), B={b}, {workers} thread(s)"] = supply_rate(
                lazy, b, max(steps // 3, 5), workers)
    small = data.resize_uint8(fashion_test.images[:2048], 32, 3)
    write_tfds_dataset("fashion32_bench", os.path.join(tmp, "tfds"),
                            {"train": (small, fashion_test.labels[:2048])}, num_classes=10)
    for size, b in ((32, 128), (64, 64)):
        arr = data_block.load_source(data_config(dataset="fashion32_bench", data_dir=os.path.join(tmp, "tfds"),
                                           image_size=size, cache_max_mb=0))
        supply[f"TFDS ArrayRecord 32->{size} (decode per batch), B={b}, {w} thread(s)"] = supply_rate(
            arr, b, max(steps // 3, 5), w)
    for k, v in supply.items():
        print(f"supply {v:12,.0f} examples/s  {k}", flush=True)
    png8 = data_block.load_source(data_config(dataset="image_folder", data_dir=os.path.join(tmp, "png"), image_size=8,
                                         channels=1, cache_max_mb=0))

    demand = results["demand"]
    dsteps = 2 if args.quick else 5
    for cname, config in (("digits", digits.get_config()), ("fashion_mnist", fm)):
        s, b = config.data.image_size, config.training.batch_size
        name = f"train step, {cname} config ({s}x{s}, ch {config.model.ch}), B={b}"
        shape = (s, s, 1)
        step, params, images, labels = make_train_step(config, shape, 10)
        demand[name] = demand_rate(step, params, images, labels, dsteps)
        print(f"demand {demand[name]:12,.0f} examples/s  {name}", flush=True)
        if cname == "digits":  # the fastest consumer here, so the likeliest to wait for data
            results["stall"]["digits step fed by digits (memory)"] = stall_fraction(
                step, params, data.load_digits(), b, 4 * dsteps, w)
            results["stall"]["digits step fed by a PNG folder, 32->8 (decode per batch)"] = stall_fraction(
                step, params, png8, b, 4 * dsteps, w)
    tmp_dir.cleanup()

    for section in ("supply", "demand"):
        print(f"\n{section} (examples/s)")
        for k, v in results[section].items():
            print(f"  {v:12,.0f}  {k}")
    print("\nstall (fraction of the loop spent waiting for data)")
    for k, v in results["stall"].items():
        print(f"  {v:12.3%}  {k}")
    with open(args.out + ".json", "w") as f:
        json.dump(results, f, indent=1)
    plot(results, args.out + ".png")


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["supply"]) + list(results["demand"])
    values = list(results["supply"].values()) + list(results["demand"].values())
    colors = ["tab:blue"] * len(results["supply"]) + ["tab:red"] * len(results["demand"])
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(names) + 1.5))
    y = np.arange(len(names))[::-1]
    ax.barh(y, values, color=colors)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("examples / s (log)")
    ax.set_title(f"input pipeline (blue, {results['host_cpus']} host CPUs) vs train step (red, "
                 f"{results['backend']}: {results['device']})", fontsize=9)
    for yi, v in zip(y, values):
        ax.text(v, yi, f" {v:,.0f}", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
