"""Time to quality on a CPU: Fashion-MNIST samples after fixed wall-clock training budgets.

Each recipe trains from scratch on Debian's Fashion-MNIST (``apt-get install dataset-fashion-mnist``) in
segments of ``training.max_minutes``: budgets 5, 10, 20 train 5 minutes, evaluate, resume (bit-exact) for
5 more, evaluate, then 10 more. A segment's minutes are wall clock from its first step, compiles included.
After each segment the recipe's sampler draws ``--samples`` images from the EMA parameters (class-balanced
labels for a class-conditional model) and the row reports:

- classifier FID against the training split (jaxdiff's own Fashion-MNIST classifier, trained once and
  cached; docs/evaluation.md);
- class balance: the entropy of the classifier's predicted-class histogram over log(10) (1 = every
  class equally often), and the rarest class's share;
- conditional accuracy (class-conditional recipes): the share the classifier assigns to the class asked for;
- training steps reached, training and sampling seconds.

Recipes, run one after the other in the same process (the same cores, one job at a time):

- ``seeds``: the seeds' tutorial recipe: their 1.6M-parameter U-Net (channels 32/64/64, two res blocks per
  level, attention at 14x14), AdamW 1e-3, batch 64, linear schedule, eps target, no EMA, unconditional,
  DDIM 50;
- ``cpu``: ``configs/fashion_mnist_cpu.py``.

    python bench/time_to_quality.py                       # budgets 5,10,20 for both (about 1.5 h on 2 cores)
    python bench/time_to_quality.py --budgets 5,10 --recipes seeds,cpu

Writes ``bench/time_to_quality.json``, ``bench/time_to_quality.md`` (the README table),
``bench/time_to_quality.png`` (FID against CPU-minutes) and a 10x10 grid of each recipe's samples at each
budget, ``bench/time_to_quality_<recipe>_<minutes>min.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import fashion_mnist_cpu  # noqa: E402
from jaxdiff.common import cpu_tuning, plotting  # noqa: E402
from jaxdiff.drivers import eval_mode, restore, train_loop  # noqa: E402
from jaxdiff.evaluation import classifier as classifier_lib  # noqa: E402
from jaxdiff.evaluation.accuracy import balanced_labels, generate_uint8  # noqa: E402
from jaxdiff.evaluation.features import fid_kid, reference_statistics  # noqa: E402

NUM_CLASSES = 10
CHUNK = 250  # samples per compiled call; the grid shows 100 of the first chunk


def save_grid(images, labels, conditional: bool, path):
    """10x10 grid of uint8 ``images``: ten of each class in class order (column k = class k), else the first 100."""
    order = np.argsort(labels, kind="stable").reshape(NUM_CLASSES, -1)[:, :10].T.ravel() if conditional else (
        np.arange(100))
    plotting.save_image_grid(images[order].astype(np.float32) / 127.5 - 1.0, path, nrow=10, scale=3)


def regrid(rows, out):
    """Redraw every row's grid from its checkpoint: the first chunk of its samples (the same keys and labels)."""
    for r in rows:
        config = recipe_config(r["recipe"], 1.0, out)
        workdir = os.path.join(out, r["recipe"])
        opened = restore.open_latest(config, workdir, "eval", log=lambda *_: None)
        params = restore.load_params(opened._replace(step=r["step"]))
        generate = eval_mode.make_image_generator(opened.experiment, config.sampling, 1.0, CHUNK)
        conditional = bool(config.model.class_conditional)
        labels = balanced_labels(CHUNK, NUM_CLASSES if conditional else 0)
        images = generate_uint8(generate, params, labels, CHUNK, jax.random.PRNGKey(0))
        save_grid(images, labels, conditional, grid_file(r["recipe"], r["minutes"]))


def grid_file(recipe: str, minutes: float) -> str:
    return os.path.join(ROOT, "bench", f"time_to_quality_{recipe}_{minutes:g}min.png")


def seeds_config():
    """The seeds' recipe inside jaxdiff: only what differs from ``configs/fashion_mnist_cpu.py``."""
    config = fashion_mnist_cpu.get_config("ddpm")
    config.diffusion.schedule = "linear"
    config.diffusion.target = "eps"
    config.model.ch_mult = (1, 2, 2)  # 32 / 64 / 64 at 28 / 14 / 7
    config.model.num_res_blocks = 2
    config.model.attn_resolutions = (14,)
    config.model.class_conditional = False
    config.training.batch_size = 64
    config.training.optimizer = "adamw"
    config.training.learning_rate = 1e-3
    config.training.weight_decay = 0.01  # torch.optim.AdamW's default
    config.training.warmup_steps = 0
    config.training.grad_clip_norm = 0.0
    config.training.ema_decay = 0.0  # no EMA: the "EMA" parameters are the parameters
    config.sampling.sampler = "ddim"
    config.sampling.num_steps = 50
    return config


RECIPES = {"seeds": seeds_config, "cpu": fashion_mnist_cpu.get_config}


def recipe_config(name: str, minutes: float, out: str):
    config = RECIPES[name]()
    config.training.num_train_steps = 10**7  # the budget ends every segment
    config.training.max_minutes = float(minutes)
    config.training.checkpoint_every = 10**7  # only each segment's last step
    config.training.sample_every = 0  # only each segment's final grid
    config.eval.classifier_dir = os.path.join(out, "classifier")
    return config


