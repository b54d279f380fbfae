"""Latent diffusion (Rombach et al. 2022): the diffusion model of a config trains and samples in the
latent space of the autoencoder that ``--mode=train_autoencoder`` trained in ``latent.autoencoder``.

The training set is encoded once per run (posterior means, the autoencoder's EMA weights: the same
latents every time, so resuming stays bit-exact) and multiplied by ``latent.scale_factor``; ``0``
measures it as ``1 / std`` of those latents (how LDM's 0.18215 was found for Stable Diffusion's
autoencoder) and the checkpoints record the value used, with the autoencoder's path and step. Samples
are divided by the scale and decoded, so grids, sample mode and eval mode see images.
"""

from __future__ import annotations

import copy
from typing import Callable, NamedTuple

import jax
import numpy as np

from jaxdiff.common import parallel
from jaxdiff.data import ArraySource, preprocess
from jaxdiff.drivers import model_source
from jaxdiff.drivers.autoencoder_experiment import KIND, AutoencoderExperiment
from jaxdiff.drivers.config_checks import ConfigError
from jaxdiff.training import checkpoint

ENCODE_BATCH = 256  # images per compiled encoder call


class LatentSpace(NamedTuple):
    """An autoencoder's latent space: ``scale`` (latents are ``scale * z``), ``shape`` ``(h, w, c)`` of
    the latents, ``image_shape`` ``(H, W, C)`` of the images, ``decode(latents) -> images in [-1, 1]``
    (compiled, the EMA weights bound), ``encode(uint8 images) -> latents`` (posterior means times
    ``scale``), and ``info`` (what checkpoints and sample files record: path, step, scale)."""

    scale: float
    shape: tuple
    image_shape: tuple
    decode: Callable
    encode: Callable
    info: dict


def recorded_autoencoder_config(config, recorded: dict):
    """``config`` with the autoencoder, training and image-size fields of an autoencoder checkpoint's
    recorded config, so that its train state restores."""
    out = copy.deepcopy(config)
    for block in ("autoencoder", "training"):
        for name, value in recorded.get(block, {}).items():
            if name in out[block]:
                out[block][name] = tuple(value) if isinstance(value, list) else value
    out.data.image_size = recorded["data"]["image_size"]
    return out


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
    decode = jax.jit(lambda p, z: model.apply({"params": p}, z / scale, method="decode"))
    info = {"autoencoder": str(path), "autoencoder_step": int(latest.step), "scale_factor": float(scale),
            "latent_shape": list(shape)}
    log(f"latent diffusion: the {shape[0]}x{shape[1]}x{shape[2]} latents of the autoencoder in {path} "
        f"(step {latest.step}, f={f}), scaled by {scale:.5g}")
    return LatentSpace(float(scale), shape, experiment.image_shape, lambda z: decode(params, z),
                       lambda images: scale * encode_mean(params, images), info)


def _encode(space_encode: Callable, source) -> tuple[np.ndarray, np.ndarray]:
    """All images of ``source`` through ``space_encode``, in batches: ``(latents, labels)``."""
    latents, labels = [], []
    for start in range(0, len(source), ENCODE_BATCH):
        images, batch_labels = source[np.arange(start, min(start + ENCODE_BATCH, len(source)))]
        latents.append(parallel.to_host(space_encode(np.asarray(images))))
        labels.append(np.asarray(batch_labels))
    return np.concatenate(latents).astype(np.float32), np.concatenate(labels).astype(np.int32)


def encode_training_set(config, source, recorded: dict | None, log=print):
    """``(config, space, latent_source)`` for training on the latents of ``source``: ``config`` with
    ``latent.scale_factor`` resolved (the checkpoint's when resuming, else the config's, else measured:
    ``1 / std`` of the unscaled latents), the :class:`LatentSpace`, and an in-memory source of the
    scaled latents with the images' labels."""
    scale = float((recorded or {}).get("latent", {}).get("scale_factor") or config.latent.scale_factor or 0.0)
    space = open_latent_space(config, scale or 1.0, log if scale else lambda *_: None)
    if source.image_shape[-1] != space.image_shape[-1]:
        raise ConfigError(f"the autoencoder in {config.latent.autoencoder} takes {space.image_shape[-1]}-channel "
                          f"images, the data has {source.image_shape[-1]}")
    latents, labels = _encode(space.encode, source)
    if not scale:  # measured, as LDM: unit standard deviation
        scale = 1.0 / float(np.std(latents.astype(np.float64)))
        latents = latents * np.float32(scale)
        space = space._replace(scale=scale, info={**space.info, "scale_factor": scale},
                               decode=_rescaled(space.decode, scale), encode=_rescaled_encode(space.encode, scale))
        log(f"latent diffusion: the {'x'.join(map(str, space.shape))} latents of the autoencoder in "
            f"{config.latent.autoencoder}, scale factor {scale:.5g} measured (1 / std of {latents.size:,} values)")
    out = copy.deepcopy(config)
    out.latent.scale_factor = scale
    data = ArraySource(latents, labels, source.num_classes, f"{source.name} latents",
                       getattr(source, "class_names", ()))
    return out, space, data


def _rescaled(decode: Callable, scale: float) -> Callable:
    """``decode`` (built for scale 1) for latents multiplied by ``scale``."""
    return lambda z: decode(z / scale)


def _rescaled_encode(encode: Callable, scale: float) -> Callable:
    return lambda images: scale * encode(images)

