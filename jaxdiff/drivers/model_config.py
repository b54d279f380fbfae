"""The ``model`` block (``model.backbone`` and its fields: the U-Net's directly under ``model``, the
DiT's under ``model.dit``): its checks and the network it describes, both through the backbone
registry (:data:`jaxdiff.models.backbones.BACKBONES`)."""

from __future__ import annotations

import jax.numpy as jnp

from jaxdiff.common import paths
from jaxdiff.drivers.checks import (ConfigError, boolean, choice, library_check, number, path_string, positive,
                                    positive_ints)
from jaxdiff.models.backbones import BACKBONES, Backbone
from jaxdiff.models.dit import DIT_SIZES
from jaxdiff.models.unet import DOWNSAMPLE_PADDINGS


def _shown(value):
    return tuple(value) if isinstance(value, list) else value


def backbone_block(model_config, backbone: Backbone):
    """The block of ``model_config`` (a ``config.model``) that holds ``backbone``'s fields."""
    node = model_config
    for part in backbone.config_block.split(".")[1:]:
        node = node[part]
    return node


def backbone_fields(model_config, backbone: Backbone) -> dict:
    """``{field: value}`` of ``backbone``'s fields in ``model_config`` (``downsample_padding=auto``,
    a new model's, is ``same``: :func:`jaxdiff.drivers.model_source.configure` resolves it for a checkpoint)."""
    block = backbone_block(model_config, backbone)
    fields = {name: _shown(block[name]) for name in backbone.fields}
    if fields.get("downsample_padding") == "auto":
        fields["downsample_padding"] = "same"
    return fields


def _named(backbone: Backbone, fields: dict, names) -> str:
    return ", ".join(f"{backbone.config_block}.{n}={fields[n]!r}" for n in names)


def check_fields(config) -> None:
    """The ``model.*`` fields of every backbone, each on its own."""
    mc = config.model
    positive_ints(mc.ch_mult, "model.ch_mult")
    positive_ints(mc.attn_resolutions, "model.attn_resolutions", allow_empty=True)
    positive(mc.num_heads, "model.num_heads")
    positive(mc.groups, "model.groups")
    boolean(mc.class_conditional, "model.class_conditional")
    boolean(mc.remat, "model.remat")
    choice(mc.downsample_padding, ("auto", *DOWNSAMPLE_PADDINGS), "model.downsample_padding")
    number(mc.norm_eps, "model.norm_eps", 0.0, low_open=True)
    positive(mc.head_dim, "model.head_dim", allow_zero=True)
    boolean(mc.flip_sin_to_cos, "model.flip_sin_to_cos")
    number(mc.freq_shift, "model.freq_shift")
    path_string(mc.init_from, "model.init_from")
    if mc.init_from and not paths.as_path(mc.init_from).exists():
        raise ConfigError(f"model.init_from={mc.init_from!r} does not exist (a diffusers folder or a jaxdiff workdir)")


def check_backbone(config) -> None:
    """``model.backbone`` and its fields; the image size each backbone needs (for latent diffusion the
    latent size is known only from the autoencoder's checkpoint: the network checks it when built)."""
    dc, mc = config.data, config.model
    choice(mc.backbone, tuple(BACKBONES), "model.backbone")
    dit = mc.dit
    choice(dit.size, ("", *DIT_SIZES), "model.dit.size")
    for field in ("depth", "hidden_size", "num_heads", "patch_size"):
        positive(dit[field], f"model.dit.{field}")
    number(dit.mlp_ratio, "model.dit.mlp_ratio", 0.0, low_open=True)
    boolean(dit.learn_sigma, "model.dit.learn_sigma")
    choice(dit.attention, ("", "xla", "cudnn"), "model.dit.attention")
    backbone = BACKBONES[mc.backbone]
    fields = backbone_fields(mc, backbone)
    named = backbone.architecture_check_fields(fields)
    if named:
        library_check(_named(backbone, fields, named), backbone.check_architecture, fields)
    if not config.latent.autoencoder:
        library_check(f"data.image_size={dc.image_size}, {_named(backbone, fields, backbone.image_size_fields)}",
                      backbone.check_image_size, dc.image_size, fields)
    if mc.init_from and not backbone.init_from:
        raise ConfigError("model.init_from loads U-Nets (diffusers UNet2DModel or jaxdiff workdirs); "
                          f"model.backbone={mc.backbone!r} has no such source")


def check(config) -> None:
    """Raise :class:`ConfigError` for the first invalid ``model.*`` value."""
    mc = config.model
    check_fields(config)
    check_backbone(config)
    positive(mc.ch, "model.ch")
    positive(mc.num_res_blocks, "model.num_res_blocks")
    if not 0.0 <= mc.dropout < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {mc.dropout}")


def model_from_config(model_config, out_ch: int, num_classes: int = 0, dtype=jnp.float32,
                      span_embedding: bool = False, jvp: bool = False):
    """The network of a ``config.model`` block (its ``backbone``'s module, built from its fields) with
    ``out_ch`` output channels, conditional on ``num_classes`` labels (0: unconditional); with a second
    time input (``span_embedding``) and forward-mode layers (``jvp``) for a few-step family, which
    backbones registered with ``two_times`` build."""
    backbone = BACKBONES[model_config.backbone]
    extra = {"span_embedding": span_embedding, "jvp": jvp} if backbone.two_times else {}
    if (span_embedding or jvp) and not backbone.two_times:
        raise ValueError(f"model.backbone={model_config.backbone!r} has no second time input (span) or "
                         "forward-mode layers, which few-step families need")
    return backbone.build(backbone_fields(model_config, backbone), out_ch, num_classes, dtype, model_config.remat,
                          **extra)


def build_model(config, channels: int, num_classes: int, family=None):
    """The denoiser of ``config.model`` (its ``backbone``) for images (or latents) with ``channels``
    channels; conditional on ``num_classes`` labels when ``model.class_conditional``; for a few-step
    ``family`` with its second time input and, when its loss needs ``jax.jvp``, forward-mode layers."""
    return model_from_config(config.model, out_ch=channels,
                             num_classes=num_classes if config.model.class_conditional else 0,
                             dtype=jnp.dtype(config.training.dtype),
                             span_embedding=bool(family is not None and family.two_times),
                             jvp=bool(family is not None and family.needs_jvp))
