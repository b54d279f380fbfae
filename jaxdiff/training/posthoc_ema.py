"""Power-function EMA profiles and post-hoc EMA reconstruction (Karras et al. 2024, "Analyzing and
Improving the Training Dynamics of Diffusion Models" (EDM2), Sec. 3.1 and App. C).

A power-function EMA with exponent ``gamma >= 0`` averages the parameters of steps ``tau <= t`` with the
profile ``p_t(tau) = (gamma + 1) tau^gamma / t^(gamma + 1)`` on ``[0, t]``: its width relative to
the training length, ``sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))``, is the same at
every ``t``, so "EMA length" is one number however long a run lasts (EDM2 tracks 0.05 and 0.10).
Training tracks a profile with ``ema <- beta_n ema + (1 - beta_n) params``,
``beta_n = (1 - 1/n)^(gamma + 1)`` at update ``n = 1, 2, ...`` (:func:`power_ema_update`), which gives
step ``tau`` exactly the weight ``int_{tau-1}^{tau} p_t``.

Post hoc, snapshots ``theta_i`` of such profiles ``(t_i, sigma_i)`` saved during training are combined
into the profile ``(t_out, sigma_out)`` nearest in L2 over ``tau``: ``theta = sum_i c_i theta_i`` with
``A c = b``, ``A_ij = <p_i, p_j>``, ``b_i = <p_i, p_out>`` (closed form, :func:`profile_inner_product`),
``c`` rescaled to sum to 1 (:func:`posthoc_coefficients`, :func:`reconstruct`). The inner products are
invariant to the unit of ``t``, so steps serve where EDM2 counts images.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# sigma_rel of gamma = 0 (a uniform average of all steps so far): the widest profile with gamma >= 0.
MAX_STD = float(np.sqrt(1.0 / 12.0))


def exponent_to_std(gamma) -> np.ndarray:
    """``sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))`` of exponent ``gamma`` (EDM2 eq. 123)."""
    gamma = np.float64(gamma)
    # clipped: at gamma ~ 1e-16 the rounded value can exceed sigma_rel(0) by an ulp
    return np.minimum(np.sqrt((gamma + 1.0) / (gamma + 2.0) ** 2 / (gamma + 3.0)), MAX_STD)


def std_to_exponent(std) -> np.ndarray:
    """The exponent ``gamma >= 0`` of relative width ``std`` in ``(0, 1/sqrt(12)]``: the largest real root of
    ``gamma^3 + 7 gamma^2 + (16 - std^-2) gamma + (12 - std^-2) = 0`` (EDM2 eq. 126, :func:`exponent_to_std`
    solved for ``gamma``)."""
    std = np.asarray(std, np.float64)
    if np.any(std <= 0) or np.any(std > MAX_STD + 1e-12):
        raise ValueError(f"a power-function EMA's relative std must be in (0, {MAX_STD:.4f}], got {std}")
    inv = std.reshape(-1) ** -2
    roots = [np.roots([1.0, 7.0, 16.0 - s, 12.0 - s]) for s in inv]
    gamma = [max(0.0, r.real[np.abs(r.imag) < 1e-9].max()) for r in roots]
    return np.asarray(gamma, np.float64).reshape(std.shape)


def power_ema_weight(step: jax.Array, gamma: float) -> jax.Array:
    """The new parameters' weight ``1 - beta_n = 1 - (1 - 1/n)^(gamma + 1)`` in the update after ``step``
    completed ones (``n = step + 1``; 1 at the first: the EMA starts as the parameters), computed as
    ``-expm1((gamma + 1) log1p(-1/n))``: float32-accurate at any ``n``. (EDM2 computes ``beta`` in
    float64; ``(1 - 1/n)^(gamma + 1)`` in float32 rounds ``1 - 1/n`` and drifts from the profile,
    1.2% in L1 at 1e6 steps.)"""
    n = step.astype(jnp.float32) + 1.0
    return -jnp.expm1((gamma + 1.0) * jnp.log1p(-1.0 / n))


def power_ema_update(ema, params, step: jax.Array, gamma: float):
    """``ema <- beta_n ema + (1 - beta_n) params`` as ``ema + w (params - ema)``, ``w`` =
    :func:`power_ema_weight` (``beta_n`` itself is never rounded to float32), leaf by leaf."""
    w = power_ema_weight(step, gamma)
    return jax.tree.map(lambda e, p: e + w * (p - e), ema, params)


def profile_inner_product(t_a, std_a, t_b, std_b) -> np.ndarray:
    """``<p_a, p_b> = int_0^inf p_a(tau) p_b(tau) dtau`` of two power-function profiles (end steps ``t``,
    relative stds ``std``; broadcasting), in closed form: with ``m = min(t_a, t_b)``,
    ``(g_a + 1)(g_b + 1) m^(g_a + g_b + 1) / ((g_a + g_b + 1) t_a^(g_a + 1) t_b^(g_b + 1))``."""
    t_a, t_b = np.float64(t_a), np.float64(t_b)
    g_a, g_b = std_to_exponent(std_a), std_to_exponent(std_b)
    m = np.minimum(t_a, t_b)
    # the powers as ratios (m / t <= 1) so that long runs do not overflow
    return ((g_a + 1.0) * (g_b + 1.0) / (g_a + g_b + 1.0) * (m / t_a) ** (g_a + 1.0) * (m / t_b) ** (g_b + 1.0) / m)


def posthoc_coefficients(steps: Sequence[float], stds: Sequence[float], out_step: float,
                         out_std: float) -> np.ndarray:
    """The weights ``c`` (summing to 1) of the snapshots ``(steps[i], stds[i])`` whose combination is the
    least-squares fit of the profile ``(out_step, out_std)``: ``c = A^-1 b`` (the module docstring), rescaled.
    Raises ``ValueError`` for no snapshots or a snapshot after ``out_step``."""
    steps, stds = np.broadcast_arrays(np.float64(steps), np.float64(stds))
    if steps.size == 0:
        raise ValueError("post-hoc EMA needs at least one snapshot")
    if np.any(steps <= 0) or np.any(steps > out_step):
        raise ValueError(f"snapshot steps must be in (0, {out_step:g}], got {steps.tolist()}")
    a = profile_inner_product(steps[:, None], stds[:, None], steps[None, :], stds[None, :])
    b = profile_inner_product(steps, stds, np.float64(out_step), np.float64(out_std))
    c = np.linalg.lstsq(a, b, rcond=None)[0]  # A is near-singular when snapshots almost coincide
    return c / c.sum()


def reconstruct(snapshots: Iterable, coefficients: np.ndarray):
    """``sum_i coefficients[i] * snapshots[i]`` in float32, leaf by leaf over the snapshots' (identical)
    pytrees; ``snapshots`` may be a generator, read one at a time (one snapshot and the sum in memory)."""
    total = None
    for c, tree in zip(coefficients, snapshots, strict=True):
        term = jax.tree.map(lambda x: jnp.float32(c) * jnp.asarray(x, jnp.float32), tree)
        total = term if total is None else jax.tree.map(jnp.add, total, term)
    return total
