"""Independent key streams derived from the seed: every random draw of a run is a pure function of
``(seed, stream, step)``, so a resumed run needs no saved RNG state.

Who draws from which stream: training steps ``TRAIN_STREAM`` (:func:`step_keys`), parameter
initialisation ``INIT_STREAM`` (step 0), sample mode ``SAMPLE_STREAM`` and edit mode
``EDIT_STREAM`` (both at the checkpoint step), ``--mode=eval`` ``EVAL_STREAM`` (at the checkpoint
step) and the FID logged while training ``EVAL_STREAM + 1`` (at the training step)."""

from __future__ import annotations

import jax

TRAIN_STREAM, SAMPLE_STREAM, INIT_STREAM, EDIT_STREAM = 0, 1, 2, 3  # independent key streams derived from the seed
EVAL_STREAM = 101  # --mode=eval (FID / KID, bits/dim, accuracy); the training-time FID uses EVAL_STREAM + 1


def stream_key(seed: int, stream: int, step) -> jax.Array:
    """``fold_in(fold_in(key(seed), stream), step)``: the key of one step of one stream."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stream), step)


def step_keys(seed: int, step) -> dict:
    """The four independent keys of training step ``step``: flip, label (dropout of labels),
    dropout (network dropout) and loss (timesteps and noise), split from the step's stream key."""
    flip, label, dropout, loss = jax.random.split(stream_key(seed, TRAIN_STREAM, step), 4)
    return {"flip": flip, "label": label, "dropout": dropout, "loss": loss}
