"""Progressive distillation against the closed forms of Gaussian data (GUIDE sections 14.4 and 14.5).

The teacher is the exact denoiser of a Gaussian (``tests/gaussian.py``), so its deterministic DDIM chain
is known; the optimal student is known too: at a student level ``t = 2i`` it is the network whose ``x0``
is ``x~(z_t)`` of :func:`~jaxdiff.core.progressive.distillation_target`, built here by calling the teacher
twice (:func:`exact_student`). The checks: one student DDIM step with ``x~`` lands on the teacher's
``z_s``; the loss is zero at the exact student and, at the teacher, is the truncated-SNR-weighted distance
between the two; on the line from the teacher to the exact student the loss is a parabola whose
zero, and zero gradient, is the exact student; ``N`` steps of
the exact student sample what ``2N`` steps of the teacher sample, for ddpm, vp, edm and flow. Each fails
on a wrong formula (a swapped ratio, a wrong level, an untruncated weight, the base's ``N``-step grid)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdiff.core import families, meanflow, processes, progressive
from jaxdiff.core.progressive import ddim_step, distillation_target
from jaxdiff.core.sampler import run_sampler
from jaxdiff.core.sampler_registry import make_sampler
from jaxdiff.core.schedules import schedule_tables
from jaxdiff.training.state import init_train_state
from jaxdiff.training.step import make_train_step
from tests import gaussian

SHAPE = (4, 4, 1)
PRIOR = gaussian.smooth(SHAPE, 0.5, 1.5)
TABLES = schedule_tables("linear", 1000)
CASES = {  # name -> (base family, spacing, its continuous process for gaussian.exact_net)
    "ddpm_eps": lambda: (families.ddpm(TABLES, "eps"), "logsnr", None),
    "ddpm_v": lambda: (families.ddpm(TABLES, "v"), "linspace", None),
    "vp": lambda: (families.vp("cosine", "x0"), "uniform", processes.vp_cosine()),
    "edm": lambda: (families.edm(), "karras", None),
    "flow": lambda: (families.flow(), "uniform", processes.linear_interpolant()),
}


def _levels(grid):
    return tuple(jnp.asarray(v, jnp.float32) for v in (grid.time, grid.alpha, grid.sigma))


def _col(v):
    return v.reshape((-1,) + (1,) * len(SHAPE))


def network_times(family, grid):
    """The network time ``t_in`` that ``family.predict`` feeds at each level ``0 .. n - 1`` of ``grid``."""
    time, alpha, sigma = (v[:-1] for v in _levels(grid))
    seen = []

    def probe(x, t_in):
        seen.append(t_in)
        return jnp.zeros_like(x)

    family.predict(probe, jnp.ones((len(time),) + SHAPE), time, _col(alpha), _col(sigma))
    return seen[0].astype(jnp.float32)


def exact_student(family, teacher, grid):
    """``net(x_in, t_in)`` at the even levels ``k`` of the teacher's ``2N``-step ``grid``: the output, in the
    family's parameterisation, whose ``x0`` is ``x~ = distillation_target(z, z_{k+2})`` with ``z_{k+2}``
    two teacher DDIM steps from ``z`` (and ``eps~ = (z - alpha_k x~) / sigma_k``): the optimal student."""
    time, alpha, sigma = _levels(grid)
    net_time = network_times(family, grid)[::2]  # the student's levels 0, 2, .., 2N - 2

    def net(x_in, t_in):
        k = 2 * jnp.argmin(jnp.abs(t_in.astype(jnp.float32)[:, None] - net_time[None, :]), axis=1)
        a, s = _col(alpha[k]), _col(sigma[k])
        edm = family.name == "edm"
        c = processes.edm_preconditioning(s) if edm else None
        z = x_in / c.c_in if edm else x_in
        z_mid = ddim_step(*family.predict(teacher, z, time[k], a, s), _col(alpha[k + 1]), _col(sigma[k + 1]))
        z_s = ddim_step(*family.predict(teacher, z_mid, time[k + 1], _col(alpha[k + 1]), _col(sigma[k + 1])),
                        _col(alpha[k + 2]), _col(sigma[k + 2]))
        x_tilde = distillation_target(z, z_s, a, s, _col(alpha[k + 2]), _col(sigma[k + 2]))
        if edm:
            return (x_tilde - c.c_skip * z) / c.c_out
        return processes.prediction_from_x0_eps(family.prediction, x_tilde, (z - a * x_tilde) / s, a, s)

    return net


def setup(case, num_steps):
    base, spacing, process = CASES[case]()
    family = progressive.progressive(base, num_steps, spacing)
    teacher = gaussian.exact_net(base, PRIOR, process)
    return base, spacing, family, teacher, exact_student(base, teacher, base.grid(2 * num_steps, spacing))


def test_one_student_step_with_the_target_lands_on_the_teacher():
    """``alpha_s x~ + sigma_s eps~ = z_s`` for random VP levels, EDM levels (``alpha = 1``) and the data end
    (``sigma_s = 0``, where ``x~ = z_s / alpha_s``); the ratio swapped or the denominator without it do not."""
    key = jax.random.PRNGKey(0)
    k = jax.random.split(key, 6)
    n = 96
    lam_t = jax.random.uniform(k[0], (n,), minval=-8.0, maxval=6.0)
    lam_s = lam_t + jax.random.uniform(k[1], (n,), minval=0.5, maxval=6.0)
    a_t, s_t = jnp.sqrt(jax.nn.sigmoid(lam_t)), jnp.sqrt(jax.nn.sigmoid(-lam_t))
    a_s, s_s = jnp.sqrt(jax.nn.sigmoid(lam_s)), jnp.sqrt(jax.nn.sigmoid(-lam_s))
    sig_t = jnp.exp(jax.random.uniform(k[2], (n,), minval=-2.0, maxval=4.0))  # EDM: alpha = 1
    sig_s = sig_t * jax.random.uniform(k[3], (n,), minval=0.1, maxval=0.8)
    ones, zeros = jnp.ones((n,)), jnp.zeros((n,))
    a_t, s_t = jnp.concatenate([a_t, ones, a_t]), jnp.concatenate([s_t, sig_t, s_t])
    a_s, s_s = jnp.concatenate([a_s, ones, ones]), jnp.concatenate([s_s, sig_s, zeros])
    a_t, s_t, a_s, s_s = (_col(v) for v in (a_t, s_t, a_s, s_s))
    z_t = jax.random.normal(k[4], (3 * n,) + SHAPE) * jnp.sqrt(a_t ** 2 + s_t ** 2)
    z_s = jax.random.normal(k[5], (3 * n,) + SHAPE) * jnp.sqrt(a_s ** 2 + s_s ** 2)

    def landed(target):
        x_tilde = target(z_t, z_s, a_t, s_t, a_s, s_s)
        return ddim_step(x_tilde, (z_t - a_t * x_tilde) / s_t, a_s, s_s)

    scale = jnp.sqrt(a_s ** 2 + s_s ** 2)
    err = jnp.abs(landed(distillation_target) - z_s) / scale
    assert float(jnp.max(err)) < 2e-5, float(jnp.max(err))
    np.testing.assert_array_equal(distillation_target(z_t, z_s, a_t, s_t, a_s, s_s)[2 * n:], z_s[2 * n:])
    swapped = lambda zt, zs, at, st, as_, ss: (zs - st / ss * zt) / (as_ - st / ss * at)  # noqa: E731
    no_ratio = lambda zt, zs, at, st, as_, ss: (zs - ss / st * zt) / (as_ - at)  # noqa: E731
    for wrong in (swapped, no_ratio):
        assert float(jnp.nanmedian(jnp.abs(landed(wrong) - z_s)[:2 * n] / scale[:2 * n])) > 0.05


@pytest.mark.parametrize("case", list(CASES))
def test_the_loss_is_zero_at_the_exact_student_and_weighted_distance_at_the_teacher(case):
    """Per example: ~0 for the exact student; for the teacher, ``max(alpha_t^2 / sigma_t^2, 1) mean((x0_T -
    x~)^2)`` with ``x0_T`` the teacher's and ``x~`` the exact student's ``x0`` at ``z_t = alpha_{2i} x0 +
    sigma_{2i} eps``, which is clearly non-zero at ``N = 4`` (one big DDIM step is not two small ones)."""
    base, spacing, family, teacher, student = setup(case, 4)
    assert family.name == base.name and family.needs_teacher and family.predict is base.predict
    x0 = jnp.asarray(PRIOR.sample(np.random.default_rng(1), 64), jnp.float32)
    i, eps = family.draw(jax.random.PRNGKey(2), x0)
    assert i.dtype == jnp.int32 and eps.shape == x0.shape and set(np.asarray(i).tolist()) == {0, 1, 2, 3}
    mean, per_example = family.loss(student, x0, i, eps, teacher)
    assert per_example.shape == (64,) and float(mean) == pytest.approx(float(jnp.mean(per_example)))

    time, alpha, sigma = _levels(base.grid(8, spacing))
    t = 2 * i
    a, s = _col(alpha[t]), _col(sigma[t])
    z_t = a * x0 + s * eps
    x_teacher = base.predict(teacher, z_t, time[t], a, s)[0]
    x_student = base.predict(student, z_t, time[t], a, s)[0]
    distance = jnp.mean(jnp.square(x_teacher - x_student), axis=(1, 2, 3))
    weight = jnp.maximum(jnp.square(alpha[t] / sigma[t]), 1.0)
    assert float(jnp.min(weight)) == 1.0 and float(jnp.max(weight)) > 2.0  # both sides of the truncation
    _, teacher_loss = family.loss(teacher, x0, i, eps, teacher)
    np.testing.assert_allclose(teacher_loss, weight * distance, rtol=1e-2)  # eps at SNR 4e-5: x0 to ~1e-3
    assert float(jnp.min(teacher_loss)) > 2e-6 and float(jnp.max(per_example / teacher_loss)) < 1e-4


@pytest.mark.parametrize("case", list(CASES))
def test_the_gradient_vanishes_at_the_exact_student_and_not_at_the_teacher(case):
    """``x0_hat`` is affine in the network's output, so on the line ``net_th = teacher + th (student -
    teacher)`` the loss is ``(1 - th)^2 L(0)``: zero, with zero gradient, at the exact student (``th = 1``),
    gradient ``-2 L(0)`` at the teacher, and the same at ``th = 2`` as at the teacher."""
    _, _, family, teacher, student = setup(case, 2)
    x0 = jnp.asarray(PRIOR.sample(np.random.default_rng(3), 32), jnp.float32)
    i, eps = family.draw(jax.random.PRNGKey(4), x0)

    @jax.jit
    @jax.value_and_grad
    def loss(theta):
        net = lambda x, t: teacher(x, t) + theta * (student(x, t) - teacher(x, t))  # noqa: E731
        return family.loss(net, x0, i, eps, teacher)[0]

    (l0, g0), (l_half, _), (l1, g1), (l2, g2) = (loss(jnp.float32(th)) for th in (0.0, 0.5, 1.0, 2.0))
    assert float(l0) > 1e-5
    np.testing.assert_allclose([l_half, l2, g0, g2], [l0 / 4, l0, -2 * l0, 2 * l0], rtol=2e-3)
    assert float(l1) < 1e-6 * float(l0) and abs(float(g1)) < 1e-3 * abs(float(g0))


@pytest.mark.parametrize("case", list(CASES))
def test_the_exact_student_samples_what_the_teacher_samples_in_twice_the_steps(case):
    """``N = 4`` DDIM (euler) steps of the exact student on the distilled family's grid (the even levels of
    the teacher's ``2N``) equal ``2N`` DDIM steps of the exact teacher to float32 precision; the teacher on
    ``N`` steps of its own grid is far off. For ddpm the chain's own ``ddim`` sampler agrees too."""
    n = 4
    base, spacing, family, teacher, student = setup(case, n)
    teacher_grid = base.grid(2 * n, spacing)
    x_T = teacher_grid.prior_scale * jax.random.normal(jax.random.PRNGKey(5), (256,) + SHAPE)

    def sample(fam, net, steps, name="euler"):
        sampler = make_sampler(fam, name, steps, spacing, clip_x0=False)
        return np.asarray(run_sampler(sampler, net, x_T, jax.random.PRNGKey(6)).samples)

    reference = sample(base, teacher, 2 * n)
    scale = float(np.std(reference))
    np.testing.assert_allclose(sample(family, student, n) / scale, reference / scale, atol=2e-5)
    if base.tables is not None:
        np.testing.assert_allclose(sample(family, student, n, "ddim") / scale, reference / scale, atol=2e-5)
    assert float(np.max(np.abs(sample(base, teacher, n) - reference))) > 0.1 * scale


