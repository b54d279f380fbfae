"""The KL autoencoder of latent diffusion (Rombach et al. 2022), as diffusers' ``AutoencoderKL``, NHWC.

With the defaults (``block_out_channels=(128, 256, 512, 512)``, ``layers_per_block=2``,
``latent_channels=4``, ``norm_num_groups=32``) this is Stable Diffusion's kl-f8 autoencoder
(83,653,863 parameters), computing what diffusers' ``AutoencoderKL`` computes on the same weights
(:mod:`jaxdiff.interop.diffusers_autoencoder` maps them). With ``L = len(block_out_channels)`` and
``boc = block_out_channels``; every GroupNorm has ``norm_num_groups`` groups and eps 1e-6 and is
followed by SiLU except the attention's:

  Encoder: conv3x3(boc[0]) -> per level l: layers_per_block x ResnetBlock(boc[l]), then (not at the
    last) pad 0 before / 1 after each spatial axis + conv3x3 stride 2 (diffusers' ``Downsample2D``
    with ``padding=0``) -> mid: ResnetBlock, Attention, ResnetBlock -> GroupNorm, SiLU,
    conv3x3(2 x latent_channels) (``double_z``: the mean and log-variance)
  quant_conv: conv1x1(2 x latent_channels)                              (``use_quant_conv``)
  post_quant_conv: conv1x1(latent_channels)                             (``use_post_quant_conv``)
  Decoder: conv3x3(boc[-1]) -> mid: ResnetBlock, Attention, ResnetBlock -> per level l from L-1 down
    to 0: (layers_per_block + 1) x ResnetBlock(boc[l]), then (not at level 0) nearest x2 + conv3x3
    -> GroupNorm, SiLU, conv3x3(out_channels)

ResnetBlock (no time embedding): ``x + conv3x3(silu(gn(conv3x3(silu(gn(x))))))``, with a 1x1
convolution on ``x`` when the channel count changes. Attention: GroupNorm, q/k/v projections, one
head of all channels (``num_heads`` otherwise), ``softmax(q k^T / sqrt(d)) v``, output projection,
residual (``mid_block_add_attention=False`` drops it). Images are downsampled by
``f = 2 ** (L - 1)``: ``[B, H, W, in_channels] -> latents [B, H / f, W / f, latent_channels]``.

The posterior is a diagonal Gaussian: :meth:`AutoencoderKL.encode` gives its ``mean`` and ``logvar``
(clipped to [-30, 20] as diffusers does), :func:`sample_posterior` draws from it, :func:`kl_divergence`
is its KL to ``N(0, I)``. Images are NHWC floats in [-1, 1]; the loss and train step are in
:mod:`jaxdiff.training.autoencoder_step`. A latent diffusion model trains on ``scaling_factor * z``
(:data:`SD_SCALING_FACTOR` for Stable Diffusion's autoencoder) so that latents have about unit variance.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models import layers
from jaxdiff.models.unet import AttnBlock, default_init, zero_init

NORM_EPS = 1e-6  # diffusers' Encoder and Decoder fix every GroupNorm's eps to this
LOGVAR_RANGE = (-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution clamps the log-variance to it
SD_SCALING_FACTOR = 0.18215  # Stable Diffusion's autoencoder: latents times this have about unit std
DOWN_PADS = ((0, 1), (0, 1))  # diffusers' Downsample2D(padding=0): F.pad(x, (0, 1, 0, 1)), then no padding


# ------------------------------------------------------------------------------------ posterior


def sample_posterior(mean: jax.Array, logvar: jax.Array, key: jax.Array) -> jax.Array:
    """A draw from the diagonal Gaussian posterior: ``z = mean + exp(logvar / 2) * eps``,
    ``eps ~ N(0, I)`` drawn from ``key`` with the shape of ``mean`` (float32)."""
    eps = jax.random.normal(key, mean.shape, jnp.float32)
    return mean.astype(jnp.float32) + jnp.exp(0.5 * logvar.astype(jnp.float32)) * eps


_draw_posterior = sample_posterior  # AutoencoderKL.__call__'s argument of the same name shadows it


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """``KL(N(mean, exp(logvar)) || N(0, I))`` per example, ``[B, ...] -> [B]``:
    ``0.5 * sum(mean^2 + exp(logvar) - 1 - logvar)`` over every axis but the first (diffusers'
    ``DiagonalGaussianDistribution.kl()``), in float32."""
    mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
    axes = tuple(range(1, mean.ndim))
    return 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar, axis=axes)


def psnr(x: jax.Array, y: jax.Array, data_range: float = 2.0) -> jax.Array:
    """Peak signal-to-noise ratio in dB per example, ``[B, ...] -> [B]``:
    ``10 log10(data_range^2 / mean((x - y)^2))``, the mean over every axis but the first
    (``data_range = 2`` for images in [-1, 1]; ``inf`` where ``x == y``)."""
    diff = x.astype(jnp.float32) - y.astype(jnp.float32)
    mse = jnp.mean(jnp.square(diff), axis=tuple(range(1, diff.ndim)))
    return 10.0 * jnp.log10(data_range ** 2 / mse)


# --------------------------------------------------------------------------------------- blocks


def _conv(ch: int, k: int, dtype, name: str | None, init=default_init, strides=(1, 1), padding="SAME"):
    return layers.Conv(ch, (k, k), strides=strides, padding=padding, kernel_init=init, dtype=dtype, name=name)


class ResnetBlock(nn.Module):
    """diffusers' ``ResnetBlock2D`` without time embedding: GroupNorm -> SiLU -> conv3x3 -> GroupNorm ->
    SiLU -> conv3x3 (zero init), plus the input (through a 1x1 convolution when the channel count
    changes)."""

    out_ch: int
    groups: int = 32
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        norm_swish = lambda name: layers.GroupNorm(self.groups, NORM_EPS, swish=True, dtype=self.dtype,  # noqa: E731
                                                   name=name)
        h = _conv(self.out_ch, 3, self.dtype, "conv1")(norm_swish("norm1")(x))
        h = _conv(self.out_ch, 3, self.dtype, "conv2", zero_init)(norm_swish("norm2")(h))
        if x.shape[-1] != self.out_ch:
            x = _conv(self.out_ch, 1, self.dtype, "nin_shortcut")(x)
        return x + h


def _mid_block(h, groups: int, attention: bool, num_heads: int, dtype):
    """diffusers' ``UNetMidBlock2D`` of the autoencoder: ResnetBlock, [Attention,] ResnetBlock, at the
    channels of ``h`` (called inside the parent's compact method: names ``mid_block_1``, ``mid_attn``,
    ``mid_block_2``)."""
    c = h.shape[-1]
    h = ResnetBlock(c, groups, dtype, name="mid_block_1")(h)
    if attention:
        h = AttnBlock(num_heads, groups, NORM_EPS, 0, dtype, name="mid_attn")(h)
    return ResnetBlock(c, groups, dtype, name="mid_block_2")(h)


class Encoder(nn.Module):
    """diffusers' ``Encoder`` of ``DownEncoderBlock2D`` levels: ``[B, H, W, C] -> [B, H/f, W/f, 2 x
    latent_channels]`` (``double_z``; ``latent_channels`` without it), ``f = 2 ** (L - 1)``."""

    block_out_channels: Sequence[int] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    mid_block_add_attention: bool = True
    num_heads: int = 1
    double_z: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        channels, groups = tuple(self.block_out_channels), self.norm_num_groups
        h = _conv(channels[0], 3, self.dtype, "conv_in")(x.astype(self.dtype))
        for level, ch in enumerate(channels):
            for i in range(self.layers_per_block):
                h = ResnetBlock(ch, groups, self.dtype, name=f"down_{level}_block_{i}")(h)
            if level != len(channels) - 1:
                h = _conv(ch, 3, self.dtype, f"down_{level}_downsample", strides=(2, 2), padding=DOWN_PADS)(h)
        h = _mid_block(h, groups, self.mid_block_add_attention, self.num_heads, self.dtype)
        h = layers.GroupNorm(groups, NORM_EPS, swish=True, dtype=self.dtype, name="norm_out")(h)
        out = 2 * self.latent_channels if self.double_z else self.latent_channels
        return _conv(out, 3, self.dtype, "conv_out")(h)


class Decoder(nn.Module):
    """diffusers' ``Decoder`` of ``UpDecoderBlock2D`` levels: ``[B, h, w, latent_channels] -> [B, f h,
    f w, out_channels]``."""

    block_out_channels: Sequence[int] = (128, 256, 512, 512)
    layers_per_block: int = 2
    out_channels: int = 3
    norm_num_groups: int = 32
    mid_block_add_attention: bool = True
    num_heads: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z):
        channels, groups = tuple(self.block_out_channels), self.norm_num_groups
        h = _conv(channels[-1], 3, self.dtype, "conv_in")(z.astype(self.dtype))
        h = _mid_block(h, groups, self.mid_block_add_attention, self.num_heads, self.dtype)
        for level in reversed(range(len(channels))):
            for i in range(self.layers_per_block + 1):
                h = ResnetBlock(channels[level], groups, self.dtype, name=f"up_{level}_block_{i}")(h)
            if level != 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest-neighbour x2
                h = _conv(channels[level], 3, self.dtype, f"up_{level}_upsample")(h)
        h = layers.GroupNorm(groups, NORM_EPS, swish=True, dtype=self.dtype, name="norm_out")(h)
        return _conv(self.out_channels, 3, self.dtype, "conv_out")(h)


# ---------------------------------------------------------------------------------- autoencoder


class AutoencoderKL(nn.Module):
    """The KL autoencoder: ``encode(x) -> (mean, logvar)``, ``decode(z) -> x``, and
    ``__call__(x, key=None, sample_posterior=True, train=False) -> (reconstruction, mean, logvar)``.

    The fields are diffusers' ``AutoencoderKL`` arguments of the same names (``num_heads`` aside:
    diffusers' mid-block attention has one head of all channels); the defaults are Stable
    Diffusion's kl-f8. Parameters are float32, computed in ``dtype``; ``mean``, ``logvar`` and the
    reconstruction come out float32. Call a method with ``model.apply({"params": params}, x,
    method="encode")``, or use :func:`autoencoder_apply` and :func:`init_autoencoder`.
    """

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: Sequence[int] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    mid_block_add_attention: bool = True
    num_heads: int = 1
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    dtype: Any = jnp.float32

    @property
    def downsampling_factor(self) -> int:
        """``f = 2 ** (len(block_out_channels) - 1)``: latents are ``H / f x W / f``."""
        return 2 ** (len(self.block_out_channels) - 1)

    def setup(self):
        channels = tuple(self.block_out_channels)
        if not channels:
            raise ValueError("AutoencoderKL.block_out_channels is empty: it needs one width per level")
        if any(c % self.norm_num_groups for c in channels):
            raise ValueError(f"AutoencoderKL.norm_num_groups={self.norm_num_groups} does not divide every entry of "
                             f"block_out_channels={channels}")
        if channels[-1] % self.num_heads:
            raise ValueError(f"AutoencoderKL.num_heads={self.num_heads} does not divide the mid block's "
                             f"{channels[-1]} channels")
        common = dict(block_out_channels=channels, layers_per_block=self.layers_per_block,
                      norm_num_groups=self.norm_num_groups, mid_block_add_attention=self.mid_block_add_attention,
                      num_heads=self.num_heads, dtype=self.dtype)
        self.encoder = Encoder(latent_channels=self.latent_channels, double_z=True, **common)
        self.decoder = Decoder(out_channels=self.out_channels, **common)
        self.quant_conv = (_conv(2 * self.latent_channels, 1, self.dtype, None) if self.use_quant_conv
                           else None)
        self.post_quant_conv = (_conv(self.latent_channels, 1, self.dtype, None)
                                if self.use_post_quant_conv else None)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``x [B, H, W, in_channels]`` -> the posterior's ``mean`` and ``logvar``, each ``[B, H', W',
        latent_channels]`` float32 (``H' = H / f`` for ``H`` a multiple of ``f``; diffusers' sizes
        otherwise); ``logvar`` clipped to [-30, 20]."""
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"AutoencoderKL takes in_channels={self.in_channels} channels, the images have "
                             f"{x.shape[-1]} (NHWC)")
        h = self.encoder(x)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        mean, logvar = jnp.split(h.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)

    def decode(self, z: jax.Array) -> jax.Array:
        """Latents ``z [B, h, w, latent_channels]`` -> images ``[B, f h, f w, out_channels]`` float32."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z.astype(self.dtype))
        return self.decoder(z).astype(jnp.float32)

    def __call__(self, x: jax.Array, key: jax.Array | None = None, sample_posterior: bool = True,
                 train: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Encode, take ``z`` (:func:`sample_posterior` from ``key`` when ``sample_posterior`` and a key is
        given; the posterior's mean otherwise, diffusers' ``sample_posterior=False``), decode.

        ``train`` changes nothing (the network has neither dropout nor batch statistics); it is there
        for the calling convention. Raises ``ValueError`` unless ``H`` and ``W`` are multiples of ``f``
        (the reconstruction would have another size)."""
        del train
        f = self.downsampling_factor
        if x.ndim != 4 or x.shape[1] % f or x.shape[2] % f:
            raise ValueError(f"AutoencoderKL with {len(self.block_out_channels)} levels needs NHWC images whose "
                             f"height and width are multiples of f={f}, got shape {tuple(x.shape)}")
        mean, logvar = self.encode(x)
        z = _draw_posterior(mean, logvar, key) if sample_posterior and key is not None else mean
        return self.decode(z), mean, logvar


AutoencoderApply = Callable  # apply(params, x, key=None) -> (reconstruction, mean, logvar)


def autoencoder_apply(module: AutoencoderKL) -> AutoencoderApply:
    """``apply(params, x, key=None) -> (reconstruction, mean, logvar)``: the reconstruction of a
    posterior sample drawn from ``key``, or of the posterior mean without one."""

    def apply(params, x, key=None):
        return module.apply({"params": params}, x, key, sample_posterior=key is not None)

    return apply


def init_autoencoder(module: AutoencoderKL, key: jax.Array, image_shape: tuple[int, int, int] | None = None):
    """Fresh parameters (the ``params`` pytree) of ``module``, built on a zero image of ``image_shape``
    ``(H, W, C)`` (the parameters do not depend on ``H, W``; default ``f x f x in_channels``)."""
    f = module.downsampling_factor
    shape = image_shape or (f, f, module.in_channels)
    return module.init({"params": key}, jnp.zeros((1, *shape), jnp.float32))["params"]
