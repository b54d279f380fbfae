"""``--mode=export``: a work directory's network as a Hugging Face diffusers pipeline folder.

``<workdir>/diffusers_<step>_<digest>/`` (a folder or URL; :func:`export_name`: the checkpoint step and a
digest of the ``sampling`` block, whose ``use_ema``, ``ema_std``, ``variance``, ``clip_x0`` and ``spacing``
choose the weights and the scheduler, so no export replaces a different one) gets, for every family:

- ``unet/config.json`` + ``unet/diffusion_pytorch_model.safetensors``: the ``UNet2DModel`` (the EMA
  weights unless ``sampling.use_ema=False``);
- ``jaxdiff.json``: the family and every ``config.diffusion`` field that defines the trained function
  (:mod:`jaxdiff.interop.process_file`), so that ``--config.model.init_from=<that folder>`` on any
  config samples the same model (it wins over ``scheduler_config.json`` when jaxdiff reads the folder);

and ``scheduler/scheduler_config.json`` where diffusers has a scheduler for the family
(:mod:`jaxdiff.interop.diffusers_scheduler` maps each field and says where the conventions differ):

- ddpm: a ``DDPMScheduler`` (schedule, target, ``sampling.variance``, ``sampling.clip_x0``) and
  ``model_index.json``, so ``DDPMPipeline.from_pretrained(folder)`` samples it;
- edm: an ``EDMEulerScheduler`` (``diffusion.edm``'s sigmas, ``sigma_data`` and ``rho``; its
  preconditioning is jaxdiff's term for term);
- flow: a ``FlowMatchEulerDiscreteScheduler`` (``diffusion.flow.shift``, ``num_train_timesteps = 1000``:
  the network time ``1000 t``);
- vp: none (diffusers has no maintained continuous VP scheduler): ``jaxdiff.json`` only.

No diffusers pipeline runs a ``UNet2DModel`` with the edm or flow scheduler, so those folders have no
``model_index.json``; in PyTorch::

    UNet2DModel.from_pretrained(folder, subfolder="unet")
    EDMEulerScheduler.from_pretrained(folder, subfolder="scheduler")

load them. Whatever diffusers cannot express (GroupNorm groups that do not divide a level's channels,
a DiT, a latent model, ...) is a one-line error before anything is written.
"""

from __future__ import annotations

import jax

from jaxdiff.common import parallel, paths
from jaxdiff.drivers import trained_model
from jaxdiff.drivers.checks import check_workdir
from jaxdiff.drivers.diffusion_config import resolve_target
from jaxdiff.interop import diffusers_scheduler, diffusers_unet, process_file
from jaxdiff.models.backbones import BACKBONES

BLOCKS = ("data", "model", "diffusion", "training", "sampling")  # the config blocks --mode=export reads


def export_name(sampling_config, step: int, source: str = "") -> str:
    """``diffusers_<checkpoint step>_<digest>``, e.g. ``diffusers_0002000_3fa1c2``: the digest
    (:func:`~jaxdiff.common.paths.request_digest`) covers the ``sampling`` block and the
    ``model.init_from`` ``source``."""
    digest = paths.request_digest({"sampling": sampling_config.to_dict(), "init_from": source})
    return f"diffusers_{step:07d}_{digest}"


def run_export(config, workdir, log=print, overrides=()) -> str:
    """Write the network of ``workdir``'s latest checkpoint (or of ``model.init_from``) and its process
    to ``<workdir>/<export_name>`` and return that path. The network and process are the checkpoint's
    (``overrides``: the fields set by ``--config`` flags, see
    :func:`~jaxdiff.drivers.trained_model.open_trained`)."""
    opened = trained_model.open_trained(config, workdir, "export", log, overrides, BLOCKS)
    experiment = opened.experiment
    cfg = experiment.config
    out = opened.workdir / export_name(cfg.sampling, opened.step, opened.source.path if opened.source else "")
    unet, size = experiment.model, cfg.data.image_size
    backbone = BACKBONES[cfg.model.backbone]
    if not backbone.diffusers_export or experiment.latent is not None or experiment.family.jump is not None:
        what = (backbone.what if not backbone.diffusers_export else "a latent diffusion model"
                if experiment.latent is not None else f"a {experiment.family.name} model, whose network takes a "
                "second time input (UNet2DModel has none)" if experiment.family.two_times else
                f"a {experiment.family.name} model, whose few-step sampler jaxdiff.json cannot describe")
        raise ValueError("--mode=export writes pixel-space U-Nets (diffusers UNet2DModel); this model is " + what)
    # what cannot be written fails here, before any work
    diffusers_unet.config_from_unet(unet, size)
    diffusion = {**cfg.diffusion.to_dict(), "target": resolve_target(cfg.diffusion)}
    process_file.record(diffusion)
    scheduler = None
    if cfg.diffusion.family in diffusers_scheduler.SCHEDULERS:
        scheduler = diffusers_scheduler.scheduler_config(diffusion, cfg.sampling, diffusers_unet.DIFFUSERS_VERSION)
    check_workdir(opened.workdir)
    params = trained_model.load_params(opened, cfg.sampling.use_ema, cfg.sampling.ema_std)
    params = jax.tree.map(parallel.to_host, params)
    if paths.is_writer():
        diffusers_unet.write_folder(str(out), unet, params, size, scheduler, diffusion)
    log(f"export: {opened.describe()} -> {out}"
        + (f" ({scheduler['_class_name']} + jaxdiff.json)" if scheduler else
           f" (jaxdiff.json only: diffusers has no scheduler for the {cfg.diffusion.family} family)"))
    return str(out)
