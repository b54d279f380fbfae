"""The diffusion families (ddpm, vp, edm, flow) and their solvers: closed forms, float64 references,
conversions, guidance, and bad choices.

The Gaussian check: for data ``x0 ~ N(MU, S^2 I)`` and ``x = alpha x0 + sigma eps`` the optimal
denoiser is ``E[x0 | x] = MU + alpha S^2 (x - alpha MU) / (alpha^2 S^2 + sigma^2)``. Each family's
network output is built from it (:func:`exact_net`), so a correct sampler must return samples with
mean ``MU`` and variance ``S^2`` up to its discretisation error. Stated tolerances, as in
``test_samplers.py``: |mean - MU| < 0.015 and |var / S^2 - 1| < 5% (Monte-Carlo standard errors
0.003 and 0.8% with 32,768 scalars); the step counts are where each solver is inside them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from configs import default
from jaxdiff.core import families, generation, grid_samplers, guidance, processes, sampler_registry, schedules
from jaxdiff.core.sampler import run_sampler
from jaxdiff.drivers import config_checks
from jaxdiff.drivers.diffusion_config import family_from_config
from jaxdiff.training import keys, optim, state as state_lib, step as step_lib
from tests import gaussian
from tests.conftest import set_fields

MU, S = 0.3, 0.5
SHAPE = (2048, 4, 4, 1)
PRIOR = gaussian.isotropic(np.full(SHAPE[1:], MU), S)
TABLES = schedules.make_tables(schedules.linear_betas(1000))
FAMILIES = {"ddpm": families.ddpm(TABLES), "vp": families.vp("linear"), "vp_cosine": families.vp("cosine"),
            "edm": families.edm(), "flow": families.flow()}


def exact_net(family, process=None):
    """``net(x_in, t_in)`` whose output, read by ``family.predict``, is the exact Gaussian denoiser
    (:func:`tests.gaussian.exact_net` for ``N(MU, S^2 I)``)."""
    return gaussian.exact_net(family, PRIOR, process)


PROCESS = {"vp": processes.vp_linear(), "vp_cosine": processes.vp_cosine(), "flow": processes.linear_interpolant()}


def run(family_name, sampler, x_T, key=jax.random.PRNGKey(1), net=None):
    family = FAMILIES[family_name]
    net = net or exact_net(family, PROCESS.get(family_name))
    return np.asarray(jax.jit(lambda x, k: run_sampler(sampler, net, sampler.prior_scale * x, k).samples)(
        x_T, key), np.float64)


@pytest.fixture(scope="module")
def x_T():
    return jax.random.normal(jax.random.PRNGKey(0), SHAPE)


GAUSSIAN_CASES = [  # (family, sampler, steps)
    *[(f, "euler", 250) for f in ("ddpm", "vp", "edm", "flow")],
    *[(f, "euler_ancestral", 250) for f in ("ddpm", "edm", "flow")],
    *[(f, "heun", 50) for f in ("ddpm", "vp", "vp_cosine", "edm")], ("flow", "heun", 20),
    ("vp", "edm_stochastic", 100), ("edm", "edm_stochastic", 100),
    *[(f, "midpoint", 20) for f in ("vp", "edm", "flow")],
    *[(f, "dpm_solver++", 50) for f in ("vp", "vp_cosine", "edm")], ("flow", "dpm_solver++", 20),
    *[(f, "dpm_solver++_3m", 20) for f in ("ddpm", "vp", "edm", "flow")],
    *[(f, "dpm_solver++_sde", 100) for f in ("ddpm", "edm", "flow")],
]


@pytest.mark.compat
@pytest.mark.parametrize("family_name,name,steps", GAUSSIAN_CASES)
def test_gaussian_data_is_recovered_by_every_solver_in_every_family(x_T, family_name, name, steps):
    sampler = sampler_registry.make_sampler(FAMILIES[family_name], name, steps, clip_x0=False, churn=5.0)
    out = run(family_name, sampler, x_T)
    assert abs(out.mean() - MU) < 0.015, out.mean()
    assert abs(out.var() / S ** 2 - 1) < 0.05, out.var()


def test_dpm_solver_pp_steps_of_zero_length_are_the_identity():
    """set_alpha_to_one=False on a grid ending at t = 0: the last step goes from abar_0 to abar_0 (h = 0);
    3M's phi_2 = expm1(-h) / h + 1 was NaN there."""
    grid = FAMILIES["ddpm"].grid(10, "linspace", False)
    for order, eta in [(2, 0.0), (3, 0.0), (2, 1.0)]:
        c_x, w0, w1, w2, c_z = grid_samplers.dpm_solver_pp_coefficients(grid.alpha, grid.sigma, order, eta)
        assert all(np.all(np.isfinite(c)) for c in (c_x, w0, w1, w2, c_z))
        assert (c_x[-1], w0[-1], w1[-1], w2[-1], c_z[-1]) == (1.0, 0.0, 0.0, 0.0, 0.0)


