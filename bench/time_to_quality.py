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
- ``cpu``: ``configs/fashion_mnist_cpu.py``;
- the trials (:data:`TRIALS`): ``cpu`` with one choice changed (batch, width, depth, attention, bfloat16,
  learning rate and its schedule, family, target, loss weighting, seed, post-hoc EMA profiles); and, drawn
  from ``cpu``'s (or ``--sampling-from``'s) last checkpoint without training again, the sampling trials
  (:data:`SAMPLING_TRIALS`: solver and steps, guidance, no EMA; with ``--sampling-from phema``, post-hoc
  EMA lengths).

Like ``main.py``, it restarts itself under tcmalloc when Debian's ``libtcmalloc-minimal4`` is installed.

    python bench/time_to_quality.py                       # budgets 5,10,20 for seeds and cpu
    python bench/time_to_quality.py --name time_to_quality_trials --budgets 5 \
        --recipes cpu,batch64,batch256,ch48,res2,bf16,edm,ddpm_v,ddpm_v_minsnr --sampling-trials w1,w3
    python bench/time_to_quality.py --name time_to_quality_trials2 --budgets 5 \
        --recipes phema,seed1,attn14,lr1e-3,warmup25,lr_isqrt,lr_cosine --sampling-from phema \
        --sampling-trials ema_std0.05,ema_std0.1,ema_std0.2
    python bench/time_to_quality.py --name time_to_quality_seeds --budgets 5 --recipes cpu,seed2

Writes ``bench/<name>.json``, ``bench/<name>.md`` (the table), ``bench/<name>.png`` (FID against
CPU-minutes) and a 10x10 grid of each row's samples, ``<name>_<recipe>_<minutes>min.png`` (in ``bench/``
for the default name, else in ``--out``); each recipe's checkpoints stay in ``<out>/<name>/<recipe>``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import fashion_mnist_cpu  # noqa: E402
from jaxdiff.common import cpu_tuning, plotting  # noqa: E402
from jaxdiff.drivers import eval_features, eval_mode, train_loop, trained_model  # noqa: E402
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


def draw(config, workdir, samples: int, step: int | None = None):
    """``(images uint8 [samples, 28, 28, 1], labels, seconds, step)`` from ``workdir``'s checkpoint ``step``
    (the latest by default): class-balanced labels for a class-conditional model, keys from ``PRNGKey(0)``; the
    seconds include the sampler's compile (what a user waits for)."""
    opened = trained_model.open_trained(config, workdir, "eval", log=lambda *_: None)
    opened = opened if step is None else opened._replace(step=step)
    params = trained_model.load_params(opened, use_ema=bool(config.sampling.use_ema),
                                 ema_std=config.sampling.ema_std)
    generate = eval_mode.make_image_generator(opened.experiment, config.sampling,
                                              config.sampling.guidance_scale, CHUNK)
    labels = balanced_labels(samples, NUM_CLASSES if config.model.class_conditional else 0)
    t0 = time.perf_counter()
    images = generate_uint8(generate, params, labels, CHUNK, jax.random.PRNGKey(0))
    return images, labels, time.perf_counter() - t0, int(opened.step)


def regrid(rows, out, name):
    """Redraw every row's grid from its checkpoint: the first chunk of its samples (the same keys and labels)."""
    for r in rows:
        config = row_config(r, out)
        images, labels, _, _ = draw(config, os.path.join(out, name, r["recipe"]), CHUNK, r["step"])
        save_grid(images, labels, bool(config.model.class_conditional), grid_file(name, out, r))


def grid_file(name: str, out: str, row) -> str:
    """The benchmark's own grids go to bench/ (the README shows them), trial runs' to ``out``."""
    folder = os.path.join(ROOT, "bench") if name == "time_to_quality" else out
    trial = f"_{row['sampling_trial']}" if row.get("sampling_trial") else ""
    return os.path.join(folder, f"{name}_{row['recipe']}{trial}_{row['minutes']:g}min.png")


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
    config.sampling.guidance_scale = 1.0
    return config


