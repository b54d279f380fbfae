"""One process of a 2-process ``jax.distributed`` job on localhost (CPU devices, gloo collectives),
run by tests/test_parallel.py. Each process has 2 CPU devices, so the mesh spans 4 devices in 2 processes.

Usage: ``python tests/multihost_worker.py PROCESS_ID PORT WORKDIR OUT_NPZ NUM_STEPS``

Trains ``scale_config`` in the shared WORKDIR through :func:`jaxdiff.drivers.train_loop.train` (each process reads
only its rows of every global batch), then writes this process's copy of the final parameters, the
final step and 6 samples from the final EMA parameters (sampled over both processes) to OUT_NPZ.
A SIGTERM to either process stops both at the same step, after a checkpoint.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
    process_id, port, workdir, out, steps = sys.argv[1:6]
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    import jax
    import numpy as np

    from jaxdiff.common import parallel
    from jaxdiff.drivers import sample_mode, train_loop
    from jaxdiff.drivers.experiment import Experiment
    from jaxdiff.training import keys
    from tests.scale_common import scale_config

    assert parallel.initialize_distributed(True, f"127.0.0.1:{port}", 2, int(process_id))
    assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
    config = scale_config(**{"training.num_train_steps": int(steps), "training.log_every": 1,
                             "parallel.num_devices": 0})
    preempted_at = -1
    try:
        state = train_loop.train(config, workdir, progress=False)
    except train_loop.Preempted as e:
        preempted_at, state = e.step, e.state
    # Sampling across both processes: every process gets all samples.
    samples = sample_mode.sample_images(Experiment(config, 1, 10), state.ema_params,
                              keys.stream_key(0, keys.SAMPLE_STREAM, 1), 6).samples
    leaves = jax.tree.leaves(state.params)
    np.savez(out, step=int(state.step), preempted_at=preempted_at, samples=samples,
             **{f"p{i}": np.asarray(x.addressable_shards[0].data) for i, x in enumerate(leaves)})
    print(f"process {process_id}: step {int(state.step)} preempted_at {preempted_at}", flush=True)


if __name__ == "__main__":
    main()
