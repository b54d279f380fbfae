"""Run by tests/test_parallel.py in a subprocess with 8 simulated CPU devices (XLA_FLAGS must be set
before JAX starts, so this cannot run inside the pytest process). Prints one JSON line of results
that the test asserts on.

Usage: ``python tests/parallel_worker.py`` (with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``).
"""

import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxdiff import data  # noqa: E402
from jaxdiff.common import parallel  # noqa: E402
from jaxdiff.core import diffusion  # noqa: E402
from jaxdiff.drivers import data_config, edit_mode, sample_mode, trained_model  # noqa: E402
from jaxdiff.drivers.autoencoder_experiment import AutoencoderExperiment  # noqa: E402
from jaxdiff.drivers.experiment import Experiment  # noqa: E402
from jaxdiff.training import checkpoint, keys  # noqa: E402
from tests.scale_common import scale_config  # noqa: E402

STEPS = 3


def run(config, state0=None, steps=STEPS):
    """Train ``steps`` steps from ``state0`` (host arrays; default: the trainer's own init, which is
    the same state) placed on the trainer's shardings; returns (trainer, losses, grad norms, state)."""
    trainer = Experiment(config, channels=1, num_classes=10)
    source = data_config.load_source(config.data)
    stream = data.batch_stream(source, config.seed, 0, config.training.batch_size)
    state = trainer.init() if state0 is None else jax.device_put(state0, trainer.state_sharding)
    losses, norms = [], []
    for _ in range(steps):
        state, metrics = trainer.step(state, parallel.global_batch(next(stream), trainer.mesh))
        losses.append(float(metrics["loss"]))
        norms.append(float(metrics["grad_norm"]))
    return trainer, losses, norms, state


