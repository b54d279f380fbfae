"""Hugging Face diffusers ``UNet2DModel`` folders <-> jaxdiff's :class:`~jaxdiff.models.unet.UNet`.

A diffusers model folder is ``config.json`` (the constructor's arguments) and
``diffusion_pytorch_model.safetensors`` (the state dict; older hub folders have only the ``.bin``,
which is read without torch too); a pipeline folder has them under ``unet/``
beside ``scheduler/scheduler_config.json`` and ``model_index.json``. A folder jaxdiff exported also has
``jaxdiff.json`` at its root (:mod:`jaxdiff.interop.process_file`): the diffusion process exactly, for
every family, which wins over the scheduler config when jaxdiff reads it back. The DDPM layouts (for example
google/ddpm-cifar10-32, google/ddpm-celebahq-256) and the general ones map onto the same network:

==========================================  ===============================================
diffusers                                   jaxdiff ``UNet``
==========================================  ===============================================
``block_out_channels``                      ``ch = boc[0]``, ``ch_mult = boc / ch``
``layers_per_block``                        ``num_res_blocks``
``AttnDownBlock2D`` / ``AttnUpBlock2D``     ``attn_resolutions`` (``sample_size / 2^level``)
``attention_head_dim``                      ``head_dim`` (``None``: one head, as DDPM)
``norm_num_groups``, ``norm_eps``           ``groups``, ``norm_eps``
``downsample_padding`` 0 / 1                ``downsample_padding`` ``same`` / ``symmetric``
``flip_sin_to_cos``, ``freq_shift``         the same (DDPM: ``False``, ``1``)
``num_class_embeds``                        ``num_classes + 1`` (the last row: the null label)
==========================================  ===============================================

Weights: torch conv ``[O, I, kh, kw]`` <-> ``[kh, kw, I, O]``, linear ``[out, in]`` <-> ``[in, out]``,
GroupNorm ``weight`` <-> ``scale``; old hub checkpoints' attention names ``query / key / value /
proj_attn`` are read as ``to_q / to_k / to_v / to_out.0`` (as diffusers renames them). Every field
jaxdiff cannot reproduce (another block type, Fourier time, scale-shift norm, ...) is a
:class:`~jaxdiff.interop.safetensors_file.WeightsError` naming it, never a silently different network.
"""

from __future__ import annotations

import functools
import os
import re
from typing import NamedTuple

import jax
import numpy as np

from jaxdiff.common import paths, torch_pickle
from jaxdiff.common.errors import one_line
from jaxdiff.interop import process_file, safetensors_file, state_dicts
from jaxdiff.interop.diffusers_scheduler import PIPELINES
from jaxdiff.interop.state_dicts import LEAF_NAMES, read_json, write_json
from jaxdiff.interop.safetensors_file import WeightsError
from jaxdiff.models.denoiser import init_denoiser
from jaxdiff.models.unet import UNet

DIFFUSERS_VERSION = "0.42.1"  # the release the layout and the parity fixtures were checked with
CONFIG_NAME, WEIGHTS_NAME = "config.json", "diffusion_pytorch_model.safetensors"
TORCH_WEIGHTS_NAME = "diffusion_pytorch_model.bin"  # older hub folders: a torch.save'd state dict
SCHEDULER_NAME = "scheduler_config.json"

# UNet2DModel.__init__'s defaults (diffusers 0.42): what a config.json that omits a field means.
UNET_DEFAULTS = {
    "sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0, "flip_sin_to_cos": True,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896), "layers_per_block": 2, "mid_block_scale_factor": 1,
    "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0, "act_fn": "silu",
    "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None, "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None, "num_class_embeds": None,
    "num_train_timesteps": None,
}
# Fields whose only supported value is the one jaxdiff's network computes.
_FIXED = {"center_input_sample": False, "time_embedding_type": "positional", "mid_block_type": "UNetMidBlock2D",
          "downsample_type": "conv", "upsample_type": "conv", "resnet_time_scale_shift": "default",
          "add_attention": True, "class_embed_type": None, "mid_block_scale_factor": 1}
