"""Train state, the compiled training step, and the training loop.

The step is one ``jax.jit`` program over the global batch (sharded over the mesh axis ``data``,
state replicated, state buffers donated). Everything random in step ``n`` comes from
``fold_in(fold_in(key(seed), TRAIN_STREAM), n)``, so a resumed run needs no saved RNG state, and
the batch of step ``n`` is a pure function of ``(seed, n)`` (see :mod:`jaxdiff.data`), so a resumed
run sees exactly the data an uninterrupted one would.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiff import checkpoint, config as config_lib, data, diffusion, parallel, plotting, sample, schedules
from jaxdiff.unet import UNet, unet_from_config

TRAIN_STREAM, SAMPLE_STREAM, INIT_STREAM = 0, 1, 2  # independent key streams derived from the seed


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint needs to continue training exactly."""

    step: jax.Array  # int32 scalar: number of optimizer updates applied so far
    params: Any
    ema_params: Any
    opt_state: Any


def stream_key(seed: int, stream: int, step) -> jax.Array:
    """``fold_in(fold_in(key(seed), stream), step)``: the key of one step of one stream."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stream), step)


def learning_rate_schedule(tc) -> optax.Schedule:
    """``lr(n) = learning_rate * min(n / warmup_steps, 1)`` (DDPM's linear warm-up from 0)."""
    if tc.warmup_steps == 0:
        return optax.constant_schedule(tc.learning_rate)
    return optax.linear_schedule(0.0, tc.learning_rate, tc.warmup_steps)


def make_optimizer(tc) -> optax.GradientTransformation:
    """Global-norm clipping followed by Adam or AdamW with the warm-up schedule."""
    lr = learning_rate_schedule(tc)
    if tc.optimizer == "adamw":
        opt = optax.adamw(lr, tc.adam_b1, tc.adam_b2, tc.adam_eps, weight_decay=tc.weight_decay)
    else:
        opt = optax.adam(lr, tc.adam_b1, tc.adam_b2, tc.adam_eps)
    return optax.chain(optax.clip_by_global_norm(tc.grad_clip_norm), opt) if tc.grad_clip_norm > 0 else opt


def ema_decay(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
    """EMA decay for update number ``step``: ``min(decay, (1 + n) / (10 + n))`` with warm-up, else ``decay``."""
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    n = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


def ema_update(ema, params, decay: jax.Array):
    """``ema <- decay * ema + (1 - decay) * params``, leaf by leaf."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def build_model(config, channels: int, num_classes: int) -> UNet:
    """The U-Net of ``config.model`` for images with ``channels`` channels; conditional on
    ``num_classes`` labels when ``model.class_conditional``."""
    return unet_from_config(config.model, out_ch=channels,
                            num_classes=num_classes if config.model.class_conditional else 0)


def init_state(model: UNet, tx: optax.GradientTransformation, key: jax.Array,
               image_shape: tuple[int, int, int]) -> TrainState:
    """Fresh parameters (EMA starts equal to them), optimizer state, step 0."""
    x = jnp.zeros((1, *image_shape), jnp.float32)
    t = jnp.zeros((1,), jnp.int32)
    y = jnp.zeros((1,), jnp.int32) if model.num_classes else None
    params = model.init({"params": key}, x, t, y)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=tx.init(params))


def train_step(state: TrainState, batch: dict, *, model: UNet, tables: schedules.DiffusionTables,
               tx: optax.GradientTransformation, config) -> tuple[TrainState, dict]:
    """One optimizer update on a global batch ``{"image": uint8 [B,H,W,C], "label": int32 [B]}``.

    loss = L_simple (eps/x0/v target, optional min-SNR weight) with t ~ U[0, T), eps ~ N(0, I);
    class-conditional models see the null label with probability ``training.label_dropout``.
    """
    tc, dc = config.training, config.diffusion
    key = stream_key(config.seed, TRAIN_STREAM, state.step)
    flip_key, label_key, dropout_key, loss_key = jax.random.split(key, 4)
    x0 = data.preprocess(batch["image"], flip_key, config.data.random_flip)
    labels = None
    if model.num_classes:
        drop = jax.random.bernoulli(label_key, tc.label_dropout, batch["label"].shape)
        labels = jnp.where(drop, model.num_classes, batch["label"])

    def loss_fn(params):
        denoise = lambda xt, t: model.apply({"params": params}, xt, t, labels, train=True,  # noqa: E731
                                            rngs={"dropout": dropout_key})
        loss, _ = diffusion.diffusion_loss(denoise, tables, x0, loss_key, dc.target,
                                           dc.loss_weighting, dc.min_snr_gamma)
        return loss

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = ema_update(state.ema_params, params, ema_decay(state.step, tc.ema_decay, tc.ema_warmup))
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
               "learning_rate": learning_rate_schedule(tc)(state.step)}
    return TrainState(state.step + 1, params, ema, opt_state), metrics


class Trainer:
    """The compiled pieces of one configuration: model, tables, optimizer, mesh, step and init."""

    def __init__(self, config, channels: int, num_classes: int, mesh=None):
        self.config = config
        self.mesh = mesh or parallel.make_mesh(config.parallel.num_devices)
        parallel.check_batch_divides(config.training.batch_size, self.mesh)
        self.num_classes = num_classes
        self.image_shape = (config.data.image_size, config.data.image_size, channels)
        self.model = build_model(config, channels, num_classes)
        self.tables = schedules.tables_from_config(config.diffusion)
        self.tx = make_optimizer(config.training)
        rep, batch = parallel.replicated(self.mesh), parallel.batch_sharded(self.mesh)
        self.step = jax.jit(functools.partial(train_step, model=self.model, tables=self.tables,
                                              tx=self.tx, config=config),
                            in_shardings=(rep, batch), out_shardings=(rep, rep), donate_argnums=0)
        self._init = jax.jit(functools.partial(init_state, self.model, self.tx,
                                               image_shape=self.image_shape), out_shardings=rep)

    def init(self) -> TrainState:
        return self._init(stream_key(self.config.seed, INIT_STREAM, 0))

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and shardings of the state, without computing it."""
        rep = parallel.replicated(self.mesh)
        shapes = jax.eval_shape(self._init, jax.random.key(0))
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), shapes)

    def meta(self) -> dict:
        """What a checkpoint records besides the state: the config and the data's shape."""
        return {"config": json.loads(self.config.to_json()), "channels": self.image_shape[-1],
                "num_classes": self.num_classes}


