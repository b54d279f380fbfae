"""Consistency models in discrete time: consistency training as iCT (Song & Dhariwal 2023, "Improved
Techniques for Training Consistency Models") and ECT (Geng et al. 2024, "Consistency Models Made Easy";
locuslab/ect ``training/loss.py::ECMLoss``), and multistep consistency sampling (Song et al. 2023, Alg. 1).

A consistency function maps a point of the probability-flow ODE at noise level ``sigma`` to the ODE's
end, ``f(x_sigma, sigma) = x_0``; it is trained by asking that two levels ``sigma_r < sigma_t`` of one
noised example, ``x0 + sigma_t z`` and ``x0 + sigma_r z`` (the same ``z``), map to the same point:

    ``L = (sqrt(|f_theta(x0 + sigma_t z, sigma_t) - sg(f_theta(x0 + sigma_r z, sigma_r))|^2 + c^2) - c)
          / (sigma_t - sigma_r)``

(:func:`consistency_loss`; the pseudo-Huber distance over the whole example, ``c = huber_c sqrt(dim)``,
iCT's ``0.00054 sqrt(dim)``; ``c = 0``: the L2 norm, ECT's default; where ``sigma_r = 0`` the second term
is ``x0`` itself). Both levels see the same dropout. The two schedules differ in the levels they draw
(:func:`ict_levels`, :func:`ect_levels`), and both move with training (a ``curriculum`` family):

  ict  ``N(k) = min(s0 2^floor(k / double_every), s1) + 1`` Karras levels ``sigma_1 < .. < sigma_N``
       (``rho``), a pair ``(sigma_i, sigma_{i+1})`` drawn with ``p(i) ~ erf((ln sigma_{i+1} - P_m) /
       (sqrt 2 P_s)) - erf((ln sigma_i - P_m) / (sqrt 2 P_s))`` (``P_m = -1.1``, ``P_s = 2``; iCT's
       "lognormal" discretised; iCT's ``double_every = K / (log2(s1 / s0) + 1)``, 50,000 for 400k steps);
  ect  ``sigma_t = exp(P_m + P_s n)``, ``sigma_r = max(0, sigma_t (1 - q^-(s + 1) (1 + k sigmoid(-b sigma_t))))``,
       ``q = 2``, ``k = 8``, ``b = 1``, stage ``s = floor(step / double_every)``: the gap halves each stage.
       Start it from a trained EDM model (``model.init_from``), as ECT does.

Two parameterisations of ``f``, two families:

  consistency       EDM's network with the consistency boundary condition (``openai/consistency_models``
                    ``get_denoiser_and_distiller_fn``): ``f = c_skip x + c_out F(c_in x, ln(sigma) / 4)``,
                    ``c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2)``, ``c_out = sd (sigma - sigma_min) /
                    sqrt(sigma^2 + sd^2)``, ``c_in = 1 / sqrt(sigma^2 + sd^2)``, so ``f(x, sigma_min) = x``.
                    ``F`` is an EDM model's ``F``, so an EDM run starts one (ECT's train-time EDM
                    preconditioning is not used: the two differ only at ``sigma`` near ``sigma_min``).
  consistency_flow  a flow-matching network: ``f = x_t - t v(x_t, 1000 t)`` on ``x_t = (1 - t) x0 + t z``,
                    ``t = sigma / (1 + sigma)`` (the same levels and noise; ``f(x, 0) = x``), so a flow
                    run starts one.

Sampling (the families' ``jump``): ``x0_hat = f(x, t)``, then re-noised to the next level, ``x0_hat +
sqrt(r^2 - sigma_min^2) z`` (``(1 - r) x0_hat + r z`` on the interpolant); one step from the prior is
``f(sigma_max z, sigma_max)``. The second level's network is iCT's teacher, ``sg(theta)`` (no EMA teacher,
``mu = 0``). Left out: consistency distillation (a teacher's ODE step in place of the shared noise).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.core import processes
from jaxdiff.core.family import (refuse_fields, NETWORK_TIME_SCALE, Family, Grid, batch_of, check_spacing, check_steps,
                                 interpolant_grid, interpolant_level, interpolant_sigma_to_input)

SCHEDULES = ("ict", "ect")
ECT_Q, ECT_K, ECT_B = 2.0, 8.0, 1.0  # ECT's t_to_r_sigmoid (locuslab/ect)


def ict_discretisation(step, double_every: int, s0: int = 10, s1: int = 1280):
    """iCT's number of levels at training step ``step``: ``N = min(s0 2^floor(step / double_every), s1) + 1``."""
    doublings = jnp.minimum(step // double_every, 20)  # s1 / s0 < 2^20: no int32 overflow
    return jnp.minimum(s0 * jnp.left_shift(1, doublings), s1) + 1


def karras_level(i, n, sigma_min: float, sigma_max: float, rho: float):
    """Level ``i`` (``1..n``, increasing) of ``n`` Karras levels: ``(sigma_min^(1/rho) + (i - 1) / (n - 1)
    (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho`` (``i``, ``n`` may be traced)."""
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return (lo + (i - 1.0) / (n - 1.0) * (hi - lo)) ** rho


def ict_levels(key, batch: int, n, *, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
               p_mean: float = -1.1, p_std: float = 2.0, s1: int = 1280):
    """``(sigma_t, sigma_r)``, each ``[batch]``: iCT's pair ``(sigma_{i+1}, sigma_i)`` of ``n`` Karras levels
    (``n <= s1 + 1``, may be traced), ``i`` drawn with the discretised lognormal ``p(i)`` (module docstring)."""
    i = jnp.arange(1, s1 + 1, dtype=jnp.float32)
    lo, hi = karras_level(i, n, sigma_min, sigma_max, rho), karras_level(i + 1.0, n, sigma_min, sigma_max, rho)
    cdf = lambda s: jax.scipy.special.erf((jnp.log(s) - p_mean) / (np.sqrt(2.0) * p_std))  # noqa: E731
    p = jnp.where(i < n, cdf(hi) - cdf(lo), 0.0)
    pick = jax.random.categorical(key, jnp.log(jnp.maximum(p, 1e-30)) + jnp.where(i < n, 0.0, -jnp.inf), shape=(batch,))
    return hi[pick], lo[pick]


def ect_levels(key, batch: int, stage, *, p_mean: float = -1.1, p_std: float = 2.0):
    """``(sigma_t, sigma_r)``, each ``[batch]``: ``sigma_t = exp(P_m + P_s n)`` and ECT's
    ``sigma_r = max(0, sigma_t (1 - q^-(stage + 1) (1 + k sigmoid(-b sigma_t))))``."""
    t = processes.sample_log_normal(key, (batch,), p_mean, p_std)
    ratio = 1.0 - ECT_Q ** -(stage + 1.0) * (1.0 + ECT_K * jax.nn.sigmoid(-ECT_B * t))
    return t, jnp.maximum(t * ratio, 0.0)


def pseudo_huber(diff, c):
    """``sqrt(|diff|^2 + c^2) - c`` over each example of ``diff [B, ...]``: ``[B]`` (``c = 0``: the L2 norm)."""
    sq = jnp.sum(jnp.square(diff), axis=tuple(range(1, diff.ndim)))
    return jnp.sqrt(sq + c * c) - c


def consistency_loss(f_fn, x0, noise, sigma_t, sigma_r, huber_c: float):
    """Per example ``(sqrt(|f(x0 + sigma_t z, sigma_t) - sg(f(x0 + sigma_r z, sigma_r))|^2 + c^2) - c) /
    (sigma_t - sigma_r)``, ``c = huber_c sqrt(dim)``; the second term is ``x0`` where ``sigma_r = 0``.
    ``f_fn(x0, noise, sigma)`` is the consistency function at the level ``sigma`` of ``x0`` noised with
    ``noise`` (the family's coordinates). Returns ``[B]``."""
    dim = int(np.prod(x0.shape[1:]))
    at_r = f_fn(x0, noise, jnp.maximum(sigma_r, 1e-6))
    target = jax.lax.stop_gradient(jnp.where(processes.expand_to(sigma_r, x0) > 0, at_r, x0))
    return pseudo_huber(f_fn(x0, noise, sigma_t) - target, huber_c * np.sqrt(dim)) / (sigma_t - sigma_r)


def boundary_preconditioning(sigma, sigma_data: float, sigma_min: float):
    """``(c_skip, c_out, c_in, c_noise)`` of a consistency model on EDM's network: ``c_skip = sd^2 /
    ((sigma - sigma_min)^2 + sd^2)``, ``c_out = sd (sigma - sigma_min) / sqrt(sigma^2 + sd^2)``,
    ``c_in = 1 / sqrt(sigma^2 + sd^2)``, ``c_noise = ln(sigma) / 4`` (``f(x, sigma_min) = x``)."""
    edm = processes.edm_preconditioning(sigma, sigma_data)
    shifted = sigma - sigma_min
    return (sigma_data ** 2 / (shifted ** 2 + sigma_data ** 2), sigma_data * shifted * edm.c_in, edm.c_in,
            edm.c_noise)


def _draw(schedule, double_every, p_mean, p_std, sigma_min, sigma_max, rho):
    def draw(key, x0, step):
        level_key, noise_key = jax.random.split(key)
        b = x0.shape[0]
        if schedule == "ict":
            n = ict_discretisation(step, double_every)
            pair = ict_levels(level_key, b, n, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, p_mean=p_mean,
                              p_std=p_std)
        else:
            pair = ect_levels(level_key, b, (step // double_every).astype(jnp.float32), p_mean=p_mean, p_std=p_std)
        return jnp.stack(pair, axis=1), jax.random.normal(noise_key, x0.shape, jnp.float32)

    return draw


def _check(schedule, double_every, huber_c, sigma_min, sigma_max):
    if schedule not in SCHEDULES:
        raise ValueError(f"consistency schedule={schedule!r} is not one of {', '.join(SCHEDULES)}")
    if not (isinstance(double_every, (int, np.integer)) and double_every >= 1 and huber_c >= 0
            and 0 < sigma_min < sigma_max):
        raise ValueError(f"consistency models need double_every >= 1 (an integer), huber_c >= 0 and 0 < sigma_min "
                         f"< sigma_max, got double_every={double_every!r}, huber_c={huber_c}, sigma_min={sigma_min}, "
                         f"sigma_max={sigma_max}")


def consistency(schedule: str = "ict", double_every: int = 25_000, *, p_mean: float = -1.1, p_std: float = 2.0,
                huber_c: float = 0.00054, sigma_data: float = 0.5, sigma_min: float = 0.002,
                sigma_max: float = 80.0, rho: float = 7.0) -> Family:
    """A consistency model on EDM's network (module docstring): ``x = x0 + sigma z``, time ``sigma``,
    ``f = c_skip x + c_out F(c_in x, ln(sigma) / 4)`` (:func:`boundary_preconditioning`). Its training
    ``time`` is ``[B, 2]``, the pair ``(sigma_t, sigma_r)``; ``predict`` is ``f`` as a denoiser (every
    sampler runs it); ``jump`` is multistep consistency sampling on Karras levels."""
    _check(schedule, double_every, huber_c, sigma_min, sigma_max)

    def f(net, x, sigma):
        c_skip, c_out, c_in, c_noise = boundary_preconditioning(sigma, sigma_data, sigma_min)
        b = lambda v: processes.expand_to(v, x)  # noqa: E731
        out = net(b(c_in) * x, batch_of(x, c_noise)).astype(jnp.float32)
        return b(c_skip) * x + b(c_out) * out

    def loss(net, x0, time, noise):
        per_example = consistency_loss(lambda x0_, z, s: f(net, x0_ + processes.expand_to(s, x0_) * z, s),
                                       x0, noise, time[:, 0], time[:, 1], huber_c)
        return jnp.mean(per_example), per_example

    def predict(net, x, time, alpha, sigma):
        del alpha
        x0 = f(net, x, batch_of(x, time))
        return x0, (x - x0) / sigma

    def jump(net, x, t, r, key):
        x0 = f(net, x, batch_of(x, t))
        return x0 + jnp.sqrt(jnp.maximum(r * r - sigma_min ** 2, 0.0)) * jax.random.normal(key, x.shape, x.dtype), x0

    def grid(num_steps, spacing="karras", set_alpha_to_one=True):
        del set_alpha_to_one
        check_steps(num_steps)
        check_spacing(spacing, ("karras",), "consistency")
        sigmas = processes.karras_sigmas(num_steps + 1, sigma_min, sigma_max, rho)  # the first N, then 0
        sigmas = np.append(sigmas[:num_steps], 0.0)
        return Grid(sigmas, np.ones_like(sigmas), sigmas, float(sigmas[0]))

    def level(sigma):
        return sigma, 1.0, sigma

    return Family("consistency", "edm", _draw(schedule, double_every, p_mean, p_std, sigma_min, sigma_max, rho), loss,
                  predict, grid, ("karras",), "sigma", level, lambda s: 0.25 * np.log(s), jump=jump, curriculum=True)


def consistency_flow(schedule: str = "ect", double_every: int = 25_000, *, p_mean: float = -1.1,
                     p_std: float = 2.0, huber_c: float = 0.00054, sigma_min: float = 0.002,
                     sigma_max: float = 80.0, rho: float = 7.0) -> Family:
    """A consistency model on a flow-matching network (module docstring): ``f = x_t - t v(x_t, 1000 t)``
    on the linear interpolant; training levels drawn in ``sigma`` as :func:`consistency`'s and read as
    ``t = sigma / (1 + sigma)``. ``predict`` is flow matching's; ``jump`` re-noises on the interpolant,
    grids uniform in ``t``."""
    _check(schedule, double_every, huber_c, sigma_min, sigma_max)
    s = NETWORK_TIME_SCALE

    def f(net, x, t):
        tt = processes.expand_to(t, x)
        return x - tt * net(x, batch_of(x, s * t)).astype(jnp.float32)

    def at_level(net, x0, z, sigma):
        t = sigma / (1.0 + sigma)
        tt = processes.expand_to(t, x0)
        return f(net, (1.0 - tt) * x0 + tt * z, t)

    def loss(net, x0, time, noise):
        per_example = consistency_loss(lambda x0_, z, sg: at_level(net, x0_, z, sg), x0, noise, time[:, 0],
                                       time[:, 1], huber_c)
        return jnp.mean(per_example), per_example

    def predict(net, x, time, alpha, sigma):
        return processes.x0_eps_from_prediction("flow", x, net(x, batch_of(x, s * time)), alpha, sigma)

    def jump(net, x, t, r, key):
        x0 = f(net, x, batch_of(x, t))
        return (1.0 - r) * x0 + r * jax.random.normal(key, x.shape, x.dtype), x0

    def grid(num_steps, spacing="uniform", set_alpha_to_one=True):
        del set_alpha_to_one
        check_steps(num_steps)
        check_spacing(spacing, ("uniform",), "consistency_flow")
        return interpolant_grid(num_steps)

    return Family("consistency_flow", "flow", _draw(schedule, double_every, p_mean, p_std, sigma_min, sigma_max, rho),
                  loss, predict, grid, ("uniform",), "t", interpolant_level, interpolant_sigma_to_input, jump=jump,
                  curriculum=True)


def _fields(r, family):
    refuse_fields(r, family, weighted=False)
    c = r["consistency"]
    return dict(schedule=c["schedule"], double_every=c["double_every"], p_mean=c["p_mean"], p_std=c["p_std"],
                huber_c=c["huber_c"], sigma_min=c["sigma_min"], sigma_max=c["sigma_max"], rho=c["rho"])


def from_record(r) -> Family:
    """The consistency family of a process record (``diffusion.consistency``; ``sigma_data`` from ``diffusion.edm``,
    the EDM network's)."""
    return consistency(**_fields(r, "consistency"), sigma_data=r["edm"]["sigma_data"])


def flow_from_record(r) -> Family:
    """The consistency_flow family of a process record (``diffusion.consistency``)."""
    return consistency_flow(**_fields(r, "consistency_flow"))