def test_the_gaussian_check_separates_first_from_second_order(x_T):
    """At 20 steps Euler misses the variance by far more than the tolerance and Heun (39 NFE) does not."""
    euler = run("edm", sampler_registry.make_sampler(FAMILIES["edm"], "euler", 20, clip_x0=False), x_T)
    heun = run("edm", sampler_registry.make_sampler(FAMILIES["edm"], "heun", 50, clip_x0=False), x_T)
    assert euler.var() / S ** 2 - 1 < -0.15 and abs(heun.var() / S ** 2 - 1) < 0.05


def test_flow_ode_with_the_exact_velocity_transports_each_noise_to_its_image(x_T):
    """All marginals of the linear interpolant are Gaussian, so the ODE maps ``z`` to ``MU + S z``
    sample by sample; EDM's ODE does the same from ``sigma_max``."""
    z = np.asarray(x_T, np.float64)
    for family_name, name, steps in [("flow", "midpoint", 50), ("flow", "heun", 50), ("flow", "dpm_solver++_3m", 50)]:
        out = run(family_name, sampler_registry.make_sampler(FAMILIES[family_name], name, steps, clip_x0=False), x_T)
        np.testing.assert_allclose(out, MU + S * z, atol=5e-3)
    sigma_max = 80.0
    out = run("edm", sampler_registry.make_sampler(FAMILIES["edm"], "heun", 100, clip_x0=False), x_T)
    expected = MU + S / np.sqrt(S ** 2 + sigma_max ** 2) * (sigma_max * z - MU)
    np.testing.assert_allclose(out, expected, atol=1e-2)


def test_zero_terminal_snr_with_v_prediction_starts_from_pure_noise(x_T):
    tables = schedules.make_tables(schedules.rescale_zero_terminal_snr(schedules.linear_betas(1000)))
    family = families.ddpm(tables, "v")
    for name, steps in [("ddim", 250), ("dpm_solver++", 50), ("euler", 250)]:
        sampler = sampler_registry.make_sampler(family, name, steps, "trailing", clip_x0=False)
        assert sampler.timesteps[0] == 999
        out = np.asarray(jax.jit(lambda x, k: run_sampler(sampler, exact_net(family), x, k).samples)(
            x_T, jax.random.PRNGKey(1)), np.float64)
        assert abs(out.mean() - MU) < 0.015 and abs(out.var() / S ** 2 - 1) < 0.05, (name, out.mean(), out.var())
    with pytest.raises(ValueError, match="needs alpha > 0"):
        sampler_registry.make_sampler(family, "heun", 20, "trailing")
    with pytest.raises(ValueError, match="target=v or x0"):
        families.ddpm(tables, "eps")


# --------------------------------------------------------------------------- float64 references

