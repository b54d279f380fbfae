"""What jaxdiff 0.1 (the single-module layout) wrote still works: its checkpoint restores and samples
the same images, and today's code trains the same losses (tests/fixtures/main_v0.1/README.md)."""

import json
import os
import shutil

import numpy as np
import pytest

from jaxdiff.drivers import sample_mode, train_loop
from tests.conftest import ROOT, tiny_config

pytestmark = pytest.mark.compat  # what differs between JAX versions: run on the oldest pinned stack too

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "main_v0.1")


def v01_config(**overrides):
    """The flags the fixture was written with (its README)."""
    return tiny_config(**{"model.class_conditional": True, "diffusion.num_timesteps": 20,
                          "training.num_train_steps": 4, "training.log_every": 2, "training.checkpoint_every": 4,
                          "sampling.num_samples": 10, "sampling.trajectory_every": 0,
                          "sampling.batch_size": 256, "training.warmup_steps": 100, **overrides})


def test_v01_checkpoint_restores_and_samples_the_same_images(tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(FIXTURE, workdir)
    info = sample_mode.run_sample_mode(v01_config(), str(workdir))
    assert info["checkpoint_step"] == 4
    got = np.load(workdir / info["files"]["npz"])
    want = np.load(os.path.join(FIXTURE, "samples_ddpm20_0000004.npz"))
    np.testing.assert_array_equal(got["labels"], want["labels"])
    diff = np.abs(got["images"].astype(int) - want["images"].astype(int))
    assert diff.max() <= 1 and np.mean(diff == 0) > 0.99, diff.max()  # exact on the pinned JAX


def test_training_reproduces_the_v01_losses(tmp_path):
    with open(os.path.join(FIXTURE, "metrics.jsonl")) as f:
        want = [json.loads(line) for line in f]
    # jaxdiff 0.1 padded its stride-2 convolutions (1, 1): the same network trains the same losses
    train_loop.train(v01_config(**{"model.downsample_padding": "symmetric"}), str(tmp_path / "run"), progress=False)
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        got = [json.loads(line) for line in f]
    assert [r["step"] for r in got] == [r["step"] for r in want] == [2, 4]
    for g, w in zip(got, want):
        for key in ("loss", "grad_norm", "learning_rate"):
            assert g[key] == pytest.approx(w[key], rel=1e-5), (key, g, w)
