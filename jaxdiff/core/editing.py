"""Using a trained model on an image: SDEdit, RePaint inpainting, DDIM inversion and spherical
interpolation, for every family and (where the method allows) every sampler.

All of them work on a :class:`~jaxdiff.core.families.Grid` of noise levels ``(alpha_l, sigma_l)``,
``l = 0..N`` (level 0 the noisiest, level N the data) and a sampler over the same grid
(:func:`grid_and_sampler`; the sampler's scan position ``l`` steps from level ``l`` to ``l + 1``).
``denoise_fn(x_in, t_in)`` is the (guided) network, as for :func:`~jaxdiff.core.sampler.run_sampler`.

  sdedit       (Meng et al. 2022) noise the input to level ``k = N - floor(strength N)``,
               ``x_k = alpha_k x + sigma_k z``, and run the sampler's last ``N - k`` steps.
               strength 0 returns the input itself; strength 1 starts from the sampler's prior
               ``x_T`` (an unconditional sample, the same one :func:`~jaxdiff.core.generation.generate`
               draws with that key).
  repaint      (Lugmayr et al. 2022) after every step ``l -> l + 1`` the known pixels are replaced by the
               input noised to level ``l + 1``; with resampling, ``r - 1`` times every ``j`` levels the
               chain goes back up ``j`` levels, one forward step at a time:
               ``x_{l-1} = (alpha_{l-1} / alpha_l) x_l + sqrt(sigma_{l-1}^2 - (alpha_{l-1} / alpha_l)^2 sigma_l^2) z``
               (RePaint's ``get_schedule_jump``, as diffusers' ``RePaintScheduler``).
  invert       DDIM inversion: Euler (DDIM with eta = 0) in the reverse direction,
               ``x_{l-1} = alpha_{l-1} x0(x_l) + sigma_{l-1} eps(x_l)``, from the data taken as level
               ``N - 1`` (``N`` for flow, whose network is defined at ``t = 0``) up to level 0;
               :func:`reconstruct` runs Euler forward over the same levels.
  slerp        ``(sin((1 - u) theta) z0 + sin(u theta) z1) / sin(theta)``, ``cos(theta) = <z0, z1> / (|z0| |z1|)``.

Keys as in generation: the noise that starts a chain (``x_k`` of SDEdit, ``x_T`` of RePaint) comes
from ``fold_in(key, 0)``, the sampler's own from ``fold_in(key, 1)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.core import grid_samplers, sampler_registry
from jaxdiff.core.families import Family, Grid
from jaxdiff.core.generation import prior_noise
from jaxdiff.core.sampler import Sampler, run_sampler


def _f32(a) -> jax.Array:
    return jnp.asarray(np.asarray(a, np.float64), jnp.float32)


def grid_and_sampler(family: Family, name: str, num_steps: int = 0, spacing: str = "auto", *,
                     set_alpha_to_one: bool = True, **options) -> tuple[Grid, Sampler]:
    """The grid of :func:`~jaxdiff.core.sampler_registry.make_sampler` and the sampler ``name`` over it
    (``options`` are :func:`~jaxdiff.core.sampler_registry.sampler_on_grid`'s)."""
    sampler_registry.check_sampler_fits(family, name)
    grid = family.grid(num_steps, sampler_registry.resolve_spacing(family, name, spacing), set_alpha_to_one)
    return grid, sampler_registry.sampler_on_grid(family, name, grid, **options)


def sub_grid(grid: Grid, levels) -> Grid:
    """The levels ``levels`` (indices, in the order given) of ``grid``."""
    idx = np.asarray(levels, np.int64)
    return Grid(grid.time[idx], grid.alpha[idx], grid.sigma[idx], grid.prior_scale)


def _check_images(x, what="the input"):
    if x.ndim != 4:
        raise ValueError(f"{what} must be images [B, H, W, C], got shape {tuple(x.shape)}")


# --------------------------------------------------------------------------- SDEdit

def sdedit_start(num_steps: int, strength: float) -> int:
    """The level SDEdit starts from: ``N - floor(strength N)`` (diffusers' ``img2img``: the last
    ``floor(strength N)`` steps run). ``ValueError`` unless ``0 <= strength <= 1``."""
    if isinstance(strength, bool) or not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"strength must be between 0 (the input) and 1 (a new sample), got {strength!r}")
    return int(num_steps) - int(float(strength) * int(num_steps))


