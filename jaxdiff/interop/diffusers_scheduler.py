"""A diffusers ``scheduler_config.json`` <-> jaxdiff's diffusion settings.

The scheduler of a diffusers model folder says which process its network was trained on and how
diffusers samples it. jaxdiff reads the discrete (DDPM-type) ones and writes one for each family that
a diffusers scheduler expresses; ``jaxdiff.json`` (:mod:`jaxdiff.interop.process_file`) records every
family exactly, beside it.

**ddpm** (read and written, ``DDPMScheduler``): ``num_train_timesteps``, the betas (``beta_schedule``,
``beta_start``, ``beta_end``), the ``prediction_type`` and ``rescale_betas_zero_snr``; ``variance_type``
and ``clip_sample`` are how diffusers' DDPM pipeline samples it. Solver-specific fields (a DPM-Solver's
order, ...) are not part of the trained model and are ignored: jaxdiff chooses its own sampler.

=============================  ===================================================
diffusers                      jaxdiff
=============================  ===================================================
``linear``                     ``diffusion.schedule = linear``
``squaredcos_cap_v2``          ``cosine`` (Nichol & Dhariwal, betas capped at 0.999)
``sigmoid``                    ``sigmoid_geodiff``
``epsilon / v_prediction /     ``diffusion.target = eps / v / x0``
sample``
``fixed_small(_log)``,         ``sampling.variance = fixed_small / fixed_large``
``fixed_large(_log)``
``clip_sample``                ``sampling.clip_x0``
=============================  ===================================================

**edm** (written, ``EDMEulerScheduler``): ``sigma_min``, ``sigma_max``, ``sigma_data``, ``rho`` are
``diffusion.edm``'s; ``sigma_schedule`` is ``karras`` (``sampling.spacing`` auto or karras) or
``exponential`` (``logsnr``: the same geometric sigmas); ``final_sigmas_type = zero`` (jaxdiff's grids
end at sigma 0); ``prediction_type = epsilon``, which in diffusers' EDM scheduler is not an eps target
but EDM's preconditioned ``F``: ``precondition_inputs`` (``c_in = 1 / sqrt(sigma^2 + sigma_data^2)``),
``precondition_noise`` (the network's time input, and ``scheduler.timesteps``, ``c_noise = ln(sigma) /
4``) and ``precondition_outputs`` (``D = c_skip x + c_out F``, ``c_out = +sigma sigma_data / sqrt(sigma^2
+ sigma_data^2)``) are jaxdiff's :func:`~jaxdiff.core.processes.edm_preconditioning` term for term, so
the exported ``UNet2DModel`` fed ``c_in x`` and ``scheduler.timesteps`` is jaxdiff's ``F``.
``num_train_timesteps`` is diffusers' default 1000: EDM has no discrete steps, and diffusers uses it
only to size a table its samplers replace in ``set_timesteps``. Differences that remain: diffusers'
``init_noise_sigma`` is ``sqrt(sigma_max^2 + 1)`` where jaxdiff starts from ``sigma_max N(0, I)`` (EDM's
own choice; 80.006 against 80 at the paper's values), ``EDMEulerScheduler`` steps Euler where jaxdiff's
edm sampler is Heun by default, and no diffusers pipeline runs a ``UNet2DModel`` with it (the folder has
no ``model_index.json``; the loop is in docs/interop.md). The training distribution (``p_mean``,
``p_std``) is in ``jaxdiff.json`` only.

**flow** (written, ``FlowMatchEulerDiscreteScheduler``): ``shift`` is ``diffusion.flow.shift`` (the same
``shift t / (1 + (shift - 1) t)``) with ``use_dynamic_shifting = false``; ``num_train_timesteps = 1000``
because diffusers feeds the network ``timesteps = sigma x num_train_timesteps`` and jaxdiff's flow network
takes ``1000 t`` (``sigma`` is jaxdiff's ``t``: ``x = (1 - t) x0 + t eps``; the model output is the same
velocity ``eps - x0``, and the Euler step ``x + (sigma_next - sigma) v`` the same). The grids differ:
``set_timesteps(N)`` spaces ``N`` sigmas from 1 to the shifted ``1 / 1000`` and then shifts them again,
where jaxdiff shifts ``linspace(1, 0, N + 1)``; ``set_timesteps(sigmas=linspace(1, 0, N + 1)[:-1])`` gives
jaxdiff's grid exactly. The training distribution (``t_sampling``, ``loc``, ``scale``) is in
``jaxdiff.json`` only.

**vp** (not written): diffusers' only continuous VP scheduler, ``ScoreSdeVpScheduler``, is deprecated,
has no pipeline, no cosine process, and takes ``t`` where jaxdiff's network takes ``1000 t``; the
process is in ``jaxdiff.json`` only.
"""

