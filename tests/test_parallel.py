"""Scale-out: 8 simulated devices == 1 device, FSDP, per-device noise, sharded sampling, a real
2-process jax.distributed job, bf16, gradient accumulation, remat, and preemption (SIGTERM) with an
exact resume.

Multi-device runs happen in subprocesses (XLA_FLAGS must be set before JAX starts; this process
keeps its single CPU device): tests/parallel_worker.py (8 devices) and tests/multihost_worker.py.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxdiff import data
from jaxdiff.common import parallel, preemption
from jaxdiff.drivers import config_checks as config_lib, data_config, model_config, train_loop
from jaxdiff.drivers.experiment import Experiment
from jaxdiff.training import checkpoint
from tests.conftest import ROOT
from tests.scale_common import main_flags, scale_config

TOL = 2e-6  # |param difference| after 3 steps of lr 2e-3 (measured ~3e-8); a wrong noise draw or
# a wrongly split batch changes parameters by ~lr = 2e-3


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=ROOT, **extra)
    return env


def _wait_for(predicate, proc_list, timeout=300.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if any(p.poll() is not None for p in proc_list):
            outs = [p.communicate()[1][-3000:] for p in proc_list if p.poll() is not None]
            raise AssertionError(f"a subprocess ended early: {outs}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the subprocess")
        time.sleep(0.05)


def _metrics_lines(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    return open(path).read().splitlines() if os.path.exists(path) else []


def _leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(state)]


# ----------------------------------------------------------------------------- 8 simulated devices

@pytest.fixture(scope="module")
def eight():
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "parallel_worker.py")], cwd=ROOT,
                       env=_env(XLA_FLAGS=flags.strip()), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULTS ")][-1]
    results = json.loads(line[len("RESULTS "):])
    assert results["device_count"] == 8
    return results


@pytest.mark.compat
def test_eight_devices_match_one_device(eight):
    """Data parallel over 8 devices, same global batch: same losses, gradients and parameters."""
    assert eight["replicated_8"]
    np.testing.assert_allclose(eight["loss_8"], eight["loss_1"], rtol=1e-6)
    np.testing.assert_allclose(eight["grad_norm_8"], eight["grad_norm_1"], rtol=1e-5)
    assert eight["param_diff_8"] < TOL and eight["ema_diff_8"] < TOL


@pytest.mark.compat
def test_fsdp_accumulation_remat_shard_state_and_match(eight):
    """All options at once on 8 devices: parallel.shard_params puts 1/8 of every big leaf (params,
    EMA, both Adam moments) on each device; grad_accum_steps=2 scans 2 micro-batches inside the step;
    model.remat recomputes res blocks. Losses, gradients and parameters equal plain 1-device training
    with the same global batch, i.e. k accumulated micro-batches == one k-times-larger batch and remat
    leaves the gradients unchanged."""
    assert eight["fsdp_sharded_leaves"] > 0.3 * eight["fsdp_total_leaves"]
    assert eight["fsdp_shard_fraction"] == [0.125] * 5
    assert "P()" in eight["fsdp_opt_specs"] and any("'data'" in s for s in eight["fsdp_opt_specs"])
    assert eight["fsdp_step_has_loop"]
    np.testing.assert_allclose(eight["loss_fsdp"], eight["loss_1"], rtol=1e-6)
    np.testing.assert_allclose(eight["grad_norm_fsdp"], eight["grad_norm_1"], rtol=1e-5)
    assert eight["param_diff_fsdp"] < TOL


@pytest.mark.compat
def test_devices_draw_different_noise(eight):
    """The loss noise of one step, sharded over 8 devices: every device's rows differ from every
    other's, and together they are exactly the 1-device draw."""
    assert eight["noise_shards"] == 8
    assert eight["noise_shards_distinct"]
    assert eight["noise_equals_1dev"]


@pytest.mark.compat
def test_sharded_sampling_matches_one_device(eight):
    """10 samples over 8 devices (padded to 16) equal the same 10 sampled on one device."""
    assert eight["sample_shape"] == [10, 8, 8, 1] and eight["sample_devices"] == 8
    assert eight["sample_diff"] < 1e-5


@pytest.mark.compat
def test_edit_mode_shards_over_devices_and_matches_one_device(eight):
    """DDNM inpainting of 5 inputs over 8 devices (padded to 8 rows) equals the 1-device run to one
    uint8 level."""
    assert eight["edit_devices"] == 8 and eight["edit_diff"] <= 1


@pytest.mark.compat
def test_init_from_weights_shard_over_devices(eight):
    """model.init_from's diffusers weights placed with FSDP on 8 devices: sharded, and the same outputs."""
    assert eight["init_from_sharded_leaves"] > 10
    assert eight["init_from_diff"] < 1e-5