def test_the_train_step_distills_with_the_frozen_teacher():
    """:func:`~jaxdiff.training.step.make_train_step` runs the distilled family with the teacher's
    parameters of ``init_train_state(..., teacher=)``: on the network ``teacher + th (student - teacher)``
    started at the teacher (``th = 0``, also the teacher's parameters), SGD drives ``th`` to the exact
    student, ``1``, while the teacher stays at ``0``."""
    _, _, family, teacher, student = setup("vp", 2)

    def apply_fn(params, x, t, labels, dropout_key=None):
        return teacher(x, t) + params["theta"] * (student(x, t) - teacher(x, t))

    rng = np.random.default_rng(7)
    x0 = jnp.asarray(PRIOR.sample(rng, 64), jnp.float32)
    i, eps = family.draw(jax.random.PRNGKey(8), x0)
    scale = float(family.loss(teacher, x0, i, eps, teacher)[0])  # the loss is (1 - th)^2 scale, roughly
    params = {"theta": jnp.zeros(())}
    optimizer = optax.sgd(0.25 / scale)
    step = jax.jit(make_train_step(apply_fn, family, optimizer, ema_decay_rate=0.0))
    state = init_train_state(params, optimizer, teacher=params)
    for _ in range(25):
        state, metrics = step(state, {"image": jnp.asarray(PRIOR.sample(rng, 64), jnp.float32)})
    assert abs(float(state.params["theta"]) - 1.0) < 1e-2 and float(state.teacher["theta"]) == 0.0
    assert float(metrics["loss"]) < 1e-3 * scale


