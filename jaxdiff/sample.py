"""Generating images from a model: the compiled sampling call, chunking, and ``--mode=sample``."""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from jaxdiff import plotting, samplers


def trajectory_stride(num_steps: int, trajectory_every: int, min_frames: int = 10) -> int:
    """Keep every ``trajectory_every``-th step, but at least ``min_frames`` frames for short samplers
    (DDIM with 20 steps and ``trajectory_every=100`` keeps every 2nd step); 0 = no trajectory."""
    if not trajectory_every:
        return 0
    return max(1, min(int(trajectory_every), -(-num_steps // min_frames)))


def generate(trainer, params, key: jax.Array, num_samples: int, sampling_config=None,
             trajectory: bool = False) -> samplers.SampleOutput:
    """``num_samples`` images from ``params`` with the sampler of ``sampling_config`` (default
    ``config.sampling``), chunked and keyed as :func:`samplers.sample_from_config` describes, the batch
    sharded over the trainer's mesh. With ``trajectory`` the first chunk's trajectory comes back too."""
    config = trainer.config
    sc = sampling_config or config.sampling
    model = trainer.model
    num_steps = sc.num_steps or trainer.tables.num_timesteps
    every = trajectory_stride(num_steps, sc.trajectory_every) if trajectory else 0
    return samplers.sample_from_config(
        lambda p, x, t, y: model.apply({"params": p}, x, t, y), params, trainer.tables, sc,
        (num_samples,) + tuple(trainer.image_shape), key, target=config.diffusion.target,
        num_classes=model.num_classes, trajectory_every=every, mesh=trainer.mesh,
        cache=trainer.sampler_cache)


def sample_tag(sampling_config, num_timesteps: int, step: int, conditional: bool) -> str:
    """File-name tag ``<sampler><steps>[_w<guidance>]_<checkpoint step>``, e.g. ``ddim20_w3_0002000``."""
    sc = sampling_config
    guidance = f"_w{sc.guidance_scale:g}" if conditional and sc.guidance_scale != 1.0 else ""
    return f"{sc.sampler}{sc.num_steps or num_timesteps}{guidance}_{step:07d}"


def write_training_samples(trainer, state, workdir: str, step: int) -> str:
    """Sample ``sampling.num_samples`` images with the EMA parameters and save ``samples_<step>.png``
    (a class-conditional model: column k of the grid is class k)."""
    from jaxdiff.train import SAMPLE_STREAM, stream_key

    config = trainer.config
    sc = config.sampling
    params = state.ema_params if sc.use_ema else state.params
    out = generate(trainer, params, stream_key(config.seed, SAMPLE_STREAM, step), sc.num_samples)
    path = os.path.join(workdir, f"samples_{step:07d}.png")
    nrow = trainer.model.num_classes if out.labels is not None and str(sc.labels) in ("auto", "all") else None
    if jax.process_index() == 0:  # every process samples (a collective); one writes
        plotting.save_image_grid(out.samples, path, nrow=nrow)
    return path


def run_sample_mode(config, workdir: str) -> dict:
    """Restore the latest checkpoint in ``workdir`` and write, tagged by :func:`sample_tag`:
    ``sample_<tag>.png`` (grid of up to 256), ``sample_<tag>_classes.png`` (one row per class, for a
    class-conditional model), ``trajectory_<tag>.png`` (x_t and predicted x0 over time, when
    ``sampling.trajectory_every > 0``) and ``sample_<tag>.npz`` (``images`` uint8 ``[N, H, W, C]``,
    ``labels`` int32, -1 when unconditional, ``meta`` a JSON string). Returns the metadata.
    Keys: ``stream_key(seed, SAMPLE_STREAM, checkpoint step)``, chunk ``c`` folds in ``c``."""
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
    sc = config.sampling
    # Labels and guidance against the checkpoint's class count, before restoring or compiling.
    samplers.check_sampling_config(sc, trainer.tables.num_timesteps, trainer.model.num_classes > 0)
    samplers.parse_labels(sc.labels, sc.num_samples, trainer.model.num_classes)
    state, _ = checkpoint.restore(mngr, trainer.abstract_state(), step)
    params = state.ema_params if sc.use_ema else state.params
    out = generate(trainer, params, stream_key(config.seed, SAMPLE_STREAM, step), sc.num_samples,
                   trajectory=True)

    images = out.samples
    tag = sample_tag(sc, trainer.tables.num_timesteps, step, out.labels is not None)
    info = {"checkpoint_step": int(step), "seed": int(config.seed), "use_ema": bool(sc.use_ema),
            "labels": str(sc.labels), "key": "fold_in(fold_in(fold_in(key(seed), 1), checkpoint_step), chunk)",
            **out.metadata}
    files = {"grid": f"sample_{tag}.png", "npz": f"sample_{tag}.npz"}
    if out.labels is not None:
        files["classes"] = f"sample_{tag}_classes.png"
    if out.trajectory_xt is not None:
        files["trajectory"] = f"trajectory_{tag}.png"
    info["files"] = files
    if jax.process_index() != 0:  # every process samples (a collective); one writes
        return info
    plotting.save_image_grid(images[:256], os.path.join(workdir, files["grid"]))
    if out.labels is not None:
        plotting.save_class_grid(images, out.labels, os.path.join(workdir, files["classes"]))
    if out.trajectory_xt is not None:
        plotting.save_trajectory(out.trajectory_xt, out.trajectory_x0, out.trajectory_t,
                                 os.path.join(workdir, files["trajectory"]))
    labels = out.labels if out.labels is not None else np.full(len(images), -1, np.int32)
    np.savez_compressed(os.path.join(workdir, files["npz"]), images=plotting.to_uint8(images),
                        labels=labels, meta=json.dumps(info))
    return info
