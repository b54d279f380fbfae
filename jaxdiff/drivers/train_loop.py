"""``--mode=train``: the training loop around the library's compiled step.

It checks the config, opens (or resumes) the run in the work directory, streams the batches of
steps ``start + 1 ...`` (a pure function of ``(seed, step)``, see :mod:`jaxdiff.data.stream`), runs the
experiment's jitted step, and every so often logs metrics, checkpoints, samples a grid and (with
``training.eval_every``) logs a cheap FID. ``training.dtype=bfloat16`` computes the U-Net in bf16
while parameters, gradients, optimizer state and EMA stay float32. SIGTERM/SIGINT save a checkpoint
at the next step boundary and raise :class:`Preempted` (``main.py`` exits with ``128 + signal``);
re-running the command continues exactly. ``training.max_minutes`` ends the run (checkpoint, final grid)
at the first step past that much wall clock.

A non-finite loss or gradient norm, seen where the loop syncs with the device anyway (every log line,
and before every checkpoint, sample grid and FID), stops training with :class:`Diverged` before that
state is saved: every checkpoint on disk is finite, so keep-the-newest retention never deletes the
last good one. One process at a time holds a work directory (:class:`~jaxdiff.common.run_lock.RunLock`).
"""

from __future__ import annotations

import json
import time
from typing import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from jaxdiff.common import parallel, paths, plotting, preemption
from jaxdiff.common.run_lock import RunLock
from jaxdiff.common.tensorboard import TensorBoard
from jaxdiff.data import batch_stream, check_batch_size
from jaxdiff.drivers import config_checks, eval_mode, latent, model_source, sample_mode
from jaxdiff.drivers.autoencoder_experiment import KIND, AutoencoderExperiment, write_reconstructions
from jaxdiff.drivers.data_config import load_source
from jaxdiff.drivers.sampling_config import parse_labels
from jaxdiff.drivers.experiment import Experiment
from jaxdiff.drivers.progress import GuardedBar
from jaxdiff.models.denoiser import has_span_branch, with_span_params
from jaxdiff.training import checkpoint
from jaxdiff.training.state import TrainState

BLOCKS = config_checks.ALL_BLOCKS  # --mode=train reads every block
AUTOENCODER_BLOCKS = ("data", "autoencoder", "training")  # --mode=train_autoencoder


class Preempted(Exception):
    """Training stopped on signal ``signum`` after saving a checkpoint of ``state`` at ``step``;
    re-run (or call :func:`train` again) to continue."""

    def __init__(self, step: int, signum: int, state=None):
        super().__init__(f"preempted by signal {signum} at step {step}: checkpoint saved; "
                         "re-run the same command to continue")
        self.step, self.signum, self.state = step, signum, state


class Diverged(RuntimeError):
    """Training met a non-finite loss or gradient norm; nothing from that step on was saved."""

    def __init__(self, step: int, first_bad: int, row: dict, last_checkpoint: int | None, directory):
        kept = (f"the last good checkpoint is step {last_checkpoint} in {directory}" if last_checkpoint is not None
                else "no checkpoint was saved")
        values = ", ".join(f"{k}={row[k]}" for k in ("loss", "grad_norm") if k in row)
        super().__init__(f"training diverged at step {first_bad} ({values}); stopped at step {step}, nothing "
                         f"non-finite was saved and {kept}. Lower training.learning_rate (or raise "
                         "training.warmup_steps) and re-run")
        self.step, self.first_bad, self.last_checkpoint = step, first_bad, last_checkpoint


def truncate_metrics(path, last_step: int) -> None:
    """Drop metric lines logged after ``last_step`` (work lost since the last checkpoint)."""
    path = paths.as_path(path)
    if not path.exists():
        return
    rows = [r for r in plotting.read_metrics(path) if r["step"] <= last_step]
    paths.write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