def test_the_grid_the_rounds_and_the_checks():
    """The distilled family's grid is the even levels of the base's ``2N`` grid (not its ``N``-step grid,
    except flow's uniform ``t``), a second round distills on it, and bad arguments raise one-line errors."""
    vp = families.vp("linear", "eps")
    first = progressive.progressive(vp, 4, "logsnr")
    doubled = vp.grid(8, "logsnr")
    for field in ("time", "alpha", "sigma"):
        np.testing.assert_array_equal(getattr(first.grid(4), field), getattr(doubled, field)[::2])
        np.testing.assert_array_equal(getattr(first.grid(0), field), getattr(doubled, field)[::2])
    assert not np.allclose(vp.grid(4, "logsnr").time, doubled.time[::2])
    second = progressive.progressive(first, 2, "logsnr")
    np.testing.assert_array_equal(second.grid(2).time, doubled.time[::4])
    flow = families.flow()
    np.testing.assert_allclose(progressive.progressive(flow, 3, "uniform").grid(3).time, flow.grid(3).time)

    for bad in (0, -1, 2.0, True, "4"):
        with pytest.raises(ValueError, match="num_steps"):
            progressive.progressive(vp, bad, "logsnr")
    with pytest.raises(ValueError, match="spacing"):
        progressive.progressive(vp, 4, "leading")  # the base family's own refusal
    with pytest.raises(ValueError, match="meanflow"):
        progressive.progressive(meanflow.meanflow(), 4, "uniform")
    with pytest.raises(ValueError, match="exactly 2 \\* num_steps"):
        progressive.progressive(families.ddpm(TABLES), 3, "uniform")  # range(0, 1000, 166): 7 rows
    with pytest.raises(ValueError, match="distilled on spacing='logsnr'"):
        make_sampler(first, "euler", 4, "uniform")
