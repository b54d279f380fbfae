"""The registry of denoiser networks: :data:`BACKBONES`, a backbone name (``config.model.backbone``)
-> :class:`Backbone`, the one place that knows what each network is, where its fields live in a
config, how to build it from plain field values, and what it supports (diffusers export, latent
diffusion, ``model.init_from``). A new backbone is one module in ``jaxdiff/models`` and one entry here.
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import jax.numpy as jnp

from jaxdiff.models import dit, unet


class Backbone(NamedTuple):
    """One denoiser network.

    ``module``: its Flax module class. ``config_block``: the config block of its fields (``model`` or
    ``model.dit``). ``fields``: the fields of that block :attr:`build` reads;
    ``architecture_fields``: those that define the function it computes (a checkpoint's recorded values
    win over a config's). ``build(fields, out_ch, num_classes, dtype, remat)``: the module from plain
    field values (a mapping of ``fields``); with ``two_times`` also ``span_embedding=`` (a second time
    input ``span``, a zero-initialised branch: :mod:`jaxdiff.models.denoiser`) and ``jvp=``.
    ``check_architecture(fields)`` and ``check_image_size(image_size, fields)`` raise a one-line
    ``ValueError`` in the library's terms; ``architecture_check_fields(fields)`` and
    ``image_size_fields`` are the fields each reads (named when it fails). ``diffusers_export``:
    ``--mode=export`` writes it as a diffusers ``UNet2DModel``; ``latent``: it can denoise an
    autoencoder's latents; ``init_from``: ``model.init_from`` sources (diffusers folders, jaxdiff work
    directories) build it. ``what``: how a message names it. ``two_times``: its builder also takes
    ``span_embedding`` and ``jvp`` (forward-mode layers), which few-step families need."""

    module: type
    config_block: str
    fields: tuple[str, ...]
    architecture_fields: tuple[str, ...]
    build: Callable
    check_architecture: Callable[[Mapping], None]
    architecture_check_fields: Callable[[Mapping], tuple[str, ...]]
    check_image_size: Callable[[int, Mapping], None]
    image_size_fields: tuple[str, ...]
    diffusers_export: bool
    latent: bool
    init_from: bool
    what: str
    two_times: bool = False


def _build_unet(f: Mapping, out_ch: int, num_classes: int = 0, dtype=jnp.float32, remat: bool = False,
                span_embedding: bool = False, jvp: bool = False) -> unet.UNet:
    return unet.UNet(ch=f["ch"], ch_mult=tuple(f["ch_mult"]), num_res_blocks=f["num_res_blocks"],
                     attn_resolutions=tuple(f["attn_resolutions"]), dropout=f["dropout"], out_ch=out_ch,
                     num_classes=num_classes, num_heads=f["num_heads"], groups=f["groups"], dtype=dtype,
                     remat=remat, downsample_padding=f["downsample_padding"], norm_eps=f["norm_eps"],
                     head_dim=f["head_dim"], flip_sin_to_cos=f["flip_sin_to_cos"], freq_shift=f["freq_shift"],
                     span_embedding=span_embedding, jvp=jvp)


def dit_dimensions(f: Mapping) -> tuple[int, int, int]:
    """``(depth, hidden_size, num_heads)`` of DiT fields: those of ``size`` (:data:`~jaxdiff.models.dit.DIT_SIZES`,
    the paper's) when it is set, else the three fields."""
    return dit.DIT_SIZES[f["size"]] if f["size"] else (f["depth"], f["hidden_size"], f["num_heads"])


def _build_dit(f: Mapping, out_ch: int, num_classes: int = 0, dtype=jnp.float32, remat: bool = False,
               span_embedding: bool = False, jvp: bool = False) -> dit.DiT:
    depth, hidden, heads = dit_dimensions(f)
    return dit.DiT(patch_size=f["patch_size"], hidden_size=hidden, depth=depth, num_heads=heads,
                   mlp_ratio=f["mlp_ratio"], out_ch=out_ch, num_classes=num_classes, learn_sigma=f["learn_sigma"],
                   dtype=dtype, remat=remat, attention_implementation=f["attention"] or None,
                   span_embedding=span_embedding, jvp=jvp)


def _check_dit(f: Mapping) -> None:
    _, hidden, heads = dit_dimensions(f)
    dit.check_architecture(hidden, heads)


ORIGINAL = "unet"  # the backbone of the jaxdiff versions before model.backbone (their checkpoints record none)
BACKBONES: dict[str, Backbone] = {
    "unet": Backbone(
        module=unet.UNet, config_block="model", fields=(*unet.ARCHITECTURE_FIELDS, "dropout"),
        architecture_fields=unet.ARCHITECTURE_FIELDS, build=_build_unet,
        check_architecture=lambda f: None, architecture_check_fields=lambda f: (),
        check_image_size=lambda size, f: unet.check_image_size(size, f["ch_mult"]), image_size_fields=("ch_mult",),
        diffusers_export=True, latent=True, init_from=True, what="a U-Net", two_times=True),
    "dit": Backbone(
        module=dit.DiT, config_block="model.dit",
        fields=("size", "depth", "hidden_size", "num_heads", "patch_size", "mlp_ratio", "learn_sigma", "attention"),
        architecture_fields=("size", *dit.ARCHITECTURE_FIELDS),  # size names the paper's depth, width and heads
        build=_build_dit, check_architecture=_check_dit,
        architecture_check_fields=lambda f: ("size",) if f["size"] else ("hidden_size", "num_heads"),
        check_image_size=lambda size, f: dit.check_image_size(size, f["patch_size"]),
        image_size_fields=("patch_size",), diffusers_export=False, latent=True, init_from=False, what="a DiT",
        two_times=True),
}
