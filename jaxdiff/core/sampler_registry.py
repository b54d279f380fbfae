"""Every sampler by name: the registry :data:`SAMPLERS` (what each builds, accepts and costs) and
:func:`make_sampler` / :func:`sampler_on_grid`, which build one for a family.

A sampler is registered by one line in :data:`SAMPLERS`: a :class:`SamplerSpec` whose ``build`` calls
the sampler's function (those of every family in :mod:`jaxdiff.core.grid_samplers`, the discrete
chain's in :mod:`jaxdiff.core.ddpm_chain`). Checks, defaults, the command line's choices and the
README's sampler table are derived from it.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from jaxdiff.core import ddpm_chain
from jaxdiff.core.families import Family, Grid, family_spec
from jaxdiff.core.grid_samplers import (dpm_solver_pp_sampler, edm_stochastic_sampler, euler_ancestral_sampler,
                                        heun_sampler, jump_sampler, midpoint_sampler)
from jaxdiff.core.sampler import Sampler


def _chain_rows(grid: Grid) -> np.ndarray:
    return np.asarray(grid.time[:-1]).astype(np.int32)


def _ddpm(family, grid, *, variance, clip_x0, **_):
    return ddpm_chain.ddpm_sampler(family.tables, _chain_rows(grid), family.prediction, variance, clip_x0)


def _ddim(family, grid, *, eta, clip_x0, **_):
    return ddpm_chain.ddim_sampler(family.tables, _chain_rows(grid), family.prediction, eta, clip_x0,
                                   set_alpha_to_one=bool(grid.alpha[-1] == 1.0))


def _ddpm_grid_form(*, eta, variance):
    if variance != "fixed_small":
        raise ValueError("variance=fixed_large has no (x0, eps) form that ddnm can correct; use fixed_small")
    return "euler_ancestral", 1.0


def _ddim_grid_form(*, eta, variance):
    if eta > 1:
        raise ValueError(f"ddnm runs DDIM as Euler ancestral, which covers eta <= 1, got eta={eta}")
    return ("euler_ancestral", float(eta)) if eta > 0 else ("euler", 0.0)


def _euler(family, grid, *, clip_x0, **_):
    return euler_ancestral_sampler(family, grid, 0.0, clip_x0)


def _euler_ancestral(family, grid, *, sde_eta, clip_x0, **_):
    return euler_ancestral_sampler(family, grid, sde_eta, clip_x0)


def _heun_by_name(family, grid, *, clip_x0, **_):
    return heun_sampler(family, grid, clip_x0)


def _edm_stochastic(family, grid, *, clip_x0, churn, s_min, s_max, s_noise, **_):
    return edm_stochastic_sampler(family, grid, clip_x0, churn, s_min, s_max, s_noise)


def _midpoint(family, grid, *, clip_x0, **_):
    return midpoint_sampler(family, grid, clip_x0)


def _jump(family, grid, *, clip_x0, **_):
    return jump_sampler(family, grid, clip_x0)


def _dpm_solver_pp(order: int, noisy: bool):
    def build(family, grid, *, sde_eta, clip_x0, **_):
        return dpm_solver_pp_sampler(family, grid, order, sde_eta if noisy else 0.0, clip_x0)
    return build


class SamplerSpec(NamedTuple):
    """A sampler by name (an entry of :data:`SAMPLERS`).

    ``build(family, grid, **options) -> Sampler`` makes it over a family's grid (the options are
    :func:`make_sampler`'s keywords; each reads those in ``options`` and ignores the rest); ``needs``
    what it requires of the family (:data:`NEEDS`); ``evaluations`` its network evaluations for ``N``
    steps; ``spacing`` its own grid spacing under ``spacing=auto`` (``""``: the family's);
    ``summary`` one line for the docs; ``grid_form(eta=, variance=) -> (name, sde_eta)``, for a
    sampler of the chain's table rows, the grid sampler in ``(x0, eps)`` form that takes the same
    steps (``None``: it is one)."""

    build: Callable[..., Sampler]
    options: tuple
    needs: tuple
    evaluations: str
    spacing: str
    summary: str
    grid_form: Callable | None = None


_CHAIN_FIT = ("runs the discrete DDPM chain; for the {family!r} family use euler (DDIM's continuous-time "
              "equivalent), euler_ancestral, heun, midpoint or a dpm_solver++ variant")
NEEDS = {  # requirement -> (does the family meet it, why a sampler is refused)
    "chain": (lambda f: f.tables is not None, _CHAIN_FIT),
    "continuous": (lambda f: f.level is not None,
                   "evaluates between table rows; it needs a continuous-time family (vp, edm, flow)"),
    "jump": (lambda f: f.jump is not None,
             "jumps between levels in one evaluation; it needs a few-step family (meanflow, shortcut, consistency, "
             "consistency_flow, scm)"),
    "sigma_noise": (lambda f: f.ode_space == "sigma",
                    "adds noise in sigma; it does not fit the {family!r} family (use heun, midpoint or "
                    "euler_ancestral)"),
}
_ON_GRID = ("set_alpha_to_one", "clip_x0")  # what every sampler over a family's grid reads
SAMPLERS: dict[str, SamplerSpec] = {
    "ddpm": SamplerSpec(
        _ddpm, options=("variance", "clip_x0"), needs=("chain",), evaluations="N", spacing="linspace",
        summary="ancestral sampling on the (re)spaced chain (`sampling.variance`); all T steps: DDPM",
        grid_form=_ddpm_grid_form),
    "ddim": SamplerSpec(
        _ddim, options=("eta", *_ON_GRID), needs=("chain",), evaluations="N", spacing="leading",
        summary="DDIM on the chain (`sampling.eta`; 0: deterministic)", grid_form=_ddim_grid_form),
    "euler": SamplerSpec(
        _euler, options=_ON_GRID, needs=(), evaluations="N", spacing="",
        summary="`x' = alpha' x0 + sigma' eps`: DDIM(eta 0) = EDM's Euler = flow matching's Euler in `t`"),
    "euler_ancestral": SamplerSpec(
        _euler_ancestral, options=("sde_eta", *_ON_GRID), needs=(), evaluations="N", spacing="",
        summary="k-diffusion's Euler ancestral with `sampling.sde_eta` (for VP it equals DDIM with that eta)"),
    "heun": SamplerSpec(
        _heun_by_name, options=_ON_GRID, needs=(), evaluations="2N - 1", spacing="",
        summary="EDM Algorithm 1 (Euler on the last step) in the family's ODE coordinates: `sigma/alpha` "
                "or `t` (flow)"),
    "edm_stochastic": SamplerSpec(
        _edm_stochastic, options=("churn", "s_min", "s_max", "s_noise", "clip_x0"),
        needs=("continuous", "sigma_noise"), evaluations="2N - 1", spacing="",
        summary="EDM Algorithm 2 (churn, then Heun): `s_churn`, `s_min`, `s_max`, `s_noise`"),
    "midpoint": SamplerSpec(
        _midpoint, options=("clip_x0",), needs=("continuous",), evaluations="2N", spacing="",
        summary="the explicit midpoint rule (RK2)"),
    "dpm_solver++": SamplerSpec(
        _dpm_solver_pp(2, False), options=_ON_GRID, needs=(), evaluations="N", spacing="",
        summary="DPM-Solver++(2M), multistep in `lambda = log(alpha/sigma)`"),
    "dpm_solver++_3m": SamplerSpec(
        _dpm_solver_pp(3, False), options=_ON_GRID, needs=(), evaluations="N", spacing="",
        summary="DPM-Solver++(3M), k-diffusion's third-order multistep"),
    "dpm_solver++_sde": SamplerSpec(
        _dpm_solver_pp(2, True), options=("sde_eta", *_ON_GRID), needs=(), evaluations="N", spacing="",
        summary="DPM-Solver++(2M) SDE (`sampling.sde_eta`)"),
    "jump": SamplerSpec(
        _jump, options=("clip_x0",), needs=("jump",), evaluations="N", spacing="",
        summary="a few-step family's own jump between levels (MeanFlow: `z_r = z_t - (t - r) u(z_t, r, t)`)"),
}


def resolve_spacing(family: Family, sampler_name: str, spacing: str) -> str:
    """``auto`` -> the sampler's own spacing on the ddpm family's chain (``linspace`` for ddpm,
    ``leading`` for ddim), else the family's (:data:`~jaxdiff.core.families.FAMILIES`: ``logsnr``
    for ddpm and vp, ``karras`` for edm, ``uniform`` for flow)."""
    if spacing != "auto":
        return spacing
    own = SAMPLERS[sampler_name].spacing if sampler_name in SAMPLERS else ""
    return own if own and family.tables is not None else family_spec(family).spacing


def check_sampler_fits(family: Family, name: str) -> SamplerSpec:
    """The :data:`SAMPLERS` entry of ``name``; ``ValueError`` (one line) for an unknown sampler or one
    that does not fit the family."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    spec = SAMPLERS[name]
    for need in spec.needs:  # whatever the options: a sampler that does not fit is refused
        fits, why = NEEDS[need]
        if not fits(family):
            raise ValueError(f"sampler {name!r} " + why.format(family=family.name))
    return spec


