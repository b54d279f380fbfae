"""The ``latent`` block (latent diffusion: ``latent.autoencoder``, the work directory of a
``--mode=train_autoencoder`` run, and ``latent.scale_factor``): its checks. The latent space itself is
opened from the autoencoder's checkpoint by :mod:`jaxdiff.drivers.latent`."""

from __future__ import annotations

from jaxdiff.common import paths
from jaxdiff.drivers.checks import ConfigError, number, path_string
from jaxdiff.models.backbones import BACKBONES


def check(config) -> None:
    """Raise :class:`ConfigError` for the first invalid ``latent.*`` value, or one that does not fit
    the sampling (``sampling.clip_x0``) or the network (``model.init_from``, the backbone)."""
    lat = config.latent
    path_string(lat.autoencoder, "latent.autoencoder")
    if lat.autoencoder and not paths.as_path(lat.autoencoder).exists():
        raise ConfigError(f"latent.autoencoder={lat.autoencoder!r} does not exist (train an autoencoder there "
                          "with --mode=train_autoencoder)")
    number(lat.scale_factor, "latent.scale_factor", 0.0)
    if lat.autoencoder and config.sampling.clip_x0:
        raise ConfigError("sampling.clip_x0=True clips latents to [-1, 1], where images live but latents (unit "
                          "std) do not: set sampling.clip_x0=False with latent.autoencoder")
    if lat.autoencoder and config.model.init_from:
        raise ConfigError("model.init_from and latent.autoencoder together are not supported: start a latent "
                          "model from scratch")
    backbone = BACKBONES.get(config.model.backbone)
    if lat.autoencoder and backbone is not None and not backbone.latent:
        raise ConfigError(f"model.backbone={config.model.backbone!r} cannot denoise latents: unset "
                          "latent.autoencoder or choose another backbone")
