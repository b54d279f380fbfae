"""The ``diffusion`` block's field checks (:func:`check_diffusion_fields`): each field on its own, then
the family they make together (:func:`jaxdiff.drivers.diffusion_config.family_from_config`)."""

from __future__ import annotations

from jaxdiff.core import diffusion, families, schedules
from jaxdiff.drivers.checks import ConfigError, boolean, choice, number, positive
from jaxdiff.drivers.diffusion_config import TARGET_CHOICES, family_from_config


def check_diffusion_fields(config) -> None:
    """Raise :class:`ConfigError` for the first invalid ``diffusion.*`` value (the fields, then the
    family they describe)."""
    f = config.diffusion
    number(f.beta_start, "diffusion.beta_start", 0.0, 1.0, low_open=True, high_open=True)
    number(f.beta_end, "diffusion.beta_end", f.beta_start, 1.0, high_open=True)
    number(f.min_snr_gamma, "diffusion.min_snr_gamma", 0.0, low_open=True)
    boolean(f.scale_betas_to_t, "diffusion.scale_betas_to_t")
    boolean(f.zero_terminal_snr, "diffusion.zero_terminal_snr")
    e, fl = f.edm, f.flow
    for field in ("sigma_data", "sigma_min", "rho", "p_std"):
        number(e[field], f"diffusion.edm.{field}", 0.0, low_open=True)
    number(e.sigma_max, "diffusion.edm.sigma_max", e.sigma_min, low_open=True)
    number(e.p_mean, "diffusion.edm.p_mean")
    number(fl.loc, "diffusion.flow.loc")
    number(fl.scale, "diffusion.flow.scale", 0.0, low_open=True)
    number(fl.shift, "diffusion.flow.shift", 0.0, low_open=True)
    choice(fl.t_sampling, families.T_SAMPLINGS, "diffusion.flow.t_sampling")
    positive(f.num_timesteps, "diffusion.num_timesteps")
    choice(f.schedule, schedules.SCHEDULES, "diffusion.schedule")
    choice(f.family, families.FAMILIES, "diffusion.family")
    choice(f.target, TARGET_CHOICES, "diffusion.target")
    choice(f.loss_weighting, diffusion.WEIGHTINGS, "diffusion.loss_weighting")
    try:
        family_from_config(f)
    except ValueError as e:
        raise ConfigError(str(e)) from None
