"""Generating images from a model: the compiled sampling call, chunking, and ``--mode=sample``.

Given a mesh, sampling is sharded like training: the chunk's batch is split over the ``data`` axis
(padded to a multiple of the device count; with partitionable threefry the padding does not change
the other rows' noise), the parameters keep their (replicated or FSDP) shardings, and the result is
gathered to every host.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import parallel, plotting, samplers


def make_generate_fn(model, tables, sampling_config, target: str, image_shape: tuple,
                     trajectory_every: int = 0, mesh=None):
    """A jitted ``generate(params, key, labels) -> SampleOutput`` for images of ``image_shape``.

    ``x_T = normal(fold_in(key, 0))``; the sampler's noise comes from ``fold_in(key, 1)``.
    ``labels`` is int32 ``[B]`` (its length sets the batch); a conditional model samples those
    classes, an unconditional one ignores them.

    With a ``mesh`` the returned function accepts any batch size and NumPy or global inputs: it pads
    the batch to a multiple of the devices, shards it over ``data`` and returns host NumPy arrays
    (``SampleOutput`` of ``np.ndarray``) trimmed back to the batch.
    """
    sc = sampling_config

    @jax.jit
    def generate(params, key, labels):
        if mesh is not None:
            key = jax.random.wrap_key_data(key)
            labels = jax.lax.with_sharding_constraint(labels, parallel.batch_sharded(mesh))
        apply = lambda x, t, y: model.apply({"params": params}, x, t, y)  # noqa: E731
        denoise = (samplers.guided_denoise_fn(apply, labels, 1.0, model.num_classes)
                   if model.num_classes else (lambda x, t: apply(x, t, None)))
        x_T = jax.random.normal(jax.random.fold_in(key, 0), labels.shape + tuple(image_shape), jnp.float32)
        if mesh is not None:
            x_T = jax.lax.with_sharding_constraint(x_T, parallel.batch_sharded(mesh))
        return samplers.ddpm_sample(denoise, tables, x_T, jax.random.fold_in(key, 1), target,
                                    sc.variance, sc.clip_x0, trajectory_every)

    if mesh is None:
        return generate

    def sharded_generate(params, key, labels):
        labels = np.asarray(parallel.to_host(labels), np.int32)
        b, n = labels.shape[0], mesh.devices.size
        padded = np.concatenate([labels, np.zeros((-b) % n, np.int32)])
        key_data = np.asarray(jax.random.key_data(key))
        out = generate(params, parallel.put_global(key_data, parallel.replicated(mesh)),
                       parallel.put_global(padded, parallel.batch_sharded(mesh)))
        return samplers.SampleOutput(
            parallel.to_host(out.samples)[:b],
            None if out.trajectory_xt is None else parallel.to_host(out.trajectory_xt)[:, :b],
            None if out.trajectory_x0 is None else parallel.to_host(out.trajectory_x0)[:, :b],
            out.trajectory_t)

    return sharded_generate


def class_cycle_labels(n: int, num_classes: int) -> jax.Array:
    """Labels ``0, 1, ..., K-1, 0, 1, ...`` for ``n`` samples (rows of a grid show classes)."""
    return jnp.arange(n, dtype=jnp.int32) % max(num_classes, 1)


def write_training_samples(trainer, state, workdir: str, step: int) -> str:
    """Sample ``sampling.num_samples`` images with the EMA parameters and save ``samples_<step>.png``."""
    from jaxdiff.train import SAMPLE_STREAM, stream_key

    config = trainer.config
    sc = config.sampling
    n = sc.num_samples
    labels = class_cycle_labels(n, trainer.num_classes)
    generate = make_generate_fn(trainer.model, trainer.tables, sc, config.diffusion.target, trainer.image_shape,
                                mesh=trainer.mesh)
    params = state.ema_params if sc.use_ema else state.params
    out = generate(params, stream_key(config.seed, SAMPLE_STREAM, step), labels)
    path = os.path.join(workdir, f"samples_{step:07d}.png")
    nrow = trainer.num_classes if trainer.num_classes and config.model.class_conditional else None
    if jax.process_index() == 0:
        plotting.save_image_grid(np.asarray(out.samples), path, nrow=nrow)
    return path


def run_sample_mode(config, workdir: str) -> dict:
    """Restore the latest checkpoint in ``workdir`` and write a sample grid, an ``.npz`` of uint8
    images with their metadata, and a denoising-trajectory figure. Returns the metadata."""
    from jaxdiff import checkpoint, config as config_lib
    from jaxdiff.train import SAMPLE_STREAM, Trainer, stream_key

    config_lib.validate(config)
    workdir = config_lib.check_workdir(workdir)
    mngr = checkpoint.manager(workdir, read_only=True)
    step = mngr.latest_step()
    if step is None:
        raise checkpoint.CheckpointError(f"no checkpoint in {workdir}/checkpoints: train first with "
                                         "--mode=train and the same --config and --workdir")
    meta = checkpoint.read_meta(mngr, step)
    trainer = Trainer(config, meta["channels"], meta["num_classes"])
    state, _ = checkpoint.restore(mngr, trainer.abstract_state(), step)
    sc = config.sampling
    params = state.ema_params if sc.use_ema else state.params
    generate = make_generate_fn(trainer.model, trainer.tables, sc, config.diffusion.target, trainer.image_shape,
                                mesh=trainer.mesh)
    traj_fn = (make_generate_fn(trainer.model, trainer.tables, sc, config.diffusion.target, trainer.image_shape,
                                sc.trajectory_every, mesh=trainer.mesh) if sc.trajectory_every else None)
    base = stream_key(config.seed, SAMPLE_STREAM, step)
    chunks, labels_all = [], []
    for i, start in enumerate(range(0, sc.num_samples, sc.batch_size)):
        labels = class_cycle_labels(sc.num_samples, trainer.num_classes)[start:start + sc.batch_size]
        out = (traj_fn if (i == 0 and traj_fn) else generate)(params, jax.random.fold_in(base, i), labels)
        if i == 0 and traj_fn and jax.process_index() == 0:
            plotting.save_trajectory(np.asarray(out.trajectory_xt), np.asarray(out.trajectory_x0),
                                     out.trajectory_t, os.path.join(workdir, "trajectory.png"))
        chunks.append(np.asarray(out.samples))
        labels_all.append(np.asarray(labels))
    images = np.concatenate(chunks)
    info = {"checkpoint_step": int(step), "num_samples": int(sc.num_samples), "seed": int(config.seed),
            "sampler": sc.sampler, "variance": sc.variance, "use_ema": bool(sc.use_ema)}
    tag = f"{sc.sampler}_{step:07d}"
    if jax.process_index() == 0:
        plotting.save_image_grid(images[:min(len(images), 256)], os.path.join(workdir, f"sample_{tag}.png"))
        np.savez_compressed(os.path.join(workdir, f"sample_{tag}.npz"), images=plotting.to_uint8(images),
                            labels=np.concatenate(labels_all), meta=json.dumps(info))
    return info