def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main():
    results = {"device_count": jax.device_count()}
    trainer1 = Experiment(scale_config(**{"parallel.num_devices": 1}), channels=1, num_classes=10)
    state0 = jax.device_get(trainer1.init())
    _, loss1, norm1, state1 = run(trainer1.config, state0)
    results["loss_1"], results["grad_norm_1"] = loss1, norm1

    trainer8, loss8, norm8, state8 = run(scale_config(**{"parallel.num_devices": 8}), state0)
    results["loss_8"], results["grad_norm_8"] = loss8, norm8
    results["param_diff_8"] = max_diff(state1.params, state8.params)
    results["ema_diff_8"] = max_diff(state1.ema_params, state8.ema_params)
    leaf = jax.tree.leaves(state8.params)[0]
    results["replicated_8"] = leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 8

    # Every option at once against plain 1-device training: FSDP-sharded state, 2 accumulated
    # micro-batches (8 rows each, 1 per device) scanned inside the step, rematerialised res blocks.
    fsdp = {"parallel.num_devices": 8, "parallel.shard_params": True, "parallel.shard_min_size": 64,
            "training.grad_accum_steps": 2, "model.remat": True}
    trainer_f = Experiment(scale_config(**fsdp), channels=1, num_classes=10)
    hlo = trainer_f.step.lower(jax.device_put(state0, trainer_f.state_sharding), parallel.global_batch(
        next(data.batch_stream(data_config.load_source(trainer_f.config.data), 0, 0, 16)), trainer_f.mesh)).as_text()
    results["fsdp_step_has_loop"] = "stablehlo.while" in hlo  # the micro-batch scan
    _, loss_f, norm_f, state_f = run(trainer_f.config, state0)
    results["loss_fsdp"], results["grad_norm_fsdp"] = loss_f, norm_f
    results["param_diff_fsdp"] = max_diff(state1.params, state_f.params)
    sharded = [x for x in jax.tree.leaves(state_f) if not x.sharding.is_fully_replicated]
    results["fsdp_sharded_leaves"] = len(sharded)
    results["fsdp_total_leaves"] = len(jax.tree.leaves(state_f))
    results["fsdp_shard_fraction"] = [x.addressable_shards[0].data.size / x.size for x in sharded[:5]]
    opt_specs = {str(s.spec) for s in jax.tree.leaves(trainer_f.state_sharding.opt_state)}
    results["fsdp_opt_specs"] = sorted(opt_specs)

    # Noise of the loss, drawn as the train step draws it, for a global batch sharded over 8 devices.
    mesh, T = trainer8.mesh, 50
    x0 = jnp.zeros((16, 8, 8, 1))
    draw = lambda x: diffusion.draw_t_noise(keys.step_keys(0, 7)["loss"], x, T)  # noqa: E731
    t8, noise8 = jax.jit(draw, out_shardings=parallel.batch_sharded(mesh))(
        jax.device_put(x0, parallel.batch_sharded(mesh)))
    t1, noise1 = jax.jit(draw)(x0)
    shards = [np.asarray(s.data) for s in sorted(noise8.addressable_shards, key=lambda s: s.index[0].start)]
    results["noise_shards"] = len(shards)
    results["noise_shards_distinct"] = all(not np.allclose(shards[i], shards[j])
                                           for i in range(len(shards)) for j in range(i))
    results["noise_equals_1dev"] = bool(np.array_equal(np.asarray(noise8), np.asarray(noise1))
                                        and np.array_equal(np.asarray(t8), np.asarray(t1)))

    # Sharded sampling (10 samples padded to 16 over 8 devices) equals 1-device sampling.
    key = keys.stream_key(0, keys.SAMPLE_STREAM, 3)
    out8 = sample_mode.sample_images(trainer8, state8.ema_params, key, 10)
    out1 = sample_mode.sample_images(trainer1, jax.device_put(jax.device_get(state8.ema_params)), key, 10)
    results["sample_shape"] = list(out8.samples.shape)
    results["sample_devices"] = out8.metadata["devices"]
    results["sample_diff"] = float(np.max(np.abs(out8.samples - out1.samples)))

    # Edit mode (DDNM inpainting, 5 inputs padded to 8 rows) sharded over 8 devices equals 1 device.
    with tempfile.TemporaryDirectory() as workdir:
        mngr = checkpoint.manager(workdir)
        checkpoint.save(mngr, 3, state8, trainer8.meta())
        mngr.wait_until_finished()
        mngr.close()
        edits = {}
        for n in (8, 1):
            edit = {"parallel.num_devices": n, "sampling.sampler": "ddim", "sampling.num_steps": 4,
                    "edit.task": "inpaint", "edit.method": "ddnm", "edit.num_images": 5, "edit.samples_per_image": 1}
            info = edit_mode.run_edit_mode(scale_config(**edit), workdir)
            edits[n] = (info["devices"], np.load(os.path.join(workdir, info["files"]["npz"]))["results"])
    results["edit_devices"] = edits[8][0]
    results["edit_diff"] = int(np.abs(edits[8][1].astype(int) - edits[1][1].astype(int)).max())

    # A diffusers network (model.init_from) placed FSDP-sharded on 8 devices computes what it does unsharded.
    general = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "diffusers", "general")
    opened = trained_model.open_trained(scale_config(**{"data.image_size": 16, "model.init_from": general,
                                                 "parallel.num_devices": 8, "parallel.shard_params": True,
                                                 "parallel.shard_min_size": 64}), tempfile.mkdtemp(),
                                 "sample", log=lambda *_: None)
    params = trained_model.load_params(opened)
    leaves = jax.tree.leaves(params)
    results["init_from_sharded_leaves"] = sum(not x.sharding.is_fully_replicated for x in leaves)
    ref = np.load(os.path.join(general, "reference.npz"))
    x, t, y = jnp.asarray(ref["x"].transpose(0, 2, 3, 1)), jnp.asarray(ref["t_int"]), jnp.asarray(ref["labels"])
    out8 = jax.jit(opened.experiment.apply_fn)(params, x, t, y)
    out1 = opened.experiment.apply_fn(jax.device_get(params), x, t, y)
    results["init_from_diff"] = float(np.max(np.abs(np.asarray(out8) - np.asarray(out1))))

    # DiT with FSDP over 8 devices trains what it trains on 1 device.
    dit = {"model.backbone": "dit", "model.dit.depth": 2, "model.dit.hidden_size": 32, "model.dit.num_heads": 2}
    trainer_d1 = Experiment(scale_config(**dit, **{"parallel.num_devices": 1}), channels=1, num_classes=10)
    dit_state0 = jax.device_get(trainer_d1.init())
    _, loss_d1, _, state_d1 = run(trainer_d1.config, dit_state0)
    _, loss_d8, _, state_d8 = run(scale_config(**dit, **{"parallel.num_devices": 8, "parallel.shard_params": True,
                                                         "parallel.shard_min_size": 64}), dit_state0)
    results["dit_loss_1"], results["dit_loss_fsdp"] = loss_d1, loss_d8
    results["dit_param_diff"] = max_diff(state_d1.params, state_d8.params)
    results["dit_sharded_leaves"] = sum(not x.sharding.is_fully_replicated for x in jax.tree.leaves(state_d8.params))

    # DiT-XL/2's train state (675M parameters, never allocated) under FSDP: the share of its bytes sharded.
    xl_fields = {"model.backbone": "dit", "model.dit.size": "XL", "model.dit.patch_size": 2,
                 "model.dit.learn_sigma": True, "data.image_size": 32, "parallel.num_devices": 8,
                 "parallel.shard_params": True}
    xl = Experiment(scale_config(**xl_fields), channels=4, num_classes=1000)
    leaves = jax.tree.leaves(xl.abstract_state())
    sharded = sum(x.size for x in leaves if not x.sharding.is_fully_replicated)
    results["xl_sharded_fraction"] = sharded / sum(x.size for x in leaves)
    results["xl_params"] = sum(x.size for x in jax.tree.leaves(xl.abstract_state().params))

    # The autoencoder's step over 8 devices (FSDP) equals 1 device's.
    ae = {"autoencoder.block_out_channels": (16, 32), "autoencoder.norm_num_groups": 8}
    ae1 = AutoencoderExperiment(scale_config(**ae, **{"parallel.num_devices": 1}), 1)
    ae8 = AutoencoderExperiment(scale_config(**ae, **{"parallel.num_devices": 8, "parallel.shard_params": True,
                                                      "parallel.shard_min_size": 64}), 1)
    ae_state0, ae_final = jax.device_get(ae1.init()), {}
    for n, experiment in ((1, ae1), (8, ae8)):
        state = jax.device_put(ae_state0, experiment.state_sharding)
        stream = data.batch_stream(data_config.load_source(experiment.config.data), 0, 0, 16)
        losses = []
        for _ in range(STEPS):
            state, metrics = experiment.step(state, parallel.global_batch(next(stream), experiment.mesh))
            losses.append(float(metrics["loss"]))
        results[f"ae_loss_{n}"], ae_final[n] = losses, state
    results["ae_param_diff"] = max_diff(ae_final[1].params, ae_final[8].params)

    errors = []
    for overrides in ({"training.batch_size": 12}, {"training.batch_size": 24, "training.grad_accum_steps": 2}):
        try:
            Experiment(scale_config(**overrides, **{"parallel.num_devices": 8}), channels=1, num_classes=10)
            errors.append("")
        except ValueError as e:
            errors.append(str(e))
    results["errors"] = errors
    print("RESULTS " + json.dumps(results))


if __name__ == "__main__":
    main()
