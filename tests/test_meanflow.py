"""MeanFlow against the closed forms of Gaussian data (GUIDE section 14.5).

For ``x0 ~ N(mu, s^2 I)`` on the interpolant ``x_t = (1 - t) x0 + t eps`` the flow map and the average
velocity are linear in ``x``: with ``sigma_t^2 = (1 - t)^2 s^2 + t^2``,
``Phi_{t->r}(x) = (1 - r) mu + (sigma_r / sigma_t)(x - (1 - t) mu)`` and
``u(x, r, t) = (x - Phi_{t->r}(x)) / (t - r) = -mu + (x - (1 - t) mu) ((t + r) - s^2 (2 - t - r)) /
(sigma_t (sigma_t + sigma_r))``, which at ``r = t`` is the velocity ``v``. The exact ``u`` satisfies the
MeanFlow identity, zeroes the loss's expected gradient, and samples the data exactly in any number of
jumps; each test fails on a wrong formula."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import data
from jaxdiff.core import families, meanflow, processes, shortcut
from jaxdiff.core.family import NETWORK_TIME_SCALE as S
from jaxdiff.core.sampler import run_sampler
from jaxdiff.core.sampler_registry import make_sampler
from jaxdiff.drivers import config_checks, data_config, sampling_config
from jaxdiff.drivers.experiment import Experiment
from tests.conftest import tiny_config

MU, STD = 0.3, 0.5
SHAPE = (2, 2, 1)


def sigma(t):
    return jnp.sqrt((1.0 - t) ** 2 * STD ** 2 + t ** 2)


def exact_u(x, r, t):
    """The exact average velocity over ``[r, t]`` at ``x`` (``r``, ``t``: ``[B]``), without dividing by ``t - r``."""
    b = lambda v: processes.expand_to(v, x)  # noqa: E731
    slope = ((t + r) - STD ** 2 * (2.0 - t - r)) / (sigma(t) * (sigma(t) + sigma(r)))
    return -MU + (x - b(1.0 - t) * MU) * b(slope)


def exact_net(x, t_in, span):
    """The network that outputs the exact ``u``: ``net(z, 1000 t, 1000 (t - r))``."""
    t = t_in / S
    return exact_u(x, t - span / S, t)


def flow_map(x, r, t):
    return (1.0 - r) * MU + sigma(r) / sigma(t) * (x - (1.0 - t) * MU)


def test_the_closed_form_is_the_average_of_the_velocity():
    """``u`` computed without dividing by ``t - r`` is ``(x - Phi) / (t - r)``, and tends to ``v`` at ``r = t``."""
    x = jnp.linspace(-2.0, 2.0, 8).reshape(8, 1, 1, 1)
    t, r = jnp.full((8,), 0.8), jnp.full((8,), 0.3)
    np.testing.assert_allclose(exact_u(x, r, t), (x - flow_map(x, 0.3, 0.8)) / 0.5, rtol=1e-5, atol=1e-6)
    v = exact_u(x, t, t)
    near = exact_u(x, t - 1e-3, t)
    np.testing.assert_allclose(near, v, atol=2e-3)


def test_the_identity_holds_for_the_exact_average_velocity():
    """``u = v - (t - r)(v d_z u + d_t u)`` with the exact velocity as tangent: the library's target equals
    the exact ``u`` to float32 precision, and a target without the derivative term does not."""
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (64, *SHAPE))
    t = jax.random.uniform(jax.random.fold_in(key, 1), (64,), minval=0.05, maxval=1.0)
    r = t * jax.random.uniform(jax.random.fold_in(key, 2), (64,))
    v = exact_u(x, t, t)
    u, target = meanflow.average_velocity_target(lambda z, tt: exact_u(z, r, tt), x, t, r, v)
    np.testing.assert_allclose(target, u, atol=2e-5)
    assert float(jnp.max(jnp.abs(v - u))) > 0.05  # the derivative term is what closes the gap


def test_the_loss_gradient_vanishes_at_the_exact_average_velocity():
    """``d loss / d theta`` at ``theta = 0`` for ``net_theta = u + theta z`` is zero in expectation (the
    target's conditional velocity ``eps - x0`` averages to ``v``); a sign error in the derivative term
    makes it plainly non-zero."""
    family = meanflow.meanflow(equal_fraction=0.25, norm_p=0.0)
    key = jax.random.PRNGKey(1)
    n = 200_000
    x0 = MU + STD * jax.random.normal(key, (n, *SHAPE))
    time, noise = family.draw(jax.random.fold_in(key, 1), x0)

    def loss_of(theta, sign=1.0):
        def net(z, t_in, span):
            return exact_net(z, t_in, span) + theta * z

        if sign == 1.0:
            return family.loss(net, x0, time, noise)[0]
        t, r = time[:, 0], time[:, 1]
        tt = processes.expand_to(t, x0)
        z, v = (1 - tt) * x0 + tt * noise, noise - x0
        u, du = jax.jvp(lambda z_, t_: net(z_, S * t_, S * (t_ - r)), (z, t), (v, jnp.ones_like(t)))
        wrong = v + processes.expand_to(t - r, z) * du
        return jnp.mean(jnp.sum((u - jax.lax.stop_gradient(wrong)) ** 2, axis=(1, 2, 3)))

    grad = float(jax.grad(loss_of)(0.0))
    wrong = float(jax.grad(lambda th: loss_of(th, -1.0))(0.0))
    assert abs(grad) < 0.02 and abs(wrong) > 20 * abs(grad) + 0.1, (grad, wrong)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_jumps_with_the_exact_average_velocity_sample_the_data(steps):
    family = meanflow.meanflow()
    sampler = make_sampler(family, "jump", steps, clip_x0=False)
    assert sampler.evaluations == steps
    key = jax.random.PRNGKey(steps)
    x_T = jax.random.normal(key, (20_000, *SHAPE))
    out = np.asarray(run_sampler(sampler, exact_net, x_T, jax.random.fold_in(key, 1)).samples)
    np.testing.assert_allclose(out, flow_map(x_T, 0.0, 1.0), atol=1e-5)  # the exact flow map of each x_T
    assert abs(out.mean() - MU) < 0.01 and abs(out.std() / STD - 1) < 0.01


def test_training_times_are_ordered_and_a_fraction_are_equal():
    t, r = meanflow.draw_times(jax.random.PRNGKey(0), 1000, equal_fraction=0.75)
    assert bool(jnp.all(r <= t)) and bool(jnp.all((t > 0) & (t < 1)))
    assert bool(jnp.all(r[:750] == t[:750])) and float(jnp.mean(r[750:] < t[750:])) > 0.99
    # logit t is the larger of two N(-0.4, 1) draws: its median is -0.4 + Phi^-1(sqrt(1/2)) = -0.4 + 0.5449
    assert abs(float(jnp.median(jnp.log(t[:750] / (1 - t[:750])))) - (-0.4 + 0.5449)) < 0.15


def test_flow_samplers_run_the_meanflow_velocity_and_chain_samplers_are_refused():
    """``predict`` is ``u(z, t, t)``, the velocity, so Euler with the exact network integrates the ODE;
    the discrete chain's samplers, EDM's churn and ``jump`` on a family without jumps are refused."""
    family = meanflow.meanflow()
    x_T = jax.random.normal(jax.random.PRNGKey(3), (4096, *SHAPE))
    errors = []
    for steps in (20, 40):  # Heun converges to the exact flow map at second order
        out = run_sampler(make_sampler(family, "heun", steps, clip_x0=False), exact_net, x_T, jax.random.PRNGKey(4))
        errors.append(float(np.max(np.abs(np.asarray(out.samples) - flow_map(x_T, 0.0, 1.0)))))
    assert errors[1] < 3e-3 and errors[1] < errors[0] / 3, errors
    for name in ("ddim", "ddpm", "edm_stochastic"):
        with pytest.raises(ValueError, match=name):
            make_sampler(family, name, 4)
    with pytest.raises(ValueError, match="few-step family"):
        make_sampler(families.flow(), "jump", 4)


# ----------------------------------------------------------------------------- shortcut models

def test_two_exact_half_jumps_are_the_exact_jump():
    """The shortcut target for a jump of ``2d`` built from two exact jumps of ``d`` is the exact average
    velocity over ``2d`` (the flow map composes), to float32 precision; one exact half jump alone is not."""
    key = jax.random.PRNGKey(5)
    x = jax.random.normal(key, (256, *SHAPE))
    span = jnp.exp2(-jax.random.randint(jax.random.fold_in(key, 1), (256,), 0, 7).astype(jnp.float32))
    t = jnp.minimum(span * jnp.ceil(jax.random.uniform(jax.random.fold_in(key, 2), (256,)) / span), 1.0)
    target = shortcut.shortcut_targets(exact_u, x, t, span)
    np.testing.assert_allclose(target, exact_u(x, t - span, t), atol=2e-5)
    assert float(jnp.max(jnp.abs(exact_u(x, t - span / 2, t) - exact_u(x, t - span, t)))) > 0.05


def test_the_shortcut_loss_is_zero_on_its_bootstrap_rows_at_the_exact_average_velocity():
    family = shortcut.shortcut(levels=7, bootstrap_every=2)
    key = jax.random.PRNGKey(6)
    x0 = MU + STD * jax.random.normal(key, (512, *SHAPE))
    time, noise = family.draw(jax.random.fold_in(key, 1), x0)
    t, span = time[:, 0], time[:, 1]
    boot = span > 0
    assert int(boot.sum()) == 256 and bool(jnp.all(t[boot] - span[boot] >= -1e-7))
    assert bool(jnp.all(jnp.isin(span[boot], jnp.exp2(-jnp.arange(7.0)))))
    _, per_example = family.loss(exact_net, x0, time, noise)
    assert float(jnp.max(per_example[boot])) < 1e-9 and float(jnp.mean(per_example[~boot])) > 0.01


@pytest.mark.parametrize("steps", [1, 4])
def test_shortcut_jumps_with_the_exact_network_sample_the_data(steps):
    sampler = make_sampler(shortcut.shortcut(), "jump", steps, clip_x0=False)
    x_T = jax.random.normal(jax.random.PRNGKey(7), (2048, *SHAPE))
    out = np.asarray(run_sampler(sampler, exact_net, x_T, jax.random.PRNGKey(8)).samples)
    np.testing.assert_allclose(out, flow_map(x_T, 0.0, 1.0), atol=1e-5)


# ----------------------------------------------------------------------------- a network that learns

@pytest.mark.parametrize("family", ["meanflow", "shortcut"])
def test_a_tiny_two_time_network_learns_and_samples_in_one_and_two_jumps(family):
    """The command line's pieces on digits: the network gets its span embedding, training lowers its
    error on flow matching's velocity (``u(z, t, t) = v``, measured on a held batch, the part of both
    losses whose target does not move with the network), and ``jump`` samples in 1 and 2 evaluations."""
    config = tiny_config(**{"diffusion.family": family, "model.groups": 4, "diffusion.shortcut.bootstrap_every": 4})
    config_checks.validate(config)
    experiment = Experiment(config, channels=1, num_classes=10)
    assert experiment.model.span_embedding and experiment.apply_fn.span_embedding
    assert experiment.model.jvp == (family == "meanflow")  # MeanFlow's loss differentiates it forward
    stream = data.batch_stream(data_config.load_source(config.data), config.seed, 0, config.training.batch_size)
    held = next(data.batch_stream(data_config.load_source(config.data), 1, 0, 64))
    x0 = data.preprocess(held["image"], None)
    velocity_only = shortcut.shortcut(bootstrap_every=10**6)  # flow rows alone: target v, no jvp
    time, noise = velocity_only.draw(jax.random.PRNGKey(9), x0)

    def velocity_error(params):
        net = lambda x, t, span: experiment.apply_fn(params, x, t, held["label"], span=span)  # noqa: E731
        return float(velocity_only.loss(net, x0, time, noise)[0])

    state = experiment.init()
    before = velocity_error(state.params)
    for _ in range(60):
        state, metrics = experiment.step(state, next(stream))
        assert np.isfinite(float(metrics["loss"]))
    assert velocity_error(state.params) < 0.8 * before
    for steps in (1, 2):
        config.sampling.num_steps, config.sampling.sampler = steps, "auto"
        out = sampling_config.generate_from_config(experiment.apply_fn, state.ema_params, experiment.family,
                                                   config.sampling, (4, 8, 8, 1), jax.random.PRNGKey(steps),
                                                   num_classes=experiment.model.num_classes)
        assert out.metadata["sampler"] == "jump" and np.all(np.isfinite(out.samples))
        assert out.samples.shape == (4, 8, 8, 1)
