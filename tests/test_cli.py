"""main.py end to end: a smoke run that writes a checkpoint and PNGs, sample mode, bad input."""

import os
import shutil

import numpy as np
import pytest

from jaxdiff.drivers import config_checks as config_lib
from tests.conftest import TINY, run_main, tiny_config

def test_train_then_sample(trained_tiny, tmp_path):
    trained, r = trained_tiny  # main.py with TINY (tests/conftest.py), run once for the suite
    workdir = str(shutil.copytree(trained, tmp_path / "run"))
    files = set(os.listdir(workdir))
    assert {"checkpoints", "metrics.jsonl", "loss.png", "samples_0000006.png"} <= files
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
    assert "train: 100%" in r.stderr  # the progress bar
    r = run_main(*TINY, f"--workdir={workdir}", "--mode=sample")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "read only" not in r.stderr and "read_only" not in r.stderr  # no Orbax warnings for a read
    tag = next(n for n in os.listdir(workdir) if n.endswith(".npz"))[len("sample_"):-len(".npz")]
    assert tag.startswith("ddpm20_0000006_seed0_n20_")  # sampler, steps, checkpoint, seed, count, digest
    out = np.load(os.path.join(workdir, f"sample_{tag}.npz"))
    assert out["images"].shape == (20, 8, 8, 1) and out["images"].dtype == np.uint8
    assert list(out["labels"][:12]) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    for name in (f"trajectory_{tag}.png", f"sample_{tag}_classes.png"):
        assert os.path.exists(os.path.join(workdir, name))
    # a --config flag that contradicts the checkpoint's process: one line, nothing written
    before = sorted(os.listdir(workdir))
    r = run_main(*TINY, f"--workdir={workdir}", "--mode=sample", "--config.diffusion.family=edm")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        "error: --config.diffusion.family='edm' but the checkpoint has diffusion.family='ddpm': drop the flag "
        "(that value is used) or use another --workdir")
    assert sorted(os.listdir(workdir)) == before
    # Damaged array data in the latest checkpoint: a clear error line and exit 2. (TensorStore's
    # callback threads may still print tracebacks for the reads Orbax abandoned.)
    for root, _, names in os.walk(os.path.join(workdir, "checkpoints", "6", "state")):
        for name in names:
            if not name.startswith("_"):
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"garbage")
    r = run_main(*TINY, f"--workdir={workdir}", "--mode=sample")
    assert r.returncode == 2
    assert "error: checkpoint 6 in" in r.stderr and "cannot be restored" in r.stderr
    assert "delete that step's folder" in r.stderr


@pytest.mark.parametrize("override,message", [
    ("--config.data.dataset=imagenet_typo", "imagenet_typo"),
    ("--config.data.image_size=9", "data.image_size=9, model.ch_mult=(1, 2): image size 9 cannot be downsampled"),
    ("--config.training.batch_size=0", "training.batch_size must be a positive integer"),
    ("--config.training.no_such_key=1", "no_such_key"),
])
def test_bad_input_is_one_clear_error(tmp_path, override, message):
    r = run_main(*TINY, override, f"--workdir={tmp_path / 'w'}")
    assert r.returncode != 0
    assert message in r.stderr
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_sample_without_checkpoint_and_unwritable_workdir(tmp_path):
    r = run_main(*TINY, f"--workdir={tmp_path}", "--mode=sample")
    assert r.returncode == 2 and "no checkpoint" in r.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(config_lib.ConfigError, match="not writable"):
        config_lib.check_workdir(str(blocker / "sub"))


@pytest.mark.parametrize("field,value,message", [
    ("training.num_train_steps", -5, "training.num_train_steps must be a positive integer"),
    ("diffusion.schedule", "quadratic", "diffusion.schedule='quadratic' is not one of"),
    ("diffusion.target", "score", "diffusion.target='score'"),
    ("sampling.variance", "learned", "sampling.variance='learned'"),
])
def test_validate_names_the_field(field, value, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.validate(tiny_config(**{field: value}))
