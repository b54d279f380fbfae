"""Layer 1, the maths as pure functions (JAX, and float64 NumPy for tables and grids):

==================== ============================================================================================
``schedules``        noise schedules and their float64 tables (``DiffusionTables``)
``diffusion``        the discrete forward process, posterior, parameterisations (eps / x0 / v) and losses
``processes``        continuous-time noise processes (VP, EDM, the flow interpolant) and what a network predicts
``spacing``          which table rows a DDPM-chain sampler with fewer steps visits (leading, trailing, logsnr, ...)
``families``         the diffusion families and their registry ``FAMILIES``: noising, targets, training levels, grids
``sampler``          the sampler protocol (``Sampler``, ``SampleOutput``) and the ``lax.scan`` that runs any sampler
``ddpm_chain``       the discrete chain's own samplers, DDPM and DDIM, over table rows
``grid_samplers``    samplers for every family on a grid of noise levels (Euler, Heun, DPM-Solver++, ...)
``sampler_registry`` every sampler by name (``SAMPLERS``), ``make_sampler`` and ``sampler_on_grid``
``network_contract`` what a network must be (its output's shape, its classes), checked when traced
``guidance``         classifier-free guidance in front of a network, with its guidance interval
``generation``       many images in chunks of a fixed compiled size, with class labels, guidance and a device mesh
``likelihood``       bits per dimension: the DDPM variational bound on 8-bit images
``operators``        linear measurement operators ``y = A x`` (super-resolution, blur, colorization, masks)
``editing``          SDEdit, RePaint inpainting, DDIM inversion and spherical interpolation
``restoration``      linear inverse problems with a trained model: DDNM and DPS
==================== ============================================================================================

``samplers``         and ``solvers`` are deprecated paths (0.7) to the modules above; they go in the next release.
"""
