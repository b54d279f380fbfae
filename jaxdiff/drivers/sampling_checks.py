"""The ``sampling`` block's field checks (:func:`check_sampling_fields`): each field on its own, then the
samplers it asks for (``sampling.sampler``, ``sampling.grid_sampler``) against the family of
``config.diffusion`` (:func:`jaxdiff.drivers.sampling.check_sampling_config`)."""

from __future__ import annotations

from jaxdiff.core import diffusion, solvers
from jaxdiff.drivers.checks import ConfigError, boolean, choice, number, positive
from jaxdiff.drivers.diffusion_config import family_from_config
from jaxdiff.drivers.sampling import check_sampling_config, grid_sampling
from jaxdiff.training.posthoc_ema import MAX_STD


def check_sampler_fits(config, field: str, block) -> None:
    """Raise :class:`ConfigError` unless the sampling ``block`` that ``field`` (``sampling.grid_sampler``,
    ``eval.sampler``) makes of ``config.sampling`` fits the family of ``config.diffusion`` and the
    model's conditioning (``None``, or ``config.sampling`` itself: nothing more to check)."""
    if block is None or block is config.sampling:
        return
    try:
        family = family_from_config(config.diffusion)
        check_sampling_config(block, family, bool(config.model.class_conditional))
    except ValueError as e:
        raise ConfigError(f"{field}={block.sampler!r} with {block.num_steps} steps: {e}") from None


def check_sampling_fields(config) -> None:
    """Raise :class:`ConfigError` for the first invalid ``sampling.*`` value (the fields, then the
    samplers they ask for against the process)."""
    s = config.sampling
    for field in ("clip_x0", "set_alpha_to_one", "use_ema"):
        boolean(s[field], f"sampling.{field}")
    number(s.ema_std, "sampling.ema_std", 0.0, MAX_STD)  # that the checkpoint has snapshots: when it is opened
    choice(s.variance, diffusion.VARIANCES, "sampling.variance")
    positive(s.num_samples, "sampling.num_samples")
    positive(s.batch_size, "sampling.batch_size")
    positive(s.trajectory_every, "sampling.trajectory_every", allow_zero=True)
    boolean(s.save_pngs, "sampling.save_pngs")
    choice(s.grid_sampler, ("auto", "same") + solvers.SAMPLERS, "sampling.grid_sampler")
    positive(s.grid_num_steps, "sampling.grid_num_steps")
    try:
        check_sampling_config(s, family_from_config(config.diffusion), bool(config.model.class_conditional))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    check_sampler_fits(config, "sampling.grid_sampler", grid_sampling(config))
