"""Post-hoc EMA (EDM2): the power-function profile maths against float64 NumPy quadrature and closed
forms, the tracked EMA of the train step against its profile, and the snapshots of a training run
reconstructed through the sample path."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxdiff.core import families
from jaxdiff.drivers import config_checks, train_loop, trained_model
from jaxdiff.training import checkpoint, posthoc_ema
from jaxdiff.training.state import init_train_state
from jaxdiff.training.step import make_train_step
from tests.conftest import tiny_config


@settings(deadline=None, max_examples=50)
@given(st.floats(0.0, 500.0))
def test_std_and_exponent_are_inverse(gamma):
    std = posthoc_ema.exponent_to_std(gamma)
    assert 0 < std <= posthoc_ema.MAX_STD
    np.testing.assert_allclose(posthoc_ema.std_to_exponent(std), gamma, rtol=1e-7, atol=1e-7)


def test_exponent_to_std_is_the_profile_width():
    """sigma_rel is the std of tau / t under the profile p_t(tau) = (g+1) tau^g / t^(g+1) (quadrature)."""
    tau = (np.arange(400_000) + 0.5) / 400_000  # midpoints of [0, 1] (t = 1)
    for gamma in (0.0, 1.5, 6.94, 16.97):
        p = (gamma + 1) * tau ** gamma / len(tau)
        mean = np.sum(p * tau)
        np.testing.assert_allclose(np.sqrt(np.sum(p * (tau - mean) ** 2)), posthoc_ema.exponent_to_std(gamma),
                                   rtol=1e-6)
    # EDM2's two tracked profiles
    np.testing.assert_allclose(posthoc_ema.std_to_exponent([0.05, 0.10]), [16.97, 6.94], atol=0.01)
    with pytest.raises(ValueError, match="relative std"):
        posthoc_ema.std_to_exponent(0.3)


def _profile(t, std, grid):
    gamma = posthoc_ema.std_to_exponent(std)
    return np.where(grid <= t, (gamma + 1) * grid ** gamma / t ** (gamma + 1), 0.0)


@pytest.mark.parametrize("t_a,std_a,t_b,std_b", [(100.0, 0.05, 100.0, 0.05), (60.0, 0.05, 100.0, 0.10),
                                                  (100.0, 0.15, 30.0, 0.05), (40.0, 0.28, 90.0, 0.1)])
def test_inner_product_matches_quadrature(t_a, std_a, t_b, std_b):
    grid = (np.arange(2_000_000) + 0.5) * (max(t_a, t_b) / 2_000_000)
    numeric = np.sum(_profile(t_a, std_a, grid) * _profile(t_b, std_b, grid)) * (grid[1] - grid[0])
    np.testing.assert_allclose(posthoc_ema.profile_inner_product(t_a, std_a, t_b, std_b), numeric, rtol=1e-4)


@pytest.mark.parametrize("std", [0.05, 0.10, 0.25])
def test_tracked_ema_weights_each_step_by_its_profile(std):
    """ema <- beta_n ema + (1 - beta_n) x_n over one-hot x_n gives step tau exactly int_{tau-1}^tau p_T."""
    steps = 300
    gamma = float(posthoc_ema.std_to_exponent(std))

    def update(ema, n):
        return posthoc_ema.power_ema_update(ema, jax.nn.one_hot(n, steps, dtype=jnp.float32), n, gamma), None

    weights, _ = jax.lax.scan(update, jnp.zeros(steps, jnp.float32), jnp.arange(steps))
    tau = np.arange(1, steps + 1, dtype=np.float64)
    expected = (tau ** (gamma + 1) - (tau - 1) ** (gamma + 1)) / steps ** (gamma + 1)
    np.testing.assert_allclose(np.asarray(weights), expected, atol=2e-6)
    np.testing.assert_allclose(float(np.sum(weights)), 1.0, rtol=1e-5)


def test_tracked_profile_stays_exact_over_a_million_steps():
    """The float32 update weights, chained in float64 (step tau keeps ``w_tau prod_{n > tau} (1 - w_n)``),
    give EDM2's profile to 1e-6 in L1 after 1e6 steps (``(1 - 1/n)^(gamma + 1)`` in float32: 1.2%)."""
    t, gamma = 10 ** 6, float(posthoc_ema.std_to_exponent(0.05))
    w = np.asarray(jax.jit(lambda s: posthoc_ema.power_ema_weight(s, gamma))(jnp.arange(t)), np.float64)
    n = np.arange(1, t + 1, dtype=np.float64)
    with np.errstate(divide="ignore"):  # n = 1: log1p(-1) = -inf, weight 1
        np.testing.assert_allclose(w, -np.expm1((gamma + 1) * np.log1p(-1 / n)), rtol=1e-6)
    later = np.append(np.cumsum(np.log1p(-w[:0:-1]))[::-1], 0.0)  # sum over n > tau of log(1 - w_n)
    exact = (n / t) ** (gamma + 1) - ((n - 1) / t) ** (gamma + 1)
    assert np.abs(w * np.exp(later) - exact).sum() < 1e-6