@pytest.mark.compat
def test_dit_and_autoencoder_shard_over_devices_and_match(eight):
    """DiT with FSDP (parallel.shard_params) on 8 devices and the autoencoder's step (FSDP too) train
    what they train on one device."""
    assert eight["dit_sharded_leaves"] > 5
    # DiT-XL/2 (its state built abstractly): FSDP shards > 99% of the bytes of params, EMA and Adam moments
    assert eight["xl_params"] == 674_834_720  # tests/test_dit.py: the paper's 675M less the frozen positions
    assert eight["xl_sharded_fraction"] > 0.99
    np.testing.assert_allclose(eight["dit_loss_fsdp"], eight["dit_loss_1"], rtol=1e-5)
    assert eight["dit_param_diff"] < TOL
    np.testing.assert_allclose(eight["ae_loss_8"], eight["ae_loss_1"], rtol=1e-5)
    assert eight["ae_param_diff"] < TOL


@pytest.mark.compat
def test_batch_that_does_not_divide_is_a_clear_error(eight):
    assert eight["errors"][0] == "training.batch_size=12 does not divide over 8 devices; use a multiple of 8"
    assert "grad_accum_steps=2 micro-batches over 8 devices; use a multiple of 16" in eight["errors"][1]


# ----------------------------------------------------------------------------- one device, in process

def _train_steps(trainer, state, steps):
    config = trainer.config
    stream = data.batch_stream(data_config.load_source(config.data), config.seed, 0, config.training.batch_size)
    losses = []
    for _ in range(steps):
        state, metrics = trainer.step(state, parallel.global_batch(next(stream), trainer.mesh))
        losses.append(float(metrics["loss"]))
    return state, losses


def test_remat_is_applied_and_keeps_less_for_backward():
    """model.remat wraps every res block in a remat (checkpoint) region, and the forward pass then keeps
    fewer residuals for the backward pass. (Equal gradients: the 8-device test trains with remat on.)"""
    from jax._src.ad_checkpoint import saved_residuals

    config = scale_config()
    plain = model_config.build_model(config, 1, 10)
    config.model.remat = True
    remat = model_config.build_model(config, 1, 10)
    x, t = jnp.zeros((4, 8, 8, 1)), jnp.array([0, 10, 20, 49])
    shapes = jax.eval_shape(lambda: plain.init(jax.random.key(0), x, t, t)["params"])
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)  # only traced, never run
    loss = lambda model: lambda p: jnp.sum(model.apply({"params": p}, x, t, t, train=True))  # noqa: E731
    jaxpr = str(jax.make_jaxpr(jax.grad(loss(remat)))(params))
    assert jaxpr.count("remat") == 8  # one remat region per res block: 2 down, 2 middle, 4 up
    assert "remat" not in str(jax.make_jaxpr(jax.grad(loss(plain)))(params))
    # Activations kept for the backward pass (parameters are kept by both).
    kept = lambda model: sum(a.size for a, why in saved_residuals(loss(model), params)  # noqa: E731
                             if "argument" not in why)
    assert kept(remat) < 0.6 * kept(plain)


def test_bfloat16_trains_with_float32_state():
    trainer = Experiment(scale_config(**{"training.dtype": "bfloat16", "training.adam_eps": 1e-8}),
                            channels=1, num_classes=10)
    state = trainer.init()
    assert {x.dtype for x in jax.tree.leaves((state.params, state.ema_params, state.opt_state))} <= {
        jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}
    batch = parallel.global_batch(next(data.batch_stream(data_config.load_source(trainer.config.data), 0, 0, 16)),
                                  trainer.mesh)
    hlo = trainer.step.lower(state, batch).as_text()
    assert "bf16" in hlo and "convolution" in hlo
    state, losses = _train_steps(trainer, state, 60)
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < 0.75 * np.mean(losses[:10]), losses  # fp32: ~0.6, bf16: ~0.61
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))


# ----------------------------------------------------------------------------- config and unit rules

def test_fsdp_rule():
    assert parallel._fsdp_spec((3, 3, 64, 128), 8, 1024) == P(None, None, None, "data")
    assert parallel._fsdp_spec((256, 64), 8, 1024) == P("data")
    assert parallel._fsdp_spec((3, 3, 7, 9), 8, 1) == P()  # nothing divides
    assert parallel._fsdp_spec((128,), 8, 1024) == P()  # too small
    assert parallel._fsdp_spec((4096,), 1, 1) == P()  # one device


