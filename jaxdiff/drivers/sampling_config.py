"""The ``sampling`` block: its checks (:func:`check`: each field, then the samplers it asks for against the
family of ``config.diffusion``), and the library's sampler and generation arguments it gives.

Pure NumPy/Python checks run before anything is compiled; :func:`generate_from_config` then calls
:func:`jaxdiff.core.generation.generate`.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from jaxdiff.core import diffusion, generation
from jaxdiff.core.families import Family, family_spec
from jaxdiff.core.sampler import SampleOutput, Sampler
from jaxdiff.core.sampler_registry import SAMPLERS, make_sampler, resolve_spacing
from jaxdiff.drivers.checks import ConfigError, boolean, choice, number, positive
from jaxdiff.drivers.diffusion_config import family_from_config
from jaxdiff.training.posthoc_ema import MAX_STD

FAST_SAMPLER = "dpm_solver++"  # what sampling.grid_sampler=auto and eval.sampler=auto run, in every family


def parse_labels(spec, num_samples: int, num_classes: int) -> np.ndarray | None:
    """The class of every sample from ``sampling.labels``, int32 ``[num_samples]``, or ``None``.

    ``auto``: ``all`` for a class-conditional model (``num_classes > 0``), else ``none``;
    ``none``: unconditional (the null label); ``all``: ``0, 1, ..., K-1, 0, 1, ...``;
    ``"3,5"``: those classes, cycled. Raises ``ValueError`` for classes asked of a model trained
    without them, an id outside ``[0, K)`` or an unreadable string.
    """
    text = str(spec).strip().lower()
    if text == "auto":
        text = "all" if num_classes else "none"
    if text == "none":
        return None
    if not num_classes:
        raise ValueError(f"sampling.labels={spec!r} asks for classes, but the model was trained without "
                         "classes (model.class_conditional=False); use sampling.labels=none")
    if text == "all":
        classes = np.arange(num_classes)
    else:
        try:
            classes = np.array([int(c) for c in text.split(",")], np.int64)
        except ValueError:
            raise ValueError(f"sampling.labels={spec!r} is not auto, none, all or comma-separated class "
                             "ids such as 3,5") from None
    return generation.check_labels(classes[np.arange(num_samples) % len(classes)], num_samples, num_classes)


def sampling_with(sampling_config, sampler: str, num_steps: int):
    """``sampling_config`` with another sampler: ``same`` returns it as it is; ``auto`` is
    :data:`FAST_SAMPLER` (DPM-Solver++(2M), 10-20 steps in every family), any other name that
    sampler; both with ``num_steps`` steps and the family's own spacing (``auto``). Labels, guidance,
    clipping and the chunk size stay. The sample grids of training (``sampling.grid_sampler``) and
    eval's samples (``eval.sampler``) go through this."""
    if sampler == "same":
        return sampling_config
    sc = ml_collections.ConfigDict(sampling_config.to_dict())
    sc.sampler, sc.num_steps, sc.spacing = FAST_SAMPLER if sampler == "auto" else sampler, int(num_steps), "auto"
    return sc


def _at_most_the_chain(family: Family, num_steps: int) -> int:
    """``num_steps``, capped at the number of rows of a discrete family's chain."""
    return min(int(num_steps), family.tables.num_timesteps) if family.tables is not None else num_steps


def grid_sampling(config, family: Family):
    """The ``sampling`` block of the sample grids written during training (``sampling.grid_sampler``)."""
    sc = config.sampling
    return sampling_with(sc, sc.grid_sampler, _at_most_the_chain(family, sc.grid_num_steps))


def eval_sampling(config, family: Family):
    """The ``sampling`` block of eval's samples and the training-time FID (``eval.sampler``)."""
    return sampling_with(config.sampling, config.eval.sampler, _at_most_the_chain(family, config.eval.num_steps))


def resolve_sampler(sampling_config, family: Family) -> tuple[str, int]:
    """``(sampler name, number of steps)`` of a ``config.sampling`` block for ``family``: ``auto`` and
    ``num_steps=0`` are the family's own (:data:`~jaxdiff.core.families.FAMILIES`: ddpm over all T for
    the ddpm family, dpm_solver++ for vp, EDM's heun for edm, euler for flow)."""
    sc = sampling_config
    spec = family_spec(family)
    name = spec.sampler if sc.sampler == "auto" else sc.sampler
    steps = sc.num_steps or spec.num_steps or family.tables.num_timesteps
    return name, int(steps)


