"""A diffusers ``scheduler_config.json`` <-> jaxdiff's diffusion settings (the ``ddpm`` family).

The scheduler of a diffusers model folder says which discrete process its network was trained on:
``num_train_timesteps``, the betas (``beta_schedule``, ``beta_start``, ``beta_end``), the
``prediction_type`` and ``rescale_betas_zero_snr``; ``variance_type`` and ``clip_sample`` are how
diffusers' DDPM pipeline samples it. Solver-specific fields (a DPM-Solver's order, ...) are not part of
the trained model and are ignored: jaxdiff chooses its own sampler.

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
"""

from __future__ import annotations

from jaxdiff.interop.safetensors_file import WeightsError

_SCHEDULES = {"linear": "linear", "squaredcos_cap_v2": "cosine", "sigmoid": "sigmoid_geodiff"}
_TARGETS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
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
    """The ``DDPMScheduler`` config of jaxdiff's ``config.diffusion`` and ``config.sampling`` blocks
    (any mapping with their field names; ``target`` resolved, not ``auto``); raises
    :class:`WeightsError` for a process diffusers' DDPM scheduler cannot express (a continuous family,
    the ``sigmoid_abar`` schedule)."""
    if diffusion["family"] != "ddpm":
        raise WeightsError(f"diffusion.family={diffusion['family']!r} has no diffusers DDPMScheduler: only the "
                           "ddpm family exports a scheduler")
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
