"""jaxdiff: denoising diffusion models in pure-functional JAX/Flax."""

from jaxdiff import cpu_tuning as _cpu_tuning

_cpu_tuning.apply()  # XLA:CPU settings that change no result; JAXDIFF_CPU_TUNING=0 opts out

__version__ = "0.1.0"
