"""Gaussian data, whose denoiser, ODE and posteriors are known in closed form: the reference that the
sampler and editing tests compare against.

For ``x0 ~ N(mu, Sigma)`` and ``x = alpha x0 + sigma eps`` the optimal denoiser is
``E[x0 | x] = mu + alpha Sigma (alpha^2 Sigma + sigma^2 I)^-1 (x - alpha mu)``; :func:`exact_net`
turns it into each family's network output. For a linear measurement ``y = A x0 + s_y n``,
``x0 | y ~ N(mu + K (y - A mu), Sigma - K A Sigma)`` with ``K = Sigma A^T (A Sigma A^T + s_y^2 I)^-1``
(:func:`posterior`, float64 NumPy).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxdiff.core import families, processes


class GaussianPrior(NamedTuple):
    """``N(mean, cov)`` over images of ``mean.shape`` (``cov`` over the flattened pixels), float64."""

    mean: np.ndarray
    cov: np.ndarray

    @property
    def shape(self):
        return self.mean.shape

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        chol = np.linalg.cholesky(self.cov)
        return (self.mean.reshape(-1) + rng.standard_normal((n, self.mean.size)) @ chol.T).reshape((n,) + self.shape)

    def posterior(self, x, alpha, sigma):
        """``(E[x0 | x], E[eps | x])`` for ``x [B, H, W, C]`` and ``alpha``, ``sigma`` scalars or ``[B]``
        (jnp, float32); in the eigenbasis of the covariance ``E[eps | x] = sigma (x - alpha mu) /
        (alpha^2 lambda + sigma^2)``, which stays finite at ``sigma = 0``."""
        lam, u = np.linalg.eigh(self.cov)
        lam, u, mu = (jnp.asarray(v, jnp.float32) for v in (lam, u, self.mean.reshape(-1)))
        a = jnp.reshape(jnp.asarray(alpha, jnp.float32), (-1, 1))
        s = jnp.reshape(jnp.asarray(sigma, jnp.float32), (-1, 1))
        centred = (x.reshape(x.shape[0], -1) - a * mu) @ u
        norm = a * a * lam + s * s
        x0 = mu + (centred * (a * lam / norm)) @ u.T
        eps = (centred * (s / norm)) @ u.T
        return x0.reshape(x.shape), eps.reshape(x.shape)

    def posterior_x0(self, x, alpha, sigma):
        return self.posterior(x, alpha, sigma)[0]

    def average_velocity(self, x, r, t):
        """The exact average velocity ``u(x, r, t)`` over ``[r, t]`` of the linear interpolant
        ``x_t = (1 - t) x0 + t eps`` (``r``, ``t``: ``[B]``): per eigenvalue ``lam`` of the covariance,
        ``sigma_t^2 = (1 - t)^2 lam + t^2`` and ``u = -mu + U diag(((t + r) - lam (2 - t - r)) /
        (sigma_t (sigma_t + sigma_r))) U^T (x - (1 - t) mu)``, which is ``(x - Phi_{t->r}(x)) / (t - r)``
        without the division, and the velocity at ``r = t``."""
        lam, u, mu = (jnp.asarray(v, jnp.float32) for v in (*np.linalg.eigh(self.cov), self.mean.reshape(-1)))
        t = jnp.reshape(jnp.asarray(t, jnp.float32), (-1, 1))
        r = jnp.reshape(jnp.asarray(r, jnp.float32), (-1, 1))
        s_t, s_r = jnp.sqrt((1 - t) ** 2 * lam + t ** 2), jnp.sqrt((1 - r) ** 2 * lam + r ** 2)
        slope = ((t + r) - lam * (2 - t - r)) / (s_t * (s_t + s_r))
        centred = (x.reshape(x.shape[0], -1) - (1 - t) * mu) @ u
        return (-mu + (centred * slope) @ u.T).reshape(x.shape)


def isotropic(mean, std: float) -> GaussianPrior:
    mean = np.asarray(mean, np.float64)
    return GaussianPrior(mean, std ** 2 * np.eye(mean.size))


def smooth(shape, std: float, length: float, mean=None, seed: int = 0) -> GaussianPrior:
    """Pixels correlated as ``std^2 exp(-d / length)`` over their distance ``d`` (channels independent);
    a random mean if none is given."""
    h, w, c = shape
    yy, xx, cc = np.meshgrid(np.arange(h), np.arange(w), np.arange(c), indexing="ij")
    pos = np.stack([yy.ravel(), xx.ravel()], 1).astype(np.float64)
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    cov = std ** 2 * np.exp(-d / length) * (cc.ravel()[:, None] == cc.ravel()[None])
    if mean is None:
        mean = 0.3 * np.random.default_rng(seed).uniform(-1, 1, shape)
    return GaussianPrior(np.asarray(mean, np.float64), cov)


def exact_net(family, prior: GaussianPrior, process=None):
    """``net(x_in, t_in)`` whose output, read by ``family.predict``, is ``prior``'s exact denoiser (a
    few-step family's ``net(x_in, t_in, span)``: the exact average velocity over ``[t - span, t]``)."""
    col = lambda v: v[:, None, None, None]  # noqa: E731
    if family.two_times:
        def span_net(x, t_in, span=None):
            t = t_in / families.NETWORK_TIME_SCALE
            return prior.average_velocity(x, t if span is None else t - span / families.NETWORK_TIME_SCALE, t)

        return span_net
    if family.name == "edm":
        sigma_data = 0.5

        def net(x_in, c_noise):
            sigma = col(jnp.exp(4.0 * c_noise))
            c = processes.edm_preconditioning(sigma, sigma_data)
            x = x_in / c.c_in
            return (prior.posterior_x0(x, 1.0, jnp.exp(4.0 * c_noise)) - c.c_skip * x) / c.c_out

        return net
    if family.name == "ddpm":
        abar = jnp.asarray(family.tables.alphas_cumprod, jnp.float32)

        def alpha_sigma(t_in):
            return jnp.sqrt(abar[t_in]), jnp.sqrt(1.0 - abar[t_in])
    else:
        def alpha_sigma(t_in):
            return process.alpha_sigma(t_in / families.NETWORK_TIME_SCALE, jnp)

    def net(x, t_in):
        a, s = alpha_sigma(t_in)
        x0, eps = prior.posterior(x, a, s)
        return processes.prediction_from_x0_eps(family.prediction, x0, eps, a, s)

    return net


def posterior(prior: GaussianPrior, A: np.ndarray, y: np.ndarray, noise_std: float = 0.0):
    """Mean ``[H, W, C]`` and covariance ``[D, D]`` of ``x0 | A x0 + noise_std n = y`` (``y`` flat)."""
    mu, cov = prior.mean.reshape(-1), prior.cov
    gain = cov @ A.T @ np.linalg.pinv(A @ cov @ A.T + noise_std ** 2 * np.eye(A.shape[0]))
    return (mu + gain @ (y - A @ mu)).reshape(prior.shape), cov - gain @ A @ cov


def moments(samples):
    """Sample mean ``[H, W, C]`` and covariance ``[D, D]`` of ``samples [N, H, W, C]`` (float64)."""
    flat = np.asarray(samples, np.float64).reshape(len(samples), -1)
    return flat.mean(0).reshape(samples.shape[1:]), np.cov(flat, rowvar=False)
