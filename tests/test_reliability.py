"""What goes wrong in a long run stops it cleanly, in one line, with every good checkpoint intact:
divergence, a full disk, a second process on the same work directory, and bad flags or config files."""

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.common import plotting
from jaxdiff.common.run_lock import RunLock, WorkdirLocked
from jaxdiff.core import families, generation, sampler_registry, schedules
from jaxdiff.drivers import train_loop
from jaxdiff.drivers.experiment import Experiment
from jaxdiff.training import checkpoint
from jaxdiff.training.checkpoint import AbandonedWrites
from tests.conftest import ROOT, TINY, run_main, tiny_config


def _restore_latest(workdir, config):
    experiment = Experiment(config, channels=1, num_classes=10)
    mngr = checkpoint.manager(workdir, read_only=True)
    state, _ = checkpoint.restore(mngr, experiment.abstract_state())
    step = mngr.latest_step()
    mngr.close()
    return step, state


def _all_finite(state) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(state))


# ----------------------------------------------------------------------------- divergence

DIVERGING = {"training.learning_rate": 1e3, "training.warmup_steps": 30, "training.grad_clip_norm": 0.0,
             "training.num_train_steps": 40, "training.checkpoint_every": 2, "training.log_every": 4,
             "training.keep_checkpoints": 2}


def test_divergence_stops_before_any_nonfinite_checkpoint(tmp_path):
    """An absurd learning rate (reached by the warm-up) makes the loss NaN: training stops at the
    next sync with the step and the last good checkpoint, which restores and is finite."""
    config = tiny_config(**DIVERGING)
    with pytest.raises(train_loop.Diverged) as e:
        train_loop.train(config, str(tmp_path), progress=False)
    err = e.value
    assert 2 <= err.last_checkpoint < err.first_bad <= err.step < 40, (err.last_checkpoint, err.first_bad, err.step)
    assert f"diverged at step {err.first_bad}" in str(err) and f"checkpoint is step {err.last_checkpoint}" in str(err)
    steps = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints"))
    assert steps[-1] == err.last_checkpoint and len(steps) == 2  # retention kept only finite ones
    for step in steps:
        mngr = checkpoint.manager(str(tmp_path), read_only=True)
        state, _ = checkpoint.restore(mngr, Experiment(config, 1, 10).abstract_state(), step)
        mngr.close()
        assert _all_finite(state), step


def test_divergence_on_the_command_line_is_one_line_and_exit_3(tmp_path):
    flags = [f"--config.{k}={v}" for k, v in DIVERGING.items()]
    r = run_main(*TINY, *flags, "--config.training.sample_every=0", f"--workdir={tmp_path}")
    assert r.returncode == 3, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training diverged at step") and "last good checkpoint is step" in last
    assert "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- a full disk


