"""What one configuration describes, built from the library: the network, the schedule tables,
the optimiser, the mesh and shardings, the compiled train step and the state initialiser.

This is the config-to-arguments adapter of the command line (and of anyone who drives jaxdiff with
a config file): every piece is a library call with explicit arguments (``jaxdiff.models``,
``jaxdiff.core``, ``jaxdiff.training``), and :class:`Experiment` is used alike by the train loop,
sample mode and eval mode.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import optax

from jaxdiff.common import parallel
from jaxdiff.data import preprocess
from jaxdiff.drivers.diffusion_config import family_from_config
from jaxdiff.models.denoiser import denoiser_apply, init_denoiser
from jaxdiff.models.dit import DIT_SIZES, DiT
from jaxdiff.models.unet import UNet
from jaxdiff.training.keys import INIT_STREAM, stream_key
from jaxdiff.training.optim import learning_rate_schedule, make_optimizer
from jaxdiff.training.state import TrainState, init_train_state
from jaxdiff.training.step import as_float, make_train_step


def unet_from_config(model_config, out_ch: int, num_classes: int = 0, dtype=jnp.float32) -> UNet:
    """The :class:`~jaxdiff.models.unet.UNet` of a ``config.model`` block (``downsample_padding=auto``
    is a new model's, ``same``; :func:`jaxdiff.drivers.model_source.configure` resolves it for a checkpoint)."""
    m = model_config
    padding = m.downsample_padding
    return UNet(ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
                attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout, out_ch=out_ch,
                num_classes=num_classes, num_heads=m.num_heads, groups=m.groups,
                dtype=dtype, remat=m.remat, downsample_padding="same" if padding == "auto" else padding,
                norm_eps=m.norm_eps, head_dim=m.head_dim, flip_sin_to_cos=m.flip_sin_to_cos,
                freq_shift=m.freq_shift)


def dit_from_config(model_config, out_ch: int, num_classes: int = 0, dtype=jnp.float32) -> DiT:
    """The :class:`~jaxdiff.models.dit.DiT` of a ``config.model`` block (``model.dit``; ``dit.size`` names
    the paper's depth, width and heads, else the three fields give them)."""
    d = model_config.dit
    depth, hidden, heads = DIT_SIZES[d.size] if d.size else (d.depth, d.hidden_size, d.num_heads)
    return DiT(patch_size=d.patch_size, hidden_size=hidden, depth=depth, num_heads=heads, mlp_ratio=d.mlp_ratio,
               out_ch=out_ch, num_classes=num_classes, learn_sigma=d.learn_sigma, dtype=dtype,
               remat=model_config.remat, attention_implementation=d.attention or None)


def build_model(config, channels: int, num_classes: int):
    """The denoiser of ``config.model`` (``backbone``: the U-Net or DiT) for images (or latents) with
    ``channels`` channels; conditional on ``num_classes`` labels when ``model.class_conditional``."""
    build = dit_from_config if config.model.backbone == "dit" else unet_from_config
    return build(config.model, out_ch=channels, num_classes=num_classes if config.model.class_conditional else 0,
                 dtype=jnp.dtype(config.training.dtype))


def learning_rate_from_config(training_config) -> optax.Schedule:
    """``training.learning_rate`` with ``training.warmup_steps`` of linear warm-up, then
    ``training.lr_schedule`` (cosine over ``lr_decay_steps``, 0 meaning the steps after the warm-up)."""
    tc = training_config
    decay_steps = tc.lr_decay_steps
    if tc.lr_schedule == "cosine" and not decay_steps:
        decay_steps = max(tc.num_train_steps - tc.warmup_steps, 1)
    return learning_rate_schedule(tc.learning_rate, tc.warmup_steps, decay=tc.lr_schedule, decay_steps=decay_steps)


def optimizer_from_config(training_config) -> optax.GradientTransformation:
    """The optimiser of a ``config.training`` block (clipping, Adam/AdamW, the warm-up schedule)."""
    tc = training_config
    return make_optimizer(learning_rate_from_config(tc), optimizer=tc.optimizer, b1=tc.adam_b1, b2=tc.adam_b2,
                          eps=tc.adam_eps, weight_decay=tc.weight_decay, grad_clip_norm=tc.grad_clip_norm)


def train_step_from_config(config, apply_fn, family, optimizer, num_classes: int, mesh=None, latent: bool = False):
    """:func:`jaxdiff.training.make_train_step` with the arguments a config gives (the family of
    ``config.diffusion``; uint8 batches scaled to [-1, 1] and flipped per ``data.random_flip`` inside
    the step, or with ``latent`` batches of latents taken as they are)."""
    tc = config.training
    return make_train_step(
        apply_fn, family, optimizer, ema_decay_rate=tc.ema_decay, ema_warmup=tc.ema_warmup,
        ema_stds=tuple(tc.ema_stds),
        num_classes=num_classes, label_dropout=tc.label_dropout,
        preprocess=as_float if latent else functools.partial(preprocess, random_flip=config.data.random_flip),
        seed=config.seed,
        grad_accum_steps=tc.grad_accum_steps, learning_rate_fn=learning_rate_from_config(tc), mesh=mesh)


class Experiment:
    """The compiled pieces of one configuration for images of ``channels`` channels and a dataset of
    ``num_classes`` classes: ``model`` (a Flax module), ``apply_fn``, ``family`` (its ``tables`` for the
    ddpm family, else ``None``), ``tx``, ``mesh``,
    ``state_sharding``, ``step`` (the jitted train step), :meth:`init`, :meth:`abstract_state`.

    With ``latent`` (a :class:`~jaxdiff.drivers.latent.LatentSpace`; ``channels`` its latent channels) the
    model denoises latents: ``image_shape`` is the latent shape and :meth:`decode` turns samples into
    images (the identity otherwise)."""

    kind = "diffusion"

    def __init__(self, config, channels: int, num_classes: int, mesh=None, latent=None):
        parallel.check_partitionable_rng()
        self.config = config
        pc = config.parallel
        self.mesh = mesh or parallel.make_mesh(pc.num_devices)
        parallel.check_batch_divides(config.training.batch_size, self.mesh,
                                     accum_steps=config.training.grad_accum_steps)
        self.num_classes = num_classes
        self.latent = latent
        self.image_shape = tuple(latent.shape) if latent else (config.data.image_size, config.data.image_size, channels)
        self.model = build_model(config, channels, num_classes)
        self.apply_fn = denoiser_apply(self.model)
        self.family = family_from_config(config.diffusion)
        self.tables = self.family.tables
        self.tx = optimizer_from_config(config.training)
        init = lambda key: init_train_state(init_denoiser(self.model, key, self.image_shape), self.tx,  # noqa: E731
                                            num_ema_profiles=len(config.training.ema_stds))
        shapes = jax.eval_shape(init, jax.random.key(0))
        self.state_sharding = parallel.state_shardings(shapes, self.mesh, pc.shard_params, pc.shard_min_size)
        self._shapes = shapes
        rep, batch = parallel.replicated(self.mesh), parallel.batch_sharded(self.mesh)
        step = train_step_from_config(config, self.apply_fn, self.family, self.tx, self.model.num_classes, self.mesh,
                                      latent=latent is not None)
        self.step = jax.jit(step, in_shardings=(self.state_sharding, batch),
                            out_shardings=(self.state_sharding, rep), donate_argnums=0)
        # The key is made inside the program, so every process builds the same state without inputs.
        self._init = jax.jit(lambda: init(stream_key(config.seed, INIT_STREAM, 0)),
                             out_shardings=self.state_sharding)
        # Compiled sampling programs of this model (sample grids during training reuse them).
        self.sampler_cache: dict = {}

    def init(self) -> TrainState:
        return self._init()

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and shardings of the state, without computing it."""
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            self._shapes, self.state_sharding)

    def decode(self, samples):
        """Samples as images in [-1, 1]: decoded by the latent space's autoencoder, else as they are."""
        return samples if self.latent is None else self.latent.decode(samples)

    def meta(self) -> dict:
        """What a checkpoint records besides the state: the config, the data's shape (the latents'
        channels for latent diffusion, then also the latent space's ``latent`` info) and the kind."""
        meta = {"config": json.loads(self.config.to_json()), "channels": self.image_shape[-1],
                "num_classes": self.num_classes, "kind": self.kind}
        if self.latent is not None:
            meta["latent"] = self.latent.info
        return meta
