"""Layer 1, the maths as pure functions (JAX, and float64 NumPy for tables and grids):

================ ================================================================================================
``schedules``    noise schedules and their float64 tables (``DiffusionTables``)
``diffusion``    the discrete forward process, posterior, parameterisations (eps / x0 / v) and losses
``processes``    continuous-time noise processes (VP, EDM, the flow interpolant) and what a network predicts
``samplers``     the sampler protocol, the DDPM / DDIM chain's samplers, the scan that runs any sampler, guidance
``families``     the diffusion families (ddpm, vp, edm, flow): noising, network targets, training levels, grids
``solvers``      samplers for every family on a grid of noise levels (Euler, Heun, DPM-Solver++, ...)
``generation``   many images in chunks of a fixed compiled size, with class labels, guidance and a device mesh
``likelihood``   bits per dimension: the DDPM variational bound on 8-bit images
``operators``    linear measurement operators ``y = A x`` (super-resolution, blur, colorization, masks)
``editing``      SDEdit, RePaint inpainting, DDIM inversion and spherical interpolation
``restoration``  linear inverse problems with a trained model: DDNM and DPS
================ ================================================================================================
"""
