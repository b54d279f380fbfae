"""Latent diffusion on the embedded digits, in two runs on 2 CPU cores (minutes each):

    python main.py --config=configs/digits_latent.py --workdir=runs/digits_ae --mode=train_autoencoder
    python main.py --config=configs/digits_latent.py --workdir=runs/digits_ldm \
        --config.latent.autoencoder=runs/digits_ae

The autoencoder (f = 2: 8x8x1 images -> 4x4x4 latents, KL weight 1e-6) trains first; the diffusion
model (a one-level U-Net on the latents, or ``--config.model.backbone=dit``) then learns its latents
scaled to unit standard deviation, and every grid, sample and FID is of decoded images.
"""

from configs import digits


def get_config(family: str = "ddpm"):
    config = digits.get_config(family)
    ae = config.autoencoder
    ae.block_out_channels = (32, 64)
    ae.layers_per_block = 1
    ae.latent_channels = 4
    ae.norm_num_groups = 16
    ae.num_train_steps = 1500
    ae.learning_rate = 1e-3
    config.model.ch_mult = (1, 2)  # 4x4 and 2x2 latents
    config.model.attn_resolutions = (2,)
    config.model.dit.patch_size = 1  # with backbone=dit: one token per latent pixel
    config.sampling.clip_x0 = False  # latents have unit std, not the images' [-1, 1]
    return config
