"""Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion
Models"; google-research/google-research diffusion_distillation/diffusion_distillation/dpm.py,
``Model.training_losses``): a student learns to take in one deterministic DDIM step what a frozen
teacher takes in two, so that ``N`` student steps reproduce ``2N`` teacher steps; each round's student is
the next round's teacher.

The teacher samples on ``base.grid(2N, spacing)``, levels ``0 .. 2N`` (level ``2N`` is the data end),
``z = alpha x0 + sigma eps`` at each; the student on its even levels. For a student step ``i ~ U{0..N-1}``
from ``t = 2i`` to ``s = 2i + 2`` the teacher takes two DDIM steps (eta 0, in ``(x0_hat, eps_hat)``
form: :func:`ddim_step`),

    ``z_t = alpha_t x0 + sigma_t eps``,  ``z_mid = alpha_m x0_hat(z_t) + sigma_m eps_hat(z_t)``,
    ``z_s = alpha_s x0_hat(z_mid) + sigma_s eps_hat(z_mid)``,

and the student's ``x0_hat(z_t)`` regresses the ``x~`` of :func:`distillation_target`, the ``x0`` whose
one DDIM step from ``z_t`` lands on ``z_s``, with the paper's truncated-SNR weight
``max(alpha_t^2 / sigma_t^2, 1) |x0_hat - sg(x~)|^2`` (``snr_trunc``: ``max(mse_x, mse_eps)``).

What differs from dpm.py: the levels are the base family's grid (its spacing: ddpm's table rows, vp's
log-SNR or uniform ``t``, flow's ``t``, edm's Karras sigmas) rather than the cosine log-SNR schedule at
``u = (i + 1) / N`` and ``u - 1/(2N)``; ``i`` counts from the noise end (``i = 0`` is the first step,
dpm.py's ``i = 0`` the last); the last step's target needs no special case (at ``sigma_s = 0`` the
formula is ``z_s / alpha_s``, the teacher's second ``x0_hat``, which dpm.py substitutes because its
clipped log-SNR never reaches ``sigma = 0``); the student is the base family's network in its own
parameterisation (eps, x0, v, flow velocity or EDM's preconditioned ``F``), read as ``x0`` by its
``predict``. The distilled family samples on the even levels of the base's ``2N`` grid (``grid``), which
for most spacings (all but flow's uniform ``t``) are not the base's ``N``-step grid.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.core import diffusion
from jaxdiff.core.family import Family, Grid, per_example_mean


def distillation_target(z_t, z_s, alpha_t, sigma_t, alpha_s, sigma_s):
    """The student's ``x`` target ``x~ = (z_s - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t)
    alpha_t)``: with ``eps~ = (z_t - alpha_t x~) / sigma_t`` one DDIM step ``alpha_s x~ + sigma_s eps~``
    from ``z_t`` is ``z_s`` exactly (at ``sigma_s = 0``: ``x~ = z_s / alpha_s``). Coefficients broadcast
    against ``z_t`` (scalars or ``[B, 1, ..., 1]``); ``sigma_t > 0`` and ``alpha_s / sigma_s > alpha_t /
    sigma_t`` (``s`` is the less noisy level)."""
    ratio = sigma_s / sigma_t
    return (z_s - ratio * z_t) / (alpha_s - ratio * alpha_t)


def ddim_step(x0, eps, alpha, sigma):
    """One deterministic DDIM step (eta 0) to the level ``(alpha, sigma)``: ``alpha x0 + sigma eps``
    (also the forward noising ``z = alpha x0 + sigma eps``)."""
    return alpha * x0 + sigma * eps


def even_levels(grid: Grid) -> Grid:
    """The levels ``0, 2, .., 2N`` of a ``2N``-step grid: the student's ``N``-step grid."""
    return Grid(grid.time[::2], grid.alpha[::2], grid.sigma[::2], grid.prior_scale)