_DOWN, _UP = ("DownBlock2D", "AttnDownBlock2D"), ("UpBlock2D", "AttnUpBlock2D")
_PADDINGS = {0: "same", 1: "symmetric"}

# jaxdiff module names -> diffusers module names
_TOP = {"conv_in": "conv_in", "temb_dense0": "time_embedding.linear_1", "temb_dense1": "time_embedding.linear_2",
        "class_embed": "class_embedding", "norm_out": "conv_norm_out", "conv_out": "conv_out",
        "mid_block_1": "mid_block.resnets.0", "mid_attn": "mid_block.attentions.0",
        "mid_block_2": "mid_block.resnets.1"}
_INNER = {"conv1": "conv1", "norm1": "norm1", "temb_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
          "nin_shortcut": "conv_shortcut", "norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v",
          "proj_out": "to_out.0"}
_BLOCK = re.compile(r"(down|up)_(\d+)_(block|attn|downsample|upsample)(?:_(\d+))?$")


class DiffusersUNet(NamedTuple):
    """A diffusers ``UNet2DModel`` read into jaxdiff: the ``unet`` module, its ``params``, the
    ``image_size`` and ``channels`` it was built for, and the raw ``scheduler`` config (``None`` when
    the folder has none); ``path`` is the folder read; ``process`` the ``config.diffusion`` fields of
    its ``jaxdiff.json`` (checked; ``None`` when it has none: a folder jaxdiff did not write)."""

    unet: UNet
    params: dict
    image_size: int
    channels: int
    scheduler: dict | None
    path: str
    process: dict | None = None


# ------------------------------------------------------------------------------------------ config


def _field(config: dict, name: str):
    return config[name] if name in config else UNET_DEFAULTS[name]


def unet_from_diffusers_config(config: dict, where: str = CONFIG_NAME) -> tuple[UNet, int]:
    """The jaxdiff :class:`UNet` that computes the diffusers ``UNet2DModel`` of ``config`` (a parsed
    ``config.json``), and its ``sample_size``. Raises :class:`WeightsError` naming the first field
    jaxdiff's network cannot reproduce, or (one line) what is malformed in a damaged file."""
    try:
        return _unet_from_config(config, where)
    except WeightsError:
        raise
    except (TypeError, ValueError, ZeroDivisionError, OverflowError, AttributeError, KeyError) as e:
        raise WeightsError(f"{where}: a malformed UNet2DModel config ({one_line(e)})") from None