def sdedit(make_sampler, grid: Grid, denoise_fn, x, key: jax.Array, strength: float):
    """SDEdit of images ``x [B, H, W, C]`` at ``strength``: see the module docstring.

    Args:
      make_sampler: ``make_sampler(grid) -> Sampler`` (e.g. ``functools.partial(sampler_registry.sampler_on_grid,
        family, 'ddim')``): the sampler is built over the part of ``grid`` that SDEdit runs.
      grid: the full grid (:func:`grid_and_sampler`).
      denoise_fn: the network ``denoise_fn(x_in, t_in)``.
      x: the images to edit, in the model's value range.
      key: see the module docstring.
      strength: 0..1.
    """
    _check_images(x)
    start = sdedit_start(grid.num_steps, strength)
    if start == grid.num_steps:
        return x
    sampler = make_sampler(sub_grid(grid, np.arange(start, grid.num_steps + 1)))
    if start == 0:
        x_start = prior_noise(key, x.shape, sampler.prior_scale)
    else:
        z = jax.random.normal(jax.random.fold_in(key, 0), x.shape, jnp.float32)
        x_start = float(grid.alpha[start]) * x + float(grid.sigma[start]) * z
    return run_sampler(sampler, denoise_fn, x_start, jax.random.fold_in(key, 1)).samples


# --------------------------------------------------------------------------- RePaint

