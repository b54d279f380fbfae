"""Checks on a configuration, run before anything is compiled or written.

Each failure is a :class:`ConfigError` whose message names the field and what is wrong with it.
"""

from __future__ import annotations

import math
import uuid

from jaxdiff.common import paths
from jaxdiff.core import diffusion, families, operators, restoration, schedules, sampler_registry
from jaxdiff.data import DataError, check_data_config
from jaxdiff.drivers.diffusion_config import TARGET_CHOICES, family_from_config
from jaxdiff.drivers.sampling_config import check_sampling_config, eval_sampling, grid_sampling
from jaxdiff.evaluation import inception
from jaxdiff.evaluation.fid import EvalError, check_sample_count
from jaxdiff.models import dit as dit_module
from jaxdiff.models.dit import DIT_SIZES
from jaxdiff.models.unet import DOWNSAMPLE_PADDINGS, check_image_size
from jaxdiff.training.autoencoder_step import RECONSTRUCTIONS
from jaxdiff.training.optim import LR_SCHEDULES, OPTIMIZERS
from jaxdiff.training.posthoc_ema import MAX_STD

EXTRACTORS = ("classifier", "inception")
EDIT_TASKS = ("inpaint", "sdedit", "restore", "invert", "interpolate")
INPAINT_METHODS = ("repaint",) + restoration.METHODS
EDIT_MASKS = ("center", "left", "right", "top", "bottom", "random")  # and box:y0,x0,h,w or a file
BACKBONES = ("unet", "dit")


class ConfigError(ValueError):
    """A configuration value or the work directory cannot be used."""


def _choice(value, choices, field):
    if value not in choices:
        raise ConfigError(f"{field}={value!r} is not one of {', '.join(map(str, choices))}")


def _positive(value, field, allow_zero=False):
    if not isinstance(value, int) or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{field} must be a {'non-negative' if allow_zero else 'positive'} integer, got {value!r}")


