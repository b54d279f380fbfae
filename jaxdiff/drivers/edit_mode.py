"""``--mode=edit``: a trained model applied to images, as ``config.edit`` describes (docs/editing.md).

Tasks: ``inpaint`` (RePaint, DDNM or DPS with a mask), ``sdedit`` (image-to-image at a strength),
``restore`` (super-resolution, deblurring, colorization or denoising by DDNM or DPS), ``invert``
(DDIM inversion and reconstruction) and ``interpolate`` (spherical interpolation between inverted
images or noises). The sampler is ``config.sampling``'s; class labels and guidance combine with every
task. Every check (fields, the input's size and channels, the mask, the operator against the
model's images) runs before anything is restored or compiled. Process 0 writes
``<workdir>/edit_<tag>/``: ``before_after.png`` (input, degraded input, results; or the
interpolation paths), ``results/000000.png ...`` (one PNG per result) and ``edit.npz`` with
``edit.json``.
"""

from __future__ import annotations

import json
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.common import array_files, parallel, paths, plotting, preemption
from jaxdiff.common.chunks import map_chunks
from jaxdiff.core import editing, operators, restoration, solvers
from jaxdiff.core.generation import network_time_interval, prior_noise
from jaxdiff.core.samplers import guided_denoise_fn, run_sampler
from jaxdiff.data import DataError, image_mode, preprocess, read_image
from jaxdiff.drivers import restore
from jaxdiff.drivers.config_checks import ConfigError, check_workdir
from jaxdiff.drivers.eval_features import load_splits
from jaxdiff.drivers.progress import GuardedBar
from jaxdiff.drivers.sampling import check_sampling_config, parse_labels, resolve_sampler, sampler_options
from jaxdiff.training.keys import EDIT_STREAM, stream_key

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
PIXEL_SPACE_TASKS = ("inpaint", "restore")  # their masks and operators act on pixels, not latents
REPAINT_SAMPLER = "euler_ancestral"  # RePaint resampling with sampling.sampler=auto where that is multistep (vp)


# --------------------------------------------------------------------------- inputs

def method_of(edit_config) -> str:
    """``edit.method`` with ``auto`` resolved: repaint for inpaint, ddnm for restore (dps when the
    measurement is noisy); ``-`` for the tasks without a method."""
    ec = edit_config
    if ec.task not in ("inpaint", "restore"):
        return "-"
    if ec.method != "auto":
        return ec.method
    if ec.task == "inpaint":
        return "repaint"
    return "dps" if ec.measurement_noise > 0 else "ddnm"


