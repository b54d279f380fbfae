"""The ``eval`` block (``--mode=eval``, and the FID logged while training with ``training.eval_every``):
its checks (the sampler it asks for, sample counts, the feature extractor and its weights file) and
the feature dimension it implies."""

from __future__ import annotations

from jaxdiff.drivers.checks import ConfigError, boolean, choice, number, positive
from jaxdiff.drivers.diffusion_config import family_from_config
from jaxdiff.drivers.sampling_config import SAMPLERS, check_sampler_fits, eval_sampling
from jaxdiff.evaluation import inception
from jaxdiff.evaluation.fid import EvalError, check_sample_count

EXTRACTORS = ("classifier", "inception")


def check(config) -> None:
    """When ``config`` has an ``eval`` block: its sampler (``eval.sampler``, ``eval.num_steps``) against the
    process, then :func:`validate_eval` (the Inception weights file is read only when training will use
    it, ``training.eval_every > 0``)."""
    if "eval" not in config:
        return
    choice(config.eval.sampler, ("auto", "same", *SAMPLERS), "eval.sampler")
    positive(config.eval.num_steps, "eval.num_steps")
    check_sampler_fits(config, "eval.sampler", eval_sampling(config, family_from_config(config.diffusion)))
    validate_eval(config, check_weights=bool(config.training.get("eval_every", 0)))


def validate_eval(config, check_weights: bool = True) -> None:
    """Raise :class:`ConfigError` (one line) for an unusable ``config.eval`` / ``training.eval_every``.

    With ``check_weights`` and the Inception extractor, the weights file is read and every array's
    shape checked (no compile)."""
    ev = config.eval
    choice(ev.feature_extractor, EXTRACTORS, "eval.feature_extractor")
    for field in ("num_samples", "batch_size", "kid_subsets", "kid_subset_size", "bpd_batch_size",
                  "samples_per_class", "train_fid_samples", "classifier_ch", "classifier_features",
                  "classifier_steps", "classifier_batch_size"):
        positive(ev[field], f"eval.{field}")
    positive(ev.bpd_num_images, "eval.bpd_num_images", allow_zero=True)
    boolean(ev.bpd, "eval.bpd")
    boolean(ev.bpd_clip_x0, "eval.bpd_clip_x0")
    number(ev.classifier_learning_rate, "eval.classifier_learning_rate", 0.0, low_open=True)
    number(ev.fid_guidance_scale, "eval.fid_guidance_scale", 0.0)
    if not isinstance(ev.guidance_scales, (tuple, list)) or not ev.guidance_scales:
        raise ConfigError(f"eval.guidance_scales must be a non-empty tuple of numbers >= 0, got {ev.guidance_scales!r}")
    for w in ev.guidance_scales:
        number(w, "eval.guidance_scales", 0.0)
    for field in ("inception_weights", "classifier_dir"):
        if not isinstance(ev[field], str):
            raise ConfigError(f"eval.{field} must be a path, got {ev[field]!r}")
    if ev.reference_split not in ("train", "test"):
        raise ConfigError(f"eval.reference_split={ev.reference_split!r} is not one of train, test")
    every = config.training.get("eval_every", 0)
    if not isinstance(every, int) or every < 0:
        raise ConfigError(f"training.eval_every must be a non-negative integer, got {every!r}")
    dim = feature_dim(config)
    try:
        check_sample_count(ev.num_samples, dim, "eval.num_samples")
        if every:
            check_sample_count(ev.train_fid_samples, dim, "eval.train_fid_samples")
    except EvalError as e:
        raise ConfigError(str(e)) from None
    if check_weights and ev.feature_extractor == "inception":
        try:
            inception.load_weights(ev.inception_weights)  # presence and every shape, before any compile
        except inception.InceptionWeightsError as e:
            raise ConfigError(str(e)) from None


def feature_dim(config) -> int:
    return 2048 if config.eval.feature_extractor == "inception" else config.eval.classifier_features
