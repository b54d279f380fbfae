"""Train state, the compiled training step, and the training loop.

The step is one ``jax.jit`` program over the global batch (sharded over the mesh axis ``data``,
state replicated or FSDP-sharded, state buffers donated). Everything random in step ``n`` comes from
``fold_in(fold_in(key(seed), TRAIN_STREAM), n)`` and is drawn for the global batch, so devices draw
different noise and 8 devices compute what 1 device computes (see :mod:`jaxdiff.parallel`); a resumed
run needs no saved RNG state, and the batch of step ``n`` is a pure function of ``(seed, n)`` (see
:mod:`jaxdiff.data`), so a resumed run sees exactly the data an uninterrupted one would.

``training.dtype=bfloat16`` computes the U-Net in bf16 while parameters, gradients, optimizer state
and EMA stay float32 (the loss is taken in float32). ``training.grad_accum_steps=k`` splits the
global batch into ``k`` micro-batches scanned inside the step, summing gradients before one update.
SIGTERM/SIGINT during :func:`train` save a checkpoint at the next step boundary and raise
:class:`Preempted` (``main.py`` exits with ``128 + signal``); re-running the command continues exactly.
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

from jaxdiff import checkpoint, config as config_lib, data, diffusion, parallel, plotting, preemption, sample, schedules
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


def step_keys(seed: int, step) -> dict:
    """The four independent keys of training step ``step``: flip, label (dropout of labels),
    dropout (network dropout) and loss (timesteps and noise), split from the step's stream key."""
    flip, label, dropout, loss = jax.random.split(stream_key(seed, TRAIN_STREAM, step), 4)
    return {"flip": flip, "label": label, "dropout": dropout, "loss": loss}


class Preempted(Exception):
    """Training stopped on signal ``signum`` after saving a checkpoint of ``state`` at ``step``;
    re-run (or call :func:`train` again) to continue."""

    def __init__(self, step: int, signum: int, state=None):
        super().__init__(f"preempted by signal {signum} at step {step}: checkpoint saved; "
                         "re-run the same command to continue")
        self.step, self.signum, self.state = step, signum, state


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
                            num_classes=num_classes if config.model.class_conditional else 0,
                            dtype=jnp.dtype(config.training.dtype))


def init_state(model: UNet, tx: optax.GradientTransformation, key: jax.Array,
               image_shape: tuple[int, int, int]) -> TrainState:
    """Fresh parameters (EMA starts equal to them), optimizer state, step 0."""
    x = jnp.zeros((1, *image_shape), jnp.float32)
    t = jnp.zeros((1,), jnp.int32)
    y = jnp.zeros((1,), jnp.int32) if model.num_classes else None
    params = model.init({"params": key}, x, t, y)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=tx.init(params))


def _micro_batches(tree, k: int, mesh=None):
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


def train_step(state: TrainState, batch: dict, *, model: UNet, tables: schedules.DiffusionTables,
               tx: optax.GradientTransformation, config, mesh=None) -> tuple[TrainState, dict]:
    """One optimizer update on a global batch ``{"image": uint8 [B,H,W,C], "label": int32 [B]}``.

    loss = L_simple (eps/x0/v target, optional min-SNR weight) with t ~ U[0, T), eps ~ N(0, I);
    class-conditional models see the null label with probability ``training.label_dropout``.
    All of it is drawn for the global batch from :func:`step_keys`. With ``k = grad_accum_steps > 1``
    the loss and gradient are the means over ``k`` equal micro-batches (scanned, one in memory at a
    time) of the same draws, i.e. the same quantity as one ``B``-batch step up to float rounding;
    network dropout then uses ``fold_in(dropout_key, i)`` in micro-batch ``i``.
    """
    tc, dc = config.training, config.diffusion
    keys = step_keys(config.seed, state.step)
    x0 = data.preprocess(batch["image"], keys["flip"], config.data.random_flip)
    labels = None
    if model.num_classes:
        drop = jax.random.bernoulli(keys["label"], tc.label_dropout, batch["label"].shape)
        labels = jnp.where(drop, model.num_classes, batch["label"])
    t, noise = diffusion.draw_t_noise(keys["loss"], x0, tables.num_timesteps)

    def loss_fn(params, inputs, dropout_key):
        x0, t, noise, labels = inputs
        denoise = lambda xt, tt: model.apply({"params": params}, xt, tt, labels, train=True,  # noqa: E731
                                             rngs={"dropout": dropout_key})
        loss, _ = diffusion.loss_given_noise(denoise, tables, x0, t, noise, dc.target,
                                             dc.loss_weighting, dc.min_snr_gamma)
        return loss

    grad_fn = jax.value_and_grad(loss_fn)
    k = tc.grad_accum_steps
    if k == 1:
        loss, grads = grad_fn(state.params, (x0, t, noise, labels), keys["dropout"])
    else:
        def accumulate(carry, inputs):
            i, micro = inputs
            loss, grads = grad_fn(state.params, micro, jax.random.fold_in(keys["dropout"], i))
            return jax.tree.map(jnp.add, carry, (loss, grads)), None

        zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
        micro = _micro_batches((x0, t, noise, labels), k, mesh)
        (loss, grads), _ = jax.lax.scan(accumulate, zero, (jnp.arange(k), micro))
        loss, grads = jax.tree.map(lambda g: g / k, (loss, grads))

    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = ema_update(state.ema_params, params, ema_decay(state.step, tc.ema_decay, tc.ema_warmup))
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
               "learning_rate": learning_rate_schedule(tc)(state.step)}
    return TrainState(state.step + 1, params, ema, opt_state), metrics


