"""The ``diffusion`` block: its checks (:func:`check`) and the :class:`~jaxdiff.core.families.Family` it
describes. The block is a process record (:class:`~jaxdiff.core.families.FamilySpec`), so the family is
:func:`jaxdiff.core.families.from_record` of it."""

from __future__ import annotations

from jaxdiff.core import consistency, diffusion, families, schedules
from jaxdiff.drivers.checks import ConfigError, boolean, choice, number, positive
from jaxdiff.models.backbones import BACKBONES

TARGET_CHOICES = ("auto", *dict.fromkeys(t for spec in families.FAMILIES.values() for t in spec.targets))


def resolve_target(diffusion_config) -> str:
    """``diffusion.target`` with ``auto`` resolved to the family's own (eps for ddpm and vp; EDM's
    preconditioned ``F`` (``edm``) and the flow velocity (``flow``), the only parameterisations those
    families train)."""
    return families.resolve_target(diffusion_config.get("family", "ddpm"), diffusion_config.target)


def family_from_config(diffusion_config) -> families.Family:
    """The family of a ``config.diffusion`` block (``ValueError``, one line, on a bad value)."""
    return families.from_record(diffusion_config)


def check(config) -> None:
    """Raise :class:`ConfigError` for the first invalid ``diffusion.*`` value (the fields, then the
    family they describe)."""
    dc = config.diffusion
    number(dc.beta_start, "diffusion.beta_start", 0.0, 1.0, low_open=True, high_open=True)
    number(dc.beta_end, "diffusion.beta_end", dc.beta_start, 1.0, high_open=True)
    number(dc.min_snr_gamma, "diffusion.min_snr_gamma", 0.0, low_open=True)
    boolean(dc.scale_betas_to_t, "diffusion.scale_betas_to_t")
    boolean(dc.zero_terminal_snr, "diffusion.zero_terminal_snr")
    edm, flow = dc.edm, dc.flow
    for field in ("sigma_data", "sigma_min", "rho", "p_std"):
        number(edm[field], f"diffusion.edm.{field}", 0.0, low_open=True)
    number(edm.sigma_max, "diffusion.edm.sigma_max", edm.sigma_min, low_open=True)
    number(edm.p_mean, "diffusion.edm.p_mean")
    number(flow.loc, "diffusion.flow.loc")
    number(flow.scale, "diffusion.flow.scale", 0.0, low_open=True)
    number(flow.shift, "diffusion.flow.shift", 0.0, low_open=True)
    choice(flow.t_sampling, families.T_SAMPLINGS, "diffusion.flow.t_sampling")
    mf = dc.meanflow
    number(mf.p_mean, "diffusion.meanflow.p_mean")
    number(mf.p_std, "diffusion.meanflow.p_std", 0.0, low_open=True)
    number(mf.equal_fraction, "diffusion.meanflow.equal_fraction", 0.0, 1.0)
    number(mf.norm_p, "diffusion.meanflow.norm_p", 0.0)
    number(mf.norm_eps, "diffusion.meanflow.norm_eps", 0.0, low_open=True)
    positive(dc.shortcut.levels, "diffusion.shortcut.levels")
    positive(dc.shortcut.bootstrap_every, "diffusion.shortcut.bootstrap_every")
    cm = dc.consistency
    choice(cm.schedule, consistency.SCHEDULES, "diffusion.consistency.schedule")
    positive(cm.double_every, "diffusion.consistency.double_every")
    number(cm.p_mean, "diffusion.consistency.p_mean")
    number(cm.huber_c, "diffusion.consistency.huber_c", 0.0)
    for field in ("p_std", "sigma_min", "rho"):
        number(cm[field], f"diffusion.consistency.{field}", 0.0, low_open=True)
    number(cm.sigma_max, "diffusion.consistency.sigma_max", cm.sigma_min, low_open=True)
    scm = dc.scm
    number(scm.p_mean, "diffusion.scm.p_mean")
    for field in ("sigma_data", "p_std", "tangent_c"):
        number(scm[field], f"diffusion.scm.{field}", 0.0, low_open=True)
    positive(scm.warmup_steps, "diffusion.scm.warmup_steps", allow_zero=True)
    positive(dc.num_timesteps, "diffusion.num_timesteps")
    choice(dc.schedule, schedules.SCHEDULES, "diffusion.schedule")
    choice(dc.family, families.FAMILIES, "diffusion.family")
    choice(dc.target, TARGET_CHOICES, "diffusion.target")
    choice(dc.loss_weighting, diffusion.WEIGHTINGS, "diffusion.loss_weighting")
    try:
        family = family_from_config(dc)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    backbone = BACKBONES.get(config.model.backbone)
    if (family.two_times or family.needs_jvp) and backbone is not None and not backbone.two_times:
        needs = " and ".join(n for n, f in (("a second time input (span)", family.two_times),
                                            ("jax.jvp (forward-mode layers)", family.needs_jvp)) if f)
        raise ConfigError(f"diffusion.family={dc.family!r} needs a network with {needs}; "
                          f"model.backbone={config.model.backbone!r} has none: use unet or dit")