@pytest.mark.parametrize("field,value,message", [
    ("training.dtype", "float16", "training.dtype='float16' is not one of float32, bfloat16"),
    ("training.grad_accum_steps", 3, "batch_size=16 does not split into training.grad_accum_steps=3"),
    ("training.grad_accum_steps", 0, "training.grad_accum_steps must be a positive integer"),
    ("parallel.num_devices", -1, "parallel.num_devices must be a non-negative integer"),
])
def test_validate_scale_fields(field, value, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.validate(scale_config(**{field: value}))


def test_distributed_off_unless_asked(monkeypatch):
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    assert parallel.initialize_distributed(False) is False
    assert parallel.process_batch_rows(parallel.make_mesh(1), 16) == (0, 1)


def test_preemption_guard_catches_sigint_and_restores_handlers():
    before = signal.getsignal(signal.SIGINT)
    with preemption.PreemptionGuard() as guard:
        assert not guard.should_stop(1)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # the handler runs at the next bytecode boundary
        assert guard.should_stop(2) and guard.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C interrupts at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGINT) is before


# ----------------------------------------------------------------------------- preemption and resume

def test_sigterm_checkpoints_and_resume_is_bit_identical(tmp_path):
    """main.py sent SIGTERM mid-run: exit 143 after a checkpoint at the step it stopped; the same
    command then finishes, bit-identical to an uninterrupted run."""
    config = scale_config(**{"training.num_train_steps": 150, "training.log_every": 5})
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), *main_flags(config), f"--workdir={tmp_path / 'a'}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _metrics_lines(tmp_path / "a"), [proc])
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    (stop,) = (int(s) for s in os.listdir(tmp_path / "a" / "checkpoints"))
    assert 5 <= stop < 150 and f"preempted by signal 15 at step {stop}" in err
    assert json.loads(_metrics_lines(tmp_path / "a")[-1])["step"] == stop

    trainer = Experiment(config, channels=1, num_classes=10)
    state, meta = checkpoint.restore(checkpoint.manager(str(tmp_path / "a"), read_only=True),
                                     trainer.abstract_state())
    assert int(state.step) == stop
    ran = json.loads(config.to_json())
    ran["model"]["downsample_padding"] = "same"  # auto, recorded as what it means for a new model
    assert meta["config"] == ran  # the subprocess ran exactly `config`

    r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed, _ = checkpoint.restore(checkpoint.manager(str(tmp_path / "a"), read_only=True),
                                    trainer.abstract_state(), 150)
    full = train_loop.train(config, str(tmp_path / "b"), progress=False)
    assert int(resumed.step) == int(full.step) == 150
    for x, y in zip(_leaves(full), _leaves(resumed)):
        np.testing.assert_array_equal(y, x)
    steps = [json.loads(line)["step"] for line in _metrics_lines(tmp_path / "a")]
    assert steps == sorted(set(steps)) and steps[-1] == 150


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_agree_and_stop_together(tmp_path):
    """Two processes (2 CPU devices each) joined by jax.distributed train on a 4-device mesh, each
    feeding its half of every global batch. SIGTERM to process 1 only: both stop after the same step
    with one checkpoint, hold identical parameters, and match 1-device training with the same batches."""
    port, workdir = _free_port(), tmp_path / "run"
    procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "multihost_worker.py"), str(i),
                               str(port), str(workdir), str(tmp_path / f"p{i}.npz"), "3000"],
                              cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        _wait_for(lambda: _metrics_lines(workdir), procs)
        procs[1].send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    p0, p1 = (np.load(tmp_path / f"p{i}.npz") for i in range(2))
    stop = int(p0["step"])
    assert int(p1["step"]) == stop == int(p0["preempted_at"]) == int(p1["preempted_at"]) >= 1
    assert os.listdir(workdir / "checkpoints") == [str(stop)]
    names = [k for k in p0.files if k[1:].isdigit()]
    for k in names:
        np.testing.assert_array_equal(p0[k], p1[k])

    config = scale_config(**{"training.num_train_steps": stop})
    trainer = Experiment(config, channels=1, num_classes=10)
    state, _ = _train_steps(trainer, trainer.init(), stop)
    ref = _leaves(state.params)
    assert len(ref) == len(names)
    for i, x in enumerate(ref):
        np.testing.assert_allclose(p0[f"p{i}"], x, atol=TOL, rtol=0)
    restored, _ = checkpoint.restore(checkpoint.manager(str(workdir), read_only=True), trainer.abstract_state())
    for i, x in enumerate(_leaves(restored.params)):  # the 4-device checkpoint restores on 1 device
        np.testing.assert_array_equal(x, p0[f"p{i}"])
    # Sampling sharded over both processes (6 samples padded to 8 rows): both got all 6, the same.
    # (That sharded sampling equals 1-device sampling is checked on 8 devices above.)
    assert p0["samples"].shape == (6, 8, 8, 1) and np.all(np.isfinite(p0["samples"]))
    np.testing.assert_array_equal(p0["samples"], p1["samples"])
