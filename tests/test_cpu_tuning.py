"""jaxdiff.common.cpu_tuning: the unrolled threefry lowering is the same hash (bit for bit), the XLA
flag logic respects the user and the jaxlib version, a tuned process computes what an untuned one
does, and importing jaxdiff tunes nothing."""

import json
import os
import subprocess
import sys

import jax
import jax.extend.random
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxdiff.common import cpu_tuning

pytestmark = pytest.mark.compat  # what differs between JAX versions: run on the oldest pinned stack too

cpu_tuning.apply()  # as main.py does; the lowering test below needs it (XLA flags are read too late here)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def threefry2x32_reference(key, x0, x1):
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011), written independently in NumPy uint32."""
    rot = [(13, 15, 26, 6), (17, 29, 16, 24)]
    k = [np.uint32(key[0]), np.uint32(key[1])]
    ks = [k[0], k[1], k[0] ^ k[1] ^ np.uint32(0x1BD11BDA)]
    x = [np.asarray(x0, np.uint32) + ks[0], np.asarray(x1, np.uint32) + ks[1]]
    for block in range(5):
        for r in rot[block % 2]:
            x[0] = x[0] + x[1]
            x[1] = (x[1] << np.uint32(r)) | (x[1] >> np.uint32(32 - r))
            x[1] = x[0] ^ x[1]
        x[0] = x[0] + ks[(block + 1) % 3]
        x[1] = x[1] + ks[(block + 2) % 3] + np.uint32(block + 1)
    return x


def test_known_answer_vector():
    # Random123's known-answer test for threefry2x32_20.
    out = threefry2x32_reference((0x13198A2E, 0x03707344), [0x243F6A88], [0x85A308D3])
    assert (int(out[0][0]), int(out[1][0])) == (0xC4923A9C, 0x483DF7A0)
    got = jax.jit(jax.extend.random.threefry_2x32)(jnp.array([0x13198A2E, 0x03707344], jnp.uint32),
                                            jnp.array([0x243F6A88, 0x85A308D3], jnp.uint32))
    assert [int(v) for v in got] == [0xC4923A9C, 0x483DF7A0]


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_cpu_threefry_matches_reference(k0, k1, start):
    counts = (np.arange(64, dtype=np.uint64) + start).astype(np.uint32)
    want = threefry2x32_reference((k0, k1), counts[:32], counts[32:])
    got = _threefry(jnp.array([k0, k1], jnp.uint32), jnp.asarray(counts))
    np.testing.assert_array_equal(np.asarray(got), np.concatenate(want))


_threefry = jax.jit(jax.extend.random.threefry_2x32)


def test_lowering_is_unrolled_and_equals_rolled_loop():
    from jax._src.random import threefry2x32 as tf

    key = jnp.array([7, 11], jnp.uint32)
    counts = jnp.arange(4096, dtype=jnp.uint32)
    hlo = _threefry.lower(key, counts).compile().as_text()
    assert " while(" not in hlo  # the rolled loop is gone on CPU
    rolled = jax.jit(lambda a, b, c, d: tf._threefry2x32_lowering(a, b, c, d, use_rolled_loops=True))
    want = rolled(key[0], key[1], counts[:2048], counts[2048:])
    np.testing.assert_array_equal(np.asarray(_threefry(key, counts)), np.concatenate(want))


def test_xla_flags_respect_the_user():
    assert cpu_tuning.tuned_xla_flags("") == "--xla_cpu_experimental_ynn_fusion_type="
    assert cpu_tuning.tuned_xla_flags("--xla_dump_to=/x") == \
        "--xla_dump_to=/x --xla_cpu_experimental_ynn_fusion_type="
    mine = "--xla_cpu_experimental_ynn_fusion_type=dot"
    assert cpu_tuning.tuned_xla_flags(mine) == mine
    env = {"JAXDIFF_CPU_TUNING": "0", "XLA_FLAGS": "--a"}
    assert cpu_tuning.apply(env) == {"xla_flag": False, "unrolled_threefry": False} and env["XLA_FLAGS"] == "--a"
    env = {}
    assert cpu_tuning.apply(env, jaxlib_version=(0, 10, 2))["xla_flag"] and "ynn_fusion_type=" in env["XLA_FLAGS"]


def test_experimental_flag_only_for_jaxlib_releases_known_to_accept_it():
    for version, known in (((0, 10, 2), True), ((0, 12, 0, 1), True), ((0, 9, 9), False), ((0, 13, 0), False),
                           ((1, 0), False), ((), False)):
        env = {}
        assert cpu_tuning.apply(env, jaxlib_version=version)["xla_flag"] is known, version
        assert ("XLA_FLAGS" in env) is known
    assert cpu_tuning.accepts_ynn_flag(cpu_tuning.installed_jaxlib_version())  # the tested pins are in the range
    assert cpu_tuning.installed_jaxlib_version()[:2] == tuple(int(v) for v in jax.__version__.split(".")[:2])


_IMPORT_CHANGES_NOTHING = """
import json, os
before_env = dict(os.environ)
# jaxdiff's dependencies first: some register lowerings of their own (checkify's 'check').
import flax.linen, optax, orbax.checkpoint, jax.experimental.multihost_utils, matplotlib, tqdm
from jaxdiff.common import jax_internals  # reads the table; registers nothing
before_rules = {k: id(r) for k, r in jax_internals.cpu_lowering_rules().items()}
import jaxdiff, jaxdiff.drivers.train_loop, jaxdiff.drivers.eval_mode
after_rules = {k: id(r) for k, r in jax_internals.cpu_lowering_rules().items()}
print(json.dumps({"env": dict(os.environ) == before_env, "rules": before_rules == after_rules,
                  "threefry": before_rules["threefry2x32"] == after_rules["threefry2x32"]}))
