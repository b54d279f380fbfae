"""The whole space of sampler choices jaxdiff accepts: every family x sampler x spacing x
``set_alpha_to_one`` x zero terminal SNR x guidance, and every editing method with every sampler it
accepts, through the config path a user takes.

Three checks, cheapest first:
  * NumPy only, over every combination (with ``auto`` and 1, 2, 25 and 200 steps): the config checks
    accept it or refuse it with one line, before anything compiles, exactly where :data:`REFUSED`
    says (the README's "Refused combinations" table); an accepted sampler's levels are finite,
    strictly decreasing in noise (a last step of zero length, ``set_alpha_to_one=False`` on a grid
    ending at ``abar_0``, must be the identity), and start at the family's noisiest level (``alpha = 0``
    or the largest ``sigma / alpha``) where the spacing says so.
  * Every distinct accepted sampler (100 steps; ``quad`` at the most it allows) on Gaussian data, whose
    exact denoiser is closed form (``tests/gaussian.py``): half of each batch guided (``w = 2``, class
    mean ``MU_C``, null-label mean ``MU_U``, so the guided denoiser is exactly that of
    ``N(MU_U + w (MU_C - MU_U), S^2)``) and half not; output finite, mean and variance within the
    tolerance of the step count (:func:`tolerances`). One compiled program per family.
  * SDEdit, RePaint (with and without resampling), DDNM and DPS with every sampler of every family:
    finite, the known pixels kept, and the closed-form posterior (or SDEdit's ODE / SDE map).
"""

import functools
import itertools
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from jaxdiff.core import editing, grid_samplers, operators, processes, restoration, sampler_registry
from jaxdiff.core.guidance import guided_denoise_fn
from jaxdiff.core.sampler import run_sampler
from jaxdiff.core.generation import prior_noise
from jaxdiff.drivers import edit_mode, sampling_config
from jaxdiff.drivers.config_checks import ConfigError
from jaxdiff.drivers.diffusion_config import family_from_config
from tests import gaussian
from tests.conftest import set_fields

MU_C, MU_U, S, W = 0.3, -0.1, 0.5, 2.0  # class mean, null-label mean, std, guidance scale
SHAPE = (2, 2, 1)
HALF = 1024  # samples per half (guided, plain): 4,096 scalars each
STEPS = 200  # the grid checks
GAUSSIAN_STEPS = 100  # the Gaussian runs
GAUSSIAN_KINDS = ("ddpm", "ddpm_v_ztsnr", "vp", "edm", "flow", "meanflow")  # shortcut: meanflow's samplers  # a schedule is its tables: checked in NumPy

KINDS = {  # config overrides of one diffusion setup each
    "ddpm": {},
    "ddpm_v_ztsnr": {"diffusion.target": "v", "diffusion.zero_terminal_snr": True},
    "ddpm_cosine": {"diffusion.schedule": "cosine", "diffusion.target": "x0"},
    "vp": {"diffusion.family": "vp", "diffusion.target": "x0"},
    "vp_cosine": {"diffusion.family": "vp", "diffusion.schedule": "cosine"},
    "edm": {"diffusion.family": "edm"},
    "flow": {"diffusion.family": "flow", "diffusion.flow.shift": 3.0},
    "meanflow": {"diffusion.family": "meanflow"},
    "shortcut": {"diffusion.family": "shortcut"},
    "consistency": {"diffusion.family": "consistency"},
    "consistency_flow": {"diffusion.family": "consistency_flow"},
    "scm": {"diffusion.family": "scm"},
}
PROCESS = {"vp": processes.vp_linear(), "vp_cosine": processes.vp_cosine(), "flow": processes.linear_interpolant()}
MAX_NOISE_SPACINGS = ("trailing", "linspace", "logsnr")  # ddpm spacings defined to start at T - 1

