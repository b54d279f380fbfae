"""Deprecated: this module split in 0.7 and this path goes in the next release.

The samplers of every family (``euler_ancestral_sampler``, ``heun_sampler``, ``midpoint_sampler``,
``dpm_solver_pp_sampler``, ...) -> :mod:`jaxdiff.core.grid_samplers`; the registry and building by name
(``SAMPLERS``, ``make_sampler``, ``sampler_on_grid``, ``resolve_spacing``, ``check_sampler_fits``) ->
:mod:`jaxdiff.core.sampler_registry`. The top-level names (``jaxdiff.make_sampler``, ...) are unchanged.
"""

import warnings

from jaxdiff.core.grid_samplers import (denoiser, dpm_solver_pp_coefficients, dpm_solver_pp_sampler,
                                        edm_stochastic_sampler, euler_ancestral_sampler, heun_sampler,
                                        midpoint_sampler, ode_coordinates)
from jaxdiff.core.sampler_registry import (SAMPLERS, SamplerSpec, check_sampler_fits, make_sampler,
                                           resolve_spacing, sampler_on_grid)

__all__ = ["SAMPLERS", "SamplerSpec", "check_sampler_fits", "denoiser", "dpm_solver_pp_coefficients",
           "dpm_solver_pp_sampler", "edm_stochastic_sampler", "euler_ancestral_sampler", "heun_sampler",
           "make_sampler", "midpoint_sampler", "ode_coordinates", "resolve_spacing", "sampler_on_grid"]

warnings.warn("jaxdiff.core.solvers is deprecated: import from jaxdiff.core.grid_samplers or "
              "jaxdiff.core.sampler_registry (or the top-level jaxdiff names)", DeprecationWarning, stacklevel=2)
