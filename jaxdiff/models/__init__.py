"""Layer 2, the networks: fast layers (``layers``), the DDPM U-Net (``unet``), the Diffusion
Transformer (``dit``), the KL autoencoder of latent diffusion (``autoencoder``, diffusers'
``AutoencoderKL``), and the calling convention the rest of jaxdiff uses for any denoiser
(``denoiser``)."""
