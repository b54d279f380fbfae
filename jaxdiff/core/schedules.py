"""Noise schedules and the diffusion tables derived from them.

Every table is computed once in float64 NumPy (as in the DDPM reference code) and stored in one
immutable pytree, :class:`DiffusionTables`. JAX casts the leaves to float32 where they are used
(indexing a NumPy float64 table with a traced integer gives a float32 ``jnp`` array unless x64 is
enabled), so no precision is lost building them.

Index convention: table index ``i`` in ``[0, T)`` is the paper's timestep ``t = i + 1``.
``alphas_cumprod[i] = prod_{s<=i} (1 - betas[s])`` and ``alphas_cumprod_prev[0] = 1``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

SCHEDULES = ("linear", "cosine", "sigmoid_abar", "sigmoid_geodiff")


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02,
                 scale_to_t: bool = False) -> np.ndarray:
    """DDPM's linear schedule ``beta_i = linspace(beta_start, beta_end, T)[i]``.

    With ``scale_to_t`` both ends are multiplied by ``1000 / T`` (improved-diffusion), so that a
    schedule with fewer steps destroys the signal as completely as DDPM's T=1000 one.
    """
    scale = 1000.0 / num_timesteps if scale_to_t else 1.0
    return np.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=np.float64)


def betas_from_alpha_bar(alpha_bar_fn, num_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """Discretise a continuous ``abar(u)``, ``u in [0, 1]``, into betas.

    ``beta_i = min(1 - abar((i + 1) / T) / abar(i / T), max_beta)``.
    """
    u = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    abar = alpha_bar_fn(u)
    return np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal's cosine schedule (diffusers' ``squaredcos_cap_v2``).

    ``abar(u) = cos^2(((u + s) / (1 + s)) * pi / 2)``, betas capped at ``max_beta``.
    """
    return betas_from_alpha_bar(
        lambda u: np.cos((u + s) / (1.0 + s) * np.pi / 2) ** 2, num_timesteps, max_beta)


def sigmoid_abar_betas(num_timesteps: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0,
                       max_beta: float = 0.999) -> np.ndarray:
    """The sigmoid schedule defined on alpha-bar (Jabri et al. 2022; lucidrains' ``sigmoid_beta_schedule``).

    With ``v(x) = sigmoid(x / tau)``: ``abar(u) = (v(end) - v(u (end - start) + start)) / (v(end) - v(start))``,
    so ``abar(0) = 1`` and ``abar(1) = 0``; betas are capped at ``max_beta``.
    """
    sig = lambda x: 1.0 / (1.0 + np.exp(-x / tau))  # noqa: E731
    v_start, v_end = sig(start), sig(end)
    return betas_from_alpha_bar(
        lambda u: (v_end - sig(u * (end - start) + start)) / (v_end - v_start), num_timesteps, max_beta)


def sigmoid_geodiff_betas(num_timesteps: int, beta_start: float = 1e-4,
                          beta_end: float = 0.02) -> np.ndarray:
    """The GeoDiff sigmoid schedule (diffusers' ``sigmoid``), defined on betas directly.

    ``beta_i = sigmoid(linspace(-6, 6, T))_i (beta_end - beta_start) + beta_start``.
    """
    x = np.linspace(-6.0, 6.0, num_timesteps, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-x)) * (beta_end - beta_start) + beta_start


