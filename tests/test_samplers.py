"""Samplers: golden float64 NumPy references, identities between samplers, guidance, chunking,
bad input, and the closed-form Gaussian check.

The Gaussian check: for data ``x0 ~ N(mu, s^2 I)`` the optimal predictions are known exactly,
``eps*(x_t) = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a)`` with ``a = abar_t`` (and the matching
``x0*``, ``v*``), so a correct sampler driven by them must return samples with mean ``mu`` and
variance ``s^2`` up to its discretisation error. Stated tolerances: |mean - mu| < 0.015 and
|var / s^2 - 1| < 5% (Monte-Carlo standard errors: 0.003 and 0.8% with 32,768 scalars).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from configs import default
from jaxdiff.core import ddpm_chain, families, grid_samplers, guidance, sampler_registry, schedules
from jaxdiff.core.spacing import spaced_timesteps
from jaxdiff.core.sampler import run_sampler
from jaxdiff.drivers import config_checks as config_lib, sampling_config as sampling_lib
from jaxdiff.models.unet import UNet

T_SMALL = 50
SHAPE = (6, 4, 4, 1)


@pytest.fixture(scope="module")
def tables():
    return schedules.make_tables(schedules.linear_betas(T_SMALL, scale_to_t=True))


@pytest.fixture(scope="module")
def tables_1000():
    return schedules.make_tables(schedules.linear_betas(1000))


def fake_out(x, t):
    """A smooth stand-in network (works for jnp and np): depends on x and t."""
    mod = jnp if isinstance(x, jax.Array) else np
    return 0.7 * mod.tanh(x) + 0.1 * mod.sin(mod.asarray(t) / 7.0)[:, None, None, None]


def make(tables, name, steps, spacing, target="eps", **kw):
    """A sampler of the ddpm family of ``tables``."""
    return sampler_registry.make_sampler(families.ddpm(tables, target), name, steps, spacing, **kw)


def noise_for(key, i, shape):
    """The noise ``run_sampler`` draws at position ``i``, as float64."""
    return np.asarray(jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32), np.float64)


def scan(sampler, x_T, key, fn=fake_out, **kw):
    return jax.jit(lambda x, k: run_sampler(sampler, fn, x, k, **kw))(x_T, key)


@pytest.fixture(scope="module")
def x_T():
    return jax.random.normal(jax.random.PRNGKey(7), SHAPE)


# --------------------------------------------------------------------------- step sequences

def test_spacings_match_their_definitions():
    T, S = 1000, 10
    assert list(spaced_timesteps(T, S, "leading")) == list(range(900, -1, -100))
    assert list(spaced_timesteps(T, S, "trailing")) == list(range(999, 0, -100))
    assert list(spaced_timesteps(T, S, "uniform")) == list(range(0, T, T // S))[::-1]
    assert list(spaced_timesteps(T, S, "linspace")) == [int(round(999 * k / 9)) for k in range(9, -1, -1)]
    quad = [int((np.sqrt(0.8 * T) * k / 9) ** 2) for k in range(9, -1, -1)]
    assert list(spaced_timesteps(T, S, "quad")) == quad
    # DDIM's uniform spacing keeps range(0, T, T // S): 31 steps when S = 30 does not divide T.
    assert len(spaced_timesteps(T, 30, "uniform")) == 31


@settings(max_examples=60, deadline=None)
@given(T=st.integers(1, 1000), frac=st.floats(0.0, 1.0),
       spacing=st.sampled_from(["leading", "trailing", "linspace", "uniform", "logsnr"]), ztsnr=st.booleans())
def test_spacings_are_valid_step_sequences(T, frac, spacing, ztsnr):
    S = max(1, int(round(frac * T)))
    betas = schedules.cosine_betas(T)
    if ztsnr and T > 1:
        betas = schedules.rescale_zero_terminal_snr(betas)
    abar = schedules.make_tables(betas).alphas_cumprod
    if S == 1 and T > 1 and spacing not in ("trailing", "logsnr"):
        with pytest.raises(ValueError, match="evaluates only t=0"):  # one step at the data end
            spaced_timesteps(T, S, spacing, abar)
        return
    seq = spaced_timesteps(T, S, spacing, abar)
    assert np.all(np.diff(seq) < 0) and seq[0] < T and seq[-1] >= 0
    assert len(seq) == S if spacing != "uniform" else len(seq) >= S
    if spacing in ("trailing", "logsnr"):
        assert seq[0] == T - 1
    if spacing != "trailing" and (S > 1 or spacing != "logsnr"):
        assert seq[-1] == 0
    if S == T:
        assert list(seq) == list(range(T - 1, -1, -1))


def test_logsnr_spacing_of_a_zero_terminal_snr_schedule_starts_at_the_prior():
    """lambda_{T-1} = -inf: the old linspace from it was NaN and argmin gave [S-1, ..., 0] (abar 0.97 first)."""
    abar = schedules.make_tables(schedules.rescale_zero_terminal_snr(schedules.linear_betas(1000))).alphas_cumprod
    seq = spaced_timesteps(1000, 50, "logsnr", abar)
    assert seq[0] == 999 and np.all(np.diff(seq) < 0) and seq[-1] == 0 and abar[seq[1]] < 1e-3


def test_linspace_ddim_steps_to_the_next_element_of_its_own_subsequence(tables_1000):
    """diffusers' DDIM uses t - T//S as the previous step for every spacing (wrong for linspace)."""
    seq = spaced_timesteps(1000, 7, "linspace")
    assert list(seq[:2]) == [999, 832] and 999 - 1000 // 7 == 857
    sampler = ddpm_chain.ddim_sampler(tables_1000, seq, eta=0.0, clip_x0=False)
    x = jnp.full((1, 1, 1, 1), 0.4)
    eps = jnp.full((1, 1, 1, 1), -0.3)
    x_next, _, _ = sampler.step(lambda xx, t: eps, x, 0, jax.random.PRNGKey(0), ())
    abar = tables_1000.alphas_cumprod

    def ddim(a, a_prev):
        x0 = (0.4 + np.sqrt(1 - a) * 0.3) / np.sqrt(a)
        return np.sqrt(a_prev) * x0 - np.sqrt(1 - a_prev) * 0.3

    np.testing.assert_allclose(float(x_next[0, 0, 0, 0]), ddim(abar[999], abar[832]), rtol=1e-5)
    assert abs(ddim(abar[999], abar[857]) - ddim(abar[999], abar[832])) > 1e-3


