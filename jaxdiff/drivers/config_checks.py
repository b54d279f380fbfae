"""Checks on a configuration, run before anything is compiled or written: :func:`validate` composes
the checks of the config blocks (each in the driver module that also turns its block into library
arguments), and :data:`MODE_BLOCKS` says which blocks each ``--mode`` uses.

Each failure is a :class:`ConfigError` whose message names the field and what is wrong with it.
"""

from __future__ import annotations

from jaxdiff.drivers import (autoencoder_config, data_config, diffusion_checks, edit_config, eval_config, latent_config,
                             model_config, sampling_checks, training_config)
from jaxdiff.drivers.checks import ConfigError, check_workdir, positive
from jaxdiff.drivers.eval_config import validate_eval  # eval_mode's name for it

__all__ = ["ALL_BLOCKS", "BLOCK_CHECKS", "ConfigError", "MODE_BLOCKS", "check_workdir", "validate", "validate_eval"]

# Block name -> its check, in the order validate runs them (so a config's first error is always the same).
BLOCK_CHECKS = {
    "data": data_config.check,
    "model": model_config.check,
    "autoencoder": autoencoder_config.check,
    "latent": latent_config.check,
    "diffusion": diffusion_checks.check_diffusion_fields,
    "training": training_config.check,  # and parallel.*
    "sampling": sampling_checks.check_sampling_fields,
    "edit": edit_config.check,
    "eval": eval_config.check,
}
ALL_BLOCKS = tuple(BLOCK_CHECKS)
# The blocks each mode reads. Every diffusion mode builds an Experiment, whose optimiser and train step
# read training.* and parallel.*; sample, eval and edit read latent.* (a latent model's sampling).
_DIFFUSION = ("data", "model", "latent", "diffusion", "training", "sampling")
MODE_BLOCKS = {
    "train": ALL_BLOCKS,
    "sample": _DIFFUSION,
    "eval": (*_DIFFUSION, "eval"),
    "edit": (*_DIFFUSION, "edit"),
    "export": ("data", "model", "diffusion", "training", "sampling"),
    "train_autoencoder": ("data", "autoencoder", "training"),
}


def validate(config, blocks=ALL_BLOCKS) -> None:
    """Raise :class:`ConfigError` for the first invalid value of ``config``: ``seed``, then the checks of
    ``blocks`` (names of :data:`BLOCK_CHECKS`, e.g. ``MODE_BLOCKS[mode]``), in :data:`ALL_BLOCKS`' order."""
    unknown = set(blocks) - set(BLOCK_CHECKS)
    if unknown:
        raise ValueError(f"unknown config blocks {sorted(unknown)}; known: {', '.join(BLOCK_CHECKS)}")
    positive(config.seed, "seed", allow_zero=True)
    for block in ALL_BLOCKS:
        if block in blocks:
            BLOCK_CHECKS[block](config)