def _teacher_grid(base: Family, num_steps: int, spacing: str, set_alpha_to_one: bool = True) -> Grid:
    grid = base.grid(2 * num_steps, spacing, set_alpha_to_one)
    if grid.num_steps != 2 * num_steps:  # ddpm's uniform spacing takes more steps where 2N does not divide T
        raise ValueError(f"spacing={spacing!r} gives the {base.name!r} family {grid.num_steps} steps for "
                         f"{2 * num_steps}; progressive distillation needs exactly 2 * num_steps (use another spacing)")
    return grid


def progressive(base: Family, num_steps: int, spacing: str) -> Family:
    """The ``base`` family (ddpm, vp, edm, flow, or an earlier round's distilled family) distilled to
    ``num_steps`` steps on ``spacing`` (module docstring): ``draw(key, x0) -> (i, eps)``, the student step
    ``i ~ U{0..N-1}`` (int32 ``[B]``) and ``eps ~ N(0, I)``; ``loss(net, x0, i, eps, teacher) -> (mean,
    per_example)`` with the frozen ``teacher(x_in, t_in)``, ``needs_teacher=True``. ``grid(n)`` is the even
    levels of ``base.grid(2n, spacing)`` (``n = 0``: ``num_steps``), so ``grid(num_steps)`` is where the
    student was trained and the next round distills it on ``progressive(this, num_steps // 2, spacing)``.
    Sampling another spacing is refused (the student knows only its levels). The name, ``predict`` and
    the rest stay the base family's, so its samplers run the student. ``ValueError`` (one line) for a bad
    ``num_steps``, a spacing the base refuses (or that does not give it ``2 num_steps`` steps), or a
    few-step base (meanflow, shortcut). The paper distills x- or v-predicting networks: an eps network's
    ``x0_hat = (z - sigma eps_hat) / alpha`` is ill-conditioned at the first levels of few-step grids."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps={num_steps!r} must be a positive number of student steps")
    if base.two_times or base.jump is not None:
        raise ValueError(f"progressive distillation needs a family whose network takes one time (ddpm, vp, edm, "
                         f"flow), not {base.name!r}")
    n_student, trained_spacing = int(num_steps), spacing
    levels = _teacher_grid(base, n_student, spacing)
    time, alpha, sigma = (jnp.asarray(v, jnp.float32) for v in (levels.time, levels.alpha, levels.sigma))

    def draw(key, x0):
        return diffusion.draw_t_noise(key, x0, n_student)

    def loss(net, x0, i, noise, teacher):
        def at(level):  # (time [B], alpha [B, 1, ..], sigma [B, 1, ..]) of each example's level
            col = lambda v: v[level].reshape((-1,) + (1,) * (x0.ndim - 1))  # noqa: E731
            return time[level], col(alpha), col(sigma)

        def denoise(model, z, level):
            x0_hat, eps_hat = base.predict(model, z, *at(level))
            return x0_hat.astype(jnp.float32), eps_hat.astype(jnp.float32)

        t, m, s = 2 * i, 2 * i + 1, 2 * i + 2
        (_, a_t, s_t), (_, a_m, s_m), (_, a_s, s_s) = at(t), at(m), at(s)
        z_t = ddim_step(x0, noise, a_t, s_t)
        z_mid = ddim_step(*denoise(teacher, z_t, t), a_m, s_m)
        z_s = ddim_step(*denoise(teacher, z_mid, m), a_s, s_s)
        target = jax.lax.stop_gradient(distillation_target(z_t, z_s, a_t, s_t, a_s, s_s))
        x0_hat = denoise(net, z_t, t)[0]
        weight = jnp.maximum(jnp.square(alpha[t] / sigma[t]), 1.0)
        per_example = weight * per_example_mean(jnp.square(x0_hat - target))
        return jnp.mean(per_example), per_example

    def grid(num_steps=0, spacing=trained_spacing, set_alpha_to_one=True):
        if spacing != trained_spacing:
            raise ValueError(f"this {base.name!r} family was distilled on spacing={trained_spacing!r}; "
                             f"sample it with that spacing, not {spacing!r}")
        return even_levels(_teacher_grid(base, num_steps or n_student, spacing, set_alpha_to_one))

    return base._replace(draw=draw, loss=loss, grid=grid, spacings=(spacing,), needs_teacher=True)
