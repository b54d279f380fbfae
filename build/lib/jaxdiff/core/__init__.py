"""Layer 1, the maths as pure functions: noise schedules and their tables (``schedules``), the
forward process, parameterisations and losses (``diffusion``), the samplers as one ``lax.scan``
each (``samplers``), generating many images in chunks with guidance (``generation``), and the
variational bound in bits/dim (``likelihood``)."""