def check_sampling_config(sampling_config, family: Family, class_conditional: bool) -> None:
    """Raise ``ValueError`` (one line) for a ``config.sampling`` block that cannot be sampled with
    ``family`` and a model with or without classes. Builds the sampler (NumPy only, no compile)."""
    sc = sampling_config
    if sc.sampler != "auto" and sc.sampler not in SAMPLERS:
        raise ValueError(f"sampling.sampler={sc.sampler!r} is not one of auto, {', '.join(SAMPLERS)}")
    if sc.spacing != "auto" and sc.spacing not in family.spacings:
        raise ValueError(f"sampling.spacing={sc.spacing!r} does not fit diffusion.family={family.name!r}; choose "
                         f"one of auto, {', '.join(family.spacings)}")
    limit = family.tables.num_timesteps if family.tables is not None else None
    if not isinstance(sc.num_steps, int) or sc.num_steps < 0 or (limit is not None and sc.num_steps > limit):
        raise ValueError(f"sampling.num_steps={sc.num_steps!r} must be 0 (the default) or a positive number of "
                         "steps" + (f" at most diffusion.num_timesteps={limit}" if limit is not None else ""))
    for field in ("eta", "sde_eta", "s_churn", "s_min", "s_max", "s_noise", "guidance_scale"):
        value = sc[field]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (np.isfinite(value) and value >= 0):
            raise ValueError(f"sampling.{field} must be a non-negative number, got {value!r}")
    if not sc.s_max >= sc.s_min or not sc.s_noise > 0:
        raise ValueError(f"sampling.s_max ({sc.s_max}) must be at least sampling.s_min ({sc.s_min}) and "
                         f"sampling.s_noise ({sc.s_noise}) positive")
    interval = tuple(sc.guidance_interval)
    if interval and (len(interval) != 2 or not 0 <= interval[0] < interval[1]):
        raise ValueError(f"sampling.guidance_interval must be () or (lo, hi) with 0 <= lo < hi in sigma / alpha, "
                         f"got {sc.guidance_interval!r}")
    labels = str(sc.labels).strip().lower()
    if not class_conditional:
        if labels not in ("auto", "none"):
            raise ValueError(f"sampling.labels={sc.labels!r} asks for classes, but model.class_conditional=False")
        if sc.guidance_scale != 1.0:
            raise ValueError(f"sampling.guidance_scale={sc.guidance_scale} needs a class-conditional model "
                             "(model.class_conditional=True, trained with training.label_dropout > 0)")
    elif labels == "none" and sc.guidance_scale != 1.0:
        raise ValueError(f"sampling.guidance_scale={sc.guidance_scale} needs class labels; "
                         "sampling.labels=none samples unconditionally")
    if labels not in ("auto", "none", "all"):
        try:
            ids = [int(c) for c in labels.split(",")]
        except ValueError:
            raise ValueError(f"sampling.labels={sc.labels!r} is not auto, none, all or comma-separated "
                             "class ids such as 3,5") from None
        if min(ids) < 0:
            raise ValueError(f"sampling.labels has a negative class id {min(ids)}")
    sampler_from_config(family, sc)  # the sampler's own checks (fit, spacing, repeated steps), NumPy only


def sampler_from_config(family: Family, sampling_config) -> Sampler:
    """The :class:`Sampler` a ``config.sampling`` block describes (``ValueError`` on bad values)."""
    sc = sampling_config
    name, steps = resolve_sampler(sc, family)
    return make_sampler(family, name, steps, sc.spacing, set_alpha_to_one=sc.set_alpha_to_one, **sampler_options(sc))


def sampler_options(sampling_config) -> dict:
    """The keyword arguments of :func:`~jaxdiff.core.sampler_registry.sampler_on_grid` in a ``config.sampling``
    block (noise, variance, clipping, EDM's churn)."""
    sc = sampling_config
    return {"eta": sc.eta, "sde_eta": sc.sde_eta, "variance": sc.variance, "clip_x0": sc.clip_x0,
            "churn": sc.s_churn, "s_min": sc.s_min, "s_max": sc.s_max, "s_noise": sc.s_noise}


