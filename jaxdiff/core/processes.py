"""Continuous-time noise processes ``x_t = alpha(t) x0 + sigma(t) eps`` and what a network predicts.

Every process is a pair of pure functions of the time, usable on NumPy float64 (sampling grids,
computed once) and on ``jnp`` (training, inside the compiled step): pass ``xp=np`` or ``xp=jnp``.

  vp_linear   the continuous limit of DDPM's linear betas (``T beta`` from ``beta_min`` to ``beta_max``):
              ``abar(t) = exp(-(beta_min t + (beta_max - beta_min) t^2 / 2))``, ``alpha = sqrt(abar)``,
              ``sigma = sqrt(1 - abar)``, ``t`` in [0, 1] (score_sde's VP SDE).
  vp_cosine   the cosine schedule in log-SNR form (Nichol & Dhariwal; Hoogeboom et al. 2023):
              ``logsnr(t) = -2 log tan(a t + b)`` bounded to ``[logsnr_min, logsnr_max]``,
              ``alpha^2 = sigmoid(logsnr)``, ``sigma^2 = sigmoid(-logsnr)``.
  variance_exploding   EDM's process (Karras et al. 2022): the time is the noise level, ``alpha = 1``, ``sigma = t``.
  linear      the flow-matching interpolant (rectified flow, SD3): ``alpha = 1 - t``, ``sigma = t``.

``logsnr = 2 log(alpha / sigma)``. Every family of :mod:`jaxdiff.core.families` samples in terms of
``(x0_hat, eps_hat)``, which the functions below obtain from any network output:

  eps    ``x0 = (x - sigma eps) / alpha``
  x0     ``eps = (x - alpha x0) / sigma``
  v      ``v = alpha eps - sigma x0``:  ``x0 = (alpha x - sigma v) / (alpha^2 + sigma^2)``,
         ``eps = (sigma x + alpha v) / (alpha^2 + sigma^2)`` (the VP ``v`` when ``alpha^2 + sigma^2 = 1``)
  flow   the velocity ``u = dx/dt = eps - x0`` of the linear interpolant: ``x0 = x - t u``,
         ``eps = x + (1 - t) u``
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PREDICTIONS = ("eps", "x0", "v", "flow")


class NoiseProcess(NamedTuple):
    """``alpha_sigma(t, xp) -> (alpha, sigma)`` on times in ``[t_min, t_max]``, and its inverse
    ``time_from_logsnr(logsnr) -> t`` (NumPy float64)."""

    name: str
    alpha_sigma: Callable
    time_from_logsnr: Callable
    t_min: float
    t_max: float

    def logsnr(self, t, xp=np):
        """``2 log(alpha(t) / sigma(t))``."""
        alpha, sigma = self.alpha_sigma(t, xp)
        return 2.0 * (xp.log(alpha) - xp.log(sigma))


def vp_linear(beta_min: float = 0.1, beta_max: float = 20.0) -> NoiseProcess:
    """``abar(t) = exp(-(beta_min t + (beta_max - beta_min) t^2 / 2))`` on ``t`` in [0, 1]: DDPM's
    linear schedule (``beta_i = linspace(1e-4, 0.02, 1000)``) with ``T beta`` as a rate."""
    d = beta_max - beta_min

    def alpha_sigma(t, xp=np):
        log_abar = -(beta_min * t + 0.5 * d * t ** 2)
        return xp.exp(0.5 * log_abar), xp.sqrt(-xp.expm1(log_abar))

    def time_from_logsnr(logsnr):  # beta_min t + d t^2 / 2 = log(1 + exp(-logsnr))
        rate = np.logaddexp(0.0, -np.asarray(logsnr, np.float64))
        return (np.sqrt(beta_min ** 2 + 2.0 * d * rate) - beta_min) / d

    return NoiseProcess("vp_linear", alpha_sigma, time_from_logsnr, 0.0, 1.0)


def vp_cosine(logsnr_min: float = -15.0, logsnr_max: float = 15.0) -> NoiseProcess:
    """``logsnr(t) = -2 log tan(a t + b)`` with ``b = atan(exp(-logsnr_max / 2))``,
    ``a = atan(exp(-logsnr_min / 2)) - b``: the cosine schedule ``abar = cos^2(pi t / 2)``, clipped to a
    finite log-SNR at both ends."""
    b = math.atan(math.exp(-0.5 * logsnr_max))
    a = math.atan(math.exp(-0.5 * logsnr_min)) - b

    def alpha_sigma(t, xp=np):
        logsnr = -2.0 * xp.log(xp.tan(a * t + b))
        sig = (lambda z: 1.0 / (1.0 + np.exp(-z))) if xp is np else jax.nn.sigmoid
        return xp.sqrt(sig(logsnr)), xp.sqrt(sig(-logsnr))

    def time_from_logsnr(logsnr):
        return (np.arctan(np.exp(-0.5 * np.asarray(logsnr, np.float64))) - b) / a

    return NoiseProcess("vp_cosine", alpha_sigma, time_from_logsnr, 0.0, 1.0)


def variance_exploding(sigma_min: float = 0.002, sigma_max: float = 80.0) -> NoiseProcess:
    """The variance exploding process of EDM: ``alpha = 1``, ``sigma = t`` (the time is the noise level).
    (The edm *family*, with its preconditioning and training, is :func:`jaxdiff.core.families.edm`.)"""

    def alpha_sigma(t, xp=np):
        return xp.ones_like(t), t

    def time_from_logsnr(logsnr):
        return np.exp(-0.5 * np.asarray(logsnr, np.float64))

    return NoiseProcess("variance_exploding", alpha_sigma, time_from_logsnr, sigma_min, sigma_max)


def edm(sigma_min: float = 0.002, sigma_max: float = 80.0) -> NoiseProcess:
    """Deprecated name (0.7) of :func:`variance_exploding`; it goes in the next release."""
    warnings.warn("jaxdiff.core.processes.edm is deprecated: use processes.variance_exploding (the edm family is "
                  "families.edm)", DeprecationWarning, stacklevel=2)
    return variance_exploding(sigma_min, sigma_max)


def linear_interpolant() -> NoiseProcess:
    """Flow matching's ``x_t = (1 - t) x0 + t eps`` (``t = 0`` data, ``t = 1`` noise)."""

    def alpha_sigma(t, xp=np):
        return 1.0 - t, t

    def time_from_logsnr(logsnr):  # sigma / alpha = t / (1 - t) = exp(-logsnr / 2)
        return 1.0 / (1.0 + np.exp(0.5 * np.asarray(logsnr, np.float64)))

    return NoiseProcess("linear", alpha_sigma, time_from_logsnr, 0.0, 1.0)


