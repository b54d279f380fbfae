"""Sample quality and likelihood of a checkpoint: FID, KID, bits/dim, conditional accuracy.

``--mode=eval`` and the FID logged while training, from a config. Protocol (docs/evaluation.md
states it for readers; every number is written with it):

* samples come from the **EMA** parameters with the configured sampler, ``eval.num_samples`` of
  them (the count is written next to each number); a class-conditional model samples balanced
  labels at guidance scale ``eval.fid_guidance_scale``;
* samples are quantised exactly like stored images: ``uint8(round((clip(x, -1, 1) + 1) * 127.5))``;
  data images are already uint8, so both sides enter the feature extractor identically;
* reference statistics are the features of the whole ``eval.reference_split`` (the training split
  by default), computed once and cached in ``<workdir>/eval/`` under a name that includes the
  extractor's fingerprint;
* features: ``classifier`` (jaxdiff's own CNN trained on the dataset, 128-d penultimate layer; not
  comparable with papers) or ``inception`` (the FID InceptionV3, pool3 2048-d; comparable with
  papers that use the TF/pytorch-fid Inception weights when the weights file is verified to be
  pytorch-fid's released ``.pth``);
* FID = ``|mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr sqrt(S_1 S_2)`` in float64 with the unbiased
  (``n - 1``) covariance; it needs more samples than feature dimensions;
* KID = unbiased MMD^2 with the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over
  ``eval.kid_subsets`` subset pairs of ``eval.kid_subset_size`` (Binkowski et al. 2018; clean-fid).
"""

from __future__ import annotations

import json
import time
from typing import Callable

import jax
import numpy as np

from jaxdiff.common import paths, preemption
from jaxdiff.core import likelihood
from jaxdiff.core.generation import SEGMENT_STEPS, make_chunk_generator, network_time_interval
from jaxdiff.drivers import config_checks, trained_model
from jaxdiff.drivers.eval_features import build_extractor, load_splits, reference_path
from jaxdiff.drivers.progress import GuardedBar
from jaxdiff.drivers.sampling_config import eval_sampling, resolve_sampler, sampler_from_config
from jaxdiff.evaluation.accuracy import (accuracy_table, balanced_labels, conditional_accuracy, generate_uint8,
                                         plot_conditional_accuracy)
from jaxdiff.evaluation.features import extract_features, fid_kid, reference_statistics
from jaxdiff.evaluation.fid import feature_stats, frechet_distance
from jaxdiff.training.keys import EVAL_STREAM

BLOCKS = (*config_checks.DIFFUSION_BLOCKS, "eval")  # the config blocks --mode=eval reads


def make_image_generator(experiment, sampling_config, guidance_scale: float = 1.0, batch_size: int = 256):
    """A compiled ``generate(params, key, labels [batch_size], should_stop=None) -> images [batch_size,
    H, W, C] in [-1, 1]``, run in pieces of :data:`~jaxdiff.core.generation.SEGMENT_STEPS` sampler steps
    with ``should_stop()`` between them (the same numbers as one program); latent samples are decoded
    (``experiment.decode``).

    The sampler ``config.sampling`` describes, through :func:`jaxdiff.core.generation.make_chunk_generator`
    (``x_T`` from ``fold_in(key, 0)``, sampler noise from ``fold_in(key, 1)``, as in sample mode).
    A class-conditional model (``model.num_classes > 0``) samples ``labels`` with classifier-free
    guidance ``guidance_scale`` (0 = unconditional, 1 = plain conditional); an unconditional one
    ignores them.
    """
    sampler = sampler_from_config(experiment.family, sampling_config)
    null_label = experiment.model.num_classes or None
    interval = None
    if null_label and guidance_scale != 1.0:
        interval = network_time_interval(sampler, tuple(sampling_config.guidance_interval) or None)
    generate = make_chunk_generator(experiment.apply_fn, sampler, experiment.image_shape, batch_size,
                                    float(guidance_scale), null_label, segment_steps=SEGMENT_STEPS,
                                    guidance_interval=interval)
    return lambda params, key, labels, should_stop=None: experiment.decode(
        generate(params, key, labels if null_label else None, should_stop)[0])



def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(type(o))


