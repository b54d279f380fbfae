"""Process-wide CPU settings that make jaxdiff's networks faster without changing any result.

Nothing here happens on ``import jaxdiff``: :func:`apply` is an explicit call. ``main.py`` makes it
(after :func:`reexec_with_tcmalloc`), and a library user may make it first thing in a script, before
the first JAX computation. ``JAXDIFF_CPU_TUNING=0`` turns every setting off. Settings 1 and 2 only
touch the CPU backend (GPU and TPU compilation is unchanged); 3 only changes where host memory comes
from. Measured gains are in ``bench/README.md``.

1. ``--xla_cpu_experimental_ynn_fusion_type=`` (an empty list) turns XLA's YNNPACK fusions off. With
   them on, XLA hands dots and elementwise chains of the U-Net to YNNPACK kernels that are slower here
   than XLA's own Eigen/fused-loop code for convolution networks. XLA aborts a process whose
   ``XLA_FLAGS`` names a flag it does not know, and this one is experimental, so it is only set for
   the jaxlib releases :data:`YNN_FLAG_JAXLIB` known to accept it. XLA reads its flags when the CPU
   backend is created, so :func:`apply` must run before the first JAX computation; a user who sets
   the flag themselves wins.

2. Threefry without a rolled loop. JAX lowers its threefry2x32 hash on CPU as a 5-iteration
   ``while`` loop (to keep compile times short), so every dropout mask streams two full-size uint32
   arrays through memory five times and cannot fuse. Registering the unrolled lowering JAX already
   uses on GPU/TPU makes each mask one fused elementwise loop (5-15x faster masks). The hash is the
   same function, so every random number is bit-for-bit identical (``tests/test_cpu_tuning.py``).
   The private JAX names this needs live in :mod:`jaxdiff.common.jax_internals`.

3. tcmalloc under the command line. XLA:CPU allocates a step's temporaries (hundreds of MiB for a
   U-Net training step) as one buffer per execution. glibc's malloc serves such a request from a
   fresh ``mmap`` when the executing thread is not the main thread and frees it with ``munmap``, so
   every step page-faults and zeroes the whole buffer again (185,000 faults and ~0.3 s of kernel time
   per MNIST step). tcmalloc keeps freed pages, so later steps reuse them. The allocator is chosen
   when a process starts, so :func:`reexec_with_tcmalloc` restarts ``main.py`` once with
   ``LD_PRELOAD`` naming Debian's ``libtcmalloc-minimal4`` (when it is installed and no other
   allocator is preloaded). In your own scripts start Python as
   ``LD_PRELOAD=libtcmalloc_minimal.so.4 python ...``. Memory placement changes no result.
"""

from __future__ import annotations

import ctypes.util
import importlib.metadata
import os
import sys

from jaxdiff.common import jax_internals

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# (major, minor) releases of jaxlib whose XLA accepts YNN_FLAG (tested: 0.10.2 and 0.12.0.1).
YNN_FLAG_JAXLIB = ((0, 10), (0, 12))


def installed_jaxlib_version() -> tuple[int, ...] | None:
    """The installed jaxlib's version as integers (``(0, 12, 0, 1)``), read from its package metadata
    without importing it; ``None`` if jaxlib is missing or its version does not parse."""
    try:
        text = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return None
    parts = []
    for piece in text.split("."):
        digits = "".join(c for c in piece if c.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts) or None


def accepts_ynn_flag(jaxlib_version: tuple[int, ...] | None) -> bool:
    """Whether that jaxlib release is one :data:`YNN_FLAG_JAXLIB` knows to accept :data:`YNN_FLAG`."""
    if not jaxlib_version or len(jaxlib_version) < 2:
        return False
    low, high = YNN_FLAG_JAXLIB
    return low <= tuple(jaxlib_version[:2]) <= high


def tuned_xla_flags(current: str) -> str:
    """``current`` XLA_FLAGS with YNN fusions turned off, unless the user already chose."""
    if YNN_FLAG in current:
        return current
    return f"{current} {YNN_FLAG}=".strip()


def apply(environ=os.environ, jaxlib_version: tuple[int, ...] | None = None) -> dict:
    """Apply settings 1 and 2 (see the module docstring) unless ``JAXDIFF_CPU_TUNING=0``; call it
    before the first JAX computation. ``jaxlib_version`` defaults to the installed one (``()``: unknown). Returns what
    was done: ``{"xla_flag": bool, "unrolled_threefry": bool}``."""
    done = {"xla_flag": False, "unrolled_threefry": False}
    if environ.get("JAXDIFF_CPU_TUNING", "1") == "0":
        return done
    version = installed_jaxlib_version() if jaxlib_version is None else jaxlib_version
    if accepts_ynn_flag(version):
        environ["XLA_FLAGS"] = tuned_xla_flags(environ.get("XLA_FLAGS", ""))
        done["xla_flag"] = True
    done["unrolled_threefry"] = jax_internals.register_unrolled_threefry_on_cpu()
    return done


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
