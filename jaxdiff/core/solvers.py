"""Samplers for every diffusion family, one short function each, on a grid of noise levels.

Each returns a :class:`~jaxdiff.core.samplers.Sampler` whose step evaluates the family's denoiser
``(x0_hat, eps_hat) = family.predict(net, x, time, alpha, sigma)`` at levels of a
:class:`~jaxdiff.core.families.Grid` ``(alpha_i, sigma_i)``, ``i = 0..N`` (``'`` marks level ``i + 1``).
Every coefficient is computed once in float64 NumPy and indexed by the scan position. All steps are
written in ``(x0, eps)`` form, so they hold for any ``x = alpha x0 + sigma eps`` (ddpm, vp, edm and
flow alike, including a start at ``alpha = 0``):

  euler_ancestral  ``x' = alpha' x0 + sigma' sqrt(1 - u^2) eps + sigma' u z``, ``u = min(1, eta sqrt(1 - rho^2))``,
                   ``rho = (sigma' / alpha') / (sigma / alpha)``, no noise on the last step (k-diffusion's
                   ``sample_euler_ancestral``;
                   ``eta = 0`` is Euler = DDIM(eta=0) = EDM's Euler = flow matching's Euler in ``t``;
                   for VP it equals DDIM with the same eta <= 1).
  heun             EDM Algorithm 1/2 in the family's ODE coordinates ``(s, y = x / c)``
                   (``sigma``: ``s = sigma / alpha``, ``c = alpha``, ``dy/ds = eps``; ``t``: ``s = t``,
                   ``c = 1``, ``dy/dt = eps - x0``): Euler ``y_e = y + (s' - s) f`` then, except on the
                   last step, ``y' = y + (s' - s) (f + f(y_e, s')) / 2``; ``2N - 1`` evaluations.
                   ``churn > 0`` first raises ``s`` to ``s_hat = s (1 + gamma)``,
                   ``gamma = min(churn / N, sqrt(2) - 1)`` for ``s`` in ``[s_min, s_max]``, adding
                   ``sqrt(s_hat^2 - s^2) s_noise z`` (EDM's stochastic sampler).
  midpoint         ``y_m = y + (s_m - s) f``, ``s_m = (s + s') / 2``; ``y' = y + (s' - s) f(y_m, s_m)``; ``2N``.
  dpm_solver_pp    DPM-Solver++ multistep in ``lambda = log(alpha / sigma)``, ``h = lambda' - lambda``:
                   ``x' = (sigma' / sigma) e^{-eta h} x + alpha' (1 - e^{-(1 + eta) h}) D0 + corrections
                   + sigma' sqrt(1 - e^{-2 eta h}) z``; order 2: ``+ alpha' (1 - e^{-h_eta}) / (2 r) (D0 - D1)``,
                   ``r = h_prev / h`` (DPM-Solver++(2M); with ``eta > 0`` the 2M SDE); order 3:
                   k-diffusion's 3M with ``phi_2``, ``phi_3``. First order on the first step(s) and on a
                   last step that ends at ``sigma' = 0``; a step of ``h = 0`` (the ddpm family's last step
                   with ``set_alpha_to_one=False`` on a grid that ends at ``abar_0``) is the identity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.core import samplers
from jaxdiff.core.families import Family, Grid
from jaxdiff.core.samplers import Sampler

GENERAL = ("euler", "euler_ancestral", "heun", "edm_stochastic", "midpoint", "dpm_solver++",
           "dpm_solver++_3m", "dpm_solver++_sde")
OFF_GRID = ("edm_stochastic", "midpoint")  # evaluate between grid levels: continuous-time families only
DISCRETE_CHAIN = ("ddpm", "ddim")  # samplers of the discrete ddpm chain itself
SAMPLERS = DISCRETE_CHAIN + GENERAL
AUTO_SPACING = {"ddpm": "linspace", "ddim": "leading"}  # ddpm family; the rest: logsnr
CONTINUOUS_AUTO_SPACING = {"vp": "logsnr", "edm": "karras", "flow": "uniform"}


def _f32(a) -> jax.Array:
    return jnp.asarray(np.asarray(a, np.float64), jnp.float32)


def _levels(grid: Grid):
    """The grid as float32 device arrays ``(time, alpha, sigma)`` indexed by level."""
    return _f32(grid.time), _f32(grid.alpha), _f32(grid.sigma)


def denoiser(family: Family, net, clip_x0: bool):
    """``model(x, time, alpha, sigma) -> (x0_hat, eps_hat)``; with ``clip_x0`` the ``x0`` is clipped to
    [-1, 1] and ``eps = (x - alpha x0) / sigma`` recomputed from it."""

    def model(x, time, alpha, sigma):
        x0, eps = family.predict(net, x, time, alpha, sigma)
        if clip_x0:
            x0 = jnp.clip(x0, -1.0, 1.0)
            eps = (x - alpha * x0) / sigma
        return x0, eps

    return model


def _sampler(family: Family, grid: Grid, step, init_state=None, evaluations: int = 0) -> Sampler:
    sampler = Sampler(np.asarray(grid.time[:-1]), step, prior_scale=float(grid.prior_scale),
                      num_evaluations=evaluations, sigma_to_input=family.sigma_to_input)
    return sampler if init_state is None else sampler._replace(init_state=init_state)


def ode_coordinates(family: Family, alpha, sigma, time):
    """``(s, c)`` of levels in the family's ODE coordinates (module docstring), float64."""
    alpha, sigma, time = (np.asarray(v, np.float64) for v in (alpha, sigma, time))
    if family.ode_space == "t":
        return time, np.ones_like(time)
    with np.errstate(divide="ignore"):
        return sigma / alpha, alpha


