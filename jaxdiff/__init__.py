"""jaxdiff: denoising diffusion models in pure-functional JAX/Flax."""

__version__ = "0.1.0"