"""


def test_importing_jaxdiff_changes_no_environment_and_no_lowering():
    """A user's own JAX code runs as if jaxdiff were not imported: XLA_FLAGS and JAX's lowering
    registry are left alone (tuning is the explicit ``cpu_tuning.apply()``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXDIFF_CPU_TUNING")}
    out = subprocess.run([sys.executable, "-c", _IMPORT_CHANGES_NOTHING], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {"env": True, "rules": True, "threefry": True}, result


_DROPOUT_FORWARD = """
import sys, numpy as np, jax, jax.numpy as jnp
sys.path.insert(0, {root!r})
from jaxdiff.models.unet import UNet
m = UNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.3, out_ch=1)
x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1)); t = jnp.array([0, 3, 9, 20])
p = m.init({{"params": jax.random.key(1)}}, x, t)["params"]
p = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(2), a.shape), p)
f = jax.jit(lambda p, x, t: m.apply({{"params": p}}, x, t, train=True, rngs={{"dropout": jax.random.key(3)}}))
np.save(sys.argv[1], np.asarray(f(p, x, t)))
"""


_RESTART_AS_MAIN = """
from jaxdiff.common import cpu_tuning
cpu_tuning.reexec_with_tcmalloc()
cpu_tuning.apply()
with open("/proc/self/maps") as f:
    open(sys.argv[1] + ".maps", "w").write(f.read())
"""


def test_tuned_process_matches_untuned(tmp_path):
    """A train-mode forward (dropout on) in a process tuned as ``main.py`` tunes itself (XLA flags,
    unrolled threefry, restarted under tcmalloc) and in an untuned one: same masks, same output."""
    outs = []
    for tuning in ("1", "0"):
        path = str(tmp_path / f"out{tuning}.npy")
        # Only the suite's own flag (no LLVM optimisation: it would cost both compiles ~30 s and is
        # not what is compared); the tuned process adds its flag to it, as main.py adds to a user's.
        env = dict(os.environ, JAXDIFF_CPU_TUNING=tuning, XLA_FLAGS="--xla_backend_optimization_level=0")
        env.pop("LD_PRELOAD", None)
        code = "import sys\n" + (_RESTART_AS_MAIN if tuning == "1" else "") + _DROPOUT_FORWARD.format(root=ROOT)
        subprocess.run([sys.executable, "-c", code, path], check=True, env=env, cwd=ROOT)
        outs.append(np.load(path))
    with open(str(tmp_path / "out1.npy.maps")) as f:
        assert "libtcmalloc" in f.read(), "tcmalloc is not loaded: apt-get install libtcmalloc-minimal4"
    assert np.abs(outs[0]).max() > 0
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)


def test_tcmalloc_preload_respects_the_user():
    find = lambda: "libtcmalloc_minimal.so.4"  # noqa: E731
    assert cpu_tuning.tcmalloc_preload({}, find) == "libtcmalloc_minimal.so.4"
    assert cpu_tuning.tcmalloc_preload({"LD_PRELOAD": "libfoo.so"}, find) == "libtcmalloc_minimal.so.4 libfoo.so"
    assert cpu_tuning.tcmalloc_preload({"LD_PRELOAD": "/x/libjemalloc.so.2"}, find) is None  # the user chose
    assert cpu_tuning.tcmalloc_preload({"LD_PRELOAD": "libtcmalloc_minimal.so.4"}, find) is None  # restarted
    assert cpu_tuning.tcmalloc_preload({"JAXDIFF_CPU_TUNING": "0"}, find) is None
    assert cpu_tuning.tcmalloc_preload({}, lambda: None) is None  # not installed: run as is


def test_reexec_restarts_the_same_command_once():
    calls = []
    execve = lambda path, argv, env: calls.append((path, argv, env))  # noqa: E731
    env = {"PATH": "/bin"}
    if cpu_tuning.find_tcmalloc() is None:
        assert not cpu_tuning.reexec_with_tcmalloc(env, execve) and not calls
        return
    assert cpu_tuning.reexec_with_tcmalloc(env, execve)
    (path, argv, new_env), = calls
    assert path == sys.executable and argv == sys.orig_argv and new_env["PATH"] == "/bin"
    assert not cpu_tuning.reexec_with_tcmalloc(new_env, execve) and len(calls) == 1