def test_coefficients_fit_the_target_profile():
    steps = np.repeat(np.arange(1, 21) * 50.0, 2)  # snapshots every 50 steps of the two EDM2 profiles
    stds = np.tile([0.05, 0.10], 20)
    # an input profile is reconstructed by itself
    c = posthoc_ema.posthoc_coefficients(steps, stds, 1000.0, 0.10)
    np.testing.assert_allclose(c, np.eye(len(steps))[-1], atol=1e-6)
    grid = (np.arange(200_000) + 0.5) * (1000.0 / 200_000)
    for out_std in (0.03, 0.07, 0.15, 0.25):
        c = posthoc_ema.posthoc_coefficients(steps, stds, 1000.0, out_std)
        assert c.sum() == pytest.approx(1.0)
        fit = sum(ci * _profile(t, s, grid) for ci, t, s in zip(c, steps, stds))
        target = _profile(1000.0, out_std, grid)
        error = np.linalg.norm(fit - target) / np.linalg.norm(target)
        # the snapshots' single-profile fits are far worse than the combination
        alone = min(np.linalg.norm(_profile(1000.0, s, grid) - target) for s in (0.05, 0.10)) / np.linalg.norm(target)
        assert error < 0.1 and error < alone / 3, (out_std, error, alone)
    with pytest.raises(ValueError, match="snapshot steps"):
        posthoc_ema.posthoc_coefficients([10.0, 30.0], [0.05, 0.05], 20.0, 0.1)


def test_reconstruct_streams_a_weighted_sum():
    trees = [{"w": jnp.full(3, float(i)), "b": jnp.float32(i)} for i in range(1, 4)]
    out = posthoc_ema.reconstruct(iter(trees), np.array([0.5, 0.25, 0.25]))
    np.testing.assert_allclose(out["w"], 0.5 + 0.5 + 0.75)
    with pytest.raises(ValueError):
        posthoc_ema.reconstruct(iter(trees), np.array([1.0, 0.0]))


def test_train_step_tracks_the_profiles():
    """The step's profiles are the power-function averages of the parameters after each update."""
    tx = optax.sgd(0.1)
    stds = (0.05, 0.2)
    family = families.flow()
    apply_fn = lambda params, x, t, labels, key: params["w"] * x  # noqa: E731
    step = jax.jit(make_train_step(apply_fn, family, tx, ema_stds=stds, ema_decay_rate=0.9))
    state = init_train_state({"w": jnp.float32(0.5)}, tx, num_ema_profiles=len(stds))
    history = []
    batch = {"image": jnp.linspace(-1, 1, 32, dtype=jnp.float32).reshape(2, 4, 4, 1)}
    for _ in range(40):
        state, _ = step(state, batch)
        history.append(float(state.params["w"]))
    tau = np.arange(1, 41, dtype=np.float64)
    for std, profile in zip(stds, state.ema_profiles):
        g = float(posthoc_ema.std_to_exponent(std))
        weights = (tau ** (g + 1) - (tau - 1) ** (g + 1)) / 40.0 ** (g + 1)
        np.testing.assert_allclose(float(profile["w"]), np.dot(weights, history), rtol=1e-5)


