"""Checks on a configuration, run before anything is compiled or written.

Each failure is a :class:`ConfigError` whose message names the field and what is wrong with it.
"""

from __future__ import annotations

import uuid

from jaxdiff.common import paths
from jaxdiff.core import diffusion, samplers, schedules
from jaxdiff.data import DataError, check_data_config
from jaxdiff.drivers.sampling import check_sampling_config
from jaxdiff.evaluation import inception
from jaxdiff.evaluation.fid import EvalError, check_sample_count
from jaxdiff.models.unet import check_image_size
from jaxdiff.training.optim import OPTIMIZERS

EXTRACTORS = ("classifier", "inception")


class ConfigError(ValueError):
    """A configuration value or the work directory cannot be used."""


def _choice(value, choices, field):
    if value not in choices:
        raise ConfigError(f"{field}={value!r} is not one of {', '.join(map(str, choices))}")


def _positive(value, field, allow_zero=False):
    if not isinstance(value, int) or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{field} must be a {'non-negative' if allow_zero else 'positive'} integer, got {value!r}")


def validate(config) -> None:
    """Raise :class:`ConfigError` for the first invalid value in ``config``."""
    d, m, f, t, s = config.data, config.model, config.diffusion, config.training, config.sampling
    _positive(d.image_size, "data.image_size")
    try:
        check_data_config(d)
    except DataError as e:
        raise ConfigError(str(e)) from None
    try:
        check_image_size(d.image_size, m.ch_mult)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    _positive(m.ch, "model.ch")
    _positive(m.num_res_blocks, "model.num_res_blocks")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {m.dropout}")
    _positive(f.num_timesteps, "diffusion.num_timesteps")
    _choice(f.schedule, schedules.SCHEDULES, "diffusion.schedule")
    _choice(f.target, diffusion.TARGETS, "diffusion.target")
    _choice(f.loss_weighting, diffusion.WEIGHTINGS, "diffusion.loss_weighting")
    _positive(t.batch_size, "training.batch_size")
    _positive(t.num_train_steps, "training.num_train_steps")
    _positive(t.log_every, "training.log_every")
    _positive(t.checkpoint_every, "training.checkpoint_every")
    _positive(t.sample_every, "training.sample_every", allow_zero=True)
    _positive(t.keep_checkpoints, "training.keep_checkpoints")
    _positive(t.warmup_steps, "training.warmup_steps", allow_zero=True)
    _choice(t.optimizer, OPTIMIZERS, "training.optimizer")
    if not t.learning_rate > 0:
        raise ConfigError(f"training.learning_rate must be positive, got {t.learning_rate}")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"training.ema_decay must be in [0, 1), got {t.ema_decay}")
    if not 0.0 <= t.label_dropout < 1.0:
        raise ConfigError(f"training.label_dropout must be in [0, 1), got {t.label_dropout}")
    _positive(t.grad_accum_steps, "training.grad_accum_steps")
    _choice(t.dtype, ("float32", "bfloat16"), "training.dtype")
    if t.batch_size % t.grad_accum_steps:
        raise ConfigError(f"training.batch_size={t.batch_size} does not split into "
                          f"training.grad_accum_steps={t.grad_accum_steps} equal micro-batches")
    p = config.parallel
    _positive(p.num_devices, "parallel.num_devices", allow_zero=True)
    _positive(p.shard_min_size, "parallel.shard_min_size", allow_zero=True)
    _choice(s.variance, diffusion.VARIANCES, "sampling.variance")
    _positive(s.num_samples, "sampling.num_samples")
    _positive(s.batch_size, "sampling.batch_size")
    _positive(s.trajectory_every, "sampling.trajectory_every", allow_zero=True)
    try:
        check_sampling_config(s, f.num_timesteps, bool(m.class_conditional))
        samplers.spaced_timesteps(f.num_timesteps, s.num_steps or f.num_timesteps,  # quad may repeat steps
                                  samplers.resolve_spacing(s.sampler, s.spacing),
                                  schedules.tables_from_config(f).alphas_cumprod)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if "eval" in config:
        # the Inception weights file is read only when training will use it (training.eval_every > 0)
        validate_eval(config, check_weights=bool(t.get("eval_every", 0)))


def validate_eval(config, check_weights: bool = True) -> None:
    """Raise :class:`ConfigError` (one line) for an unusable ``config.eval`` / ``training.eval_every``.

    With ``check_weights`` and the Inception extractor, the weights file is read and every array's
    shape checked (no compile)."""
    ev = config.eval

    def positive(value, field):
        if not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{field} must be a positive integer, got {value!r}")

    if ev.feature_extractor not in EXTRACTORS:
        raise ConfigError(f"eval.feature_extractor={ev.feature_extractor!r} is not one of {', '.join(EXTRACTORS)}")
    for field in ("num_samples", "batch_size", "kid_subsets", "kid_subset_size", "bpd_batch_size",
                  "samples_per_class", "train_fid_samples", "classifier_ch", "classifier_features",
                  "classifier_steps", "classifier_batch_size"):
        positive(ev[field], f"eval.{field}")
    if not isinstance(ev.bpd_num_images, int) or ev.bpd_num_images < 0:
        raise ConfigError(f"eval.bpd_num_images must be a non-negative integer, got {ev.bpd_num_images!r}")
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


EXTRACTORS = ("classifier", "inception")



def check_workdir(workdir) -> paths.epath.Path:
    """Create ``workdir`` if needed and prove it is writable (a local folder, or a URL such as
    ``gs://bucket/run``, which stays a URL); returns it as an ``epath.Path``."""
    if not workdir:
        raise ConfigError("--workdir is required")
    path = paths.as_path(workdir)
    probe = path / f".write_test_{uuid.uuid4().hex}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"work directory {path} is not writable: {e.strerror or e}") from None
    return path
