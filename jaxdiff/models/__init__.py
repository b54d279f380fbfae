"""Layer 2, the networks: fast layers (``layers``), the DDPM U-Net (``unet``), the Diffusion
Transformer (``dit``), the registry of denoiser networks (``backbones``: name -> module, config
block, builder, checks, what each supports), the KL autoencoder of latent diffusion
(``autoencoder``, diffusers' ``AutoencoderKL``), and the calling convention the rest of jaxdiff uses
for any denoiser (``denoiser``)."""