class MetricsLog:
    """Metrics of the steps since the last log line, fetched from the device only when needed (the
    loop's one host sync): ``steps_per_sec`` over that interval, a ``metrics.jsonl`` line (process
    0), and the progress bar's postfix. :meth:`check` fetches them early (before a save) and returns
    the first step whose loss or gradient norm is not finite."""

    def __init__(self, path, start_step: int, bar, write: bool):
        self.path, self.bar, self.write_file = path, bar, write
        self.pending, self.last_time, self.last_step = [], time.perf_counter(), start_step
        self.fetched = 0  # how many of the pending metrics are already host values

    def add(self, metrics) -> None:
        self.pending.append(metrics)

    def check(self) -> tuple[int, dict] | None:
        """``(step, metrics)`` of the first pending step with a non-finite loss or gradient norm, or None."""
        self.pending[self.fetched:] = jax.device_get(self.pending[self.fetched:])
        self.fetched = len(self.pending)
        for i, values in enumerate(self.pending):
            if not all(np.isfinite(values[k]) for k in ("loss", "grad_norm") if k in values):
                return self.last_step + 1 + i, {k: float(v) for k, v in values.items()}
        return None

    def write(self, step: int) -> dict:
        values = jax.device_get(self.pending)
        self.fetched = 0
        now = time.perf_counter()
        row = {"step": step, **{k: float(np.mean([v[k] for v in values])) for k in values[0]},
               "steps_per_sec": (step - self.last_step) / (now - self.last_time)}
        self.pending, self.last_time, self.last_step = [], now, step
        if self.write_file:
            paths.append_text(self.path, json.dumps(row) + "\n")
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", steps_s=f"{row['steps_per_sec']:.1f}")
        return row


def resume_or_init(experiment: Experiment, mngr, log=print, init: model_source.ModelSource | None = None) -> TrainState:
    """The latest checkpoint's state (saying so), or a fresh one: with ``init`` (the network of
    ``model.init_from``) its EMA weights are the parameters and the EMA at step 0."""
    step, total = mngr.latest_step(), experiment.config.training.num_train_steps
    if step is None:
        state = experiment.init()
        if init is None:
            return state
        weights = init.load_params(True)
        log(f"starting from the weights of {init.path}")
        if experiment.family.two_times and not has_span_branch(weights):  # a one-time network starts a few-step one
            weights = with_span_params(weights, jax.device_get(state.params))
        # two copies: the step donates both
        return state.replace(params=model_source.place(weights, experiment),
                             ema_params=model_source.place(weights, experiment),
                             ema_profiles=tuple(model_source.place(weights, experiment) for _ in state.ema_profiles))
    log(f"resuming from checkpoint {step} of {total} steps in {mngr.directory}"
        + (": training is complete" if step >= total else ""))
    state, _ = checkpoint.restore(mngr, experiment.abstract_state())
    return state


def open_snapshots(workdir, start: int):
    """The post-hoc EMA snapshot manager of a run that continues from step ``start``: snapshots after it
    (of a run that went further before it lost its last checkpoints) are deleted, as the run will redo them."""
    snapshots = checkpoint.snapshot_manager(workdir)
    for step in snapshots.all_steps():
        if step > start:
            snapshots.delete(step)
    return snapshots


