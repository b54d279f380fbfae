"""The train state: everything a checkpoint holds to continue training exactly."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """Step, parameters, their EMA and the optimiser state (a pytree)."""

    step: jax.Array  # int32 scalar: number of optimizer updates applied so far
    params: Any
    ema_params: Any
    opt_state: Any


def init_train_state(params, optimizer: optax.GradientTransformation) -> TrainState:
    """The train state at step 0.

    Args:
      params: the network's parameters (:func:`jaxdiff.models.denoiser.init_denoiser`).
      optimizer: the optax transformation the step will apply.

    Returns:
      :class:`TrainState` with ``step = 0``, the EMA equal to ``params`` and a fresh optimiser state.
    """
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=optimizer.init(params))