def _truncate_metrics(path: str, last_step: int) -> None:
    """Drop metric lines logged after ``last_step`` (work lost since the last checkpoint)."""
    if not os.path.exists(path):
        return
    rows = [r for r in plotting.read_metrics(path) if r["step"] <= last_step]
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def train(config, workdir: str, progress: bool = True) -> TrainState:
    """Train (or resume training) per ``config`` in ``workdir``; returns the final state.

    Writes ``checkpoints/``, ``metrics.jsonl`` (step, loss, grad_norm, learning_rate, steps_per_sec),
    ``samples_<step>.png``, ``loss.png``. Re-running with the same workdir resumes at the latest checkpoint.
    """
    from tqdm.auto import tqdm

    config_lib.validate(config)
    source = data.load_source(config.data, "train")
    workdir = config_lib.check_workdir(workdir)
    trainer = Trainer(config, source.image_shape[-1], source.num_classes)
    tc = config.training

    mngr = checkpoint.manager(workdir, tc.keep_checkpoints)
    if mngr.latest_step() is not None:
        state, _ = checkpoint.restore(mngr, trainer.abstract_state())
    else:
        state = trainer.init()
    start = int(state.step)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    _truncate_metrics(metrics_path, start)

    stream = data.batch_stream(source, config.seed, start, tc.batch_size, jax.process_index(),
                               jax.process_count(), config.data.prefetch, config.data.num_workers)
    pending, last_time, last_step = [], time.perf_counter(), start
    bar = tqdm(total=tc.num_train_steps, initial=start, disable=not progress or jax.process_index() != 0,
               desc="train", unit="step", dynamic_ncols=True, smoothing=0.05)
    with open(metrics_path, "a") as log:
        for n in range(start + 1, tc.num_train_steps + 1):
            state, metrics = trainer.step(state, parallel.global_batch(next(stream), trainer.mesh))
            pending.append(metrics)
            bar.update(1)
            if n % tc.log_every == 0 or n == tc.num_train_steps:
                values = jax.device_get(pending)  # the only host sync of the loop
                now = time.perf_counter()
                row = {"step": n, **{k: float(np.mean([v[k] for v in values])) for k in values[0]},
                       "steps_per_sec": (n - last_step) / (now - last_time)}
                pending, last_time, last_step = [], now, n
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{row['loss']:.4f}", steps_s=f"{row['steps_per_sec']:.1f}")
            if n % tc.checkpoint_every == 0 or n == tc.num_train_steps:
                checkpoint.save(mngr, n, state, trainer.meta())
            if (tc.sample_every and n % tc.sample_every == 0) or n == tc.num_train_steps:
                sample.write_training_samples(trainer, state, workdir, n)
                plotting.save_loss_curve(metrics_path, os.path.join(workdir, "loss.png"))
    bar.close()
    mngr.wait_until_finished()
    mngr.close()
    return state
