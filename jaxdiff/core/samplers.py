"""The sampler protocol, the discrete DDPM chain's own samplers, the scan that runs any sampler, and
classifier-free guidance.

A sampler is a :class:`Sampler`: the times ``t_0 > t_1 > ... > t_{S-1}`` of its steps (table indices
for the ddpm family, the family's continuous time otherwise) and a *step function*

    ``step(net, x, i, key, state) -> (x_next, x0_hat, state)``

that takes the (guided) network ``net(x_in, t_in)``, the current ``x`` at scan position ``i``, a key
and a carried pytree ``state`` (``()`` for one-step samplers; multistep solvers keep their previous
``x0``), evaluates the network as often as it needs, and steps to position ``i + 1`` (after the last
position, to the end of the chain). Every per-step coefficient is computed once in float64 NumPy and
indexed by ``i`` inside the scan. :func:`run_sampler` scans any sampler; a new sampler is one function
that returns a :class:`Sampler`. The samplers of every family (Euler, Heun, DPM-Solver++ ...) are in
:mod:`jaxdiff.core.solvers`; :func:`jaxdiff.core.solvers.make_sampler` builds any of them by name.

Keys: position ``i`` of the scan draws its noise from ``fold_in(key, i)``; chunk ``c`` of a large
request uses ``fold_in(key, c)``; nothing falls back to a fixed key.

The discrete chain's samplers (the step from abar ``a = abar_t`` to ``a' = abar_{t'}``):
  ddpm           ancestral on the (re)spaced chain: ``beta' = 1 - a / a'``,
                 ``x' = mu~(x0_hat, x_t) + sigma z``, sigma^2 = ``beta' (1 - a') / (1 - a)`` (fixed_small)
                 or ``beta'`` (fixed_large); with all T steps this is DDPM, otherwise improved-diffusion's
                 respacing (recomputed betas over the subsequence).
  ddim           ``x' = sqrt(a') x0_hat + sqrt(1 - a' - sigma^2) eps_hat + sigma z``,
                 ``sigma = eta sqrt((1 - a') / (1 - a)) sqrt(1 - a / a')``; no noise on the last step.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.core import diffusion
from jaxdiff.core.schedules import DiffusionTables

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]
SPACINGS = ("leading", "trailing", "linspace", "uniform", "quad", "logsnr")


class SampleOutput(NamedTuple):
    """Final samples ``[B, H, W, C]`` and, if asked for, the trajectory: the input ``x_t`` of every
    k-th step with the ``x0`` predicted from it (each ``[num_frames, n, H, W, C]`` for the first ``n``
    samples; first frame the pure noise, last frame the final sample twice), and the table timesteps
    ``t`` of the frames (-1 for the end).
    ``labels`` are the class labels sampled for (``None`` when unconditional); ``metadata`` describes
    the sampler (see :func:`jaxdiff.core.generation.generate`); ``noise`` is each sample's start
    ``x_T`` when asked for (``generate(..., keep_noise=True)``)."""

    samples: jax.Array
    trajectory_xt: jax.Array | None = None
    trajectory_x0: jax.Array | None = None
    trajectory_t: np.ndarray | None = None
    labels: np.ndarray | None = None
    metadata: dict | None = None
    noise: np.ndarray | None = None


def _no_state(x_T):
    del x_T
    return ()


class Sampler(NamedTuple):
    """``timesteps``: the descending times of the steps ``[S]`` (table indices for the ddpm family);
    ``step``: see the module docstring; ``init_state(x_T)`` builds the carried state (default ``()``);
    ``x_T = prior_scale * N(0, I)``; ``num_evaluations``: network calls per sample (0: one per step);
    ``sigma_to_input(sigma / alpha)``: the network time at a noise level (to place a guidance interval)."""

    timesteps: np.ndarray
    step: Callable[..., tuple]
    init_state: Callable[[jax.Array], Any] = _no_state
    prior_scale: float = 1.0
    num_evaluations: int = 0
    sigma_to_input: Callable | None = None

    @property
    def evaluations(self) -> int:
        """Network evaluations per sample (NFE, before guidance doubles the batch)."""
        return int(self.num_evaluations or len(self.timesteps))


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
                               Always starts at T - 1; with zero terminal SNR (``lambda_{T-1} = -inf``)
                               the points run from ``lambda_{T-2}`` and the first stays at T - 1.
    ``leading``, ``uniform`` and ``quad`` start below ``T - 1`` by their definitions (at ``(S - 1) T // S``
    and ``0.8 T``): with few steps the sampler then starts from pure noise at a level that still holds
    signal (``trailing``, ``linspace`` and ``logsnr`` start at ``T - 1``).
    Raises ``ValueError`` for ``S`` outside ``[1, T]``, an unknown spacing, a spacing that repeats a
    step (``quad`` with many steps over a short schedule), or a single step at ``t = 0``.
    """
    T, S = int(num_timesteps), int(num_steps)
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    if not 1 <= S <= T:
        raise ValueError(f"num_steps={S} must be between 1 and num_timesteps={T}")
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
            raise ValueError("spacing='logsnr' needs the schedule's alphas_cumprod")
        with np.errstate(divide="ignore"):
            lam = 0.5 * np.log(alphas_cumprod / (1.0 - alphas_cumprod))  # decreasing in t; -inf at SNR 0
        start = lam[T - 1] if np.isfinite(lam[T - 1]) or T == 1 else lam[T - 2]
        grid = np.linspace(start, lam[0], S)
        nearest = np.abs(lam[None, :] - grid[:, None]).argmin(axis=1)  # descending, may repeat
        seq = np.empty(S, np.int64)
        for k in range(S):  # start at T - 1, keep strictly decreasing, leave room for the remaining steps
            seq[k] = max(min(nearest[k], seq[k - 1] - 1), S - 1 - k) if k else T - 1
    seq = np.sort(np.asarray(seq, np.int64))[::-1]
    if S == 1 and T > 1 and seq[0] == 0:
        raise ValueError(f"spacing={spacing!r} with num_steps=1 evaluates only t=0, the data end of the "
                         "chain, from pure noise; use trailing or logsnr (they start at T - 1)")
    if len(np.unique(seq)) != len(seq) or seq[0] >= T or seq[-1] < 0:
        raise ValueError(f"spacing={spacing!r} with num_steps={S} over {T} timesteps repeats "
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
        raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(diffusion.VARIANCES)}")
    timesteps = _check_timesteps(timesteps, tables.num_timesteps)
    a, a_next = _abar_pairs(tables, timesteps, 1.0)
    beta = 1.0 - a / a_next
    var = beta * (1.0 - a_next) / (1.0 - a) if variance == "fixed_small" else beta.copy()
    var[-1] = 0.0  # no noise on the last step
    coef_x0 = _f32(beta * np.sqrt(a_next) / (1.0 - a))
    coef_xt = _f32((1.0 - a_next) * np.sqrt(1.0 - beta) / (1.0 - a))
    std = _f32(np.sqrt(var))
    ts = jnp.asarray(timesteps)

    def step(net, x, i, key, state):
        t = jnp.full((x.shape[0],), ts[i], jnp.int32)
        x0, _ = diffusion.x0_eps_from_output(tables, x, t, net(x, t), target, clip_x0)
        noise = jax.random.normal(key, x.shape, x.dtype)
        return coef_x0[i] * x0 + coef_xt[i] * x + std[i] * noise, x0, state

    return Sampler(timesteps, step, sigma_to_input=functools.partial(diffusion.table_index_at, tables))


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
        raise ValueError(f"eta must be non-negative, got {eta}")
    timesteps = _check_timesteps(timesteps, tables.num_timesteps)
    a, a_next = _abar_pairs(tables, timesteps, final_alpha_cumprod(tables, set_alpha_to_one))
    sigma = eta * np.sqrt((1.0 - a_next) / (1.0 - a)) * np.sqrt(np.maximum(1.0 - a / a_next, 0.0))
    sigma[-1] = 0.0
    c_x0 = _f32(np.sqrt(a_next))
    c_eps = _f32(np.sqrt(np.maximum(1.0 - a_next - sigma ** 2, 0.0)))
    c_z = _f32(sigma)
    ts = jnp.asarray(timesteps)

    def step(net, x, i, key, state):
        t = jnp.full((x.shape[0],), ts[i], jnp.int32)
        x0, eps = diffusion.x0_eps_from_output(tables, x, t, net(x, t), target, clip_x0)
        noise = jax.random.normal(key, x.shape, x.dtype)
        return c_x0[i] * x0 + c_eps[i] * eps + c_z[i] * noise, x0, state

    return Sampler(timesteps, step, sigma_to_input=functools.partial(diffusion.table_index_at, tables))


