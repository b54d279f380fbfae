"""Checks on a configuration, run before anything is compiled or written: :func:`validate` composes
the checks of the config blocks (each in the driver module that also turns its block into library
arguments); each ``--mode`` validates the blocks it reads (:data:`jaxdiff.drivers.modes.MODES`).

Each failure is a :class:`ConfigError` whose message names the field and what is wrong with it.
"""

from __future__ import annotations

from jaxdiff.drivers import (autoencoder_config, data_config, diffusion_config, edit_config, eval_config, latent_config,
                             model_config, sampling_config, training_config)
from jaxdiff.drivers.checks import ConfigError, check_workdir, positive
from jaxdiff.drivers.eval_config import validate_eval  # eval_mode's name for it

__all__ = ["ALL_BLOCKS", "BLOCK_CHECKS", "ConfigError", "DIFFUSION_BLOCKS", "check_workdir", "validate",
           "validate_eval"]

# Block name -> its check, in the order validate runs them (so a config's first error is always the same).
BLOCK_CHECKS = {
    "data": data_config.check,
    "model": model_config.check,
    "autoencoder": autoencoder_config.check,
    "latent": latent_config.check,
    "diffusion": diffusion_config.check,
    "training": training_config.check,  # and parallel.*
    "sampling": sampling_config.check,
    "edit": edit_config.check,
    "eval": eval_config.check,
}
ALL_BLOCKS = tuple(BLOCK_CHECKS)
# What a mode that opens a diffusion model reads (each mode names its blocks: ``BLOCKS`` of its module,
# :data:`jaxdiff.drivers.modes.MODES`): an Experiment's optimiser and train step read training.* and
# parallel.*, and latent.* says how a latent model's samples are decoded.
DIFFUSION_BLOCKS = ("data", "model", "latent", "diffusion", "training", "sampling")


def validate(config, blocks=ALL_BLOCKS) -> None:
    """Raise :class:`ConfigError` for the first invalid value of ``config``: ``seed``, then the checks of
    ``blocks`` (names of :data:`BLOCK_CHECKS`, e.g. a mode's ``BLOCKS``), in :data:`ALL_BLOCKS`' order."""
    unknown = set(blocks) - set(BLOCK_CHECKS)
    if unknown:
        raise ValueError(f"unknown config blocks {sorted(unknown)}; known: {', '.join(BLOCK_CHECKS)}")
    positive(config.seed, "seed", allow_zero=True)
    for block in ALL_BLOCKS:
        if block in blocks:
            BLOCK_CHECKS[block](config)
