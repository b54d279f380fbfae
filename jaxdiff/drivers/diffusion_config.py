"""A config's ``diffusion`` block turned into a :class:`~jaxdiff.core.families.Family`."""

from __future__ import annotations

from jaxdiff.core import diffusion, families, schedules

AUTO_TARGET = {"ddpm": "eps", "vp": "eps", "edm": "edm", "flow": "flow"}
TARGET_CHOICES = ("auto", *diffusion.TARGETS, "edm", "flow")  # diffusion.target: auto resolves per family


def resolve_target(diffusion_config) -> str:
    """``diffusion.target`` with ``auto`` resolved: eps for ddpm and vp; EDM's preconditioned ``F``
    (``edm``) and the flow velocity (``flow``), the only parameterisations those families train."""
    dc = diffusion_config
    family = dc.get("family", "ddpm")
    if family not in families.FAMILIES:
        raise ValueError(f"diffusion.family={family!r} is not one of {', '.join(families.FAMILIES)}")
    target = dc.target
    if target == "auto":
        return AUTO_TARGET[family]
    if family in ("edm", "flow") and target != AUTO_TARGET[family]:
        raise ValueError(f"diffusion.target={target!r} does not fit diffusion.family={family!r}, which trains "
                         f"{'its preconditioned F' if family == 'edm' else 'the velocity eps - x0'}; use auto")
    return target


def family_from_config(diffusion_config) -> families.Family:
    """The family of a ``config.diffusion`` block (``ValueError``, one line, on a bad value)."""
    dc = diffusion_config
    target = resolve_target(dc)
    name = dc.get("family", "ddpm")
    if name != "ddpm" and dc.get("zero_terminal_snr", False):
        raise ValueError("diffusion.zero_terminal_snr rescales the discrete ddpm tables; it does not apply to "
                         f"diffusion.family={name!r}")
    if name == "ddpm":
        return families.ddpm(schedules.tables_from_config(dc), target, dc.loss_weighting, dc.min_snr_gamma)
    if name == "vp":
        return families.vp(dc.schedule, target, dc.loss_weighting, dc.min_snr_gamma)
    if dc.loss_weighting != "none":
        raise ValueError(f"diffusion.loss_weighting={dc.loss_weighting!r} is for ddpm and vp; "
                         f"diffusion.family={name!r} has its own weighting (use none)")
    if name == "edm":
        e = dc.edm
        return families.edm(e.sigma_data, e.p_mean, e.p_std, e.sigma_min, e.sigma_max, e.rho)
    f = dc.flow
    return families.flow(f.t_sampling, f.loc, f.scale, f.shift)
