"""The Diffusion Transformer, DiT (Peebles & Xie 2023), in Flax Linen, NHWC: a drop-in denoiser.

It follows the calling convention of :mod:`jaxdiff.models.denoiser` (``module(x [B,H,W,C], t [B],
y [B] | None, train=False) -> [B,H,W,out_ch]``) and computes what the official code
(``facebookresearch/DiT``, ``models.py``) computes::

  tokens = PatchEmbed(x) + pos            conv, kernel = stride = patch p: [B, N = HW/p^2, D], pos fixed
  c = MLP(freq(t)) [+ Embed(y)]           freq: 256 sinusoids [cos, sin]; MLP: Linear, SiLU, Linear
      [+ MLP_span(freq(span))]            span_embedding only; the MLP's last Linear zero-initialised
  depth x DiTBlock(tokens, c)             adaLN-Zero: SiLU(c) -> Linear(D, 6D) = shift/scale/gate x 2
      h += gate_msa * Attention(modulate(LN(h), shift_msa, scale_msa))
      h += gate_mlp * MLP(modulate(LN(h), shift_mlp, scale_mlp))      MLP: Linear, GELU(tanh), Linear
  FinalLayer: modulate(LN(h), SiLU(c) -> Linear(D, 2D)) -> Linear(D, p^2 out) -> unpatchify

LayerNorms have no affine parameters (eps 1e-6). The initialisation is the official
``initialize_weights``: xavier-uniform Linears with zero biases, the patch embedding xavier-uniform
on its flattened ``[p p C, D]`` kernel, the label table and the timestep MLP normal(0.02), and every
adaLN modulation and the final linear zero, so at init each block is the identity and the network
outputs zeros. Sizes (:data:`DIT_SIZES`, :func:`dit_from_name`): S, B, L, XL with patch 2, 4 or 8;
DiT-XL/2 on 32x32x4 latents with 1000 classes and ``learn_sigma`` has 674,834,720 parameters
(675,129,632 with the 294,912 entries of the fixed positional table the official code keeps as a
frozen ``nn.Parameter`` and counts).

**Differences from the official code.** Class-label dropout for classifier-free guidance is done by
jaxdiff's train step, not in the module: the table always has ``num_classes + 1`` rows (row
``num_classes`` is the null label; ``y=None`` means null), and ``num_classes=0`` has no table at all
(``c = t_emb``). ``learn_sigma=True`` gives the final linear the ``2 out_ch`` output channels of DiT
checkpoints (epsilon first, then the variance interpolation ``v`` of Nichol & Dhariwal), but jaxdiff
trains no variance: the module returns the epsilon half only, ``[B, H, W, out_ch]`` either way (the
variance columns then get no gradient and stay at their zero init). The positional table is
recomputed for each input grid (:func:`sincos_pos_embed_2d`), so any ``H, W`` that are multiples of
``p`` work, not only the trained size. ``span_embedding=True`` (not in the official code) adds a
second time, the span of the jump (MeanFlow's ``t - r``, a shortcut model's step ``d``), through
its own MLP ``span_embedder_mlp_0``, ``span_embedder_mlp_2`` added to ``c`` before the label; the
last Linear starts at zero, so a network trained without it computes the same function once completed
(:func:`jaxdiff.models.denoiser.with_span_params`). Without it the parameters are the official ones.

**Parameter names** map one-to-one to the official state dict; a torch ``Linear.weight [out, in]``
is the transposed flax ``kernel [in, out]``, ``bias`` is ``bias``. For diffusers'
``DiTTransformer2DModel``, ``T{i}`` stands for ``transformer_blocks.{i}`` and ``E{i}`` for
``transformer_blocks.{i}.norm1.emb``:

================================  ======================================  ==============================================
jaxdiff ``params``                official DiT ``state_dict()``           diffusers ``DiTTransformer2DModel``
================================  ======================================  ==============================================
``x_embedder/kernel [p,p,C,D]``   ``x_embedder.proj.weight [D,C,p,p]``    ``pos_embed.proj.weight``
                                  (``kernel = weight.permute(2,3,1,0)``)
``x_embedder/bias``               ``x_embedder.proj.bias``                ``pos_embed.proj.bias``
(none: computed)                  ``pos_embed [1,N,D]`` (fixed)           (a non-persistent buffer: not saved)
``t_embedder_mlp_0``              ``t_embedder.mlp.0``                    ``E{i}.timestep_embedder.linear_1`` (every i)
``t_embedder_mlp_2``              ``t_embedder.mlp.2``                    ``E{i}.timestep_embedder.linear_2`` (every i)
``y_embedder/embedding [K+1,D]``  ``y_embedder.embedding_table.weight``   ``E{i}.class_embedder.embedding_table.weight``
``blocks_{i}/adaLN_modulation``   ``blocks.{i}.adaLN_modulation.1``       ``T{i}.norm1.linear``
``blocks_{i}/attn_qkv [D,3D]``    ``blocks.{i}.attn.qkv``                 ``T{i}.attn1.to_q``, ``to_k``, ``to_v``
                                                                          (concatenated on the output axis, q k v)
``blocks_{i}/attn_proj``          ``blocks.{i}.attn.proj``                ``T{i}.attn1.to_out.0``
``blocks_{i}/mlp_fc1``            ``blocks.{i}.mlp.fc1``                  ``T{i}.ff.net.0.proj``
``blocks_{i}/mlp_fc2``            ``blocks.{i}.mlp.fc2``                  ``T{i}.ff.net.2``
``final_layer_adaLN_modulation``  ``final_layer.adaLN_modulation.1``      ``proj_out_1``
``final_layer_linear``            ``final_layer.linear``                  ``proj_out_2``
================================  ======================================  ==============================================

The output features of ``adaLN_modulation`` are (shift, scale, gate) for attention then for the MLP,
those of ``attn_qkv`` are ``(3, heads, head_dim)``, those of ``final_layer_linear`` are ``(p, p,
channels)`` and of ``final_layer_adaLN_modulation`` (shift, scale), in all three layouts. diffusers
keeps a copy of the timestep and label embedders in every block (the final layer reads block 0's)
and differs from the official network in two numerical details a diffusers loader must account for:
its ``Timesteps(downscale_freq_shift=1)`` divides by ``half - 1`` instead of ``half`` in the
frequencies, and its MLP LayerNorm (``norm3``) uses the config's ``norm_eps`` (1e-5 by default)
instead of 1e-6.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.models import layers
from jaxdiff.models.unet import check_span, span_times, timestep_embedding

# DiT size name -> (depth, hidden_size, num_heads), as in the paper's Table 1.
DIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
PATCH_SIZES = (2, 4, 8)  # the patch sizes of the paper's models (any positive patch works)
FREQUENCY_EMBEDDING_SIZE = 256  # the timestep embedder's sinusoid count
LAYER_NORM_EPS = 1e-6

xavier_uniform = nn.initializers.xavier_uniform()
# The official code initialises the patch embedding like a Linear on the flattened kernel:
# fan_in = p p C, fan_out = D (a conv initialiser would count fan_out = p p D).
patch_embed_init = nn.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=3)
normal_002 = nn.initializers.normal(0.02)
zero_init = nn.initializers.zeros


def check_image_size(image_size, patch_size: int) -> None:
    """Raise a one-line ``ValueError`` unless the image height and width (``image_size``: an int, or
    ``(H, W)``) are positive multiples of ``patch_size``."""
    sizes = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if patch_size <= 0:
        raise ValueError(f"patch_size={patch_size} must be positive")
    if any(s <= 0 or s % patch_size for s in sizes):
        shown = image_size if isinstance(image_size, int) else "x".join(map(str, sizes))
        raise ValueError(f"image size {shown} is not a multiple of patch_size={patch_size}: the DiT cuts NHWC "
                         f"images into {patch_size}x{patch_size} patches")


def check_architecture(hidden_size: int, num_heads: int) -> None:
    """Raise a one-line ``ValueError`` unless ``num_heads`` divides ``hidden_size`` and ``hidden_size``
    is a multiple of 4 (the 2-D sin-cos table splits it into four equal parts)."""
    if num_heads <= 0 or hidden_size % num_heads:
        raise ValueError(f"num_heads={num_heads} does not divide hidden_size={hidden_size}")
    if hidden_size <= 0 or hidden_size % 4:
        raise ValueError(f"hidden_size={hidden_size} must be a positive multiple of 4 "
                         "(the 2-D sin-cos positional embedding)")


def patchify(x: jax.Array, p: int) -> jax.Array:
    """``[B, H, W, C] -> [B, (H/p)(W/p), p p C]``: token ``i (W/p) + j`` holds the patch
    ``x[:, i p:(i+1) p, j p:(j+1) p, :]`` flattened in (row, column, channel) order."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: jax.Array, p: int, h: int, w: int, c: int) -> jax.Array:
    """The inverse of :func:`patchify`: ``[B, (h/p)(w/p), p p c] -> [B, h, w, c]`` (the official
    ``unpatchify``, ``nhwpqc -> nhpwqc``, in NHWC)."""
    b = tokens.shape[0]
    x = tokens.reshape(b, h // p, w // p, p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def sincos_pos_embed_2d(dim: int, grid_size) -> np.ndarray:
    """The fixed positional table ``[gh gw, dim]`` (float32) of the official
    ``get_2d_sincos_pos_embed`` (from MAE), for a ``grid_size`` (int, or ``(gh, gw)``) grid of tokens.

    Token ``n = i gw + j`` (row ``i``, column ``j``) gets ``[sin(j w), cos(j w), sin(i w), cos(i w)]``
    with ``w_k = 10000^(-k / (dim / 4))``, ``k < dim / 4``: the column's embedding comes first (the
    official meshgrid puts the width coordinate first). Computed in float64 in NumPy, a constant.
    """
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    if dim % 4:
        raise ValueError(f"the 2-D sin-cos positional embedding needs a multiple of 4 channels, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    rows, cols = np.meshgrid(np.arange(gh, dtype=np.float64), np.arange(gw, dtype=np.float64), indexing="ij")

    def embed(pos):
        out = pos.reshape(-1)[:, None] * omega[None, :]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([embed(cols), embed(rows)], axis=1).astype(np.float32)


def timestep_frequency_embedding(t: jax.Array, dim: int = FREQUENCY_EMBEDDING_SIZE,
                                 max_period: float = 10000.0) -> jax.Array:
    """DiT's (GLIDE's) sinusoidal embedding of ``t [B]`` (integer steps or float times), ``[B, dim]``:
    ``freqs_k = exp(-ln(max_period) k / half)`` for ``k < half = dim // 2``, ``[cos(t freqs),
    sin(t freqs)]`` (zero-padded when ``dim`` is odd), in float32."""
    return timestep_embedding(t, dim, max_period, flip_sin_to_cos=True, freq_shift=0.0)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """adaLN modulation of tokens ``x [B, N, D]`` by per-example ``shift, scale [B, D]``:
    ``x (1 + scale) + shift``."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


def layer_norm(x: jax.Array, eps: float = LAYER_NORM_EPS) -> jax.Array:
    """LayerNorm over the last axis without affine parameters, in float32:
    ``(x - mean) / sqrt(var + eps)`` with the biased variance (``torch.nn.LayerNorm``)."""
    x = x.astype(jnp.float32)
    centred = x - jnp.mean(x, axis=-1, keepdims=True)
    return centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)


class DiTBlock(nn.Module):
    """One DiT block with adaLN-Zero conditioning. ``__call__(x [B, N, D], c [B, D]) -> [B, N, D]``::

        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = Linear(D, 6D)(SiLU(c))
        x = x + gate_msa * proj(attention(qkv(modulate(LN(x), shift_msa, scale_msa))))
        x = x + gate_mlp * fc2(GELU_tanh(fc1(modulate(LN(x), shift_mlp, scale_mlp))))

    ``attention`` is ``jax.nn.dot_product_attention`` (softmax(q k^T / sqrt(head_dim)) v) over
    ``[B, N, num_heads, head_dim]``. The modulation starts at zero: the block is the identity at init.
    """

    hidden_size: int
    num_heads: int
    mlp_ratio: float = 4.0
    dtype: jnp.dtype = jnp.float32
    attention_implementation: str | None = None
    jvp: bool = False

    @nn.compact
    def __call__(self, x, c):
        d, heads = self.hidden_size, self.num_heads
        b, n, _ = x.shape
        dense = lambda features, name, init=xavier_uniform: layers.Dense(  # noqa: E731
            features, init, self.dtype, self.jvp, name=name)
        mod = dense(6 * d, "adaLN_modulation", zero_init)(nn.silu(c))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)

        h = modulate(layer_norm(x), shift_msa, scale_msa)
        qkv = dense(3 * d, "attn_qkv")(h).reshape(b, n, 3, heads, d // heads)
        h = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2],
                                         implementation=self.attention_implementation)
        h = dense(d, "attn_proj")(h.reshape(b, n, d))
        x = x + gate_msa[:, None, :] * h

        h = modulate(layer_norm(x), shift_mlp, scale_mlp)
        h = nn.gelu(dense(int(d * self.mlp_ratio), "mlp_fc1")(h), approximate=True)
        h = dense(d, "mlp_fc2")(h)
        return x + gate_mlp[:, None, :] * h


class DiT(nn.Module):
    """Diffusion Transformer. ``__call__(x [B,H,W,C], t [B], y [B] int or None, train, span [B] or None)
    -> [B,H,W,out_ch]``.

    ``H`` and ``W`` must be multiples of ``patch_size`` (:func:`check_image_size`); the input channel
    count is ``x``'s. ``t`` is an integer table index or a float time (the family's network time),
    embedded as it is. ``num_classes > 0`` adds a label table of ``num_classes + 1`` rows, row
    ``num_classes`` the null label of classifier-free guidance (``y=None`` means null). ``train`` is
    accepted for the calling convention and changes nothing (DiT has no dropout). The output is
    float32.

    The defaults are DiT-XL/2's sizes on 4-channel latents, unconditional and without the variance
    channels; the released DiT-XL/2 is ``dit_from_name("XL/2", out_ch=4, num_classes=1000,
    learn_sigma=True)``.
    """

    patch_size: int = 2
    """Side ``p`` of the square patches that become tokens (2, 4 or 8 in the paper); ``N = HW / p^2``."""
    hidden_size: int = 1152
    """Token width ``D`` (S 384, B 768, L 1024, XL 1152)."""
    depth: int = 28
    """Number of DiT blocks (S 12, B 12, L 24, XL 28)."""
    num_heads: int = 16
    """Attention heads; ``head_dim = hidden_size / num_heads`` (64 or 72 in the paper)."""
    mlp_ratio: float = 4.0
    """The MLP's hidden width is ``int(hidden_size * mlp_ratio)``."""
    out_ch: int = 4
    """Channels of the output (the image's or latent's channels: the epsilon, x0 or v prediction)."""
    num_classes: int = 0
    """0: unconditional; else a label table of ``num_classes + 1`` rows, the last the null label."""
    learn_sigma: bool = False
    """Give the final linear ``2 out_ch`` channels as DiT checkpoints do (epsilon, then the learned
    variance); the module still returns only the first ``out_ch`` (jaxdiff trains no variance)."""
    dtype: jnp.dtype = jnp.float32
    """Compute dtype of the matmuls, convolution and attention (``jnp.bfloat16`` with float32
    parameters); the residual stream, LayerNorm statistics and modulation stay float32."""
    remat: bool = False
    """Rematerialise each block in the backward pass (``nn.remat``): less memory, more compute."""
    attention_implementation: str | None = None
    """``jax.nn.dot_product_attention``'s ``implementation``: ``None`` lets JAX choose (XLA in JAX
    0.10), ``"cudnn"`` asks for cuDNN's fused flash attention (NVIDIA GPUs, bfloat16 or float16
    ``dtype``), ``"xla"`` forces XLA's."""
    span_embedding: bool = False
    """A second time input ``span [B]`` (network-time units; ``None`` means 0, a scalar is broadcast):
    ``c += span_embedder_mlp_2(SiLU(span_embedder_mlp_0(freq(span))))``, the last Linear
    zero-initialised. False: the official parameters, and ``span`` must be ``None``."""
    jvp: bool = False
    """Layers that ``jax.jvp`` can differentiate (:mod:`jaxdiff.models.layers`; same parameters and values)."""

    @nn.compact
    def __call__(self, x, t, y=None, train: bool = False, span=None):
        del train  # no dropout in DiT; label dropout is the train step's
        b, h, w, _ = x.shape
        p, d = self.patch_size, self.hidden_size
        check_image_size((h, w), p)
        check_architecture(d, self.num_heads)
        check_span(self, span)
        dense = lambda features, name, init=xavier_uniform: layers.Dense(  # noqa: E731
            features, init, self.dtype, self.jvp, name=name)

        tokens = layers.Conv(d, (p, p), strides=(p, p), padding="VALID", kernel_init=patch_embed_init,
                             dtype=self.dtype, jvp=self.jvp, name="x_embedder")(x)
        tokens = tokens.reshape(b, (h // p) * (w // p), d).astype(jnp.float32)
        tokens = tokens + jnp.asarray(sincos_pos_embed_2d(d, (h // p, w // p)))[None]

        def time_mlp(times, prefix, last_init):
            emb = dense(d, f"{prefix}_mlp_0", normal_002)(timestep_frequency_embedding(times))
            return dense(d, f"{prefix}_mlp_2", last_init)(nn.silu(emb)).astype(jnp.float32)

        c = time_mlp(t, "t_embedder", normal_002)
        if self.span_embedding:  # zero at init: the function of the same parameters without the branch
            c = c + time_mlp(span_times(t, span), "span_embedder", zero_init)
        if self.num_classes > 0:
            if y is None:
                y = jnp.full((b,), self.num_classes, jnp.int32)
            c = c + nn.Embed(self.num_classes + 1, d, embedding_init=normal_002, name="y_embedder")(y)

        block = nn.remat(DiTBlock) if self.remat else DiTBlock
        for i in range(self.depth):
            tokens = block(d, self.num_heads, self.mlp_ratio, self.dtype, self.attention_implementation,
                           self.jvp, name=f"blocks_{i}")(tokens, c)

        channels = self.out_ch * (2 if self.learn_sigma else 1)
        shift, scale = jnp.split(dense(2 * d, "final_layer_adaLN_modulation", zero_init)(nn.silu(c)), 2, axis=-1)
        out = dense(p * p * channels, "final_layer_linear", zero_init)(modulate(layer_norm(tokens), shift, scale))
        out = unpatchify(out, p, h, w, channels)
        return out[..., :self.out_ch].astype(jnp.float32)  # learn_sigma: the epsilon half


# The DiT attributes that give the network its function and its parameters' shapes (out_ch and
# num_classes come from the data; dtype, remat and attention_implementation change neither).
ARCHITECTURE_FIELDS = ("patch_size", "hidden_size", "depth", "num_heads", "mlp_ratio", "learn_sigma")


def dit_from_name(name: str, **fields) -> DiT:
    """The paper's model ``name`` (``"XL/2"``, ``"DiT-S/8"``, ...: a :data:`DIT_SIZES` key and a patch
    size) as a :class:`DiT`, the other fields (``out_ch``, ``num_classes``, ``learn_sigma``, ``dtype``,
    ...) from ``fields``."""
    match = re.fullmatch(r"(?:DiT-)?(S|B|L|XL)/(\d+)", name)
    if not match:
        raise ValueError(f"unknown DiT model {name!r}: expected SIZE/PATCH with SIZE one of "
                         f"{', '.join(DIT_SIZES)} and PATCH the patch size (2, 4 or 8 in the paper), e.g. XL/2")
    depth, hidden_size, num_heads = DIT_SIZES[match.group(1)]
    return DiT(patch_size=int(match.group(2)), hidden_size=hidden_size, depth=depth, num_heads=num_heads,
               **fields)