def write_json(path, obj: dict) -> None:
    paths.write_text(path, json.dumps(obj, indent=1, default=_json_default))


def eval_tag(config, step: int) -> str:
    """``<checkpoint step>_<digest>``: the digest (:func:`~jaxdiff.common.paths.request_digest`) covers
    the ``eval`` and ``sampling`` blocks and the seed, so evaluations of differing requests of one
    checkpoint never overwrite each other's files."""
    digest = paths.request_digest({"eval": config.eval.to_dict(), "sampling": config.sampling.to_dict(),
                                   "seed": config.seed, "init_from": config.model.init_from})
    return f"{step:07d}_{digest}"


def evaluate_params(config, workdir, params, experiment, step: int, log=print,
                    make_generate: Callable | None = None, stop_check=None) -> dict:
    """All metrics of ``params`` (the EMA parameters of checkpoint ``step``); writes
    ``<workdir>/eval/metrics_<tag>.json`` (and a copy as ``metrics.json``, the latest evaluation), the
    reference statistics, and for conditional models ``conditional_accuracy_<tag>.{json,md,png}``, where
    ``<tag>`` is ``<step>_<digest>`` (:func:`eval_tag`). Returns the metrics.

    Samples come from ``eval.sampler`` (:func:`~jaxdiff.drivers.sampling_config.eval_sampling`:
    DPM-Solver++ over 20 steps unless ``same``, which is ``config.sampling``); ``make_generate(w) ->
    generate(params, key, labels) -> images in [-1, 1]`` may replace it (:func:`make_image_generator`).
    ``stop_check()`` runs after every chunk of work
    (:meth:`~jaxdiff.common.preemption.PreemptionGuard.stop_check`); when it raises, nothing of this
    evaluation has been written."""

    def progress_bar(total: int, desc: str):
        return GuardedBar(total, desc, stop_check, leave=False)

    ev = config.eval
    model, family = experiment.model, experiment.family
    sampling = eval_sampling(config, family)  # eval.sampler: dpm_solver++ over 20 steps unless same (paper)
    t0 = time.perf_counter()
    train, test, split_note = load_splits(config.data)
    image_shape = tuple(train.image_shape)
    num_classes = int(model.num_classes)
    extractor, clf = build_extractor(config, workdir, train, test, log, stop_check=stop_check)
    if make_generate is None:
        cache: dict = {}

        def make_generate(w):  # one compiled sampler per guidance scale, shared by FID and accuracy
            if w not in cache:
                cache[w] = make_image_generator(experiment, sampling, w, ev.batch_size)
            return cache[w]
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), EVAL_STREAM), step)

    reference = train if ev.reference_split == "train" else test
    with progress_bar(len(reference), "eval: reference features") as bar:
        ref = reference_statistics(extractor, reference, reference_path(workdir, config.data.dataset, image_shape,
                                                                        ev.reference_split, extractor),
                                   ev.batch_size, log, bar)
    guidance = float(ev.fid_guidance_scale) if num_classes else None
    sampler_name, steps = resolve_sampler(sampling, family)
    log(f"eval: generating {ev.num_samples} samples (EMA params, {sampler_name}, {steps} steps)")
    with progress_bar(ev.num_samples, "eval: samples") as bar:
        images = generate_uint8(make_generate(guidance if num_classes else 1.0), params,
                                balanced_labels(ev.num_samples, num_classes), ev.batch_size,
                                jax.random.fold_in(key, 0), bar, stop_check)
    metrics = {"checkpoint_step": int(step), "params": "ema", "ema_std": float(config.sampling.ema_std),
               "family": family.name,
               "sampler": sampler_name, "sampling_steps": steps,
               "network_evaluations": sampler_from_config(family, sampling).evaluations,
               "variance": config.sampling.variance,
               "clip_x0": bool(config.sampling.clip_x0), "guidance_scale": guidance,
               "quantisation": "uint8(round((clip(x, -1, 1) + 1) * 127.5))",
               "dataset": config.data.dataset, "image_shape": list(image_shape), "splits": split_note,
               "reference_split": ev.reference_split, "reference_path": ref.path, "seed": int(config.seed)}
    metrics.update(fid_kid(extractor, images, ref, ev.batch_size, ev.kid_subsets, ev.kid_subset_size))
    metrics.update(extractor.info)
    log(f"eval: FID {metrics['fid']:.3f}  KID {metrics['kid']:.5f} ({extractor.name} features, "
        f"{ev.num_samples} samples vs {ref.stats.n} {ev.reference_split} images)")

    if ev.bpd and experiment.latent is not None:
        log("eval: bits/dim skipped: the model is a latent diffusion model (a bound on latents is not one on pixels)")
        metrics["bpd"] = None
    elif ev.bpd and family.tables is None:
        log(f"eval: bits/dim skipped: it is the discrete DDPM variational bound, and diffusion.family="
            f"{family.name!r} has no discrete chain (the ODE likelihood is not implemented)")
        metrics["bpd"] = None
    elif ev.bpd:
        images_test = np.asarray(test[np.arange(min(len(test), ev.bpd_num_images or len(test)))][0])
        apply = lambda p, x, t: experiment.apply_fn(p, x, t, None)  # noqa: E731  (null label if conditional)
        bpd_fn = likelihood.make_bpd_fn(apply, family.tables, family.prediction, config.sampling.variance,
                                        ev.bpd_clip_x0)
        with progress_bar(len(images_test), "eval: bits/dim") as bar:
            res = likelihood.dataset_bpd(bpd_fn, params, images_test, ev.bpd_batch_size,
                                         jax.random.fold_in(key, 1), bar)
        metrics.update({"bpd": res["bpd"], "bpd_stderr": res["bpd_stderr"], "bpd_prior": res["prior_bpd"],
                        "bpd_decoder": float(res["terms_bpd"][0]), "bpd_num_images": res["num_images"],
                        "bpd_variance": config.sampling.variance, "bpd_clip_x0": bool(ev.bpd_clip_x0),
                        "bpd_split": "test", "bpd_conditioning": "null label" if num_classes else "none"})
        log(f"eval: {res['bpd']:.4f} +- {res['bpd_stderr']:.4f} bits/dim on {res['num_images']} test images")

    eval_dir, tag = paths.as_path(workdir) / "eval", eval_tag(config, step)
    write = paths.is_writer()
    if num_classes and clf is not None:
        apply_clf = clf.apply_fn()
        with progress_bar(num_classes * ev.samples_per_class * len(ev.guidance_scales),
                          "eval: conditional accuracy") as bar:
            rows = conditional_accuracy(make_generate, params, lambda x: apply_clf(x)[0], num_classes,
                                        ev.samples_per_class, ev.guidance_scales, ev.batch_size,
                                        jax.random.fold_in(key, 2), bar, stop_check)
        stem = f"conditional_accuracy_{tag}"
        if write:
            write_json(eval_dir / f"{stem}.json", {"rows": rows, "classifier_test_accuracy": clf.test_accuracy})
            paths.write_text(eval_dir / f"{stem}.md", accuracy_table(rows, clf.test_accuracy))
            plot_conditional_accuracy(rows, clf.test_accuracy, eval_dir / f"{stem}.png")
        metrics["conditional_accuracy"] = {f"{r['guidance_scale']:g}": r["accuracy"] for r in rows}
        log("eval: conditional accuracy " + ", ".join(f"w={r['guidance_scale']:g}: {r['accuracy']:.3f}"
                                                      for r in rows))
    metrics["eval_seconds"] = round(time.perf_counter() - t0, 1)
    if write:
        write_json(eval_dir / f"metrics_{tag}.json", metrics)
        write_json(eval_dir / "metrics.json", metrics)
    return metrics


