"""A config's ``sampling`` block turned into the library's sampler and generation arguments.

Pure NumPy/Python checks run before anything is compiled; :func:`generate_from_config` then calls
:func:`jaxdiff.core.generation.generate`.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxdiff.core import generation
from jaxdiff.core.samplers import SAMPLERS, SPACINGS, SampleOutput, Sampler, make_sampler, resolve_spacing
from jaxdiff.core.schedules import DiffusionTables


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


def check_sampling_config(sampling_config, num_timesteps: int, class_conditional: bool) -> None:
    """Raise ``ValueError`` (one line) for a ``config.sampling`` block that cannot be sampled with a
    schedule of ``num_timesteps`` steps and a model with or without classes. Pure NumPy/Python."""
    sc = sampling_config
    if sc.sampler not in SAMPLERS:
        raise ValueError(f"sampling.sampler={sc.sampler!r} is not one of {', '.join(SAMPLERS)}")
    if sc.spacing != "auto" and sc.spacing not in SPACINGS:
        raise ValueError(f"sampling.spacing={sc.spacing!r} is not one of auto, {', '.join(SPACINGS)}")
    if not isinstance(sc.num_steps, int) or not 0 <= sc.num_steps <= num_timesteps:
        raise ValueError(f"sampling.num_steps={sc.num_steps!r} must be 0 (all) or at most "
                         f"diffusion.num_timesteps={num_timesteps}")
    if not sc.eta >= 0:
        raise ValueError(f"sampling.eta must be non-negative, got {sc.eta}")
    if not (np.isfinite(sc.guidance_scale) and sc.guidance_scale >= 0):
        raise ValueError(f"sampling.guidance_scale must be a non-negative number, got {sc.guidance_scale}")
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


def sampler_from_config(tables: DiffusionTables, sampling_config, target: str) -> Sampler:
    """The :class:`Sampler` a ``config.sampling`` block describes (``ValueError`` on bad values)."""
    sc = sampling_config
    if sc.sampler not in SAMPLERS:
        raise ValueError(f"sampling.sampler={sc.sampler!r} is not one of {', '.join(SAMPLERS)}")
    return make_sampler(tables, sc.sampler, sc.num_steps, resolve_spacing(sc.sampler, sc.spacing), target,
                        sc.eta, sc.variance, sc.clip_x0, sc.set_alpha_to_one)


def sampling_metadata(sampling_config, target: str) -> dict:
    """What a config's sampler is, for the metadata next to every sample file and metric."""
    sc = sampling_config
    return {"sampler": sc.sampler, "spacing": resolve_spacing(sc.sampler, sc.spacing),
            "eta": float(sc.eta) if sc.sampler == "ddim" else None,
            "variance": sc.variance if sc.sampler == "ddpm" else None,
            "set_alpha_to_one": bool(sc.set_alpha_to_one) if sc.sampler != "ddpm" else None,
            "clip_x0": bool(sc.clip_x0), "target": target}


def generate_from_config(apply_fn, params, tables: DiffusionTables, sampling_config, shape, key: jax.Array,
                         *, target: str = "eps", num_classes: int = 0, labels=None,
                         trajectory_every: int | None = None, trajectory_size: int = 16,
                         mesh=None, cache: dict | None = None, progress=None, should_stop=None) -> SampleOutput:
    """:func:`jaxdiff.core.generation.generate` with the sampler, labels, guidance, chunk size and
    trajectory stride of a ``config.sampling`` block (``labels`` overrides ``sampling.labels``).
    ``cache`` also keeps the samplers built from the same block, so the compiled chunk generator is
    reused. Every check runs before anything is compiled; the metadata names the sampler."""
    sc = sampling_config
    num = int(shape[0])  # generation.generate refuses num < 1
    check_sampling_config(sc, tables.num_timesteps, num_classes > 0)
    sampler_key = ("sampler", sc.to_json(sort_keys=True), target)
    sampler = None if cache is None else cache.get(sampler_key)
    if sampler is None:
        sampler = sampler_from_config(tables, sc, target)
        if cache is not None:
            cache[sampler_key] = sampler
    labels = parse_labels(sc.labels, num, num_classes) if labels is None else labels
    every = int(sc.trajectory_every if trajectory_every is None else trajectory_every)
    out = generation.generate(apply_fn, params, sampler, shape, key, labels=labels, num_classes=num_classes,
                              guidance_scale=float(sc.guidance_scale), batch_size=int(sc.batch_size),
                              trajectory_every=every, trajectory_size=trajectory_size, mesh=mesh, cache=cache,
                              progress=progress, should_stop=should_stop)
    return out._replace(metadata={**out.metadata, **sampling_metadata(sc, target)})
