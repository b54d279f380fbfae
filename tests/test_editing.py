"""Editing and restoration against closed forms: measurement operators against float64 NumPy
matrices, and every method driven by the exact denoiser of Gaussian data (``tests/gaussian.py``),
whose posteriors are known.

Stated bounds, 4x4x1 images, 4,096 samples (Monte-Carlo standard error of a mean 0.5 / 64 = 0.008,
of a variance entry 0.25 * sqrt(2 / 4096) = 0.006): exact methods (RePaint and DDNM on an
isotropic prior, SDEdit, inversion) within |mean| 0.035 and |cov| 0.06 of the closed form;
approximate ones (RePaint on correlated pixels, DPS) within the bounds stated at each test.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from jaxdiff.core import editing, families, generation, operators, processes, restoration, sampler_registry, schedules
from jaxdiff.core.sampler import run_sampler
from tests import gaussian

SHAPE = (4, 4, 1)
N = 4096
TABLES = schedules.make_tables(schedules.linear_betas(1000))
FAMILIES = {"ddpm": families.ddpm(TABLES), "edm": families.edm(), "flow": families.flow()}
PROCESS = {"flow": processes.linear_interpolant()}
ISO = gaussian.isotropic(0.3 * np.random.default_rng(1).uniform(-1, 1, SHAPE), 0.5)
SMOOTH = gaussian.smooth(SHAPE, 0.5, 2.0)
X_TRUE = ISO.sample(np.random.default_rng(0), 1)[0]
KNOWN = np.concatenate([np.ones((4, 2, 1)), np.zeros((4, 2, 1))], axis=1)  # the left half is known
EXACT_MEAN, EXACT_COV = 0.035, 0.06


def net_for(family_name, prior=ISO):
    return gaussian.exact_net(FAMILIES[family_name], prior, PROCESS.get(family_name))


def batch(image, n=N):
    return jnp.broadcast_to(jnp.asarray(image, jnp.float32), (n,) + np.shape(image))


def max_errors(samples, mean, cov):
    m, c = gaussian.moments(np.asarray(samples))
    return float(np.abs(m - mean).max()), float(np.abs(c - cov).max())


def mask_matrix(known):
    return np.diag(known.reshape(-1))[known.reshape(-1) > 0]


def sample_ddnm_or_dps(family_name, method, operator, y, name="euler_ancestral", steps=100, scale=1.0, prior=ISO):
    family = FAMILIES[family_name]
    grid = family.grid(steps, sampler_registry.resolve_spacing(family, name, "auto"), True)

    def run(y, key):
        if method == "ddnm":
            sampler = sampler_registry.sampler_on_grid(restoration.ddnm_family(family, operator, y), name, grid, clip_x0=False)
        else:
            sampler = restoration.dps_sampler(sampler_registry.sampler_on_grid(family, name, grid, clip_x0=False), operator,
                                              y, scale)
        x_T = generation.prior_noise(key, (y.shape[0],) + SHAPE, sampler.prior_scale)
        return run_sampler(sampler, net_for(family_name, prior), x_T, jax.random.fold_in(key, 1)).samples

    return np.asarray(jax.jit(run)(y, jax.random.PRNGKey(0)))


# --------------------------------------------------------------------------- operators

def dense(operator_fn, image_shape, out_shape):
    """The matrix of a batched linear map, column by column (float32 in, float64 out)."""
    eye = np.eye(int(np.prod(image_shape)), dtype=np.float32).reshape((-1,) + tuple(image_shape))
    return np.asarray(operator_fn(jnp.asarray(eye)), np.float64).reshape(len(eye), -1).T


def reference_matrix(name, image_shape, scale):
    """Float64 NumPy matrices built independently of the operators' code."""
    h, w, c = image_shape
    idx = np.arange(h * w * c).reshape(image_shape)
    if name == "super_resolution":
        f = scale
        A = np.zeros((h // f * w // f * c, h * w * c))
        out = np.arange(A.shape[0]).reshape(h // f, w // f, c)
        for i in range(h):
            for j in range(w):
                for k in range(c):
                    A[out[i // f, j // f, k], idx[i, j, k]] = 1.0 / f ** 2
        return A
    if name == "colorization":
        A = np.zeros((h * w, h * w * c))
        for i in range(h):
            for j in range(w):
                A[i * w + j, idx[i, j]] = 1.0 / c
        return A
    if name in ("deblur_gaussian", "deblur_box"):
        kernel = operators.gaussian_kernel(scale) if name == "deblur_gaussian" else operators.box_kernel(scale)
        r = kernel.shape[0] // 2
        A = np.zeros((h * w * c, h * w * c))
        for i in range(h):
            for j in range(w):
                for a in range(kernel.shape[0]):
                    for b in range(kernel.shape[1]):
                        for k in range(c):  # y[i, j] = sum k[a, b] x[i + a - r, j + b - r] (circular)
                            A[idx[i, j, k], idx[(i + a - r) % h, (j + b - r) % w, k]] += kernel[a, b]
        return A
    return np.eye(h * w * c)


OPERATOR_CASES = [("super_resolution", 2), ("super_resolution", 4), ("colorization", 0), ("deblur_gaussian", 1.0),
                  ("deblur_box", 3), ("denoise", 0)]


def each_operator_always(test):
    """``test`` with every case of :data:`OPERATOR_CASES` among its examples, not only those hypothesis draws."""
    for case in OPERATOR_CASES:
        test = example(case, (8, 8, 3))(test)
    return test


@settings(max_examples=12, deadline=None)
@given(st.sampled_from(OPERATOR_CASES),
       st.sampled_from([(8, 8, 3), (8, 12, 3), (12, 8, 1), (4, 8, 3)]))  # the 7x7 Gaussian wraps around 4 rows
@each_operator_always
def test_every_operator_is_its_matrix_with_the_exact_transpose_and_pseudo_inverse(case, image_shape):
    name, scale = case
    if name == "colorization" and image_shape[2] == 1:
        with pytest.raises(ValueError, match="colour images"):
            operators.operator_from_name(name, scale, image_shape[2]).measurement_shape(image_shape)
        return
    op = operators.operator_from_name(name, scale, image_shape[2])
    out_shape = op.measurement_shape(image_shape)
    A = reference_matrix(name, image_shape, int(scale) if name != "deblur_gaussian" else scale)
    np.testing.assert_allclose(dense(op.forward, image_shape, out_shape), A, atol=1e-6)
    np.testing.assert_allclose(dense(op.transpose, out_shape, image_shape), A.T, atol=1e-6)
    rcond = 1e-3 if name.startswith("deblur") else 1e-10
    np.testing.assert_allclose(dense(op.pinv, out_shape, image_shape), np.linalg.pinv(A, rcond=rcond), atol=2e-4)


def test_inpainting_operator_is_the_mask_and_its_own_pseudo_inverse():
    op = operators.inpainting(KNOWN)
    A = np.diag(KNOWN.reshape(-1))
    for fn in (op.forward, op.transpose, op.pinv):
        np.testing.assert_allclose(dense(fn, SHAPE, SHAPE), A)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2,) + SHAPE), jnp.float32)
    np.testing.assert_allclose(op.project_null(x), (1 - KNOWN) * np.asarray(x), atol=1e-7)


def test_bad_operators_and_masks_are_one_line_errors():
    cases = [
        (lambda: operators.inpainting(np.ones((4, 4))), "mask must be"),
        (lambda: operators.inpainting(np.full((4, 4, 1), 0.5)), "zeros and ones"),
        (lambda: operators.inpainting(np.ones((4, 3, 1))).measurement_shape((4, 4, 1)), "the images are"),
        (lambda: operators.inpainting(np.ones((4, 4, 2))).measurement_shape((4, 4, 3)), "the images are"),
        (lambda: operators.super_resolution(3).measurement_shape((8, 8, 1)), "divisible by 3"),
        (lambda: operators.super_resolution(1), "integer >= 2"),
        (lambda: operators.colorization(3).measurement_shape((8, 8, 1)), "colour images"),
        (lambda: operators.gaussian_kernel(0.0), "positive"),
        (lambda: operators.operator_from_name("sharpen"), "unknown operator"),
        (lambda: editing.sdedit_start(10, 1.5), "between 0"),
        (lambda: editing.repaint_levels(10, 0, 2), ">= 1"),
        (lambda: editing.interpolation_path(np.ones((1, 2)), np.ones((1, 2)), 1), "at least 2"),
        (lambda: restoration.dps_sampler(sampler_registry.make_sampler(FAMILIES["edm"], "euler", 4), operators.identity(),
                                         jnp.zeros((1,) + SHAPE), -1.0), "non-negative"),
        (lambda: restoration.x0_eps_form("ddpm", variance="fixed_large"), "fixed_large"),
        (lambda: restoration.x0_eps_form("ddim", eta=1.5), "eta <= 1"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match) as info:
            fn()
        assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- SDEdit

def test_sdedit_at_strength_0_is_the_input_and_at_1_the_unconditional_sample():
    family = FAMILIES["edm"]
    grid, sampler = editing.grid_and_sampler(family, "heun", 8, clip_x0=False)
    make = functools.partial(sampler_registry.sampler_on_grid, family, "heun", clip_x0=False)
    x = batch(X_TRUE, 4)
    key = jax.random.PRNGKey(3)
    assert editing.sdedit(make, grid, net_for("edm"), x, key, 0.0) is x
    edited = editing.sdedit(make, grid, net_for("edm"), x, jax.random.fold_in(key, 0), 1.0)
    fresh = generation.generate(lambda p, xx, t, y: net_for("edm")(xx, t), None, sampler, (4,) + SHAPE, key)
    np.testing.assert_allclose(np.asarray(edited), fresh.samples, atol=1e-5)  # one program vs another's fusion
    assert [editing.sdedit_start(10, s) for s in (0.0, 0.25, 0.5, 0.99, 1.0)] == [10, 8, 5, 1, 0]


# --------------------------------------------------------------------------- RePaint

def test_repaint_levels_are_repaints_schedule():
    assert list(editing.repaint_levels(5, 10, 10)) == [0, 1, 2, 3, 4, 5]
    levels = editing.repaint_levels(250, 10, 10)
    assert levels[0] == 0 and levels[-1] == 250 and set(np.abs(np.diff(levels))) == {1}
    ups = np.sum(np.diff(levels) < 0)
    assert ups == 10 * 9 * 24  # r - 1 = 9 jumps of j = 10 at each of range(0, 240, 10)
    assert len(levels) - 1 == 250 + 2 * ups


def test_repaint_resampling_harmonises_correlated_pixels():
    """With correlated pixels plain replacement misses the conditional mean (measured 0.087) and
    resampling (5 per jump of 5 levels) comes within 0.06 of it (measured 0.032); the ddpm family's
    own DDPM sampler does the same."""
    x_true = SMOOTH.sample(np.random.default_rng(0), 1)[0]
    A = mask_matrix(KNOWN)
    mean, cov = gaussian.posterior(SMOOTH, A, A @ x_true.reshape(-1))
    errors = {}
    for name, r in [("euler_ancestral", 1), ("euler_ancestral", 5), ("ddpm", 5)]:
        grid, sampler = editing.grid_and_sampler(FAMILIES["ddpm"], name, 100, clip_x0=False)
        run = jax.jit(lambda x, k: editing.repaint(sampler, grid, net_for("ddpm", SMOOTH), x, KNOWN, k,
                                                   jump_length=5, jump_n_sample=r))
        out = run(batch(x_true), jax.random.PRNGKey(0))
        errors[name, r] = max_errors(out, mean, cov)
    plain, resampled, ddpm = errors["euler_ancestral", 1], errors["euler_ancestral", 5], errors["ddpm", 5]
    assert plain[0] > 2 * resampled[0] and resampled[0] < 0.06 and ddpm[0] < 0.06, errors
    assert resampled[1] < EXACT_COV and ddpm[1] < EXACT_COV, errors


def test_repaint_resampling_refuses_multistep_samplers():
    grid, sampler = editing.grid_and_sampler(FAMILIES["edm"], "dpm_solver++", 10, clip_x0=False)
    with pytest.raises(ValueError, match="multistep"):
        editing.repaint(sampler, grid, net_for("edm"), batch(X_TRUE, 2), KNOWN, jax.random.PRNGKey(0))
    assert not editing.is_one_step(sampler) and editing.is_one_step(
        editing.grid_and_sampler(FAMILIES["edm"], "heun", 10)[1])


# --------------------------------------------------------------------------- DDNM and DPS

@pytest.mark.parametrize("family_name", ["ddpm", "edm", "flow"])
def test_ddnm_samples_the_exact_posterior_for_inpainting_and_super_resolution(family_name):
    sr = operators.super_resolution(2)
    cases = [(operators.inpainting(KNOWN), mask_matrix(KNOWN)), (sr, reference_matrix("super_resolution", SHAPE, 2))]
    for operator, A in cases:
        y = A @ X_TRUE.reshape(-1)
        y_image = batch(np.asarray(operator.forward(jnp.asarray(X_TRUE[None], jnp.float32)))[0])
        mean, cov = gaussian.posterior(ISO, A, y)
        out = sample_ddnm_or_dps(family_name, "ddnm", operator, y_image)
        residual = np.abs(out.reshape(N, -1) @ A.T - y).max()  # the range part is y itself
        err_mean, err_cov = max_errors(out, mean, cov)
        assert residual < 1e-5 and err_mean < EXACT_MEAN and err_cov < EXACT_COV, (operator.name, residual,
                                                                                    err_mean, err_cov)


def test_ddpm_and_ddim_are_their_x0_eps_forms():
    """DDNM runs the ddpm family's DDPM and DDIM chains as Euler (ancestral): the same samples."""
    family, net = FAMILIES["ddpm"], net_for("ddpm")
    x_T, key = jax.random.normal(jax.random.PRNGKey(0), (64,) + SHAPE), jax.random.PRNGKey(1)
    for name, eta, steps in [("ddpm", 0.0, 50), ("ddim", 0.0, 20), ("ddim", 0.5, 20)]:
        grid, own = editing.grid_and_sampler(family, name, steps, clip_x0=False, eta=eta)
        general, sde_eta = restoration.x0_eps_form(name, eta)
        other = sampler_registry.sampler_on_grid(family, general, grid, sde_eta=sde_eta, clip_x0=False)
        a, b = (np.asarray(run_sampler(s, net, x_T, key).samples) for s in (own, other))
        np.testing.assert_allclose(a, b, atol=2e-4, err_msg=name)


def test_dps_approaches_the_noisy_super_resolution_posterior():
    """y = A x + 0.05 n with A 2x2 average pooling: the prior's mean is 0.57 from the posterior mean;
    DPS (zeta = 0.3, Euler ancestral, 100 steps) comes within 0.05 (measured 0.025) and its
    covariance within 0.06; zeta = 0 is the plain sampler (to float rounding)."""
    A, noise = reference_matrix("super_resolution", SHAPE, 2), 0.05
    y = A @ X_TRUE.reshape(-1) + noise * np.random.default_rng(5).standard_normal(4)
    mean, cov = gaussian.posterior(ISO, A, y, noise)
    y_image = batch(y.reshape(2, 2, 1))
    out = sample_ddnm_or_dps("ddpm", "dps", operators.super_resolution(2), y_image, scale=0.3)
    err_mean, err_cov = max_errors(out, mean, cov)
    assert np.abs(ISO.mean - mean).max() > 0.5 and err_mean < 0.05 and err_cov < EXACT_COV, (err_mean, err_cov)
    family = FAMILIES["edm"]
    base = sampler_registry.make_sampler(family, "euler_ancestral", 6, clip_x0=False)
    x_T, key = jax.random.normal(jax.random.PRNGKey(0), (8,) + SHAPE) * 80.0, jax.random.PRNGKey(1)
    guided = restoration.dps_sampler(base, operators.super_resolution(2), y_image[:8], 0.0)
    np.testing.assert_allclose(np.asarray(run_sampler(guided, net_for("edm"), x_T, key).samples),
                               np.asarray(run_sampler(base, net_for("edm"), x_T, key).samples), atol=1e-6)


# --------------------------------------------------------------------------- inversion, interpolation

@pytest.mark.parametrize("family_name", ["ddpm", "edm", "flow"])
def test_ddim_inversion_maps_data_to_the_prior_and_reconstructs_it(family_name):
    family, net = FAMILIES[family_name], net_for(family_name)
    grid = family.grid(200, sampler_registry.resolve_spacing(family, "euler", "auto"), True)
    data = jnp.asarray(ISO.sample(np.random.default_rng(2), N), jnp.float32)
    x_T = jax.jit(lambda x: editing.invert(family, grid, net, x))(data)
    back = np.asarray(jax.jit(lambda z: editing.reconstruct(family, grid, net, z))(x_T))
    z = np.asarray(x_T, np.float64) / grid.prior_scale
    assert abs(z.mean()) < 0.02 and abs(z.var() - 1) < 0.05, (z.mean(), z.var())
    rms = np.sqrt(np.mean((back - np.asarray(data)) ** 2))
    assert rms < 0.02, rms


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.floats(0.0, 1.0))
def test_slerp_keeps_the_ends_and_the_norm_of_orthogonal_unit_noise(seed, u):
    rng = np.random.default_rng(seed)
    z0, z1 = rng.standard_normal((2, 3, 16))
    z1 -= (z1 * z0).sum(-1, keepdims=True) / (z0 * z0).sum(-1, keepdims=True) * z0  # orthogonal to z0
    z0, z1 = z0 / np.linalg.norm(z0, axis=-1, keepdims=True), z1 / np.linalg.norm(z1, axis=-1, keepdims=True)
    out = np.asarray(editing.slerp(z0, z1, u), np.float64)
    expected = np.cos(u * np.pi / 2) * z0 + np.sin(u * np.pi / 2) * z1
    np.testing.assert_allclose(out, expected, atol=1e-5)
    path = np.asarray(editing.interpolation_path(z0, z1, 3))
    np.testing.assert_allclose(path[:3], z0, atol=1e-6)
    np.testing.assert_allclose(path[6:], z1, atol=1e-6)
    np.testing.assert_allclose(editing.slerp(z0, z0, u), z0, atol=1e-6)  # parallel rows: linear