def repaint_levels(num_steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> np.ndarray:
    """The levels RePaint visits, from 0 to ``num_steps``, each next to the one before (RePaint's
    ``get_schedule_jump``: ``jump_n_sample - 1`` jumps of ``jump_length`` levels back up at every
    ``jump_length``-th step; ``jump_n_sample = 1`` is plain replacement)."""
    n, j, r = int(num_steps), int(jump_length), int(jump_n_sample)
    if j < 1 or r < 1:
        raise ValueError(f"jump_length ({jump_length}) and jump_n_sample ({jump_n_sample}) must be >= 1")
    jumps = {t: r - 1 for t in range(0, n - j, j)}
    t, times = n, []
    while t >= 1:
        t -= 1
        times.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(j):
                t += 1
                times.append(t)
    return np.array([n - 1 - t for t in times] + [n], np.int64)


def is_one_step(sampler: Sampler) -> bool:
    """Whether ``sampler`` carries no state between steps (any step can follow any other)."""
    state = jax.eval_shape(sampler.init_state, jax.ShapeDtypeStruct((1, 1, 1, 1), jnp.float32))
    return not jax.tree.leaves(state)


def repaint(sampler: Sampler, grid: Grid, denoise_fn, x, known, key: jax.Array, *, jump_length: int = 10,
            jump_n_sample: int = 10):
    """RePaint inpainting of images ``x`` where ``known`` (``[H, W, 1 or C]`` or ``[B, H, W, 1 or C]``,
    1 = keep the input's pixel, 0 = fill it) with ``sampler`` over ``grid``; see the module docstring.
    The sampler's state (DPM-Solver++'s previous ``x0``) is carried from step to step; resampling
    (``jump_n_sample > 1``) goes back up the levels and needs a sampler without such state. Returns
    the inpainted images; the known pixels equal the input's."""
    _check_images(x)
    if jump_n_sample > 1 and not is_one_step(sampler):
        raise ValueError("RePaint's resampling jumps need a sampler without multistep state (ddpm, ddim, euler, "
                         "euler_ancestral, heun, midpoint); set jump_n_sample=1 to use a dpm_solver++ one")
    levels = repaint_levels(grid.num_steps, jump_length, jump_n_sample)
    frm, to = levels[:-1], levels[1:]
    a, s = grid.alpha, grid.sigma
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(to < frm, a[to] / a[frm], 0.0)  # never up from level 0
    up_std = np.sqrt(np.maximum(np.where(to < frm, s[to] ** 2 - ratio ** 2 * s[frm] ** 2, 0.0), 0.0))
    down = jnp.asarray(to > frm)
    frm_i, ratio, up_std = jnp.asarray(frm, jnp.int32), _f32(ratio), _f32(up_std)
    known_alpha, known_sigma = _f32(a[to]), _f32(s[to])
    m = jnp.asarray(known, jnp.float32)
    step_key = jax.random.fold_in(key, 1)

    def body(carry, move):
        x_t, state = carry
        k = jax.random.fold_in(step_key, move)
        z = jax.random.normal(jax.random.fold_in(k, 0), x_t.shape, jnp.float32)

        def denoise(x_t, state):
            x_next, _, state = sampler.step(denoise_fn, x_t, frm_i[move], jax.random.fold_in(k, 1), state)
            x_known = known_alpha[move] * x + known_sigma[move] * z
            return m * x_known + (1.0 - m) * x_next, state

        def renoise(x_t, state):
            return ratio[move] * x_t + up_std[move] * z, state

        return jax.lax.cond(down[move], denoise, renoise, x_t, state), None

    x_T = prior_noise(key, x.shape, sampler.prior_scale)
    return jax.lax.scan(body, (x_T, sampler.init_state(x_T)), jnp.arange(len(frm)))[0][0]


# --------------------------------------------------------------------------- inversion and interpolation

def inversion_levels(family: Family, grid: Grid) -> np.ndarray:
    """The levels DDIM inversion climbs, from the data's level down to 0: ``N - 1, ..., 0`` (the
    network is not defined at ``sigma = 0``), or ``N, ..., 0`` for flow (defined at ``t = 0``)."""
    first = grid.num_steps if family.ode_space == "t" else grid.num_steps - 1
    if first < 1:
        raise ValueError("DDIM inversion needs at least 2 sampler steps (num_steps >= 2)")
    return np.arange(first, -1, -1)


def invert(family: Family, grid: Grid, denoise_fn, x):
    """DDIM inversion of images ``x`` to the noise ``x_T`` at level 0 of ``grid`` (module docstring).
    ``reconstruct(family, grid, denoise_fn, invert(...))`` gives ``x`` back up to the solver's error."""
    _check_images(x)
    levels = inversion_levels(family, grid)
    sampler = grid_samplers.euler_ancestral_sampler(family, sub_grid(grid, levels), eta=0.0, clip_x0=False)
    return run_sampler(sampler, denoise_fn, x, jax.random.PRNGKey(0)).samples  # deterministic: the key is unused


def reconstruct(family: Family, grid: Grid, denoise_fn, x_T):
    """Euler from level 0 of ``grid`` down to the level :func:`invert` started from."""
    levels = inversion_levels(family, grid)[::-1]
    sampler = grid_samplers.euler_ancestral_sampler(family, sub_grid(grid, levels), eta=0.0, clip_x0=False)
    return run_sampler(sampler, denoise_fn, x_T, jax.random.PRNGKey(0)).samples


def slerp(z0, z1, u):
    """Spherical interpolation of ``z0``, ``z1`` ``[B, ...]`` at fractions ``u`` (scalar or ``[B]``),
    per row; linear where the rows are (anti)parallel to float precision."""
    z0, z1 = jnp.asarray(z0), jnp.asarray(z1)
    flat0, flat1 = z0.reshape(z0.shape[0], -1), z1.reshape(z1.shape[0], -1)
    cos = jnp.sum(flat0 * flat1, -1) / (jnp.linalg.norm(flat0, axis=-1) * jnp.linalg.norm(flat1, axis=-1))
    theta = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
    u = jnp.broadcast_to(jnp.asarray(u, jnp.float32), theta.shape)
    sin = jnp.sin(theta)
    parallel = sin < 1e-6
    safe = jnp.where(parallel, 1.0, sin)
    w0 = jnp.where(parallel, 1.0 - u, jnp.sin((1.0 - u) * theta) / safe)
    w1 = jnp.where(parallel, u, jnp.sin(u * theta) / safe)
    shape = (-1,) + (1,) * (z0.ndim - 1)
    return w0.reshape(shape) * z0 + w1.reshape(shape) * z1


def interpolation_path(z0, z1, num_points: int):
    """``num_points`` noises from ``z0`` to ``z1`` ``[P, ...]`` (both ends included) along :func:`slerp`:
    returns ``[num_points * P, ...]``, point-major (all pairs at ``u = 0``, then the next ``u``)."""
    if num_points < 2:
        raise ValueError(f"an interpolation needs at least 2 points, got {num_points}")
    u = np.linspace(0.0, 1.0, int(num_points))
    return jnp.concatenate([slerp(z0, z1, float(v)) for v in u])

