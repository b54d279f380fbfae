"""Diffusion families: one formulation each of how data is noised, what the network sees and predicts,
how training draws noise levels and weights them, and where a sampler evaluates it.

Each is a :class:`~jaxdiff.core.family.Family` (the protocol: :mod:`jaxdiff.core.family`), registered
by name in :data:`FAMILIES` with its defaults. The members:

  ddpm   the discrete T-step chain of :mod:`jaxdiff.core.schedules` exactly as in DDPM (time = table
         index ``0..T-1``, ``t ~ U{0..T-1}``, eps / x0 / v target, optional min-SNR weighting).
  vp     continuous-time variance preserving (``vp_linear`` or ``vp_cosine``), ``t ~ U(t_eps, 1)``,
         network time ``1000 t``, eps / x0 / v target.
  edm    Karras et al. 2022: ``x = x0 + sigma n``, ``ln sigma ~ N(P_mean, P_std^2)``,
         ``D = c_skip x + c_out F(c_in x; ln(sigma) / 4)``, loss ``lambda(sigma) |D - x0|^2``.
  flow   flow matching / rectified flow: ``x_t = (1 - t) x0 + t eps``, ``t`` uniform or logit-normal
         (with SD3's shift), velocity target ``eps - x0``, network time ``1000 t``.
  meanflow  MeanFlow (:mod:`jaxdiff.core.meanflow`): the average velocity over ``[r, t]`` on flow
         matching's interpolant, a network of two times, one- and few-step sampling by its ``jump``.
  shortcut  shortcut models (:mod:`jaxdiff.core.shortcut`): the same network trained on flow matching
         and on the self-consistency of its own jumps.
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.core import diffusion, processes
from jaxdiff.core import consistency as consistency_lib
from jaxdiff.core import meanflow as meanflow_lib
from jaxdiff.core import shortcut as shortcut_lib
from jaxdiff.core import trigflow as trigflow_lib
from jaxdiff.core.family import (NETWORK_TIME_SCALE, Family, Grid, batch_of, check_prediction, check_spacing,
                                 check_steps, check_weighting, grid_from_logsnr, interpolant_grid, interpolant_level,
                                 interpolant_sigma_to_input, per_example_mean, refuse_fields)
from jaxdiff.core.schedules import DiffusionTables, schedule_tables
from jaxdiff.core.spacing import SPACINGS, spaced_timesteps

VP_PROCESSES = ("linear", "cosine")
T_SAMPLINGS = ("uniform", "logit_normal")
VP_SPACINGS, EDM_SPACINGS, FLOW_SPACINGS = ("uniform", "logsnr", "karras"), ("karras", "logsnr"), ("uniform",)
VP_TRAIN_T_MIN = 1e-5  # vp: training times t ~ U(1e-5, 1) (score_sde)
VP_SAMPLE_T_MIN = 1e-3  # vp: the last evaluated time of a sampler grid (score_sde's sampling eps)


# --------------------------------------------------------------------------- ddpm (discrete)

def ddpm(tables: DiffusionTables, target: str = "eps", weighting: str = "none",
         min_snr_gamma: float = 5.0) -> Family:
    """The discrete DDPM chain of ``tables``: training is exactly
    :func:`jaxdiff.core.diffusion.diffusion_loss`; sampler grids are table rows chosen by a spacing of
    :data:`jaxdiff.core.spacing.SPACINGS`, ending at ``abar = 1`` (``set_alpha_to_one``) or ``abar_0``."""
    check_prediction(target, diffusion.TARGETS, "ddpm")
    check_weighting(weighting)
    if target == "eps" and tables.alphas_cumprod[-1] == 0:
        raise ValueError("tables of zero terminal SNR (alphas_cumprod[-1] = 0) need target=v or x0: an eps "
                         "model cannot predict x0 at SNR 0 (Lin et al. 2024)")
    T = tables.num_timesteps
    abar = tables.alphas_cumprod

    def draw(key, x0):
        return diffusion.draw_t_noise(key, x0, T)

    def loss(net, x0, t, noise):
        return diffusion.loss_given_noise(net, tables, x0, t, noise, target, weighting, min_snr_gamma)

    def predict(net, x, time, alpha, sigma):
        return processes.x0_eps_from_prediction(target, x, net(x, batch_of(x, time, jnp.int32)), alpha, sigma)

    def grid(num_steps, spacing="logsnr", set_alpha_to_one=True):
        t = spaced_timesteps(T, num_steps or T, spacing, abar).astype(np.float64)
        a = np.append(abar[t.astype(np.int64)], 1.0 if set_alpha_to_one else abar[0])
        return Grid(np.append(t, -1.0), np.sqrt(a), np.sqrt(1.0 - a), 1.0)

    def sigma_to_input(sigma_ratio):
        return diffusion.table_index_at(tables, sigma_ratio)

    return Family("ddpm", target, draw, loss, predict, grid, SPACINGS, "sigma", None, sigma_to_input, tables)


# --------------------------------------------------------------------------- continuous families


def vp(schedule: str = "linear", target: str = "eps", weighting: str = "none",
       min_snr_gamma: float = 5.0) -> Family:
    """Continuous-time variance preserving diffusion: ``x_t = alpha(t) x0 + sigma(t) eps`` with the
    linear (:func:`~jaxdiff.core.processes.vp_linear`) or cosine
    (:func:`~jaxdiff.core.processes.vp_cosine`) process, ``t ~ U(1e-5, 1)``, network time ``1000 t``,
    loss ``w(t) |f - target|^2`` with min-SNR weights as for ddpm (``snr = alpha^2 / sigma^2``).
    Grids from ``t = 1`` to ``t = 1e-3`` (then the data): ``uniform`` in ``t``, ``logsnr`` uniform in
    log-SNR, ``karras`` (rho = 7) in ``sigma / alpha``."""
    if schedule not in VP_PROCESSES:
        raise ValueError(f"schedule={schedule!r} has no continuous-time form; for the vp family "
                         f"choose one of {', '.join(VP_PROCESSES)}")
    check_prediction(target, diffusion.TARGETS, "vp")
    check_weighting(weighting)
    process = processes.vp_linear() if schedule == "linear" else processes.vp_cosine()

    def draw(key, x0):
        t_key, noise_key = jax.random.split(key)
        t = VP_TRAIN_T_MIN + (1.0 - VP_TRAIN_T_MIN) * jax.random.uniform(t_key, (x0.shape[0],), jnp.float32)
        return t, jax.random.normal(noise_key, x0.shape, jnp.float32)

    def loss(net, x0, t, noise):
        alpha, sigma = process.alpha_sigma(t, jnp)
        a, s = processes.expand_to(alpha, x0), processes.expand_to(sigma, x0)
        out = net(a * x0 + s * noise, NETWORK_TIME_SCALE * t).astype(jnp.float32)
        err = per_example_mean(jnp.square(out - processes.prediction_from_x0_eps(target, x0, noise, alpha, sigma)))
        per_example = diffusion.snr_loss_weight(jnp.square(alpha / sigma), target, weighting, min_snr_gamma) * err
        return jnp.mean(per_example), per_example

    def predict(net, x, time, alpha, sigma):
        out = net(x, batch_of(x, NETWORK_TIME_SCALE * time))
        return processes.x0_eps_from_prediction(target, x, out, alpha, sigma)

    hi, lo = process.logsnr(np.float64(VP_SAMPLE_T_MIN)), process.logsnr(np.float64(1.0))

    def grid(num_steps, spacing="logsnr", set_alpha_to_one=True):
        del set_alpha_to_one  # the continuous chain always ends at the data
        check_steps(num_steps)
        check_spacing(spacing, VP_SPACINGS, "vp")
        if spacing == "uniform":
            t = np.linspace(1.0, VP_SAMPLE_T_MIN, num_steps)
            logsnr = process.logsnr(t)
        elif spacing == "logsnr":
            logsnr = np.linspace(lo, hi, num_steps)
        else:
            logsnr = -2.0 * np.log(processes.karras_sigmas(num_steps, np.exp(-0.5 * hi), np.exp(-0.5 * lo))[:-1])
        return grid_from_logsnr(process, logsnr)

    def level(sigma_ratio):
        t = process.time_from_logsnr(-2.0 * np.log(sigma_ratio))
        return (t,) + tuple(process.alpha_sigma(t, np))

    def sigma_to_input(sigma_ratio):
        return NETWORK_TIME_SCALE * process.time_from_logsnr(-2.0 * np.log(sigma_ratio))

    return Family("vp", target, draw, loss, predict, grid, VP_SPACINGS, "sigma", level, sigma_to_input)


def edm(sigma_data: float = 0.5, p_mean: float = -1.2, p_std: float = 1.2, sigma_min: float = 0.002,
        sigma_max: float = 80.0, rho: float = 7.0) -> Family:
    """EDM (Karras et al. 2022): ``x = x0 + sigma n`` with ``ln sigma ~ N(p_mean, p_std^2)``; the network
    ``F`` is preconditioned, ``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)``
    (:func:`~jaxdiff.core.processes.edm_preconditioning`), and trained with
    ``lambda(sigma) |D - x0|^2``. Grids: ``karras`` (``rho``) or ``logsnr`` (geometric) from
    ``sigma_max`` to ``sigma_min``, then ``sigma = 0``; ``x_T = sigma_max N(0, I)``."""

    def draw(key, x0):
        sigma_key, noise_key = jax.random.split(key)
        return (processes.sample_log_normal(sigma_key, (x0.shape[0],), p_mean, p_std),
                jax.random.normal(noise_key, x0.shape, jnp.float32))

    def denoise(net, x, sigma):
        c = processes.edm_preconditioning(sigma, sigma_data)
        b = lambda v: processes.expand_to(v, x)  # noqa: E731
        out = net(b(c.c_in) * x, jnp.broadcast_to(c.c_noise, (x.shape[0],))).astype(jnp.float32)
        return b(c.c_skip) * x + b(c.c_out) * out

    def loss(net, x0, sigma, noise):
        d = denoise(net, x0 + processes.expand_to(sigma, x0) * noise, sigma)
        per_example = processes.edm_loss_weight(sigma, sigma_data) * per_example_mean(jnp.square(d - x0))
        return jnp.mean(per_example), per_example

    def predict(net, x, time, alpha, sigma):
        del alpha
        x0 = denoise(net, x, time)
        return x0, (x - x0) / sigma

    def grid(num_steps, spacing="karras", set_alpha_to_one=True):
        del set_alpha_to_one
        check_steps(num_steps)
        check_spacing(spacing, EDM_SPACINGS, "edm")
        if spacing == "karras":
            sigmas = processes.karras_sigmas(num_steps, sigma_min, sigma_max, rho)
        else:
            sigmas = np.append(np.geomspace(sigma_max, sigma_min, num_steps), 0.0)
        return Grid(sigmas, np.ones_like(sigmas), sigmas, float(sigmas[0]))

    def level(sigma):
        return sigma, 1.0, sigma

    def sigma_to_input(sigma):
        return 0.25 * np.log(sigma)

    return Family("edm", "edm", draw, loss, predict, grid, EDM_SPACINGS, "sigma", level,
                  sigma_to_input)


def flow(t_sampling: str = "logit_normal", loc: float = 0.0, scale: float = 1.0, shift: float = 1.0) -> Family:
    """Flow matching on the linear interpolant ``x_t = (1 - t) x0 + t eps`` (rectified flow; Stable
    Diffusion 3): ``t`` ``uniform`` or ``logit_normal`` (``sigmoid(N(loc, scale^2))``), then
    ``t <- shift t / (1 + (shift - 1) t)``; the network ``u(x_t, 1000 t)`` regresses the velocity
    ``eps - x0``. Grids: ``uniform`` in ``t`` from 1 to 0, shifted the same way."""
    if t_sampling not in T_SAMPLINGS:
        raise ValueError(f"t_sampling={t_sampling!r} is not one of {', '.join(T_SAMPLINGS)}")
    if not shift > 0:
        raise ValueError(f"shift must be positive, got {shift}")

    def draw(key, x0):
        t_key, noise_key = jax.random.split(key)
        if t_sampling == "uniform":
            t = jax.random.uniform(t_key, (x0.shape[0],), jnp.float32)
        else:
            t = processes.sample_logit_normal(t_key, (x0.shape[0],), loc, scale)
        return processes.shift_time(t, shift), jax.random.normal(noise_key, x0.shape, jnp.float32)

    def loss(net, x0, t, noise):
        tt = processes.expand_to(t, x0)
        out = net((1.0 - tt) * x0 + tt * noise, NETWORK_TIME_SCALE * t).astype(jnp.float32)
        per_example = per_example_mean(jnp.square(out - (noise - x0)))
        return jnp.mean(per_example), per_example

    def predict(net, x, time, alpha, sigma):
        out = net(x, batch_of(x, NETWORK_TIME_SCALE * time))
        return processes.x0_eps_from_prediction("flow", x, out, alpha, sigma)

    def grid(num_steps, spacing="uniform", set_alpha_to_one=True):
        del set_alpha_to_one
        check_steps(num_steps)
        check_spacing(spacing, FLOW_SPACINGS, "flow")
        return interpolant_grid(num_steps, shift)

    return Family("flow", "flow", draw, loss, predict, grid, FLOW_SPACINGS, "t", interpolant_level,
                  interpolant_sigma_to_input)


# --------------------------------------------------------------------------- by name

def _ddpm_from_record(r: Mapping) -> Family:
    tables = schedule_tables(r["schedule"], r["num_timesteps"], r["beta_start"], r["beta_end"],
                             scale_betas_to_t=r.get("scale_betas_to_t", False),
                             zero_terminal_snr=r.get("zero_terminal_snr", False))
    return ddpm(tables, r["target"], r.get("loss_weighting", "none"), r.get("min_snr_gamma", 5.0))


def _vp_from_record(r: Mapping) -> Family:
    refuse_fields(r, "vp", weighted=True)
    return vp(r["schedule"], r["target"], r.get("loss_weighting", "none"), r.get("min_snr_gamma", 5.0))


def _edm_from_record(r: Mapping) -> Family:
    refuse_fields(r, "edm", weighted=False)
    e = r["edm"]
    return edm(e["sigma_data"], e["p_mean"], e["p_std"], e["sigma_min"], e["sigma_max"], e["rho"])


def _flow_from_record(r: Mapping) -> Family:
    refuse_fields(r, "flow", weighted=False)
    f = r["flow"]
    return flow(f["t_sampling"], f["loc"], f["scale"], f["shift"])


class FamilySpec(NamedTuple):
    """A family by name (an entry of :data:`FAMILIES`): how it is built and what it chooses by default.

    ``from_record(record) -> Family`` builds it from a *process record*: a mapping with the field names
    of ``config.diffusion`` and plain values (``target`` resolved, never ``auto``), such as a config's
    diffusion block or the ``diffusion`` object of an exported ``jaxdiff.json``. Then its defaults:
    ``sampler`` and ``num_steps`` (what ``sampler=auto`` and ``num_steps=0`` mean; 0 steps: every row
    of the chain), ``spacing`` (``spacing=auto``, unless the sampler has its own), ``targets`` (the
    network targets it trains; ``target=auto`` is the first) and ``trains`` (what that is, for
    messages), ``spacings`` (the grids it accepts), ``weighted`` (takes ``loss_weighting``; else it
    has its own weighting), ``time_name`` (what its time is called in pictures), ``summary`` and
    ``starts_from``: the families whose trained networks start one of it (``model.init_from``: a flow
    model starts MeanFlow, shortcut and flow consistency models; an EDM model a consistency model)."""

    from_record: Callable[[Mapping], Family]
    sampler: str
    num_steps: int
    spacing: str
    targets: tuple
    trains: str
    spacings: tuple
    weighted: bool
    time_name: str
    summary: str
    starts_from: tuple = ()


FAMILIES: dict[str, FamilySpec] = {
    "ddpm": FamilySpec(_ddpm_from_record, "ddpm", 0, "logsnr", diffusion.TARGETS, "eps, x0 or v", SPACINGS,
                       True, "t", "the discrete T-step chain of DDPM (table index time)"),
    "vp": FamilySpec(_vp_from_record, "dpm_solver++", 50, "logsnr", diffusion.TARGETS, "eps, x0 or v",
                     VP_SPACINGS, True, "t", "continuous-time variance preserving (linear or cosine)"),
    "edm": FamilySpec(_edm_from_record, "heun", 18, "karras", ("edm",), "its preconditioned F", EDM_SPACINGS,
                      False, "sigma", "Karras et al. 2022: x = x0 + sigma n, preconditioned"),
    "flow": FamilySpec(_flow_from_record, "euler", 50, "uniform", ("flow",), "the velocity eps - x0",
                       FLOW_SPACINGS, False, "t", "flow matching on the linear interpolant (rectified flow)"),
    "meanflow": FamilySpec(meanflow_lib.from_record, "jump", 1, "uniform", ("flow",),
                           "the average velocity u(z, r, t) (u(z, t, t): the velocity eps - x0)",
                           meanflow_lib.SPACINGS, False, "t", "MeanFlow (Geng et al. 2025): flow matching in 1-4 jumps",
                           ("flow",)),
    "shortcut": FamilySpec(shortcut_lib.from_record, "jump", 1, "uniform", ("flow",),
                           "the average velocity over a jump (span 0: the velocity eps - x0)", meanflow_lib.SPACINGS,
                           False, "t", "shortcut models (Frans et al. 2024): self-consistent jumps of 2^-k", ("flow",)),
    "consistency": FamilySpec(consistency_lib.from_record, "jump", 1, "karras", ("edm",),
                              "EDM's F with the consistency boundary condition", ("karras",), False, "sigma",
                              "consistency models on EDM's network (iCT, ECT): 1-4 steps", ("edm",)),
    "consistency_flow": FamilySpec(consistency_lib.flow_from_record, "jump", 1, "uniform", ("flow",),
                                   "the velocity of f = x_t - t v", ("uniform",), False, "t",
                                   "consistency models on a flow-matching network (iCT, ECT): 1-4 steps",
                                   ("flow",)),
    "scm": FamilySpec(trigflow_lib.from_record, "jump", 1, "uniform", ("trigflow",), "TrigFlow's F (dx/dt = sd F)",
                      ("uniform",), False, "t", "continuous-time consistency models on TrigFlow (sCT): 1-4 steps"),
}


def family_spec(family: Family | str) -> FamilySpec:
    """The :data:`FAMILIES` entry of ``family`` (a family or its name); ``ValueError`` for an unknown name."""
    name = family if isinstance(family, str) else family.name
    if name not in FAMILIES:
        raise ValueError(f"diffusion.family={name!r} is not one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def resolve_target(family: str, target: str) -> str:
    """``target`` of a ``family`` with ``auto`` resolved (the family's first target); ``ValueError`` for a
    target a single-target family (edm, flow) does not train."""
    spec = family_spec(family)
    if target == "auto":
        return spec.targets[0]
    if len(spec.targets) == 1 and target != spec.targets[0]:
        raise ValueError(f"diffusion.target={target!r} does not fit diffusion.family={family!r}, which trains "
                         f"{spec.trains}; use auto")
    return target


def from_record(record: Mapping) -> Family:
    """The :class:`Family` of a process record (:class:`FamilySpec`; ``target`` may be ``auto``);
    ``ValueError`` (one line) for a value that does not fit."""
    name = record.get("family", "ddpm")
    target = resolve_target(name, record["target"])
    return family_spec(name).from_record({**dict(record), "family": name, "target": target})
