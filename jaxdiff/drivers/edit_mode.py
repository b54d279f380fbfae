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

This module resolves the method, plans the edit (:class:`EditPlan`) and writes the results; the
inputs, mask and labels are read in :mod:`jaxdiff.drivers.edit_inputs`, and the tasks run over the
inputs in :mod:`jaxdiff.drivers.edit_tasks`.
"""

from __future__ import annotations

import functools
import json

import jax
import numpy as np

from jaxdiff.common import paths, plotting, preemption
from jaxdiff.core import editing, operators, restoration, sampler_registry
from jaxdiff.core.generation import call_network, network_time_interval, prior_noise
from jaxdiff.core.guidance import guided_denoise_fn
from jaxdiff.core.sampler import run_sampler
from jaxdiff.drivers import config_checks, trained_model
from jaxdiff.drivers.config_checks import ConfigError, check_workdir
from jaxdiff.drivers.edit_inputs import edit_labels, known_mask, read_input
from jaxdiff.drivers.edit_tasks import EditRun, edit_images, interpolate_images, invert_images
from jaxdiff.drivers.sampling_config import check_sampling_config, resolve_sampler, sampler_options
from jaxdiff.training.keys import EDIT_STREAM, stream_key

BLOCKS = (*config_checks.DIFFUSION_BLOCKS, "edit")  # the config blocks --mode=edit reads
PIXEL_SPACE_TASKS = ("inpaint", "restore")  # their masks and operators act on pixels, not latents
REPAINT_SAMPLER = "euler_ancestral"  # RePaint resampling with sampling.sampler=auto where that is multistep (vp)


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
            self.ddnm_sampler = lambda y: sampler_registry.sampler_on_grid(
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
        return guided_denoise_fn(functools.partial(call_network, ex.apply_fn, params), labels,
                                 float(sc.guidance_scale), null, interval)

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
            make = lambda grid: sampler_registry.sampler_on_grid(self.experiment.family, self.name, grid,  # noqa: E731
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


def run_edit_mode(config, workdir, overrides=()) -> dict:
    """Restore the latest checkpoint in ``workdir`` (else ``model.init_from``), run ``config.edit``'s
    task on its inputs and write the files of the module docstring. Returns the metadata (what
    ``edit.json`` holds). SIGTERM or Ctrl-C stops it between chunks, before anything is written."""
    # validates the config, the edit block included
    opened = trained_model.open_trained(config, workdir, "edit", overrides=overrides, blocks=BLOCKS)
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
    params = trained_model.load_params(opened, sc.use_ema, sc.ema_std)
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