def train(config, workdir, progress: bool = True, overrides=()) -> TrainState:
    """Train (or resume training) the diffusion model of ``config`` in ``workdir`` (a folder or a
    ``gs://`` URL; in the latent space of ``latent.autoencoder`` when set); returns the final state.

    Writes ``checkpoints/``, ``metrics.jsonl`` (step, loss, grad_norm, learning_rate, steps_per_sec),
    the same scalars and the sample grids as TensorBoard events in ``tensorboard/``,
    ``samples_<step>.png``, ``loss.png``, and with ``training.eval_every`` a cheap FID in
    ``eval/train_fid.jsonl`` (:func:`jaxdiff.drivers.eval_mode.make_train_fid_hook`). Re-running with
    the same workdir resumes at the latest checkpoint, with the network and process that checkpoint
    recorded (:func:`jaxdiff.drivers.model_source.resolve`: a field the config file gives another
    value is replaced, saying so; one of ``overrides``, the fields set by ``--config.FIELD`` flags, is a
    :class:`ConfigError`). Every check (config, data, checkpoint, batch size) comes before anything is
    written. With several processes every process runs
    this function; process 0 alone writes metrics and pictures, Orbax coordinates the checkpoint
    writes. SIGTERM or SIGINT saves a checkpoint at the next step boundary (all processes agree on
    the step) and raises :class:`Preempted`.
    """
    config_checks.validate(config, BLOCKS)
    latest = model_source.latest_checkpoint(workdir)
    model_source.check_kind(latest, "diffusion", workdir)
    if latest is not None:
        latest.manager.close()
    init = model_source.open_source(config) if latest is None else None
    say = print if progress and paths.is_writer() else lambda *_: None
    config = model_source.resolve(config, latest, init, say, overrides, training=True)
    config_checks.validate(config, BLOCKS)  # sampling against the recorded process
    source = load_source(config.data, "train")
    model_source.check_source_fits(init, source.image_shape[-1], source.num_classes)
    check_batch_size(config.training.batch_size, len(source), jax.process_count())
    space, data = None, source
    if config.latent.autoencoder:  # encode the training set once; its latents are what the model learns
        space, data = latent.encode_training_set(config, source, say)
    if latest is not None:
        model_source.check_data_fits(latest.meta, config, data.image_shape[-1], source.num_classes)
    experiment = Experiment(config, data.image_shape[-1], source.num_classes, latent=space)  # compiles nothing
    sc = config.sampling  # the grids' labels against the data's classes, before any work
    parse_labels(sc.labels, sc.num_samples, experiment.model.num_classes)
    workdir = config_checks.check_workdir(workdir)  # the first write
    writer = paths.is_writer()
    def grid(state, n, should_stop):
        return sample_mode.write_training_samples(experiment, state, workdir, n, should_stop=should_stop)

    with RunLock(workdir, enabled=writer):
        return _train(workdir, data, experiment, progress, grid, init,
                      # the training-time FID compares (decoded) samples with the images
                      lambda start: eval_mode.make_train_fid_hook(config, workdir, experiment, source, start))


def train_autoencoder(config, workdir, progress: bool = True) -> TrainState:
    """``--mode=train_autoencoder``: train (or resume training) the KL autoencoder of
    ``config.autoencoder`` on ``config.data`` in ``workdir``, with :func:`train`'s loop (checkpoints,
    ``metrics.jsonl`` with the reconstruction error, KL and PSNR, TensorBoard, preemption, divergence)
    and ``reconstructions_<step>.png`` grids. Its work directory is what ``latent.autoencoder`` names."""
    config_checks.validate(config, AUTOENCODER_BLOCKS)
    source = load_source(config.data, "train")
    latest = model_source.latest_checkpoint(workdir)
    model_source.check_kind(latest, KIND, workdir)
    if latest is not None:
        latest.manager.close()
    experiment = AutoencoderExperiment(config, source.image_shape[-1])
    workdir = config_checks.check_workdir(workdir)

    def grid(state, n, should_stop):
        return write_reconstructions(experiment, state, source, workdir, n)

    with RunLock(workdir, enabled=paths.is_writer()):
        return _train(workdir, source, experiment, progress, grid)


def wall_clock_limit(minutes: float, agree_every: int) -> Callable[[int], bool]:
    """``out_of_time(step)``: whether ``minutes`` of wall clock have passed since this call (0 = never),
    which makes ``step`` the run's last (checkpoint, final grid). Several processes agree on it every
    ``agree_every`` steps (any process out of time stops them all at the same step)."""
    deadline = time.monotonic() + 60.0 * minutes
    if not minutes:
        return lambda step: False
    if jax.process_count() == 1:
        return lambda step: time.monotonic() >= deadline

    def out_of_time(step):
        if step % agree_every:
            return False
        return bool(np.any(multihost_utils.process_allgather(np.int32(time.monotonic() >= deadline))))
    return out_of_time


