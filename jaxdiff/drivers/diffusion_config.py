"""A config's ``diffusion`` block turned into a :class:`~jaxdiff.core.families.Family`: the block is a
process record (:class:`~jaxdiff.core.families.FamilySpec`), so this is
:func:`jaxdiff.core.families.from_record` with the config's own names."""

from __future__ import annotations

from jaxdiff.core import families

TARGET_CHOICES = ("auto", *dict.fromkeys(t for spec in families.FAMILIES.values() for t in spec.targets))


def resolve_target(diffusion_config) -> str:
    """``diffusion.target`` with ``auto`` resolved to the family's own (eps for ddpm and vp; EDM's
    preconditioned ``F`` (``edm``) and the flow velocity (``flow``), the only parameterisations those
    families train)."""
    return families.resolve_target(diffusion_config.get("family", "ddpm"), diffusion_config.target)


def family_from_config(diffusion_config) -> families.Family:
    """The family of a ``config.diffusion`` block (``ValueError``, one line, on a bad value)."""
    return families.from_record(diffusion_config)
