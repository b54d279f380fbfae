"""Hugging Face diffusers ``AutoencoderKL`` folders <-> jaxdiff's :class:`~jaxdiff.models.autoencoder.AutoencoderKL`.

A model folder is ``config.json`` and ``diffusion_pytorch_model.safetensors`` (or an older hub
folder's ``.bin``, read without torch); a Stable Diffusion pipeline folder has them under ``vae/``.
The config's fields are the module's fields of the same names; ``scaling_factor`` (0.18215 for
Stable Diffusion 1.x and 2.x, 0.13025 for SDXL) and ``sample_size`` are returned beside the module.
What jaxdiff does not compute is a one-line :class:`~jaxdiff.interop.safetensors_file.WeightsError`
naming the field: another block type than ``DownEncoderBlock2D`` / ``UpDecoderBlock2D``, another
activation than SiLU, ``shift_factor``, ``latents_mean`` or ``latents_std`` other than ``None``
(latent scaling by ``scaling_factor`` alone), an unknown field. ``force_upcast`` (a float16 switch of
diffusers' pipelines) changes nothing here and is read as anything, written ``True``.

Weights (jaxdiff path -> diffusers key; ``L`` levels):

==============================================  ==================================================
jaxdiff ``params``                              diffusers state dict
==============================================  ==================================================
``encoder/conv_in``, ``conv_out``               ``encoder.conv_in``, ``encoder.conv_out``
``encoder/norm_out``                            ``encoder.conv_norm_out``
``encoder/down_{l}_block_{j}``                  ``encoder.down_blocks.{l}.resnets.{j}``
``encoder/down_{l}_downsample``                 ``encoder.down_blocks.{l}.downsamplers.0.conv``
``{encoder,decoder}/mid_block_1``, ``_2``       ``{encoder,decoder}.mid_block.resnets.0``, ``.1``
``{encoder,decoder}/mid_attn``                  ``{encoder,decoder}.mid_block.attentions.0``
``decoder/up_{l}_block_{j}``                    ``decoder.up_blocks.{L-1-l}.resnets.{j}``
``decoder/up_{l}_upsample``                     ``decoder.up_blocks.{L-1-l}.upsamplers.0.conv``
``quant_conv``, ``post_quant_conv``             the same
resnet ``norm1 conv1 norm2 conv2 nin_shortcut``  ``norm1 conv1 norm2 conv2 conv_shortcut``
attention ``norm q k v proj_out``               ``group_norm to_q to_k to_v to_out.0``
==============================================  ==================================================

Tensors as for the U-Net (:func:`~jaxdiff.interop.state_dicts.to_torch_layout`): conv ``[O, I, kh,
kw]`` <-> ``[kh, kw, I, O]``, linear ``[out, in]`` <-> ``[in, out]``, GroupNorm ``weight`` <-> ``scale``;
old hub folders' attention names ``query / key / value / proj_attn`` are read as diffusers renames them.
"""

from __future__ import annotations

import functools
import os
import re
from typing import NamedTuple

import jax
import numpy as np

from jaxdiff.common import paths
from jaxdiff.interop import safetensors_file, state_dicts
from jaxdiff.interop.diffusers_unet import CONFIG_NAME, DIFFUSERS_VERSION, WEIGHTS_NAME, read_weights
from jaxdiff.interop.state_dicts import LEAF_NAMES, read_json, write_json
from jaxdiff.interop.safetensors_file import WeightsError
from jaxdiff.models.autoencoder import SD_SCALING_FACTOR, AutoencoderKL, init_autoencoder

CLASS_NAME = "AutoencoderKL"
SUBFOLDER = "vae"  # where a Stable Diffusion pipeline folder keeps its autoencoder

# AutoencoderKL.__init__'s defaults (diffusers 0.42): what a config.json that omits a field means.
AUTOENCODER_DEFAULTS = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",),
    "up_block_types": ("UpDecoderBlock2D",), "block_out_channels": (64,), "layers_per_block": 1, "act_fn": "silu",
    "latent_channels": 4, "norm_num_groups": 32, "sample_size": 32, "scaling_factor": SD_SCALING_FACTOR,
    "shift_factor": None, "latents_mean": None, "latents_std": None, "force_upcast": True, "use_quant_conv": True,
    "use_post_quant_conv": True, "mid_block_add_attention": True,
}
# Fields whose only supported value is the one jaxdiff computes.
_FIXED = {"shift_factor": None, "latents_mean": None, "latents_std": None}
_DOWN, _UP = "DownEncoderBlock2D", "UpDecoderBlock2D"
# The config fields that are AutoencoderKL's fields of the same name.
_FIELDS = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "latent_channels",
           "norm_num_groups", "use_quant_conv", "use_post_quant_conv", "mid_block_add_attention")

