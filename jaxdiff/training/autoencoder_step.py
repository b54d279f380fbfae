"""The KL autoencoder's loss and its training step, as pure functions of explicit arguments.

The objective is latent diffusion's first stage without its perceptual and adversarial terms
(Rombach et al. 2022: ``ldm.modules.losses.LPIPSWithDiscriminator`` with ``perceptual_weight=0``,
no discriminator and its learned output log-variance fixed at 0): a pixel reconstruction error plus
``kl_weight`` times the posterior's KL to ``N(0, I)``. LPIPS and the patch-GAN discriminator are not
implemented (a reconstruction trained this way is blurrier than the original's; the encoder, decoder
and latents are the same kind).

The step mirrors :func:`jaxdiff.training.step.make_train_step`: :class:`~jaxdiff.training.state.TrainState`
(params, EMA, optimiser state; gradient clipping is the optimiser's, :func:`~jaxdiff.training.optim.make_optimizer`),
every draw of step ``n`` from :func:`~jaxdiff.training.keys.step_keys` ``(seed, n)`` (``flip`` for the
preprocessing's flips, ``loss`` for the posterior sample), so a resumed run needs no saved RNG.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from jaxdiff.data import preprocess as uint8_to_float
from jaxdiff.models.autoencoder import AutoencoderKL, autoencoder_apply, kl_divergence, psnr
from jaxdiff.training.keys import step_keys
from jaxdiff.training.optim import ema_decay, ema_update
from jaxdiff.training.state import TrainState

RECONSTRUCTIONS = ("l1", "l2")
Preprocess = Callable  # preprocess(images, key) -> x float32 [B, H, W, C] in [-1, 1]


def autoencoder_loss(recon: jax.Array, x: jax.Array, mean: jax.Array, logvar: jax.Array, kl_weight: float = 1e-6,
                     reconstruction: str = "l1") -> tuple[jax.Array, dict]:
    """The KL autoencoder's loss and its metrics.

    With ``D = H W C`` values an image, ``rec = |recon - x|`` (``"l1"``, LDM's) or ``(recon - x)^2``
    (``"l2"``) and ``KL_b = kl_divergence(mean, logvar)`` (a per-example sum over the latent):

      ``loss = mean_b [ sum(rec_b) + kl_weight KL_b ] / D = mean(rec) + kl_weight mean_b(KL_b) / D``,

    i.e. LDM's ``sum(nll) / B + kl_weight sum(kl) / B`` divided by ``D``: the same minimiser and the
    same balance of the two terms for the same ``kl_weight`` (1e-6 in LDM's kl-f8), at the scale of
    a per-pixel error (Adam's updates do not depend on the loss's scale).

    Returns:
      ``(loss, {"loss", "recon": mean(rec), "kl": mean_b KL_b, "psnr": mean_b PSNR_b})``, the PSNR of
      the reconstruction clipped to [-1, 1] against ``x`` (data range 2), in dB.
    """
    if reconstruction not in RECONSTRUCTIONS:
        raise ValueError(f"reconstruction must be one of {', '.join(RECONSTRUCTIONS)}, got {reconstruction!r}")
    diff = recon.astype(jnp.float32) - x.astype(jnp.float32)
    rec = jnp.mean(jnp.abs(diff) if reconstruction == "l1" else jnp.square(diff))
    kl = jnp.mean(kl_divergence(mean, logvar))
    values_per_image = x[0].size
    loss = rec + kl_weight * kl / values_per_image
    metrics = {"loss": loss, "recon": rec, "kl": kl,
               "psnr": jnp.mean(psnr(jnp.clip(recon, -1.0, 1.0), x, 2.0))}
    return loss, metrics


def make_autoencoder_train_step(model: AutoencoderKL | Callable, optimizer: optax.GradientTransformation, *,
                                kl_weight: float = 1e-6, reconstruction: str = "l1", ema_decay_rate: float = 0.9999,
                                ema_warmup: bool = False, preprocess: Preprocess = uint8_to_float, seed: int = 0,
                                learning_rate_fn: Callable | None = None, mesh=None):
    """The pure ``step(state, batch) -> (state, metrics)`` of KL autoencoder training.

    ``x = preprocess(batch["image"], flip_key)``, ``(recon, mean, logvar) = apply(params, x, loss_key)``
    (the reconstruction of a posterior sample), :func:`autoencoder_loss`, one optimizer update and
    ``ema <- d ema + (1 - d) params``. No patch-GAN, no LPIPS (see the module's docstring); no gradient
    accumulation.

    Args:
      model: an :class:`~jaxdiff.models.autoencoder.AutoencoderKL` (any Flax module of its calling
        convention), or its apply function ``apply(params, x, key) -> (recon, mean, logvar)``
        (:func:`~jaxdiff.models.autoencoder.autoencoder_apply`).
      optimizer: an optax transformation (:func:`jaxdiff.training.make_optimizer`, which clips).
      kl_weight, reconstruction: the loss's (:func:`autoencoder_loss`).
      ema_decay_rate, ema_warmup: as the diffusion step's: decay ``d``, with warm-up
        ``min(d, (1 + n) / (10 + n))``.
      preprocess: ``preprocess(batch["image"], key) -> x`` inside the compiled step; the default is
        :func:`jaxdiff.data.preprocess` (uint8 ``[B, H, W, C]`` -> [-1, 1], no flips; pass
        ``functools.partial(jaxdiff.data.preprocess, random_flip=True)`` for flips).
      seed: the run's seed; step ``n`` draws from ``step_keys(seed, n)``.
      learning_rate_fn: the schedule, to report ``learning_rate`` in the metrics (optional).
      mesh: the device mesh: the images are kept sharded over its ``data`` axis.

    Returns:
      ``step(state: TrainState, batch: {"image": uint8 [B, H, W, C]}) -> (state, {"loss", "recon", "kl",
      "psnr", "grad_norm"[, "learning_rate"]})``.
    """
    if reconstruction not in RECONSTRUCTIONS:
        raise ValueError(f"reconstruction must be one of {', '.join(RECONSTRUCTIONS)}, got {reconstruction!r}")
    apply_fn = autoencoder_apply(model) if isinstance(model, nn.Module) else model

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        keys = step_keys(seed, state.step)
        x = preprocess(batch["image"], keys["flip"])
        if mesh is not None:
            x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec("data")))

        def loss_fn(params):
            recon, mean, logvar = apply_fn(params, x, keys["loss"])
            return autoencoder_loss(recon, x, mean, logvar, kl_weight, reconstruction)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = ema_update(state.ema_params, params, ema_decay(state.step, ema_decay_rate, ema_warmup))
        metrics = {**metrics, "grad_norm": optax.tree.norm(grads)}
        if learning_rate_fn is not None:
            metrics["learning_rate"] = learning_rate_fn(state.step)
        return TrainState(state.step + 1, params, ema, opt_state), metrics

    return step
