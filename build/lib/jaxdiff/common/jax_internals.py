"""Every private JAX name jaxdiff touches, each behind one function with a public fallback.

JAX reorganises ``jax._src`` between releases, so nothing else in jaxdiff imports it. When a name
below is missing, the function falls back to JAX's public behaviour and says so in its return value;
the tests check both paths (``tests/test_jax_internals.py``).

* :func:`register_unrolled_threefry_on_cpu` — ``jax._src.random.threefry2x32`` (the primitive and its
  unrolled lowering rule) and ``jax._src.interpreters.mlir.register_lowering``. Fallback: JAX's own
  CPU lowering, the same hash as a rolled loop (identical random numbers, slower dropout masks).
* :func:`preemption_sync_manager` — ``jax._src.distributed.global_state.preemption_sync_manager``.
  Fallback: ``None``, and :class:`jaxdiff.common.preemption.PreemptionGuard` agrees on a stop step by
  exchanging flags with the public ``multihost_utils.process_allgather``.
* :func:`cpu_lowering_rules` — ``jax._src.interpreters.mlir._platform_specific_lowerings``, read only,
  so tests can check that importing jaxdiff registers nothing. Fallback: ``None``.
"""

from __future__ import annotations

import importlib

THREEFRY_MODULE = "jax._src.random.threefry2x32"
MLIR_MODULE = "jax._src.interpreters.mlir"
DISTRIBUTED_MODULE = "jax._src.distributed"


def _private(module_name: str, *attributes: str):
    """``module.attr1.attr2...`` of a private JAX module, or ``None`` if this JAX lays it out otherwise."""
    try:
        obj = importlib.import_module(module_name)
        for name in attributes:
            obj = getattr(obj, name)
    except (ImportError, AttributeError):
        return None
    return obj


def register_unrolled_threefry_on_cpu() -> bool:
    """Lower ``threefry2x32`` on CPU with the unrolled rule JAX registers for GPU/TPU (the same hash,
    so every random number is bit-identical, but fusible into one elementwise loop). Returns whether
    it was registered; ``False`` (nothing changed) when this JAX has no such names."""
    primitive = _private(THREEFRY_MODULE, "threefry2x32_p")
    rule = _private(THREEFRY_MODULE, "_threefry2x32_lowering_rule")
    register = _private(MLIR_MODULE, "register_lowering")
    if primitive is None or rule is None or register is None:
        return False
    register(primitive, rule, platform="cpu")
    return True


def cpu_lowering_rules() -> dict | None:
    """A snapshot ``{primitive name: rule}`` of the CPU-specific lowering rules JAX holds, or ``None``."""
    table = _private(MLIR_MODULE, "_platform_specific_lowerings")
    if table is None:
        return None
    return {str(p): entry for p, entry in dict(table.get("cpu", {})).items()}


def preemption_sync_manager():
    """JAX's preemption sync manager of a ``jax.distributed`` job (``None`` when there is none, or when
    this JAX keeps it elsewhere: the caller then uses the public allgather fallback)."""
    state = _private(DISTRIBUTED_MODULE, "global_state")
    return getattr(state, "preemption_sync_manager", None) if state is not None else None