_TOP = {"conv_in": "conv_in", "conv_out": "conv_out", "norm_out": "conv_norm_out", "mid_block_1": "mid_block.resnets.0",
        "mid_attn": "mid_block.attentions.0", "mid_block_2": "mid_block.resnets.1"}
_INNER = {"conv1": "conv1", "norm1": "norm1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut",
          "norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_BLOCK = re.compile(r"(down|up)_(\d+)_(block|downsample|upsample)(?:_(\d+))?$")


class DiffusersAutoencoder(NamedTuple):
    """A diffusers ``AutoencoderKL`` read into jaxdiff: the ``autoencoder`` module, its ``params``, the
    config's ``sample_size`` and ``scaling_factor``; ``path`` is the folder read."""

    autoencoder: AutoencoderKL
    params: dict
    sample_size: int
    scaling_factor: float
    path: str


# ------------------------------------------------------------------------------------------ config


def _field(config: dict, name: str):
    return config[name] if name in config else AUTOENCODER_DEFAULTS[name]


def autoencoder_from_diffusers_config(config: dict, where: str = CONFIG_NAME) -> tuple[AutoencoderKL, int, float]:
    """The jaxdiff :class:`AutoencoderKL` that computes the diffusers ``AutoencoderKL`` of ``config`` (a
    parsed ``config.json``), its ``sample_size`` and ``scaling_factor``. Raises :class:`WeightsError`
    naming the first field jaxdiff cannot reproduce."""

    def unsupported(name, why):
        return WeightsError(f"{where}: {name}={_field(config, name)!r} is not supported: {why}")

    state_dicts.check_model_config(config, CLASS_NAME, AUTOENCODER_DEFAULTS, DIFFUSERS_VERSION, where)
    for name, value in _FIXED.items():
        if _field(config, name) != value:
            raise unsupported(name, f"jaxdiff scales latents by scaling_factor alone ({name}={value!r})")
    if _field(config, "act_fn") not in ("silu", "swish"):
        raise unsupported("act_fn", "jaxdiff's autoencoder uses silu")
    channels = _field(config, "block_out_channels")
    if (not isinstance(channels, (list, tuple)) or not channels
            or not all(isinstance(c, int) and c > 0 for c in channels)):
        raise unsupported("block_out_channels", "needs a non-empty list of positive integers")
    channels = tuple(channels)
    for side, kind in (("down_block_types", _DOWN), ("up_block_types", _UP)):
        types = list(_field(config, side))
        if len(types) != len(channels):
            raise unsupported(side, f"needs one block type per entry of block_out_channels={list(channels)}")
        for i, t in enumerate(types):
            if t != kind:
                raise WeightsError(f"{where}: {side}[{i}]={t!r} is not supported: jaxdiff's autoencoder has {kind} "
                                   "only")
    groups = _field(config, "norm_num_groups")
    if not isinstance(groups, int) or groups <= 0 or any(c % groups for c in channels):
        raise unsupported("norm_num_groups", f"it must divide every entry of block_out_channels={list(channels)}")
    for name in ("in_channels", "out_channels", "latent_channels", "layers_per_block"):
        value = _field(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "layers_per_block" else 1):
            raise unsupported(name, "needs a positive integer")
    size = _field(config, "sample_size")
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise unsupported("sample_size", "jaxdiff's images are square")
        size = size[0]
    if not isinstance(size, int) or size <= 0:
        raise unsupported("sample_size", "needs a positive integer")
    scaling = _field(config, "scaling_factor")
    if isinstance(scaling, bool) or not isinstance(scaling, (int, float)) or not scaling > 0:
        raise unsupported("scaling_factor", "needs a positive number")
    fields = {name: _field(config, name) for name in _FIELDS}
    fields.update(block_out_channels=channels, **{k: bool(fields[k]) for k in ("use_quant_conv", "use_post_quant_conv",
                                                                                "mid_block_add_attention")})
    return AutoencoderKL(**fields), size, float(scaling)


def config_from_autoencoder(autoencoder: AutoencoderKL, sample_size: int,
                            scaling_factor: float = SD_SCALING_FACTOR) -> dict:
    """The diffusers ``AutoencoderKL`` config (``config.json``) of a jaxdiff :class:`AutoencoderKL`;
    raises :class:`WeightsError` for a network diffusers cannot express."""
    channels = [int(c) for c in autoencoder.block_out_channels]
    if autoencoder.num_heads != 1:
        raise WeightsError(f"AutoencoderKL.num_heads={autoencoder.num_heads}: diffusers' autoencoder attention has "
                           "one head")
    if not channels or any(c % autoencoder.norm_num_groups for c in channels):
        raise WeightsError(f"AutoencoderKL.norm_num_groups={autoencoder.norm_num_groups} does not divide every entry "
                           f"of block_out_channels={channels}: diffusers' GroupNorm needs it to")
    return {
        "_class_name": CLASS_NAME, "_diffusers_version": DIFFUSERS_VERSION,
        **AUTOENCODER_DEFAULTS,
        **{name: getattr(autoencoder, name) for name in _FIELDS},
        "block_out_channels": channels, "down_block_types": [_DOWN] * len(channels),
        "up_block_types": [_UP] * len(channels), "sample_size": int(sample_size),
        "scaling_factor": float(scaling_factor),
    }


# ----------------------------------------------------------------------------------------- weights


def diffusers_key(path: tuple[str, ...], num_levels: int) -> str:
    """The diffusers state-dict key of the jaxdiff parameter at ``path`` (module names, then the leaf)."""
    part, *rest = path
    if part in ("quant_conv", "post_quant_conv"):
        return f"{part}.{LEAF_NAMES[rest[-1]]}"
    module, *inner, leaf = rest
    if module in _TOP:
        key = _TOP[module]
    else:
        side, level, kind, index = _BLOCK.match(module).groups()
        prefix = f"{side}_blocks.{int(level) if side == 'down' else num_levels - 1 - int(level)}"
        key = {"block": f"{prefix}.resnets.{index}", "downsample": f"{prefix}.downsamplers.0.conv",
               "upsample": f"{prefix}.upsamplers.0.conv"}[kind]
    return ".".join([part, key, *(_INNER[name] for name in inner), LEAF_NAMES[leaf]])


def param_shapes(autoencoder: AutoencoderKL) -> dict:
    """The parameter pytree of ``autoencoder`` as ``jax.ShapeDtypeStruct`` leaves (nothing computed)."""
    return jax.eval_shape(lambda: init_autoencoder(autoencoder, jax.random.key(0)))


def params_from_state_dict(state_dict: dict, autoencoder: AutoencoderKL, where: str = WEIGHTS_NAME) -> dict:
    """jaxdiff parameters (float32 NumPy) of ``autoencoder`` from a diffusers state dict; every key of
    the network must be present with its shape, and no other key may be left over."""
    key_of = functools.partial(diffusers_key, num_levels=len(autoencoder.block_out_channels))
    return state_dicts.params_from_state_dict(state_dict, param_shapes(autoencoder), key_of, where)


def state_dict_from_params(params: dict, num_levels: int) -> dict[str, np.ndarray]:
    """The diffusers state dict (float32, PyTorch layouts) of jaxdiff autoencoder parameters."""
    return state_dicts.state_dict_from_params(params, functools.partial(diffusers_key, num_levels=num_levels))


# ----------------------------------------------------------------------------------------- folders


def read_folder(path: str | os.PathLike) -> DiffusersAutoencoder:
    """Read a diffusers ``AutoencoderKL`` model folder (or a pipeline folder with ``vae/``) into jaxdiff.

    Raises :class:`WeightsError` (one line) for a missing, corrupt, truncated or mismatched file and
    for a layout jaxdiff cannot reproduce, before any compile."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise WeightsError(f"diffusers folder {path} does not exist")
    vae_dir = os.path.join(path, SUBFOLDER)
    model_dir = vae_dir if os.path.isfile(os.path.join(vae_dir, CONFIG_NAME)) else path
    config_path = os.path.join(model_dir, CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise WeightsError(f"{path} is not a diffusers model folder: it has no {CONFIG_NAME} (nor "
                           f"{SUBFOLDER}/{CONFIG_NAME})")
    autoencoder, size, scaling = autoencoder_from_diffusers_config(read_json(config_path), config_path)
    params = params_from_state_dict(read_weights(model_dir), autoencoder, os.path.join(model_dir, WEIGHTS_NAME))
    return DiffusersAutoencoder(autoencoder, params, size, scaling, path)


def write_folder(path: paths.PathLike, autoencoder: AutoencoderKL, params: dict, sample_size: int,
                 scaling_factor: float = SD_SCALING_FACTOR) -> None:
    """Write ``autoencoder`` and ``params`` as a diffusers model folder (local, or a ``gs://`` URL):
    ``config.json`` and ``diffusion_pytorch_model.safetensors``, which ``AutoencoderKL.from_pretrained(path)``
    loads. Nothing is written when diffusers cannot express the network."""
    root = paths.as_path(path)
    config = config_from_autoencoder(autoencoder, sample_size, scaling_factor)  # before anything is written
    state_dict = state_dict_from_params(params, len(autoencoder.block_out_channels))
    safetensors_file.write(root / WEIGHTS_NAME, state_dict, metadata={"format": "pt"})
    write_json(root / CONFIG_NAME, config)
