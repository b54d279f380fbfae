"""``--mode=train``: the training loop around the library's compiled step.

It checks the config, opens (or resumes) the run in the work directory, streams the batches of
steps ``start + 1 ...`` (a pure function of ``(seed, step)``, see :mod:`jaxdiff.data.stream`), runs the
experiment's jitted step, and every so often logs metrics, checkpoints, samples a grid and (with
``training.eval_every``) logs a cheap FID. ``training.dtype=bfloat16`` computes the U-Net in bf16
while parameters, gradients, optimizer state and EMA stay float32. SIGTERM/SIGINT save a checkpoint
at the next step boundary and raise :class:`Preempted` (``main.py`` exits with ``128 + signal``);
re-running the command continues exactly.
"""

from __future__ import annotations

import json
import time

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxdiff.common import parallel, paths, plotting, preemption
from jaxdiff.data import batch_stream, load_source
from jaxdiff.drivers import config_checks, eval_mode, sample_mode
from jaxdiff.drivers.experiment import Experiment
from jaxdiff.training import checkpoint
from jaxdiff.training.state import TrainState


class Preempted(Exception):
    """Training stopped on signal ``signum`` after saving a checkpoint of ``state`` at ``step``;
    re-run (or call :func:`train` again) to continue."""

    def __init__(self, step: int, signum: int, state=None):
        super().__init__(f"preempted by signal {signum} at step {step}: checkpoint saved; "
                         "re-run the same command to continue")
        self.step, self.signum, self.state = step, signum, state


def truncate_metrics(path, last_step: int) -> None:
    """Drop metric lines logged after ``last_step`` (work lost since the last checkpoint)."""
    path = paths.as_path(path)
    if not path.exists():
        return
    rows = [r for r in plotting.read_metrics(path) if r["step"] <= last_step]
    paths.write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


class MetricsLog:
    """Metrics of the steps since the last log line, fetched from the device only when a line is
    written (the loop's one host sync): ``steps_per_sec`` over that interval, a ``metrics.jsonl``
    line (process 0), and the progress bar's postfix."""

    def __init__(self, path, start_step: int, bar, write: bool):
        self.path, self.bar, self.write_file = path, bar, write
        self.pending, self.last_time, self.last_step = [], time.perf_counter(), start_step

    def add(self, metrics) -> None:
        self.pending.append(metrics)

    def write(self, step: int) -> dict:
        values = jax.device_get(self.pending)
        now = time.perf_counter()
        row = {"step": step, **{k: float(np.mean([v[k] for v in values])) for k in values[0]},
               "steps_per_sec": (step - self.last_step) / (now - self.last_time)}
        self.pending, self.last_time, self.last_step = [], now, step
        if self.write_file:
            paths.append_text(self.path, json.dumps(row) + "\n")
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", steps_s=f"{row['steps_per_sec']:.1f}")
        return row


def resume_or_init(experiment: Experiment, mngr) -> TrainState:
    """The latest checkpoint's state, or a fresh one."""
    if mngr.latest_step() is not None:
        state, _ = checkpoint.restore(mngr, experiment.abstract_state())
        return state
    return experiment.init()


def train(config, workdir, progress: bool = True) -> TrainState:
    """Train (or resume training) per ``config`` in ``workdir`` (a folder or a ``gs://`` URL); returns
    the final state.

    Writes ``checkpoints/``, ``metrics.jsonl`` (step, loss, grad_norm, learning_rate, steps_per_sec),
    ``samples_<step>.png``, ``loss.png``, and with ``training.eval_every`` a cheap FID in
    ``eval/train_fid.jsonl`` (:func:`jaxdiff.drivers.eval_mode.make_train_fid_hook`). Re-running with
    the same workdir resumes at the latest checkpoint. With several processes every process runs
    this function; process 0 alone writes metrics and pictures, Orbax coordinates the checkpoint
    writes. SIGTERM or SIGINT saves a checkpoint at the next step boundary (all processes agree on
    the step) and raises :class:`Preempted`.
    """
    config_checks.validate(config)
    source = load_source(config.data, "train")
    experiment = Experiment(config, source.image_shape[-1], source.num_classes)  # checks devices; compiles nothing
    workdir = config_checks.check_workdir(workdir)
    tc = config.training
    writer = paths.is_writer()

    mngr = checkpoint.manager(workdir, tc.keep_checkpoints)
    state = resume_or_init(experiment, mngr)
    start = int(state.step)
    metrics_path, loss_png = workdir / "metrics.jsonl", workdir / "loss.png"
    if writer:
        truncate_metrics(metrics_path, start)
    fid_hook = eval_mode.make_train_fid_hook(config, workdir, experiment, source, start)

    slot, slots = parallel.process_batch_rows(experiment.mesh, tc.batch_size)
    stream = batch_stream(source, config.seed, start, tc.batch_size, slot, slots,
                          config.data.prefetch, config.data.num_workers)
    bar = tqdm(total=tc.num_train_steps, initial=start, disable=not progress or not writer,
               desc="train", unit="step", dynamic_ncols=True, smoothing=0.05)
    log = MetricsLog(metrics_path, start, bar, writer)
    try:
        with preemption.PreemptionGuard() as guard:
            for n in range(start + 1, tc.num_train_steps + 1):
                state, metrics = experiment.step(state, parallel.global_batch(next(stream), experiment.mesh))
                log.add(metrics)
                bar.update(1)
                last = n == tc.num_train_steps
                stop = guard.should_stop(n)
                if n % tc.log_every == 0 or last or (stop and log.pending):
                    log.write(n)
                if n % tc.checkpoint_every == 0 or last or stop:
                    checkpoint.save(mngr, n, state, experiment.meta())
                if stop:
                    mngr.wait_until_finished()
                    raise Preempted(n, guard.signum, state)
                if (tc.sample_every and n % tc.sample_every == 0) or last:
                    sample_mode.write_training_samples(experiment, state, workdir, n)
                    if writer:
                        plotting.save_loss_curve(metrics_path, loss_png)
                if fid_hook and n % tc.eval_every == 0:
                    row = fid_hook(n, state.ema_params)
                    bar.write(f"step {n}: FID {row['fid']:.3f} ({row['fid_samples']} EMA samples, "
                              f"{row['feature_extractor']} features) -> eval/train_fid.jsonl")
    finally:
        bar.close()
        stream.close()
        mngr.wait_until_finished()
        mngr.close()
    return state
