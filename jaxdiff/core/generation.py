"""Generating many images with a sampler: chunks of a fixed compiled size, class labels with
classifier-free guidance, and a device mesh.

:func:`generate` is what a library user calls after training; the command line's sample mode,
sample grids during training and evaluation all go through it (the drivers turn a config's
``sampling`` block into its arguments). Keys: chunk ``c`` uses ``k = fold_in(key, c)``;
``x_T ~ N(0, I)`` comes from ``fold_in(k, 0)`` and the sampler's noise from ``fold_in(k, 1)``.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.common import parallel
from jaxdiff.common.chunks import map_chunks
from jaxdiff.core.guidance import guided_denoise_fn
from jaxdiff.core.network_contract import check_network_classes
from jaxdiff.core.sampler import Sampler, SampleOutput, sampler_scan, trajectory_positions

ApplyFn = Callable  # apply_fn(params, x [B, H, W, C], t int32 [B], labels int32 [B] | None) -> output
SEGMENT_STEPS = 25  # sampler steps per program when the caller may stop in between (should_stop)


def check_labels(labels, num_samples: int, num_classes: int) -> np.ndarray:
    """``labels`` as int32 ``[num_samples]``; ``ValueError`` if any is outside ``[0, num_classes)`` (the null
    label ``num_classes`` is not a class: ``labels=None`` samples with it)."""
    labels = np.asarray(labels)
    if not num_classes:
        raise ValueError("labels given, but num_classes=0: a network without classes has no class embedding to "
                         "take them (pass the network's num_classes if it was built with classes)")
    if labels.shape != (num_samples,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be {num_samples} integers, got shape {labels.shape} of {labels.dtype}")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        raise ValueError(f"class label {int(bad[0])} is out of range: the model has {num_classes} classes "
                         f"(0..{num_classes - 1}; labels=None samples with the null label {num_classes})")
    return labels.astype(np.int32)


def prior_noise(key: jax.Array, shape, prior_scale: float = 1.0) -> jax.Array:
    """A chunk's start ``x_T = prior_scale * N(0, I)`` of ``shape``, drawn from ``fold_in(key, 0)``."""
    x_T = jax.random.normal(jax.random.fold_in(key, 0), tuple(shape), jnp.float32)
    return prior_scale * x_T if prior_scale != 1.0 else x_T


def network_time_interval(sampler: Sampler, guidance_interval) -> tuple[float, float] | None:
    """A guidance interval ``(lo, hi)`` in ``sigma / alpha`` as the network times ``(t_lo, t_hi)`` that
    :func:`~jaxdiff.core.guidance.guided_denoise_fn` takes (``None`` stays ``None``: guide everywhere)."""
    if guidance_interval is None:
        return None
    lo, hi = (float(v) for v in guidance_interval)
    if not 0 <= lo < hi:
        raise ValueError(f"guidance interval must be 0 <= lo < hi in sigma / alpha, got {guidance_interval}")
    if sampler.sigma_to_input is None:
        raise ValueError("this sampler does not say how its network times map to noise levels "
                         "(Sampler.sigma_to_input), so it cannot take a guidance interval")
    return (float(sampler.sigma_to_input(lo)) if lo > 0 else -np.inf,
            float(sampler.sigma_to_input(hi)) if np.isfinite(hi) else np.inf)


def call_network(apply_fn, params, x, t, y, span=None):
    """``apply_fn(params, x, t, y)``, with ``span=span`` only when a second time is given (an apply
    function of a network without one, :func:`jaxdiff.models.denoiser_apply`, never sees it)."""
    return apply_fn(params, x, t, y) if span is None else apply_fn(params, x, t, y, span=span)