# --------------------------------------------------------------------------- golden references

def test_ddpm_matches_float64_reference(tables, x_T):
    key = jax.random.PRNGKey(3)
    got = ddpm_chain.ddpm_sample(fake_out, tables, x_T, key, "eps", "fixed_small", clip_x0=True).samples
    x = np.asarray(x_T, np.float64)
    for i, t in enumerate(range(T_SMALL - 1, -1, -1)):
        tb = np.full(SHAPE[0], t)
        eps = fake_out(x, tb)
        x0 = np.clip((x - tables.sqrt_one_minus_alphas_cumprod[t] * eps) / tables.sqrt_alphas_cumprod[t], -1, 1)
        mean = tables.posterior_mean_coef_x0[t] * x0 + tables.posterior_mean_coef_xt[t] * x
        std = np.sqrt(tables.posterior_variance[t])
        x = mean + (std * noise_for(key, i, SHAPE) if t > 0 else 0.0)
    np.testing.assert_allclose(np.asarray(got), x, atol=2e-4)


@pytest.mark.parametrize("spacing,eta,set_alpha_to_one", [("linspace", 0.5, True), ("trailing", 1.0, False)])
def test_ddim_matches_float64_reference(tables, x_T, spacing, eta, set_alpha_to_one):
    key = jax.random.PRNGKey(4)
    seq = spaced_timesteps(T_SMALL, 9, spacing)
    got = scan(ddpm_chain.ddim_sampler(tables, seq, "eps", eta, True, set_alpha_to_one), x_T, key).samples
    abar = tables.alphas_cumprod
    final = 1.0 if set_alpha_to_one else abar[0]
    x = np.asarray(x_T, np.float64)
    for i, t in enumerate(seq):
        a, ap = abar[t], (abar[seq[i + 1]] if i + 1 < len(seq) else final)
        x0 = np.clip((x - np.sqrt(1 - a) * fake_out(x, np.full(SHAPE[0], t))) / np.sqrt(a), -1, 1)
        eps = (x - np.sqrt(a) * x0) / np.sqrt(1 - a)  # recomputed from the clipped x0
        sigma = eta * np.sqrt((1 - ap) / (1 - a) * (1 - a / ap)) if i + 1 < len(seq) else 0.0
        x = np.sqrt(ap) * x0 + np.sqrt(1 - ap - sigma ** 2) * eps + sigma * noise_for(key, i, SHAPE)
    np.testing.assert_allclose(np.asarray(got), x, atol=2e-4)


