"""Device mesh and shardings for global-view data parallelism.

One ``jax.jit`` program sees the *global* batch; the batch is sharded over the mesh axis ``data``
(``P('data')``) and parameters/optimizer state are replicated (``P()``). XLA inserts the gradient
all-reduce. The same code runs on one CPU, several GPUs or a multi-host TPU slice.
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D mesh ``('data',)`` over the first ``num_devices`` devices (0 = all of them)."""
    devices = jax.devices()
    n = num_devices or len(devices)
    if n > len(devices):
        raise ValueError(f"parallel.num_devices={n} but only {len(devices)} devices are visible")
    return jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices[:n])


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis is split over the ``data`` mesh axis."""
    return NamedSharding(mesh, P("data"))


def check_batch_divides(batch_size: int, mesh: Mesh, field: str = "training.batch_size") -> None:
    """Raise ``ValueError`` unless ``batch_size`` splits evenly over the mesh's devices."""
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(f"{field}={batch_size} does not divide over {n} devices; "
                         f"use a multiple of {n}")


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Assemble this process's slice of a global batch into sharded global ``jax.Array`` s."""
    sharding = batch_sharded(mesh)
    if jax.process_count() == 1:
        return jax.device_put(local_batch, sharding)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
