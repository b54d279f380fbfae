"""The noise-prediction U-Net of DDPM (Ho et al. 2020), in Flax Linen, NHWC.

With ``ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1`` on
32x32x3 images this is exactly the DDPM CIFAR-10 network (35,746,307 parameters), laid out as in
the original ``diffusion_tf/models/unet.py``:

  temb = Dense(4ch)(swish(Dense(4ch)(sinusoidal(t, ch))))   [+ Embed(num_classes + 1, 4ch)(y)]
         [+ Dense(4ch, zero init)(swish(Dense(4ch)(sinusoidal(span, ch))))]   (span_embedding only)
  conv_in -> per level: num_res_blocks x (ResBlock [+ Attention]) then a stride-2 conv (not at the last)
  middle: ResBlock, Attention, ResBlock
  per level, reversed: (num_res_blocks + 1) x (concat skip -> ResBlock [+ Attention]), then
  nearest-neighbour x2 + conv3x3 (not at the first)
  GroupNorm -> swish -> conv3x3 (zero-initialised) to the image channels.

``span_embedding=True`` conditions the network on a second time, the span of the jump it is asked
to make (MeanFlow's ``t - r``, a shortcut model's step ``d``; network-time units, like ``t``): its
own MLP ``span_dense0``, ``span_dense1`` on the embedding of ``t``'s kind, whose last layer starts
at zero, so a fresh span branch adds exactly 0 and a network trained without it computes the same
function once completed (:func:`jaxdiff.models.denoiser.with_span_params`).
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models import layers

# DDPM's default_init: variance scaling, fan_avg, uniform (scale 1; 1e-10 stands in for "zero").
default_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
zero_init = nn.initializers.zeros


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0, *, flip_sin_to_cos: bool = False,
                       freq_shift: float = 1.0) -> jax.Array:
    """Sinusoidal embedding of timesteps, shape ``[B, dim]``.

    ``freq_k = exp(-ln(max_period) k / (half - freq_shift))`` for ``k < half = dim // 2``;
    ``emb = [sin(t freq), cos(t freq)]`` (``[cos, sin]`` with ``flip_sin_to_cos``; zero-padded when
    ``dim`` is odd). The defaults are DDPM's; the two switches are diffusers' ``Timesteps``.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift))
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]
    parts = [jnp.sin(args), jnp.cos(args)]
    emb = jnp.concatenate(parts[::-1] if flip_sin_to_cos else parts, axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def num_groups(channels: int, groups: int) -> int:
    """The largest group count ``<= groups`` that divides ``channels`` (32 for the DDPM widths)."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


class ResBlock(nn.Module):
    """GroupNorm -> swish -> conv3x3, + Dense(swish(temb)), GroupNorm -> swish -> dropout -> conv3x3 (zero init).

    A 1x1 convolution maps the input to ``out_ch`` when the channel count changes.
    """

    out_ch: int
    dropout: float = 0.0
    groups: int = 32
    norm_eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32
    jvp: bool = False

    @nn.compact
    def __call__(self, x, temb, train: bool):
        conv = lambda ch, k, init, name: layers.Conv(ch, (k, k), kernel_init=init,  # noqa: E731
                                                    dtype=self.dtype, jvp=self.jvp, name=name)
        norm_swish = lambda c, name: layers.GroupNorm(num_groups(c, self.groups), self.norm_eps,  # noqa: E731
                                                      swish=True, dtype=self.dtype, jvp=self.jvp, name=name)
        h = conv(self.out_ch, 3, default_init, "conv1")(norm_swish(x.shape[-1], "norm1")(x))
        temb_proj = nn.Dense(self.out_ch, kernel_init=default_init, dtype=self.dtype, name="temb_proj")
        h = layers.bias_adder(self.jvp)(h, temb_proj(nn.swish(temb)))  # + per example [B, C]
        h = norm_swish(self.out_ch, "norm2")(h)
        h = layers.Dropout(self.dropout, deterministic=not train)(h)
        h = conv(self.out_ch, 3, zero_init, "conv2")(h)
        if x.shape[-1] != self.out_ch:
            x = conv(self.out_ch, 1, default_init, "nin_shortcut")(x)
        return x + h


class AttnBlock(nn.Module):
    """Self-attention over the ``H*W`` positions: GroupNorm, 1x1 q/k/v, softmax(q k^T / sqrt(d)) v,
    1x1 output projection (zero init), residual. One head in DDPM.

    ``num_heads`` heads, or ``c // head_dim`` heads of ``head_dim`` channels when ``head_dim > 0``
    (diffusers' ``attention_head_dim``: the head count then grows with the level's channels)."""

    num_heads: int = 1
    groups: int = 32
    norm_eps: float = 1e-6
    head_dim: int = 0
    dtype: jnp.dtype = jnp.float32
    jvp: bool = False

    @nn.compact
    def __call__(self, x):
        b, hgt, wid, c = x.shape
        if self.head_dim and c % self.head_dim:
            raise ValueError(f"head_dim={self.head_dim} does not divide the {c} channels of an attention block")
        elif c % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} does not divide the {c} channels of an attention block")
        num_heads = c // self.head_dim if self.head_dim else self.num_heads
        h = layers.GroupNorm(num_groups(c, self.groups), self.norm_eps, dtype=self.dtype, jvp=self.jvp,
                             name="norm")(x)
        h = h.reshape(b, hgt * wid, c)
        heads = lambda name: layers.Dense(c, default_init, self.dtype,  # noqa: E731
                                          jvp=self.jvp, name=name)(h).reshape(b, hgt * wid, num_heads, c // num_heads)
        out = jax.nn.dot_product_attention(heads("q"), heads("k"), heads("v"))
        out = layers.Dense(c, zero_init, self.dtype, jvp=self.jvp, name="proj_out")(out.reshape(b, hgt * wid, c))
        return x + out.reshape(b, hgt, wid, c)


def check_image_size(image_size: int, ch_mult: Sequence[int]) -> None:
    """Raise ``ValueError`` unless ``image_size`` (an image height or width) halves cleanly
    ``len(ch_mult) - 1`` times."""
    factor = 2 ** (len(ch_mult) - 1)
    if image_size <= 0 or image_size % factor:
        raise ValueError(
            f"image size {image_size} cannot be downsampled {len(ch_mult) - 1} times by the U-Net "
            f"(ch_mult={tuple(ch_mult)}): it must be a positive multiple of {factor} (images are NHWC)")


def check_span(module, span) -> None:
    """Raise a one-line ``ValueError`` when ``span`` is given to a ``module`` built without
    ``span_embedding``."""
    if span is not None and not module.span_embedding:
        raise ValueError(f"span given to a {type(module).__name__} built without span_embedding: build it with "
                         "span_embedding=True (a second time input) or pass span=None")


def span_times(t: jax.Array, span) -> jax.Array:
    """The span input of a ``span_embedding`` network: ``span`` broadcast to the shape of ``t``, and
    ``None`` as span 0."""
    return jnp.zeros_like(t) if span is None else jnp.broadcast_to(jnp.asarray(span), jnp.shape(t))


DOWNSAMPLE_PADDINGS = ("same", "symmetric")


def downsample_pads(padding: str) -> str | tuple:
    """The stride-2 3x3 convolution's padding: ``same`` is TensorFlow's ``SAME`` (DDPM; on the U-Net's
    even sizes 0 before and 1 after each axis, diffusers' ``downsample_padding=0``), ``symmetric`` is
    1 on each side (diffusers' ``downsample_padding=1``; jaxdiff before 0.4)."""
    if padding == "same":
        return "SAME"
    if padding == "symmetric":
        return ((1, 1), (1, 1))
    raise ValueError(f"downsample_padding must be one of {', '.join(DOWNSAMPLE_PADDINGS)}, got {padding!r}")


class UNet(nn.Module):
    """DDPM U-Net. ``__call__(x [B,H,W,C], t [B], y [B] int or None, train, span [B] or None) -> [B,H,W,out_ch]``.

    ``num_classes > 0`` adds a class embedding with ``num_classes + 1`` rows: row ``num_classes`` is the
    null label used for classifier-free guidance. ``y=None`` on a conditional model means "null".
    The defaults are DDPM's network; ``downsample_padding``, ``norm_eps``, ``head_dim``,
    ``flip_sin_to_cos`` and ``freq_shift`` cover diffusers' ``UNet2DModel`` layouts
    (:mod:`jaxdiff.interop.diffusers_unet`).

    ``span_embedding``: ``temb += span_dense1(swish(span_dense0(sinusoidal(span, ch))))``, the same
    sinusoids as ``t`` and ``span_dense1`` zero-initialised; ``span=None`` means span 0, a scalar
    ``span`` is broadcast to ``t``'s shape. Without it (the default) the parameters and the function
    are DDPM's and ``span`` must be ``None``. ``jvp``: layers that ``jax.jvp`` can differentiate
    (:mod:`jaxdiff.models.layers`; same parameters and values).
    """

    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    out_ch: int = 3
    num_classes: int = 0
    num_heads: int = 1
    groups: int = 32
    dtype: jnp.dtype = jnp.float32
    remat: bool = False
    downsample_padding: str = "same"
    norm_eps: float = 1e-6
    head_dim: int = 0
    flip_sin_to_cos: bool = False
    freq_shift: float = 1.0
    span_embedding: bool = False
    jvp: bool = False

    @nn.compact
    def __call__(self, x, t, y=None, train: bool = False, span=None):
        for size in x.shape[1:3]:  # height and width
            check_image_size(size, self.ch_mult)
        check_span(self, span)
        res_block = nn.remat(ResBlock, static_argnums=(3,)) if self.remat else ResBlock
        block = lambda ch, name: res_block(ch, self.dropout, self.groups, self.norm_eps, self.dtype,  # noqa: E731
                                           self.jvp, name=name)
        attn = lambda name: AttnBlock(self.num_heads, self.groups, self.norm_eps, self.head_dim,  # noqa: E731
                                      self.dtype, self.jvp, name=name)
        conv3 = lambda ch, name, init=default_init: layers.Conv(ch, (3, 3), kernel_init=init,  # noqa: E731
                                                                dtype=self.dtype, jvp=self.jvp, name=name)
        down_pads = downsample_pads(self.downsample_padding)

        def time_mlp(times, prefix, last_init):
            emb = timestep_embedding(times, self.ch, flip_sin_to_cos=self.flip_sin_to_cos,
                                     freq_shift=self.freq_shift)
            emb = nn.Dense(self.ch * 4, kernel_init=default_init, dtype=self.dtype, name=f"{prefix}_dense0")(emb)
            return nn.Dense(self.ch * 4, kernel_init=last_init, dtype=self.dtype,
                            name=f"{prefix}_dense1")(nn.swish(emb))

        temb = time_mlp(t, "temb", default_init)
        if self.span_embedding:  # zero at init: the function of the same parameters without the branch
            temb = temb + time_mlp(span_times(t, span), "span", zero_init)
        if self.num_classes > 0:
            if y is None:
                y = jnp.full((x.shape[0],), self.num_classes, jnp.int32)
            temb = temb + nn.Embed(self.num_classes + 1, self.ch * 4, dtype=self.dtype,
                                   name="class_embed")(y)

        x = x.astype(self.dtype)
        hs = [conv3(self.ch, "conv_in")(x)]
        levels = len(self.ch_mult)
        for level, mult in enumerate(self.ch_mult):
            for i in range(self.num_res_blocks):
                h = block(self.ch * mult, f"down_{level}_block_{i}")(hs[-1], temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = attn(f"down_{level}_attn_{i}")(h)
                hs.append(h)
            if level != levels - 1:
                hs.append(layers.Conv(hs[-1].shape[-1], (3, 3), strides=(2, 2), padding=down_pads,
                                      kernel_init=default_init, dtype=self.dtype, jvp=self.jvp,
                                      name=f"down_{level}_downsample")(hs[-1]))

        h = hs[-1]
        h = block(h.shape[-1], "mid_block_1")(h, temb, train)
        h = attn("mid_attn")(h)
        h = block(h.shape[-1], "mid_block_2")(h, temb, train)

        for level in reversed(range(levels)):
            for i in range(self.num_res_blocks + 1):
                h = block(self.ch * self.ch_mult[level], f"up_{level}_block_{i}")(
                    jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = attn(f"up_{level}_attn_{i}")(h)
            if level != 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest-neighbour x2
                h = conv3(h.shape[-1], f"up_{level}_upsample")(h)
        assert not hs

        h = layers.GroupNorm(num_groups(h.shape[-1], self.groups), self.norm_eps, swish=True, dtype=self.dtype,
                             jvp=self.jvp, name="norm_out")(h)
        return conv3(self.out_ch, "conv_out", zero_init)(h).astype(jnp.float32)


# The U-Net attributes that give the network its function and its parameters' shapes, under the names
# config.model has for them (dropout, dtype and remat change neither).
ARCHITECTURE_FIELDS = ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "num_heads", "groups",
                       "downsample_padding", "norm_eps", "head_dim", "flip_sin_to_cos", "freq_shift")


def architecture(unet: UNet) -> dict:
    """The ``config.model`` fields that build ``unet``: :data:`ARCHITECTURE_FIELDS` and
    ``class_conditional`` (whether it has a class embedding)."""
    fields = {name: getattr(unet, name) for name in ARCHITECTURE_FIELDS}
    fields.update(ch_mult=tuple(unet.ch_mult), attn_resolutions=tuple(unet.attn_resolutions),
                  class_conditional=unet.num_classes > 0)
    return fields


def count_params(params) -> int:
    """Total number of scalars in a parameter pytree."""
    return sum(int(math.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