RECIPES = {"seeds": seeds_config, "cpu": fashion_mnist_cpu.get_config}

# One-at-a-time changes to ``cpu`` (``--recipes cpu,batch64,...``): name -> (family, {dotted field: value}).
TRIALS = {
    "batch64": ("flow", {"training.batch_size": 64}),
    "batch256": ("flow", {"training.batch_size": 256}),
    "ch48": ("flow", {"model.ch": 48}),
    "res2": ("flow", {"model.num_res_blocks": 2}),
    "attn14": ("flow", {"model.attn_resolutions": (14, 7)}),
    "bf16": ("flow", {"training.dtype": "bfloat16"}),
    "lr1e-3": ("flow", {"training.learning_rate": 1e-3}),
    "edm": ("edm", {"sampling.sampler": "heun", "sampling.num_steps": 10}),  # 19 network evaluations
    "ddpm_v": ("ddpm", {"diffusion.target": "v", "diffusion.schedule": "cosine",
                        "sampling.sampler": "dpm_solver++", "sampling.num_steps": 20}),
    "ddpm_v_minsnr": ("ddpm", {"diffusion.target": "v", "diffusion.schedule": "cosine",
                               "diffusion.loss_weighting": "min_snr",
                               "sampling.sampler": "dpm_solver++", "sampling.num_steps": 20}),
    # cpu again with other keys: the run-to-run spread of a row
    **{f"seed{seed}": ("flow", {"seed": seed}) for seed in (1, 2)},
    # the learning-rate schedule, for the ~150 steps 5 minutes reach on the 2-core machine of 2026-12-02: a
    # quarter of the warm-up; after the 100 warm-up steps, cosine to 0 over 50 steps, or EDM2's inverse
    # square root from 10 steps on (lr / sqrt(max(m / 10, 1)))
    "warmup25": ("flow", {"training.warmup_steps": 25}),
    "lr_cosine": ("flow", {"training.lr_schedule": "cosine", "training.lr_decay_steps": 50}),
    "lr_isqrt": ("flow", {"training.lr_schedule": "inverse_sqrt", "training.lr_decay_steps": 10}),
    # cpu, also tracking two power-function EMA profiles (training is unchanged), snapshotted every 25 steps,
    # for the post-hoc EMA sampling trials (--sampling-from phema --sampling-trials ema_std0.05,...)
    "phema": ("flow", {"training.ema_stds": (0.05, 0.10), "training.ema_snapshot_every": 25}),
}

# Sampling-only changes, drawn from the last checkpoint of ``--sampling-from`` (default ``cpu``)
# (``--sampling-trials``): name -> {dotted sampling field: value}.
SAMPLING_TRIALS = {
    "euler20_w1": {"sampling.sampler": "euler", "sampling.num_steps": 20, "sampling.guidance_scale": 1.0},
    "euler20": {"sampling.sampler": "euler", "sampling.num_steps": 20},
    "heun5": {"sampling.num_steps": 5},
    "heun20": {"sampling.num_steps": 20},
    "w1": {"sampling.guidance_scale": 1.0},
    "w3": {"sampling.guidance_scale": 3.0},
    "no_ema": {"sampling.use_ema": False},
    # post-hoc EMA of relative std (EDM2), reconstructed from a recipe that tracked training.ema_stds
    **{f"ema_std{std:g}": {"sampling.ema_std": std} for std in (0.02, 0.05, 0.10, 0.15, 0.20, 0.25)},
}
# The trials of the first run (bench/time_to_quality_trials.json), when cpu sampled with Euler 20 at
# guidance 1: euler10 and euler40 (Euler's steps), heun10, w1.5 and w2 (guidance), no_ema.


def with_fields(config, fields: dict):
    """``config`` with each dotted ``fields`` entry set (``{"training.batch_size": 64}``)."""
    config.update_from_flattened_dict(fields)
    return config


