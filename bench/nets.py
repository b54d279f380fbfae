"""The two benchmark networks, built the same way on both sides.

``cifar10``: the DDPM CIFAR-10 U-Net (ch 128, mult 1-2-2-2, 2 res blocks, attention at 16x16,
dropout 0.1), 32x32x3, training batch 16, 35,746,307 parameters. ``mnist``: a small U-Net of the
same family (the layout of configs/mnist.py at half the width: ch 32, mult 1-2-2, 2 res blocks,
attention at 14x14 and in the middle, dropout 0.1), 28x28x1, training batch 64, 1,623,169
parameters. jaxdiff builds :class:`jaxdiff.models.unet.UNet`; the reference side builds diffusers'
``UNet2DModel`` with the matching blocks (one attention head of the full width, GroupNorm
32 with eps 1e-6, conv downsampling, nearest + conv upsampling).
"""

from __future__ import annotations

NETS = {
    "mnist": dict(image_size=28, channels=1, train_batch=64, ch=32, ch_mult=(1, 2, 2),
                  num_res_blocks=2, attn_resolutions=(14,), dropout=0.1),
    "cifar10": dict(image_size=32, channels=3, train_batch=16, ch=128, ch_mult=(1, 2, 2, 2),
                    num_res_blocks=2, attn_resolutions=(16,), dropout=0.1),
}


def jax_unet(name: str, **overrides):
    """The jaxdiff U-Net for benchmark network ``name``."""
    from jaxdiff.models.unet import UNet
    n = NETS[name]
    kw = dict(ch=n["ch"], ch_mult=n["ch_mult"], num_res_blocks=n["num_res_blocks"],
              attn_resolutions=n["attn_resolutions"], dropout=n["dropout"], out_ch=n["channels"])
    kw.update(overrides)
    return UNet(**kw)


def torch_unet(name: str):
    """diffusers ``UNet2DModel`` with the same blocks as :func:`jax_unet`."""
    from diffusers import UNet2DModel
    n = NETS[name]
    size = n["image_size"]
    down, up = [], []
    for level in range(len(n["ch_mult"])):
        attn = (size >> level) in n["attn_resolutions"]
        down.append("AttnDownBlock2D" if attn else "DownBlock2D")
        up.insert(0, "AttnUpBlock2D" if attn else "UpBlock2D")
    return UNet2DModel(
        sample_size=size, in_channels=n["channels"], out_channels=n["channels"],
        block_out_channels=tuple(n["ch"] * m for m in n["ch_mult"]),
        layers_per_block=n["num_res_blocks"], down_block_types=tuple(down), up_block_types=tuple(up),
        dropout=n["dropout"], attention_head_dim=None, norm_num_groups=32, norm_eps=1e-6,
        flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, act_fn="silu")