def test_snapshots_reconstruct_through_the_sample_path(tmp_path):
    stds = (0.05, 0.1)
    config = tiny_config(**{"training.ema_stds": stds, "training.ema_snapshot_every": 4,
                            "training.num_train_steps": 14})
    workdir = str(tmp_path / "run")
    state = train_loop.train(config, workdir, progress=False)
    assert sorted(os.listdir(os.path.join(workdir, "ema_snapshots"))) == ["12", "4", "8"]
    # a config without ema_stds opens it: the checkpoint's record decides the state's structure
    opened = trained_model.open_trained(tiny_config(**{"sampling.ema_std": 0.05}), workdir, "sample", log=lambda *_: None)
    assert tuple(opened.experiment.config.training.ema_stds) == stds
    tracked = trained_model.load_params(opened, True, 0.05)  # an input profile: itself
    for a, b in zip(jax.tree.leaves(tracked), jax.tree.leaves(state.ema_profiles[0])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    opened = trained_model.open_trained(tiny_config(), workdir, "sample", log=lambda *_: None)
    posthoc = trained_model.load_params(opened, True, 0.08)
    mngr = checkpoint.snapshot_manager(workdir, read_only=True)
    abstract = opened.experiment.abstract_state().ema_profiles
    snaps = [p for s in (4, 8, 12) for p in checkpoint.restore(mngr, abstract, s)[0]] + list(state.ema_profiles)
    mngr.close()
    c = posthoc_ema.posthoc_coefficients([4, 4, 8, 8, 12, 12, 14, 14], list(stds) * 4, 14, 0.08)
    for leaf, *leaves in zip(jax.tree.leaves(posthoc), *map(jax.tree.leaves, snaps)):
        np.testing.assert_allclose(np.asarray(leaf), sum(ci * np.asarray(x) for ci, x in zip(c, leaves)),
                                   rtol=1e-5, atol=1e-6)
    # resuming with other profiles, or asking for post-hoc EMA of a run without them: one line each
    with pytest.raises(config_checks.ConfigError, match="training.ema_stds"):
        train_loop.train(tiny_config(**{"training.num_train_steps": 16}), workdir, progress=False)
    plain = str(tmp_path / "plain")
    train_loop.train(tiny_config(**{"training.num_train_steps": 2, "training.checkpoint_every": 2}), plain,
                     progress=False)
    opened = trained_model.open_trained(tiny_config(), plain, "sample", log=lambda *_: None)
    with pytest.raises(config_checks.ConfigError, match="tracked no EMA profiles"):
        trained_model.load_params(opened, True, 0.1)
    with pytest.raises(config_checks.ConfigError, match="training.ema_stds"):
        config_checks.validate(tiny_config(**{"training.ema_stds": (0.05, 0.4)}))


def test_checkpoint_from_before_the_profiles_restores(tmp_path):
    """A checkpoint written before ``TrainState.ema_profiles`` existed (its tree has no such key)
    restores, with no profiles, into today's state."""
    params = {"w": jnp.arange(3.0)}
    state = init_train_state(params, optax.sgd(0.1))
    mngr = checkpoint.manager(tmp_path)
    older = {"step": state.step, "params": params, "ema_params": params, "opt_state": state.opt_state}
    checkpoint.save(mngr, 5, older, {"note": "old"})
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    restored, meta = checkpoint.restore(mngr, abstract, 5)
    assert meta == {"note": "old"} and restored.ema_profiles == ()
    np.testing.assert_array_equal(restored.params["w"], params["w"])
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    with pytest.raises(checkpoint.CheckpointError, match="cannot be restored"):
        checkpoint.restore(mngr, abstract.replace(ema_profiles=(abstract.params,)), 5)