from __future__ import annotations

from jaxdiff.core.families import NETWORK_TIME_SCALE
from jaxdiff.interop.safetensors_file import WeightsError

_SCHEDULES = {"linear": "linear", "squaredcos_cap_v2": "cosine", "sigmoid": "sigmoid_geodiff"}
_TARGETS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
# sampling.spacing -> EDMEulerScheduler's sigma_schedule (logsnr: geometric sigmas, diffusers' "exponential")
EDM_SIGMA_SCHEDULES = {"auto": "karras", "karras": "karras", "logsnr": "exponential"}
# The families a diffusers scheduler expresses, and the scheduler of each.
SCHEDULERS = {"ddpm": "DDPMScheduler", "edm": "EDMEulerScheduler", "flow": "FlowMatchEulerDiscreteScheduler"}
# The diffusers pipeline that samples a UNet2DModel with a scheduler (model_index.json); none for the others.
PIPELINES = {"DDPMScheduler": "DDPMPipeline"}
_VARIANCES = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small", "fixed_large": "fixed_large",
              "fixed_large_log": "fixed_large"}


def diffusion_settings(scheduler: dict, where: str = "scheduler_config.json") -> tuple[dict, dict]:
    """``(diffusion, sampling)``: the ``config.diffusion`` fields of the process a diffusers scheduler
    describes, and the ``config.sampling`` fields of how its DDPM pipeline samples (diffusers' own
    defaults for absent fields). Raises :class:`WeightsError` naming a field jaxdiff cannot reproduce."""

    def get(name, default):
        return scheduler.get(name, default)

    def unsupported(name, why):
        return WeightsError(f"{where}: {name}={get(name, None)!r} is not supported: {why}")

    if "beta_schedule" not in scheduler and scheduler.get("_class_name") not in ("DDPMScheduler", "DDIMScheduler"):
        raise WeightsError(f"{where}: _class_name={scheduler.get('_class_name')!r} has no beta schedule: jaxdiff "
                           "reads the discrete (DDPM-type) schedulers")
    if get("trained_betas", None) is not None:
        raise unsupported("trained_betas", "jaxdiff builds its betas from a named schedule")
    if get("beta_schedule", "linear") not in _SCHEDULES:
        raise unsupported("beta_schedule", f"choose one of {', '.join(_SCHEDULES)}")
    if get("prediction_type", "epsilon") not in _TARGETS:
        raise unsupported("prediction_type", f"choose one of {', '.join(_TARGETS)}")
    if get("variance_type", "fixed_small") not in _VARIANCES:
        raise unsupported("variance_type", "jaxdiff's networks do not predict a variance")
    if get("thresholding", False):
        raise unsupported("thresholding", "jaxdiff clips x0 to [-1, 1] (clip_sample) only")
    if get("clip_sample", True) and get("clip_sample_range", 1.0) != 1.0:
        raise unsupported("clip_sample_range", "jaxdiff clips x0 to [-1, 1]")
    if get("steps_offset", 0) != 0:
        raise unsupported("steps_offset", "jaxdiff's spacings start at index 0")
    num_timesteps = get("num_train_timesteps", 1000)
    if not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise unsupported("num_train_timesteps", "it must be a positive integer")
    diffusion = {"family": "ddpm", "num_timesteps": num_timesteps,
                 "schedule": _SCHEDULES[get("beta_schedule", "linear")],
                 "beta_start": float(get("beta_start", 1e-4)), "beta_end": float(get("beta_end", 0.02)),
                 "scale_betas_to_t": False, "zero_terminal_snr": bool(get("rescale_betas_zero_snr", False)),
                 "target": _TARGETS[get("prediction_type", "epsilon")]}
    sampling = {"variance": _VARIANCES[get("variance_type", "fixed_small")],
                "clip_x0": bool(get("clip_sample", True))}
    return diffusion, sampling