# --------------------------------------------------------------------------- predictions

def expand_to(v, x):
    """A scalar or ``[B]`` coefficient as float32 ``[B, 1, ..., 1]`` (or ``[]``) to broadcast over ``x``."""
    v = jnp.asarray(v, jnp.float32)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def x0_eps_from_prediction(kind: str, x, out, alpha, sigma, t=None):
    """``(x0_hat, eps_hat)`` from a network output ``out`` of ``kind`` at ``x = alpha x0 + sigma eps``
    (``alpha``, ``sigma`` scalars or ``[B]``; ``t`` is the flow time for ``kind='flow'``, where
    ``alpha = 1 - t``, ``sigma = t``). See the module docstring for the formulas."""
    a, s = expand_to(alpha, x), expand_to(sigma, x)
    if kind == "eps":
        return (x - s * out) / a, out
    if kind == "x0":
        return out, (x - a * out) / s
    if kind == "v":
        norm = a * a + s * s
        return (a * x - s * out) / norm, (s * x + a * out) / norm
    if kind == "flow":
        return x - s * out, x + a * out
    raise ValueError(f"unknown prediction {kind!r}; choose one of {', '.join(PREDICTIONS)}")


def prediction_from_x0_eps(kind: str, x0, eps, alpha, sigma):
    """What a network of ``kind`` regresses on: ``eps``, ``x0``, ``v = alpha eps - sigma x0`` or the
    flow velocity ``eps - x0``."""
    a, s = expand_to(alpha, x0), expand_to(sigma, x0)
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    if kind == "v":
        return a * eps - s * x0
    if kind == "flow":
        return eps - x0
    raise ValueError(f"unknown prediction {kind!r}; choose one of {', '.join(PREDICTIONS)}")


# --------------------------------------------------------------------------- EDM

class EDMPreconditioning(NamedTuple):
    """``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)``."""

    c_skip: object
    c_out: object
    c_in: object
    c_noise: object


def edm_preconditioning(sigma, sigma_data: float = 0.5, xp=jnp) -> EDMPreconditioning:
    """Karras et al. 2022, Table 1: ``c_skip = sd^2 / (sigma^2 + sd^2)``,
    ``c_out = sigma sd / sqrt(sigma^2 + sd^2)``, ``c_in = 1 / sqrt(sigma^2 + sd^2)``,
    ``c_noise = ln(sigma) / 4``."""
    total = sigma ** 2 + sigma_data ** 2
    return EDMPreconditioning(sigma_data ** 2 / total, sigma * sigma_data / xp.sqrt(total),
                              1.0 / xp.sqrt(total), 0.25 * xp.log(sigma))


def edm_loss_weight(sigma, sigma_data: float = 0.5):
    """``lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2`` (so that ``lambda c_out^2 = 1``)."""
    return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


def karras_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                  rho: float = 7.0) -> np.ndarray:
    """``sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``,
    ``i < N``, followed by ``sigma_N = 0``: float64 ``[N + 1]`` (``N = 1``: ``[sigma_max, 0]``)."""
    n = int(num_steps)
    ramp = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return np.append((hi + ramp * (lo - hi)) ** rho, 0.0)


def sample_log_normal(key: jax.Array, shape, mean: float = -1.2, std: float = 1.2) -> jax.Array:
    """EDM's training noise levels: ``ln sigma ~ N(P_mean, P_std^2)``."""
    return jnp.exp(mean + std * jax.random.normal(key, shape, jnp.float32))


# --------------------------------------------------------------------------- flow matching

def sample_logit_normal(key: jax.Array, shape, loc: float = 0.0, scale: float = 1.0) -> jax.Array:
    """SD3's timesteps: ``t = sigmoid(u)``, ``u ~ N(loc, scale^2)``."""
    return jax.nn.sigmoid(loc + scale * jax.random.normal(key, shape, jnp.float32))


def shift_time(t, shift: float):
    """The resolution shift of SD3: ``t' = shift t / (1 + (shift - 1) t)`` (``shift = 1``: identity)."""
    return shift * t / (1.0 + (shift - 1.0) * t)
