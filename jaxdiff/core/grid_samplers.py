"""Samplers for every diffusion family, one short function each, on a grid of noise levels.

Each returns a :class:`~jaxdiff.core.sampler.Sampler` whose step evaluates the family's denoiser
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
  edm_stochastic   EDM Algorithm 2: first raise ``s`` to ``s_hat = s (1 + gamma)``,
                   ``gamma = min(churn / N, sqrt(2) - 1)`` for ``s`` in ``[s_min, s_max]``, adding
                   ``sqrt(s_hat^2 - s^2) s_noise z``, then a Heun step from ``s_hat`` to ``s'``.
  midpoint         ``y_m = y + (s_m - s) f``, ``s_m = (s + s') / 2``; ``y' = y + (s' - s) f(y_m, s_m)``; ``2N``.
  dpm_solver_pp    DPM-Solver++ multistep in ``lambda = log(alpha / sigma)``, ``h = lambda' - lambda``:
                   ``x' = (sigma' / sigma) e^{-eta h} x + alpha' (1 - e^{-(1 + eta) h}) D0 + corrections
                   + sigma' sqrt(1 - e^{-2 eta h}) z``; order 2: ``+ alpha' (1 - e^{-h_eta}) / (2 r) (D0 - D1)``,
                   ``r = h_prev / h`` (DPM-Solver++(2M); with ``eta > 0`` the 2M SDE); order 3:
                   k-diffusion's 3M with ``phi_2``, ``phi_3``. First order on the first step(s) and on a
                   last step that ends at ``sigma' = 0``; a step of ``h = 0`` (the ddpm family's last step
                   with ``set_alpha_to_one=False`` on a grid that ends at ``abar_0``) is the identity.

:data:`jaxdiff.core.sampler_registry.SAMPLERS` names every sampler (these and the discrete chain's ``ddpm`` and
``ddim`` of :mod:`jaxdiff.core.ddpm_chain`) with what it accepts; ``make_sampler`` builds one by name.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.core.family import Family, Grid
from jaxdiff.core.sampler import Sampler


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


def _heun(family: Family, grid: Grid, clip_x0: bool, s_hat, c_hat, hat_levels, add_noise=None) -> Sampler:
    """Heun steps from the levels ``hat_levels`` (float64 ``time, alpha, sigma``; solver coordinates
    ``s_hat, c_hat``) to the grid's next levels, Euler alone on the last step; ``add_noise(x, i, key)``
    first moves ``x`` to the hat level (EDM's churn)."""
    n = grid.num_steps
    s, c = ode_coordinates(family, grid.alpha, grid.sigma, grid.time)
    k_x, k_f = _f32(c[1:] / c_hat), _f32(c[1:] * (s[1:] - s_hat))
    ht, ha, hs = (_f32(v) for v in hat_levels)
    time, alpha, sigma = _levels(grid)
    drift = _drift(family)

    def step(net, x, i, key, state):
        model = denoiser(family, net, clip_x0)
        if add_noise is not None:
            x = add_noise(x, i, key)
        x0, eps = model(x, ht[i], ha[i], hs[i])
        f = drift(x0, eps)
        x_euler = k_x[i] * x + k_f[i] * f

        def correct(x_e):
            x0_e, eps_e = model(x_e, time[i + 1], alpha[i + 1], sigma[i + 1])
            return k_x[i] * x + 0.5 * k_f[i] * (f + drift(x0_e, eps_e))

        return jax.lax.cond(i < n - 1, correct, lambda x_e: x_e, x_euler), x0, state

    return _sampler(family, grid, step, evaluations=2 * n - 1)


def heun_sampler(family: Family, grid: Grid, clip_x0: bool = False, churn: float = 0.0, s_min: float = 0.0,
                 s_max: float = float("inf"), s_noise: float = 1.0, name: str = "heun") -> Sampler:
    """EDM's deterministic Heun sampler (Algorithm 1): see the module docstring. (``churn > 0`` here is
    deprecated: that is :func:`edm_stochastic_sampler`.)"""
    if churn > 0:
        warnings.warn("heun_sampler(churn=...) is deprecated: use edm_stochastic_sampler", DeprecationWarning,
                      stacklevel=2)
        return edm_stochastic_sampler(family, grid, clip_x0, churn, s_min, s_max, s_noise, name)
    s, c = ode_coordinates(family, grid.alpha, grid.sigma, grid.time)
    _require_finite(name, s[:-1], c[:-1] > 0)
    return _heun(family, grid, clip_x0, s[:-1], c[:-1], (grid.time[:-1], grid.alpha[:-1], grid.sigma[:-1]))


def edm_stochastic_sampler(family: Family, grid: Grid, clip_x0: bool = False, churn: float = 0.0,
                           s_min: float = 0.0, s_max: float = float("inf"), s_noise: float = 1.0,
                           name: str = "edm_stochastic") -> Sampler:
    """EDM's stochastic sampler (Algorithm 2): churn to ``s_hat``, then a Heun step (module docstring);
    where no level churns (``churn = 0``, or ``[s_min, s_max]`` holds no level) it is Heun."""
    s, c = ode_coordinates(family, grid.alpha, grid.sigma, grid.time)
    _require_finite(name, s[:-1], c[:-1] > 0)
    gamma = np.where((s[:-1] >= s_min) & (s[:-1] <= s_max), min(churn / grid.num_steps, np.sqrt(2.0) - 1.0), 0.0)
    if not (churn > 0 and np.any(gamma > 0)):
        return _heun(family, grid, clip_x0, s[:-1], c[:-1], (grid.time[:-1], grid.alpha[:-1], grid.sigma[:-1]))
    if family.ode_space != "sigma":
        raise ValueError(f"sampler {name!r} adds noise in sigma; it does not fit the {family.name!r} "
                         "family (use heun, midpoint or euler_ancestral)")
    s_hat = s[:-1] * (1.0 + gamma)
    hat_time, hat_alpha, hat_sigma, c_hat = _off_grid_levels(family, name, s_hat)
    churn_x, churn_z = _f32(c_hat / c[:-1]), _f32(c_hat * np.sqrt(s_hat ** 2 - s[:-1] ** 2) * s_noise)

    def add_noise(x, i, key):
        return churn_x[i] * x + churn_z[i] * jax.random.normal(key, x.shape, x.dtype)

    return _heun(family, grid, clip_x0, s_hat, c_hat, (hat_time, hat_alpha, hat_sigma), add_noise)


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


def jump_sampler(family: Family, grid: Grid, clip_x0: bool = False) -> Sampler:
    """A few-step family's own map from level to level, ``x' = family.jump(net, x, t, t', key)`` (MeanFlow:
    ``z_r = z_t - (t - r) u(z_t, r, t)``; a consistency model: ``f(x, t)`` re-noised to ``t'``): one evaluation per step; ``x0_hat`` is the data the jump
    points at (clipped to [-1, 1] with ``clip_x0``, which leaves the steps as they are)."""
    if family.jump is None:
        raise ValueError(f"sampler 'jump' needs a few-step family (a jump between levels); the {family.name!r} "
                         "family has none")
    time = _f32(grid.time)

    def step(net, x, i, key, state):
        x_next, x0 = family.jump(net, x, time[i], time[i + 1], key)
        return x_next, jnp.clip(x0, -1.0, 1.0) if clip_x0 else x0, state

    return _sampler(family, grid, step)