def class_balance(predicted: np.ndarray) -> tuple[float, float]:
    """``(H(p) / log K, min_k p_k)`` of the predicted-class frequencies ``p``."""
    p = np.bincount(predicted, minlength=NUM_CLASSES) / len(predicted)
    entropy = -np.sum(p[p > 0] * np.log(p[p > 0]))
    return float(entropy / np.log(NUM_CLASSES)), float(p.min())


def evaluate(config, workdir, samples: int, extractor, clf, ref, grid_path):
    opened = restore.open_latest(config, workdir, "eval", log=lambda *_: None)
    params = restore.load_params(opened)
    generate = eval_mode.make_image_generator(opened.experiment, config.sampling, 1.0, CHUNK)
    conditional = bool(config.model.class_conditional)
    labels = balanced_labels(samples, NUM_CLASSES if conditional else 0)
    key = jax.random.PRNGKey(0)
    t0 = time.perf_counter()
    images = generate_uint8(generate, params, labels, CHUNK, key)  # compile included: what a user waits for
    sample_s = time.perf_counter() - t0
    metrics = fid_kid(extractor, images, ref, 256, 10, min(1000, samples))
    predicted = np.argmax(classifier_lib.batched_apply(clf.apply_fn(), images, 256)[0], axis=-1)
    balance, rarest = class_balance(predicted)
    save_grid(images[:CHUNK], labels[:CHUNK], conditional, grid_path)
    return {"fid": float(metrics["fid"]), "kid": float(metrics["kid"]), "class_balance": balance,
            "rarest_class": rarest, "sample_s": sample_s, "step": int(opened.step),
            "accuracy": float(np.mean(predicted == labels)) if conditional else None}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--budgets", default="5,10,20", help="cumulative training minutes, comma-separated")
    parser.add_argument("--recipes", default="seeds,cpu")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "time_to_quality"))
    parser.add_argument("--replot", action="store_true", help="redraw the table and figure from the json")
    parser.add_argument("--regrid", action="store_true", help="redraw the sample grids from the kept checkpoints")
    args = parser.parse_args()
    cpu_tuning.apply()
    if args.replot or args.regrid:
        with open(os.path.join(ROOT, "bench", "time_to_quality.json")) as f:
            saved = json.load(f)
        if args.regrid:
            regrid(saved["rows"], args.out)
        return write(saved["rows"], saved["command"])
    budgets = [float(b) for b in args.budgets.split(",")]
    if budgets != sorted(budgets) or budgets[0] <= 0:
        raise SystemExit(f"--budgets must be increasing positive minutes, got {args.budgets}")
    config = recipe_config("cpu", 1.0, args.out)
    t0 = time.perf_counter()
    train, test, _ = eval_mode.load_splits(config.data)
    extractor, clf = eval_mode.build_extractor(config, args.out, train, test)
    ref = reference_statistics(extractor, train, eval_mode.reference_path(
        args.out, "fashion_mnist", tuple(train.image_shape), "train", extractor), 256)
    print(f"classifier (test accuracy {clf.test_accuracy:.3f}) and reference statistics: "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    for name in args.recipes.split(","):
        workdir = os.path.join(args.out, name)
        done, trained_s = 0.0, 0.0
        for minutes in budgets:
            config = recipe_config(name, minutes - done, args.out)
            t0 = time.perf_counter()
            train_loop.train(config, workdir, progress=True)
            trained_s += time.perf_counter() - t0
            done = minutes
            grid = grid_file(name, minutes)
            row = {"recipe": name, "minutes": minutes, "train_s": trained_s,
                   "sampler": f"{config.sampling.sampler} {config.sampling.num_steps}",
                   **evaluate(config, workdir, args.samples, extractor, clf, ref, grid)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            write(rows, "python bench/time_to_quality.py " + " ".join(sys.argv[1:]))


def write(rows, command):
    base = os.path.join(ROOT, "bench", "time_to_quality")
    with open(base + ".json", "w") as f:
        json.dump({"command": command.strip(), "rows": rows}, f, indent=1)
    lines = ["| recipe | budget (min) | training wall clock (min) | steps | sampler | sampling 1,000 (s) | "
             "classifier FID | class balance | rarest class | class accuracy |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        lines.append(f"| {r['recipe']} | {r['minutes']:g} | {r['train_s'] / 60:.1f} | {r['step']} | {r['sampler']} | "
                     f"{r['sample_s']:.0f} | {r['fid']:.2f} | {r['class_balance']:.3f} | "
                     f"{r['rarest_class']:.3f} | {acc} |")
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        pts = [r for r in rows if r["recipe"] == recipe]
        ax.plot([r["train_s"] / 60 for r in pts], [r["fid"] for r in pts], "o-",
                label=f"{recipe} ({pts[0]['sampler']})")
    ax.set_yscale("log")
    ax.set_xlabel("training wall clock on 2 CPU cores (minutes, compiles included)")
    ax.set_ylabel("classifier FID (Fashion-MNIST, 1,000 samples)")
    ax.set_title("Fashion-MNIST: time to quality")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(base + ".png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
