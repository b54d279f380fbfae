"""The train state: everything a checkpoint holds to continue training exactly."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """Step, parameters, their EMA, the optimiser state, the power-function EMA profiles that
    post-hoc EMA snapshots (:mod:`jaxdiff.training.posthoc_ema`; ``()`` when none are tracked) and, for a
    family that ``needs_teacher``, the frozen teacher's parameters (``None`` otherwise), a pytree."""

    step: jax.Array  # int32 scalar: number of optimizer updates applied so far
    params: Any
    ema_params: Any
    opt_state: Any
    ema_profiles: tuple = ()  # one copy of params per tracked relative std
    teacher: Any = None  # a frozen network's parameters (progressive distillation's teacher), else None


def copy_tree(tree):
    """``tree`` with every leaf copied into a new buffer."""
    return jax.tree.map(jnp.copy, tree)


def init_train_state(params, optimizer: optax.GradientTransformation, num_ema_profiles: int = 0,
                     teacher=None) -> TrainState:
    """The train state at step 0.

    Args:
      params: the network's parameters (:func:`jaxdiff.models.denoiser.init_denoiser`).
      optimizer: the optax transformation the step will apply.
      num_ema_profiles: how many power-function EMA profiles the step tracks (its ``ema_stds``).
      teacher: a frozen teacher's parameters, for a family that ``needs_teacher`` (kept in every
        checkpoint, so a resumed distillation needs nothing else).

    Returns:
      :class:`TrainState` with ``step = 0``, the EMA (and each profile) equal to ``params`` and a fresh
      optimiser state. The EMA and each profile are copies in buffers of their own, so a step jitted
      with ``donate_argnums=0`` can donate the whole state (one buffer cannot be donated twice).
    """
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=copy_tree(params),
                      opt_state=optimizer.init(params),
                      ema_profiles=tuple(copy_tree(params) for _ in range(num_ema_profiles)),
                      teacher=None if teacher is None else copy_tree(teacher))
