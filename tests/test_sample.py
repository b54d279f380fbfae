"""--mode=sample in-process: a class-conditional checkpoint sampled with DDIM and guidance writes the
grid, per-class grid, trajectory and .npz with metadata; bad labels fail before anything is written."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from jaxdiff.common import paths, plotting
from jaxdiff.drivers import config_checks as config_lib, sample_mode
from jaxdiff.drivers.experiment import Experiment
from jaxdiff.training import checkpoint
from tests.conftest import tiny_config


def _config(**overrides):
    base = {"model.class_conditional": True, "sampling.sampler": "ddim", "sampling.num_steps": 8,
            "sampling.guidance_scale": 3.0, "sampling.num_samples": 12, "sampling.batch_size": 8,
            "sampling.trajectory_every": 100}
    return tiny_config(**{**base, **overrides})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A checkpoint of freshly initialised (untrained) parameters: sampling needs no training."""
    path = str(tmp_path_factory.mktemp("sample"))
    trainer = Experiment(_config(), channels=1, num_classes=10)
    mngr = checkpoint.manager(path)
    checkpoint.save(mngr, 4, trainer.init(), trainer.meta())
    mngr.wait_until_finished()
    mngr.close()
    return path


def test_sample_mode_writes_grids_trajectory_and_npz(workdir):
    config = _config(**{"sampling.labels": "3,7", "sampling.save_pngs": True})
    info = sample_mode.run_sample_mode(config, workdir)
    digest = paths.request_digest({"sampling": config.sampling.to_dict(), "seed": 0, "init_from": ""})
    tag = f"ddim8_w3_0000004_seed0_n12_{digest}"
    assert info["files"] == {"grid": f"sample_{tag}.png", "npz": f"sample_{tag}.npz",
                             "classes": f"sample_{tag}_classes.png", "trajectory": f"trajectory_{tag}.png",
                             "trajectory_gif": f"trajectory_{tag}.gif", "pngs": f"sample_{tag}"}
    for name in info["files"].values():
        assert name == f"sample_{tag}" or os.path.getsize(os.path.join(workdir, name)) > 0
    with Image.open(os.path.join(workdir, f"trajectory_{tag}.gif")) as gif:
        assert 2 <= gif.n_frames <= 9  # the 8 steps and the end (Pillow merges frames that are equal)
    out = np.load(os.path.join(workdir, f"sample_{tag}.npz"))
    assert out["images"].shape == (12, 8, 8, 1) and out["images"].dtype == np.uint8
    assert list(out["labels"]) == [3, 7] * 6
    pngs = sorted(os.listdir(os.path.join(workdir, f"sample_{tag}")))
    assert pngs == [f"{i:06d}.png" for i in range(12)]  # one PNG per sample, at the model's resolution
    for i in (0, 11):
        with Image.open(os.path.join(workdir, f"sample_{tag}", pngs[i])) as png:
            np.testing.assert_array_equal(np.asarray(png), out["images"][i, ..., 0])
    meta = json.loads(str(out["meta"]))
    assert meta["num_samples"] == 12 and meta["seed"] == 0 and meta["checkpoint_step"] == 4
    assert meta["sampler"] == "ddim" and meta["num_steps"] == 8 and meta["guidance_scale"] == 3.0
    assert meta["chunk_size"] == 8 and len(meta["timesteps"]) == 8
    # Short samplers still get about ten trajectory frames (every step here, plus the end).
    assert sample_mode.trajectory_stride(8, 100) == 1 and sample_mode.trajectory_stride(1000, 100) == 100


def test_class_grid_has_one_row_per_class(tmp_path):
    images = np.linspace(-1, 1, 7 * 4 * 4).reshape(7, 4, 4, 1)
    grid = plotting.save_class_grid(images, np.array([2, 0, 2, 2, 0, 5, 2]), str(tmp_path / "c.png"), per_class=3)
    assert grid.shape == (3 * 5 + 1, 3 * 5 + 1, 1)  # rows: classes 0, 2, 5; columns: up to 3 each
    assert (grid[1 + 2 * 5:, 1 + 5:] == 255).all()  # class 5 has one image: the rest of its row is blank
    assert os.path.getsize(tmp_path / "c.png") > 0


@pytest.mark.parametrize("overrides,error,message", [
    ({"sampling.labels": "12"}, ValueError, "out of range: the model has 10 classes"),
    ({"sampling.num_steps": 51}, config_lib.ConfigError, "at most diffusion.num_timesteps=50"),
    ({"sampling.sampler": "plms"}, config_lib.ConfigError, "sampling.sampler='plms'"),
    ({"model.class_conditional": False}, config_lib.ConfigError, "guidance_scale=3.0 needs a class-conditional"),
])
def test_bad_sampling_input_writes_nothing(workdir, overrides, error, message):
    before = set(os.listdir(workdir))
    with pytest.raises(error, match=message):
        sample_mode.run_sample_mode(_config(**overrides), workdir)
    assert set(os.listdir(workdir)) == before
