"""Checks on a configuration, run before anything is compiled or written.

Each failure is a :class:`ConfigError` whose message names the field and what is wrong with it.
"""

from __future__ import annotations

import os
import tempfile

from jaxdiff import data, diffusion, samplers, schedules
from jaxdiff.unet import check_image_size


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
        data.check_data_config(d)
    except data.DataError as e:
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
    _choice(t.optimizer, ("adam", "adamw"), "training.optimizer")
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
        samplers.check_sampling_config(s, f.num_timesteps, bool(m.class_conditional))
        samplers.spaced_timesteps(f.num_timesteps, s.num_steps or f.num_timesteps,  # quad may repeat steps
                                  samplers.resolve_spacing(s.sampler, s.spacing),
                                  schedules.tables_from_config(f).alphas_cumprod)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if "eval" in config:
        from jaxdiff import evaluate  # local: evaluate imports this module

        # the Inception weights file is read only when training will use it (training.eval_every > 0)
        evaluate.validate_eval(config, check_weights=bool(t.get("eval_every", 0)))


def check_workdir(workdir: str) -> str:
    """Create ``workdir`` if needed and prove it is writable; returns its absolute path."""
    if not workdir:
        raise ConfigError("--workdir is required")
    path = os.path.abspath(workdir)
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test"):
            pass
    except OSError as e:
        raise ConfigError(f"work directory {path} is not writable: {e.strerror or e}") from None
    return path
