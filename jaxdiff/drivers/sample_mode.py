"""``--mode=sample`` and the sample grids of training: a config's sampler run on an experiment's
network, pictures and arrays written into the work directory by process 0."""

from __future__ import annotations

import json

import numpy as np

from jaxdiff.common import paths, plotting, preemption
from jaxdiff.common.chunks import map_chunks
from jaxdiff.core.families import family_spec
from jaxdiff.core.sampler import SampleOutput
from jaxdiff.drivers import config_checks, trained_model
from jaxdiff.drivers.checks import check_workdir
from jaxdiff.drivers.experiment import Experiment
from jaxdiff.drivers.progress import GuardedBar
from jaxdiff.drivers.sampling_config import (check_sampling_config, generate_from_config, grid_sampling, parse_labels,
                                      resolve_sampler)
from jaxdiff.training.keys import SAMPLE_STREAM, stream_key

BLOCKS = config_checks.DIFFUSION_BLOCKS  # the config blocks --mode=sample reads


def trajectory_stride(num_steps: int, trajectory_every: int, min_frames: int = 10) -> int:
    """Keep every ``trajectory_every``-th step, but at least ``min_frames`` frames for short samplers
    (DDIM with 20 steps and ``trajectory_every=100`` keeps every 2nd step); 0 = no trajectory."""
    if not trajectory_every:
        return 0
    return max(1, min(int(trajectory_every), -(-num_steps // min_frames)))


def sample_images(experiment: Experiment, params, key, num_samples: int, sampling_config=None,
             trajectory: bool = False, progress=None, should_stop=None) -> SampleOutput:
    """``num_samples`` images from ``params`` with the sampler of ``sampling_config`` (default
    ``config.sampling``), chunked and keyed as :func:`jaxdiff.core.generation.generate` describes,
    the batch sharded over the experiment's mesh. With ``trajectory`` the first chunk's trajectory
    comes back too (not for latent diffusion, whose samples come back decoded into images)."""
    config = experiment.config
    sc = sampling_config or config.sampling
    num_steps = resolve_sampler(sc, experiment.family)[1]
    every = trajectory_stride(num_steps, sc.trajectory_every) if trajectory and experiment.latent is None else 0
    out = generate_from_config(
        experiment.apply_fn, params, experiment.family, sc, (num_samples,) + tuple(experiment.image_shape), key,
        num_classes=experiment.model.num_classes, trajectory_every=every,
        mesh=experiment.mesh, cache=experiment.sampler_cache, progress=progress, should_stop=should_stop)
    if experiment.latent is None:
        return out
    return out._replace(samples=map_chunks(lambda c, x: experiment.decode(x), out.samples, sc.batch_size))


def sample_tag(sampling_config, family, step: int, conditional: bool, seed: int, source: str = "") -> str:
    """File-name tag ``<sampler><steps>[_w<guidance>]_<checkpoint step>_seed<seed>_n<count>_<digest>``,
    e.g. ``ddim20_w3_0002000_seed0_n64_3fa1c2``: the digest (:func:`~jaxdiff.common.paths.request_digest`)
    covers the whole ``sampling`` block, the seed and the ``model.init_from`` ``source``, so samples
    of differing requests never overwrite each other."""
    sc = sampling_config
    guidance = f"_w{sc.guidance_scale:g}" if conditional and sc.guidance_scale != 1.0 else ""
    name, steps = resolve_sampler(sc, family)
    digest = paths.request_digest({"sampling": sc.to_dict(), "seed": seed, "init_from": source})
    return f"{name}{steps}{guidance}_{step:07d}_seed{seed}_n{sc.num_samples}_{digest}"


def write_training_samples(experiment: Experiment, state, workdir, step: int, should_stop=None):
    """Sample ``sampling.num_samples`` images with the EMA parameters and the grid sampler
    (``sampling.grid_sampler``: DPM-Solver++ over 20 steps by default) and save ``samples_<step>.png``
    (a class-conditional model: column k of the grid is class k). Returns the uint8 grid (``None``
    on processes other than 0, which sample but do not write). ``should_stop()`` is called every
    few sampler steps and may raise to stop (then nothing is written)."""
    config = experiment.config
    sc = grid_sampling(config, experiment.family)
    params = state.ema_params if sc.use_ema else state.params
    out = sample_images(experiment, params, stream_key(config.seed, SAMPLE_STREAM, step), sc.num_samples, sc,
                   should_stop=should_stop)
    path = paths.as_path(workdir) / f"samples_{step:07d}.png"
    conditional_grid = out.labels is not None and str(sc.labels) in ("auto", "all")
    if not paths.is_writer():  # every process samples (a collective); one writes
        return None
    return plotting.save_image_grid(out.samples, path, nrow=experiment.model.num_classes if conditional_grid else None)


def run_sample_mode(config, workdir, overrides=()) -> dict:
    """Restore the latest checkpoint in ``workdir`` (else the network of ``model.init_from``) and write,
    tagged by :func:`sample_tag`:
    ``sample_<tag>.png`` (grid of up to 256), ``sample_<tag>_classes.png`` (one row per class, for a
    class-conditional model), ``trajectory_<tag>.png`` and ``trajectory_<tag>.gif`` (x_t and predicted
    x0 over time, and x_t as an animation, when ``sampling.trajectory_every > 0``), with
    ``sampling.save_pngs`` a folder ``sample_<tag>/`` of one PNG per sample, and ``sample_<tag>.npz``
    (``images`` uint8 ``[N, H, W, C]``, ``labels`` int32, -1 when unconditional, ``meta`` a JSON
    string). Returns the metadata.
    The network and process are the checkpoint's (:func:`~jaxdiff.drivers.trained_model.open_trained`;
    ``overrides`` are the fields set by ``--config`` flags), the sampling choices the config's.
    Keys: ``stream_key(seed, SAMPLE_STREAM, checkpoint step)``, chunk ``c`` folds in ``c``. SIGTERM
    or Ctrl-C stops it between two chunks with :class:`~jaxdiff.common.preemption.Interrupted`,
    before anything is written."""
    opened = trained_model.open_trained(config, workdir, "sample", overrides=overrides)
    experiment, step = opened.experiment, opened.step
    sc = config.sampling
    # Labels and guidance against the checkpoint's class count, before restoring or compiling.
    check_sampling_config(sc, experiment.family, experiment.model.num_classes > 0)
    parse_labels(sc.labels, sc.num_samples, experiment.model.num_classes)
    out_dir = check_workdir(opened.workdir)
    params = trained_model.load_params(opened, sc.use_ema, sc.ema_std)
    with preemption.PreemptionGuard() as guard, GuardedBar(sc.num_samples, "sample",
                                                           guard.stop_check("sampling")) as bar:
        out = sample_images(experiment, params, stream_key(config.seed, SAMPLE_STREAM, step), sc.num_samples,
                       trajectory=True, progress=bar, should_stop=bar.check)

    images = out.samples
    tag = sample_tag(sc, experiment.family, step, out.labels is not None, int(config.seed),
                     opened.source.path if opened.source else "")
    info = {"checkpoint_step": int(step), "seed": int(config.seed), "use_ema": bool(sc.use_ema),
            "ema_std": float(sc.ema_std),
            "labels": str(sc.labels), "key": "fold_in(fold_in(fold_in(key(seed), 1), checkpoint_step), chunk)",
            **({"init_from": opened.source.path} if opened.source else {}), **out.metadata}
    files = {"grid": f"sample_{tag}.png", "npz": f"sample_{tag}.npz"}
    if out.labels is not None:
        files["classes"] = f"sample_{tag}_classes.png"
    if out.trajectory_xt is not None:
        files["trajectory"] = f"trajectory_{tag}.png"
        files["trajectory_gif"] = f"trajectory_{tag}.gif"
    if sc.save_pngs:
        files["pngs"] = f"sample_{tag}"
    info["files"] = files
    if not paths.is_writer():  # every process samples (a collective); one writes
        return info
    plotting.save_image_grid(images[:256], out_dir / files["grid"])
    if out.labels is not None:
        plotting.save_class_grid(images, out.labels, out_dir / files["classes"])
    if out.trajectory_xt is not None:
        time_name = family_spec(experiment.family).time_name  # edm's time is its noise level, sigma
        plotting.save_trajectory(out.trajectory_xt, out.trajectory_x0, out.trajectory_t,
                                 out_dir / files["trajectory"], time_name=time_name)
        plotting.save_trajectory_gif(out.trajectory_xt, out_dir / files["trajectory_gif"])
    if sc.save_pngs:
        plotting.save_image_folder(images, out_dir / files["pngs"])
    labels = out.labels if out.labels is not None else np.full(len(images), -1, np.int32)
    paths.save_npz(out_dir / files["npz"], compressed=True, images=plotting.to_uint8(images), labels=labels,
                   meta=json.dumps(info))
    return info