def _unet_from_config(config: dict, where: str) -> tuple[UNet, int]:
    def unsupported(name, why):
        return WeightsError(f"{where}: {name}={_field(config, name)!r} is not supported: {why}")

    state_dicts.check_model_config(config, "UNet2DModel", UNET_DEFAULTS, DIFFUSERS_VERSION, where)
    for name in ("norm_num_groups", "layers_per_block", "in_channels", "out_channels"):
        value = _field(config, name)
        if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise unsupported(name, "it must be a positive integer")
    channels = _field(config, "block_out_channels")
    if not (isinstance(channels, list) and channels and all(isinstance(c, int) and not isinstance(c, bool)
                                                             and c > 0 for c in channels)):
        raise unsupported("block_out_channels", "it must be a list of positive integers")
    for name, value in _FIXED.items():
        if _field(config, name) != value:
            raise unsupported(name, f"jaxdiff's U-Net has {value!r} only")
    if _field(config, "act_fn") not in ("silu", "swish"):
        raise unsupported("act_fn", "jaxdiff's U-Net uses silu")
    channels, down, up = (list(_field(config, k)) for k in ("block_out_channels", "down_block_types",
                                                             "up_block_types"))
    levels = len(channels)
    if len(down) != levels or len(up) != levels:
        raise unsupported("down_block_types", f"needs one block type per entry of block_out_channels={channels} "
                                              "in down_block_types and up_block_types")
    for side, types, allowed in (("down_block_types", down, _DOWN), ("up_block_types", up, _UP)):
        for i, kind in enumerate(types):
            if kind not in allowed:
                raise WeightsError(f"{where}: {side}[{i}]={kind!r} is not supported: jaxdiff's U-Net has "
                                   f"{' and '.join(allowed)}")
    attention = [kind == "AttnDownBlock2D" for kind in down]
    if attention != [kind == "AttnUpBlock2D" for kind in reversed(up)]:
        raise unsupported("up_block_types", f"its attention levels must mirror down_block_types={down}")
    ch = channels[0]
    if any(c % ch for c in channels):
        raise unsupported("block_out_channels", f"every entry must be a multiple of the first, {ch}")
    groups = _field(config, "norm_num_groups")
    if any(c % groups for c in channels):
        raise unsupported("norm_num_groups", f"it must divide every entry of block_out_channels={channels}")
    if _field(config, "attn_norm_num_groups") not in (None, groups):
        raise unsupported("attn_norm_num_groups", f"jaxdiff's attention uses norm_num_groups={groups}")
    if _field(config, "time_embedding_dim") not in (None, 4 * ch):
        raise unsupported("time_embedding_dim", f"jaxdiff's time embedding has 4 x {ch} = {4 * ch} channels")
    if _field(config, "out_channels") != _field(config, "in_channels"):
        raise unsupported("out_channels", f"jaxdiff's U-Net predicts in_channels={_field(config, 'in_channels')} "
                                          "channels (no learned variance)")
    padding = _field(config, "downsample_padding")
    if padding not in _PADDINGS:
        raise unsupported("downsample_padding", "diffusers' Downsample2D pads 0 (SAME) or 1")
    size = _field(config, "sample_size")
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise unsupported("sample_size", "jaxdiff's images are square")
        size = size[0]
    if not isinstance(size, int) or size <= 0 or size % 2 ** (levels - 1):
        raise unsupported("sample_size", f"needs a positive multiple of {2 ** (levels - 1)} (where attention "
                                         "sits depends on it)")
    head_dim = _field(config, "attention_head_dim")
    if head_dim is not None and (not isinstance(head_dim, int) or any(c % head_dim for c, a in
                                                                       zip(channels, attention) if a)):
        raise unsupported("attention_head_dim", "it must divide the channels of every attention level")
    num_class_embeds = _field(config, "num_class_embeds")
    if num_class_embeds is not None and num_class_embeds < 2:
        raise unsupported("num_class_embeds", "jaxdiff's class embedding has num_classes + 1 >= 2 rows")
    unet = UNet(ch=ch, ch_mult=tuple(c // ch for c in channels), num_res_blocks=int(_field(config, "layers_per_block")),
                attn_resolutions=tuple(size // 2 ** level for level, a in enumerate(attention) if a),
                dropout=float(_field(config, "dropout")), out_ch=int(_field(config, "out_channels")),
                num_classes=num_class_embeds - 1 if num_class_embeds else 0, num_heads=1, groups=int(groups),
                downsample_padding=_PADDINGS[padding], norm_eps=float(_field(config, "norm_eps")),
                head_dim=int(head_dim or 0), flip_sin_to_cos=bool(_field(config, "flip_sin_to_cos")),
                freq_shift=float(_field(config, "freq_shift")))
    return unet, size


def config_from_unet(unet: UNet, image_size: int) -> dict:
    """The diffusers ``UNet2DModel`` config (``config.json``) of a jaxdiff :class:`UNet` for images of
    ``image_size``; raises :class:`WeightsError` for a network diffusers cannot express."""
    levels = len(unet.ch_mult)
    channels = [unet.ch * m for m in unet.ch_mult]
    resolutions = [image_size // 2 ** level for level in range(levels)]
    attention = [r in unet.attn_resolutions for r in resolutions]
    if any(c % unet.groups for c in channels):
        raise WeightsError(f"model.groups={unet.groups} does not divide every level's channels {channels}: "
                           "diffusers' GroupNorm needs it to")
    if unet.head_dim:
        head_dim = unet.head_dim
    elif unet.num_heads == 1:
        head_dim = None
    else:  # diffusers has a fixed head width: the same c / num_heads at every attention level
        widths = {c // unet.num_heads for c, a in zip(channels + [channels[-1]], attention + [True]) if a}
        if len(widths) != 1:
            raise WeightsError(f"model.num_heads={unet.num_heads} gives heads of {sorted(widths)} channels at "
                               "different levels: diffusers needs one width (set model.head_dim instead)")
        head_dim = widths.pop()
    if unet.freq_shift != int(unet.freq_shift):
        raise WeightsError(f"model.freq_shift={unet.freq_shift} is not an integer, as diffusers' is")
    padding = {v: k for k, v in _PADDINGS.items()}[unet.downsample_padding]
    return {
        "_class_name": "UNet2DModel", "_diffusers_version": DIFFUSERS_VERSION,
        **UNET_DEFAULTS,
        "sample_size": image_size, "in_channels": unet.out_ch, "out_channels": unet.out_ch,
        "freq_shift": int(unet.freq_shift), "flip_sin_to_cos": bool(unet.flip_sin_to_cos),
        "down_block_types": [_DOWN[a] for a in attention], "up_block_types": [_UP[a] for a in reversed(attention)],
        "block_out_channels": channels, "layers_per_block": unet.num_res_blocks, "downsample_padding": padding,
        "dropout": float(unet.dropout), "attention_head_dim": head_dim, "norm_num_groups": unet.groups,
        "norm_eps": float(unet.norm_eps), "num_class_embeds": unet.num_classes + 1 if unet.num_classes else None,
    }


# ----------------------------------------------------------------------------------------- weights


def diffusers_key(path: tuple[str, ...], num_levels: int) -> str:
    """The diffusers state-dict key of the jaxdiff parameter at ``path`` (module names, then the leaf)."""
    module, *inner, leaf = path
    if module in _TOP:
        key = _TOP[module]
    else:
        side, level, kind, index = _BLOCK.match(module).groups()
        prefix = f"{side}_blocks.{int(level) if side == 'down' else num_levels - 1 - int(level)}"
        key = {"block": f"{prefix}.resnets.{index}", "attn": f"{prefix}.attentions.{index}",
               "downsample": f"{prefix}.downsamplers.0.conv", "upsample": f"{prefix}.upsamplers.0.conv"}[kind]
    return ".".join([key, *(_INNER[name] for name in inner), LEAF_NAMES[leaf]])


def param_shapes(unet: UNet, image_size: int, channels: int) -> dict:
    """The parameter pytree of ``unet`` as ``jax.ShapeDtypeStruct`` leaves (nothing computed)."""
    return jax.eval_shape(lambda: init_denoiser(unet, jax.random.key(0), (image_size, image_size, channels)))


def params_from_state_dict(state_dict: dict, unet: UNet, image_size: int, channels: int,
                           where: str = WEIGHTS_NAME) -> dict:
    """jaxdiff parameters (float32 NumPy) of ``unet`` from a diffusers state dict; every key of the
    network must be present with its shape, and no other key may be left over."""
    return state_dicts.params_from_state_dict(state_dict, param_shapes(unet, image_size, channels),
                                              functools.partial(diffusers_key, num_levels=len(unet.ch_mult)), where)


def state_dict_from_params(params: dict, num_levels: int) -> dict[str, np.ndarray]:
    """The diffusers state dict (float32, PyTorch layouts) of jaxdiff U-Net parameters."""
    return state_dicts.state_dict_from_params(params, functools.partial(diffusers_key, num_levels=num_levels))


# ----------------------------------------------------------------------------------------- folders


def is_diffusers_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a diffusers model folder (``config.json``) or pipeline folder (``unet/config.json``)."""
    path = os.fspath(path)
    return os.path.isfile(os.path.join(path, CONFIG_NAME)) or os.path.isfile(os.path.join(path, "unet", CONFIG_NAME))


def read_weights(unet_dir: str) -> dict[str, np.ndarray]:
    """The state dict of a model folder: ``diffusion_pytorch_model.safetensors``, else the ``.bin``
    (read without torch by :mod:`jaxdiff.common.torch_pickle`)."""
    if os.path.isfile(os.path.join(unet_dir, WEIGHTS_NAME)):
        return safetensors_file.read(os.path.join(unet_dir, WEIGHTS_NAME))
    if os.path.isfile(os.path.join(unet_dir, TORCH_WEIGHTS_NAME)):
        try:
            return torch_pickle.load_state_dict(os.path.join(unet_dir, TORCH_WEIGHTS_NAME))
        except torch_pickle.TorchPickleError as e:
            raise WeightsError(str(e)) from None
    raise WeightsError(f"{unet_dir} has neither {WEIGHTS_NAME} nor {TORCH_WEIGHTS_NAME}")


def read_folder(path: str | os.PathLike) -> DiffusersUNet:
    """Read a diffusers ``UNet2DModel`` folder (or a pipeline folder with ``unet/``) into jaxdiff.

    The scheduler config is ``scheduler_config.json`` beside ``config.json`` or ``scheduler/`` beside
    ``unet/`` (None when absent); the process is that of ``jaxdiff.json`` at ``path`` (checked; None
    when absent). Raises :class:`WeightsError` (one line) for a missing, corrupt, truncated or
    mismatched file and for a layout jaxdiff cannot reproduce, before any compile."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise WeightsError(f"diffusers folder {path} does not exist")
    unet_dir = os.path.join(path, "unet") if os.path.isfile(os.path.join(path, "unet", CONFIG_NAME)) else path
    config_path = os.path.join(unet_dir, CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise WeightsError(f"{path} is not a diffusers model folder: it has no {CONFIG_NAME} (nor unet/{CONFIG_NAME})")
    process = process_file.read(path)
    unet, size = unet_from_diffusers_config(read_json(config_path), config_path)
    channels = unet.out_ch
    weights_path = os.path.join(unet_dir, WEIGHTS_NAME)
    params = params_from_state_dict(read_weights(unet_dir), unet, size, channels, weights_path)
    scheduler = None
    for candidate in (os.path.join(unet_dir, SCHEDULER_NAME), os.path.join(path, "scheduler", SCHEDULER_NAME)):
        if os.path.isfile(candidate):
            scheduler = read_json(candidate)
            break
    return DiffusersUNet(unet, params, size, channels, scheduler, path, process)


def write_folder(path: paths.PathLike, unet: UNet, params: dict, image_size: int,
                 scheduler: dict | None = None, process=None) -> None:
    """Write ``unet`` and ``params`` as a diffusers pipeline folder (local, or a ``gs://`` URL):
    ``unet/config.json``, ``unet/diffusion_pytorch_model.safetensors``; with a ``scheduler`` config
    ``scheduler/scheduler_config.json``, and for a ``DDPMScheduler`` ``model_index.json`` (a
    ``DDPMPipeline``: no diffusers pipeline runs a ``UNet2DModel`` with the others); with a ``process``
    (a ``config.diffusion`` mapping, ``target`` resolved) ``jaxdiff.json``. So
    ``UNet2DModel.from_pretrained(path, subfolder="unet")``, ``SchedulerClass.from_pretrained(path,
    subfolder="scheduler")`` and (ddpm) ``DDPMPipeline.from_pretrained(path)`` load it, and
    :func:`read_folder` reads the process back. What cannot be written is refused before anything is."""
    root = paths.as_path(path)
    config = config_from_unet(unet, image_size)
    content = process_file.record(process) if process is not None else None
    safetensors_file.write(root / "unet" / WEIGHTS_NAME, state_dict_from_params(params, len(unet.ch_mult)),
                           metadata={"format": "pt"})
    write_json(root / "unet" / CONFIG_NAME, config)
    if scheduler is not None:
        write_json(root / "scheduler" / SCHEDULER_NAME, scheduler)
    pipeline = PIPELINES.get(scheduler["_class_name"]) if scheduler is not None else None
    if pipeline is not None:
        write_json(root / "model_index.json",
                   {"_class_name": pipeline, "_diffusers_version": DIFFUSERS_VERSION,
                    "scheduler": ["diffusers", scheduler["_class_name"]], "unet": ["diffusers", "UNet2DModel"]})
    if content is not None:
        write_json(root / process_file.FILE_NAME, content)