def fake_net(x_in, t_in):
    """A smooth stand-in network for NumPy and jnp alike."""
    mod = jnp if isinstance(x_in, jax.Array) else np
    return 0.6 * mod.tanh(x_in) + 0.1 * mod.sin(3.0 * mod.asarray(t_in))[:, None, None, None]


def edm_denoiser_f64(x, sigma, sigma_data=0.5):
    """EDM's D(x; sigma) of fake_net, float64, with Table 1's preconditioning written out."""
    c_skip = sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2)
    c_out = sigma * sigma_data / np.sqrt(sigma ** 2 + sigma_data ** 2)
    c_in = 1.0 / np.sqrt(sigma ** 2 + sigma_data ** 2)
    return c_skip * x + c_out * fake_net(c_in * x, np.full(x.shape[0], np.log(sigma) / 4))


def noise(key, i, shape=(6, 4, 4, 1)):
    return np.asarray(jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32), np.float64)


@pytest.fixture(scope="module")
def small_x():
    return jax.random.normal(jax.random.PRNGKey(5), (6, 4, 4, 1))


def scan64(family, sampler, x_T, key):
    return np.asarray(jax.jit(lambda x, k: run_sampler(sampler, fake_net, sampler.prior_scale * x, k).samples)(
        x_T, key), np.float64)


def test_edm_heun_and_stochastic_match_edm_algorithm_2_in_float64(small_x):
    """Karras et al. 2022, Algorithm 2 (Algorithm 1 when S_churn = 0), k-diffusion's sample_heun."""
    family, key = families.edm(), jax.random.PRNGKey(3)
    n, churn, s_min, s_max, s_noise = 8, 4.0, 0.05, 10.0, 1.003
    sigmas = processes.karras_sigmas(n)
    for c in (0.0, churn):
        name = "edm_stochastic" if c else "heun"
        sampler = sampler_registry.make_sampler(family, name, n, clip_x0=False, churn=c, s_min=s_min, s_max=s_max,
                                       s_noise=s_noise)
        assert sampler.evaluations == 2 * n - 1
        x = sigmas[0] * np.asarray(small_x, np.float64)
        for i in range(n):
            gamma = min(c / n, np.sqrt(2) - 1) if s_min <= sigmas[i] <= s_max else 0.0
            s_hat = sigmas[i] * (1 + gamma)
            if gamma > 0:
                x = x + np.sqrt(s_hat ** 2 - sigmas[i] ** 2) * s_noise * noise(key, i)
            d = (x - edm_denoiser_f64(x, s_hat)) / s_hat
            x_next = x + (sigmas[i + 1] - s_hat) * d
            if sigmas[i + 1] > 0:
                d2 = (x_next - edm_denoiser_f64(x_next, sigmas[i + 1])) / sigmas[i + 1]
                x_next = x + (sigmas[i + 1] - s_hat) * (d + d2) / 2
            x = x_next
        np.testing.assert_allclose(scan64(family, sampler, small_x, key), x, rtol=1e-4, atol=1e-4)


def test_euler_ancestral_matches_k_diffusion_in_float64(small_x):
    family, key, n, eta = families.edm(), jax.random.PRNGKey(4), 6, 1.0
    sigmas = processes.karras_sigmas(n)
    x = sigmas[0] * np.asarray(small_x, np.float64)
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        sigma_up = min(s_next, eta * np.sqrt(s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2))
        sigma_down = np.sqrt(s_next ** 2 - sigma_up ** 2)
        d = (x - edm_denoiser_f64(x, s)) / s
        x = x + d * (sigma_down - s) + noise(key, i) * sigma_up
    sampler = sampler_registry.make_sampler(family, "euler_ancestral", n, clip_x0=False, sde_eta=eta)
    np.testing.assert_allclose(scan64(family, sampler, small_x, key), x, rtol=1e-4, atol=1e-4)