class Trainer:
    """The compiled pieces of one configuration: model, tables, optimizer, mesh, shardings, step, init."""

    def __init__(self, config, channels: int, num_classes: int, mesh=None):
        parallel.check_partitionable_rng()
        self.config = config
        pc = config.parallel
        self.mesh = mesh or parallel.make_mesh(pc.num_devices)
        parallel.check_batch_divides(config.training.batch_size, self.mesh,
                                     accum_steps=config.training.grad_accum_steps)
        self.num_classes = num_classes
        self.image_shape = (config.data.image_size, config.data.image_size, channels)
        self.model = build_model(config, channels, num_classes)
        self.tables = schedules.tables_from_config(config.diffusion)
        self.tx = make_optimizer(config.training)
        init = functools.partial(init_state, self.model, self.tx, image_shape=self.image_shape)
        shapes = jax.eval_shape(init, jax.random.key(0))
        self.state_sharding = parallel.state_shardings(shapes, self.mesh, pc.shard_params, pc.shard_min_size)
        self._shapes = shapes
        rep, batch = parallel.replicated(self.mesh), parallel.batch_sharded(self.mesh)
        self.step = jax.jit(functools.partial(train_step, model=self.model, tables=self.tables,
                                              tx=self.tx, config=config, mesh=self.mesh),
                            in_shardings=(self.state_sharding, batch), out_shardings=(self.state_sharding, rep),
                            donate_argnums=0)
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
    ``samples_<step>.png``, ``loss.png``, and with ``training.eval_every`` a cheap FID in
    ``eval/train_fid.jsonl`` (:func:`jaxdiff.evaluate.make_train_fid_hook`). Re-running with the same
    workdir resumes at the latest checkpoint. With several processes every process runs this function;
    process 0 alone writes metrics and pictures, Orbax coordinates the checkpoint writes. SIGTERM or
    SIGINT saves a checkpoint at the next step boundary (all processes agree on the step) and raises
    :class:`Preempted`.
    """
    from tqdm.auto import tqdm

    config_lib.validate(config)
    source = data.load_source(config.data, "train")
    trainer = Trainer(config, source.image_shape[-1], source.num_classes)  # checks devices; compiles nothing
    workdir = config_lib.check_workdir(workdir)
    tc = config.training
    is_main = jax.process_index() == 0

    mngr = checkpoint.manager(workdir, tc.keep_checkpoints)
    if mngr.latest_step() is not None:
        state, _ = checkpoint.restore(mngr, trainer.abstract_state())
    else:
        state = trainer.init()
    start = int(state.step)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if is_main:
        _truncate_metrics(metrics_path, start)
    from jaxdiff import evaluate  # local: only needed for the cheap FID

    fid_hook = evaluate.make_train_fid_hook(config, workdir, trainer.model, trainer.tables, start)

    slot, slots = parallel.process_batch_rows(trainer.mesh, tc.batch_size)
    stream = data.batch_stream(source, config.seed, start, tc.batch_size, slot, slots,
                               config.data.prefetch, config.data.num_workers)
    pending, last_time, last_step = [], time.perf_counter(), start
    bar = tqdm(total=tc.num_train_steps, initial=start, disable=not progress or not is_main,
               desc="train", unit="step", dynamic_ncols=True, smoothing=0.05)
    log = open(metrics_path, "a") if is_main else None

    def write_metrics(n):
        nonlocal pending, last_time, last_step
        values = jax.device_get(pending)  # the only host sync of the loop
        now = time.perf_counter()
        row = {"step": n, **{k: float(np.mean([v[k] for v in values])) for k in values[0]},
               "steps_per_sec": (n - last_step) / (now - last_time)}
        pending, last_time, last_step = [], now, n
        if log:
            log.write(json.dumps(row) + "\n")
            log.flush()
        bar.set_postfix(loss=f"{row['loss']:.4f}", steps_s=f"{row['steps_per_sec']:.1f}")

    try:
        with preemption.PreemptionGuard() as guard:
            for n in range(start + 1, tc.num_train_steps + 1):
                state, metrics = trainer.step(state, parallel.global_batch(next(stream), trainer.mesh))
                pending.append(metrics)
                bar.update(1)
                stop = guard.should_stop(n)
                if n % tc.log_every == 0 or n == tc.num_train_steps or (stop and pending):
                    write_metrics(n)
                if n % tc.checkpoint_every == 0 or n == tc.num_train_steps or stop:
                    checkpoint.save(mngr, n, state, trainer.meta())
                if stop:
                    mngr.wait_until_finished()
                    raise Preempted(n, guard.signum, state)
                if (tc.sample_every and n % tc.sample_every == 0) or n == tc.num_train_steps:
                    sample.write_training_samples(trainer, state, workdir, n)
                    if is_main:
                        plotting.save_loss_curve(metrics_path, os.path.join(workdir, "loss.png"))
                if fid_hook and n % tc.eval_every == 0:
                    row = fid_hook(n, state.ema_params)
                    bar.write(f"step {n}: FID {row['fid']:.3f} ({row['fid_samples']} EMA samples, "
                              f"{row['feature_extractor']} features) -> eval/train_fid.jsonl")
    finally:
        bar.close()
        if log:
            log.close()
        mngr.wait_until_finished()
        mngr.close()
    return state
