"""jaxdiff.common.jax_internals: each private JAX name works on the installed JAX, and each has a
fallback to the public path when a JAX release lays its internals out otherwise."""

import signal

import jax
import jax.extend.random
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.common import jax_internals, preemption

pytestmark = pytest.mark.compat  # what differs between JAX versions: run on the oldest pinned stack too


def test_private_names_exist_on_the_installed_jax():
    assert jax_internals.register_unrolled_threefry_on_cpu()
    rules = jax_internals.cpu_lowering_rules()
    assert rules is not None and "threefry2x32" in rules
    assert jax_internals.preemption_sync_manager() is None  # no jax.distributed job in this process


def test_threefry_fallback_changes_nothing(monkeypatch):
    monkeypatch.setattr(jax_internals, "THREEFRY_MODULE", "jax._src.no_such_module")
    assert jax_internals.register_unrolled_threefry_on_cpu() is False
    key = jnp.array([0x13198A2E, 0x03707344], jnp.uint32)
    got = jax.jit(jax.extend.random.threefry_2x32)(key, jnp.array([0x243F6A88, 0x85A308D3], jnp.uint32))
    assert [int(v) for v in got] == [0xC4923A9C, 0x483DF7A0]  # Random123's known answer, public path


def test_lowering_table_fallback(monkeypatch):
    monkeypatch.setattr(jax_internals, "MLIR_MODULE", "jax._src.interpreters.no_such_module")
    assert jax_internals.cpu_lowering_rules() is None
    assert jax_internals.register_unrolled_threefry_on_cpu() is False


def test_preemption_falls_back_to_the_public_allgather(monkeypatch):
    """Without the sync manager, a multi-process guard agrees on a stop step through
    ``multihost_utils.process_allgather`` (faked here as two processes, one of them signalled)."""
    monkeypatch.setattr(jax_internals, "DISTRIBUTED_MODULE", "jax._src.no_such_module")
    assert jax_internals.preemption_sync_manager() is None
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    gathered = []
    monkeypatch.setattr(preemption.multihost_utils, "process_allgather",
                        lambda x: gathered.append(int(x)) or np.array([int(x), int(signal.SIGTERM)]))
    with preemption.PreemptionGuard(signals=(), agree_every=5) as guard:
        assert not guard._service
        assert not guard.should_stop(3) and not gathered  # only every agree_every steps
        assert guard.should_stop(5) and gathered == [0] and guard.signum == signal.SIGTERM