# (family, sampler) -> the words of its one-line refusal; README "Refused combinations" has a row each
REFUSED = {
    **{(f, s): "runs the discrete DDPM chain" for f in ("vp", "edm", "flow", "meanflow", "shortcut", "consistency",
                                                        "consistency_flow", "scm") for s in ("ddpm", "ddim")},
    **{("ddpm", s): "evaluates between table rows" for s in ("edm_stochastic", "midpoint")},
    **{(f, "edm_stochastic"): "adds noise in sigma" for f in ("flow", "meanflow", "shortcut", "consistency_flow")},
    **{(f, "jump"): "needs a few-step family" for f in ("ddpm", "vp", "edm", "flow")},
    ("ddpm, zero terminal SNR", "heun"): "needs alpha > 0",
}
SPACING_REFUSALS = {  # (spacing, steps) rules of the ddpm family's spacings, also rows of that table
    "num_steps=1": "evaluates only t=0",
    "quad": "repeats timesteps",
}


def family_of(kind):
    config = set_fields(default.get_config(), KINDS[kind])
    return config, family_from_config(config.diffusion)


def zero_terminal_snr(family):
    return family.tables is not None and family.tables.alphas_cumprod[-1] == 0


def expected_refusal(family, name, spacing, n):
    """The words of the refusal the config checks must give (``None``: accepted)."""
    if (family.name, name) in REFUSED:  # the sampler does not fit the family
        return REFUSED[family.name, name]
    if family.tables is not None:  # then the grid
        T = family.tables.num_timesteps
        if n == 1 and spacing in ("leading", "linspace", "uniform", "quad"):
            return SPACING_REFUSALS["num_steps=1"]
        if spacing == "quad" and len(set((np.linspace(0, np.sqrt(0.8 * T), n) ** 2).astype(int))) < n:
            return SPACING_REFUSALS["quad"]
    if ("ddpm, zero terminal SNR", name) in REFUSED and family.tables is not None and \
            family.grid(n, spacing, True).alpha[0] == 0:  # then the sampler on it: a start at SNR 0
        return REFUSED["ddpm, zero terminal SNR", name]
    return None


def sampling_block(config, **fields):
    sc = config.sampling
    sc.update({"clip_x0": False, "labels": "0", "s_churn": 5.0, **fields})
    return sc


def noise_ratio(grid):
    with np.errstate(divide="ignore"):
        return grid.sigma / grid.alpha  # inf where alpha = 0


def noisiest(family):
    """``sigma / alpha`` of the family's noisiest level (``T - 1``, ``t = 1``, ``sigma_max``)."""
    return noise_ratio(family.grid(1, "trailing" if family.tables is not None else family.spacings[0], True))[0]


# --------------------------------------------------------------------------- NumPy: the whole space

@pytest.mark.parametrize("kind", list(KINDS))
def test_every_combination_is_refused_in_one_line_or_has_a_sound_grid(kind):
    config, family = family_of(kind)
    refused = set()
    for name, spacing, to_one, steps, guidance in itertools.product(
            ("auto", *sampler_registry.SAMPLERS), ("auto",) + family.spacings, (True, False), (0, 1, 2, 25, STEPS),
            (1.0, 3.0)):
        if steps == 0 and family.tables is not None:
            continue  # all T steps: every spacing is range(T); test_samplers covers S = T
        sc = sampling_block(config, sampler=name, spacing=spacing, set_alpha_to_one=to_one, num_steps=steps,
                            guidance_scale=guidance)
        resolved, n = sampling_config.resolve_sampler(sc, family)
        grid_spacing = sampler_registry.resolve_spacing(family, resolved, spacing)
        expected = expected_refusal(family, resolved, grid_spacing, n)
        try:
            sampling_config.check_sampling_config(sc, family, class_conditional=True)  # NumPy only: nothing compiles
        except ValueError as e:
            assert "\n" not in str(e) and expected is not None and expected in str(e), (kind, name, spacing, n, e)
            refused.add(expected)
            continue
        assert expected is None, (kind, name, spacing, n, "accepted")
        sampler = sampling_config.sampler_from_config(family, sc)
        grid = family.grid(n, grid_spacing, to_one)
        np.testing.assert_array_equal(np.asarray(sampler.timesteps, np.float64), grid.time[:-1])
        assert all(np.all(np.isfinite(v)) for v in grid) and np.all(grid.alpha >= 0) and np.all(grid.sigma >= 0)
        r = noise_ratio(grid)
        assert np.all(np.diff(r[:-1]) < 0) and r[-1] <= r[-2], (kind, name, spacing, n, r)
        if family.tables is None or grid_spacing in MAX_NOISE_SPACINGS:
            assert grid.alpha[0] == 0 or np.isclose(r[0], noisiest(family), rtol=1e-9), (kind, name, spacing, r[0])
        if r[-1] == r[-2] and resolved in ("dpm_solver++", "dpm_solver++_3m", "dpm_solver++_sde"):
            coefficients = grid_samplers.dpm_solver_pp_coefficients(grid.alpha, grid.sigma, 3 if resolved.endswith(
                "3m") else 2, 1.0 if resolved.endswith("sde") else 0.0)
            assert [c[-1] for c in coefficients] == [1.0, 0.0, 0.0, 0.0, 0.0]  # the zero-length step: identity
    must = {v for (f, name), v in REFUSED.items() if f == family.name or zero_terminal_snr(family) and "zero" in f}
    must |= set(SPACING_REFUSALS.values()) if family.tables is not None else set()
    assert must <= refused, (must, refused)


