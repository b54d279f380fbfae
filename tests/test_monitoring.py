"""What a person watching a run sees: TensorBoard events (scalars and sample grids) next to the
JSONL, a line saying from which checkpoint a run resumed, progress bars."""

import glob
import os
import shutil
import struct

from tensorboardX.proto import event_pb2

from jaxdiff.drivers import train_loop
from tests.conftest import TINY, run_main, tiny_config


def read_events(logdir):
    """``[(tag, step, kind)]`` of every summary value in the event files under ``logdir`` (TFRecord
    framing: length, its CRC, the Event proto, its CRC)."""
    out = []
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                out.append((value.tag, event.step, "image" if value.HasField("image") else "scalar"))
    return out


def test_tensorboard_has_the_scalars_and_the_grids(tmp_path):
    config = tiny_config(**{"training.num_train_steps": 10, "training.log_every": 5, "training.sample_every": 5})
    train_loop.train(config, str(tmp_path), progress=False)
    events = read_events(tmp_path / "tensorboard")
    assert {(t, s) for t, s, k in events if k == "scalar" and t == "train/loss"} == {("train/loss", 5),
                                                                                     ("train/loss", 10)}
    assert {"train/grad_norm", "train/learning_rate", "train/steps_per_sec"} <= {t for t, _, _ in events}
    assert {(t, s) for t, s, k in events if k == "image"} == {("samples", 5), ("samples", 10)}


def test_a_resumed_run_says_from_where(trained_tiny, tmp_path):
    trained, r = trained_tiny  # main.py with TINY (tests/conftest.py), run once for the suite
    assert "resuming" not in r.stdout
    tmp_path = shutil.copytree(trained, tmp_path / "run")
    r = run_main(*TINY, "--config.training.num_train_steps=9", f"--workdir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming from checkpoint 6 of 9 steps in {tmp_path}/checkpoints" in r.stdout
    r = run_main(*TINY, "--config.training.num_train_steps=9", f"--workdir={tmp_path}")
    assert "resuming from checkpoint 9 of 9 steps" in r.stdout and "training is complete" in r.stdout