def sampling_metadata(sampling_config, family: Family) -> dict:
    """What a config's sampler is, for the metadata next to every sample file and metric: the options
    its sampler reads (:data:`~jaxdiff.core.sampler_registry.SAMPLERS`), ``None`` for the others."""
    sc = sampling_config
    name, _ = resolve_sampler(sc, family)
    reads = SAMPLERS[name].options
    return {"family": family.name, "sampler": name, "spacing": resolve_spacing(family, name, sc.spacing),
            "eta": float(sc.eta) if "eta" in reads else None,
            "sde_eta": float(sc.sde_eta) if "sde_eta" in reads else None,
            "churn": [float(sc.s_churn), float(sc.s_min), float(sc.s_max), float(sc.s_noise)]
            if "churn" in reads else None,
            "variance": sc.variance if "variance" in reads else None,
            "set_alpha_to_one": bool(sc.set_alpha_to_one)
            if family.tables is not None and "set_alpha_to_one" in reads else None,
            "clip_x0": bool(sc.clip_x0), "target": family.prediction}


def generate_from_config(apply_fn, params, family: Family, sampling_config, shape, key: jax.Array,
                         *, num_classes: int = 0, labels=None, trajectory_every: int | None = None,
                         trajectory_size: int = 16, mesh=None, cache: dict | None = None, progress=None,
                         should_stop=None) -> SampleOutput:
    """:func:`jaxdiff.core.generation.generate` with the sampler, labels, guidance (and its interval),
    chunk size and trajectory stride of a ``config.sampling`` block for ``family`` (``labels``
    overrides ``sampling.labels``). ``cache`` also keeps the samplers built from the same block, so
    the compiled chunk generator is reused. Every check runs before anything is compiled; the
    metadata names the family and the sampler."""
    sc = sampling_config
    num = int(shape[0])  # generation.generate refuses num < 1
    check_sampling_config(sc, family, num_classes > 0)
    sampler_key = ("sampler", sc.to_json(sort_keys=True), id(family.predict))
    cached = None if cache is None else cache.get(sampler_key)
    if cached is None:
        cached = (family, sampler_from_config(family, sc))  # the family kept alive: its id stays unique
        if cache is not None:
            cache[sampler_key] = cached
    sampler = cached[1]
    labels = parse_labels(sc.labels, num, num_classes) if labels is None else labels
    every = int(sc.trajectory_every if trajectory_every is None else trajectory_every)
    out = generation.generate(apply_fn, params, sampler, shape, key, labels=labels, num_classes=num_classes,
                              guidance_scale=float(sc.guidance_scale), batch_size=int(sc.batch_size),
                              trajectory_every=every, trajectory_size=trajectory_size, mesh=mesh,
                              guidance_interval=tuple(sc.guidance_interval) or None, cache=cache,
                              progress=progress, should_stop=should_stop)
    return out._replace(metadata={**out.metadata, **sampling_metadata(sc, family)})


def check_sampler_fits(config, field: str, block) -> None:
    """Raise :class:`ConfigError` unless the sampling ``block`` that ``field`` (``sampling.grid_sampler``,
    ``eval.sampler``) makes of ``config.sampling`` fits the family of ``config.diffusion`` and the
    model's conditioning (``None``, or ``config.sampling`` itself: nothing more to check)."""
    if block is None or block is config.sampling:
        return
    try:
        check_sampling_config(block, family_from_config(config.diffusion), bool(config.model.class_conditional))
    except ValueError as e:
        raise ConfigError(f"{field}={block.sampler!r} with {block.num_steps} steps: {e}") from None


def check(config) -> None:
    """Raise :class:`ConfigError` for the first invalid ``sampling.*`` value (the fields, then the
    samplers they ask for against the process)."""
    sc = config.sampling
    for field in ("clip_x0", "set_alpha_to_one", "use_ema"):
        boolean(sc[field], f"sampling.{field}")
    number(sc.ema_std, "sampling.ema_std", 0.0, MAX_STD)  # that the checkpoint has snapshots: when it is opened
    choice(sc.variance, diffusion.VARIANCES, "sampling.variance")
    positive(sc.num_samples, "sampling.num_samples")
    positive(sc.batch_size, "sampling.batch_size")
    positive(sc.trajectory_every, "sampling.trajectory_every", allow_zero=True)
    boolean(sc.save_pngs, "sampling.save_pngs")
    choice(sc.grid_sampler, ("auto", "same", *SAMPLERS), "sampling.grid_sampler")
    positive(sc.grid_num_steps, "sampling.grid_num_steps")
    try:
        family = family_from_config(config.diffusion)
        check_sampling_config(sc, family, bool(config.model.class_conditional))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    check_sampler_fits(config, "sampling.grid_sampler", grid_sampling(config, family))