def summary_line(m: dict) -> str:
    """One line naming each number with the protocol it needs (extractor, sample counts)."""
    note = "" if m["comparable_with_papers"] else "; not comparable with papers"
    if m.get("inception_weights_verified") is False:
        note += " (Inception weights not verified as pytorch-fid's)"
    out = (f"FID {m['fid']:.3f} KID {m['kid']:.5f} ({m['feature_extractor']} features, {m['num_samples']} EMA "
           f"samples vs {m['num_reference']} {m['reference_split']} images{note})")
    if m.get("bpd") is not None:  # None: skipped (a continuous family or a latent model)
        out += f", {m['bpd']:.3f} bits/dim ({m['bpd_num_images']} test images)"
    if "conditional_accuracy" in m:
        out += ", conditional accuracy " + " ".join(f"w={w}:{a:.3f}" for w, a in m["conditional_accuracy"].items())
    return out


def run_eval(config, workdir, log=print, make_generate: Callable | None = None, overrides=()) -> dict:
    """``--mode=eval``: all metrics of the latest checkpoint in ``workdir`` (its EMA parameters; without
    one, those of ``model.init_from``),
    written to ``<workdir>/eval/metrics.json`` (see :func:`evaluate_params`).

    Every input is checked first, before anything is compiled or written: the config (including
    ``eval.*``: sample count above the feature dimension, the Inception weights file and its
    shapes), then the presence of a checkpoint. SIGTERM or Ctrl-C stops it between two chunks
    (:class:`~jaxdiff.common.preemption.Interrupted`) before any metric is written."""
    config_checks.validate_eval(config, check_weights=True)
    opened = trained_model.open_trained(config, workdir, "eval", log, overrides, BLOCKS)
    config_checks.check_workdir(opened.workdir)
    ema_std = config.sampling.ema_std
    params = trained_model.load_params(opened, True, ema_std)
    log(f"eval: {opened.describe()} (" + (f"post-hoc EMA, relative std {ema_std:g})" if ema_std else "EMA parameters)"))
    with preemption.PreemptionGuard() as guard:
        return evaluate_params(opened.experiment.config, opened.workdir, params, opened.experiment, opened.step, log,
                               make_generate, guard.stop_check("evaluation"))