def test_dpm_solver_matches_float64_reference(tables, x_T):
    """Lu et al. 2022, Algorithm 2 (DPM-Solver++(2M)), written out in float64."""
    seq = spaced_timesteps(T_SMALL, 8, "trailing")
    family = families.ddpm(tables)
    got = scan(grid_samplers.dpm_solver_pp_sampler(family, family.grid(8, "trailing"), clip_x0=False), x_T,
               jax.random.PRNGKey(0)).samples
    abar = np.append(tables.alphas_cumprod[seq], 1.0)
    alpha, sigma = np.sqrt(abar), np.sqrt(1 - abar)
    with np.errstate(divide="ignore"):
        lam = np.log(alpha / sigma)
    x, x0s = np.asarray(x_T, np.float64), []
    for i, t in enumerate(seq):
        x0s.append((x - sigma[i] * fake_out(x, np.full(SHAPE[0], t))) / alpha[i])
        h = lam[i + 1] - lam[i]
        if i == 0 or i == len(seq) - 1:  # first step, and the last (to sigma = 0): first order
            d = x0s[-1]
        else:
            r = (lam[i] - lam[i - 1]) / h
            d = (1 + 1 / (2 * r)) * x0s[-1] - 1 / (2 * r) * x0s[-2]
        x = sigma[i + 1] / sigma[i] * x - alpha[i + 1] * np.expm1(-h) * d
    np.testing.assert_allclose(np.asarray(got), x, rtol=2e-6, atol=2e-4)


# --------------------------------------------------------------------------- identities

def test_ddim_eta_one_over_all_steps_is_ddpm_fixed_small(tables, x_T):
    key = jax.random.PRNGKey(5)
    ddpm = ddpm_chain.ddpm_sample(fake_out, tables, x_T, key, "eps", "fixed_small", True).samples
    ddim = scan(make(tables, "ddim", 0, "leading", eta=1.0), x_T, key).samples
    np.testing.assert_allclose(np.asarray(ddim), np.asarray(ddpm), atol=1e-4)
    eta0 = scan(make(tables, "ddim", 0, "leading", eta=0.0), x_T, key).samples
    assert np.max(np.abs(np.asarray(eta0) - np.asarray(ddpm))) > 1e-2


def test_ddim_eta_zero_is_deterministic_in_x_T(tables, x_T):
    def compiled(eta):
        sampler = make(tables, "ddim", 10, "trailing", eta=eta)
        return jax.jit(lambda x, k: run_sampler(sampler, fake_out, x, k).samples)

    det, noisy = compiled(0.0), compiled(1.0)
    a = np.asarray(det(x_T, jax.random.PRNGKey(0)))
    np.testing.assert_array_equal(a, np.asarray(det(x_T, jax.random.PRNGKey(1))))
    assert np.max(np.abs(np.asarray(det(x_T + 0.1, jax.random.PRNGKey(0))) - a)) > 1e-3
    b = np.asarray(noisy(x_T, jax.random.PRNGKey(0)))
    assert np.max(np.abs(np.asarray(noisy(x_T, jax.random.PRNGKey(1))) - b)) > 1e-3


def test_respacing_with_all_steps_reproduces_ddpm(tables, x_T):
    key = jax.random.PRNGKey(6)
    for variance, spacings in [("fixed_small", ["leading", "trailing", "linspace"]), ("fixed_large", ["uniform"])]:
        ref = np.asarray(ddpm_chain.ddpm_sample(fake_out, tables, x_T, key, "eps", variance, True).samples)
        for spacing in spacings:
            sampler = make(tables, "ddpm", T_SMALL, spacing, variance=variance)
            np.testing.assert_allclose(np.asarray(scan(sampler, x_T, key).samples), ref, atol=1e-5)


def test_respaced_ddpm_is_ddim_eta_one_on_the_same_steps(tables, x_T):
    """improved-diffusion's recomputed betas give the posterior variance DDIM's sigma(eta=1) has."""
    key = jax.random.PRNGKey(8)
    a = scan(make(tables, "ddpm", 12, "linspace"), x_T, key).samples
    b = scan(make(tables, "ddim", 12, "linspace", eta=1.0), x_T, key).samples
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


