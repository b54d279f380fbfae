"""Training: the loss of a tiny model falls, EMA maths, and resume is bit-identical."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import data
from jaxdiff.drivers import data_config, train_loop
from jaxdiff.drivers.experiment import Experiment
from jaxdiff.training import checkpoint, optim
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def trainer():
    config = tiny_config(**{"model.class_conditional": True})
    return Experiment(config, channels=1, num_classes=10)


def train_losses(trainer, num_steps: int = 60):
    """``(state, losses)`` after ``num_steps`` steps of ``trainer`` on its digits from a fresh state."""
    config = trainer.config
    stream = data.batch_stream(data_config.load_source(config.data), config.seed, 0, config.training.batch_size)
    state, losses = trainer.init(), []
    for _ in range(num_steps):
        state, metrics = trainer.step(state, next(stream))
        losses.append(float(metrics["loss"]))
    return state, losses


def test_loss_falls_on_digits(trainer):
    state, losses = train_losses(trainer)
    assert int(state.step) == 60
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10]), losses
    # EMA moved towards the parameters but is not equal to them.
    diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), state.params, state.ema_params)
    assert 0 < max(jax.tree.leaves(diff))


@pytest.mark.parametrize("family", ["vp", "edm", "flow"])
def test_loss_falls_in_every_family(family):
    config = tiny_config(**{"model.class_conditional": True, "diffusion.family": family})
    _, losses = train_losses(Experiment(config, channels=1, num_classes=10))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10]), losses


def test_ema_update_and_warmup():
    ema, params = {"w": jnp.zeros(3)}, {"w": jnp.ones(3)}
    out = optim.ema_update(ema, params, jnp.float32(0.75))
    np.testing.assert_allclose(out["w"], 0.25)
    assert float(optim.ema_decay(jnp.int32(0), 0.9999, True)) == pytest.approx(0.1)
    assert float(optim.ema_decay(jnp.int32(10**6), 0.9999, True)) == pytest.approx(0.9999)
    assert float(optim.ema_decay(jnp.int32(0), 0.9999, False)) == pytest.approx(0.9999)


def test_warmup_schedule_is_ddpm_linear():
    lr = optim.learning_rate_schedule(1.0, warmup_steps=10)
    assert [float(lr(n)) for n in (0, 5, 10, 50)] == pytest.approx([0.0, 0.5, 1.0, 1.0])


def test_decay_schedules_after_the_warmup():
    cosine = optim.learning_rate_schedule(2.0, 10, decay="cosine", decay_steps=100)
    assert [float(cosine(n)) for n in (5, 10, 60, 110, 300)] == pytest.approx([1.0, 2.0, 1.0, 0.0, 0.0], abs=1e-6)
    inverse_sqrt = optim.learning_rate_schedule(2.0, 10, decay="inverse_sqrt", decay_steps=50)
    assert [float(inverse_sqrt(n)) for n in (5, 30, 60, 210)] == pytest.approx([1.0, 2.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="decay_steps > 0"):
        optim.learning_rate_schedule(2.0, 10, decay="inverse_sqrt")


def _final_params(workdir, config):
    trainer = Experiment(config, channels=1, num_classes=10)
    mngr = checkpoint.manager(workdir, read_only=True)
    state, meta = checkpoint.restore(mngr, trainer.abstract_state())
    mngr.close()
    return state, meta


@pytest.mark.compat
@pytest.mark.parametrize("family", ["ddpm", "flow"])  # every family and backbone: tests/test_modes.py
def test_resume_is_bit_identical(tmp_path, family):
    base = {"model.class_conditional": True, "training.checkpoint_every": 7, "diffusion.family": family}
    if family == "flow":  # with post-hoc EMA profiles, snapshotted every 4 steps
        base.update({"training.ema_stds": (0.05, 0.1), "training.ema_snapshot_every": 4})
    full = str(tmp_path / "full")
    train_loop.train(tiny_config(**base, **{"training.num_train_steps": 16}), full, progress=False)
    split = str(tmp_path / "split")
    train_loop.train(tiny_config(**base, **{"training.num_train_steps": 9}), split, progress=False)
    # A run "killed" after step 9 leaves metric lines past its last checkpoint (step 9 here is the
    # final checkpoint of the first launch); the resumed launch continues from the checkpoint.
    resumed = train_loop.train(tiny_config(**base, **{"training.num_train_steps": 16}), split, progress=False)
    assert int(resumed.step) == 16
    a, meta = _final_params(full, tiny_config(**base))
    b, _ = _final_params(split, tiny_config(**base))
    assert meta["config"]["diffusion"]["family"] == family
    assert meta["config"]["model"]["downsample_padding"] == "same"  # auto, recorded as what it meant
    assert int(a.step) == int(b.step) == 16
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert meta["num_classes"] == 10 and meta["channels"] == 1
    steps = [json.loads(line)["step"] for line in open(os.path.join(split, "metrics.jsonl"))]
    assert steps == sorted(set(steps)) and steps[-1] == 16
    assert sorted(os.listdir(os.path.join(full, "checkpoints"))) == ["14", "16", "7"]
    if family == "flow":
        assert len(a.ema_profiles) == 2
        for run in (full, split):
            assert sorted(os.listdir(os.path.join(run, "ema_snapshots"))) == ["12", "16", "4", "8"]


def test_restore_errors(tmp_path):
    trainer = Experiment(tiny_config(), channels=1, num_classes=10)
    mngr = checkpoint.manager(str(tmp_path))
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        checkpoint.restore(mngr, trainer.abstract_state())
    state = trainer.init()
    checkpoint.save(mngr, 3, state, trainer.meta())
    mngr.wait_until_finished()
    # Damage the saved state's metadata: restoring must fail with a message that says what to do.
    # (Damaged array data is checked through main.py in tests/test_cli.py, in a subprocess, because
    # Orbax leaves the failed reads running in background threads.)
    (tmp_path / "checkpoints" / "3" / "state" / "_METADATA").write_bytes(b"garbage")
    mngr.close()
    reader = checkpoint.manager(str(tmp_path), read_only=True)
    with pytest.raises(checkpoint.CheckpointError, match="cannot be restored.*delete that step"):
        checkpoint.restore(reader, trainer.abstract_state())
    reader.close()


def test_max_minutes_ends_the_run_with_a_checkpoint_and_a_grid(tmp_path):
    """A wall-clock budget already spent after step 1 makes step 1 the last: it is checkpointed and
    gets the final grid; the run resumed without a budget continues from it to num_train_steps."""
    base = {"training.num_train_steps": 5, "training.checkpoint_every": 100, "training.sample_every": 0}
    workdir = str(tmp_path / "run")
    state = train_loop.train(tiny_config(**base, **{"training.max_minutes": 1e-9}), workdir, progress=False)
    assert int(state.step) == 1
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1"]
    assert os.path.exists(os.path.join(workdir, "samples_0000001.png"))
    state = train_loop.train(tiny_config(**base), workdir, progress=False)
    assert int(state.step) == 5
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "5"]
    assert train_loop.wall_clock_limit(0.0, 10)(10**9) is False