def test_the_readme_lists_every_refused_combination():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = [line for line in text[text.index("#### Refused combinations"):].splitlines()[:30] if line.startswith("| ")]
    for (family, name), reason in REFUSED.items():
        assert any(f"`{name}`" in row and family in row for row in rows), (family, name)
    for rule in SPACING_REFUSALS:
        assert any(f"`{rule}`" in row for row in rows), rule


# --------------------------------------------------------------------------- Gaussian data: every sampler

def compiled(fn, *args):
    """``fn(*args)`` compiled once with XLA's cheap CPU settings (these programs hold up to 75 scans; the
    backend's optimisation passes would double their compile time and save nothing at this size)."""
    return jax.jit(fn).lower(*args).compile(compiler_options={
        "xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True})(*args)


def class_net(family, kind):
    """``apply(x, t, y)``: the exact denoiser of ``N(MU_C, S^2)`` for label 0 and of ``N(MU_U, S^2)`` for
    the null label 1 (each family's network output, :func:`tests.gaussian.exact_net`)."""
    nets = [gaussian.exact_net(family, gaussian.isotropic(np.full(SHAPE, mu), S), PROCESS.get(kind))
            for mu in (MU_C, MU_U)]

    def apply(x, t, y, *span):  # span: a few-step family's second time
        return jnp.where((y == 0)[:, None, None, None], nets[0](x, t, *span), nets[1](x, t, *span))

    return apply


def half_guided(apply):
    """The first ``HALF`` samples guided at ``W`` (``guided_denoise_fn``), the rest plain conditional."""
    labels = jnp.zeros((HALF,), jnp.int32)
    guided = guided_denoise_fn(apply, labels, W, null_label=1)
    plain = guided_denoise_fn(apply, labels, 1.0, null_label=1)
    def net(x, t, span=None):
        first = () if span is None else (span[:HALF],)
        rest = () if span is None else (span[HALF:],)
        return jnp.concatenate([guided(x[:HALF], t[:HALF], *first), plain(x[HALF:], t[HALF:], *rest)])

    return net


FIRST_ORDER = ("ddpm", "ddim", "euler", "euler_ancestral", "dpm_solver++_sde")


def tolerances(name, n):
    """``(mean, variance ratio)`` bounds of sampler ``name`` at ``n`` steps: Monte-Carlo (about 4
    standard errors of 4,096 scalars) plus a discretisation term ``K / n``. Measured worst
    ``|var / S^2 - 1| n`` over every grid at 25 and 100 steps: 17 for the first-order samplers (Euler
    ancestral on karras and logsnr grids), 10 for the others (DPM-Solver++(2M) at 25 linspace steps);
    ``|mean - mu| n`` at most 1.2."""
    return 0.03 + 2.0 / n, 0.08 + (25.0 if name in FIRST_ORDER else 15.0) / n


def distinct_samplers(kind):
    """Every accepted sampler of ``kind`` at :data:`GAUSSIAN_STEPS` (``quad``: the most it takes), once per
    distinct grid: ``{(name, spacing, set_alpha_to_one): Sampler}``."""
    config, family = family_of(kind)
    found, grids = {}, set()
    spacings = MAX_NOISE_SPACINGS if zero_terminal_snr(family) else family.spacings  # the others start at SNR > 0
    for name, spacing, to_one in itertools.product(sampler_registry.SAMPLERS, spacings, (True, False)):
        n = GAUSSIAN_STEPS
        while expected_refusal(family, name, spacing, n) == SPACING_REFUSALS["quad"]:
            n -= 1
        if expected_refusal(family, name, spacing, n):
            continue
        sc = sampling_block(config, sampler=name, spacing=spacing, set_alpha_to_one=to_one, num_steps=n)
        sampler = sampling_config.sampler_from_config(family, sc)
        grid = family.grid(n, spacing, to_one)
        identity = (name, tuple(grid.time), grid.alpha[-1] if name != "ddpm" else 1.0)
        if identity not in grids:
            grids.add(identity)
            found[name, spacing, to_one] = sampler
    return family, found


@pytest.mark.parametrize("kind", GAUSSIAN_KINDS)
def test_every_accepted_sampler_samples_the_gaussian_with_and_without_guidance(kind):
    family, found = distinct_samplers(kind)
    net = half_guided(class_net(family, kind))
    z = jax.random.normal(jax.random.PRNGKey(0), (2 * HALF,) + SHAPE)
    outs = compiled(lambda z, key: [run_sampler(s, net, s.prior_scale * z, key).samples
                                    for s in found.values()], z, jax.random.PRNGKey(1))
    failures = []
    for (name, spacing, to_one), sampler, out in zip(found, found.values(), outs):
        out = np.asarray(out, np.float64)
        tol_mean, tol_var = tolerances(name, len(sampler.timesteps))
        for half, mu in ((out[:HALF], MU_U + W * (MU_C - MU_U)), (out[HALF:], MU_C)):
            err = (abs(half.mean() - mu), abs(half.var() / S ** 2 - 1))
            if not (np.all(np.isfinite(half)) and err[0] < tol_mean and err[1] < tol_var):
                failures.append((name, spacing, to_one, len(sampler.timesteps), mu, err))
    assert not failures, failures
    assert len(found) >= {"ddpm": 60, "vp": 24, "edm": 16, "flow": 7, "meanflow": 8}[family.name] // (2 if zero_terminal_snr(family)
                                                                                       else 1), sorted(found)


# --------------------------------------------------------------------------- editing: every method x sampler

EDIT_STEPS = 100
PRIOR = gaussian.isotropic(np.full(SHAPE, MU_C), S)  # independent pixels: the unknown ones keep the prior
X_TRUE = np.array([0.8, 0.1, -0.4, 0.6]).reshape(SHAPE)
KNOWN = np.array([1.0, 0.0, 1.0, 0.0]).reshape(SHAPE)  # the left column is known
SDE_SAMPLERS = ("ddpm", "euler_ancestral", "dpm_solver++_sde")  # SDEdit draws x0 | x_k; ODE samplers map x_k
KEPT = 5e-5  # RePaint and DDNM: the known pixels equal the input's up to float32 rounding


def sdedit_moments(name, grid):
    """Per-pixel mean and the variance of SDEdit at 0.5 from ``X_TRUE`` (``None``: EDM's churn, neither)."""
    k = editing.sdedit_start(grid.num_steps, 0.5)
    a, s = grid.alpha[k], grid.sigma[k]
    total = a * a * S ** 2 + s * s
    if name in SDE_SAMPLERS:
        gain, var = a * S ** 2 / total, S ** 2 * s * s / total + (a * S ** 2 / total) ** 2 * s * s
    elif name == "edm_stochastic":
        return None
    else:
        gain, var = np.sqrt(S ** 2 / total), S ** 2 * s * s / total
    return MU_C + a * gain * (X_TRUE - MU_C), var


def edit_runs(family, name, net, x):
    """The grid of sampler ``name`` and ``{method: run(x, key=key)}`` of every editing method with it
    (RePaint's resampling for one-step samplers; a multistep one must refuse it)."""
    options = {"clip_x0": False, "churn": 5.0}
    grid, sampler = editing.grid_and_sampler(family, name, EDIT_STEPS, **options)
    general, sde_eta = restoration.x0_eps_form(name)
    ddnm_options = {**options, **({"sde_eta": sde_eta} if sde_eta is not None else {})}
    inpaint = operators.inpainting(KNOWN)

    def from_the_prior(sampler, x, key):  # as edit mode runs DDNM and DPS
        return run_sampler(sampler, net, prior_noise(key, x.shape, sampler.prior_scale),
                                    jax.random.fold_in(key, 1)).samples

    def ddnm(x, key):
        family_y = restoration.ddnm_family(family, inpaint, inpaint.forward(x))
        return from_the_prior(sampler_registry.sampler_on_grid(family_y, general, grid, **ddnm_options), x, key)

    def dps(x, key):
        return from_the_prior(restoration.dps_sampler(sampler, inpaint, inpaint.forward(x), 0.3), x, key)

    runs = {"sdedit": functools.partial(editing.sdedit, functools.partial(sampler_registry.sampler_on_grid, family, name,
                                                                          **options), grid, net, strength=0.5),
            "repaint": functools.partial(editing.repaint, sampler, grid, net, known=KNOWN, jump_n_sample=1),
            "ddnm": ddnm, "dps": dps}
    if editing.is_one_step(sampler):
        runs["repaint_resampling"] = functools.partial(editing.repaint, sampler, grid, net, known=KNOWN,
                                                       jump_length=5, jump_n_sample=2)
    else:
        with pytest.raises(ValueError, match="multistep"):
            editing.repaint(sampler, grid, net, x, KNOWN, jax.random.PRNGKey(0), jump_n_sample=2)
    return grid, runs


@pytest.mark.parametrize("kind", ("ddpm", "vp", "edm", "flow"))
def test_every_editing_method_works_with_every_sampler_it_accepts(kind):
    """SDEdit, RePaint (without and, for one-step samplers, with resampling; multistep ones are refused),
    DDNM and DPS inpainting, for every sampler of the family, in one program."""
    config, family = family_of(kind)
    net = gaussian.exact_net(family, PRIOR, PROCESS.get(kind))
    x = jnp.broadcast_to(jnp.asarray(X_TRUE, jnp.float32), (2 * HALF,) + SHAPE)
    runs, expected = {}, {}
    for name in (n for n in sampler_registry.SAMPLERS if (family.name, n) not in REFUSED):
        grid, methods = edit_runs(family, name, net, x)
        runs.update({(name, method): run for method, run in methods.items()})
        expected[name] = sdedit_moments(name, grid)
    outs = compiled(lambda x, key: [run(x, key=key) for run in runs.values()], x, jax.random.PRNGKey(2))
    failures = []
    known, unknown = KNOWN.reshape(-1) > 0, KNOWN.reshape(-1) == 0
    for (name, method), out in zip(runs, outs):
        out = np.asarray(out, np.float64).reshape(len(out), -1)
        tol_mean, tol_var = tolerances(name, EDIT_STEPS)
        if not np.all(np.isfinite(out)):
            failures.append((name, method, "not finite"))
            continue
        kept = 0.0
        if method == "sdedit":
            if expected[name] is None:
                continue
            mean, var = expected[name]
            errors = (np.abs(out.mean(0) - mean.reshape(-1)).max(), abs(out.var(0).mean() / var - 1))
        else:  # the unknown pixels are independent of the known ones: the prior's marginal
            errors = (np.abs(out[:, unknown].mean(0) - MU_C).max(), abs(out[:, unknown].var(0).mean() / S ** 2 - 1))
            if method != "dps":  # RePaint and DDNM return the known pixels themselves
                kept = np.abs(out[:, known] - X_TRUE.reshape(-1)[known]).max()
        if errors[0] > tol_mean or errors[1] > tol_var or kept > KEPT:
            failures.append((name, method, errors, kept))
    assert not failures, failures


def test_repaint_resampling_on_a_family_whose_own_sampler_is_multistep_runs_euler_ancestral():
    """vp's sampling.sampler=auto is DPM-Solver++; RePaint with resampling (the default r = 10) takes
    euler_ancestral instead, an explicit multistep sampler is refused, and without resampling it runs."""
    config, family = family_of("vp")
    experiment = SimpleNamespace(family=family, image_shape=(8, 8, 1))
    config.edit.task = "inpaint"
    plan = edit_mode.EditPlan(config, experiment)
    assert plan.method == "repaint" and plan.name == "euler_ancestral" and editing.is_one_step(plan.sampler)
    config.sampling.sampler = "dpm_solver++"
    with pytest.raises(ConfigError, match="multistep"):
        edit_mode.EditPlan(config, experiment)
    config.edit.jump_n_sample = 1
    assert edit_mode.EditPlan(config, experiment).name == "dpm_solver++"
