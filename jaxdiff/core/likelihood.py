"""Bits per dimension: the DDPM variational bound on discrete 8-bit images.

An image ``x_0`` has ``D = H W C`` values on the 256-level grid ``{-1, -1 + 2/255, ..., 1}`` (uint8
``u`` maps to ``u / 127.5 - 1``). With paper timesteps ``t = 1..T`` the negative log-likelihood of the
discrete image is bounded by (Ho et al. 2020, eq. 5; Sohl-Dickstein et al. 2015)::

    -log p(x_0) <= L_T + sum_{t=2}^{T} L_{t-1} + L_0
    L_T     = KL( q(x_T | x_0) || N(0, I) )                          prior term, no network
    L_{t-1} = E_{x_t ~ q(x_t | x_0)} KL( q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t) )
    L_0     = E_{x_1 ~ q(x_1 | x_0)} -log p(x_0 | x_1)               discretised Gaussian decoder

``p(x_{t-1} | x_t) = N(mu~(x0_hat, x_t), sigma_t^2)``: the posterior mean evaluated at the network's
``x0_hat`` with the fixed-small or fixed-large variance of the sampler. At ``t = 1`` the posterior
mean coefficients are ``(1, 0)``, so the decoder mean is ``x0_hat`` itself. The decoder gives each
of the 256 levels the Gaussian mass of its bin ``[x - 1/255, x + 1/255]``, the two outer bins
extending to -inf and +inf, so ``L_0`` is an honest discrete negative log-likelihood and the whole
bound is in nats per image; bits/dim divide by ``D ln 2``.

Every ``L_{t-1}`` is estimated with one draw of ``x_t`` per image (an unbiased estimate of the bound,
as in DDPM and improved-diffusion's ``calc_bpd_loop``), all ``T`` of them in one compiled
``jax.lax.scan``. Table index ``i = t - 1``, as everywhere in jaxdiff.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.common.chunks import map_chunks
from jaxdiff.core import diffusion
from jaxdiff.core.schedules import DiffusionTables

ApplyFn = Callable[..., jax.Array]  # apply_fn(params, x_t, t) -> network output


def normal_kl(mean1, logvar1, mean2, logvar2):
    """Elementwise ``KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)))`` in nats.

    ``0.5 (logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2) - 1)``.
    """
    return 0.5 * (logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                  + jnp.square(mean1 - mean2) * jnp.exp(-logvar2) - 1.0)


def log_ndtr_diff(a, b):
    """``log(Phi(a) - Phi(b))`` for ``a > b``, accurate in both tails.

    ``log Phi(a) + log(1 - exp(log Phi(b) - log Phi(a)))``; when ``b > 0`` the mirror identity
    ``Phi(a) - Phi(b) = Phi(-b) - Phi(-a)`` is used instead, so neither CDF is close to 1.
    """
    upper = b > 0
    hi_arg = jnp.where(upper, -b, a)
    lo_arg = jnp.where(upper, -a, b)
    hi = jax.scipy.special.log_ndtr(hi_arg)
    lo = jax.scipy.special.log_ndtr(lo_arg)
    # lo < hi always; the floor keeps a rounding tie from giving log(0).
    return hi + jnp.log(-jnp.expm1(jnp.minimum(lo - hi, -1e-30)))


def discretized_gaussian_log_likelihood(x, mean, log_scale):
    """Log mass of the 8-bit bin of ``x`` under ``N(mean, exp(log_scale)^2)``, elementwise.

    ``x`` lies on the grid ``u / 127.5 - 1``; the bin is ``[x - 1/255, x + 1/255]``, except that the
    bin of -1 extends to -inf and the bin of 1 to +inf, so the 256 masses sum to one.
    """
    inv_std = jnp.exp(-log_scale)
    plus = (x - mean + 1.0 / 255.0) * inv_std
    minus = (x - mean - 1.0 / 255.0) * inv_std
    log_cdf_plus = jax.scipy.special.log_ndtr(plus)
    log_sf_minus = jax.scipy.special.log_ndtr(-minus)
    mid = log_ndtr_diff(plus, minus)
    return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_sf_minus, mid))


def prior_kl(tables: DiffusionTables, x0: jax.Array) -> jax.Array:
    """``L_T = KL(N(sqrt(abar_T) x_0, (1 - abar_T) I) || N(0, I))`` in nats per image, ``[B]``."""
    t = jnp.full((x0.shape[0],), tables.num_timesteps - 1, jnp.int32)
    mean = diffusion.extract(tables.sqrt_alphas_cumprod, t, x0.ndim) * x0
    logvar = jnp.log(diffusion.extract(1.0 - tables.alphas_cumprod, t, x0.ndim))
    kl = normal_kl(mean, logvar, 0.0, 0.0)
    return jnp.sum(kl, axis=tuple(range(1, x0.ndim)))


def vb_term(output: jax.Array, tables: DiffusionTables, x0: jax.Array, xt: jax.Array, t: jax.Array,
            target: str, variance: str, clip_x0: bool = False) -> jax.Array:
    """One term of the bound for table index ``t`` (``[B]``, nats per image), given the network
    ``output`` at ``(x_t, t)``: ``L_{t-1}`` (a Gaussian KL) for ``t >= 1`` and the decoder NLL
    ``L_0 = -log p(x_0 | x_1)`` for ``t = 0``.

    Model: ``p(x_{t-1} | x_t) = N(q_posterior_mean(x0_hat, x_t), sigma_t^2)`` with ``x0_hat`` from
    ``output`` (clipped to [-1, 1] with ``clip_x0``) and ``log sigma_t^2`` the ``variance`` table
    (``fixed_small`` or ``fixed_large``, see :func:`jaxdiff.diffusion.reverse_log_variance`).
    """
    axes = tuple(range(1, x0.ndim))
    x0_hat, _ = diffusion.x0_eps_from_output(tables, xt, t, output, target, clip_x0)
    model_mean, _, _ = diffusion.q_posterior(tables, x0_hat, xt, t)
    model_logvar = diffusion.extract(diffusion.reverse_log_variance(tables, variance), t, xt.ndim)
    true_mean, _, true_logvar = diffusion.q_posterior(tables, x0, xt, t)
    kl = jnp.sum(normal_kl(true_mean, true_logvar, model_mean, model_logvar), axis=axes)
    nll = -jnp.sum(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar), axis=axes)
    return jnp.where(t == 0, nll, kl)


class BpdOutput(NamedTuple):
    """Bits/dim of each image (``[B]``) and its parts: ``prior`` = ``L_T`` (``[B]``) and ``terms``
    (``[T, B]``): row ``i`` is ``L_i`` (row 0 the decoder NLL ``L_0``), all in bits per dimension."""

    bpd: jax.Array
    prior: jax.Array
    terms: jax.Array


def make_bpd_fn(apply_fn: ApplyFn, tables: DiffusionTables, target: str = "eps",
                variance: str = "fixed_small", clip_x0: bool = False):
    """A compiled ``bpd(params, x0, key) -> BpdOutput`` for a batch ``x0`` in [-1, 1].

    ``apply_fn(params, x_t, t)`` is the network. One ``lax.scan`` walks all ``T`` table indices;
    step ``i`` draws the ``x_t`` noise from ``fold_in(key, i)``. Bits/dim of an image =
    ``(L_T + sum_i L_i) / (D ln 2)``.
    """
    diffusion.reverse_log_variance(tables, variance)  # a bad name fails here, before tracing
    if target not in diffusion.TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(diffusion.TARGETS)}")
    num_t = tables.num_timesteps

    def bpd(params, x0, key):
        x0 = x0.astype(jnp.float32)
        scale = 1.0 / (math.prod(x0.shape[1:]) * math.log(2.0))

        def body(total, i):
            t = jnp.full((x0.shape[0],), i, jnp.int32)
            noise = jax.random.normal(jax.random.fold_in(key, i), x0.shape, jnp.float32)
            xt = diffusion.q_sample(tables, x0, t, noise)
            term = vb_term(apply_fn(params, xt, t), tables, x0, xt, t, target, variance, clip_x0)
            return total + term, term * scale

        prior = prior_kl(tables, x0)
        total, terms = jax.lax.scan(body, prior, jnp.arange(num_t))
        return BpdOutput(total * scale, prior * scale, terms)

    return jax.jit(bpd)


def dataset_bpd(bpd_fn, params, images: np.ndarray, batch_size: int, key: jax.Array, progress=None) -> dict:
    """Bits/dim of uint8 ``images [N, H, W, C]`` under ``bpd_fn`` (from :func:`make_bpd_fn`).

    Batches are of a fixed size (the last one padded and its padding dropped), so one compiled
    function serves all; batch ``j`` uses ``fold_in(key, j)``. Returns the mean bits/dim, its
    standard error over images, the mean prior term, the mean of each ``L_i`` (``[T]``) and ``N``.
    """
    n = int(images.shape[0])
    if n == 0:
        raise ValueError("bits/dim needs at least one image")

    def bpd_chunk(j, chunk):
        x0 = jnp.asarray(chunk, jnp.float32) / 127.5 - 1.0
        out = jax.device_get(bpd_fn(params, x0, jax.random.fold_in(key, j)))
        return out.bpd, out.prior, np.swapaxes(out.terms, 0, 1)  # terms with the batch axis first

    per_image, prior, terms = map_chunks(bpd_chunk, images, batch_size, progress)
    per_image = per_image.astype(np.float64)
    return {
        "bpd": float(per_image.mean()),
        "bpd_stderr": float(per_image.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
        "prior_bpd": float(prior.mean()),
        "terms_bpd": terms.astype(np.float64).mean(axis=0),
        "num_images": n,
    }
