"""Independent key streams derived from the seed: every random draw of a run is a pure function of
``(seed, stream, step)``, so a resumed run needs no saved RNG state."""

from __future__ import annotations

import jax

TRAIN_STREAM, SAMPLE_STREAM, INIT_STREAM, EDIT_STREAM = 0, 1, 2, 3  # independent key streams derived from the seed
EVAL_STREAM = 101  # evaluation keys (sample mode, FID); the training-time FID uses EVAL_STREAM + 1


def stream_key(seed: int, stream: int, step) -> jax.Array:
    """``fold_in(fold_in(key(seed), stream), step)``: the key of one step of one stream."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stream), step)


def step_keys(seed: int, step) -> dict:
    """The four independent keys of training step ``step``: flip, label (dropout of labels),
    dropout (network dropout) and loss (timesteps and noise), split from the step's stream key."""
    flip, label, dropout, loss = jax.random.split(stream_key(seed, TRAIN_STREAM, step), 4)
    return {"flip": flip, "label": label, "dropout": dropout, "loss": loss}
