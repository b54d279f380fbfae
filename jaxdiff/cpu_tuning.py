"""Process-wide XLA:CPU settings that make jaxdiff's networks faster without changing any result.

Applied once when ``jaxdiff`` is imported (see ``jaxdiff/__init__.py``); set the environment variable
``JAXDIFF_CPU_TUNING=0`` before the import to leave JAX exactly as installed. Both settings only
touch the CPU backend; GPU and TPU compilation is unchanged. Measured gains are in ``bench/README.md``.

1. ``--xla_cpu_experimental_ynn_fusion_type=`` (an empty list) turns XLA's YNNPACK fusions off. With
   them on, XLA hands dots and elementwise chains of the U-Net to YNNPACK kernels that are slower here
   than XLA's own Eigen/fused-loop code for convolution networks. XLA flags are read when the CPU
   backend is created, so this only takes effect if jaxdiff is imported before the first JAX
   computation; a user who sets ``--xla_cpu_experimental_ynn_fusion_type`` themselves wins.

2. Threefry without a rolled loop. JAX lowers its threefry2x32 hash on CPU as a 5-iteration
   ``while`` loop (to keep compile times short), so every dropout mask streams two full-size uint32
   arrays through memory five times and cannot fuse. Registering the unrolled lowering JAX already
   uses on GPU/TPU makes each mask one fused elementwise loop (5-15x faster masks). The hash is the
   same function, so every random number is bit-for-bit identical (``tests/test_cpu_tuning.py``).
"""

from __future__ import annotations

import os

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def tuned_xla_flags(current: str) -> str:
    """``current`` XLA_FLAGS with YNN fusions turned off, unless the user already chose."""
    if YNN_FLAG in current:
        return current
    return f"{current} {YNN_FLAG}=".strip()


def use_unrolled_threefry_on_cpu() -> bool:
    """Lower ``threefry2x32`` on CPU with the unrolled rule (same hash, fusible). Returns whether
    the rule could be registered (False if this JAX version lays its internals out differently)."""
    try:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32 as tf
        rule = tf._threefry2x32_lowering_rule  # the unrolled rule JAX registers for GPU/TPU
        mlir.register_lowering(tf.threefry2x32_p, rule, platform="cpu")
    except (ImportError, AttributeError):
        return False
    return True


def apply(environ=os.environ) -> bool:
    """Apply both settings unless ``JAXDIFF_CPU_TUNING=0``. Returns whether they were applied."""
    if environ.get("JAXDIFF_CPU_TUNING", "1") == "0":
        return False
    environ["XLA_FLAGS"] = tuned_xla_flags(environ.get("XLA_FLAGS", ""))
    use_unrolled_threefry_on_cpu()
    return True
