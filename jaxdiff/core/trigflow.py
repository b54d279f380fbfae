"""Continuous-time consistency models on TrigFlow: sCT (Lu & Song 2024, "Simplifying, Stabilizing and Scaling
Continuous-Time Consistency Models"; checked against NVIDIA's reimplementation, NVlabs/FastGen
``methods/consistency_model/sCM.py``).

TrigFlow: ``x_t = cos(t) x0 + sin(t) z``, ``z ~ N(0, sd^2 I)``, ``t in [0, pi/2]``; the network
``F_theta(x_t / sd, c(t))`` (``c(t) = 1000 t / (pi/2)``, the networks' time range) gives the consistency
function ``f = cos(t) x_t - sin(t) sd F_theta`` (``f(x, 0) = x``) and the velocity ``dx/dt = sd F``. The
training signal is the tangent of ``f`` along the ODE, from one ``jax.jvp`` (:func:`trigflow_tangent`):

    ``g = -cos^2(t) (sd F^- - dx/dt) - r cos(t) sin(t) (x_t + sd dF^-/dt)``,

``F^- = F_sg(theta)``, ``dx/dt = cos(t) z - sin(t) x0`` (consistency *training*: the data's velocity),
``r = min(1, step / warmup_steps)`` (tangent warm-up), then normalised, ``g <- g / (rms(g) + c)``
(``c = 0.1``); the loss is ``w(t) mean((F_theta - F^- - g)^2)``, whose gradient is ``-2 w g dF_theta``,
with the prior weight ``w(t) = 1 / (sd tan t)``. Training times ``t = arctan(exp(tau) / sd)``,
``tau ~ N(P_mean, P_std^2)`` (-1.0, 1.4: the paper's CIFAR-10). For the exact ``F`` of the data
``g = cos(t) df/dt = 0``.

Left out (said in the README): the adaptive weighting (the learned ``logvar(t)`` MLP: ``e^-logvar w ... +
logvar``; issue 36's EDM2 uncertainty head is the same mechanism), consistency *distillation* (``dx/dt``
from a teacher), and the paper's network changes (adaptive double normalisation, positional time
embedding): jaxdiff's U-Net and DiT are used as they are, built with forward-mode layers for the JVP.
Sampling (the family's ``jump``): ``x0_hat = f(x_t, t)``, re-noised ``cos(r) x0_hat + sin(r) sd z``; one
step is ``f(sd z, t_max) ~ -sd F(z, pi/2)`` from ``x = sd z`` (grids start at ``t_max = arctan(80 / sd)``,
where ``cos t = 0.006``, so that every sampler's ODE coordinates stay finite).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.core import processes
from jaxdiff.core.family import refuse_fields, NETWORK_TIME_SCALE, Family, Grid, batch_of, check_spacing, check_steps

HALF_PI = 0.5 * np.pi
TIME_SCALE = NETWORK_TIME_SCALE / HALF_PI  # c(t) = 1000 t / (pi / 2)
SIGMA_MAX = 80.0  # grids start at t = arctan(80 / sd), where sigma / alpha = 80 (EDM's sigma_max), not pi / 2


def trigflow_times(key, batch: int, p_mean: float = -1.0, p_std: float = 1.4, sigma_data: float = 0.5):
    """``t = arctan(exp(tau) / sd)``, ``tau ~ N(p_mean, p_std^2)``: ``[batch]``."""
    return jnp.arctan(processes.sample_log_normal(key, (batch,), p_mean, p_std) / sigma_data)


def trigflow_tangent(F, x_t, t, dxdt, sigma_data: float, warmup):
    """``(F_theta, g)``: the network ``F(x / sd, t)`` at ``x_t`` and the sCM tangent
    ``g = -cos^2(t) (sd F^- - dx/dt) - r cos(t) sin(t) (x_t + sd dF^-/dt)`` (``r = warmup``), with
    ``cos(t) sin(t) dF^-/dt`` from ``jax.jvp(F, (x_t / sd, t), (cos sin dx/dt / sd, cos sin))``. ``t``:
    ``[B]``; ``F_theta`` carries the gradient, ``g`` does not."""
    cos, sin = processes.expand_to(jnp.cos(t), x_t), processes.expand_to(jnp.sin(t), x_t)
    cs = cos * sin
    out, d_out = jax.jvp(F, (x_t / sigma_data, t), (cs * dxdt / sigma_data, jnp.cos(t) * jnp.sin(t)))
    f_minus, d_minus = jax.lax.stop_gradient((out, d_out))
    g = -cos * cos * (sigma_data * f_minus - dxdt) - processes.expand_to(warmup, x_t) * (cs * x_t + sigma_data * d_minus)
    return out, g


def normalise_tangent(g, c: float = 0.1):
    """``g / (rms(g) + c)`` per example (sCM's tangent normalisation, dimension-free)."""
    rms = jnp.sqrt(jnp.mean(jnp.square(g), axis=tuple(range(1, g.ndim)), keepdims=True))
    return g / (rms + c)


def trigflow(sigma_data: float = 0.5, p_mean: float = -1.0, p_std: float = 1.4, warmup_steps: int = 10_000,
             tangent_c: float = 0.1) -> Family:
    """The sCM family (module docstring). Its training ``time`` is ``[B, 2]``: ``t`` and the warm-up
    ``r = min(1, step / warmup_steps)``; ``predict`` is ``f`` as a denoiser (``alpha = cos t``,
    ``sigma = sd sin t``), ``jump`` multistep consistency sampling. Grids are uniform in ``t`` from
    ``arctan(80 / sd)`` (``sigma / alpha = 80``: every sampler's ODE coordinates stay finite; ``cos t =
    0.006`` there, and ``x_T = sd N(0, I)``) to 0."""
    if not (sigma_data > 0 and p_std > 0 and isinstance(warmup_steps, (int, np.integer)) and warmup_steps >= 0
            and tangent_c > 0):
        raise ValueError(f"scm needs sigma_data > 0, p_std > 0, warmup_steps >= 0 (an integer) and tangent_c > 0, "
                         f"got sigma_data={sigma_data}, p_std={p_std}, warmup_steps={warmup_steps!r}, "
                         f"tangent_c={tangent_c}")

    def network(net):
        return lambda x_in, t: net(x_in, TIME_SCALE * t).astype(jnp.float32)

    def f(net, x, t):
        tt = processes.expand_to(t, x)
        return jnp.cos(tt) * x - jnp.sin(tt) * sigma_data * network(net)(x / sigma_data, t)

    def draw(key, x0, step):
        t_key, noise_key = jax.random.split(key)
        t = trigflow_times(t_key, x0.shape[0], p_mean, p_std, sigma_data)
        warmup = jnp.minimum(1.0, step.astype(jnp.float32) / max(warmup_steps, 1)) if warmup_steps else 1.0
        return jnp.stack([t, jnp.broadcast_to(warmup, t.shape)], axis=1), jax.random.normal(noise_key, x0.shape)

    def loss(net, x0, time, noise):
        t, warmup = time[:, 0], time[:, 1]
        cos, sin = processes.expand_to(jnp.cos(t), x0), processes.expand_to(jnp.sin(t), x0)
        z = sigma_data * noise
        x_t, dxdt = cos * x0 + sin * z, cos * z - sin * x0
        out, g = trigflow_tangent(network(net), x_t, t, dxdt, sigma_data, warmup)
        g = normalise_tangent(g, tangent_c)
        err = jnp.mean(jnp.square(out - jax.lax.stop_gradient(out) - g), axis=tuple(range(1, x0.ndim)))
        per_example = err / (sigma_data * jnp.tan(t))
        return jnp.mean(per_example), per_example

    def predict(net, x, time, alpha, sigma):
        x0 = f(net, x, batch_of(x, time))
        return x0, (x - alpha * x0) / sigma

    def jump(net, x, t, r, key):
        x0 = f(net, x, batch_of(x, t))
        return jnp.cos(r) * x0 + jnp.sin(r) * sigma_data * jax.random.normal(key, x.shape, x.dtype), x0

    t_max = float(np.arctan(SIGMA_MAX / sigma_data))

    def grid(num_steps, spacing="uniform", set_alpha_to_one=True):
        del set_alpha_to_one
        check_steps(num_steps)
        check_spacing(spacing, ("uniform",), "scm")
        t = np.linspace(t_max, 0.0, num_steps + 1)
        return Grid(t, np.cos(t), sigma_data * np.sin(t), sigma_data)

    def level(s):  # s = sigma / alpha = sd tan t
        t = np.arctan(s / sigma_data)
        return t, np.cos(t), sigma_data * np.sin(t)

    return Family("scm", "trigflow", draw, loss, predict, grid, ("uniform",), "sigma", level,
                  lambda s: TIME_SCALE * np.arctan(np.asarray(s) / sigma_data), jump=jump, needs_jvp=True,
                  curriculum=True)


def from_record(r) -> Family:
    """The scm family of a process record (``diffusion.scm``)."""
    refuse_fields(r, "scm", weighted=False)
    c = r["scm"]
    return trigflow(c["sigma_data"], c["p_mean"], c["p_std"], c["warmup_steps"], c["tangent_c"])
