"""--mode=edit in-process on a class-conditional checkpoint (untrained parameters: the plumbing, not
the quality, is under test; the methods' maths is checked against closed forms in test_editing.py):
every task writes its figure, one PNG per result and the .npz; what each method guarantees whatever
the network (RePaint and DDNM keep the known pixels, DDNM's results reproduce the measurement,
SDEdit at strength 0 returns the input) holds; bad input fails before anything is written."""

import json
import os
import signal

import numpy as np
import pytest
from PIL import Image

from jaxdiff.common import plotting, preemption
from jaxdiff.drivers import config_checks, edit_mode
from jaxdiff.drivers.eval_features import load_splits
from jaxdiff.drivers.experiment import Experiment
from jaxdiff.training import checkpoint
from tests.conftest import tiny_config


def _config(**overrides):
    base = {"model.class_conditional": True, "sampling.sampler": "ddim", "sampling.num_steps": 4,
            "sampling.guidance_scale": 2.0, "edit.num_images": 3, "edit.samples_per_image": 2,
            "edit.jump_length": 2, "edit.jump_n_sample": 2, "edit.interpolation_points": 3}
    return tiny_config(**{**base, **overrides})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("edit"))
    experiment = Experiment(_config(), channels=1, num_classes=10)
    mngr = checkpoint.manager(path)
    checkpoint.save(mngr, 4, experiment.init(), experiment.meta())
    mngr.wait_until_finished()
    mngr.close()
    return path


@pytest.fixture(scope="module")
def inputs():
    _, test, _ = load_splits(_config().data)  # digits: the held-out part of its one split
    images, labels = test[np.arange(3)]
    return images, labels


def _outputs(workdir, info):
    out = np.load(os.path.join(workdir, info["files"]["npz"]))
    assert os.path.getsize(os.path.join(workdir, info["files"]["grid"])) > 0
    pngs = sorted(os.listdir(os.path.join(workdir, info["files"]["results"])))
    assert pngs == [f"{i:06d}.png" for i in range(len(out["results"]))]
    with Image.open(os.path.join(workdir, info["files"]["results"], pngs[-1])) as png:
        np.testing.assert_array_equal(np.asarray(png), out["results"][-1, ..., 0])
    assert json.loads(str(out["meta"]))["task"] == info["task"]
    return out


def test_inpainting_by_repaint_and_ddnm_keeps_the_known_pixels(workdir, inputs):
    for method in ("repaint", "ddnm"):
        info = edit_mode.run_edit_mode(_config(**{"edit.task": "inpaint", "edit.method": method,
                                                  "edit.mask": "box:2,2,4,3"}), workdir)
        out = _outputs(workdir, info)
        known = out["known"][..., 0] > 0
        assert out["results"].shape == (6, 8, 8, 1) and known.sum() == 64 - 12
        assert list(out["labels"]) == list(inputs[1])  # the dataset's labels condition the model
        expected = np.repeat(inputs[0], 2, 0)
        assert np.abs(out["results"][:, known].astype(int) - expected[:, known].astype(int)).max() <= 1, method
        assert info["method"] == method and info["mask"] == "box:2,2,4,3"


def test_restoration_by_ddnm_reproduces_the_measurement_and_dps_runs_with_noise(workdir, inputs):
    info = edit_mode.run_edit_mode(_config(**{"edit.task": "restore", "edit.operator": "super_resolution",
                                              "edit.operator_scale": 2.0}), workdir)
    out = _outputs(workdir, info)
    blocks = lambda u8: (u8.astype(np.float64) / 127.5 - 1).reshape(-1, 4, 2, 4, 2)  # noqa: E731
    unclipped = ((out["results"] > 0) & (out["results"] < 255)).reshape(-1, 4, 2, 4, 2).all((2, 4))
    error = np.abs(blocks(out["results"]).mean((2, 4)) - np.repeat(blocks(inputs[0]).mean((2, 4)), 2, 0))
    assert unclipped.sum() >= 10 and error[unclipped].max() < 0.01  # saving clips the others to [-1, 1]
    assert info["method"] == "ddnm" and info["operator"] == "super-resolution x2"
    np.testing.assert_array_equal(out["degraded"].shape, (3, 8, 8, 1))  # shown as A^+ y
    info = edit_mode.run_edit_mode(_config(**{"edit.task": "restore", "edit.operator": "deblur_gaussian",
                                              "edit.measurement_noise": 0.05, "edit.dps_scale": 0.5}), workdir)
    assert info["method"] == "dps" and _outputs(workdir, info)["results"].shape == (6, 8, 8, 1)


def test_sdedit_at_strength_0_returns_the_input(workdir, inputs):
    info = edit_mode.run_edit_mode(_config(**{"edit.task": "sdedit", "edit.strength": 0.0}), workdir)
    np.testing.assert_array_equal(_outputs(workdir, info)["results"], np.repeat(inputs[0], 2, 0))
    info = edit_mode.run_edit_mode(_config(**{"edit.task": "sdedit", "edit.strength": 0.5}), workdir)
    assert info["strength"] == 0.5 and info["psnr_to_input_db"] < 100