def sampling_fields(config) -> dict:
    """What a row was sampled with, as dotted fields: stored in the row, so ``--regrid`` redraws it even
    after the recipe's sampler or a trial's definition changed."""
    return {f"sampling.{k}": config.sampling[k]
            for k in ("sampler", "num_steps", "guidance_scale", "use_ema", "ema_std")}


def recipe_config(name: str, minutes: float, out: str):
    if name in TRIALS:
        family, fields = TRIALS[name]
        config = with_fields(fashion_mnist_cpu.get_config(family), fields)
    else:
        config = RECIPES[name]()
    config.training.num_train_steps = 10**7  # the budget ends every segment
    config.training.max_minutes = float(minutes)
    config.training.checkpoint_every = 10**7  # only each segment's last step
    config.training.sample_every = 0  # only each segment's final grid
    config.eval.classifier_dir = os.path.join(out, "classifier")
    return config


def row_config(row, out):
    """The config a table row was sampled with: its recipe's, with the sampling fields it stored."""
    return with_fields(recipe_config(row["recipe"], 1.0, out), row["sampling"])


def class_balance(predicted: np.ndarray) -> tuple[float, float]:
    """``(H(p) / log K, min_k p_k)`` of the predicted-class frequencies ``p``."""
    p = np.bincount(predicted, minlength=NUM_CLASSES) / len(predicted)
    entropy = -np.sum(p[p > 0] * np.log(p[p > 0]))
    return float(entropy / np.log(NUM_CLASSES)), float(p.min())


def evaluate(config, workdir, samples: int, extractor, clf, ref, grid_path):
    images, labels, sample_s, step = draw(config, workdir, samples)
    metrics = fid_kid(extractor, images, ref, 256, 10, min(1000, samples))
    predicted = np.argmax(classifier_lib.batched_apply(clf.apply_fn(), images, 256)[0], axis=-1)
    balance, rarest = class_balance(predicted)
    conditional = bool(config.model.class_conditional)
    save_grid(images[:CHUNK], labels[:CHUNK], conditional, grid_path)
    return {"fid": float(metrics["fid"]), "kid": float(metrics["kid"]), "class_balance": balance,
            "rarest_class": rarest, "sample_s": sample_s, "step": step,
            "accuracy": float(np.mean(predicted == labels)) if conditional else None}


