"""Shared fixtures. A persistent XLA compilation cache (per test session) lets tests that build the
same tiny programs, in-process or in subprocesses, compile them once."""

import os
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_CACHE = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jaxdiff-xla-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The test programs are tiny: LLVM's optimisation passes dominate their compile time (about 5x for the
# parameter init, 2x for a train step) and buy nothing at this size. Subprocesses inherit the flag.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

# In-process tests run with the CPU tuning main.py applies (before any JAX computation), so they
# compute what the main.py subprocesses of the end-to-end tests compute, bit for bit.
from jaxdiff.common import cpu_tuning  # noqa: E402

cpu_tuning.apply()


def tiny_config(**overrides):
    """The digits config shrunk to a model that compiles and trains in seconds."""
    from configs import digits

    config = digits.get_config()
    config.model.ch = 8
    config.model.ch_mult = (1, 2)
    config.model.num_res_blocks = 1
    config.model.attn_resolutions = (4,)
    config.diffusion.num_timesteps = 50
    config.training.batch_size = 16
    config.training.num_train_steps = 20
    config.training.warmup_steps = 5
    config.training.log_every = 5
    config.training.checkpoint_every = 10
    config.training.sample_every = 0
    config.sampling.num_samples = 8
    config.sampling.trajectory_every = 10
    config.parallel.num_devices = 1
    return set_fields(config, overrides)


def set_fields(config, values: dict):
    """``config`` with the dotted fields of ``values`` set (``{"diffusion.family": "edm"}``)."""
    for key, value in values.items():
        node = config
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    return config


@pytest.fixture
def tiny():
    return tiny_config


def run_main(*args, timeout=600):
    """Run ``python main.py ARGS`` in the repository root; returns the CompletedProcess."""
    import subprocess

    return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