def make_sampler(family: Family, name: str, num_steps: int = 0, spacing: str = "auto", *, eta: float = 0.0,
                 sde_eta: float = 1.0, variance: str = "fixed_small", clip_x0: bool = True,
                 set_alpha_to_one: bool = True, churn: float = 0.0, s_min: float = 0.0, s_max: float = float("inf"),
                 s_noise: float = 1.0) -> Sampler:
    """The sampler called ``name`` for ``family`` over ``num_steps`` steps: :func:`sampler_on_grid` on
    ``family.grid(num_steps, spacing, set_alpha_to_one)``.

    Args:
      family: a :class:`~jaxdiff.core.families.Family`.
      name: a key of :data:`SAMPLERS`: ``ddpm``, ``ddim`` (the ddpm family's chain), ``euler``,
        ``euler_ancestral``, ``heun``, ``edm_stochastic``, ``midpoint``, ``dpm_solver++`` (2M),
        ``dpm_solver++_3m``, ``dpm_solver++_sde`` (2M SDE).
      num_steps: steps (0 = all T for the ddpm family; continuous families need a count).
      spacing: ``auto`` (:func:`resolve_spacing`) or one of ``family.spacings``.
      eta: DDIM's noise (0 = deterministic).
      sde_eta: the noise of euler_ancestral and dpm_solver++_sde (1 = the full ancestral / SDE step).
      variance: ddpm's ``fixed_small`` or ``fixed_large``.
      clip_x0: clip the predicted ``x0`` to [-1, 1] at every evaluation.
      set_alpha_to_one: ddpm family: the last step ends at ``abar = 1`` (else ``abar_0``).
      churn, s_min, s_max, s_noise: EDM's stochastic sampler (``edm_stochastic``).

    Returns:
      a :class:`~jaxdiff.core.sampler.Sampler`. Raises ``ValueError`` (before anything is compiled) on
      a bad choice.
    """
    check_sampler_fits(family, name)
    grid = family.grid(num_steps, resolve_spacing(family, name, spacing), set_alpha_to_one)
    return sampler_on_grid(family, name, grid, eta=eta, sde_eta=sde_eta, variance=variance, clip_x0=clip_x0,
                           churn=churn, s_min=s_min, s_max=s_max, s_noise=s_noise)


def sampler_on_grid(family: Family, name: str, grid: Grid, *, eta: float = 0.0, sde_eta: float = 1.0,
                    variance: str = "fixed_small", clip_x0: bool = True, churn: float = 0.0, s_min: float = 0.0,
                    s_max: float = float("inf"), s_noise: float = 1.0) -> Sampler:
    """The sampler called ``name`` over the levels of ``grid`` (any part of a family's grid: editing
    starts part way down, at SDEdit's strength). The ddpm family's ``ddpm`` and ``ddim`` step over the
    grid's table rows ``grid.time[:-1]`` and end at ``abar = grid.alpha[-1] ** 2`` (1 or ``abar_0``);
    the other arguments are :func:`make_sampler`'s."""
    spec = check_sampler_fits(family, name)
    return spec.build(family, grid, eta=eta, sde_eta=sde_eta, variance=variance, clip_x0=clip_x0, churn=churn,
                      s_min=s_min, s_max=s_max, s_noise=s_noise)