@contextlib.contextmanager
def small_filesystem(path, size="5m"):
    """A tmpfs of ``size`` at ``path`` (needs root, as in CI); yields whether it could be mounted. The tiny
    configs' checkpoints take 1.0-1.4 MB each: 5 MB holds the first two or three with room for a save's
    transient files (3 MB, two checkpoints, once failed at the first save), and the 12 checkpoints of a
    60-step run do not fit."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_disk_is_one_error_at_that_save_and_the_previous_checkpoint_restores(tmp_path, monkeypatch):
    config = tiny_config(**{"training.num_train_steps": 60, "training.checkpoint_every": 5,
                            "training.keep_checkpoints": 30})
    with small_filesystem(tmp_path / "disk") as mounted:
        workdir = tmp_path / "disk" / "run"
        if not mounted:  # no permission to mount: the same failure, injected into the third save
            real_save, calls = checkpoint.ocp.CheckpointManager.save, []

            def failing_save(self, step, *args, **kwargs):
                calls.append(step)
                if len(calls) == 3:
                    raise OSError(28, "No space left on device")
                return real_save(self, step, *args, **kwargs)

            monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "save", failing_save)
        with pytest.raises(checkpoint.CheckpointError) as e:
            train_loop.train(config, str(workdir), progress=False)
        message = str(e.value)
        assert "\n" not in message and "saving checkpoint" in message and "failed" in message
        failed = int(message.split("saving checkpoint ")[1].split()[0])
        assert f"checkpoint {failed - 5} is intact" in message, message
        names = os.listdir(workdir / "checkpoints")
        assert not [n for n in names if "tmp" in n]  # the failed save's temporary folder is gone
        assert sorted(int(n) for n in names)[-1] == failed - 5
        step, state = _restore_latest(str(workdir), config)
        assert step == failed - 5 and int(state.step) == step and _all_finite(state)


# ----------------------------------------------------------------------------- one run per workdir


def test_a_second_run_on_a_locked_workdir_stops_before_writing(tmp_path):
    with RunLock(str(tmp_path)):
        r = run_main(*TINY, f"--workdir={tmp_path}")
        with pytest.raises(WorkdirLocked, match=f"in use by pid {os.getpid()}"):
            RunLock(str(tmp_path)).__enter__()
    assert r.returncode == 2 and f"is in use by pid {os.getpid()}" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.jsonl").exists()
    with RunLock(str(tmp_path)):  # released: the next run takes it
        pass


def test_a_killed_run_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                               "from jaxdiff.common.run_lock import RunLock; RunLock(sys.argv[2]).__enter__(); "
                               "print('locked', flush=True); time.sleep(600)", ROOT, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(WorkdirLocked, match=f"pid {holder.pid}"):
        RunLock(str(tmp_path)).__enter__()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    time.sleep(0.1)
    with RunLock(str(tmp_path)):  # the kernel released the dead holder's lock
        pass


# ----------------------------------------------------------------------------- bad flags and files


@pytest.mark.parametrize("flags,message", [
    (["--config.training.batchsize=3"], 'unknown config field batchsize: Did you mean "batch_size"'),
    (["--config=configs/nope.py"], "cannot load the --config file: [Errno 2] No such file or directory"),
    (["--config.training.batch_size=abc"], "--config.training.batch_size=abc"),
    (["--config.sampling.labels=3,11"], "class label 11 is out of range: the model has 10 classes"),
    (["--config=configs/digits.py:score"], "unknown family 'score' after the config file's colon"),
    (["--config.diffusion.family=edm", "--config.sampling.sampler=ddim"], "runs the discrete DDPM chain"),
    (["--config.training.batch_size=2048"], "training.batch_size=2048 is larger than the dataset (1797 examples)"),
])
def test_bad_flags_are_one_line_before_any_work(tmp_path, flags, message):
    r = run_main(*TINY, *flags, f"--workdir={tmp_path / 'w'}", timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], lines[-3:]
    assert "Traceback" not in r.stderr and not (tmp_path / "w").exists()


def test_a_config_file_that_does_not_load_is_one_line(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(:\n")
    r = run_main(f"--config={broken}", f"--workdir={tmp_path / 'w'}", timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == "error: invalid syntax (broken.py, line 1)"


_FAIL_THIRD_SAVE = """
import runpy, sys
import orbax.checkpoint as ocp
real, calls = ocp.CheckpointManager.save, []
def save(self, step, *a, **k):
    calls.append(step)
    if len(calls) == 3:
        raise OSError(28, "No space left on device")
    return real(self, step, *a, **k)
