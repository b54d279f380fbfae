"""Layer 0, what every layer above uses and nothing diffusion-specific: the private JAX names
(``jax_internals``), opt-in CPU tuning, work-directory paths through ``etils.epath``, the device mesh
and shardings (``parallel``), preemption, mapping a compiled function over chunks, and pictures."""