def k_diffusion_dpmpp(x, sigmas, denoise, order, eta, key):
    """k-diffusion's sample_dpmpp_2m_sde (midpoint) / sample_dpmpp_3m_sde, float64 (eta = 0: the ODE)."""
    d1 = d2 = h1 = h2 = None
    for i in range(len(sigmas) - 1):
        den = denoise(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x, h = den, None
        else:
            h = np.log(sigmas[i]) - np.log(sigmas[i + 1])
            h_eta = h * (eta + 1)
            x = np.exp(-h_eta) * x + -np.expm1(-h_eta) * den
            if order == 3 and h2 is not None:
                r0, r1 = h1 / h, h2 / h
                d1_0, d1_1 = (den - d1) / r0, (d1 - d2) / r1
                dd1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                dd2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = np.expm1(-h_eta) / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * dd1 - phi_3 * dd2
            elif order == 3 and h1 is not None:
                x = x + (np.expm1(-h_eta) / h_eta + 1) * (den - d1) / (h1 / h)
            elif order == 2 and h1 is not None:
                x = x + 0.5 * -np.expm1(-h_eta) * (1 / (h1 / h)) * (den - d1)
            if eta:
                x = x + noise(key, i) * sigmas[i + 1] * np.sqrt(-np.expm1(-2 * h * eta))
        d1, d2, h1, h2 = den, d1, h, h1
    return x


@pytest.mark.parametrize("name,order,eta", [("dpm_solver++", 2, 0.0), ("dpm_solver++_3m", 3, 0.0),
                                            ("dpm_solver++_sde", 2, 1.0)])
def test_dpm_solver_pp_variants_match_k_diffusion_in_float64(small_x, name, order, eta):
    family, key, n = families.edm(), jax.random.PRNGKey(6), 7
    sigmas = processes.karras_sigmas(n)
    want = k_diffusion_dpmpp(sigmas[0] * np.asarray(small_x, np.float64), sigmas, edm_denoiser_f64, order, eta, key)
    sampler = sampler_registry.make_sampler(family, name, n, clip_x0=False, sde_eta=eta)
    np.testing.assert_allclose(scan64(family, sampler, small_x, key), want, rtol=1e-4, atol=1e-4)


def test_flow_solvers_match_float64_integrators_in_t(small_x):
    """Euler, Heun (no correction on the last step) and the midpoint rule on dx/dt = u(x, t)."""
    family, n = families.flow(shift=3.0), 6
    t = processes.shift_time(np.linspace(1.0, 0.0, n + 1), 3.0)
    u = lambda x, tt: fake_net(x, np.full(x.shape[0], 1000.0 * tt))  # noqa: E731
    for name in ("euler", "heun", "midpoint"):
        x = np.asarray(small_x, np.float64)
        for i in range(n):
            dt = t[i + 1] - t[i]
            if name == "euler" or (name == "heun" and i == n - 1):
                x = x + dt * u(x, t[i])
            elif name == "heun":
                x = x + dt * (u(x, t[i]) + u(x + dt * u(x, t[i]), t[i + 1])) / 2
            else:
                x = x + dt * u(x + 0.5 * dt * u(x, t[i]), 0.5 * (t[i] + t[i + 1]))
        sampler = sampler_registry.make_sampler(family, name, n, clip_x0=False)
        np.testing.assert_allclose(scan64(family, sampler, small_x, jax.random.PRNGKey(0)), x, rtol=1e-4, atol=1e-4)


def test_euler_is_ddim_and_euler_ancestral_is_ddim_with_the_same_eta(small_x):
    family = families.ddpm(TABLES)
    key = jax.random.PRNGKey(8)
    for eta, to_one in ((0.0, True), (1.0, True), (0.5, True), (1.0, False)):
        ddim = sampler_registry.make_sampler(family, "ddim", 10, "trailing", eta=eta, clip_x0=False, set_alpha_to_one=to_one)
        ours = sampler_registry.make_sampler(family, "euler_ancestral" if eta else "euler", 10, "trailing", sde_eta=eta,
                                    clip_x0=False, set_alpha_to_one=to_one)
        np.testing.assert_allclose(scan64(family, ours, small_x, key), scan64(family, ddim, small_x, key),
                                   rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- the maths

@settings(max_examples=60, deadline=None)
@given(st.floats(1e-3, 1.0), st.floats(1e-3, 1.0), st.sampled_from(processes.PREDICTIONS), st.integers(0, 10 ** 6))
def test_predictions_round_trip(alpha, sigma, kind, seed):
    if kind == "flow":  # the linear interpolant: alpha + sigma = 1
        alpha = 1.0 - sigma if sigma < 1.0 else 1e-3
    k0, k1 = jax.random.split(jax.random.PRNGKey(seed))
    x0, eps = jax.random.normal(k0, (2, 3, 3, 1)), jax.random.normal(k1, (2, 3, 3, 1))
    x = alpha * x0 + sigma * eps
    out = processes.prediction_from_x0_eps(kind, x0, eps, alpha, sigma)
    x0_hat, eps_hat = processes.x0_eps_from_prediction(kind, x, out, alpha, sigma)
    scale = max(1.0, 1.0 / alpha, 1.0 / sigma)
    np.testing.assert_allclose(x0_hat, x0, atol=2e-5 * scale)
    np.testing.assert_allclose(eps_hat, eps, atol=2e-5 * scale)


@settings(max_examples=60, deadline=None)
@given(st.floats(1e-3, 0.999), st.sampled_from(["vp_linear", "vp_cosine", "linear", "edm"]))
def test_time_from_logsnr_inverts_every_process(t, name):
    process = {"vp_linear": processes.vp_linear(), "vp_cosine": processes.vp_cosine(),
               "linear": processes.linear_interpolant(), "edm": processes.variance_exploding()}[name]
    if name == "edm":
        t = 0.002 + t * 80.0
    np.testing.assert_allclose(process.time_from_logsnr(process.logsnr(np.float64(t))), t, rtol=1e-8, atol=1e-10)
    alpha, sigma = process.alpha_sigma(np.float64(t), np)
    ja, js = process.alpha_sigma(jnp.float32(t), jnp)
    np.testing.assert_allclose([float(ja), float(js)], [alpha, sigma], rtol=2e-5, atol=1e-6)


def test_vp_linear_is_the_continuous_limit_of_ddpm_linear():
    abar_discrete = TABLES.alphas_cumprod
    alpha, _ = processes.vp_linear().alpha_sigma(np.arange(1, 1001) / 1000.0, np)
    np.testing.assert_allclose(np.log(alpha ** 2), np.log(abar_discrete), atol=0.07)  # within 7% at every step


def test_vp_cosine_is_the_cosine_schedule_inside_its_log_snr_bounds():
    t = np.linspace(0.05, 0.95, 19)
    alpha, sigma = processes.vp_cosine().alpha_sigma(t, np)
    np.testing.assert_allclose(alpha ** 2, np.cos(np.pi * t / 2) ** 2, atol=3e-4)  # the log-SNR bounds move it
    np.testing.assert_allclose(alpha ** 2 + sigma ** 2, 1.0, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.floats(1e-3, 200.0), st.floats(0.1, 2.0))
def test_edm_preconditioning_and_loss_weight_against_table_1(sigma, sigma_data):
    c = processes.edm_preconditioning(np.float64(sigma), sigma_data, xp=np)
    total = sigma * sigma + sigma_data * sigma_data
    np.testing.assert_allclose([c.c_skip, c.c_out, c.c_in, c.c_noise],
                               [sigma_data ** 2 / total, sigma * sigma_data / total ** 0.5, total ** -0.5,
                                np.log(sigma) / 4], rtol=1e-12)
    weight = processes.edm_loss_weight(np.float64(sigma), sigma_data)
    np.testing.assert_allclose(weight * c.c_out ** 2, 1.0, rtol=1e-12)  # unit effective weight on F
    # for data of std sigma_data: the network input and its regression target have unit variance
    np.testing.assert_allclose(c.c_in ** 2 * total, 1.0, rtol=1e-12)
    target_var = ((1 - c.c_skip) ** 2 * sigma_data ** 2 + c.c_skip ** 2 * sigma ** 2) / c.c_out ** 2
    np.testing.assert_allclose(target_var, 1.0, rtol=1e-9)


def test_karras_sigmas_against_the_formula():
    n, lo, hi, rho = 18, 0.002, 80.0, 7.0
    got = processes.karras_sigmas(n, lo, hi, rho)
    want = [(hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho for i in range(n)] + [0.0]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[0] == pytest.approx(hi) and got[n - 1] == pytest.approx(lo) and got[-1] == 0.0
    assert np.all(np.diff(got) < 0)


def test_training_distributions():
    key = jax.random.PRNGKey(0)
    log_sigma = np.log(np.asarray(processes.sample_log_normal(key, (200_000,), -1.2, 1.2), np.float64))
    assert abs(log_sigma.mean() + 1.2) < 0.01 and abs(log_sigma.std() - 1.2) < 0.01
    t = np.asarray(processes.sample_logit_normal(key, (200_000,), 0.5, 0.8), np.float64)
    u = np.log(t / (1 - t))
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.std() - 0.8) < 0.01
    grid = np.linspace(0, 1, 11)
    assert processes.shift_time(grid, 1.0) == pytest.approx(grid)
    shifted = processes.shift_time(grid, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1 and np.all(shifted[1:-1] > grid[1:-1])


def test_zero_terminal_snr_rescaling():
    """Lin et al. 2024, Algorithm 1: sqrt(abar) becomes an affine function of the original that is
    sqrt(abar_1) at t = 1 and 0 at t = T."""
    betas = schedules.linear_betas(1000)
    rescaled = schedules.rescale_zero_terminal_snr(betas)
    before, after = np.sqrt(np.cumprod(1 - betas)), np.sqrt(np.cumprod(1 - rescaled))
    assert after[-1] == pytest.approx(0.0, abs=1e-12) and after[0] == pytest.approx(before[0], rel=1e-12)
    slope, intercept = np.polyfit(before, after, 1)
    np.testing.assert_allclose(slope * before + intercept, after, atol=1e-12)
    tables = schedules.make_tables(rescaled)
    assert tables.alphas_cumprod[-1] == 0 and np.all(np.isfinite(tables.posterior_variance))


# --------------------------------------------------------------------------- training losses

@pytest.mark.parametrize("name", ["ddpm", "vp", "edm", "flow"])
def test_loss_of_the_exact_denoiser_is_below_that_of_a_zero_network(name):
    """Each family's loss is smallest for the exact Gaussian denoiser (the loss is its regression)."""
    family = FAMILIES[name]
    key = jax.random.PRNGKey(2)
    x0 = MU + S * jax.random.normal(jax.random.PRNGKey(9), (4096, 2, 2, 1))
    t, eps = family.draw(key, x0)
    prior = gaussian.isotropic(np.full((2, 2, 1), MU), S)
    exact, _ = family.loss(gaussian.exact_net(family, prior, PROCESS.get(name)), x0, t, eps)
    zero, _ = family.loss(lambda x, tt: jnp.zeros_like(x), x0, t, eps)
    assert float(exact) < 0.9 * float(zero), (float(exact), float(zero))
    if name == "edm":  # data of std sigma_data: lambda(sigma) times the posterior variance is exactly 1
        assert abs(float(exact) - 1.0) < 0.05


def test_edm_loss_is_the_weighted_denoising_error():
    family = families.edm()
    x0 = jax.random.normal(jax.random.PRNGKey(1), (8, 4, 4, 1))
    sigma, n = family.draw(jax.random.PRNGKey(2), x0)
    mean, per = family.loss(fake_net, x0, sigma, n)
    s = np.asarray(sigma, np.float64)[:, None, None, None]
    x = np.asarray(x0, np.float64) + s * np.asarray(n, np.float64)
    d = np.stack([edm_denoiser_f64(x[i:i + 1], s[i, 0, 0, 0]) for i in range(8)])[:, 0]
    want = ((s ** 2 + 0.25) / (s * 0.5) ** 2)[:, 0, 0, 0] * np.mean((d - np.asarray(x0)) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(per, want, rtol=1e-4)
    np.testing.assert_allclose(float(mean), want.mean(), rtol=1e-4)


def test_flow_loss_is_the_velocity_regression():
    family = families.flow(t_sampling="uniform")
    x0 = jax.random.normal(jax.random.PRNGKey(1), (8, 4, 4, 1))
    t, n = family.draw(jax.random.PRNGKey(2), x0)
    _, per = family.loss(fake_net, x0, t, n)
    tt = np.asarray(t, np.float64)[:, None, None, None]
    xt = (1 - tt) * np.asarray(x0, np.float64) + tt * np.asarray(n, np.float64)
    u = fake_net(xt, 1000.0 * tt[:, 0, 0, 0])
    np.testing.assert_allclose(per, np.mean((u - (np.asarray(n) - np.asarray(x0))) ** 2, axis=(1, 2, 3)), rtol=1e-4)


# --------------------------------------------------------------------------- reflow pieces

def test_generate_keeps_each_samples_noise_and_the_ode_maps_it_to_the_sample():
    family = families.flow()
    sampler = sampler_registry.make_sampler(family, "midpoint", 5, clip_x0=False)
    apply_fn = lambda params, x, t, y: params * fake_net(x, t)  # noqa: E731
    out = generation.generate(apply_fn, jnp.float32(0.7), sampler, (7, 4, 4, 1), jax.random.PRNGKey(4),
                              batch_size=3, keep_noise=True)  # three chunks, the last one padded
    assert out.noise.shape == (7, 4, 4, 1)
    again = np.asarray(run_sampler(sampler, lambda x, t: apply_fn(0.7, x, t, None), jnp.asarray(out.noise),
                                            jax.random.PRNGKey(0)).samples)
    np.testing.assert_allclose(again, out.samples, rtol=1e-5, atol=1e-5)
    assert np.max(np.abs(out.noise[:3] - out.noise[3:6])) > 0.1  # chunks draw different noise


def test_a_batch_with_paired_noise_trains_on_that_noise():
    family = families.flow(t_sampling="uniform")
    apply_fn = lambda params, x, t, y, dropout_key=None: params["w"] * fake_net(x, t)  # noqa: E731
    tx = optim.make_optimizer(optim.learning_rate_schedule(1e-3, 0))
    train_step = jax.jit(step_lib.make_train_step(apply_fn, family, tx, seed=3))
    state = state_lib.init_train_state({"w": jnp.float32(0.5)}, tx)
    x0 = jax.random.normal(jax.random.PRNGKey(1), (8, 4, 4, 1))
    paired = jax.random.normal(jax.random.PRNGKey(2), (8, 4, 4, 1))
    _, with_pairs = train_step(state, {"image": x0, "noise": paired})
    _, fresh = train_step(state, {"image": x0})
    t, drawn = family.draw(keys.step_keys(3, 0)["loss"], x0)
    net = lambda x, tt: apply_fn({"w": 0.5}, x, tt, None)  # noqa: E731
    np.testing.assert_allclose(with_pairs["loss"], family.loss(net, x0, t, paired)[0], rtol=1e-5)
    np.testing.assert_allclose(fresh["loss"], family.loss(net, x0, t, drawn)[0], rtol=1e-5)


# --------------------------------------------------------------------------- guidance

NUM_CLASSES = 3


def cond_apply(x, t, y):
    return fake_net(x, t) + 0.2 * (y[:, None, None, None].astype(jnp.float32) - 1.0)


@pytest.mark.parametrize("name", ["ddpm", "vp", "edm", "flow"])
def test_guidance_works_for_every_family_and_the_interval_limits_it(small_x, name):
    family = FAMILIES[name]
    sampler = sampler_registry.make_sampler(family, "heun" if name == "edm" else "dpm_solver++", 6, clip_x0=False)
    labels = jnp.array([0, 1, 2, 0, 1, 2])
    key = jax.random.PRNGKey(3)

    def sample(scale, interval=None):
        t_interval = generation.network_time_interval(sampler, interval)
        net = guidance.guided_denoise_fn(cond_apply, labels, scale, NUM_CLASSES, t_interval)
        return np.asarray(jax.jit(lambda x: run_sampler(sampler, net, sampler.prior_scale * x, key).samples)(
            small_x))

    plain = np.asarray(jax.jit(lambda x: run_sampler(
        sampler, lambda xx, t: cond_apply(xx, t, labels), sampler.prior_scale * x, key).samples)(small_x))
    np.testing.assert_allclose(sample(1.0), plain, rtol=1e-5, atol=1e-5)
    guided = sample(3.0)
    assert np.max(np.abs(guided - plain)) > 1e-2
    np.testing.assert_allclose(sample(3.0, (0.0, np.inf)), guided, rtol=1e-5, atol=1e-5)  # every level guided
    np.testing.assert_allclose(sample(3.0, (1e8, 1e9)), plain, rtol=1e-5, atol=1e-5)  # ... or none
    middle = sample(3.0, (0.3, 3.0))
    assert np.max(np.abs(middle - plain)) > 1e-3 and np.max(np.abs(middle - guided)) > 1e-3


# --------------------------------------------------------------------------- bad choices

def config_with(**values):
    return set_fields(default.get_config(), values)


@pytest.mark.parametrize("values,message", [
    ({"diffusion.family": "score"}, "diffusion.family='score'"),
    ({"diffusion.family": "edm", "sampling.sampler": "ddim"}, "runs the discrete DDPM chain"),
    ({"diffusion.family": "flow", "sampling.sampler": "edm_stochastic"}, "adds noise in sigma"),
    ({"sampling.sampler": "midpoint"}, "evaluates between table rows"),
    ({"diffusion.family": "edm", "sampling.num_steps": -1}, "num_steps"),
    ({"sampling.num_steps": 1001}, "at most diffusion.num_timesteps=1000"),
    ({"diffusion.family": "flow", "diffusion.target": "eps"}, "does not fit diffusion.family='flow'"),
    ({"diffusion.family": "edm", "diffusion.loss_weighting": "min_snr"}, "has its own weighting"),
    ({"diffusion.family": "vp", "diffusion.schedule": "sigmoid_abar"}, "no continuous-time form"),
    ({"diffusion.family": "flow", "sampling.spacing": "karras"}, "does not fit diffusion.family='flow'"),
    ({"diffusion.zero_terminal_snr": True}, "need target=v or x0"),
    ({"diffusion.zero_terminal_snr": True, "diffusion.target": "v", "sampling.sampler": "heun",
      "sampling.spacing": "trailing", "sampling.num_steps": 20}, "needs alpha > 0"),
    ({"diffusion.family": "edm", "diffusion.zero_terminal_snr": True}, "does not apply"),
    ({"model.class_conditional": True, "sampling.guidance_interval": (0.5,)}, "guidance_interval"),
])
def test_bad_family_and_solver_choices_are_one_line_config_errors(values, message):
    with pytest.raises(config_checks.ConfigError, match=message) as info:
        config_checks.validate(config_with(**values))
    assert "\n" not in str(info.value)


def test_every_family_config_validates_and_builds():
    for name in families.FAMILIES:
        config = config_with(**{"diffusion.family": name, "model.class_conditional": True,
                                "sampling.guidance_scale": 2.0, "sampling.guidance_interval": (0.2, 5.0)})
        config_checks.validate(config)
        assert family_from_config(config.diffusion).name == name
