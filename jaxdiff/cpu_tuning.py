"""Process-wide CPU settings that make jaxdiff's networks faster without changing any result.

Settings 1 and 2 are applied once when ``jaxdiff`` is imported (see ``jaxdiff/__init__.py``);
setting 3 when ``main.py`` starts. Set the environment variable ``JAXDIFF_CPU_TUNING=0`` to leave
JAX and the process exactly as installed. Settings 1 and 2 only touch the CPU backend; GPU and TPU
compilation is unchanged; 3 only changes where host memory comes from. Measured gains are in
``bench/README.md``.

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

3. tcmalloc under the command line (``main.py``), not on import. XLA:CPU allocates a step's
   temporaries (hundreds of MiB for a U-Net training step) as one buffer per execution. glibc's
   malloc serves such a request from a fresh ``mmap`` when the executing thread is not the main
   thread and frees it with ``munmap``, so every step page-faults and zeroes the whole buffer again
   (185,000 faults and ~0.3 s of kernel time per MNIST step). tcmalloc keeps freed pages, so later
   steps reuse them. The allocator is chosen when a process starts, so :func:`reexec_with_tcmalloc`
   restarts ``main.py`` once with ``LD_PRELOAD`` naming Debian's ``libtcmalloc-minimal4`` (when it is
   installed and no other allocator is preloaded). In your own scripts start Python as
   ``LD_PRELOAD=libtcmalloc_minimal.so.4 python ...``. Memory placement changes no result.
"""

from __future__ import annotations

import ctypes.util
import os
import sys

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
    """Apply settings 1 and 2 unless ``JAXDIFF_CPU_TUNING=0``. Returns whether they were applied."""
    if environ.get("JAXDIFF_CPU_TUNING", "1") == "0":
        return False
    environ["XLA_FLAGS"] = tuned_xla_flags(environ.get("XLA_FLAGS", ""))
    use_unrolled_threefry_on_cpu()
    return True


def find_tcmalloc() -> str | None:
    """The loader name of an installed tcmalloc (``libtcmalloc_minimal.so.4`` from Debian's
    ``libtcmalloc-minimal4``, else the full ``libtcmalloc``), or None."""
    for name in ("tcmalloc_minimal", "tcmalloc"):
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def tcmalloc_preload(environ=os.environ, find=find_tcmalloc) -> str | None:
    """The ``LD_PRELOAD`` value that puts tcmalloc under a new process, or None when there is
    nothing to do: tuning is off, not Linux, an allocator is already preloaded (``LD_PRELOAD``
    names a ``*malloc*`` library, as after :func:`reexec_with_tcmalloc`), or none is installed."""
    if environ.get("JAXDIFF_CPU_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return None
    current = environ.get("LD_PRELOAD", "")
    if "malloc" in current:
        return None
    lib = find()
    return f"{lib} {current}".strip() if lib else None


def reexec_with_tcmalloc(environ=os.environ, execve=os.execve) -> bool:
    """Restart this Python process (same interpreter options and arguments) with tcmalloc
    preloaded, if :func:`tcmalloc_preload` says so; returns False when nothing was done (the
    restart itself does not return). Call it first thing in a command-line entry point."""
    value = tcmalloc_preload(environ)
    if value is None:
        return False
    sys.stdout.flush()
    sys.stderr.flush()
    execve(sys.executable, sys.orig_argv, dict(environ, LD_PRELOAD=value))
    return True
