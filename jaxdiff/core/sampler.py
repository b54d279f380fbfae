"""What a sampler is and how any sampler runs: the :class:`Sampler` protocol and the ``lax.scan``.

A sampler is a :class:`Sampler`: the times ``t_0 > t_1 > ... > t_{S-1}`` of its steps (table indices
for the ddpm family, the family's continuous time otherwise) and a *step function*

    ``step(net, x, i, key, state) -> (x_next, x0_hat, state)``

that takes the (guided) network ``net(x_in, t_in)``, the current ``x`` at scan position ``i``, a key
and a carried pytree ``state`` (``()`` for one-step samplers; multistep solvers keep their previous
``x0``), evaluates the network as often as it needs, and steps to position ``i + 1`` (after the last
position, to the end of the chain). Every per-step coefficient is computed once in float64 NumPy and
indexed by ``i`` inside the scan. :func:`run_sampler` scans any sampler; a new sampler is one function
that returns a :class:`Sampler` (the samplers of every family are in :mod:`jaxdiff.core.grid_samplers`, the
discrete chain's own in :mod:`jaxdiff.core.ddpm_chain`; :data:`jaxdiff.core.sampler_registry.SAMPLERS` names them).

Keys: position ``i`` of the scan draws its noise from ``fold_in(key, i)``; chunk ``c`` of a large
request uses ``fold_in(key, c)``; nothing falls back to a fixed key.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]


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