def make_chunk_generator(apply_fn, sampler: Sampler, image_shape, width: int, guidance_scale: float,
                         null_label: int | None, trajectory_every: int = 0, trajectory_size: int = 16,
                         mesh=None, segment_steps: int = 0, guidance_interval=None):
    """A compiled ``generate_chunk(params, key, y, should_stop=None) -> (samples, trajectory_xt,
    trajectory_x0)`` for one chunk of ``width`` images of ``image_shape``.

    ``x_T ~ sampler.prior_scale N(0, I)`` from ``fold_in(key, 0)``, the sampler's noise from
    ``fold_in(key, 1)``; ``apply_fn(params, x, t, y)`` is the network, guided by
    :func:`guided_denoise_fn` with labels ``y`` (``None``: unconditional) and, if given,
    ``guidance_interval = (lo, hi)`` in network time units. With a ``mesh`` the key arrives as key
    data in a global array, and with
    several devices the batch is sharded over ``data``. With ``segment_steps = L > 0`` the sampler runs
    as programs of ``L`` steps (:func:`~jaxdiff.core.sampler.sampler_scan`: the same numbers) and
    ``should_stop()`` is called between them, so a signal can stop a long sampler within ``L`` steps
    (it raises to stop); with 0 it is one program and ``should_stop`` is not called.
    """
    batch_sharding = None
    if mesh is not None and mesh.devices.size > 1:
        batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))

    def setup(params, key, y):
        if mesh is not None:  # inputs arrive as global arrays (key data replicated, labels sharded)
            key = jax.random.wrap_key_data(key)
        if batch_sharding is not None and y is not None:
            y = jax.lax.with_sharding_constraint(y, batch_sharding)
        denoise = guided_denoise_fn(functools.partial(call_network, apply_fn, params), y, guidance_scale, null_label,
                                    guidance_interval)
        return key, sampler_scan(sampler, denoise, jax.random.fold_in(key, 1), trajectory_every, trajectory_size)

    def start(params, key, y):
        key, scan = setup(params, key, y)
        x_T = prior_noise(key, (width,) + tuple(image_shape), sampler.prior_scale)
        if batch_sharding is not None:
            x_T = jax.lax.with_sharding_constraint(x_T, batch_sharding)
        return scan.init(x_T)

    def output(carry):
        out = sampler_scan(sampler, None, None, trajectory_every, trajectory_size).output(carry)
        return out.samples, out.trajectory_xt, out.trajectory_x0

    positions = np.arange(len(sampler.timesteps))

    if not segment_steps:
        @jax.jit
        def whole(params, key, y):
            carry = start(params, key, y)
            return output(setup(params, key, y)[1].run(carry, jnp.asarray(positions)))

        return lambda params, key, y, should_stop=None: whole(params, key, y)

    start_jit, output_jit = jax.jit(start), jax.jit(output)
    segment = jax.jit(lambda params, key, y, carry, i: setup(params, key, y)[1].run(carry, i))

    def generate_chunk(params, key, y, should_stop=None):
        carry = start_jit(params, key, y)
        for a in range(0, len(positions), segment_steps):
            if should_stop is not None:
                should_stop()
            carry = segment(params, key, y, carry, positions[a:a + segment_steps])
        return output_jit(carry)

    return generate_chunk