def _require_continuous(family: Family, name: str) -> None:
    if family.level is None:
        raise ValueError(f"sampler {name!r} evaluates between table rows; it needs a continuous-time "
                         "family (vp, edm, flow)")


def _off_grid_levels(family: Family, name: str, s_values):
    """float64 ``(time, alpha, sigma, c)`` at solver coordinates ``s_values`` between grid levels."""
    _require_continuous(family, name)
    levels = [family.level(v) for v in s_values]
    time, alpha, sigma = (np.array([v[k] for v in levels], np.float64) for k in range(3))
    return time, alpha, sigma, ode_coordinates(family, alpha, sigma, time)[1]


def _drift(family: Family):
    return (lambda x0, eps: eps - x0) if family.ode_space == "t" else (lambda x0, eps: eps)


def _require_finite(name, s, c_positive):
    if not (np.all(np.isfinite(s)) and np.all(c_positive)):
        raise ValueError(f"sampler {name!r} needs alpha > 0 at every level of its ODE (a zero-terminal-SNR "
                         "schedule starts at alpha = 0): use euler, euler_ancestral or a dpm_solver++ variant")


# --------------------------------------------------------------------------- samplers

def euler_ancestral_sampler(family: Family, grid: Grid, eta: float = 1.0, clip_x0: bool = False) -> Sampler:
    """Euler ancestral (``eta > 0``) or Euler (``eta = 0``): see the module docstring."""
    if not eta >= 0:
        raise ValueError(f"eta must be non-negative, got {eta}")
    a, s = grid.alpha, grid.sigma
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where((a[:-1] > 0) & (s[1:] > 0), (s[1:] * a[:-1]) / (s[:-1] * a[1:]), 0.0)
    u = np.minimum(1.0, eta * np.sqrt(np.maximum(1.0 - rho ** 2, 0.0)))
    u[-1] = 0.0  # no noise on the last step (it is 0 anyway when the chain ends at sigma = 0)
    c_x0, c_eps, c_z = _f32(a[1:]), _f32(s[1:] * np.sqrt(1.0 - u ** 2)), _f32(s[1:] * u)
    time, alpha, sigma = _levels(grid)
    noisy = bool(np.any(s[1:] * u > 0))

    def step(net, x, i, key, state):
        x0, eps = denoiser(family, net, clip_x0)(x, time[i], alpha[i], sigma[i])
        x_next = c_x0[i] * x0 + c_eps[i] * eps
        if noisy:
            x_next = x_next + c_z[i] * jax.random.normal(key, x.shape, x.dtype)
        return x_next, x0, state

    return _sampler(family, grid, step)


