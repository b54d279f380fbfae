"""Reverse-process samplers, each one compiled ``jax.lax.scan`` over a descending timestep sequence.

A sampler is a :class:`Sampler`: the descending table timesteps ``t_0 > t_1 > ... > t_{S-1}`` at which
the network is evaluated, and a *step function*

    ``step(x_t, i, t, out, key, state) -> (x_next, x0_hat, state)``

that takes the scan position ``i``, its table index ``t = timesteps[i]``, the network output ``out`` at
``(x_t, t)`` (an eps, x0 or v prediction), a key and a carried pytree ``state`` (``()`` for one-step
samplers; DPM-Solver++ keeps its previous ``x0``). The step goes from ``t_i`` to ``t_{i+1}``, and after
the last position to the end of the chain (``abar = 1``, or ``abar_0`` for DDIM/DPM-Solver++ with
``set_alpha_to_one=False``). Every per-step coefficient is computed once in float64 NumPy from the
schedule tables and the sequence and indexed by ``i`` inside the scan. :func:`run_sampler` scans any
sampler; a new sampler is one function that returns a :class:`Sampler`.

The network enters only through ``denoise_fn(x, t) -> output``, so classifier-free guidance
(:func:`guided_denoise_fn`) composes in front of every sampler.

Keys: position ``i`` of the scan draws its noise from ``fold_in(key, i)``; chunk ``c`` of a large
request uses ``fold_in(key, c)``; nothing falls back to a fixed key.

Samplers (the step from abar ``a = abar_t`` to ``a' = abar_{t'}``; ``x0_hat, eps_hat`` from the output):
  ddpm           ancestral on the (re)spaced chain: ``beta' = 1 - a / a'``,
                 ``x' = mu~(x0_hat, x_t) + sigma z``, sigma^2 = ``beta' (1 - a') / (1 - a)`` (fixed_small)
                 or ``beta'`` (fixed_large); with all T steps this is DDPM, otherwise improved-diffusion's
                 respacing (recomputed betas over the subsequence).
  ddim           ``x' = sqrt(a') x0_hat + sqrt(1 - a' - sigma^2) eps_hat + sigma z``,
                 ``sigma = eta sqrt((1 - a') / (1 - a)) sqrt(1 - a / a')``; no noise on the last step.
  dpm_solver++   DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) in ``lambda = log(sqrt(a) / sqrt(1 - a))``:
                 ``x' = (s'/s) x_t - alpha' expm1(-h) D``, ``h = lambda' - lambda``,
                 ``D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}``, ``r = h_{i-1} / h_i``; first order
                 (``D = x0_i``) on the first step and on a last step that ends at ``sigma' = 0``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.core import diffusion
from jaxdiff.core.schedules import DiffusionTables

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]
SAMPLERS = ("ddpm", "ddim", "dpm_solver++")
SPACINGS = ("leading", "trailing", "linspace", "uniform", "quad", "logsnr")


class SampleOutput(NamedTuple):
    """Final samples ``[B, H, W, C]`` and, if asked for, the trajectory: the input ``x_t`` of every
    k-th step with the ``x0`` predicted from it (each ``[num_frames, n, H, W, C]`` for the first ``n``
    samples; first frame the pure noise, last frame the final sample twice), and the table timesteps
    ``t`` of the frames (-1 for the end).
    ``labels`` are the class labels sampled for (``None`` when unconditional); ``metadata`` describes
    the sampler (see :func:`sample_from_config`)."""

    samples: jax.Array
    trajectory_xt: jax.Array | None = None
    trajectory_x0: jax.Array | None = None
    trajectory_t: np.ndarray | None = None
    labels: np.ndarray | None = None
    metadata: dict | None = None


def _no_state(x_T):
    del x_T
    return ()


class Sampler(NamedTuple):
    """``timesteps``: descending int table indices ``[S]`` (one network call each); ``step``: see the
    module docstring; ``init_state(x_T)`` builds the carried state (default ``()``)."""

    timesteps: np.ndarray
    step: Callable[..., tuple]
    init_state: Callable[[jax.Array], Any] = _no_state


# --------------------------------------------------------------------------- timestep sequences

def spaced_timesteps(num_timesteps: int, num_steps: int, spacing: str = "leading",
                     alphas_cumprod: np.ndarray | None = None) -> np.ndarray:
    """The descending table indices a sampler with ``num_steps`` visits out of ``T = num_timesteps``.

    ``leading``  (diffusers)   ``arange(S) * (T // S)``
    ``trailing`` (diffusers)   ``round(T - arange(S) * T / S) - 1``   (always starts at T - 1)
    ``linspace`` (diffusers)   ``round(linspace(0, T - 1, S))``      (improved-diffusion's respacing)
    ``uniform``  (DDIM paper)  ``range(0, T, T // S)``               (more than S steps if S does not divide T)
    ``quad``     (DDIM paper)  ``int(linspace(0, sqrt(0.8 T), S) ** 2)``
    ``logsnr``   (DPM-Solver)  the table index nearest (in log-SNR) to ``S`` points uniform in
                               ``lambda = log(sqrt(abar / (1 - abar)))`` from ``lambda_{T-1}`` to ``lambda_0``;
                               needs ``alphas_cumprod``; a repeat moves one index down. DPM-Solver's
                               recommendation, and far better than the others for it at 10-20 steps.
    Raises ``ValueError`` for ``S`` outside ``[1, T]``, an unknown spacing, or a spacing that repeats a
    step (``quad`` with many steps over a short schedule).
    """
    T, S = int(num_timesteps), int(num_steps)
    if spacing not in SPACINGS:
        raise ValueError(f"unknown sampling.spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    if not 1 <= S <= T:
        raise ValueError(f"sampling.num_steps={S} must be between 1 and diffusion.num_timesteps={T}")
    if spacing == "leading":
        seq = np.arange(S) * (T // S)
    elif spacing == "trailing":
        seq = np.round(T - np.arange(S) * (T / S)).astype(np.int64) - 1
    elif spacing == "linspace":
        seq = np.round(np.linspace(0, T - 1, S)).astype(np.int64)
    elif spacing == "uniform":
        seq = np.arange(0, T, T // S)
    elif spacing == "quad":
        seq = (np.linspace(0, np.sqrt(0.8 * T), S) ** 2).astype(np.int64)
    else:  # logsnr
        if alphas_cumprod is None:
            raise ValueError("sampling.spacing='logsnr' needs the schedule's alphas_cumprod")
        lam = 0.5 * np.log(alphas_cumprod / (1.0 - alphas_cumprod))  # decreasing in t
        grid = np.linspace(lam[T - 1], lam[0], S)
        nearest = np.abs(lam[None, :] - grid[:, None]).argmin(axis=1)  # descending, may repeat
        seq = np.empty(S, np.int64)
        for k in range(S):  # keep strictly decreasing and leave room for the remaining steps
            seq[k] = max(min(nearest[k], seq[k - 1] - 1 if k else T - 1), S - 1 - k)
    seq = np.sort(np.asarray(seq, np.int64))[::-1]
    if len(np.unique(seq)) != len(seq) or seq[0] >= T or seq[-1] < 0:
        raise ValueError(f"sampling.spacing={spacing!r} with num_steps={S} over {T} timesteps repeats "
                         "timesteps; use fewer steps or another spacing")
    return seq.astype(np.int32)


def _abar_pairs(tables: DiffusionTables, timesteps: np.ndarray, final_abar: float):
    """float64 ``(abar_t, abar_next)`` per position; ``abar_next`` of the last position is ``final_abar``."""
    abar = tables.alphas_cumprod[timesteps]
    return abar, np.append(abar[1:], final_abar)


def final_alpha_cumprod(tables: DiffusionTables, set_alpha_to_one: bool) -> float:
    """The ``abar`` the last step goes to: 1 (``set_alpha_to_one``) or ``abar_0`` (diffusers' option)."""
    return 1.0 if set_alpha_to_one else float(tables.alphas_cumprod[0])


def _f32(a) -> jax.Array:
    return jnp.asarray(np.asarray(a, np.float64), jnp.float32)


def _check_timesteps(timesteps, num_timesteps: int) -> np.ndarray:
    timesteps = np.asarray(timesteps, np.int32)
    if (timesteps.ndim != 1 or len(timesteps) == 0 or np.any(np.diff(timesteps) >= 0)
            or timesteps[0] >= num_timesteps or timesteps[-1] < 0):
        raise ValueError(f"sampler timesteps must be a non-empty strictly decreasing sequence in [0, {num_timesteps})")
    return timesteps


# --------------------------------------------------------------------------- samplers

def ddpm_sampler(tables: DiffusionTables, timesteps, target: str = "eps",
                 variance: str = "fixed_small", clip_x0: bool = True) -> Sampler:
    """Ancestral sampling on the chain respaced to ``timesteps`` (all T: plain DDPM).

    With ``a = abar_t``, ``a' = abar`` of the next visited step (1 after the last) and
    ``beta' = 1 - a / a'`` (improved-diffusion's recomputed betas):
    ``x' = beta' sqrt(a') / (1 - a) x0_hat + (1 - a') sqrt(1 - beta') / (1 - a) x_t + sigma z`` with
    ``sigma^2 = beta' (1 - a') / (1 - a)`` (fixed_small) or ``beta'`` (fixed_large); no noise on the last step.
    """
    if variance not in diffusion.VARIANCES:
        raise ValueError(f"unknown sampling.variance {variance!r}; choose one of {', '.join(diffusion.VARIANCES)}")
    timesteps = _check_timesteps(timesteps, tables.num_timesteps)
    a, a_next = _abar_pairs(tables, timesteps, 1.0)
    beta = 1.0 - a / a_next
    var = beta * (1.0 - a_next) / (1.0 - a) if variance == "fixed_small" else beta.copy()
    var[-1] = 0.0  # no noise on the last step
    coef_x0 = _f32(beta * np.sqrt(a_next) / (1.0 - a))
    coef_xt = _f32((1.0 - a_next) * np.sqrt(1.0 - beta) / (1.0 - a))
    std = _f32(np.sqrt(var))

    def step(x, i, t, out, key, state):
        x0, _ = diffusion.x0_eps_from_output(tables, x, jnp.full((x.shape[0],), t), out, target, clip_x0)
        noise = jax.random.normal(key, x.shape, x.dtype)
        return coef_x0[i] * x0 + coef_xt[i] * x + std[i] * noise, x0, state

    return Sampler(timesteps, step)


def ddim_sampler(tables: DiffusionTables, timesteps, target: str = "eps", eta: float = 0.0,
                 clip_x0: bool = True, set_alpha_to_one: bool = True) -> Sampler:
    """DDIM (Song et al. 2021, eq. 12) over ``timesteps``; the previous step is the next entry of the
    sequence itself (not ``t - T // S``).

    ``x' = sqrt(a') x0_hat + sqrt(1 - a' - sigma^2) eps_hat + sigma z``,
    ``sigma = eta sqrt((1 - a') / (1 - a)) sqrt(1 - a / a')``; ``eps_hat`` is recomputed from the
    clipped ``x0_hat`` when ``clip_x0``; ``sigma = 0`` on the last step. ``eta = 0`` is deterministic in
    ``x_T``; ``eta = 1`` over all T steps is DDPM with fixed-small variance. For ``eta > 1`` the
    direction coefficient is clamped at 0.
    """
    if not eta >= 0:
        raise ValueError(f"sampling.eta must be non-negative, got {eta}")
    timesteps = _check_timesteps(timesteps, tables.num_timesteps)
    a, a_next = _abar_pairs(tables, timesteps, final_alpha_cumprod(tables, set_alpha_to_one))
    sigma = eta * np.sqrt((1.0 - a_next) / (1.0 - a)) * np.sqrt(np.maximum(1.0 - a / a_next, 0.0))
    sigma[-1] = 0.0
    c_x0 = _f32(np.sqrt(a_next))
    c_eps = _f32(np.sqrt(np.maximum(1.0 - a_next - sigma ** 2, 0.0)))
    c_z = _f32(sigma)

    def step(x, i, t, out, key, state):
        x0, eps = diffusion.x0_eps_from_output(tables, x, jnp.full((x.shape[0],), t), out, target, clip_x0)
        noise = jax.random.normal(key, x.shape, x.dtype)
        return c_x0[i] * x0 + c_eps[i] * eps + c_z[i] * noise, x0, state

    return Sampler(timesteps, step)


def dpm_solver_pp_sampler(tables: DiffusionTables, timesteps, target: str = "eps", clip_x0: bool = True,
                          set_alpha_to_one: bool = True) -> Sampler:
    """DPM-Solver++(2M), the multistep second-order solver of the diffusion ODE in data prediction.

    With ``alpha = sqrt(abar)``, ``s = sqrt(1 - abar)``, ``lambda = log(alpha / s)``, ``h_i = lambda_{i+1} - lambda_i``:
    ``x_{i+1} = (s_{i+1} / s_i) x_i - alpha_{i+1} expm1(-h_i) D_i`` with
    ``D_i = (1 + 1 / (2 r_i)) x0_i - 1 / (2 r_i) x0_{i-1}``, ``r_i = h_{i-1} / h_i``; ``D_i = x0_i`` (first
    order, i.e. DDIM with eta=0) on the first step and on a last step ending at ``s = 0``.
    One network evaluation per step. The state carries the previous ``x0`` prediction.
    """
    timesteps = _check_timesteps(timesteps, tables.num_timesteps)
    a, a_next = _abar_pairs(tables, timesteps, final_alpha_cumprod(tables, set_alpha_to_one))
    alpha, s, alpha_n, s_n = np.sqrt(a), np.sqrt(1.0 - a), np.sqrt(a_next), np.sqrt(1.0 - a_next)
    with np.errstate(divide="ignore"):
        lam, lam_n = np.log(alpha / s), np.log(alpha_n / s_n)  # lam_n = +inf where s_n = 0
    h = lam_n - lam
    c_x = s_n / s
    c_d = -alpha_n * np.expm1(-h)
    second = np.zeros(len(timesteps), bool)
    second[1:] = np.isfinite(h[1:])
    r = np.ones_like(h)
    r[1:] = np.where(second[1:], h[:-1] / np.where(second[1:], h[1:], 1.0), 1.0)
    w_cur = np.where(second, 1.0 + 0.5 / r, 1.0)
    w_prev = np.where(second, -0.5 / r, 0.0)
    c_x, c_d, w_cur, w_prev = map(_f32, (c_x, c_d, w_cur, w_prev))

    def step(x, i, t, out, key, x0_prev):
        del key
        x0, _ = diffusion.x0_eps_from_output(tables, x, jnp.full((x.shape[0],), t), out, target, clip_x0)
        d = w_cur[i] * x0 + w_prev[i] * x0_prev
        return c_x[i] * x + c_d[i] * d, x0, x0

    return Sampler(timesteps, step, jnp.zeros_like)


def make_sampler(tables: DiffusionTables, name: str, num_steps: int = 0, spacing: str = "leading",
                 target: str = "eps", eta: float = 0.0, variance: str = "fixed_small",
                 clip_x0: bool = True, set_alpha_to_one: bool = True) -> Sampler:
    """The sampler called ``name`` over ``num_steps`` steps chosen by ``spacing``.

    Args:
      tables: the schedule's :class:`~jaxdiff.core.schedules.DiffusionTables`.
      name: one of :data:`SAMPLERS` (``ddpm``, ``ddim``, ``dpm_solver++``).
      num_steps: network evaluations (0 = all T).
      spacing: one of :data:`SPACINGS`, or ``auto`` (:func:`resolve_spacing`).
      target: what the network predicts (``eps``, ``x0``, ``v``).
      eta: DDIM's noise (0 = deterministic).
      variance: DDPM's ``fixed_small`` or ``fixed_large``.
      clip_x0: clip the predicted ``x0`` to [-1, 1] at every step.
      set_alpha_to_one: DDIM / DPM-Solver++: the last step ends at ``abar = 1`` (else ``abar_0``).

    Returns:
      a :class:`Sampler`; :func:`run_sampler` scans it. Raises ``ValueError`` (before anything is
      compiled) on a bad choice.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampling.sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    if target not in diffusion.TARGETS:
        raise ValueError(f"unknown diffusion.target {target!r}; choose one of {', '.join(diffusion.TARGETS)}")
    timesteps = spaced_timesteps(tables.num_timesteps, num_steps or tables.num_timesteps,
                                 resolve_spacing(name, spacing), tables.alphas_cumprod)
    if name == "ddpm":
        return ddpm_sampler(tables, timesteps, target, variance, clip_x0)
    if name == "ddim":
        return ddim_sampler(tables, timesteps, target, eta, clip_x0, set_alpha_to_one)
    return dpm_solver_pp_sampler(tables, timesteps, target, clip_x0, set_alpha_to_one)


# --------------------------------------------------------------------------- the scan

def trajectory_positions(num_steps: int, trajectory_every: int) -> np.ndarray:
    """Scan positions whose ``(x_t, x0_hat)`` a trajectory keeps: ``0, k, 2k, ...`` (empty for k = 0)."""
    return np.arange(0, num_steps, trajectory_every) if trajectory_every else np.zeros(0, np.int64)


class SamplerScan(NamedTuple):
    """:func:`run_sampler` in pieces, for callers that stop between them (a signal during a long
    sampler): ``init(x_T) -> carry``, ``run(carry, i, t) -> carry`` scans the positions ``i`` (int
    ``[L]``, consecutive) with their timesteps ``t``, ``output(carry) -> SampleOutput``. Running all
    positions in any number of pieces computes what one scan computes."""

    init: Callable
    run: Callable
    output: Callable


def sampler_scan(sampler: Sampler, denoise_fn: DenoiseFn, key: jax.Array, trajectory_every: int = 0,
                 trajectory_size: int | None = None) -> SamplerScan:
    """The pieces of :func:`run_sampler` (same arguments but ``x_T``, which ``init`` takes)."""
    timesteps = np.asarray(sampler.timesteps, np.int32)
    keep = trajectory_positions(len(timesteps), trajectory_every)

    def init(x_T):
        n = x_T.shape[0] if trajectory_size is None else min(trajectory_size, x_T.shape[0])
        traj0 = ((jnp.zeros((len(keep), n) + x_T.shape[1:], x_T.dtype),) * 2) if len(keep) else ()
        return x_T, sampler.init_state(x_T), traj0

    def record(traj, i, x, x0):
        j, n = i // trajectory_every, traj[0].shape[1]
        return traj[0].at[j].set(x[:n]), traj[1].at[j].set(x0[:n].astype(traj[1].dtype))

    def body(carry, inputs):
        x, state, traj = carry
        i, t = inputs
        out = denoise_fn(x, jnp.full((x.shape[0],), t, jnp.int32))
        x_next, x0, state = sampler.step(x, i, t, out, jax.random.fold_in(key, i), state)
        if len(keep):
            traj = jax.lax.cond(i % trajectory_every == 0, lambda tr: record(tr, i, x, x0),
                                lambda tr: tr, traj)
        return (x_next, state, traj), None

    def run(carry, i, t):
        return jax.lax.scan(body, carry, (i, t))[0]

    def output(carry):
        final, _, traj = carry
        if not len(keep):
            return SampleOutput(final)
        n = traj[0].shape[1]
        return SampleOutput(final, jnp.concatenate([traj[0], final[None, :n]]),
                            jnp.concatenate([traj[1], final[None, :n]]), np.append(timesteps[keep], -1))

    return SamplerScan(init, run, output)


def run_sampler(sampler: Sampler, denoise_fn: DenoiseFn, x_T: jax.Array, key: jax.Array,
                trajectory_every: int = 0, trajectory_size: int | None = None) -> SampleOutput:
    """Scan ``sampler.step`` over its timesteps starting from ``x_T``; one network call per step.

    Position ``i`` evaluates ``denoise_fn(x, timesteps[i])`` and steps with key ``fold_in(key, i)``.
    With ``trajectory_every = k > 0`` the ``(x_t, x0_hat)`` of positions ``0, k, 2k, ...`` of the first
    ``trajectory_size`` samples (default all) are written into a buffer carried by the scan (memory
    ``frames x size``, never ``steps x batch``), followed by the final sample as the last frame.
    :func:`sampler_scan` gives the same computation in pieces.

    Args:
      sampler: a :class:`Sampler`.
      denoise_fn: ``denoise_fn(x, t int32 [B]) -> network output`` (e.g. :func:`guided_denoise_fn`).
      x_T: the start, usually ``N(0, I)`` of shape ``[B, H, W, C]``.
      key: the sampler's noise key.
      trajectory_every, trajectory_size: see above (0 = no trajectory).

    Returns:
      :class:`SampleOutput` (``samples`` and, if asked for, the trajectory).
    """
    scan = sampler_scan(sampler, denoise_fn, key, trajectory_every, trajectory_size)
    timesteps = np.asarray(sampler.timesteps, np.int32)
    return scan.output(scan.run(scan.init(x_T), jnp.arange(len(timesteps)), jnp.asarray(timesteps)))


# --------------------------------------------------------------------------- conditioning

def guided_denoise_fn(apply_fn, labels: jax.Array | None, guidance_scale: float,
                      null_label: int | None) -> DenoiseFn:
    """Classifier-free guidance: ``out = out_uncond + w (out_cond - out_uncond)``.

    ``apply_fn(x, t, y)`` is the network; ``null_label=None`` means an unconditional model (called
    with ``y=None``). ``labels=None`` samples unconditionally (null label); ``w = 1`` is plain
    conditional sampling, ``w = 0`` unconditional. Both branches run in one batched call of size ``2B``.
    """
    if null_label is None:
        if labels is not None:
            raise ValueError("class labels given for a model trained without classes")
        return lambda x, t: apply_fn(x, t, None)
    if labels is None:
        return lambda x, t: apply_fn(x, t, jnp.full((x.shape[0],), null_label, jnp.int32))
    if guidance_scale == 1.0:
        return lambda x, t: apply_fn(x, t, labels)

    def fn(x, t):
        y = jnp.concatenate([labels, jnp.full_like(labels, null_label)])
        out = apply_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), y)
        cond, uncond = jnp.split(out, 2)
        return uncond + guidance_scale * (cond - uncond)

    return fn


def ddpm_sample(denoise_fn: DenoiseFn, tables: DiffusionTables, x_T: jax.Array, key: jax.Array,
                target: str = "eps", variance: str = "fixed_small", clip_x0: bool = True,
                trajectory_every: int = 0) -> SampleOutput:
    """DDPM ancestral sampling over all T steps, from ``x_T`` (usually ``N(0, I)``)."""
    timesteps = np.arange(tables.num_timesteps - 1, -1, -1)
    return run_sampler(ddpm_sampler(tables, timesteps, target, variance, clip_x0), denoise_fn,
                       x_T, key, trajectory_every)


# --------------------------------------------------------------------------- default spacings

AUTO_SPACING = {"ddpm": "linspace", "ddim": "leading", "dpm_solver++": "logsnr"}


def resolve_spacing(sampler_name: str, spacing: str) -> str:
    """``auto`` -> ``linspace`` for ddpm (improved-diffusion's respacing), ``leading`` for ddim
    (diffusers' default, as in the source documents), ``logsnr`` for dpm_solver++."""
    return AUTO_SPACING.get(sampler_name, "leading") if spacing == "auto" else spacing