def generate(apply_fn: ApplyFn, params, sampler: Sampler, shape, key: jax.Array, *,
             labels=None, num_classes: int = 0, guidance_scale: float = 1.0, batch_size: int = 256,
             trajectory_every: int = 0, trajectory_size: int = 16, mesh=None, guidance_interval=None,
             keep_noise: bool = False, cache: dict | None = None, progress=None,
             should_stop=None) -> SampleOutput:
    """Generate ``shape[0]`` images of shape ``shape[1:]`` with ``sampler``.

    Args:
      apply_fn: the network, ``apply_fn(params, x, t, y) -> output`` (``y`` is ``None`` for an
        unconditional model, whose ``num_classes`` is 0).
      params: its parameters (any sharding; they keep it).
      sampler: a :class:`~jaxdiff.core.sampler.Sampler` (``make_sampler(...)``).
      shape: ``(N, H, W, C)``.
      key: the base key (see the module docstring for how chunks and steps derive theirs).
      labels: int ``[N]`` class of each sample (``None``: unconditional, the null label of a
        class-conditional model).
      num_classes: the model's number of classes (its null label is ``num_classes``); refused if the
        apply function says its network has another count (:func:`jaxdiff.models.denoiser_apply`'s do).
      guidance_scale: classifier-free guidance ``w`` with labels (1 = plain conditional; both
        branches run in one batched call otherwise).
      batch_size: images per compiled chunk; the last chunk is padded (padding dropped).
      trajectory_every: keep ``(x_t, x0_hat)`` every this many steps for the first
        ``trajectory_size`` samples of the first chunk (0 = none).
      guidance_interval: ``(lo, hi)``: guide only at noise levels ``lo < sigma / alpha <= hi``
        (Kynkäänniemi et al. 2024; needs ``sampler.sigma_to_input``); ``None``: at every step.
      mesh: a mesh with axis ``data``: each chunk is padded to a multiple of its devices and sharded
        over them. The padding leaves the other rows' noise unchanged (partitionable threefry draws
        row ``i`` from ``i`` alone). With several processes every process runs this and gets all
        samples.
      keep_noise: also return each sample's start ``x_T`` (``SampleOutput.noise``): with a
        deterministic sampler, ``(noise, samples)`` are the pairs rectified flow's reflow trains on.
      cache: a dict the caller keeps for one ``apply_fn``: the compiled chunk generator is kept in it
        between calls with the same sampler object and shapes (sample grids during training compile
        once).
      progress: a ``tqdm`` bar (or anything with ``update(n)``) advanced by each chunk's images.
      should_stop: called every :data:`SEGMENT_STEPS` sampler steps; it raises to stop (a signal
        handler's check). The sampler then runs in pieces that compute the same numbers.

    A network whose output has another shape than its input (``out_ch`` not the images' channels) is
    refused when the sampler is traced, before it runs.

    Returns:
      :class:`~jaxdiff.core.sampler.SampleOutput` with NumPy float32 samples (in [-1, 1] when the
      sampler clips ``x0``), the labels, the trajectory if asked for, and ``metadata`` (sample count,
      steps, chunk size, devices, timesteps, guidance).
    """
    num = int(shape[0])
    if num < 1:
        raise ValueError(f"number of samples must be positive, got {num}")
    check_network_classes(apply_fn, num_classes)
    if labels is not None:
        labels = check_labels(labels, num, num_classes)
    scale = float(guidance_scale)
    every = int(trajectory_every)
    chunk = min(int(batch_size), num)
    null_label = num_classes if num_classes else None
    devices = mesh.devices.size if mesh is not None else 1
    width = -(-chunk // devices) * devices  # the compiled batch: the chunk padded to a multiple of the devices
    segments = SEGMENT_STEPS if should_stop is not None else 0
    interval = network_time_interval(sampler, guidance_interval) if labels is not None and scale != 1.0 else None
    cache_key = (id(sampler.step), scale, labels is not None, num_classes, tuple(shape[1:]), width, every,
                 trajectory_size, segments, interval)
    cached = None if cache is None else cache.get(cache_key)
    if cached is None:
        # the sampler is kept alive with its program, so its id stays unique
        cached = (sampler, make_chunk_generator(apply_fn, sampler, shape[1:], width, scale, null_label, every,
                                                trajectory_size, mesh, segments, interval))
        if cache is not None:
            cache[cache_key] = cached
    chunk_generator = cached[1]

    def to_device(a, spec):  # global arrays from host data that every process holds in full
        return jnp.asarray(a) if mesh is None else parallel.put_global(a, jax.sharding.NamedSharding(mesh, spec))

    trajectory, noises = [], []
    if keep_noise:
        draw_noise = jax.jit(lambda k: prior_noise(k, (width,) + tuple(shape[1:]), sampler.prior_scale))

    def run_chunk(c, chunk_labels):
        y = None
        if labels is not None:
            from_chunk = np.resize(chunk_labels, width) if width != chunk else chunk_labels
            y = to_device(from_chunk.astype(np.int32), jax.sharding.PartitionSpec("data"))
        chunk_key = jax.random.fold_in(key, c)
        if keep_noise:  # the chunk's x_T again (row i depends on i alone: equal to the sharded draw)
            noises.append(np.asarray(jax.device_get(draw_noise(chunk_key)))[:chunk])
        if mesh is not None:
            chunk_key = to_device(np.asarray(jax.random.key_data(chunk_key)), jax.sharding.PartitionSpec())
        x, xt, x0 = chunk_generator(params, chunk_key, y, should_stop)
        if c == 0 and every:
            keep = min(trajectory_size, chunk, num)  # never the padding rows
            trajectory.extend((parallel.to_host(xt)[:, :keep], parallel.to_host(x0)[:, :keep]))
        return parallel.to_host(x)[:chunk]  # gathers across processes when the array spans several

    rows = labels if labels is not None else np.zeros(num, np.int32)
    samples = map_chunks(run_chunk, rows, chunk, progress)
    metadata = {"num_samples": num, "num_steps": int(len(sampler.timesteps)),
                "network_evaluations": sampler.evaluations, "chunk_size": chunk,
                "guidance_scale": scale if labels is not None else None, "conditional": labels is not None,
                "devices": int(devices),
                "guidance_interval": list(guidance_interval) if interval is not None else None,
                "timesteps": [t.item() for t in np.asarray(sampler.timesteps)]}
    traj_t = (np.append(sampler.timesteps[trajectory_positions(len(sampler.timesteps), every)], -1)
              if every else None)
    noise = np.concatenate(noises)[:num] if keep_noise else None
    return SampleOutput(samples, trajectory[0] if trajectory else None, trajectory[1] if trajectory else None,
                        traj_t, labels, metadata, noise)
