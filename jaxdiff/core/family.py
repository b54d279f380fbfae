"""The :class:`Family` protocol: one diffusion formulation as a NamedTuple of pure functions (the pattern
of optax's ``GradientTransformation``), and :class:`Grid`, a sampler's noise levels.

  ``draw(key, x0) -> (time [B], noise)``           the training randomness of one (global) batch
                                                   (``draw(key, x0, step)`` for a ``curriculum`` family)
  ``loss(net, x0, time, noise) -> (mean, per_ex)``  the weighted regression loss (``loss(net, x0, time,
                                                   noise, teacher)`` for a family that ``needs_teacher``)
  ``predict(net, x, time, alpha, sigma) -> (x0_hat, eps_hat)``   the network as a denoiser
  ``grid(num_steps, spacing, set_alpha_to_one) -> Grid``           a sampler's noise levels

``net(x_in, t_in)`` is the raw network (guidance composes in front of it); each family decides what
``x_in`` and ``t_in`` are. Samplers (:mod:`jaxdiff.core.grid_samplers`) step in ``(x0_hat, eps_hat)``
form; second-order ones integrate an ODE in the family's coordinates ``ode_space``: ``sigma``
(``y = x / alpha`` against ``s = sigma / alpha``, ``dy/ds = eps``: EDM's choice, used for ddpm, vp and
edm) or ``t`` (``y = x`` against ``t``, ``dy/dt = eps - x0``: the flow ODE, which starts at ``alpha = 0``).
The families themselves, and their registry, are :mod:`jaxdiff.core.families`; the helpers below are
what their functions share.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxdiff.core import diffusion, processes
from jaxdiff.core.schedules import DiffusionTables

NETWORK_TIME_SCALE = 1000.0  # vp and flow feed the network 1000 t (the range of DDPM's integer steps)


class Grid(NamedTuple):
    """A sampler's noise levels, float64 NumPy: ``time [N + 1]`` (the family's time of each level:
    table index, ``t`` or ``sigma``; entry ``N`` is where the last step ends and is never evaluated),
    ``alpha [N + 1]`` and ``sigma [N + 1]``; ``x_T = prior_scale * N(0, I)``."""

    time: np.ndarray
    alpha: np.ndarray
    sigma: np.ndarray
    prior_scale: float = 1.0

    @property
    def num_steps(self) -> int:
        return len(self.time) - 1


class Family(NamedTuple):
    """See the module docstring. ``prediction`` names what the network outputs; ``spacings`` the
    grids ``grid`` accepts; ``level(s) -> (time, alpha, sigma)`` the noise level at solver coordinate
    ``s`` (continuous families; ``None`` for ddpm, whose levels are table rows);
    ``sigma_to_input(sigma_ratio)`` the network time at ``sigma / alpha`` (NumPy, increasing: used
    to map a guidance interval); ``tables`` the discrete tables (ddpm only).

    A few-step family's network takes a second time, the *span* of a jump (``net(x_in, t_in, span)``,
    the networks' ``span_embedding``): ``two_times`` says so. ``jump(net, x, t, r, key) -> (x_r, x0_hat)``
    moves ``x`` from level ``t`` to level ``r < t`` in one evaluation (MeanFlow's average velocity; a
    consistency model's ``f(x, t)`` re-noised to ``r`` with ``key``: the ``jump`` sampler of
    :mod:`jaxdiff.core.sampler_registry`; ``None`` for the other families); ``needs_jvp``: its loss
    takes ``jax.jvp`` of the network (MeanFlow's, sCM's), which is then built with forward-mode layers;
    ``curriculum``: its ``draw`` also takes the training step (a schedule that moves with training:
    iCT's discretisation, ECT's stages, sCM's tangent warm-up); ``needs_teacher``: its ``loss`` also
    takes a frozen ``teacher(x_in, t_in)`` network (progressive distillation's)."""

    name: str
    prediction: str
    draw: Callable
    loss: Callable
    predict: Callable
    grid: Callable
    spacings: tuple
    ode_space: str
    level: Callable | None
    sigma_to_input: Callable
    tables: DiffusionTables | None = None
    jump: Callable | None = None
    two_times: bool = False
    needs_jvp: bool = False
    curriculum: bool = False
    needs_teacher: bool = False


def batch_of(x, value, dtype=jnp.float32):
    """``value`` for every example of the batch ``x``: ``[B]``."""
    return jnp.full((x.shape[0],), value, dtype)


def per_example_mean(err):
    """The mean of ``err [B, ...]`` over all but the batch axis: ``[B]``."""
    return jnp.mean(err, axis=tuple(range(1, err.ndim)))


def check_weighting(weighting):
    if weighting not in diffusion.WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {weighting!r}; choose one of "
                         f"{', '.join(diffusion.WEIGHTINGS)}")


def check_prediction(prediction, allowed, family):
    if prediction not in allowed:
        raise ValueError(f"target={prediction!r} does not fit the {family!r} family; "
                         f"choose one of {', '.join(allowed)}")


def grid_from_logsnr(process, logsnr):
    """A grid at the times of ``logsnr [N]`` (decreasing noise) that ends at the data
    (``t = 0``, ``alpha = 1``, ``sigma = 0``), starting from ``x_T = sigma_0 N(0, I)``."""
    t = process.time_from_logsnr(logsnr)
    alpha, sigma = process.alpha_sigma(t, np)
    time, alpha, sigma = (np.append(v, e) for v, e in zip((t, alpha, sigma), (0.0, 1.0, 0.0)))
    return Grid(time, alpha, sigma, float(sigma[0]))


def refuse_fields(record, family: str, weighted: bool) -> None:
    """A process record's fields that do not apply to ``family`` (a continuous or own-weighted one)."""
    if record.get("zero_terminal_snr", False):
        raise ValueError("diffusion.zero_terminal_snr rescales the discrete ddpm tables; it does not apply to "
                         f"diffusion.family={family!r}")
    if not weighted and record.get("loss_weighting", "none") != "none":
        raise ValueError(f"diffusion.loss_weighting={record['loss_weighting']!r} is for ddpm and vp; "
                         f"diffusion.family={family!r} has its own weighting (use none)")


def check_spacing(spacing, spacings, family):
    if spacing not in spacings:
        raise ValueError(f"spacing={spacing!r} does not fit the {family!r} family; choose one "
                         f"of auto, {', '.join(spacings)}")


def check_steps(num_steps):
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps={num_steps!r} must be a positive number of steps for a "
                         "continuous-time family")


def interpolant_grid(num_steps: int, shift: float = 1.0) -> Grid:
    """The linear interpolant's grid (``alpha = 1 - t``, ``sigma = t``): ``t`` uniform from 1 to 0, then
    ``t <- shift t / (1 + (shift - 1) t)``; ``x_1 = N(0, I)``."""
    t = processes.shift_time(np.linspace(1.0, 0.0, num_steps + 1), shift)
    return Grid(t, 1.0 - t, t, 1.0)


def interpolant_level(t):
    """``(time, alpha, sigma)`` of the linear interpolant at ``t``."""
    return t, 1.0 - t, t


def interpolant_sigma_to_input(sigma_ratio):
    """The network time ``1000 t`` of the linear interpolant where ``sigma / alpha = t / (1 - t)``."""
    return NETWORK_TIME_SCALE * sigma_ratio / (1.0 + sigma_ratio)