# --------------------------------------------------------------------------- the scan

def trajectory_positions(num_steps: int, trajectory_every: int) -> np.ndarray:
    """Scan positions whose ``(x_t, x0_hat)`` a trajectory keeps: ``0, k, 2k, ...`` (empty for k = 0)."""
    return np.arange(0, num_steps, trajectory_every) if trajectory_every else np.zeros(0, np.int64)


class SamplerScan(NamedTuple):
    """:func:`run_sampler` in pieces, for callers that stop between them (a signal during a long
    sampler): ``init(x_T) -> carry``, ``run(carry, i) -> carry`` scans the positions ``i`` (int
    ``[L]``, consecutive), ``output(carry) -> SampleOutput``. Running all positions in any number of
    pieces computes what one scan computes."""

    init: Callable
    run: Callable
    output: Callable


def sampler_scan(sampler: Sampler, denoise_fn: DenoiseFn, key: jax.Array, trajectory_every: int = 0,
                 trajectory_size: int | None = None) -> SamplerScan:
    """The pieces of :func:`run_sampler` (same arguments but ``x_T``, which ``init`` takes)."""
    timesteps = np.asarray(sampler.timesteps)
    keep = trajectory_positions(len(timesteps), trajectory_every)

    def init(x_T):
        n = x_T.shape[0] if trajectory_size is None else min(trajectory_size, x_T.shape[0])
        traj0 = ((jnp.zeros((len(keep), n) + x_T.shape[1:], x_T.dtype),) * 2) if len(keep) else ()
        return x_T, sampler.init_state(x_T), traj0

    def record(traj, i, x, x0):
        j, n = i // trajectory_every, traj[0].shape[1]
        return traj[0].at[j].set(x[:n]), traj[1].at[j].set(x0[:n].astype(traj[1].dtype))

    def body(carry, i):
        x, state, traj = carry
        x_next, x0, state = sampler.step(denoise_fn, x, i, jax.random.fold_in(key, i), state)
        if len(keep):
            traj = jax.lax.cond(i % trajectory_every == 0, lambda tr: record(tr, i, x, x0),
                                lambda tr: tr, traj)
        return (x_next, state, traj), None

    def run(carry, i):
        return jax.lax.scan(body, carry, i)[0]

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
    """Scan ``sampler.step`` over its positions starting from ``x_T``.

    Position ``i`` steps with key ``fold_in(key, i)``, calling ``denoise_fn`` as often as the sampler
    needs. With ``trajectory_every = k > 0`` the ``(x_t, x0_hat)`` of positions ``0, k, 2k, ...`` of the
    first ``trajectory_size`` samples (default all) are written into a buffer carried by the scan
    (memory ``frames x size``, never ``steps x batch``), followed by the final sample as the last frame.
    :func:`sampler_scan` gives the same computation in pieces.

    Args:
      sampler: a :class:`Sampler`.
      denoise_fn: the network ``denoise_fn(x_in, t_in [B]) -> output`` (e.g. :func:`guided_denoise_fn`).
      x_T: the start, ``sampler.prior_scale * N(0, I)`` of shape ``[B, H, W, C]``.
      key: the sampler's noise key.
      trajectory_every, trajectory_size: see above (0 = no trajectory).

    Returns:
      :class:`SampleOutput` (``samples`` and, if asked for, the trajectory).
    """
    scan = sampler_scan(sampler, denoise_fn, key, trajectory_every, trajectory_size)
    return scan.output(scan.run(scan.init(x_T), jnp.arange(len(sampler.timesteps))))