def heun_sampler(family: Family, grid: Grid, clip_x0: bool = False, churn: float = 0.0, s_min: float = 0.0,
                 s_max: float = float("inf"), s_noise: float = 1.0, name: str = "heun") -> Sampler:
    """EDM's Heun sampler (deterministic for ``churn = 0``, else its stochastic Algorithm 2)."""
    n = grid.num_steps
    s, c = ode_coordinates(family, grid.alpha, grid.sigma, grid.time)
    _require_finite(name, s[:-1], c[:-1] > 0)
    gamma = np.where((s[:-1] >= s_min) & (s[:-1] <= s_max), min(churn / n, np.sqrt(2.0) - 1.0), 0.0)
    stochastic = bool(churn > 0 and np.any(gamma > 0))
    if stochastic:
        if family.ode_space != "sigma":
            raise ValueError(f"sampler {name!r} adds noise in sigma; it does not fit the {family.name!r} "
                             "family (use heun, midpoint or euler_ancestral)")
        s_hat = s[:-1] * (1.0 + gamma)
        hat_time, hat_alpha, hat_sigma, c_hat = _off_grid_levels(family, name, s_hat)
        churn_x, churn_z = c_hat / c[:-1], c_hat * np.sqrt(s_hat ** 2 - s[:-1] ** 2) * s_noise
    else:
        s_hat, c_hat = s[:-1], c[:-1]
        hat_time, hat_alpha, hat_sigma = grid.time[:-1], grid.alpha[:-1], grid.sigma[:-1]
    k_x, k_f = _f32(c[1:] / c_hat), _f32(c[1:] * (s[1:] - s_hat))
    ht, ha, hs = _f32(hat_time), _f32(hat_alpha), _f32(hat_sigma)
    time, alpha, sigma = _levels(grid)
    drift = _drift(family)
    if stochastic:
        churn_x, churn_z = _f32(churn_x), _f32(churn_z)

    def step(net, x, i, key, state):
        model = denoiser(family, net, clip_x0)
        if stochastic:
            x = churn_x[i] * x + churn_z[i] * jax.random.normal(key, x.shape, x.dtype)
        x0, eps = model(x, ht[i], ha[i], hs[i])
        f = drift(x0, eps)
        x_euler = k_x[i] * x + k_f[i] * f

        def correct(x_e):
            x0_e, eps_e = model(x_e, time[i + 1], alpha[i + 1], sigma[i + 1])
            return k_x[i] * x + 0.5 * k_f[i] * (f + drift(x0_e, eps_e))

        return jax.lax.cond(i < n - 1, correct, lambda x_e: x_e, x_euler), x0, state

    return _sampler(family, grid, step, evaluations=2 * n - 1)


def midpoint_sampler(family: Family, grid: Grid, clip_x0: bool = False) -> Sampler:
    """The explicit midpoint rule (RK2) in the family's ODE coordinates; ``2N`` evaluations."""
    s, c = ode_coordinates(family, grid.alpha, grid.sigma, grid.time)
    _require_finite("midpoint", s[:-1], c[:-1] > 0)
    s_mid = 0.5 * (s[:-1] + s[1:])
    mid_time, mid_alpha, mid_sigma, c_mid = _off_grid_levels(family, "midpoint", s_mid)
    m_x, m_f = _f32(c_mid / c[:-1]), _f32(c_mid * (s_mid - s[:-1]))
    e_x, e_f = _f32(c[1:] / c[:-1]), _f32(c[1:] * (s[1:] - s[:-1]))
    mt, ma, ms = _f32(mid_time), _f32(mid_alpha), _f32(mid_sigma)
    time, alpha, sigma = _levels(grid)
    drift = _drift(family)

    def step(net, x, i, key, state):
        model = denoiser(family, net, clip_x0)
        x0, eps = model(x, time[i], alpha[i], sigma[i])
        x_mid = m_x[i] * x + m_f[i] * drift(x0, eps)
        x0_m, eps_m = model(x_mid, mt[i], ma[i], ms[i])
        return e_x[i] * x + e_f[i] * drift(x0_m, eps_m), x0, state

    return _sampler(family, grid, step, evaluations=2 * grid.num_steps)