def test_inversion_and_interpolation_from_a_folder_an_npz_and_noise(workdir, inputs, tmp_path):
    folder = tmp_path / "pngs"
    plotting.save_image_folder(inputs[0] / 127.5 - 1, folder)
    info = edit_mode.run_edit_mode(_config(**{"edit.task": "invert", "edit.input": str(folder),
                                              "edit.labels": "none", "sampling.guidance_scale": 1.0}), workdir)
    out = _outputs(workdir, info)
    np.testing.assert_array_equal(out["inputs"], inputs[0])
    assert out["noise"].shape == (3, 8, 8, 1) and info["reconstruction_rms"] >= 0 and info["labels"] is None
    np.savez(tmp_path / "in.npz", images=inputs[0][..., 0])  # [N, H, W] is read as one channel
    for source in (str(tmp_path / "in.npz"), "noise"):
        info = edit_mode.run_edit_mode(_config(**{"edit.task": "interpolate", "edit.input": source,
                                                  "edit.num_images": 2}), workdir)
        assert _outputs(workdir, info)["results"].shape == (3, 8, 8, 1)  # one pair, three points


def _bad_files(tmp_path):
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(tmp_path / "small.png")
    os.makedirs(tmp_path / "wrong_size", exist_ok=True)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "wrong_size" / "a.png")
    np.savez(tmp_path / "rgb.npz", images=np.zeros((3, 8, 8, 3), np.uint8))
    np.save(tmp_path / "float.npy", np.zeros((3, 8, 8, 1), np.float32))


@pytest.mark.parametrize("overrides,message", [
    ({"edit.task": "paint"}, "edit.task='paint' is not one of"),
    ({"edit.task": "sdedit", "edit.method": "ddnm"}, "does not fit edit.task='sdedit'"),
    ({"edit.task": "restore", "edit.method": "repaint"}, "does not fit edit.task='restore'"),
    ({"edit.strength": 1.5}, r"edit.strength must be a number in \[0.0, 1.0\]"),
    ({"edit.task": "restore", "edit.method": "ddnm", "edit.measurement_noise": 0.1}, "noiseless"),
    ({"edit.task": "restore", "edit.operator": "colorization"}, "colorization needs colour images"),
    ({"edit.task": "restore", "edit.operator_scale": 3.0}, "divisible by 3"),
    ({"edit.mask": "box:9,0,2,2"}, "outside the 8x8 images"),
    ({"edit.mask": "SMALL"}, "is 6x6, but the model's images are 8x8"),
    ({"edit.input": "WRONG_SIZE"}, "is 10x10, but the model's images are 8x8"),
    ({"edit.input": "RGB"}, r"images of \(8, 8, 3\), but the model's are \(8, 8, 1\)"),
    ({"edit.input": "FLOAT"}, "images are uint8"),
    ({"edit.input": "/no/such/folder"}, "not 'dataset' or an existing"),
    ({"edit.input": "noise"}, "is for edit.task=interpolate"),
    ({"edit.num_images": 100000}, "but the test split has"),
    ({"edit.labels": "12"}, "out of range: the model has 10 classes"),
    ({"sampling.sampler": "dpm_solver++"}, "needs a one-step sampler"),
    ({"edit.task": "invert", "sampling.num_steps": 1, "sampling.spacing": "trailing"}, "at least 2 sampler steps"),
    ({"edit.task": "invert", "sampling.num_steps": 1}, "evaluates only t=0"),
])
def test_bad_edit_input_is_one_line_and_writes_nothing(workdir, tmp_path, overrides, message):
    _bad_files(tmp_path)
    names = {"SMALL": "small.png", "WRONG_SIZE": "wrong_size", "RGB": "rgb.npz", "FLOAT": "float.npy"}
    overrides = {k: str(tmp_path / names[v]) if v in names else v for k, v in overrides.items()}
    before = set(os.listdir(workdir))
    with pytest.raises(ValueError, match=message) as info:
        edit_mode.run_edit_mode(_config(**overrides), workdir)
    assert "\n" not in str(info.value)
    assert set(os.listdir(workdir)) == before
    if "edit.task" in overrides and overrides["edit.task"] == "paint":
        assert isinstance(info.value, config_checks.ConfigError)


def test_a_signal_stops_edit_mode_after_the_chunk_writing_nothing(workdir, monkeypatch):
    real = edit_mode.EditRun.map

    def signalling(self, *args, **kwargs):
        signal.raise_signal(signal.SIGTERM)  # arrives while the first chunk runs
        return real(self, *args, **kwargs)

    monkeypatch.setattr(edit_mode.EditRun, "map", signalling)
    before = set(os.listdir(workdir))
    with pytest.raises(preemption.Interrupted) as info:
        edit_mode.run_edit_mode(_config(**{"edit.task": "sdedit", "edit.strength": 0.5}), workdir)
    assert info.value.signum == signal.SIGTERM and set(os.listdir(workdir)) == before
