"""Training-free linear inverse problems ``y = A x + sigma_y n`` with a trained diffusion model, one
implementation for any :class:`~jaxdiff.core.operators.LinearOperator` (super-resolution,
deblurring, colorization, inpainting, denoising), combined with any family and class guidance.

  ddnm   (Wang et al. 2023, range-null-space decomposition) at every evaluation the denoiser's
         ``x0_hat`` keeps only its null-space part and takes its range-space part from ``y``:
         ``x0 <- A^+ y + (I - A^+ A) x0_hat``, ``eps <- (x - alpha x0) / sigma``; the solver then steps
         with the corrected pair. :func:`ddnm_family` is a :class:`~jaxdiff.core.families.Family`
         whose ``predict`` does this, so every solver of :mod:`jaxdiff.core.grid_samplers` runs it
         (DDPM's ancestral chain is ``euler_ancestral`` with eta 1, DDIM's is ``euler``: see
         :func:`x0_eps_form`). For noiseless measurements (the paper's DDNM; DDNM+'s noise handling
         is not implemented).
  dps    (Chung et al. 2023, diffusion posterior sampling) after each sampler step,
         ``x' <- x' - zeta grad_x ||y - A x0_hat(x)||_2`` (per image; the gradient goes through the
         network by ``jax.vjp``). :func:`dps_sampler` wraps any :class:`~jaxdiff.core.sampler.Sampler`.
         Works with measurement noise; ``zeta`` is the paper's step size (about 1 for their
         256x256 images).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff.core import processes
from jaxdiff.core.families import Family
from jaxdiff.core.operators import LinearOperator
from jaxdiff.core.sampler import Sampler
from jaxdiff.core.sampler_registry import SAMPLERS

METHODS = ("ddnm", "dps")


def x0_eps_form(name: str, eta: float = 0.0, variance: str = "fixed_small") -> tuple[str, float]:
    """The ddpm family's own samplers as the ``(x0, eps)``-form solver with the same steps, which
    :func:`ddnm_family` can correct: ``ddpm`` (fixed_small) -> ``euler_ancestral`` with eta 1,
    ``ddim`` with ``eta <= 1`` -> ``euler_ancestral`` with that eta (``euler`` for 0); other names
    are returned as they are. Returns ``(name, sde_eta)``."""
    spec = SAMPLERS.get(name)
    if spec is None or spec.grid_form is None:
        return name, None
    return spec.grid_form(eta=eta, variance=variance)


def ddnm_correction(operator: LinearOperator, y, clip_x0: bool = False):
    """``correct(x0) = A^+ y + (I - A^+ A) x0`` (after clipping ``x0`` to [-1, 1] with ``clip_x0``)."""
    range_part = operator.pinv(y)

    def correct(x0):
        if clip_x0:
            x0 = jnp.clip(x0, -1.0, 1.0)
        return range_part + operator.project_null(x0)

    return correct


def ddnm_family(family: Family, operator: LinearOperator, y, clip_x0: bool = False) -> Family:
    """``family`` whose denoiser returns DDNM's corrected ``(x0, eps)`` for measurements ``y``
    (``[B, ...]``, ``operator.measurement_shape``). Build the solver with ``clip_x0=False``: the
    clipping, if asked for, happens here, before the projection."""
    correct = ddnm_correction(operator, y, clip_x0)

    def predict(net, x, time, alpha, sigma):
        x0, _ = family.predict(net, x, time, alpha, sigma)
        x0 = correct(x0)
        eps = (x - processes.expand_to(alpha, x) * x0) / processes.expand_to(sigma, x)
        return x0, eps

    return family._replace(predict=predict)


def measurement_norms(operator: LinearOperator, y, x0):
    """``||y - A x0||_2`` per image ``[B]``."""
    r = y - operator.forward(x0)
    return jnp.sqrt(jnp.sum(jnp.square(r), axis=tuple(range(1, r.ndim))))


def dps_sampler(sampler: Sampler, operator: LinearOperator, y, scale: float = 1.0) -> Sampler:
    """``sampler`` with DPS's measurement step after each of its steps:
    ``x' <- x' - scale grad_x sum_b ||y_b - A x0_hat_b(x)||`` (``x0_hat`` the step's first denoiser
    output). ``y`` ``[B, ...]``; the step costs one more backward pass through the network."""
    if not scale >= 0:
        raise ValueError(f"the DPS scale must be non-negative, got {scale!r}")

    def step(net, x, i, key, state):
        def forward(x_in):
            x_next, x0, new_state = sampler.step(net, x_in, i, key, state)
            return jnp.sum(measurement_norms(operator, y, x0)), (x_next, x0, new_state)

        grad, (x_next, x0, new_state) = jax.grad(forward, has_aux=True)(x)
        return x_next - scale * grad, x0, new_state

    return sampler._replace(step=step, num_evaluations=sampler.evaluations)
