"""The ``training`` and ``parallel`` blocks: their checks, and what they turn into: the learning-rate
schedule, the optimiser and the train step (:func:`jaxdiff.training.make_train_step`'s arguments)."""

from __future__ import annotations

import functools

import optax

from jaxdiff.data import preprocess
from jaxdiff.drivers.checks import ConfigError, boolean, choice, number, positive
from jaxdiff.training.optim import LR_SCHEDULES, OPTIMIZERS, learning_rate_schedule, make_optimizer
from jaxdiff.training.posthoc_ema import MAX_STD
from jaxdiff.training.step import as_float, make_train_step


def check_posthoc_ema(training_config) -> None:
    """``training.ema_stds`` (relative stds in (0, 1/sqrt(12)]) and ``training.ema_snapshot_every``."""
    t = training_config
    stds = t.ema_stds
    if not isinstance(stds, (tuple, list)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= MAX_STD for v in stds):
        raise ConfigError(f"training.ema_stds must be a tuple of relative stds in (0, {MAX_STD:.3f}] (EDM2: "
                          f"(0.05, 0.10)), got {stds!r}")
    positive(t.ema_snapshot_every, "training.ema_snapshot_every", allow_zero=True)


def check(config) -> None:
    """Raise :class:`ConfigError` for the first invalid ``training.*`` or ``parallel.*`` value."""
    tc, pc = config.training, config.parallel
    number(tc.adam_b1, "training.adam_b1", 0.0, 1.0, high_open=True)
    number(tc.adam_b2, "training.adam_b2", 0.0, 1.0, high_open=True)
    number(tc.adam_eps, "training.adam_eps", 0.0, low_open=True)
    number(tc.weight_decay, "training.weight_decay", 0.0)
    number(tc.grad_clip_norm, "training.grad_clip_norm", 0.0)
    boolean(tc.ema_warmup, "training.ema_warmup")
    boolean(pc.shard_params, "parallel.shard_params")
    positive(tc.batch_size, "training.batch_size")
    positive(tc.num_train_steps, "training.num_train_steps")
    number(tc.max_minutes, "training.max_minutes", low=0.0)
    positive(tc.log_every, "training.log_every")
    positive(tc.checkpoint_every, "training.checkpoint_every")
    positive(tc.sample_every, "training.sample_every", allow_zero=True)
    positive(tc.keep_checkpoints, "training.keep_checkpoints")
    positive(tc.warmup_steps, "training.warmup_steps", allow_zero=True)
    choice(tc.optimizer, OPTIMIZERS, "training.optimizer")
    if not tc.learning_rate > 0:
        raise ConfigError(f"training.learning_rate must be positive, got {tc.learning_rate}")
    if not 0.0 <= tc.ema_decay < 1.0:
        raise ConfigError(f"training.ema_decay must be in [0, 1), got {tc.ema_decay}")
    choice(tc.lr_schedule, LR_SCHEDULES, "training.lr_schedule")
    positive(tc.lr_decay_steps, "training.lr_decay_steps", allow_zero=True)
    if tc.lr_schedule == "inverse_sqrt" and not tc.lr_decay_steps:
        raise ConfigError("training.lr_schedule='inverse_sqrt' needs training.lr_decay_steps > 0 (the step where the "
                          "decay starts)")
    check_posthoc_ema(tc)
    if not 0.0 <= tc.label_dropout < 1.0:
        raise ConfigError(f"training.label_dropout must be in [0, 1), got {tc.label_dropout}")
    positive(tc.grad_accum_steps, "training.grad_accum_steps")
    choice(tc.dtype, ("float32", "bfloat16"), "training.dtype")
    if tc.batch_size % tc.grad_accum_steps:
        raise ConfigError(f"training.batch_size={tc.batch_size} does not split into "
                          f"training.grad_accum_steps={tc.grad_accum_steps} equal micro-batches")
    positive(pc.num_devices, "parallel.num_devices", allow_zero=True)
    positive(pc.shard_min_size, "parallel.shard_min_size", allow_zero=True)


def learning_rate_from_config(training_config) -> optax.Schedule:
    """``training.learning_rate`` with ``training.warmup_steps`` of linear warm-up, then
    ``training.lr_schedule`` (cosine over ``lr_decay_steps``, 0 meaning the steps after the warm-up)."""
    tc = training_config
    decay_steps = tc.lr_decay_steps
    if tc.lr_schedule == "cosine" and not decay_steps:
        decay_steps = max(tc.num_train_steps - tc.warmup_steps, 1)
    return learning_rate_schedule(tc.learning_rate, tc.warmup_steps, decay=tc.lr_schedule, decay_steps=decay_steps)


def optimizer_from_config(training_config) -> optax.GradientTransformation:
    """The optimiser of a ``config.training`` block (clipping, Adam/AdamW, the warm-up schedule)."""
    tc = training_config
    return make_optimizer(learning_rate_from_config(tc), optimizer=tc.optimizer, b1=tc.adam_b1, b2=tc.adam_b2,
                          eps=tc.adam_eps, weight_decay=tc.weight_decay, grad_clip_norm=tc.grad_clip_norm)


def train_step_from_config(config, apply_fn, family, optimizer, num_classes: int, mesh=None, latent: bool = False):
    """:func:`jaxdiff.training.make_train_step` with the arguments a config gives (the family of
    ``config.diffusion``; uint8 batches scaled to [-1, 1] and flipped per ``data.random_flip`` inside
    the step, or with ``latent`` batches of latents taken as they are)."""
    tc = config.training
    return make_train_step(
        apply_fn, family, optimizer, ema_decay_rate=tc.ema_decay, ema_warmup=tc.ema_warmup,
        ema_stds=tuple(tc.ema_stds),
        num_classes=num_classes, label_dropout=tc.label_dropout,
        preprocess=as_float if latent else functools.partial(preprocess, random_flip=config.data.random_flip),
        seed=config.seed,
        grad_accum_steps=tc.grad_accum_steps, learning_rate_fn=learning_rate_from_config(tc), mesh=mesh)