def make_betas(name: str, num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02,
               scale_to_t: bool = False) -> np.ndarray:
    """Betas of the schedule called ``name``, float64, shape ``[T]``.

    Args:
      name: one of :data:`SCHEDULES` (``linear``, ``cosine``, ``sigmoid_abar``, ``sigmoid_geodiff``).
      num_timesteps: ``T``.
      beta_start, beta_end: the ends of ``linear`` and ``sigmoid_geodiff``.
      scale_to_t: ``linear`` only: scale both ends by ``1000 / T`` (improved-diffusion).

    Returns:
      ``betas`` ``[T]``; pass them to :func:`make_tables`.
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be positive, got {num_timesteps}")
    if name == "linear":
        return linear_betas(num_timesteps, beta_start, beta_end, scale_to_t)
    if name == "cosine":
        return cosine_betas(num_timesteps)
    if name == "sigmoid_abar":
        return sigmoid_abar_betas(num_timesteps)
    if name == "sigmoid_geodiff":
        return sigmoid_geodiff_betas(num_timesteps, beta_start, beta_end)
    raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al. 2024, Algorithm 1: shift and scale ``sqrt(abar)`` so that its last entry is 0 (SNR 0 at
    ``t = T``, pure noise) and its first is unchanged:
    ``sqrt(abar) <- (sqrt(abar) - sqrt(abar_T)) sqrt(abar_1) / (sqrt(abar_1) - sqrt(abar_T))``,
    then back to betas (the last beta becomes 1). Train such a schedule with the v (or x0) target
    and sample with trailing spacing."""
    betas = np.asarray(betas, np.float64)
    root = np.sqrt(np.cumprod(1.0 - betas))
    first, last = root[0], root[-1]
    root = (root - last) * first / (first - last)
    abar = root ** 2
    return 1.0 - np.concatenate([abar[:1], abar[1:] / abar[:-1]])


class DiffusionTables(NamedTuple):
    """Per-timestep constants of a discrete Gaussian diffusion, all float64 NumPy of shape ``[T]``.

    posterior q(x_{t-1} | x_t, x_0) = N(coef_x0 x_0 + coef_xt x_t, posterior_variance):
      coef_x0  = beta_t sqrt(abar_{t-1}) / (1 - abar_t)
      coef_xt  = (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t)
      variance = beta_t (1 - abar_{t-1}) / (1 - abar_t)          (0 at t = 1)
      log_variance_clipped uses variance[1] in place of variance[0] (which is 0).
    """

    betas: np.ndarray
    alphas: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    sqrt_alphas_cumprod: np.ndarray
    sqrt_one_minus_alphas_cumprod: np.ndarray
    posterior_variance: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef_x0: np.ndarray
    posterior_mean_coef_xt: np.ndarray

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])


def make_tables(betas: np.ndarray) -> DiffusionTables:
    """All diffusion tables for ``betas`` (computed in float64).

    Args:
      betas: ``[T]`` noise levels, each in (0, 1) (:func:`make_betas`, or your own); the last may be 1
        (a zero-terminal-SNR schedule, :func:`rescale_zero_terminal_snr`).

    Returns:
      :class:`DiffusionTables`, the immutable pytree every other function of jaxdiff takes.
    """
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or not np.all((betas > 0) & (betas < 1)) and not (
            np.all((betas[:-1] > 0) & (betas[:-1] < 1)) and betas[-1] == 1.0 and len(betas) > 1):
        raise ValueError("betas must be a 1-D array with every entry in (0, 1) (the last may be 1)")
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    # post_var[0] == 0; clip its log with the t=2 value (DDPM / improved-diffusion convention).
    clip_from = post_var[1] if len(betas) > 1 else betas[0]
    post_log_var = np.log(np.concatenate([[clip_from], post_var[1:]]))
    return DiffusionTables(
        betas=betas,
        alphas=alphas,
        alphas_cumprod=abar,
        alphas_cumprod_prev=abar_prev,
        sqrt_alphas_cumprod=np.sqrt(abar),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - abar),
        posterior_variance=post_var,
        posterior_log_variance_clipped=post_log_var,
        posterior_mean_coef_x0=betas * np.sqrt(abar_prev) / (1.0 - abar),
        posterior_mean_coef_xt=(1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
    )


def schedule_tables(schedule: str, num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02, *,
                    scale_betas_to_t: bool = False, zero_terminal_snr: bool = False) -> DiffusionTables:
    """The tables of a named schedule: :func:`make_betas`, rescaled to zero terminal SNR
    (:func:`rescale_zero_terminal_snr`) with ``zero_terminal_snr``, then :func:`make_tables`."""
    betas = make_betas(schedule, num_timesteps, beta_start, beta_end, scale_betas_to_t)
    return make_tables(rescale_zero_terminal_snr(betas) if zero_terminal_snr else betas)