def make_train_fid_hook(config, workdir, experiment, train_source=None, start_step: int = 0, log=print):
    """The cheap FID logged while training: ``hook(step, ema_params, progress=None, should_stop=None)
    -> row`` appending
    ``{"step", "fid", "fid_samples", "feature_extractor", "seconds"}`` to
    ``<workdir>/eval/train_fid.jsonl`` (rows after ``start_step`` from an interrupted run are
    dropped first). ``None`` when ``training.eval_every`` is 0.

    Same protocol as ``--mode=eval`` (EMA parameters, uint8 quantisation, cached training-split
    reference statistics, same extractor) with ``eval.train_fid_samples`` samples and no KID;
    FID is biased upwards at small sample counts, so compare these numbers only with each other.
    ``train_source`` is the training loop's own source: nothing is decoded a second time (the
    reference statistics and the classifier read it batch by batch, and not at all when cached).
    Everything is built (classifier trained, reference statistics computed, sampler traced) once,
    here; each call only samples and extracts features."""
    ev = config.eval
    if not config.training.get("eval_every", 0):
        return None
    config_checks.validate_eval(config, check_weights=True)
    train, test, _ = load_splits(config.data, train_source)
    image_shape = tuple(train.image_shape)
    extractor, _ = build_extractor(config, workdir, train, test, log, for_accuracy=False)
    ref = reference_statistics(extractor, train if ev.reference_split == "train" else test,
                               reference_path(workdir, config.data.dataset, image_shape, ev.reference_split,
                                              extractor), ev.batch_size, log)
    num_classes = int(experiment.model.num_classes)
    generate = make_image_generator(experiment, eval_sampling(config, experiment.family),
                                    float(ev.fid_guidance_scale) if num_classes else 1.0, ev.batch_size)
    labels = balanced_labels(ev.train_fid_samples, num_classes)
    path = paths.as_path(workdir) / "eval" / "train_fid.jsonl"
    if paths.is_writer() and path.exists():
        rows = [line + "\n" for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= start_step]
        paths.write_text(path, "".join(rows))

    def hook(step: int, params, progress=None, should_stop=None) -> dict:
        t0 = time.perf_counter()
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), EVAL_STREAM + 1), step)
        images = generate_uint8(generate, params, labels, ev.batch_size, key, progress, should_stop)
        stats = feature_stats(extract_features(extractor, images, ev.batch_size))
        row = {"step": int(step), "fid": frechet_distance(stats.mu, stats.sigma, ref.stats.mu, ref.stats.sigma),
               "fid_samples": int(len(images)), "feature_extractor": extractor.name,
               "seconds": round(time.perf_counter() - t0, 2)}
        if paths.is_writer():
            paths.append_text(path, json.dumps(row) + "\n")
        return row

    return hook