def dpm_solver_pp_coefficients(alpha, sigma, order: int = 2, eta: float = 0.0):
    """float64 ``(c_x, w0, w1, w2, c_z)`` per step of DPM-Solver++ over levels ``alpha, sigma [N + 1]``:
    ``x' = c_x x + w0 D_i + w1 D_{i-1} + w2 D_{i-2} + c_z z`` (module docstring)."""
    a, s = np.asarray(alpha, np.float64), np.asarray(sigma, np.float64)
    with np.errstate(divide="ignore"):
        lam = np.log(a) - np.log(s)  # -inf at alpha = 0, +inf at sigma = 0
    h = lam[1:] - lam[:-1]
    fin = np.isfinite(h)
    smooth = fin & (h > 0)  # steps a multistep correction can use (h = 0 is the identity step)
    n = len(h)
    eta_h = np.where(fin, eta * np.where(fin, h, 0.0), np.inf if eta else 0.0)
    h_eta = h + eta_h
    a_n, s_n = a[1:], s[1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        c_x = np.where(s_n > 0, s_n / s[:-1] * np.exp(-eta_h), 0.0)
        base = -np.expm1(-h_eta)
        c_z = s_n * np.sqrt(np.maximum(-np.expm1(-2.0 * eta_h), 0.0))
    w0, w1, w2 = a_n * base, np.zeros(n), np.zeros(n)
    for i in range(n):
        one = i >= 1 and smooth[i] and smooth[i - 1]
        two = order >= 3 and one and i >= 2 and smooth[i - 2]
        if two:
            r0, r1 = h[i - 1] / h[i], h[i - 2] / h[i]
            phi_2 = np.expm1(-h_eta[i]) / h_eta[i] + 1.0
            phi_3 = phi_2 / h_eta[i] - 0.5
            u, v = r0 / (r0 + r1), 1.0 / (r0 + r1)
            big_a, big_b = phi_2 * (1.0 + u) - phi_3 * v, -phi_2 * u + phi_3 * v  # on d1_0 and d1_1
            w0[i] += a_n[i] * big_a / r0
            w1[i] = a_n[i] * (-big_a / r0 + big_b / r1)
            w2[i] = -a_n[i] * big_b / r1
        elif one:
            r = h[i - 1] / h[i]
            k = (np.expm1(-h_eta[i]) / h_eta[i] + 1.0) / r if order >= 3 else 0.5 * base[i] / r
            w0[i] += a_n[i] * k
            w1[i] = -a_n[i] * k
    return c_x, w0, w1, w2, c_z


def dpm_solver_pp_sampler(family: Family, grid: Grid, order: int = 2, eta: float = 0.0,
                          clip_x0: bool = False) -> Sampler:
    """DPM-Solver++ (Lu et al. 2022) multistep of ``order`` 2 or 3 in data prediction; ``eta > 0`` is
    the SDE variant (k-diffusion's ``dpmpp_2m_sde`` / ``dpmpp_3m_sde``). One evaluation per step."""
    if order not in (2, 3):
        raise ValueError(f"DPM-Solver++ order must be 2 or 3, got {order}")
    if not eta >= 0:
        raise ValueError(f"eta must be non-negative, got {eta}")
    c_x, w0, w1, w2, c_z = map(_f32, dpm_solver_pp_coefficients(grid.alpha, grid.sigma, order, eta))
    noisy = bool(eta > 0)
    time, alpha, sigma = _levels(grid)

    def step(net, x, i, key, history):
        x0, _ = denoiser(family, net, clip_x0)(x, time[i], alpha[i], sigma[i])
        d1, d2 = history
        x_next = c_x[i] * x + w0[i] * x0 + w1[i] * d1 + w2[i] * d2
        if noisy:
            x_next = x_next + c_z[i] * jax.random.normal(key, x.shape, x.dtype)
        return x_next, x0, (x0, d1)

    return _sampler(family, grid, step, lambda x_T: (jnp.zeros_like(x_T), jnp.zeros_like(x_T)))


# --------------------------------------------------------------------------- by name

def resolve_spacing(family: Family, sampler_name: str, spacing: str) -> str:
    """``auto`` -> ddpm family: ``linspace`` for ddpm, ``leading`` for ddim, ``logsnr`` for the rest;
    vp: ``logsnr``; edm: ``karras``; flow: ``uniform``."""
    if spacing != "auto":
        return spacing
    if family.name == "ddpm":
        return AUTO_SPACING.get(sampler_name, "logsnr")
    return CONTINUOUS_AUTO_SPACING[family.name]


def check_sampler_fits(family: Family, name: str) -> None:
    """``ValueError`` (one line) for a sampler that does not fit the family."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    if name in DISCRETE_CHAIN and family.name != "ddpm":
        raise ValueError(f"sampler {name!r} runs the discrete DDPM chain; for the {family.name!r} family "
                         "use euler (DDIM's continuous-time equivalent), euler_ancestral, heun, "
                         "midpoint or a dpm_solver++ variant")
    if name in OFF_GRID:  # whatever the churn: a name that does not fit is refused
        _require_continuous(family, name)
    if name == "edm_stochastic" and family.ode_space != "sigma":
        raise ValueError(f"sampler 'edm_stochastic' adds noise in sigma; it does not fit the {family.name!r} "
                         "family (use heun, midpoint or euler_ancestral)")


def make_sampler(family: Family, name: str, num_steps: int = 0, spacing: str = "auto", *, eta: float = 0.0,
                 sde_eta: float = 1.0, variance: str = "fixed_small", clip_x0: bool = True,
                 set_alpha_to_one: bool = True, churn: float = 0.0, s_min: float = 0.0, s_max: float = float("inf"),
                 s_noise: float = 1.0) -> Sampler:
    """The sampler called ``name`` for ``family`` over ``num_steps`` steps.

    Args:
      family: a :class:`~jaxdiff.core.families.Family`.
      name: one of :data:`SAMPLERS`: ``ddpm``, ``ddim`` (the ddpm family's chain), ``euler``,
        ``euler_ancestral``, ``heun``, ``edm_stochastic``, ``midpoint``, ``dpm_solver++`` (2M),
        ``dpm_solver++_3m``, ``dpm_solver++_sde`` (2M SDE).
      num_steps: steps (0 = all T for the ddpm family; continuous families need a count).
      spacing: ``auto`` (:func:`resolve_spacing`) or one of ``family.spacings``.
      eta: DDIM's noise (0 = deterministic).
      sde_eta: the noise of euler_ancestral and dpm_solver++_sde (1 = the full ancestral / SDE step).
      variance: ddpm's ``fixed_small`` or ``fixed_large``.
      clip_x0: clip the predicted ``x0`` to [-1, 1] at every evaluation.
      set_alpha_to_one: ddpm family: the last step ends at ``abar = 1`` (else ``abar_0``).
      churn, s_min, s_max, s_noise: EDM's stochastic sampler (``edm_stochastic``).

    Returns:
      a :class:`~jaxdiff.core.samplers.Sampler`. Raises ``ValueError`` (before anything is compiled) on
      a bad choice.
    """
    check_sampler_fits(family, name)
    spacing = resolve_spacing(family, name, spacing)
    if family.name == "ddpm" and name in DISCRETE_CHAIN:
        tables = family.tables
        timesteps = samplers.spaced_timesteps(tables.num_timesteps, num_steps or tables.num_timesteps, spacing,
                                              tables.alphas_cumprod)
        if name == "ddpm":
            return samplers.ddpm_sampler(tables, timesteps, family.prediction, variance, clip_x0)
        return samplers.ddim_sampler(tables, timesteps, family.prediction, eta, clip_x0, set_alpha_to_one)
    return sampler_on_grid(family, name, family.grid(num_steps, spacing, set_alpha_to_one), eta=eta,
                           sde_eta=sde_eta, variance=variance, clip_x0=clip_x0, churn=churn, s_min=s_min,
                           s_max=s_max, s_noise=s_noise)


def sampler_on_grid(family: Family, name: str, grid: Grid, *, eta: float = 0.0, sde_eta: float = 1.0,
                    variance: str = "fixed_small", clip_x0: bool = True, churn: float = 0.0, s_min: float = 0.0,
                    s_max: float = float("inf"), s_noise: float = 1.0) -> Sampler:
    """The sampler called ``name`` over the levels of ``grid`` (any part of a family's grid: editing
    starts part way down, at SDEdit's strength). The ddpm family's ``ddpm`` and ``ddim`` step over the
    grid's table rows ``grid.time[:-1]`` and end at ``abar = grid.alpha[-1] ** 2`` (1 or ``abar_0``);
    the other arguments are :func:`make_sampler`'s."""
    check_sampler_fits(family, name)
    if family.name == "ddpm" and name in DISCRETE_CHAIN:
        tables, timesteps = family.tables, np.asarray(grid.time[:-1]).astype(np.int32)
        if name == "ddpm":
            return samplers.ddpm_sampler(tables, timesteps, family.prediction, variance, clip_x0)
        return samplers.ddim_sampler(tables, timesteps, family.prediction, eta, clip_x0,
                                     set_alpha_to_one=bool(grid.alpha[-1] == 1.0))
    if name in ("euler", "euler_ancestral"):
        return euler_ancestral_sampler(family, grid, sde_eta if name == "euler_ancestral" else 0.0, clip_x0)
    if name in ("heun", "edm_stochastic"):
        return heun_sampler(family, grid, clip_x0, churn if name == "edm_stochastic" else 0.0, s_min, s_max,
                            s_noise, name)
    if name == "midpoint":
        return midpoint_sampler(family, grid, clip_x0)
    order = 3 if name == "dpm_solver++_3m" else 2
    return dpm_solver_pp_sampler(family, grid, order, sde_eta if name == "dpm_solver++_sde" else 0.0, clip_x0)