def _train(workdir, source, experiment, progress: bool, write_grid, init=None, make_fid_hook=None) -> TrainState:
    """The loop of :func:`train` and :func:`train_autoencoder`, with the work directory locked:
    ``experiment.step`` on batches of ``source``, ``write_grid(state, step, should_stop)`` at
    ``training.sample_every``, the training-time FID of ``make_fid_hook(start_step)`` (if any)."""
    config = experiment.config
    tc = config.training
    writer = paths.is_writer()
    mngr = checkpoint.manager(workdir, tc.keep_checkpoints)
    state = resume_or_init(experiment, mngr, log=print if progress and writer else lambda *_: None, init=init)
    start = int(state.step)
    snapshots = open_snapshots(workdir, start) if state.ema_profiles else None
    snapshot_every = tc.ema_snapshot_every or tc.checkpoint_every
    metrics_path, loss_png = workdir / "metrics.jsonl", workdir / "loss.png"
    if writer:
        truncate_metrics(metrics_path, start)
    fid_hook = make_fid_hook(start) if make_fid_hook else None

    minutes = tc.max_minutes
    slot, slots = parallel.process_batch_rows(experiment.mesh, tc.batch_size)
    stream = batch_stream(source, config.seed, start, tc.batch_size, slot, slots,
                          config.data.prefetch, config.data.num_workers)
    bar = tqdm(total=tc.num_train_steps, initial=start, disable=not progress or not writer,
               desc=f"train ({minutes:g} min budget)" if minutes else "train", unit="step",
               dynamic_ncols=True, smoothing=0.05)
    log = MetricsLog(metrics_path, start, bar, writer)
    board = TensorBoard(workdir, enabled=writer, purge_step=start + 1 if start else None)
    finished = False
    try:
        with preemption.PreemptionGuard() as guard:
            # Grids and the FID poll for a signal between sampler pieces / chunks (one process:
            # several would have to agree on where, as they do at step boundaries).
            def poll(what):
                if guard.signum is not None and jax.process_count() == 1:
                    raise preemption.Interrupted(guard.signum, what)

            out_of_time = wall_clock_limit(minutes, tc.log_every)
            for n in range(start + 1, tc.num_train_steps + 1):
                state, metrics = experiment.step(state, parallel.global_batch(next(stream), experiment.mesh))
                log.add(metrics)
                bar.update(1)
                last = n == tc.num_train_steps or out_of_time(n)
                stop = guard.should_stop(n)
                save = n % tc.checkpoint_every == 0 or last or stop
                snapshot = snapshots is not None and n % snapshot_every == 0
                sample_grid = (tc.sample_every and n % tc.sample_every == 0) or last
                fid = fid_hook and n % tc.eval_every == 0
                if save or snapshot or sample_grid or fid or n % tc.log_every == 0:
                    bad = log.check()
                    if bad:
                        raise Diverged(n, bad[0], bad[1], mngr.latest_step(), mngr.directory)
                if n % tc.log_every == 0 or last or (stop and log.pending):
                    board.scalars(n, log.write(n))
                if save:
                    checkpoint.save(mngr, n, state, experiment.meta())
                if snapshot:
                    checkpoint.save(snapshots, n, state.ema_profiles, {"ema_stds": list(tc.ema_stds)})
                if stop:
                    raise Preempted(n, guard.signum, state)
                try:
                    if sample_grid:
                        image = write_grid(state, n, lambda: poll("the sample grid"))
                        if writer:
                            board.image("samples", n, image)
                            plotting.save_loss_curve(metrics_path, loss_png)
                    if fid:
                        with GuardedBar(config.eval.train_fid_samples, "train FID",
                                        lambda: poll("the training-time FID"), leave=False) as fid_bar:
                            row = fid_hook(n, state.ema_params, fid_bar, fid_bar.check)
                except preemption.Interrupted as e:  # the state of step n is good: keep it, then stop
                    if not save:
                        checkpoint.save(mngr, n, state, experiment.meta())
                    raise Preempted(n, e.signum, state) from None
                if fid:
                    board.scalars(n, {"fid": row["fid"]}, prefix="eval/")
                    bar.write(f"step {n}: FID {row['fid']:.3f} ({row['fid_samples']} EMA samples, "
                              f"{row['feature_extractor']} features) -> eval/train_fid.jsonl")
                if last:
                    break
        finished = True
    finally:
        bar.close()
        stream.close()
        board.close()
        try:
            if snapshots is not None:
                snapshots.close()
            mngr.close()  # waits for anything still being written
        except Exception:
            if finished:  # otherwise the error already on its way (a failed save) is the one to report
                raise
    return state
