"""``--mode=export``: a work directory's network as a Hugging Face diffusers pipeline folder.

``<workdir>/diffusers/`` (a folder or URL) gets ``unet/config.json`` + ``unet/diffusion_pytorch_model.safetensors`` (the
EMA weights unless ``sampling.use_ema=False``) and, for the ddpm family, ``scheduler/scheduler_config.json``
and ``model_index.json``, so that in PyTorch::

    UNet2DModel.from_pretrained("<workdir>/diffusers", subfolder="unet")
    DDPMPipeline.from_pretrained("<workdir>/diffusers")

load it. Whatever diffusers cannot express (a continuous family's scheduler, GroupNorm groups that do
not divide a level's channels, ...) is a one-line error before anything is written.
"""

from __future__ import annotations

import jax

from jaxdiff.common import parallel, paths
from jaxdiff.drivers import restore
from jaxdiff.drivers.diffusion_config import resolve_target
from jaxdiff.interop import diffusers_scheduler, diffusers_unet


def run_export(config, workdir, log=print) -> str:
    """Write the network of ``workdir``'s latest checkpoint (or of ``model.init_from``) to
    ``<workdir>/diffusers`` and return that path."""
    opened = restore.open_latest(config, workdir, "export", log)
    experiment = opened.experiment
    cfg = experiment.config
    out = paths.as_path(opened.workdir) / "diffusers"
    unet, size = experiment.model, cfg.data.image_size
    if cfg.model.backbone != "unet" or experiment.latent is not None:
        raise ValueError("--mode=export writes pixel-space U-Nets (diffusers UNet2DModel); this model is "
                         + ("a DiT" if cfg.model.backbone != "unet" else "a latent diffusion model"))
    diffusers_unet.config_from_unet(unet, size)  # what diffusers cannot express fails here, before any work
    scheduler = None
    if cfg.diffusion.family == "ddpm":
        diffusion = {**cfg.diffusion.to_dict(), "target": resolve_target(cfg.diffusion)}
        scheduler = diffusers_scheduler.scheduler_config(diffusion, cfg.sampling, diffusers_unet.DIFFUSERS_VERSION)
    params = jax.tree.map(parallel.to_host, restore.load_params(opened, cfg.sampling.use_ema, cfg.sampling.ema_std))
    if paths.is_writer():
        diffusers_unet.write_folder(str(out), unet, params, size, scheduler)
    log(f"export: {opened.describe()} -> {out}"
        + ("" if scheduler else f" (no scheduler: diffusers has none for the {cfg.diffusion.family} family)"))
    return str(out)