def test_trajectory_frames(tables, x_T):
    sampler = make(tables, "ddim", 10, "trailing")
    out = scan(sampler, x_T, jax.random.PRNGKey(0), trajectory_every=3, trajectory_size=2)
    assert out.trajectory_xt.shape == (5, 2) + SHAPE[1:] and out.trajectory_x0.shape == (5, 2) + SHAPE[1:]
    assert list(out.trajectory_t) == list(sampler.timesteps[[0, 3, 6, 9]]) + [-1]
    np.testing.assert_array_equal(np.asarray(out.trajectory_xt[0]), np.asarray(x_T[:2]))
    np.testing.assert_array_equal(np.asarray(out.trajectory_xt[-1]), np.asarray(out.samples[:2]))
    assert np.max(np.abs(np.asarray(out.trajectory_x0[1] - out.trajectory_x0[2]))) > 1e-4


# --------------------------------------------------------------------------- guidance and chunking

NUM_CLASSES = 3
COND_PARAMS = {"w": jnp.array([0.5, 1.5, -1.0, 0.8]), "b": jnp.array([0.3, -0.2, 0.1, 0.0])}


def cond_apply(params, x, t, y):
    """A cheap class-conditional stand-in network; row ``NUM_CLASSES`` is the null label."""
    w, b = params["w"][y][:, None, None, None], params["b"][y][:, None, None, None]
    return fake_out(x * w, t) + b


def sampling_config(**overrides):
    sc = default.get_config().sampling
    sc.update(dict(sampler="ddim", num_steps=6, trajectory_every=2, batch_size=4), **overrides)
    return sc


def manual_chunk(tables, sc, chunk_key, denoise, n):
    """What chunk ``c`` of :func:`sampling_lib.generate_from_config` must be, for ``chunk_key = fold_in(key, c)``."""
    x_T = jax.random.normal(jax.random.fold_in(chunk_key, 0), (n, 4, 4, 1))
    sampler = sampling_lib.sampler_from_config(families.ddpm(tables), sc)
    return np.asarray(scan(sampler, x_T, jax.random.fold_in(chunk_key, 1), denoise).samples)


def test_guidance_scale_one_is_conditional_and_zero_is_unconditional(tables):
    labels = np.array([0, 1, 2, 2])
    key = jax.random.PRNGKey(2)

    def run(y=labels, **kw):
        return sampling_lib.generate_from_config(cond_apply, COND_PARAMS, families.ddpm(tables), sampling_config(**kw),
                                             (4, 4, 4, 1), key, num_classes=NUM_CLASSES, labels=y).samples

    def plain(y):  # the sampler driven directly by the network with fixed labels, no guidance code
        return manual_chunk(tables, sampling_config(), jax.random.fold_in(key, 0),
                            lambda x, t: cond_apply(COND_PARAMS, x, t, jnp.asarray(y)), 4)

    cond, uncond = plain(labels), plain(np.full(4, NUM_CLASSES))
    np.testing.assert_allclose(run(guidance_scale=1.0), cond, atol=1e-5)
    np.testing.assert_allclose(run(guidance_scale=0.0), uncond, atol=1e-5)
    np.testing.assert_allclose(run(None, labels="none"), uncond, atol=1e-5)
    assert np.max(np.abs(cond - uncond)) > 1e-3
    assert np.max(np.abs(run(guidance_scale=3.0) - cond)) > 1e-3


def test_guidance_formula():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 4, 1))
    t, y = jnp.array([5, 9, 2]), jnp.array([0, 1, 2])
    out, cond, uncond = jax.jit(lambda x, t, y: (
        guidance.guided_denoise_fn(lambda *a: cond_apply(COND_PARAMS, *a), y, 2.5, NUM_CLASSES)(x, t),
        cond_apply(COND_PARAMS, x, t, y), cond_apply(COND_PARAMS, x, t, jnp.full((3,), NUM_CLASSES))))(x, t, y)
    np.testing.assert_allclose(np.asarray(out), np.asarray(uncond + 2.5 * (cond - uncond)), atol=1e-6)