def known_mask(spec: str, image_shape, seed: int = 0) -> np.ndarray:
    """``[H, W, 1]`` float32, 1 where the input is kept and 0 in the region ``spec`` names to fill:
    ``center`` (the middle half in each direction), ``left`` / ``right`` / ``top`` / ``bottom``
    halves, ``random`` (half the pixels, ``default_rng(seed)``), ``box:y0,x0,h,w``, or a PNG / .npy
    file of the image size (white / nonzero = fill)."""
    h, w = int(image_shape[0]), int(image_shape[1])
    fill = np.zeros((h, w), bool)
    text = str(spec).strip()
    if text == "center":
        fill[h // 4:h - h // 4, w // 4:w - w // 4] = True
    elif text in ("left", "right", "top", "bottom"):
        half = {"left": (slice(None), slice(0, w // 2)), "right": (slice(None), slice(w // 2, None)),
                "top": (slice(0, h // 2), slice(None)), "bottom": (slice(h // 2, None), slice(None))}[text]
        fill[half] = True
    elif text == "random":
        fill = np.random.default_rng(seed).random((h, w)) < 0.5
    elif text.startswith("box:"):
        try:
            y0, x0, bh, bw = (int(v) for v in text[4:].split(","))
        except ValueError:
            raise ConfigError(f"edit.mask={spec!r}: a box is box:y0,x0,h,w in pixels") from None
        if not (0 <= y0 < h and 0 <= x0 < w and bh > 0 and bw > 0):
            raise ConfigError(f"edit.mask={spec!r} is outside the {h}x{w} images")
        fill[y0:y0 + bh, x0:x0 + bw] = True
    else:  # a file (config_checks.validate_edit checked that it exists)
        path = paths.as_path(text)
        array = _read_array(path, "edit.mask") if text.endswith(".npy") else _read_image(path, 1)[..., 0]
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.shape != (h, w):
            raise ConfigError(f"edit.mask {text} is {'x'.join(map(str, array.shape))}, but the model's images are "
                              f"{h}x{w}")
        fill = array > (127 if array.dtype == np.uint8 else 0)
    if not fill.any() or fill.all():
        raise ConfigError(f"edit.mask={spec!r} fills {'nothing' if not fill.any() else 'every pixel'}")
    return (~fill).astype(np.float32)[..., None]


def _read_image(path, channels: int) -> np.ndarray:
    try:
        image_mode(str(path))  # a decompression bomb refused from the header, without PIL's warning
        return read_image(str(path), channels)
    except DataError as e:
        raise ConfigError(str(e)) from None


def _read_array(path, field: str) -> np.ndarray:
    """The array of an ``.npy`` file, or the ``images`` array of an ``.npz`` (read without trusting the
    file: :mod:`jaxdiff.common.array_files`); :class:`ConfigError` naming ``field`` otherwise."""
    try:
        data = path.read_bytes()
        if path.suffix != ".npz":
            return array_files.npy_from_bytes(data, str(path))
        arrays = array_files.npz_from_bytes(data, str(path))
    except (OSError, array_files.ArrayFileError) as e:
        raise ConfigError(f"{field} {path} cannot be read ({e})") from None
    if "images" not in arrays:
        raise ConfigError(f"{field} {path} has no array 'images' (it has {', '.join(sorted(arrays)) or 'none'})")
    return arrays["images"]


def read_input(edit_config, data_config, image_shape) -> tuple[np.ndarray, np.ndarray | None]:
    """The first ``edit.num_images`` input images as uint8 ``[N, H, W, C]`` and their labels (``None``
    unless they come from the dataset). ``ConfigError`` (one line) for a missing input, too few
    images, or images of another size or channel count than the model's ``image_shape``."""
    ec, (h, w, c) = edit_config, tuple(image_shape)
    n, spec, labels = int(ec.num_images), str(ec.input), None
    if spec == "dataset":
        _, test, _ = load_splits(data_config)
        if len(test) < n:
            raise ConfigError(f"edit.num_images={n}, but the test split has {len(test)} images")
        images, labels = test[np.arange(n)]
        labels = np.asarray(labels, np.int32)
    else:
        path = paths.as_path(spec)
        if not path.exists():
            raise ConfigError(f"edit.input={spec!r} is not 'dataset' or an existing folder, .npz or .npy file")
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ConfigError(f"edit.input {spec} holds no {'/'.join(IMAGE_SUFFIXES)} images")
            files = files[:n]
            images = [_read_image(p, c) for p in files]
            for p, im in zip(files, images):
                if im.shape[:2] != (h, w):
                    raise ConfigError(f"{p} is {im.shape[0]}x{im.shape[1]}, but the model's images are {h}x{w}")
            images = np.stack(images)
        else:
            images = _read_array(path, "edit.input")
            if images.ndim == 3:
                images = images[..., None]
            if images.ndim != 4 or images.dtype != np.uint8:
                raise ConfigError(f"edit.input {spec} holds {images.dtype} {images.shape}; images are uint8 "
                                  "[N, H, W, C]")
            if images.shape[1:] != (h, w, c):
                raise ConfigError(f"edit.input {spec} holds images of {images.shape[1:]}, but the model's are "
                                  f"{(h, w, c)}")
        if len(images) < n:
            raise ConfigError(f"edit.num_images={n}, but edit.input {spec} holds {len(images)} images")
        images = images[:n]
    return np.asarray(images, np.uint8), labels


def edit_labels(edit_config, sampling_config, input_labels, num: int, num_classes: int) -> np.ndarray | None:
    """The class of every input (``None``: unconditional): ``auto`` takes the dataset's labels for a
    class-conditional model (else ``sampling.labels``), ``none``, or comma-separated ids cycled."""
    spec = str(edit_config.labels).strip().lower()
    if spec == "auto":
        if num_classes and input_labels is not None:
            return parse_labels(",".join(str(int(v)) for v in input_labels), num, num_classes)
        spec = str(sampling_config.labels)
    return parse_labels(spec, num, num_classes)


# --------------------------------------------------------------------------- the edit itself

class EditPlan:
    """What one edit runs, built (NumPy only) from the config and the opened model: the grid and
    sampler, the operator (restore, inpaint by ddnm / dps) or mask (repaint), and one compiled
    ``run(params, key, x, labels) -> (results, degraded)`` per chunk shape."""

    def __init__(self, config, experiment):
        ec, sc, family = config.edit, config.sampling, experiment.family
        self.config, self.experiment = config, experiment
        self.task, self.method = ec.task, method_of(ec)
        self.name, self.steps = resolve_sampler(sc, family)
        self.grid, self.sampler = self._grid_and_sampler()
        resamples = self.method == "repaint" and ec.jump_n_sample > 1
        if resamples and sc.sampler == "auto" and not editing.is_one_step(self.sampler):
            self.name = REPAINT_SAMPLER  # the family's auto sampler is multistep (vp: DPM-Solver++)
            self.grid, self.sampler = self._grid_and_sampler()
        shape = tuple(experiment.image_shape)
        self.known = self.operator = None
        if self.task == "inpaint":
            self.known = known_mask(ec.mask, shape, config.seed)
            if self.method != "repaint":
                self.operator = operators.inpainting(self.known)
        elif self.task == "restore":
            self.operator = operators.operator_from_name(ec.operator, ec.operator_scale, shape[-1])
        if self.operator is not None:
            self.operator.measurement_shape(shape)  # ValueError if it does not fit the images
        if resamples and not editing.is_one_step(self.sampler):
            raise ConfigError(f"edit.method=repaint resamples (edit.jump_n_sample={ec.jump_n_sample}) and needs a "
                              f"one-step sampler; sampling.sampler={self.name!r} is multistep (or set "
                              "edit.jump_n_sample=1)")
        if self.task == "interpolate" or self.task == "invert":
            editing.inversion_levels(family, self.grid)
        if self.method == "ddnm":
            general, sde_eta = restoration.x0_eps_form(self.name, sc.eta, sc.variance)
            options = {**sampler_options(sc), "clip_x0": False, **({"sde_eta": sde_eta} if sde_eta is not None else {})}
            self.ddnm_sampler = lambda y: solvers.sampler_on_grid(
                restoration.ddnm_family(family, self.operator, y, sc.clip_x0), general, self.grid, **options)
        self._compiled = None

    def _grid_and_sampler(self):
        sc = self.config.sampling
        return editing.grid_and_sampler(self.experiment.family, self.name, self.steps, sc.spacing,
                                        set_alpha_to_one=sc.set_alpha_to_one, **sampler_options(sc))

    def net(self, params, labels):
        """The (guided) network: ``sampling.guidance_scale`` with labels, in ``sampling.guidance_interval``."""
        ex, sc = self.experiment, self.config.sampling
        null = ex.model.num_classes if ex.model.num_classes else None
        interval = None
        if labels is not None and sc.guidance_scale != 1.0:
            interval = network_time_interval(self.sampler, tuple(sc.guidance_interval) or None)
        return guided_denoise_fn(lambda x, t, y: ex.apply_fn(params, x, t, y), labels, float(sc.guidance_scale), null,
                                 interval)

    def measure(self, x, key):
        """``(y, shown)``: the measurement ``y = A x + s_y n`` (restore, inpaint by ddnm / dps; the input
        itself for the other tasks) and what to show of it: ``y`` when it is an image of the input's
        shape (blur, noise, a mask), else ``A^+ y`` (the upsampled low-resolution or grey image)."""
        ec = self.config.edit
        if self.operator is None:
            return x, (self.known * x if self.known is not None else x)
        y = self.operator.forward(x)
        if self.task == "restore" and ec.measurement_noise > 0:
            y = y + float(ec.measurement_noise) * jax.random.normal(key, y.shape, y.dtype)
        return y, (y if y.shape == x.shape else self.operator.pinv(y))  # A^+ of a blurred y amplifies its noise

    def edit(self, params, key, x, y, labels):
        """Results for inputs ``x`` (model space) with measurements ``y`` (:meth:`measure`)."""
        ec = self.config.edit
        net = self.net(params, labels)
        if self.task == "sdedit":
            make = lambda grid: solvers.sampler_on_grid(self.experiment.family, self.name, grid,  # noqa: E731
                                                        **sampler_options(self.config.sampling))
            return editing.sdedit(make, self.grid, net, x, key, ec.strength)
        if self.method == "repaint":
            return editing.repaint(self.sampler, self.grid, net, x, self.known, key, jump_length=ec.jump_length,
                                   jump_n_sample=ec.jump_n_sample)
        if self.method == "ddnm":
            sampler = self.ddnm_sampler(y)
        else:
            sampler = restoration.dps_sampler(self.sampler, self.operator, y, float(ec.dps_scale))
        x_T = prior_noise(key, x.shape, sampler.prior_scale)
        return run_sampler(sampler, net, x_T, jax.random.fold_in(key, 1)).samples

    def invert(self, params, x, labels):
        return editing.invert(self.experiment.family, self.grid, self.net(params, labels), x)

    def reconstruct(self, params, x_T, labels):
        return editing.reconstruct(self.experiment.family, self.grid, self.net(params, labels), x_T)

    def compiled(self):
        if self._compiled is None:
            self._compiled = {name: jax.jit(getattr(self, name))
                              for name in ("edit", "measure", "invert", "reconstruct")}
        return self._compiled


def edit_tag(plan: EditPlan, step: int, source: str = "") -> str:
    """Folder-name tag ``<task>[_<operator><scale>][_<method>]_<sampler><steps>_<checkpoint step>_<digest>``,
    e.g. ``restore_super_resolution4_ddnm_ddim50_0002000_3fa1c2``: the digest
    (:func:`~jaxdiff.common.paths.request_digest`) covers the ``edit`` and ``sampling`` blocks (mask,
    input, strength, ...), the seed and the ``model.init_from`` ``source``, so differing edits never
    overwrite each other."""
    ec = plan.config.edit
    method = "" if plan.method == "-" else f"_{plan.method}"
    what = f"_{ec.operator}{ec.operator_scale:g}" if plan.task == "restore" else ""
    digest = paths.request_digest({"edit": ec.to_dict(), "sampling": plan.config.sampling.to_dict(),
                                   "seed": plan.config.seed, "init_from": source})
    return f"{plan.task}{what}{method}_{plan.name}{plan.steps}_{step:07d}_{digest}"


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

    plan: EditPlan
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


def run_edit_mode(config, workdir, overrides=()) -> dict:
    """Restore the latest checkpoint in ``workdir`` (else ``model.init_from``), run ``config.edit``'s
    task on its inputs and write the files of the module docstring. Returns the metadata (what
    ``edit.json`` holds). SIGTERM or Ctrl-C stops it between chunks, before anything is written."""
    opened = restore.open_latest(config, workdir, "edit", overrides=overrides)  # validates the config and edit block
    experiment, step, ec, sc = opened.experiment, opened.step, config.edit, config.sampling
    check_sampling_config(sc, experiment.family, experiment.model.num_classes > 0)
    if experiment.latent is not None and ec.task in PIXEL_SPACE_TASKS:
        raise ConfigError(f"edit.task={ec.task} works on pixels; this is a latent diffusion model (use sdedit, invert "
                          "or interpolate, which run in its latent space)")
    shape = tuple(experiment.latent.image_shape if experiment.latent is not None else experiment.image_shape)
    try:
        plan = EditPlan(config, experiment)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    noise_input = ec.task == "interpolate" and str(ec.input) == "noise"
    images, input_labels = (None, None) if noise_input else read_input(ec, config.data, shape)
    num = int(ec.num_images)
    labels = edit_labels(ec, sc, input_labels, num, experiment.model.num_classes)
    out_root = check_workdir(opened.workdir)
    params = restore.load_params(opened, sc.use_ema, sc.ema_std)
    devices = experiment.mesh.devices.size
    chunk = -(-min(int(sc.batch_size), num * int(ec.samples_per_image)) // devices) * devices
    task_fn = {"invert": invert_images, "interpolate": interpolate_images}.get(ec.task, edit_images)
    with preemption.PreemptionGuard() as guard:
        run = EditRun(plan, params, stream_key(config.seed, EDIT_STREAM, step), labels, chunk,
                      guard.stop_check("editing"))
        out = task_fn(run, images)

    tag = edit_tag(plan, step, opened.source.path if opened.source else "")
    info = {"task": ec.task, "method": plan.method, "sampler": plan.name, "num_steps": plan.steps,
            "checkpoint_step": int(step), "family": experiment.family.name, "num_images": num,
            "labels": labels.tolist() if labels is not None else None,
            "guidance_scale": float(sc.guidance_scale) if labels is not None else None, "input": str(ec.input),
            "devices": int(devices), **({"init_from": opened.source.path} if opened.source else {}), **out.info,
            "files": {"grid": f"edit_{tag}/before_after.png", "results": f"edit_{tag}/results",
                      "npz": f"edit_{tag}/edit.npz"}}
    if not paths.is_writer():  # every process edits (a collective); one writes
        return info
    out_dir = out_root / f"edit_{tag}"
    out_dir.mkdir(parents=True, exist_ok=True)
    plotting.save_columns(out.columns, out_dir / "before_after.png", out.titles)
    plotting.save_image_folder(out.results, out_dir / "results")
    paths.save_npz(out_dir / "edit.npz", compressed=True, results=plotting.to_uint8(out.results),
                   inputs=images if images is not None else np.zeros((0,) + shape, np.uint8),
                   labels=labels if labels is not None else np.full(num, -1, np.int32), meta=json.dumps(info),
                   **out.arrays)
    paths.write_bytes(out_dir / "edit.json", json.dumps(info, indent=1).encode())
    return info


def _chunk_key(key, c):
    """Chunk ``c``'s key ``fold_in(fold_in(key, 0), c)`` (``fold_in(key, 1)`` draws the measurement noise)."""
    return jax.random.fold_in(jax.random.fold_in(key, 0), c)


def _psnr(reference, images) -> float:
    """Mean PSNR (dB, peak-to-peak 2 on [-1, 1]) of ``images`` against ``reference``."""
    err = np.mean((np.clip(np.asarray(images, np.float64), -1, 1) - np.asarray(reference, np.float64)) ** 2,
                  axis=tuple(range(1, np.ndim(images))))
    return float(np.mean(10 * np.log10(4.0 / np.maximum(err, 1e-12))))