# --------------------------------------------------------------------------- conditioning

def check_denoiser_output(out: jax.Array, x: jax.Array) -> jax.Array:
    """``out``, the network's output for input ``x``, if it has the shape of ``x``; else ``ValueError``.

    Shapes are static, so under ``jit`` this runs once, when the program is traced, and costs nothing
    when it runs.
    """
    if jnp.shape(out) == jnp.shape(x):
        return out
    if jnp.shape(out)[:-1] == jnp.shape(x)[:-1]:
        c_out, c_in = jnp.shape(out)[-1], jnp.shape(x)[-1]
        raise ValueError(f"the network outputs {c_out} channel{'s' * (c_out != 1)} for images of {c_in} "
                         f"channel{'s' * (c_in != 1)}: build it with out_ch={c_in}")
    raise ValueError(f"the network maps inputs of shape {tuple(jnp.shape(x))} to outputs of shape "
                     f"{tuple(jnp.shape(out))}: a denoiser's output has the shape of its input")


def check_network_classes(apply_fn, num_classes: int) -> None:
    """``ValueError`` if ``apply_fn`` says how many classes its network has (the attribute ``num_classes``
    of :func:`jaxdiff.models.denoiser_apply`'s apply functions) and that is not ``num_classes``; an apply
    function without the attribute is not checked."""
    own = getattr(apply_fn, "num_classes", None)
    if own is None or int(own) == int(num_classes):
        return
    built = f"a class embedding of {own + 1} rows, the last the null label" if own else "no class embedding"
    raise ValueError(f"num_classes={num_classes}, but the network was built with num_classes={own} ({built}): "
                     f"pass num_classes={own}")


