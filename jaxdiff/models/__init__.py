"""Layer 2, the networks: fast layers (``layers``), the DDPM U-Net (``unet``), the Diffusion
Transformer (``dit``), and the calling convention the rest of jaxdiff uses for any denoiser
(``denoiser``)."""