def test_guided_unet_sampling_end_to_end_with_one_batched_call(tables):
    """A tiny class-conditional U-Net through sample_from_config: both guidance branches are one
    network call of twice the chunk (counted while tracing), the result is finite and in range."""
    model = UNet(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0, out_ch=1,
                 num_classes=NUM_CLASSES, groups=4)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 1)), jnp.zeros((1,), jnp.int32),
                                 jnp.zeros((1,), jnp.int32))["params"]
    calls = []

    def apply_fn(p, x, t, y):
        calls.append(None if y is None else y.shape[0])
        assert x.shape[0] == y.shape[0] == t.shape[0]
        return model.apply({"params": p}, x, t, y)

    sc = sampling_config(sampler="ddim", num_steps=4, eta=1.0, guidance_scale=2.5, labels="all", batch_size=3)
    out = sampling_lib.generate_from_config(apply_fn, params, families.ddpm(tables), sc, (5, 4, 4, 1),
                                        jax.random.PRNGKey(0), num_classes=NUM_CLASSES)
    assert calls == [6]
    assert list(out.labels) == [0, 1, 2, 0, 1]
    assert out.samples.shape == (5, 4, 4, 1) and np.all(np.abs(out.samples) <= 1.0)
    assert out.trajectory_x0.shape == (3, 3, 4, 4, 1)


def test_chunks_use_fold_in_keys_and_record_metadata(tables):
    key = jax.random.PRNGKey(11)
    sc = sampling_config(sampler="dpm_solver++", labels="2,0", guidance_scale=2.0)
    out = sampling_lib.generate_from_config(cond_apply, COND_PARAMS, families.ddpm(tables), sc, (10, 4, 4, 1), key,
                                      num_classes=NUM_CLASSES)
    assert out.samples.shape == (10, 4, 4, 1) and np.all(np.isfinite(out.samples))
    assert list(out.labels) == [2, 0] * 5
    assert out.metadata["num_samples"] == 10 and out.metadata["num_steps"] == 6
    assert out.metadata["guidance_scale"] == 2.0 and out.metadata["spacing"] == "logsnr"
    assert out.trajectory_xt.shape == (4, 4, 4, 4, 1) and list(out.trajectory_t)[-1] == -1
    # Samples 4..7 are chunk 1: x_T and noise from fold_in(key, 1), guided labels 2, 0, 2, 0.
    y = jnp.asarray(out.labels[4:8])
    guided = guidance.guided_denoise_fn(lambda x, t, yy: cond_apply(COND_PARAMS, x, t, yy), y, 2.0, NUM_CLASSES)
    np.testing.assert_allclose(out.samples[4:8], manual_chunk(tables, sc, jax.random.fold_in(key, 1), guided, 4),
                               atol=1e-5)
    assert np.max(np.abs(out.samples[:4] - out.samples[4:8])) > 1e-3


def test_unconditional_model_gets_no_labels(tables):
    def apply_fn(params, x, t, y):
        assert y is None
        return fake_out(x, t)

    sc = sampling_config(sampler="ddpm", num_steps=5)
    out = sampling_lib.generate_from_config(apply_fn, {}, families.ddpm(tables), sc, (3, 4, 4, 1), jax.random.PRNGKey(0))
    assert out.labels is None and out.samples.shape == (3, 4, 4, 1) and out.metadata["conditional"] is False
    assert out.metadata["guidance_scale"] is None and out.trajectory_x0.shape == (4, 3, 4, 4, 1)


def test_cache_compiles_each_sampler_once_and_keeps_results(tables):
    traces = []

    def apply_fn(params, x, t, y):
        traces.append(x.shape)  # runs only while tracing
        return fake_out(x, t)

    sc, other = sampling_config(sampler="ddim", num_steps=5), sampling_config(sampler="ddpm", num_steps=5)
    cache, family = {}, families.ddpm(tables)
    run = lambda sc, key, shape=(3, 4, 4, 1): sampling_lib.generate_from_config(  # noqa: E731
        apply_fn, {}, family, sc, shape, jax.random.PRNGKey(key), cache=cache).samples
    programs = lambda: [k for k in cache if k[0] != "sampler"]  # noqa: E731  (the cache also keeps samplers)
    first, second = run(sc, 0), run(sc, 1)
    assert len(traces) == 1 and len(programs()) == 1  # the second call reused the compiled program
    np.testing.assert_array_equal(first, sampling_lib.generate_from_config(
        apply_fn, {}, families.ddpm(tables), sc, (3, 4, 4, 1), jax.random.PRNGKey(0)).samples)
    assert np.max(np.abs(first - second)) > 1e-3
    run(other, 0)
    run(sc, 0, shape=(5, 4, 4, 1))  # another chunk width: another program
    assert len(programs()) == 3


# --------------------------------------------------------------------------- bad input

def _never_called(*args):
    raise AssertionError("the network was traced before the input was checked")


