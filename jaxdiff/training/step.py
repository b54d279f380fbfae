"""The training step as a pure function of explicit arguments.

:func:`make_train_step` returns ``step(state, batch) -> (state, metrics)``, one optimizer update that
``jax.jit`` compiles into one program (with shardings and donated state when the drivers build it
over a mesh). Everything random in step ``n`` comes from :func:`jaxdiff.training.keys.step_keys`
``(seed, n)`` and is drawn for the global batch, so devices draw different noise, 8 devices compute
what 1 device computes (see :mod:`jaxdiff.common.parallel`), and a resumed run needs no saved RNG.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiff.core import families
from jaxdiff.core.families import Family
from jaxdiff.core.network_contract import check_denoiser_output, check_network_classes
from jaxdiff.core.schedules import DiffusionTables
from jaxdiff.training.keys import step_keys
from jaxdiff.training.optim import ema_decay, ema_update
from jaxdiff.training.posthoc_ema import power_ema_update, std_to_exponent
from jaxdiff.training.state import TrainState

ApplyFn = Callable  # apply(params, x_t, t, labels | None, dropout_key) -> network output
Preprocess = Callable  # preprocess(images, key) -> x0 float32 [B, H, W, C] in [-1, 1]


BATCH_KEYS = ("image", "label", "noise")  # what the step reads from a batch (make_train_step's Returns)


def as_float(images, key):
    """The default preprocessing: the batch is already ``x0`` (float in [-1, 1]); cast to float32.
    Integer images (uint8 0..255) are refused: they are not ``x0``."""
    del key
    images = jnp.asarray(images)
    if jnp.issubdtype(images.dtype, jnp.integer):
        raise ValueError(f"images of dtype {images.dtype}: the train step takes x0 as floats in [-1, 1]; scale "
                         "them (uint8: images / 127.5 - 1) or pass preprocess=jaxdiff.data.preprocess")
    return images.astype(jnp.float32)


def check_batch(batch: dict, num_classes: int) -> None:
    """``ValueError`` (one line) for a batch the step cannot read as documented: a key other than
    :data:`BATCH_KEYS`, no ``"image"``, or no ``"label"`` when ``num_classes > 0``."""
    keys = ", ".join(repr(k) for k in batch)
    unknown = [k for k in batch if k not in BATCH_KEYS]
    if unknown or "image" not in batch:
        raise ValueError(f"a batch with keys {keys}: the train step reads 'image' [B, H, W, C], 'label' int [B] "
                         "(with num_classes > 0) and, optionally, 'noise' (paired noise like 'image')")
    if num_classes and "label" not in batch:
        raise ValueError(f"num_classes={num_classes}, but the batch (keys {keys}) has no 'label' int [B]")


def check_x0(x0) -> None:
    """``ValueError`` unless the preprocessed batch ``x0`` is floating point (its dtype is static: this
    runs when the step is traced)."""
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        raise ValueError(f"preprocess returned images of dtype {x0.dtype}: x0 must be floats in [-1, 1] "
                         "(jaxdiff.data.preprocess scales uint8 images)")


def micro_batches(tree, k: int, mesh=None):
    """Split the leading axis ``B`` into ``k`` micro-batches, ``[B, ...] -> [k, B / k, ...]``, with
    micro-batch ``i`` holding rows ``i, i + k, i + 2k, ...``: each device's contiguous block of rows
    contributes equally to every micro-batch, so the split needs no communication."""
    def split(a):
        a = jnp.moveaxis(a.reshape(a.shape[0] // k, k, *a.shape[1:]), 1, 0)
        if mesh is not None:
            a = jax.lax.with_sharding_constraint(a, jax.sharding.NamedSharding(
                mesh, jax.sharding.PartitionSpec(None, "data")))
        return a

    return jax.tree.map(split, tree)


def make_train_step(apply_fn: ApplyFn, family: Family | DiffusionTables, optimizer: optax.GradientTransformation,
                    *, target: str = "eps", loss_weighting: str = "none", min_snr_gamma: float = 5.0,
                    ema_decay_rate: float = 0.9999, ema_warmup: bool = False, ema_stds: tuple = (),
                    num_classes: int = 0,
                    label_dropout: float = 0.0, preprocess: Preprocess = as_float, seed: int = 0,
                    grad_accum_steps: int = 1, learning_rate_fn: Callable | None = None, mesh=None):
    """The pure ``step(state, batch) -> (state, metrics)`` of denoising diffusion training.

    The family's loss (for ddpm ``w(t) || f(x_t, t) - target ||^2``, mean over pixels and batch, with
    ``t ~ U{0..T-1}``, ``eps ~ N(0, I)``, ``x_t = q_sample(x0, t, eps)``; EDM's and flow matching's
    in :mod:`jaxdiff.core.families`); then one optimizer update and ``ema <- d ema + (1 - d) params``.

    Args:
      apply_fn: the network, ``apply_fn(params, x_t, t, labels, dropout_key)`` (labels ``None`` for an
        unconditional model); :func:`jaxdiff.models.denoiser_apply` makes one from a Flax module.
      family: a :class:`~jaxdiff.core.families.Family` (``families.edm()``, ``families.flow()``, ...), or
        a schedule's :class:`~jaxdiff.core.schedules.DiffusionTables`, which means
        ``families.ddpm(tables, target, loss_weighting, min_snr_gamma)``.
      optimizer: an optax transformation (:func:`jaxdiff.training.make_optimizer`).
      target, loss_weighting, min_snr_gamma: the ddpm family's, when ``family`` is a table
        (``eps``/``x0``/``v``; ``none``/``min_snr``).
      ema_decay_rate: EMA decay; with ``ema_warmup`` it is ``min(decay, (1 + n) / (10 + n))``.
      ema_stds: relative stds of power-function EMA profiles to track besides, in ``state.ema_profiles``
        (EDM2's post-hoc EMA snapshots them, :mod:`jaxdiff.training.posthoc_ema`; its default is ``(0.05, 0.10)``;
        the state needs as many, ``init_train_state(..., num_ema_profiles=len(ema_stds))``).
      num_classes: > 0 for a class-conditional model; the batch then carries ``"label"`` and each
        label is replaced by the null label ``num_classes`` with probability ``label_dropout``. It must
        be the network's own count when ``apply_fn`` carries one (``denoiser_apply(UNet(num_classes=10))``
        needs ``num_classes=10``: with 0 the step would train the null label only).
      preprocess: ``preprocess(batch["image"], key) -> x0`` inside the compiled step (default
        :func:`as_float`: the batch already holds floats in [-1, 1], and integer images are refused;
        the command line passes uint8 -> [-1, 1] with random flips, :func:`jaxdiff.data.preprocess`).
        Its output must be floating point.
      seed: the run's seed; step ``n`` draws from ``step_keys(seed, n)``.
      grad_accum_steps: ``k > 1`` takes the loss and gradient as the means over ``k`` equal
        micro-batches scanned inside the step (one in memory at a time) of the same draws, i.e. the
        same quantity as one ``B``-batch step up to float rounding; network dropout then uses
        ``fold_in(dropout_key, i)`` in micro-batch ``i``.
      learning_rate_fn: the schedule, to report ``learning_rate`` in the metrics (optional).
      mesh: the device mesh, to keep micro-batches sharded over ``data``.

    Returns:
      ``step(state: TrainState, batch) -> (state, {"loss", "grad_norm"[, "learning_rate"]})``. The batch
      is a dict with the keys :data:`BATCH_KEYS`:

      * ``"image"``: ``[B, H, W, C]``, what ``preprocess`` takes (floats in [-1, 1] by default);
      * ``"label"``: int ``[B]`` in ``0..num_classes - 1``, required when ``num_classes > 0`` (ignored
        otherwise);
      * ``"noise"`` (optional, float32 like ``x0``): the loss noises each ``x0`` with its own paired
        noise instead of a fresh draw (reflow: train on ``(x_T, ODE(x_T))`` pairs,
        :func:`jaxdiff.core.generation.generate` with ``keep_noise``); the noise levels are still drawn.

      Other keys, integer images without a ``preprocess`` that scales them, and a network whose
      output has another shape than its input (``out_ch`` not the images' channels) are refused with a
      ``ValueError`` when the step is traced (shapes and dtypes are static: nothing is checked at run
      time).

    Raises:
      ValueError: ``num_classes`` is not the class count ``apply_fn`` carries.
    """
    check_network_classes(apply_fn, num_classes)
    if isinstance(family, DiffusionTables):
        family = families.ddpm(family, target, loss_weighting, min_snr_gamma)
    k = int(grad_accum_steps)
    exponents = [float(g) for g in std_to_exponent(np.asarray(ema_stds, np.float64).reshape(-1))]

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        check_batch(batch, num_classes)
        keys = step_keys(seed, state.step)
        x0 = preprocess(batch["image"], keys["flip"])
        check_x0(x0)
        labels = None
        if num_classes:
            drop = jax.random.bernoulli(keys["label"], label_dropout, batch["label"].shape)
            labels = jnp.where(drop, num_classes, batch["label"])
        t, noise = family.draw(keys["loss"], x0, state.step) if family.curriculum else family.draw(keys["loss"], x0)
        if "noise" in batch:  # paired noise (rectified flow's reflow): the ODE start of each x0
            noise = jnp.asarray(batch["noise"], jnp.float32)

        def loss_fn(params, inputs, dropout_key):
            x0, t, noise, labels = inputs

            def net(x_in, t_in, span=None):  # span: a few-step family's second time
                out = (apply_fn(params, x_in, t_in, labels, dropout_key) if span is None
                       else apply_fn(params, x_in, t_in, labels, dropout_key, span=span))
                return check_denoiser_output(out, x_in)

            if not family.needs_teacher:
                return family.loss(net, x0, t, noise)[0]
            if state.teacher is None:
                raise ValueError(f"the {family.name!r} family's loss needs a teacher: "
                                 "init_train_state(..., teacher=teacher_params)")
            teacher_params = jax.lax.stop_gradient(state.teacher)

            def teacher(x_in, t_in):
                return check_denoiser_output(apply_fn(teacher_params, x_in, t_in, labels), x_in)

            return family.loss(net, x0, t, noise, teacher)[0]

        grad_fn = jax.value_and_grad(loss_fn)
        if k == 1:
            loss, grads = grad_fn(state.params, (x0, t, noise, labels), keys["dropout"])
        else:
            def accumulate(carry, inputs):
                i, micro = inputs
                loss, grads = grad_fn(state.params, micro, jax.random.fold_in(keys["dropout"], i))
                return jax.tree.map(jnp.add, carry, (loss, grads)), None

            zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
            micro = micro_batches((x0, t, noise, labels), k, mesh)
            (loss, grads), _ = jax.lax.scan(accumulate, zero, (jnp.arange(k), micro))
            loss, grads = jax.tree.map(lambda g: g / k, (loss, grads))

        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = ema_update(state.ema_params, params, ema_decay(state.step, ema_decay_rate, ema_warmup))
        profiles = tuple(power_ema_update(p, params, state.step, g)
                         for p, g in zip(state.ema_profiles, exponents, strict=True))
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        if learning_rate_fn is not None:
            metrics["learning_rate"] = learning_rate_fn(state.step)
        return TrainState(state.step + 1, params, ema, opt_state, profiles, state.teacher), metrics

    return step
