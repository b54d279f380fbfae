"""The ``autoencoder`` block (``--mode=train_autoencoder``'s KL autoencoder): its checks and the
:class:`~jaxdiff.models.autoencoder.AutoencoderKL` it describes."""

from __future__ import annotations

import jax.numpy as jnp

from jaxdiff.drivers.checks import ConfigError, boolean, choice, number, positive, positive_ints
from jaxdiff.models.autoencoder import AutoencoderKL
from jaxdiff.training.autoencoder_step import RECONSTRUCTIONS


def check(config) -> None:
    """Raise :class:`ConfigError` for the first invalid ``autoencoder.*`` value."""
    ac = config.autoencoder
    positive_ints(ac.block_out_channels, "autoencoder.block_out_channels")
    positive(ac.layers_per_block, "autoencoder.layers_per_block")
    positive(ac.latent_channels, "autoencoder.latent_channels")
    positive(ac.norm_num_groups, "autoencoder.norm_num_groups")
    if any(c % ac.norm_num_groups for c in ac.block_out_channels):
        raise ConfigError(f"autoencoder.norm_num_groups={ac.norm_num_groups} does not divide every entry of "
                          f"autoencoder.block_out_channels={tuple(ac.block_out_channels)}")
    boolean(ac.mid_attention, "autoencoder.mid_attention")
    choice(ac.reconstruction, RECONSTRUCTIONS, "autoencoder.reconstruction")
    number(ac.kl_weight, "autoencoder.kl_weight", 0.0)
    positive(ac.num_train_steps, "autoencoder.num_train_steps")
    number(ac.learning_rate, "autoencoder.learning_rate", 0.0, low_open=True)


def autoencoder_from_config(ae_config, channels: int, dtype=jnp.float32) -> AutoencoderKL:
    """The :class:`~jaxdiff.models.autoencoder.AutoencoderKL` of a ``config.autoencoder`` block for
    images of ``channels`` channels."""
    a = ae_config
    return AutoencoderKL(in_channels=channels, out_channels=channels, block_out_channels=tuple(a.block_out_channels),
                         layers_per_block=a.layers_per_block, latent_channels=a.latent_channels,
                         norm_num_groups=a.norm_num_groups, mid_block_add_attention=a.mid_attention, dtype=dtype)
