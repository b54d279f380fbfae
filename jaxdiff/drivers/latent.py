"""Latent diffusion (Rombach et al. 2022): the diffusion model of a config trains and samples in the
latent space of the autoencoder that ``--mode=train_autoencoder`` trained in ``latent.autoencoder``.

The training set is encoded once per run (posterior means, the autoencoder's EMA weights: the same
latents every time, so resuming stays bit-exact) and multiplied by ``latent.scale_factor``; ``0``
measures it as ``1 / std`` of those latents (how LDM's 0.18215 was found for Stable Diffusion's
autoencoder) and the checkpoints record the value used, with the autoencoder's path and step. Samples
are divided by the scale and decoded, so grids, sample mode and eval mode see images.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import numpy as np

from jaxdiff.common.chunks import map_chunks
from jaxdiff.data import ArraySource, preprocess
from jaxdiff.drivers import model_source
from jaxdiff.drivers.autoencoder_experiment import KIND, AutoencoderExperiment
from jaxdiff.drivers.checks import ConfigError
from jaxdiff.training import checkpoint

ENCODE_BATCH = 256  # images per compiled encoder call


class LatentSpace(NamedTuple):
    """An autoencoder's latent space: ``scale`` (latents are ``scale * z``), ``shape`` ``(h, w, c)`` of
    the latents, ``image_shape`` ``(H, W, C)`` of the images, the autoencoder's own compiled
    ``encode_z(uint8 images) -> z`` (posterior means) and ``decode_z(z) -> images in [-1, 1]`` (EMA
    weights bound), and ``info`` (what checkpoints and sample files record: path, step, scale)."""

    scale: float
    shape: tuple
    image_shape: tuple
    encode_z: Callable
    decode_z: Callable
    info: dict

    def encode(self, images):
        """uint8 images -> latents ``scale * z``."""
        return self.scale * self.encode_z(images)

    def decode(self, latents):
        """Latents ``scale * z`` -> images in [-1, 1]."""
        return self.decode_z(latents / self.scale)

    def rescaled(self, scale: float) -> "LatentSpace":
        """The same space with latents multiplied by ``scale`` instead."""
        return self._replace(scale=float(scale), info={**self.info, "scale_factor": float(scale)})


def recorded_autoencoder_config(config, recorded: dict):
    """``config`` with the autoencoder, training and image-size fields of an autoencoder checkpoint's
    recorded config, so that its train state restores."""
    return model_source.overlay_recorded(config, recorded, ("autoencoder", "training", "data.image_size"))


def open_latent_space(config, scale: float, log=print) -> LatentSpace:
    """The latent space of ``config.latent.autoencoder`` (its latest checkpoint, EMA weights) with
    latents multiplied by ``scale`` (a positive number; see :func:`encode_training_set` for measuring
    it). Raises :class:`ConfigError` for a work directory without an autoencoder checkpoint or one
    trained on images of another size than ``data.image_size``."""
    path = config.latent.autoencoder
    latest = model_source.latest_checkpoint(path)
    if latest is None:
        raise ConfigError(f"latent.autoencoder={path!r} has no checkpoint: train one there with "
                          "--mode=train_autoencoder")
    if latest.meta.get("kind") != KIND:
        raise ConfigError(f"latent.autoencoder={path!r} holds a {latest.meta.get('kind', 'diffusion')} checkpoint, "
                          "not an autoencoder's (--mode=train_autoencoder)")
    ae_config = recorded_autoencoder_config(config, latest.meta["config"])
    if ae_config.data.image_size != config.data.image_size:
        raise ConfigError(f"data.image_size={config.data.image_size} but the autoencoder in {path} was trained on "
                          f"{ae_config.data.image_size}x{ae_config.data.image_size} images")
    experiment = AutoencoderExperiment(ae_config, int(latest.meta["channels"]))
    state, _ = checkpoint.restore(latest.manager, experiment.abstract_state(), latest.step)
    latest.manager.close()
    model, params = experiment.model, state.ema_params
    f, h, c = model.downsampling_factor, config.data.image_size, model.latent_channels
    shape = (h // f, h // f, c)
    encode_mean = jax.jit(lambda p, images: model.apply({"params": p}, preprocess(images, None), method="encode")[0])
    decode = jax.jit(lambda p, z: model.apply({"params": p}, z, method="decode"))
    info = {"autoencoder": str(path), "autoencoder_step": int(latest.step), "scale_factor": float(scale),
            "latent_shape": list(shape)}
    log(f"latent diffusion: the {shape[0]}x{shape[1]}x{shape[2]} latents of the autoencoder in {path} "
        f"(step {latest.step}, f={f}), scaled by {scale:.5g}")
    return LatentSpace(float(scale), shape, experiment.image_shape, lambda images: encode_mean(params, images),
                       lambda z: decode(params, z), info)


def _encode(encode: Callable, source) -> tuple[np.ndarray, np.ndarray]:
    """All images of ``source`` through ``encode`` in chunks of :data:`ENCODE_BATCH` (one compiled
    shape): ``(latents, labels)``."""
    def chunk(c, indices):
        images, labels = source[indices]
        return encode(np.asarray(images)), np.asarray(labels)

    latents, labels = map_chunks(chunk, np.arange(len(source)), ENCODE_BATCH)
    return latents.astype(np.float32), labels.astype(np.int32)


def encode_training_set(config, source, log=print):
    """``(space, latent_source)`` for training on the latents of ``source``: the :class:`LatentSpace` and
    an in-memory source of the scaled latents with the images' labels. The scale is ``config``'s
    ``latent.scale_factor`` (a resumed run's: the checkpoint's, :func:`~jaxdiff.drivers.model_source.resolve`),
    else measured, ``1 / std`` of the unscaled latents, and then set on ``config`` (the run's resolved
    config, which the checkpoint records)."""
    scale = float(config.latent.scale_factor or 0.0)
    space = open_latent_space(config, scale or 1.0, log if scale else lambda *_: None)
    if source.image_shape[-1] != space.image_shape[-1]:
        raise ConfigError(f"the autoencoder in {config.latent.autoencoder} takes {space.image_shape[-1]}-channel "
                          f"images, the data has {source.image_shape[-1]}")
    latents, labels = _encode(space.encode, source)
    if not scale:  # measured, as LDM: unit standard deviation
        scale = 1.0 / float(np.std(latents.astype(np.float64)))
        latents = latents * np.float32(scale)
        space = space.rescaled(scale)
        log(f"latent diffusion: the {'x'.join(map(str, space.shape))} latents of the autoencoder in "
            f"{config.latent.autoencoder}, scale factor {scale:.5g} measured (1 / std of {latents.size:,} values)")
        config.latent.scale_factor = scale
    data = ArraySource(latents, labels, source.num_classes, f"{source.name} latents",
                       getattr(source, "class_names", ()))
    return space, data
