"""jaxdiff: denoising diffusion models in pure-functional JAX/Flax.

The library is five layers, each importing only from the ones below it (``tests/test_layers_graph.py``
keeps it so)::

    common      JAX internals, CPU tuning, paths, mesh, preemption, chunks, pictures
    core        schedules, diffusion maths, continuous processes, families (ddpm, vp, edm, flow; few-step:
                meanflow, shortcut, consistency, trigflow (sCM), progressive distillation; the registry), samplers (protocol, DDPM chain, grid samplers, the registry), guidance,
                generation, likelihood, measurement operators, editing (SDEdit, RePaint, inversion,
                slerp) and restoration (DDNM, DPS)
    models      layers, the U-Net, DiT, the KL autoencoder,   data         sources, stream, preprocessing
                the denoiser calling convention
    training    train state, optimiser, EMA, keys, the steps, evaluation   FID/KID, features, accuracy
                checkpoints
                                                              interop      safetensors, diffusers folders
    drivers     config checks, the config adapter, model sources (init_from), latent spaces,
                train/sample/eval/edit/export/train_autoencoder modes
                (what main.py runs)

The names below are the public API; everything else is reachable through its module. Importing
jaxdiff changes nothing in the process: CPU tuning is an explicit call (:func:`cpu_tuning.apply`).
"""

from jaxdiff.common import cpu_tuning, parallel, paths
from jaxdiff.common.chunks import map_chunks
from jaxdiff.common.plotting import (make_grid, save_columns, save_image_folder, save_image_grid, save_loss_curve,
                                    save_trajectory, save_trajectory_gif, to_uint8)
from jaxdiff.core.diffusion import (TARGETS, diffusion_loss, loss_given_noise, q_posterior, q_sample,
                                    x0_eps_from_output)
from jaxdiff.core import editing, families, operators, processes, restoration
from jaxdiff.core.editing import grid_and_sampler, interpolation_path, invert, reconstruct, repaint, sdedit, slerp
from jaxdiff.core.families import FAMILIES, Family, Grid
from jaxdiff.core.consistency import consistency, consistency_flow, consistency_loss, ect_levels, ict_levels, pseudo_huber
from jaxdiff.core.meanflow import average_velocity_target, meanflow
from jaxdiff.core.progressive import distillation_target, progressive
from jaxdiff.core.shortcut import shortcut, shortcut_targets
from jaxdiff.core.trigflow import trigflow, trigflow_tangent
from jaxdiff.core.generation import generate
from jaxdiff.core.likelihood import dataset_bpd, make_bpd_fn
from jaxdiff.core.operators import LinearOperator
from jaxdiff.core.processes import edm_preconditioning, karras_sigmas
from jaxdiff.core.restoration import ddnm_family, dps_sampler
from jaxdiff.core.ddpm_chain import ddim_sampler, ddpm_sampler
from jaxdiff.core.guidance import guided_denoise_fn
from jaxdiff.core.sampler import Sampler, SampleOutput, run_sampler
from jaxdiff.core.schedules import SCHEDULES, DiffusionTables, make_betas, make_tables, rescale_zero_terminal_snr
from jaxdiff.core.grid_samplers import (dpm_solver_pp_sampler, edm_stochastic_sampler, euler_ancestral_sampler,
                                        heun_sampler, midpoint_sampler)
from jaxdiff.core.sampler_registry import SAMPLERS, make_sampler, sampler_on_grid
from jaxdiff.core.spacing import spaced_timesteps
from jaxdiff.data import ArraySource, DataError, batch_stream, load_source, preprocess
from jaxdiff.evaluation.fid import frechet_distance, kid
from jaxdiff.interop.diffusers_autoencoder import read_folder as read_diffusers_autoencoder
from jaxdiff.interop.diffusers_autoencoder import write_folder as write_diffusers_autoencoder
from jaxdiff.interop.diffusers_unet import read_folder as read_diffusers_unet
from jaxdiff.interop.diffusers_unet import write_folder as write_diffusers_unet
from jaxdiff.models.autoencoder import AutoencoderKL
from jaxdiff.models.denoiser import denoiser_apply, init_denoiser, with_span_params
from jaxdiff.models.dit import DiT, dit_from_name
from jaxdiff.models.unet import UNet, count_params
from jaxdiff.training import posthoc_ema
from jaxdiff.training.checkpoint import CheckpointError
from jaxdiff.training.autoencoder_step import make_autoencoder_train_step
from jaxdiff.training.optim import ema_update, learning_rate_schedule, make_optimizer
from jaxdiff.training.state import TrainState, init_train_state
from jaxdiff.training.step import make_train_step

__version__ = "0.7.0"

__all__ = [
    "ArraySource", "AutoencoderKL", "CheckpointError", "DataError", "DiT", "DiffusionTables", "FAMILIES", "Family",
    "Grid", "LinearOperator", "SAMPLERS", "SCHEDULES", "SampleOutput", "Sampler", "TARGETS", "TrainState", "UNet",
    "average_velocity_target", "batch_stream", "consistency", "consistency_flow", "consistency_loss", "count_params",
    "cpu_tuning", "dataset_bpd", "ddim_sampler", "ddnm_family", "ddpm_sampler", "denoiser_apply", "diffusion_loss",
    "distillation_target", "dit_from_name", "dpm_solver_pp_sampler", "dps_sampler", "ect_levels", "editing",
    "edm_preconditioning", "edm_stochastic_sampler", "ema_update", "euler_ancestral_sampler", "families",
    "frechet_distance", "generate", "grid_and_sampler", "guided_denoise_fn", "heun_sampler", "ict_levels",
    "init_denoiser", "init_train_state", "interpolation_path", "invert", "karras_sigmas", "kid",
    "learning_rate_schedule", "load_source", "loss_given_noise", "make_autoencoder_train_step", "make_betas",
    "make_bpd_fn", "make_grid", "make_optimizer", "make_sampler", "make_tables", "make_train_step", "map_chunks",
    "meanflow", "midpoint_sampler", "operators", "parallel", "paths", "posthoc_ema", "preprocess", "processes",
    "progressive", "pseudo_huber", "q_posterior", "q_sample", "read_diffusers_autoencoder", "read_diffusers_unet",
    "reconstruct", "repaint", "rescale_zero_terminal_snr", "restoration", "run_sampler", "sampler_on_grid",
    "save_columns", "save_image_folder", "save_image_grid", "save_loss_curve", "save_trajectory",
    "save_trajectory_gif", "sdedit", "shortcut", "shortcut_targets", "slerp", "spaced_timesteps", "to_uint8",
    "trigflow", "trigflow_tangent", "with_span_params", "write_diffusers_autoencoder", "write_diffusers_unet",
    "x0_eps_from_output",
]
