"""Device mesh, shardings, multi-host start-up and host transfers for global-view parallelism.

One ``jax.jit`` program sees the *global* batch; the batch is sharded over the mesh axis ``data``
(``P('data')``) and the train state is replicated (``P()``) or, with ``parallel.shard_params``,
FSDP-style sharded over the same axis. XLA inserts the gradient all-reduce (or the all-gathers and
reduce-scatters of the sharded state). The same code runs on one CPU, several GPUs or a multi-host
TPU slice; with several processes each one feeds only its own rows of the global batch.

Randomness and devices. Every random array of a step (timesteps, noise, flips, label drops) is
drawn for the *global* batch inside the jitted step from one per-step key,
``fold_in(fold_in(key(seed), stream), step)``. With ``jax_threefry_partitionable`` (on by default
in JAX >= 0.5, and asserted by :func:`check_partitionable_rng`) the value of element ``i`` of a
draw is a function of the key and the *global* index ``i`` only, so each device generates just
its own rows, the rows differ from device to device, and they equal the rows of the same draw on
one device. This is the global-view form of "fold the device index into the key": the counter
of row ``i`` plays the role of the device index, so devices never share noise (the bug of
replicating one key to per-device code, where every device draws the *same* local noise), and a
run on 8 devices computes what a run on 1 device computes with the same global batch.
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def check_partitionable_rng() -> None:
    """Raise unless ``jax_threefry_partitionable`` is on (see the module docstring for why)."""
    if not jax.config.jax_threefry_partitionable:
        raise RuntimeError("jaxdiff needs jax_threefry_partitionable=True so that sharded random draws "
                           "differ per device and match the single-device draw; do not turn it off")


def initialize_distributed(enabled: bool = False, coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None) -> bool:
    """Join a multi-process JAX job (``jax.distributed.initialize``); must run before JAX is used.

    Each argument falls back to the environment (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
    ``JAX_PROCESS_ID``); what is still unset is auto-detected by JAX on TPU pods, SLURM, Open MPI
    and Kubernetes. Nothing happens unless ``enabled`` or a coordinator address is given. CPU
    processes talk through gloo collectives. Returns whether the job is now distributed.
    """
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    if not (enabled or coordinator_address):
        return False
    env_int = lambda name: int(os.environ[name]) if os.environ.get(name) else None  # noqa: E731
    num_processes = num_processes if num_processes is not None else env_int("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else env_int("JAX_PROCESS_ID")
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id={process_id} must be in [0, num_processes={num_processes})")
    if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    return True


def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D mesh ``('data',)`` over the first ``num_devices`` devices (0 = all of them)."""
    devices = jax.devices()
    n = num_devices or len(devices)
    if n > len(devices):
        raise ValueError(f"parallel.num_devices={n} but only {len(devices)} devices are visible")
    if jax.process_count() > 1 and n != len(devices):
        raise ValueError(f"parallel.num_devices={n}: a multi-process job must use all {len(devices)} "
                         "devices (set parallel.num_devices=0)")
    return jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices[:n])


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis is split over the ``data`` mesh axis."""
    return NamedSharding(mesh, P("data"))


def check_batch_divides(batch_size: int, mesh: Mesh, field: str = "training.batch_size",
                        accum_steps: int = 1) -> None:
    """Raise ``ValueError`` unless ``batch_size`` splits into ``accum_steps`` micro-batches that
    each split evenly over the mesh's devices."""
    n = mesh.devices.size
    if accum_steps > 1 and batch_size % (n * accum_steps):
        raise ValueError(f"{field}={batch_size} does not split into training.grad_accum_steps="
                         f"{accum_steps} micro-batches over {n} devices; use a multiple of {n * accum_steps}")
    if batch_size % n:
        raise ValueError(f"{field}={batch_size} does not divide over {n} devices; "
                         f"use a multiple of {n}")


def _fsdp_spec(shape: tuple, n: int, min_size: int) -> P:
    """``P`` sharding the largest axis divisible by ``n`` over ``data`` (replicated when small)."""
    if n == 1 or math.prod(shape) < min_size:
        return P()
    candidates = [(size, axis) for axis, size in enumerate(shape) if size % n == 0]
    if not candidates:
        return P()
    _, axis = max(candidates, key=lambda c: (c[0], c[1]))  # the largest; the last among equals
    return P(*([None] * axis + ["data"]))


def state_shardings(abstract_tree, mesh: Mesh, shard_params: bool = False, min_size: int = 2 ** 14):
    """Shardings for a pytree of arrays (params, EMA, optimizer state, step).

    Replicated by default. With ``shard_params`` (FSDP / ZeRO-3 style) every leaf with at least
    ``min_size`` elements has its largest axis that divides the device count sharded over ``data``;
    as the rule depends only on the shape, Adam's moments are sharded exactly like their parameters.
    """
    n = mesh.devices.size
    if not shard_params:
        return jax.tree.map(lambda _: replicated(mesh), abstract_tree)
    return jax.tree.map(lambda x: NamedSharding(mesh, _fsdp_spec(tuple(x.shape), n, min_size)),
                        abstract_tree)


def process_batch_rows(mesh: Mesh, batch_size: int) -> tuple[int, int]:
    """``(slot, count)``: this process holds rows ``[slot * B / count, (slot + 1) * B / count)`` of a
    ``P('data')``-sharded global batch of ``B`` rows (its devices' shards, which must be contiguous).

    Pass them as ``process_index, process_count`` to :func:`jaxdiff.data.batch_stream`.
    """
    count = jax.process_count()
    if count == 1:
        return 0, 1
    index_map = batch_sharded(mesh).devices_indices_map((batch_size,))
    rows = sorted({(s[0].start or 0, s[0].stop if s[0].stop is not None else batch_size)
                   for d, s in index_map.items() if d.process_index == jax.process_index()})
    lo, hi = rows[0][0], rows[-1][1]
    local = batch_size // count
    if hi - lo != local or lo % local or any(a[1] != b[0] for a, b in zip(rows, rows[1:])):
        raise ValueError(f"this process's devices hold rows {rows} of the global batch, not one contiguous "
                         f"block of {local}; build the mesh with each process's devices adjacent")
    return lo // local, count


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Assemble this process's rows of a global batch into ``P('data')``-sharded global ``jax.Array`` s."""
    sharding = batch_sharded(mesh)
    if jax.process_count() == 1:
        return jax.device_put(local_batch, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def put_global(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array with ``sharding`` from a host array that every process holds in full."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def to_host(x) -> np.ndarray:
    """A global array as one NumPy array on every process (all-gathers across hosts if needed)."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
