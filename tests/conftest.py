"""Shared fixtures and the suite's scheduling.

A persistent XLA compilation cache in the user's cache folder (``$XDG_CACHE_HOME/jaxdiff/xla-tests``,
outside the checkout; ``JAX_COMPILATION_CACHE_DIR`` overrides it) lets tests that build the same tiny
programs, in-process, in the other xdist worker or in subprocesses, compile them once, and a later run
on the same machine reuse them (JAX keys each entry by the program, the flags and the JAX version).
Tests that use a module- or session-scoped fixture are kept on one xdist worker (``--dist loadgroup``),
so the fixture is built once, and the long tests are scheduled first, so the two workers end together.
"""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jaxdiff", "xla-tests"))
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

from jaxdiff.drivers import train_loop  # noqa: E402  (after the CPU tuning)


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


# main.py flags of a tiny digits run (6 steps, checkpoints at 3 and 6, 20 samples): the command-line tests.
TINY = ["--config=configs/digits.py", "--config.model.ch=8", "--config.model.num_res_blocks=1",
        "--config.diffusion.num_timesteps=20", "--config.training.batch_size=16",
        "--config.training.num_train_steps=6", "--config.training.log_every=3",
        "--config.training.checkpoint_every=3", "--config.training.sample_every=0",
        "--config.sampling.num_samples=20", "--config.sampling.batch_size=10",
        "--config.sampling.trajectory_every=5", "--config.parallel.num_devices=1"]


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory):
    """``(workdir, CompletedProcess)`` of one ``main.py`` run with :data:`TINY`, trained once per pytest
    process and shared. A test that writes into the work directory works on a copy of it
    (``shutil.copytree(workdir, tmp_path / "run")``, which returns the copy's path)."""
    workdir = tmp_path_factory.mktemp("trained_tiny") / "run"
    r = run_main(*TINY, f"--workdir={workdir}")
    assert r.returncode == 0, r.stderr[-3000:]
    return workdir, r


class RunsCode:
    """Unpickles, under plain ``pickle.load``, to ``os.system("touch <marker>")``: what a reader must
    refuse without running (the marker file must not appear)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# --mode=eval and --mode=edit in seconds: the sampling config's sampler for grids and eval, FID and KID of 12
# samples in an 8-feature classifier's space (its classifier_dir: the classifier_dir fixture), bits/dim of 4
# test images, one sample per class for the conditional accuracy, SDEdit of 2 images.
FAST_MODES = {
    "sampling.grid_sampler": "same", "eval.sampler": "same", "eval.feature_extractor": "classifier",
    "eval.classifier_ch": 4, "eval.classifier_features": 8, "eval.classifier_steps": 5, "eval.num_samples": 12,
    "eval.batch_size": 4, "eval.kid_subsets": 2, "eval.kid_subset_size": 6, "eval.bpd_num_images": 4,
    "eval.bpd_batch_size": 4, "eval.samples_per_class": 1, "eval.guidance_scales": (1.0,),
    "edit.task": "sdedit", "edit.num_images": 2, "edit.strength": 0.5,
}


@pytest.fixture
def classifier_dir(tmp_path):
    """The cache folder of :data:`FAST_MODES`' eval classifier (5 steps: trained by the test's first eval;
    a fixture per test keeps the tests that use it free to run on either xdist worker)."""
    return tmp_path / "classifier"


# A tiny KL autoencoder of digits (f = 2: 8x8x1 -> 4x4x4), for latent diffusion.
AE = {"autoencoder.block_out_channels": (16, 32), "autoencoder.norm_num_groups": 8,
      "autoencoder.learning_rate": 2e-3, "training.warmup_steps": 0}


def ae_config(**overrides):
    return tiny_config(**{**AE, **overrides})


@pytest.fixture(scope="session")
def digits_autoencoder(tmp_path_factory):
    """The work directory of :data:`AE` trained for 40 steps with ``--mode=train_autoencoder`` (shared:
    a test that writes into it works on a copy)."""
    workdir = tmp_path_factory.mktemp("ae") / "run"
    train_loop.train_autoencoder(ae_config(**{"autoencoder.num_train_steps": 40, "training.checkpoint_every": 40,
                                              "training.log_every": 10}), str(workdir), progress=False)
    return workdir


# Scheduled first (longest first), so that neither xdist worker is left with a long test at the end.
LONG_FIRST = ("test_parallel.py", "test_reliability.py", "test_wheel.py", "test_train.py", "test_latent.py",
              "test_cpu_tuning.py", "test_evaluate.py", "test_monitoring.py", "test_cli.py", "test_interop.py",
              "test_edit_mode.py", "test_posthoc_ema.py", "test_sampler_space.py", "test_modes.py")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group markers
def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        # the project's own (baseid) module- and session-scoped fixtures this test uses, directly or not
        defs = [item._fixtureinfo.name2fixturedefs[name][-1] for name in item.fixturenames
                if name in item._fixtureinfo.name2fixturedefs]
        shared = [d for d in defs if d.scope in ("module", "session") and d.baseid]
        if shared:  # one worker builds the fixture: a session one for all its users, a module one for its module
            fixture = shared[0]
            item.add_marker(pytest.mark.xdist_group(fixture.argname if fixture.scope == "session" else item.path.name))


if os.environ.get("JAXDIFF_TEST_PROFILE"):  # where the time goes: tests/profile_plugin.py
    from tests import profile_plugin

    profile_plugin.install()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        with profile_plugin.record(item.nodeid):
            yield