ocp.CheckpointManager.save = save
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_full_disk_on_the_command_line_is_one_line_without_tracebacks(tmp_path):
    """What a user sees: one ``error:`` line and exit 2, not Orbax's and TensorStore's tracebacks."""
    flags = [*TINY, "--config.training.num_train_steps=60", "--config.training.checkpoint_every=5",
             "--config.training.keep_checkpoints=30"]
    with small_filesystem(tmp_path / "disk") as mounted:
        workdir = tmp_path / "disk" / "run"
        if mounted:
            r = run_main(*flags, f"--workdir={workdir}")
        else:  # the same failure injected into the third save of a real main.py run
            r = subprocess.run([sys.executable, "-c", _FAIL_THIRD_SAVE, os.path.join(ROOT, "main.py"), *flags,
                                f"--workdir={workdir}"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                               env=dict(os.environ, JAXDIFF_CPU_TUNING="0"))
        assert r.returncode == 2, r.stderr[-2000:]
        lines = [line for line in r.stderr.replace("\r", "\n").splitlines() if line.strip() and "train:" not in line]
        assert len(lines) == 1, lines[:5]
        assert lines[0].startswith("error: saving checkpoint") and "is intact" in lines[0], lines[0]


def test_after_a_failed_save_its_abandoned_writes_are_not_reported():
    """The reports a failed save's background writes make later (Orbax's writer threads, asyncio's
    never-retrieved exceptions) are dropped; every other record still passes."""
    keep = AbandonedWrites()
    make = lambda path, msg: logging.LogRecord("absl", logging.ERROR, path, 1, msg, None, None)  # noqa: E731
    assert not keep.filter(make("/x/site-packages/orbax/checkpoint/_src/futures/future.py", "thread raised"))
    assert not keep.filter(make("/usr/lib/python3.12/asyncio/base_events.py",
                                "Future exception was never retrieved\nfuture: <Future ... 15.orbax-checkpoint-tmp"))
    assert keep.filter(make("/usr/lib/python3.12/asyncio/base_events.py", "Task exception was never retrieved: mine"))
    assert keep.filter(make("/work/jaxdiff/drivers/train_loop.py", "an orbax checkpoint was written"))


# ----------------------------------------------------------------------------- kill -9 and resume


def test_kill_9_at_random_moments_then_resume_is_bit_identical(tmp_path):
    """kill -9 (and once SIGTERM) at random moments of a run (compiling, training, writing a
    checkpoint or metrics), restarting each time: the finished run's parameters equal those of a
    run never interrupted, bit for bit."""
    flags = [*TINY, "--config.training.num_train_steps=40", "--config.training.checkpoint_every=4",
             "--config.training.log_every=2", "--config.training.keep_checkpoints=2"]
    full = tmp_path / "full"
    r = run_main(*flags, f"--workdir={full}")
    assert r.returncode == 0, r.stderr[-2000:]
    crashed = tmp_path / "crashed"
    rng = np.random.default_rng(0)
    outcomes = []
    for attempt, sig in enumerate([signal.SIGKILL, signal.SIGKILL, signal.SIGTERM, signal.SIGKILL]):
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), *flags, f"--workdir={crashed}"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(float(rng.uniform(2.0, 9.0)))
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)
        outcomes.append((attempt, sig.name, proc.returncode))
        assert proc.returncode in (0, -signal.SIGKILL, 128 + signal.SIGTERM, -signal.SIGTERM), (outcomes, err[-2000:])
    r = run_main(*flags, f"--workdir={crashed}")
    assert r.returncode == 0, (outcomes, r.stderr[-2000:])
    config = tiny_config()
    a_step, a = _restore_latest(str(full), config)
    b_step, b = _restore_latest(str(crashed), config)
    assert a_step == b_step == 40, outcomes
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not [n for n in os.listdir(crashed / "checkpoints") if "tmp" in n]
    steps = [row["step"] for row in plotting.read_metrics(crashed / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == 40, outcomes


def test_a_second_sigterm_ends_the_process_at_once():
    code = ("import signal, sys, time; sys.path.insert(0, sys.argv[1])\n"
            "from jaxdiff.common.preemption import PreemptionGuard\n"
            "with PreemptionGuard() as g:\n"
            "    print('ready', flush=True)\n"
            "    while not g.signum:\n"
            "        time.sleep(0.05)\n"
            "    print('first', flush=True)\n"
            "    time.sleep(60)  # still working when the second one comes\n")
    proc = subprocess.Popen([sys.executable, "-c", code, ROOT], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline().strip() == "first"  # the first one only asks to stop
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == -signal.SIGTERM


# ----------------------------------------------------------------------------- signals in sample / eval


@pytest.fixture
def trained_workdir(trained_tiny, tmp_path):
    return shutil.copytree(trained_tiny[0], tmp_path / "run")  # the suite's TINY run (tests/conftest.py)


def read_until(stream, marker: str) -> str:
    """What ``stream`` prints up to and including ``marker`` (or to its end)."""
    text = ""
    while marker not in text:
        char = stream.read(1)
        if not char:
            break
        text += char
    return text


@pytest.mark.parametrize("mode,flags,marker,written", [
    ("sample", ["--config.sampling.num_samples=100000", "--config.sampling.batch_size=4"], "sample:", "sample_*"),
    ("eval", ["--config.eval.num_samples=100000", "--config.eval.batch_size=4", "--config.eval.bpd=False"],
     "classifier:", "eval/metrics*.json"),
])
def test_sigterm_stops_sample_and_eval_between_chunks_writing_nothing(trained_workdir, mode, flags, marker, written):
    """SIGTERM once the long part shows its bar (sampling chunks; eval: already while the feature
    classifier trains): the process stops at the next update with exit 128 + 15 and writes nothing."""
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), *TINY, *flags, f"--mode={mode}",
                             f"--workdir={trained_workdir}"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen = read_until(proc.stderr, marker)
    assert marker in seen, seen[-2000:]
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, (seen + err)[-2000:]
    assert time.monotonic() - sent < 60  # one chunk or step away, not the rest of the work
    assert err.strip().splitlines()[-1].startswith(f"stopped by signal {int(signal.SIGTERM)} during")
    assert not list(trained_workdir.glob(written))
    assert sorted(os.listdir(trained_workdir / "checkpoints")) == ["3", "6"]


# ----------------------------------------------------------------------------- signals in training grids


def test_a_sampler_in_pieces_computes_what_one_scan_computes():
    """The pieces signal checks run between give the same samples and trajectory, bit for bit."""
    tables = schedules.make_tables(schedules.make_betas("linear", 60))
    apply_fn = lambda p, x, t, y: 0.3 * x + 0.01 * t[:, None, None, None] * p  # noqa: E731
    for name in ("ddpm", "ddim", "dpm_solver++"):
        sampler = sampler_registry.make_sampler(families.ddpm(tables), name, 0 if name == "ddpm" else 20, "auto")
        outs = []
        for segments in (0, 7):
            gen = generation.make_chunk_generator(apply_fn, sampler, (4, 4, 1), 3, 1.0, None, 5, 2,
                                                  segment_steps=segments)
            outs.append(gen(jnp.float32(0.5), jax.random.key(3), None, should_stop=lambda: None))
        for a, b in zip(*outs):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_signal_during_a_training_grid_saves_and_stops_within_the_grid(tmp_path):
    """SIGTERM while a (long) sample grid is being drawn: the grid stops after the current piece,
    the step's state is saved, training raises Preempted, and the resumed run ends as always."""
    config = tiny_config(**{"diffusion.num_timesteps": 400, "training.num_train_steps": 6,
                            "training.checkpoint_every": 4, "training.sample_every": 3,
                            "sampling.num_samples": 16, "sampling.grid_sampler": "same"})  # DDPM, 400 steps
    calls = []
    real = generation.make_chunk_generator

    def counting(*args, **kwargs):
        gen = real(*args, **kwargs)

        def wrapped(params, key, y, should_stop=None):
            def check():
                calls.append(1)
                if len(calls) == 3:
                    signal.raise_signal(signal.SIGTERM)  # arrives in the middle of the grid of step 3
                should_stop()
            return gen(params, key, y, check if should_stop else None)
        return wrapped

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(generation, "make_chunk_generator", counting)
        with pytest.raises(train_loop.Preempted) as e:
            train_loop.train(config, str(tmp_path), progress=False)
    assert e.value.step == 3 and e.value.signum == signal.SIGTERM
    assert len(calls) == 3  # stopped at the next piece, not after the 16 pieces of the grid
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"] and not (tmp_path / "samples_0000003.png").exists()
    train_loop.train(config, str(tmp_path), progress=False)
    assert (tmp_path / "samples_0000006.png").exists()


def test_a_signal_during_the_training_fid_saves_and_stops(tmp_path, monkeypatch):
    """The training-time FID polls the same check (between and inside its chunks): a signal there
    checkpoints the step and raises Preempted; no FID row is logged for it."""
    polled = []

    def make_hook(config, workdir, experiment, train_source=None, start_step=0, log=print):
        def hook(step, params, progress=None, should_stop=None):
            signal.raise_signal(signal.SIGTERM)  # arrives while the FID samples
            polled.append(step)
            should_stop()  # what generate_uint8 does every few sampler steps
            raise AssertionError("should_stop did not stop")
        return hook

    monkeypatch.setattr(train_loop.eval_mode, "make_train_fid_hook", make_hook)
    config = tiny_config(**{"training.num_train_steps": 8, "training.eval_every": 5,
                            "training.checkpoint_every": 4})
    with pytest.raises(train_loop.Preempted) as e:
        train_loop.train(config, str(tmp_path), progress=False)
    assert e.value.step == 5 and polled == [5]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "5"]