@pytest.mark.parametrize("overrides,num_classes,labels,message", [
    (dict(guidance_scale=3.0), 0, None, "class-conditional"),
    (dict(labels="all"), 0, None, "class_conditional=False"),
    (dict(), 0, np.array([0, 1]), "without classes"),
    (dict(labels="1,7"), 3, None, "out of range"),
    (dict(), 3, np.array([0, 3]), "out of range"),
    (dict(labels="cats"), 3, None, "comma-separated"),
    (dict(num_steps=51), 0, None, "at most diffusion.num_timesteps=50"),
    (dict(sampler="rk4"), 0, None, "sampling.sampler='rk4'"),
    (dict(sampler="midpoint"), 0, None, "evaluates between table rows"),
    (dict(spacing="cubic"), 0, None, "sampling.spacing='cubic'"),
    (dict(spacing="quad", num_steps=50), 0, None, "repeats timesteps"),
    (dict(eta=-1.0), 0, None, "eta"),
    (dict(labels="none", guidance_scale=2.0), 3, None, "needs class labels"),
])
def test_bad_sampling_input_fails_before_tracing(tables, overrides, num_classes, labels, message):
    with pytest.raises(ValueError, match=message):
        sampling_lib.generate_from_config(_never_called, {}, families.ddpm(tables), sampling_config(**overrides),
                                      (2, 4, 4, 1), jax.random.PRNGKey(0), num_classes=num_classes, labels=labels)


def test_config_validation_rejects_bad_sampling_fields():
    for field, value, message in [("sampler", "midpoint", "sampler .midpoint. evaluates between table rows"),
                                  ("num_steps", 1001, "num_steps"),
                                  ("guidance_scale", 2.0, "class-conditional"), ("labels", "3", "class")]:
        config = default.get_config()
        config.sampling[field] = value
        with pytest.raises(config_lib.ConfigError, match=message):
            config_lib.validate(config)
    config = default.get_config()
    config.model.class_conditional = True
    config.sampling.update(dict(sampler="dpm_solver++", num_steps=20, labels="3,5", guidance_scale=4.0))
    config_lib.validate(config)  # a valid guided DPM-Solver++ configuration passes


# --------------------------------------------------------------------------- the Gaussian check

MU, S = 0.3, 0.5


def optimal_output(tables, target):
    """The exact eps / x0 / v predictor for data N(MU, S^2 I)."""
    abar = jnp.asarray(tables.alphas_cumprod, jnp.float32)

    def fn(x, t):
        a = abar[t][:, None, None, None]
        eps = jnp.sqrt(1 - a) * (x - jnp.sqrt(a) * MU) / (a * S ** 2 + 1 - a)
        x0 = MU + jnp.sqrt(a) * S ** 2 * (x - jnp.sqrt(a) * MU) / (a * S ** 2 + 1 - a)
        return {"eps": eps, "x0": x0, "v": jnp.sqrt(a) * eps - jnp.sqrt(1 - a) * x0}[target]

    return fn


@pytest.mark.parametrize("name,steps,spacing,kw,target", [  # every sampler and grid: test_sampler_space.py
    ("ddpm", 0, "leading", {}, "eps"),
    ("ddpm", 250, "linspace", dict(variance="fixed_large"), "v"),
    ("ddim", 250, "trailing", dict(eta=0.5), "eps"),
    ("dpm_solver++", 20, "logsnr", {}, "v"),
])
def test_gaussian_data_is_recovered(tables_1000, name, steps, spacing, kw, target):
    sampler = make(tables_1000, name, steps, spacing, target, clip_x0=False, **kw)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (2048, 4, 4, 1))
    out = np.asarray(scan(sampler, x_T, jax.random.PRNGKey(1), optimal_output(tables_1000, target)).samples,
                     np.float64)
    assert abs(out.mean() - MU) < 0.015, out.mean()
    assert abs(out.var() / S ** 2 - 1) < 0.05, out.var()


def test_gaussian_check_separates_dpm_solver_from_ddim_at_twenty_steps(tables_1000):
    """The same tolerance fails DDIM at 20 steps (a first-order solver): the check has teeth."""
    sampler = make(tables_1000, "ddim", 20, "logsnr", clip_x0=False)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (2048, 4, 4, 1))
    out = np.asarray(scan(sampler, x_T, jax.random.PRNGKey(1), optimal_output(tables_1000, "eps")).samples)
    assert abs(out.mean() - MU) < 0.015
    assert out.var() / S ** 2 - 1 < -0.1
