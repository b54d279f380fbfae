"""Edit mode's tasks run over the inputs: :class:`EditRun` (one run's compiled functions, keys and
chunking over the experiment's mesh) and one function per kind of task, each returning what it
writes (:class:`EditOutput`): :func:`edit_images` (inpaint, sdedit, restore), :func:`invert_images`
and :func:`interpolate_images`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.common import parallel, plotting
from jaxdiff.common.chunks import map_chunks
from jaxdiff.core import editing
from jaxdiff.core.generation import prior_noise
from jaxdiff.data import preprocess
from jaxdiff.drivers.progress import GuardedBar


class EditOutput(NamedTuple):
    """What a task wrote: the figure's ``columns`` (``[N, H, W, C]`` each, in [-1, 1]) and their
    ``titles``, the ``results`` (one PNG each), extra ``info`` for ``edit.json`` and extra ``arrays``
    for ``edit.npz``."""

    columns: list
    titles: list
    results: np.ndarray
    info: dict
    arrays: dict


class EditRun(NamedTuple):
    """One run's compiled functions, parameters, keys, labels and chunking, shared by the tasks:
    ``apply(name, c, *rows)`` calls the compiled function ``name`` on chunk ``c``'s rows placed over
    the experiment's mesh (batch sharded over ``data``; the chunk is a multiple of its devices)."""

    plan: object  # the run's EditPlan (jaxdiff.drivers.edit_mode)
    params: object
    key: jax.Array
    labels: np.ndarray | None
    chunk: int
    check: Callable

    @property
    def label_rows(self):
        return self.labels if self.labels is not None else np.zeros(int(self.plan.config.edit.num_images), np.int32)

    def place(self, rows):
        mesh = self.plan.experiment.mesh
        return jax.tree.map(lambda a: parallel.put_global(np.asarray(a), parallel.batch_sharded(mesh)), rows)

    def map(self, name: str, rows, desc: str, with_key: bool = False):
        """``name`` over ``rows`` (a tuple whose last entry is the label rows) in chunks, with a bar."""
        fn = self.plan.compiled()[name]
        conditional = self.labels is not None

        def run_chunk(c, chunk_rows):
            *arrays, labels = self.place(tuple(chunk_rows))
            args = ((_chunk_key(self.key, c),) if with_key else ()) + tuple(arrays) + (labels if conditional else None,)
            return jax.tree.map(parallel.to_host, fn(self.params, *args))

        with GuardedBar(len(rows[0]), desc, self.check) as bar:
            return map_chunks(run_chunk, rows, self.chunk, bar)

    def to_model(self, images):
        """uint8 images -> the model's space: ``[-1, 1]`` pixels, or latents for a latent model."""
        latent = self.plan.experiment.latent
        return np.asarray(latent.encode(images) if latent is not None else preprocess(images, None))

    def to_images(self, x):
        latent = self.plan.experiment.latent
        return np.asarray(self.plan.experiment.decode(jnp.asarray(x)) if latent is not None else x)


def edit_images(run: EditRun, images) -> EditOutput:
    """inpaint, sdedit, restore: ``edit.samples_per_image`` results per input."""
    plan, ec = run.plan, run.plan.config.edit
    reps = int(ec.samples_per_image)
    x = run.to_model(images)
    y, shown = (parallel.to_host(v) for v in plan.compiled()["measure"](jnp.asarray(x), jax.random.fold_in(run.key, 1)))
    rows = tuple(np.repeat(v, reps, 0) for v in (x, y, run.label_rows))
    results = run.to_images(run.map("edit", rows, ec.task, with_key=True))
    inputs = preprocess(images, None)
    columns, titles, arrays, info = [np.asarray(inputs)], ["input"], {}, {}
    if ec.task != "sdedit":
        columns.append(run.to_images(shown))
        titles.append(plan.operator.name if plan.task == "restore" else "masked")
        arrays["degraded"] = plotting.to_uint8(columns[-1])
    columns += [results[k::reps] for k in range(reps)]
    titles += [f"result {k + 1}" for k in range(reps)]
    if ec.task == "restore":
        info.update(operator=plan.operator.name, measurement_noise=float(ec.measurement_noise))
    elif ec.task == "sdedit":
        info["strength"] = float(ec.strength)
    else:
        info["mask"], arrays["known"] = str(ec.mask), plan.known
    info["psnr_to_input_db"] = _psnr(np.repeat(np.asarray(inputs), reps, 0), results)
    return EditOutput(columns, titles, results, info, arrays)


def invert_images(run: EditRun, images) -> EditOutput:
    """invert: each input's noise ``x_T`` and its reconstruction from it."""
    x = run.to_model(images)
    x_T = run.map("invert", (x, run.label_rows), "invert")
    back = run.map("reconstruct", (x_T, run.label_rows), "reconstruct")
    inputs, results = np.asarray(preprocess(images, None)), run.to_images(back)
    columns, titles = [inputs], ["input"]
    if run.plan.experiment.latent is None:  # noise of latents is not an image
        columns.append(np.clip(x_T / (3.0 * run.plan.grid.prior_scale), -1.0, 1.0))
        titles.append("x_T / 3")
    info = {"reconstruction_rms": float(np.sqrt(np.mean((x - back) ** 2))), "psnr_to_input_db": _psnr(inputs, results)}
    return EditOutput(columns + [results], titles + ["reconstruction"], results, info, {"noise": x_T})


def interpolate_images(run: EditRun, images) -> EditOutput:
    """interpolate: ``edit.interpolation_points`` images along the slerp between the noises of pairs
    of inputs (inverted), or of fresh noises (``images`` is ``None``); each pair keeps its first label."""
    plan, ec = run.plan, run.plan.config.edit
    points, pairs = int(ec.interpolation_points), int(ec.num_images) // 2
    labels = run.label_rows[:2 * pairs]
    if images is None:
        z = np.asarray(prior_noise(run.key, (2 * pairs,) + tuple(plan.experiment.image_shape),
                                   plan.sampler.prior_scale))
    else:
        z = run.map("invert", (run.to_model(images[:2 * pairs]), labels), "invert")
    path = np.asarray(editing.interpolation_path(z[0::2], z[1::2], points))  # point-major
    out = run.to_images(run.map("reconstruct", (path, np.tile(labels[0::2], points)), "interpolate"))
    out = out.reshape((points, pairs) + out.shape[1:])
    results = out.transpose(1, 0, 2, 3, 4).reshape((-1,) + out.shape[2:])
    return EditOutput([out[k] for k in range(points)], [f"u={u:.2f}" for u in np.linspace(0, 1, points)], results,
                      {"interpolation_points": points}, {})


def _chunk_key(key, c):
    """Chunk ``c``'s key ``fold_in(fold_in(key, 0), c)`` (``fold_in(key, 1)`` draws the measurement noise)."""
    return jax.random.fold_in(jax.random.fold_in(key, 0), c)


def _psnr(reference, images) -> float:
    """Mean PSNR (dB, peak-to-peak 2 on [-1, 1]) of ``images`` against ``reference``."""
    err = np.mean((np.clip(np.asarray(images, np.float64), -1, 1) - np.asarray(reference, np.float64)) ** 2,
                  axis=tuple(range(1, np.ndim(images))))
    return float(np.mean(10 * np.log10(4.0 / np.maximum(err, 1e-12))))
