"""Pure functions of the Gaussian diffusion: forward noising, posterior, parameterisations, losses.

Notation (table index ``t`` in ``[0, T)``): ``abar = alphas_cumprod[t]``.
  forward      x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps
  v target     v   = sqrt(abar) eps - sqrt(1 - abar) x_0
  SNR          snr = abar / (1 - abar)
Every function takes a :class:`~jaxdiff.schedules.DiffusionTables` and integer timesteps ``t`` of
shape ``[B]``; tables are cast to float32 where they are gathered.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.core.schedules import DiffusionTables

TARGETS = ("eps", "x0", "v")
VARIANCES = ("fixed_small", "fixed_large")
WEIGHTINGS = ("none", "min_snr")


def extract(table: np.ndarray, t: jax.Array, ndim: int) -> jax.Array:
    """``table[t]`` as float32, reshaped to ``[B, 1, ..., 1]`` to broadcast over an ``ndim`` array."""
    values = jnp.asarray(table, dtype=jnp.float32)[t]
    return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def q_sample(tables: DiffusionTables, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Sample q(x_t | x_0): ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise``."""
    return (extract(tables.sqrt_alphas_cumprod, t, x0.ndim) * x0
            + extract(tables.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise)


def q_posterior(tables: DiffusionTables, x0: jax.Array, xt: jax.Array, t: jax.Array):
    """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0).

    ``mean = beta_t sqrt(abar_{t-1}) / (1 - abar_t) x_0 + (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t) x_t``.
    """
    mean = (extract(tables.posterior_mean_coef_x0, t, xt.ndim) * x0
            + extract(tables.posterior_mean_coef_xt, t, xt.ndim) * xt)
    return (mean, extract(tables.posterior_variance, t, xt.ndim),
            extract(tables.posterior_log_variance_clipped, t, xt.ndim))


def reverse_log_variance(tables: DiffusionTables, kind: str) -> np.ndarray:
    """Log variance of p(x_{t-1} | x_t) for a fixed-variance model, float64 ``[T]``.

    ``fixed_small``: the posterior variance ``beta_t (1 - abar_{t-1}) / (1 - abar_t)`` (clipped log).
    ``fixed_large``: ``beta_t``, with the posterior variance at t=1 (DDPM's CIFAR-10 choice).
    """
    if kind == "fixed_small":
        return tables.posterior_log_variance_clipped
    if kind == "fixed_large":
        return np.log(np.concatenate([tables.posterior_variance[1:2], tables.betas[1:]]))
    raise ValueError(f"unknown sampling variance {kind!r}; choose one of {', '.join(VARIANCES)}")


def x0_from_eps(tables: DiffusionTables, xt: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """``x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)``."""
    return ((xt - extract(tables.sqrt_one_minus_alphas_cumprod, t, xt.ndim) * eps)
            / extract(tables.sqrt_alphas_cumprod, t, xt.ndim))


def eps_from_x0(tables: DiffusionTables, xt: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
    """``eps = (x_t - sqrt(abar) x_0) / sqrt(1 - abar)``."""
    return ((xt - extract(tables.sqrt_alphas_cumprod, t, xt.ndim) * x0)
            / extract(tables.sqrt_one_minus_alphas_cumprod, t, xt.ndim))


def v_from_x0_eps(tables: DiffusionTables, x0: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """``v = sqrt(abar) eps - sqrt(1 - abar) x_0``."""
    return (extract(tables.sqrt_alphas_cumprod, t, x0.ndim) * eps
            - extract(tables.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * x0)


def x0_eps_from_v(tables: DiffusionTables, xt: jax.Array, t: jax.Array, v: jax.Array):
    """Invert ``v``: ``x_0 = sqrt(abar) x_t - sqrt(1 - abar) v``, ``eps = sqrt(1 - abar) x_t + sqrt(abar) v``."""
    a = extract(tables.sqrt_alphas_cumprod, t, xt.ndim)
    s = extract(tables.sqrt_one_minus_alphas_cumprod, t, xt.ndim)
    return a * xt - s * v, s * xt + a * v


def x0_eps_from_output(tables: DiffusionTables, xt: jax.Array, t: jax.Array, output: jax.Array,
                       target: str, clip_x0: bool = False):
    """Turn a network output of kind ``target`` (eps, x0 or v) into ``(x0_hat, eps_hat)``.

    With ``clip_x0`` the predicted ``x0`` is clipped to [-1, 1] and ``eps`` recomputed from the
    clipped ``x0`` (improved-diffusion / DDIM convention), so the two stay consistent with ``x_t``.
    """
    if target == "eps":
        x0 = x0_from_eps(tables, xt, t, output)
        eps = output
    elif target == "x0":
        x0 = output
        eps = eps_from_x0(tables, xt, t, output)
    elif target == "v":
        x0, eps = x0_eps_from_v(tables, xt, t, output)
    else:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if clip_x0:
        x0 = jnp.clip(x0, -1.0, 1.0)
        eps = eps_from_x0(tables, xt, t, x0)
    return x0, eps


def snr(tables: DiffusionTables, t: jax.Array) -> jax.Array:
    """Signal-to-noise ratio ``abar_t / (1 - abar_t)`` (float32, shape of ``t``)."""
    return jnp.asarray(tables.alphas_cumprod / (1.0 - tables.alphas_cumprod), jnp.float32)[t]


def snr_loss_weight(snr_value: jax.Array, target: str, weighting: str, min_snr_gamma: float = 5.0) -> jax.Array:
    """Per-example weight of the squared error at signal-to-noise ratio ``snr_value`` ``[B]``.

    ``none``: 1. ``min_snr`` (Hang et al. 2023), expressed for the target the network predicts:
    ``min(snr, gamma) / snr`` for eps, ``min(snr, gamma)`` for x0, ``min(snr, gamma) / (snr + 1)`` for v.
    """
    if weighting == "none":
        return jnp.ones(snr_value.shape, jnp.float32)
    if weighting != "min_snr":
        raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
    clipped = jnp.minimum(snr_value, min_snr_gamma)
    return {"eps": clipped / snr_value, "x0": clipped, "v": clipped / (snr_value + 1.0)}[target]


def loss_weight(tables: DiffusionTables, t: jax.Array, target: str, weighting: str,
                min_snr_gamma: float = 5.0) -> jax.Array:
    """:func:`snr_loss_weight` at table timesteps ``t`` (``snr = abar_t / (1 - abar_t)``)."""
    if weighting == "none":
        return jnp.ones(t.shape, jnp.float32)
    return snr_loss_weight(snr(tables, t), target, weighting, min_snr_gamma)


def table_index_at(tables: DiffusionTables, sigma_ratio) -> np.ndarray:
    """The (fractional) table index whose ``sqrt((1 - abar) / abar)`` is ``sigma_ratio``: linear
    interpolation in ``log sigma_ratio``, increasing; NumPy float64 (to place a guidance interval)."""
    abar = tables.alphas_cumprod
    with np.errstate(divide="ignore"):
        log_ratio = 0.5 * (np.log1p(-abar) - np.log(abar))
        return np.interp(np.log(sigma_ratio), log_ratio, np.arange(len(abar), dtype=np.float64))


def training_target(tables: DiffusionTables, x0: jax.Array, t: jax.Array, noise: jax.Array,
                    target: str) -> jax.Array:
    """What the network regresses on: ``noise``, ``x0`` or ``v``."""
    if target == "eps":
        return noise
    if target == "x0":
        return x0
    if target == "v":
        return v_from_x0_eps(tables, x0, t, noise)
    raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")


def draw_t_noise(key: jax.Array, x0: jax.Array, num_timesteps: int) -> tuple[jax.Array, jax.Array]:
    """The randomness of the loss: ``t ~ U{0..T-1}`` of shape ``[B]`` and ``eps ~ N(0, I)`` shaped like
    ``x0``, from ``split(key)``. Drawn for the whole (global) batch, row ``i`` depends only on ``key``
    and ``i`` (partitionable threefry), so a sharded draw equals the unsharded one."""
    t_key, noise_key = jax.random.split(key)
    t = jax.random.randint(t_key, (x0.shape[0],), 0, num_timesteps)
    return t, jax.random.normal(noise_key, x0.shape, jnp.float32)


def loss_given_noise(denoise_fn, tables: DiffusionTables, x0: jax.Array, t: jax.Array, noise: jax.Array,
                     target: str = "eps", weighting: str = "none",
                     min_snr_gamma: float = 5.0) -> tuple[jax.Array, jax.Array]:
    """``w(t) || f(x_t, t) - target ||^2`` per example (mean over pixels) for given ``t`` and ``eps``,
    with ``x_t = q_sample(x0, t, eps)``. Returns ``(batch mean, per_example_loss)``."""
    xt = q_sample(tables, x0, t, noise)
    output = denoise_fn(xt, t).astype(jnp.float32)
    err = jnp.mean(jnp.square(output - training_target(tables, x0, t, noise, target)),
                   axis=tuple(range(1, x0.ndim)))
    per_example = loss_weight(tables, t, target, weighting, min_snr_gamma) * err
    return jnp.mean(per_example), per_example


def diffusion_loss(denoise_fn, tables: DiffusionTables, x0: jax.Array, key: jax.Array,
                   target: str = "eps", weighting: str = "none",
                   min_snr_gamma: float = 5.0) -> tuple[jax.Array, jax.Array]:
    """L_simple: ``E_{t, eps} w(t) || f(x_t, t) - target ||^2`` (mean over pixels, then batch).

    ``denoise_fn(x_t, t)`` is the network. ``t`` is uniform on ``[0, T)`` and ``eps ~ N(0, I)``,
    both drawn from ``key`` (:func:`draw_t_noise`). Returns ``(loss, per_example_loss)``.
    """
    t, noise = draw_t_noise(key, x0, tables.num_timesteps)
    return loss_given_noise(denoise_fn, tables, x0, t, noise, target, weighting, min_snr_gamma)
