"""Deprecated: this module's names moved in 0.7 and this path goes in the next release.

``Sampler``, ``SampleOutput``, ``SamplerScan``, ``run_sampler``, ``sampler_scan``, ``trajectory_positions``
-> :mod:`jaxdiff.core.sampler`; ``spaced_timesteps``, ``SPACINGS`` -> :mod:`jaxdiff.core.spacing`;
``ddpm_sampler``, ``ddim_sampler``, ``ddpm_sample``, ``final_alpha_cumprod`` -> :mod:`jaxdiff.core.ddpm_chain`;
``guided_denoise_fn`` -> :mod:`jaxdiff.core.guidance`; ``check_denoiser_output``, ``check_network_classes`` ->
:mod:`jaxdiff.core.network_contract`. The top-level names (``jaxdiff.Sampler``, ...) are unchanged.
"""

import warnings

from jaxdiff.core.ddpm_chain import ddim_sampler, ddpm_sample, ddpm_sampler, final_alpha_cumprod
from jaxdiff.core.guidance import guided_denoise_fn
from jaxdiff.core.network_contract import check_denoiser_output, check_network_classes
from jaxdiff.core.sampler import (DenoiseFn, SampleOutput, Sampler, SamplerScan, run_sampler,
                                  sampler_scan, trajectory_positions)
from jaxdiff.core.spacing import SPACINGS, spaced_timesteps

__all__ = ["DenoiseFn", "SPACINGS", "SampleOutput", "Sampler", "SamplerScan", "check_denoiser_output",
           "check_network_classes", "ddim_sampler", "ddpm_sample", "ddpm_sampler", "final_alpha_cumprod",
           "guided_denoise_fn", "run_sampler", "sampler_scan", "spaced_timesteps", "trajectory_positions"]

warnings.warn("jaxdiff.core.samplers is deprecated: import from jaxdiff.core.sampler, spacing, ddpm_chain, guidance "
              "or network_contract (or the top-level jaxdiff names)", DeprecationWarning, stacklevel=2)