def _number(value, field, low=None, high=None, low_open=False, high_open=False):
    """``value`` must be a finite real number in the interval ``low .. high`` (ends open or closed)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low is None or (value > low if low_open else value >= low))
    ok = ok and (high is None or (value < high if high_open else value <= high))
    if not ok:
        bounds = (f"{'(' if low_open else '['}{'-inf' if low is None else low}, "
                  f"{'inf' if high is None else high}{')' if high_open else ']'}")
        raise ConfigError(f"{field} must be a number in {bounds}, got {value!r}")


def _bool(value, field):
    if not isinstance(value, bool):
        raise ConfigError(f"{field} must be True or False, got {value!r}")


def _positive_ints(value, field, allow_empty=False):
    if (not isinstance(value, (tuple, list)) or (not value and not allow_empty)
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise ConfigError(f"{field} must be a {'' if allow_empty else 'non-empty '}tuple of positive integers, "
                          f"got {value!r}")


def _name(value, field):
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{field} must be a non-empty name, got {value!r}")


def _library_check(fields: str, check, *args) -> None:
    """``check(*args)``, a library check in the library's terms; its ``ValueError`` as a
    :class:`ConfigError` that starts with the config ``fields`` it was given."""
    try:
        check(*args)
    except ValueError as e:
        raise ConfigError(f"{fields}: {e}") from None


def _check_backbone(config) -> None:
    """``model.backbone`` and its fields; the image size each backbone needs (for latent diffusion the
    latent size is known only from the autoencoder's checkpoint: the network checks it when built)."""
    d, m = config.data, config.model
    _choice(m.backbone, BACKBONES, "model.backbone")
    dit = m.dit
    _choice(dit.size, ("", *DIT_SIZES), "model.dit.size")
    for field in ("depth", "hidden_size", "num_heads", "patch_size"):
        _positive(dit[field], f"model.dit.{field}")
    _number(dit.mlp_ratio, "model.dit.mlp_ratio", 0.0, low_open=True)
    _bool(dit.learn_sigma, "model.dit.learn_sigma")
    _choice(dit.attention, ("", "xla", "cudnn"), "model.dit.attention")
    if m.backbone == "dit":
        _, hidden, heads = DIT_SIZES[dit.size] if dit.size else (dit.depth, dit.hidden_size, dit.num_heads)
        fields = (f"model.dit.size={dit.size!r}" if dit.size else
                  f"model.dit.hidden_size={hidden}, model.dit.num_heads={heads}")
        _library_check(fields, dit_module.check_architecture, hidden, heads)
        if not config.latent.autoencoder:
            _library_check(f"data.image_size={d.image_size}, model.dit.patch_size={dit.patch_size}",
                           dit_module.check_image_size, d.image_size, dit.patch_size)
        if m.init_from:
            raise ConfigError("model.init_from loads U-Nets (diffusers UNet2DModel or jaxdiff workdirs); "
                              "model.backbone='dit' has no such source")
    elif not config.latent.autoencoder:
        _library_check(f"data.image_size={d.image_size}, model.ch_mult={tuple(m.ch_mult)}", check_image_size,
                       d.image_size, m.ch_mult)


def _check_autoencoder(config) -> None:
    """``autoencoder.*`` (--mode=train_autoencoder) and ``latent.*``."""
    a, lat = config.autoencoder, config.latent
    _positive_ints(a.block_out_channels, "autoencoder.block_out_channels")
    _positive(a.layers_per_block, "autoencoder.layers_per_block")
    _positive(a.latent_channels, "autoencoder.latent_channels")
    _positive(a.norm_num_groups, "autoencoder.norm_num_groups")
    if any(c % a.norm_num_groups for c in a.block_out_channels):
        raise ConfigError(f"autoencoder.norm_num_groups={a.norm_num_groups} does not divide every entry of "
                          f"autoencoder.block_out_channels={tuple(a.block_out_channels)}")
    _bool(a.mid_attention, "autoencoder.mid_attention")
    _choice(a.reconstruction, RECONSTRUCTIONS, "autoencoder.reconstruction")
    _number(a.kl_weight, "autoencoder.kl_weight", 0.0)
    _positive(a.num_train_steps, "autoencoder.num_train_steps")
    _number(a.learning_rate, "autoencoder.learning_rate", 0.0, low_open=True)
    if not isinstance(lat.autoencoder, str):
        raise ConfigError(f"latent.autoencoder must be a path, got {lat.autoencoder!r}")
    if lat.autoencoder and not paths.as_path(lat.autoencoder).exists():
        raise ConfigError(f"latent.autoencoder={lat.autoencoder!r} does not exist (train an autoencoder there "
                          "with --mode=train_autoencoder)")
    _number(lat.scale_factor, "latent.scale_factor", 0.0)
    if lat.autoencoder and config.sampling.clip_x0:
        raise ConfigError("sampling.clip_x0=True clips latents to [-1, 1], where images live but latents (unit "
                          "std) do not: set sampling.clip_x0=False with latent.autoencoder")
    if lat.autoencoder and config.model.init_from:
        raise ConfigError("model.init_from and latent.autoencoder together are not supported: start a latent "
                          "model from scratch")


def _check_posthoc_ema(t, s) -> None:
    """``training.ema_stds`` and ``sampling.ema_std``: relative stds in (0, 1/sqrt(12)]."""
    stds = t.ema_stds
    if not isinstance(stds, (tuple, list)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= MAX_STD for v in stds):
        raise ConfigError(f"training.ema_stds must be a tuple of relative stds in (0, {MAX_STD:.3f}] (EDM2: "
                          f"(0.05, 0.10)), got {stds!r}")
    _positive(t.ema_snapshot_every, "training.ema_snapshot_every", allow_zero=True)
    _number(s.ema_std, "sampling.ema_std", 0.0, MAX_STD)  # that the checkpoint has snapshots: when it is opened


def validate(config) -> None:
    """Raise :class:`ConfigError` for the first invalid value in ``config``."""
    d, m, f, t, s = config.data, config.model, config.diffusion, config.training, config.sampling
    _positive(config.seed, "seed", allow_zero=True)
    _positive(d.image_size, "data.image_size")
    _bool(d.download, "data.download")
    _bool(d.random_flip, "data.random_flip")
    _name(d.image_key, "data.image_key")
    _name(d.label_key, "data.label_key")
    if not isinstance(d.data_dir, str):
        raise ConfigError(f"data.data_dir must be a path, got {d.data_dir!r}")
    _positive_ints(m.ch_mult, "model.ch_mult")
    _positive_ints(m.attn_resolutions, "model.attn_resolutions", allow_empty=True)
    _positive(m.num_heads, "model.num_heads")
    _positive(m.groups, "model.groups")
    _bool(m.class_conditional, "model.class_conditional")
    _bool(m.remat, "model.remat")
    _choice(m.downsample_padding, ("auto", *DOWNSAMPLE_PADDINGS), "model.downsample_padding")
    _number(m.norm_eps, "model.norm_eps", 0.0, low_open=True)
    _positive(m.head_dim, "model.head_dim", allow_zero=True)
    _bool(m.flip_sin_to_cos, "model.flip_sin_to_cos")
    _number(m.freq_shift, "model.freq_shift")
    if not isinstance(m.init_from, str):
        raise ConfigError(f"model.init_from must be a path, got {m.init_from!r}")
    if m.init_from and not paths.as_path(m.init_from).exists():
        raise ConfigError(f"model.init_from={m.init_from!r} does not exist (a diffusers folder or a jaxdiff workdir)")
    _number(f.beta_start, "diffusion.beta_start", 0.0, 1.0, low_open=True, high_open=True)
    _number(f.beta_end, "diffusion.beta_end", f.beta_start, 1.0, high_open=True)
    _number(f.min_snr_gamma, "diffusion.min_snr_gamma", 0.0, low_open=True)
    _bool(f.scale_betas_to_t, "diffusion.scale_betas_to_t")
    _bool(f.zero_terminal_snr, "diffusion.zero_terminal_snr")
    e, fl = f.edm, f.flow
    for field in ("sigma_data", "sigma_min", "rho", "p_std"):
        _number(e[field], f"diffusion.edm.{field}", 0.0, low_open=True)
    _number(e.sigma_max, "diffusion.edm.sigma_max", e.sigma_min, low_open=True)
    _number(e.p_mean, "diffusion.edm.p_mean")
    _number(fl.loc, "diffusion.flow.loc")
    _number(fl.scale, "diffusion.flow.scale", 0.0, low_open=True)
    _number(fl.shift, "diffusion.flow.shift", 0.0, low_open=True)
    _choice(fl.t_sampling, families.T_SAMPLINGS, "diffusion.flow.t_sampling")
    _number(t.adam_b1, "training.adam_b1", 0.0, 1.0, high_open=True)
    _number(t.adam_b2, "training.adam_b2", 0.0, 1.0, high_open=True)
    _number(t.adam_eps, "training.adam_eps", 0.0, low_open=True)
    _number(t.weight_decay, "training.weight_decay", 0.0)
    _number(t.grad_clip_norm, "training.grad_clip_norm", 0.0)
    _bool(t.ema_warmup, "training.ema_warmup")
    _bool(config.parallel.shard_params, "parallel.shard_params")
    for field in ("clip_x0", "set_alpha_to_one", "use_ema"):
        _bool(s[field], f"sampling.{field}")
    try:
        check_data_config(d)
    except DataError as e:
        raise ConfigError(str(e)) from None
    _check_backbone(config)
    _check_autoencoder(config)
    _positive(m.ch, "model.ch")
    _positive(m.num_res_blocks, "model.num_res_blocks")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {m.dropout}")
    _positive(f.num_timesteps, "diffusion.num_timesteps")
    _choice(f.schedule, schedules.SCHEDULES, "diffusion.schedule")
    _choice(f.family, families.FAMILIES, "diffusion.family")
    _choice(f.target, TARGET_CHOICES, "diffusion.target")
    _choice(f.loss_weighting, diffusion.WEIGHTINGS, "diffusion.loss_weighting")
    _positive(t.batch_size, "training.batch_size")
    _positive(t.num_train_steps, "training.num_train_steps")
    _number(t.max_minutes, "training.max_minutes", low=0.0)
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
    _choice(t.lr_schedule, LR_SCHEDULES, "training.lr_schedule")
    _positive(t.lr_decay_steps, "training.lr_decay_steps", allow_zero=True)
    if t.lr_schedule == "inverse_sqrt" and not t.lr_decay_steps:
        raise ConfigError("training.lr_schedule='inverse_sqrt' needs training.lr_decay_steps > 0 (the step where the "
                          "decay starts)")
    _check_posthoc_ema(t, s)
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
    _bool(s.save_pngs, "sampling.save_pngs")
    _choice(s.grid_sampler, ("auto", "same") + tuple(sampler_registry.SAMPLERS), "sampling.grid_sampler")
    _positive(s.grid_num_steps, "sampling.grid_num_steps")
    if "eval" in config:
        _choice(config.eval.sampler, ("auto", "same") + tuple(sampler_registry.SAMPLERS), "eval.sampler")
        _positive(config.eval.num_steps, "eval.num_steps")
    try:
        family = family_from_config(f)
        check_sampling_config(s, family, bool(m.class_conditional))
        for field, block in (("sampling.grid_sampler", grid_sampling(config, family)),
                             ("eval.sampler", eval_sampling(config, family) if "eval" in config else None)):
            if block is not None and block is not s:
                try:
                    check_sampling_config(block, family, bool(m.class_conditional))
                except ValueError as e:
                    raise ValueError(f"{field}={block.sampler!r} with {block.num_steps} steps: {e}") from None
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if "edit" in config:
        validate_edit(config)
    if "eval" in config:
        # the Inception weights file is read only when training will use it (training.eval_every > 0)
        validate_eval(config, check_weights=bool(t.get("eval_every", 0)))


def validate_edit(config) -> None:
    """Raise :class:`ConfigError` (one line) for an unusable ``config.edit`` block (the checks that
    need the model, such as the mask's or operator's fit to its images, follow once it is opened)."""
    e = config.edit
    _choice(e.task, EDIT_TASKS, "edit.task")
    methods = {"inpaint": INPAINT_METHODS, "restore": restoration.METHODS}.get(e.task, ())
    if e.method != "auto" and e.method not in methods:
        raise ConfigError(f"edit.method={e.method!r} does not fit edit.task={e.task!r}; choose "
                          + (f"auto, {', '.join(methods)}" if methods else "auto (this task has no method)"))
    _choice(e.operator, operators.OPERATORS[:-1], "edit.operator")
    mask = str(e.mask)
    if mask not in EDIT_MASKS and not paths.as_path(mask).exists():
        box = mask[4:].split(",") if mask.startswith("box:") else []
        if len(box) != 4 or not all(v.strip().lstrip("-").isdigit() for v in box):
            raise ConfigError(f"edit.mask={e.mask!r} is not {', '.join(EDIT_MASKS)}, box:y0,x0,h,w or an existing "
                              "PNG / .npy file")
    if not isinstance(e.input, str) or not e.input:
        raise ConfigError(f"edit.input must be 'dataset', 'noise' or a path, got {e.input!r}")
    if e.input == "noise" and e.task != "interpolate":
        raise ConfigError(f"edit.input=noise is for edit.task=interpolate; edit.task={e.task} needs images")
    _positive(e.num_images, "edit.num_images")
    if e.task == "interpolate" and e.num_images < 2:
        raise ConfigError(f"edit.task=interpolate needs edit.num_images >= 2 (pairs of images), got {e.num_images}")
    _positive(e.samples_per_image, "edit.samples_per_image")
    _positive(e.jump_length, "edit.jump_length")
    _positive(e.jump_n_sample, "edit.jump_n_sample")
    _positive(e.interpolation_points, "edit.interpolation_points")
    if e.interpolation_points < 2:
        raise ConfigError(f"edit.interpolation_points must be at least 2, got {e.interpolation_points}")
    _number(e.operator_scale, "edit.operator_scale", 0.0)
    _number(e.measurement_noise, "edit.measurement_noise", 0.0)
    _number(e.strength, "edit.strength", 0.0, 1.0)
    _number(e.dps_scale, "edit.dps_scale", 0.0)
    if e.task == "restore" and e.method == "ddnm" and e.measurement_noise > 0:
        raise ConfigError("edit.method=ddnm is for noiseless measurements (DDNM+'s noise handling is not built); "
                          "use edit.method=dps with edit.measurement_noise > 0")
    if not isinstance(e.labels, str):
        raise ConfigError(f"edit.labels must be auto, none or comma-separated class ids, got {e.labels!r}")


def validate_eval(config, check_weights: bool = True) -> None:
    """Raise :class:`ConfigError` (one line) for an unusable ``config.eval`` / ``training.eval_every``.

    With ``check_weights`` and the Inception extractor, the weights file is read and every array's
    shape checked (no compile)."""
    ev = config.eval
    _choice(ev.feature_extractor, EXTRACTORS, "eval.feature_extractor")
    for field in ("num_samples", "batch_size", "kid_subsets", "kid_subset_size", "bpd_batch_size",
                  "samples_per_class", "train_fid_samples", "classifier_ch", "classifier_features",
                  "classifier_steps", "classifier_batch_size"):
        _positive(ev[field], f"eval.{field}")
    _positive(ev.bpd_num_images, "eval.bpd_num_images", allow_zero=True)
    _bool(ev.bpd, "eval.bpd")
    _bool(ev.bpd_clip_x0, "eval.bpd_clip_x0")
    _number(ev.classifier_learning_rate, "eval.classifier_learning_rate", 0.0, low_open=True)
    _number(ev.fid_guidance_scale, "eval.fid_guidance_scale", 0.0)
    if not isinstance(ev.guidance_scales, (tuple, list)) or not ev.guidance_scales:
        raise ConfigError(f"eval.guidance_scales must be a non-empty tuple of numbers >= 0, got {ev.guidance_scales!r}")
    for w in ev.guidance_scales:
        _number(w, "eval.guidance_scales", 0.0)
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
