"""jaxdiff.cpu_tuning: the unrolled threefry lowering is the same hash (bit for bit), the XLA flag
logic respects the user, and a tuned process computes what an untuned one does."""

import os
import subprocess
import sys

import jax
import jax.extend.random
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st

import jaxdiff  # noqa: F401 (applies the tuning, as every jaxdiff user gets it)
from jaxdiff import cpu_tuning

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
    assert not cpu_tuning.apply(env) and env["XLA_FLAGS"] == "--a"
    env = {}
    assert cpu_tuning.apply(env) and "ynn_fusion_type=" in env["XLA_FLAGS"]


_DROPOUT_FORWARD = """
import sys, numpy as np, jax, jax.numpy as jnp
sys.path.insert(0, {root!r})
from jaxdiff.unet import UNet
m = UNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.3, out_ch=1)
x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1)); t = jnp.array([0, 3, 9, 20])
p = m.init({{"params": jax.random.key(1)}}, x, t)["params"]
p = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(2), a.shape), p)
f = jax.jit(lambda p, x, t: m.apply({{"params": p}}, x, t, train=True, rngs={{"dropout": jax.random.key(3)}}))
np.save(sys.argv[1], np.asarray(f(p, x, t)))
"""


_RESTART_AS_MAIN = """
import jaxdiff
from jaxdiff import cpu_tuning
cpu_tuning.reexec_with_tcmalloc()
with open("/proc/self/maps") as f:
    open(sys.argv[1] + ".maps", "w").write(f.read())
"""


def test_tuned_process_matches_untuned(tmp_path):
    """A train-mode forward (dropout on) in a process tuned as ``main.py`` tunes itself (XLA flags,
    unrolled threefry, restarted under tcmalloc) and in an untuned one: same masks, same output."""
    outs = []
    for tuning in ("1", "0"):
        path = str(tmp_path / f"out{tuning}.npy")
        env = dict(os.environ, JAXDIFF_CPU_TUNING=tuning)
        env.pop("XLA_FLAGS", None)
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
