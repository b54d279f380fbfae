"""MeanFlow (Geng et al. 2025, "Mean Flows for One-step Generative Modeling"; Gsunshine/meanflow): a
network of two times regresses the *average* velocity of the flow-matching ODE, and samples in one or a
few jumps.

On the linear interpolant ``z_t = (1 - t) x0 + t eps`` (velocity ``v = eps - x0``) the average velocity

    ``u(z_t, r, t) = 1 / (t - r) int_r^t v(z_s, s) ds``,  so  ``z_r = z_t - (t - r) u(z_t, r, t)``, ``u(z, t, t) = v``,

satisfies the MeanFlow identity (differentiate ``(t - r) u`` in ``t`` with ``r`` held)

    ``u(z_t, r, t) = v(z_t, t) - (t - r) du/dt``,   ``du/dt = v d_z u + d_t u``,

so the network ``u_theta`` regresses :func:`average_velocity_target`,
``u_tgt = sg(v - clip(t - r, 0, 1) (v d_z u_theta + d_t u_theta))``, the total derivative from one
``jax.jvp`` with tangent ``(v, 1)`` on ``(z, t)``. The network sees ``net(z, 1000 t, span=1000 (t - r))``
(flow matching's time scale; the span is the networks' second time, zero-initialised, so
``u_theta(z, t, t)`` starts as a flow model's ``v``).

Training times (:func:`draw_times`): ``t, r ~ sigmoid(N(p_mean, p_std^2))`` independently, then
``(t, r) = (max, min)``; the first ``equal_fraction`` of the batch's rows take ``r = t`` (plain flow
matching). The loss of an example, ``L = sum over pixels (u_theta - u_tgt)^2``, is weighted adaptively,
``L / sg(L + norm_eps)^norm_p``. Sampling: ``z_r = z_t - (t - r) u_theta(z_t, r, t)`` from ``t = 1`` to
0 (one step: ``x = eps - u_theta(eps, 0, 1)``). Left out (said in the README): the classifier-free
guidance folded into training (``omega``, ``kappa``) and iMF's auxiliary velocity head.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff.core import processes
from jaxdiff.core.family import (refuse_fields, NETWORK_TIME_SCALE, Family, batch_of, check_spacing, check_steps, interpolant_grid,
                                 interpolant_level, interpolant_sigma_to_input)

SPACINGS = ("uniform",)


def average_velocity_target(u_fn, z, t, r, v):
    """``(u, u_tgt)`` at ``(z, r, t)``: ``u = u_fn(z, t)`` (the network at times ``(r, t)``, ``r`` held)
    and the MeanFlow target ``u_tgt = v - clip(t - r, 0, 1) (v d_z u + d_t u)``, the total derivative
    from ``jax.jvp(u_fn, (z, t), (v, 1))`` (no stop-gradient: the loss applies it). ``t``, ``r``: ``[B]``."""
    u, du_dt = jax.jvp(u_fn, (z, t), (v, jnp.ones_like(t)))
    return u, v - processes.expand_to(jnp.clip(t - r, 0.0, 1.0), z) * du_dt


def draw_times(key, batch: int, p_mean: float = -0.4, p_std: float = 1.0, equal_fraction: float = 0.75):
    """``(t, r)``, each ``[batch]``: two logit-normal draws ordered ``r <= t``; rows
    ``0 .. floor(batch * equal_fraction) - 1`` take ``r = t``."""
    t_key, r_key = jax.random.split(key)
    a = processes.sample_logit_normal(t_key, (batch,), p_mean, p_std)
    b = processes.sample_logit_normal(r_key, (batch,), p_mean, p_std)
    t, r = jnp.maximum(a, b), jnp.minimum(a, b)
    return t, jnp.where(jnp.arange(batch) < int(batch * equal_fraction), t, r)


def meanflow(p_mean: float = -0.4, p_std: float = 1.0, equal_fraction: float = 0.75, norm_p: float = 1.0,
             norm_eps: float = 0.01) -> Family:
    """The MeanFlow family (module docstring). Its ``time`` is ``[B, 2]``, the pair ``(t, r)``; ``predict``
    is the flow velocity ``u_theta(z, t, t)``, so every sampler of the flow family also runs it, and
    ``jump`` is its own few-step map."""
    if not (p_std > 0 and 0.0 <= equal_fraction <= 1.0 and norm_p >= 0 and norm_eps > 0):
        raise ValueError(f"meanflow needs p_std > 0, 0 <= equal_fraction <= 1, norm_p >= 0 and norm_eps > 0, got "
                         f"p_std={p_std}, equal_fraction={equal_fraction}, norm_p={norm_p}, norm_eps={norm_eps}")
    s = NETWORK_TIME_SCALE

    def draw(key, x0):
        time_key, noise_key = jax.random.split(key)
        t, r = draw_times(time_key, x0.shape[0], p_mean, p_std, equal_fraction)
        return jnp.stack([t, r], axis=1), jax.random.normal(noise_key, x0.shape, jnp.float32)

    def loss(net, x0, time, noise):
        t, r = time[:, 0], time[:, 1]
        tt = processes.expand_to(t, x0)
        z, v = (1.0 - tt) * x0 + tt * noise, noise - x0
        u, target = average_velocity_target(lambda z_, t_: net(z_, s * t_, s * (t_ - r)).astype(jnp.float32),
                                            z, t, r, v)
        err = jnp.sum(jnp.square(u - jax.lax.stop_gradient(target)), axis=tuple(range(1, x0.ndim)))
        per_example = err / jax.lax.stop_gradient((err + norm_eps) ** norm_p)
        return jnp.mean(per_example), per_example

    return average_velocity_family("meanflow", draw, loss)._replace(needs_jvp=True)


def average_velocity_family(name: str, draw, loss) -> Family:
    """A family whose network ``net(z, 1000 t, span=1000 (t - r))`` is the average velocity
    ``u(z, r, t)`` on the linear interpolant (MeanFlow's; a shortcut model's), with ``draw`` and
    ``loss`` its own: ``predict`` is the velocity ``u(z, t, t)`` (every flow sampler runs it), ``jump``
    is ``z_r = z_t - (t - r) u(z_t, r, t)`` (its ``x0_hat``: ``z_t - t u``), the grid flow matching's."""
    s = NETWORK_TIME_SCALE

    def predict(net, x, time, alpha, sigma):
        t_in = batch_of(x, s * time)
        out = net(x, t_in, jnp.zeros_like(t_in))
        return processes.x0_eps_from_prediction("flow", x, out, alpha, sigma)

    def jump(net, x, t, r, key=None):
        del key  # deterministic
        u = net(x, batch_of(x, s * t), batch_of(x, s * (t - r))).astype(x.dtype)
        return x - (t - r) * u, x - t * u

    def grid(num_steps, spacing="uniform", set_alpha_to_one=True):
        del set_alpha_to_one
        check_steps(num_steps)
        check_spacing(spacing, SPACINGS, name)
        return interpolant_grid(num_steps)

    return Family(name, "flow", draw, loss, predict, grid, SPACINGS, "t", interpolant_level,
                  interpolant_sigma_to_input, jump=jump, two_times=True)


def from_record(r) -> Family:
    """The meanflow family of a process record (``diffusion.meanflow``)."""
    refuse_fields(r, "meanflow", weighted=False)
    m = r["meanflow"]
    return meanflow(m["p_mean"], m["p_std"], m["equal_fraction"], m["norm_p"], m["norm_eps"])