def scheduler_config(diffusion, sampling, diffusers_version: str) -> dict:
    """The diffusers scheduler config of jaxdiff's ``config.diffusion`` and ``config.sampling`` blocks
    (any mapping with their field names; ``target`` resolved, not ``auto``): a ``DDPMScheduler`` for the
    ddpm family, an ``EDMEulerScheduler`` for edm, a ``FlowMatchEulerDiscreteScheduler`` for flow (see
    the module docstring for what each field means and where the conventions differ). Raises
    :class:`WeightsError` for a process diffusers cannot express (the vp family, the ``sigmoid_abar``
    schedule)."""
    family = diffusion["family"]
    if family not in SCHEDULERS:
        raise WeightsError(f"diffusion.family={family!r} has no diffusers scheduler (diffusers has one for "
                           f"{', '.join(SCHEDULERS)}): its process is in jaxdiff.json only")
    return _WRITERS[family](diffusion, sampling, diffusers_version)


def ddpm_scheduler_config(diffusion, sampling, diffusers_version: str) -> dict:
    """The ``DDPMScheduler`` config of a ddpm-family ``config.diffusion`` (``target`` resolved) and
    ``config.sampling`` (its ``variance`` and ``clip_x0``)."""
    schedules = {v: k for k, v in _SCHEDULES.items()}
    if diffusion["schedule"] not in schedules:
        raise WeightsError(f"diffusion.schedule={diffusion['schedule']!r} has no diffusers beta_schedule "
                           f"(diffusers has {', '.join(_SCHEDULES.values())})")
    scaled = diffusion["schedule"] == "linear" and diffusion["scale_betas_to_t"]
    scale = 1000.0 / diffusion["num_timesteps"] if scaled else 1.0
    target = diffusion["target"]
    if target not in _TARGETS.values():
        raise WeightsError(f"diffusion.target={target!r} has no diffusers prediction_type")
    return {"_class_name": "DDPMScheduler", "_diffusers_version": diffusers_version,
            "num_train_timesteps": int(diffusion["num_timesteps"]), "beta_schedule": schedules[diffusion["schedule"]],
            "beta_start": scale * float(diffusion["beta_start"]), "beta_end": scale * float(diffusion["beta_end"]),
            "trained_betas": None, "prediction_type": {v: k for k, v in _TARGETS.items()}[target],
            "variance_type": sampling["variance"], "clip_sample": bool(sampling["clip_x0"]),
            "clip_sample_range": 1.0, "thresholding": False, "timestep_spacing": "leading", "steps_offset": 0,
            "rescale_betas_zero_snr": bool(diffusion["zero_terminal_snr"])}


def edm_scheduler_config(diffusion, sampling, diffusers_version: str) -> dict:
    """The ``EDMEulerScheduler`` config of an edm-family ``config.diffusion`` (its ``edm`` block) and
    ``config.sampling`` (its ``spacing``: the ``sigma_schedule``)."""
    e, spacing = diffusion["edm"], sampling["spacing"]
    if spacing not in EDM_SIGMA_SCHEDULES:
        raise WeightsError(f"sampling.spacing={spacing!r} has no EDMEulerScheduler sigma_schedule (choose one of "
                           f"{', '.join(EDM_SIGMA_SCHEDULES)})")
    return {"_class_name": "EDMEulerScheduler", "_diffusers_version": diffusers_version,
            "sigma_min": float(e["sigma_min"]), "sigma_max": float(e["sigma_max"]),
            "sigma_data": float(e["sigma_data"]), "rho": float(e["rho"]),
            "sigma_schedule": EDM_SIGMA_SCHEDULES[spacing], "final_sigmas_type": "zero",
            "prediction_type": "epsilon", "num_train_timesteps": 1000}


def flow_scheduler_config(diffusion, sampling, diffusers_version: str) -> dict:
    """The ``FlowMatchEulerDiscreteScheduler`` config of a flow-family ``config.diffusion`` (its
    ``flow.shift``; nothing of ``sampling``), every other field diffusers' default, written out."""
    del sampling
    return {"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": diffusers_version,
            "num_train_timesteps": int(NETWORK_TIME_SCALE), "shift": float(diffusion["flow"]["shift"]),
            "use_dynamic_shifting": False, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
            "max_image_seq_len": 4096, "invert_sigmas": False, "shift_terminal": None, "use_karras_sigmas": False,
            "use_exponential_sigmas": False, "use_beta_sigmas": False, "time_shift_type": "exponential",
            "stochastic_sampling": False}


# the scheduler config of each family that diffusers has a scheduler for (the names of SCHEDULERS)
_WRITERS = {"ddpm": ddpm_scheduler_config, "edm": edm_scheduler_config, "flow": flow_scheduler_config}