def sampler_name(config) -> str:
    name, guidance = f"{config.sampling.sampler} {config.sampling.num_steps}", config.sampling.guidance_scale
    name += f" w={guidance:g}" if guidance != 1.0 and config.model.class_conditional else ""
    ema = f" ema_std={config.sampling.ema_std:g}" if config.sampling.ema_std else ""
    return name + (ema if config.sampling.use_ema else " raw")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--budgets", default="5,10,20", help="cumulative training minutes, comma-separated")
    parser.add_argument("--recipes", default="seeds,cpu", help=f"of {', '.join([*RECIPES, *TRIALS])}")
    parser.add_argument("--sampling-trials", default="",
                        help=f"drawn from --sampling-from's last checkpoint, of {', '.join(SAMPLING_TRIALS)}")
    parser.add_argument("--sampling-from", default="cpu", help="the recipe the sampling trials draw from")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--name", default="time_to_quality", help="bench/<name>.{json,md,png}")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "time_to_quality"))
    parser.add_argument("--replot", action="store_true", help="redraw the table and figure from the json")
    parser.add_argument("--regrid", action="store_true", help="redraw the sample grids from the kept checkpoints")
    args = parser.parse_args()
    recipes = args.recipes.split(",")
    sampling_trials = [t for t in args.sampling_trials.split(",") if t]
    unknown = [r for r in recipes if r not in RECIPES and r not in TRIALS] + [
        t for t in sampling_trials if t not in SAMPLING_TRIALS]
    if unknown:
        raise SystemExit(f"unknown recipe or sampling trial: {', '.join(unknown)}")
    if sampling_trials and args.sampling_from not in recipes:
        raise SystemExit(f"--sampling-trials draw from the {args.sampling_from} recipe's checkpoint: add "
                         f"{args.sampling_from} to --recipes")
    budgets = [float(b) for b in args.budgets.split(",")]
    if budgets != sorted(budgets) or budgets[0] <= 0:
        raise SystemExit(f"--budgets must be increasing positive minutes, got {args.budgets}")
    cpu_tuning.reexec_with_tcmalloc()  # as main.py runs
    cpu_tuning.apply()
    base = os.path.join(ROOT, "bench", args.name)
    if args.replot or args.regrid:
        with open(base + ".json") as f:
            saved = json.load(f)
        if args.regrid:
            regrid(saved["rows"], args.out, args.name)
        return write(saved["rows"], saved["command"], base)
    command = "python bench/time_to_quality.py " + " ".join(sys.argv[1:])
    config = recipe_config("cpu", 1.0, args.out)
    t0 = time.perf_counter()
    train, test, _ = eval_features.load_splits(config.data)
    extractor, clf = eval_features.build_extractor(config, args.out, train, test)
    ref = reference_statistics(extractor, train, eval_features.reference_path(
        args.out, "fashion_mnist", tuple(train.image_shape), "train", extractor), 256)
    print(f"classifier (test accuracy {clf.test_accuracy:.3f}) and reference statistics: "
          f"{time.perf_counter() - t0:.0f} s; tcmalloc: {'tcmalloc' in os.environ.get('LD_PRELOAD', '')}",
          flush=True)
    rows = []
    for name in recipes:
        workdir = os.path.join(args.out, args.name, name)
        shutil.rmtree(workdir, ignore_errors=True)  # every recipe trains from scratch
        done, trained_s = 0.0, 0.0
        for minutes in budgets:
            config = recipe_config(name, minutes - done, args.out)
            t0 = time.perf_counter()
            train_loop.train(config, workdir, progress=True)
            trained_s += time.perf_counter() - t0
            done = minutes
            row = {"recipe": name, "minutes": minutes, "train_s": trained_s, "sampler": sampler_name(config),
                   "sampling": sampling_fields(config)}
            grid = grid_file(args.name, args.out, row)
            row.update(evaluate(config, workdir, args.samples, extractor, clf, ref, grid))
            rows.append(row)
            print(json.dumps(row), flush=True)
            write(rows, command, base)
    source = [r for r in rows if r["recipe"] == args.sampling_from][-1] if sampling_trials else None
    for trial in sampling_trials:
        config = with_fields(recipe_config(args.sampling_from, 1.0, args.out), SAMPLING_TRIALS[trial])
        row = {**source, "sampling_trial": trial, "sampler": sampler_name(config),
               "sampling": sampling_fields(config)}
        row.update(evaluate(config, os.path.join(args.out, args.name, args.sampling_from), args.samples,
                            extractor, clf, ref, grid_file(args.name, args.out, row)))
        rows.append(row)
        print(json.dumps(row), flush=True)
        write(rows, command, base)


def write(rows, command, base):
    with open(base + ".json", "w") as f:
        json.dump({"command": command.strip(), "rows": rows}, f, indent=1)
    lines = ["| recipe | budget (min) | training wall clock (min) | steps | sampler | sampling 1,000 (s) | "
             "classifier FID | class balance | rarest class | class accuracy |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        recipe = r["recipe"] + (f" ({r['sampling_trial']})" if r.get("sampling_trial") else "")
        lines.append(f"| {recipe} | {r['minutes']:g} | {r['train_s'] / 60:.1f} | {r['step']} | {r['sampler']} | "
                     f"{r['sample_s']:.0f} | {r['fid']:.2f} | {r['class_balance']:.3f} | "
                     f"{r['rarest_class']:.3f} | {acc} |")
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for recipe in dict.fromkeys(r["recipe"] for r in rows if not r.get("sampling_trial")):
        pts = [r for r in rows if r["recipe"] == recipe and not r.get("sampling_trial")]
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
