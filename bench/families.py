"""Diffusion families and their solvers on the same digits budget.

Each family (ddpm, vp, edm, flow) trains ``configs/digits.py``'s network for the same number of steps
(the same batches, seed and optimiser; only ``diffusion.family`` differs), then every solver listed
below draws 1,000 class-balanced EMA samples at guidance 1, and the table reports the sampler's steps,
network evaluations (NFE), sampling time for the 1,000 images (compiled, one timed run), jaxdiff's
classifier FID against the training split, and the share of samples the classifier assigns to the
class asked for. One process, one job at a time, so the timings are comparable.

    python bench/families.py                  # train (or resume) the four models, then the table
    python bench/families.py --train-steps 300 --samples 500   # a quick look

Writes ``bench/families.json``, ``bench/families.md`` (the README table) and ``bench/families.png``.
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

from configs import digits  # noqa: E402
from jaxdiff.common import cpu_tuning  # noqa: E402
from jaxdiff.drivers import eval_features, eval_mode, train_loop, trained_model  # noqa: E402
from jaxdiff.drivers.sampling_config import sampler_from_config  # noqa: E402
from jaxdiff.evaluation.accuracy import balanced_labels, generate_uint8  # noqa: E402
from jaxdiff.evaluation.features import fid_kid, reference_statistics  # noqa: E402

SOLVERS = {  # family -> (sampler, steps); NFE = steps, 2 steps - 1 for heun, 2 steps for midpoint
    "ddpm": [("ddpm", 1000), ("ddim", 50), ("ddim", 20), ("dpm_solver++", 20), ("dpm_solver++", 10),
             ("dpm_solver++_3m", 10), ("heun", 10)],
    "vp": [("euler", 50), ("dpm_solver++", 20), ("dpm_solver++", 10), ("dpm_solver++_3m", 10), ("heun", 10)],
    "edm": [("heun", 18), ("heun", 10), ("euler", 50), ("dpm_solver++", 20), ("dpm_solver++", 10),
            ("dpm_solver++_3m", 10), ("edm_stochastic", 18)],
    "flow": [("euler", 50), ("euler", 20), ("euler", 10), ("heun", 10), ("midpoint", 10), ("dpm_solver++", 10),
             ("dpm_solver++_3m", 10)],
}


def family_config(family: str, train_steps: int, out: str):
    config = digits.get_config()
    config.diffusion.family = family
    config.training.num_train_steps = train_steps
    config.training.sample_every = 0
    config.training.checkpoint_every = train_steps
    config.eval.classifier_dir = os.path.join(out, "classifier")
    if family == "edm":
        config.sampling.s_churn, config.sampling.s_min, config.sampling.s_max = 10.0, 0.05, 50.0
    return config


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-steps", type=int, default=1500)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "out", "families"))
    parser.add_argument("--families", default="ddpm,vp,edm,flow")
    parser.add_argument("--replot", action="store_true", help="redraw the table and figure from families.json")
    args = parser.parse_args()
    if args.replot:
        with open(os.path.join(ROOT, "bench", "families.json")) as f:
            saved = json.load(f)
        return write(saved["rows"], saved["samples"], saved["command"])
    cpu_tuning.apply()
    rows, extractor, clf, ref = [], None, None, None
    for family in args.families.split(","):
        config = family_config(family, args.train_steps, args.out)
        workdir = os.path.join(args.out, family)
        t0 = time.perf_counter()
        train_loop.train(config, workdir, progress=True)
        train_s = time.perf_counter() - t0
        rates = [json.loads(line).get("steps_per_sec") for line in open(os.path.join(workdir, "metrics.jsonl"))]
        rates = [r for r in rates if r]
        opened = trained_model.open_trained(config, workdir, "eval")
        experiment = opened.experiment
        params = trained_model.load_params(opened)
        if extractor is None:
            train, test, _ = eval_features.load_splits(config.data)
            extractor, clf = eval_features.build_extractor(config, args.out, train, test)
            ref = reference_statistics(extractor, train, eval_features.reference_path(
                args.out, "digits", tuple(train.image_shape), "train", extractor), 256)
        for name, steps in SOLVERS[family]:
            sc = config.sampling.copy_and_resolve_references()
            sc.sampler, sc.num_steps = name, steps
            sampler = sampler_from_config(experiment.family, sc)
            generate = eval_mode.make_image_generator(experiment, sc, 1.0, 250)
            labels = balanced_labels(args.samples, 10)
            key = jax.random.PRNGKey(0)
            generate_uint8(generate, params, labels[:250], 250, key)  # compile
            t0 = time.perf_counter()
            images = generate_uint8(generate, params, labels, 250, key)
            sample_s = time.perf_counter() - t0
            metrics = fid_kid(extractor, images, ref, 256, 10, min(1000, args.samples))
            predicted = np.argmax(np.asarray(clf.apply_fn()(images)[0]), axis=-1)
            row = {"family": family, "sampler": name, "steps": steps, "nfe": sampler.evaluations,
                   "sample_s": sample_s, "fid": metrics["fid"], "accuracy": float(np.mean(predicted == labels)),
                   "train_s": train_s, "train_steps": args.train_steps,
                   "train_steps_per_s": float(np.median(rates)) if rates else None}
            rows.append(row)
            print(json.dumps(row), flush=True)
    write(rows, args.samples, "python bench/families.py " + " ".join(sys.argv[1:]))


def write(rows, samples, command):
    base = os.path.join(ROOT, "bench", "families")
    with open(base + ".json", "w") as f:
        json.dump({"command": command.strip(), "samples": samples, "rows": rows}, f, indent=1)
    lines = ["| family | sampler | steps | NFE | sampling 1,000 images (s) | classifier FID | class accuracy |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['sampler']} | {r['steps']} | {r['nfe']} | {r['sample_s']:.1f} | "
                     f"{r['fid']:.2f} | {r['accuracy']:.3f} |")
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for family in dict.fromkeys(r["family"] for r in rows):
        pts = [r for r in rows if r["family"] == family]
        dots = ax.scatter([r["nfe"] for r in pts], [r["fid"] for r in pts], s=18, alpha=0.6)
        best = {}  # the best FID reached at each NFE: the family's front
        for r in sorted(pts, key=lambda r: r["nfe"]):
            best[r["nfe"]] = min(best.get(r["nfe"], np.inf), r["fid"])
        ax.plot(list(best), list(best.values()), "-", color=dots.get_facecolor()[0], label=family)
        for r in pts:
            ax.annotate(f"{r['sampler'].replace('dpm_solver++', 'dpm++')}", (r["nfe"], r["fid"]), fontsize=6,
                        alpha=0.7, xytext=(3, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("network evaluations per sample (NFE)")
    ax.set_ylabel("classifier FID (digits, 1,000 samples)")
    ax.set_title(f"digits: families and solvers, {rows[0]['train_steps']} training steps each "
                 f"(line: best per NFE)", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(base + ".png", dpi=120)


if __name__ == "__main__":
    main()