def guided_denoise_fn(apply_fn, labels: jax.Array | None, guidance_scale: float,
                      null_label: int | None, interval: tuple[float, float] | None = None) -> DenoiseFn:
    """Classifier-free guidance: ``out = out_uncond + w (out_cond - out_uncond)``.

    ``apply_fn(x, t, y)`` is the network; ``null_label=None`` means an unconditional model (called
    with ``y=None``). ``labels=None`` samples unconditionally (null label); ``w = 1`` is plain
    conditional sampling, ``w = 0`` unconditional. Both branches run in one batched call of size ``2B``.
    With ``interval = (lo, hi)`` in network time units, guidance applies only where
    ``lo < t <= hi`` (Kynkäänniemi et al. 2024) and the other steps run the conditional branch alone.
    A network output of another shape than its input is refused when the sampler is traced
    (:func:`check_denoiser_output`).
    """
    def net(x, t, y):
        return check_denoiser_output(apply_fn(x, t, y), x)

    if null_label is None:
        if labels is not None:
            raise ValueError("labels given, but null_label=None: a network without classes has no class "
                             "embedding to take them")
        return lambda x, t: net(x, t, None)
    if labels is None:
        return lambda x, t: net(x, t, jnp.full((x.shape[0],), null_label, jnp.int32))
    if guidance_scale == 1.0:
        return lambda x, t: net(x, t, labels)

    def guided(x, t):
        y = jnp.concatenate([labels, jnp.full_like(labels, null_label)])
        out = net(jnp.concatenate([x, x]), jnp.concatenate([t, t]), y)
        cond, uncond = jnp.split(out, 2)
        return uncond + guidance_scale * (cond - uncond)

    if interval is None:
        return guided
    lo, hi = (float(v) for v in interval)

    def fn(x, t):
        active = (t[0] > lo) & (t[0] <= hi)
        return jax.lax.cond(active, guided, lambda xx, tt: net(xx, tt, labels), x, t)

    return fn


def ddpm_sample(denoise_fn: DenoiseFn, tables: DiffusionTables, x_T: jax.Array, key: jax.Array,
                target: str = "eps", variance: str = "fixed_small", clip_x0: bool = True,
                trajectory_every: int = 0) -> SampleOutput:
    """DDPM ancestral sampling over all T steps, from ``x_T`` (usually ``N(0, I)``)."""
    timesteps = np.arange(tables.num_timesteps - 1, -1, -1)
    return run_sampler(ddpm_sampler(tables, timesteps, target, variance, clip_x0), denoise_fn,
                       x_T, key, trajectory_every)
