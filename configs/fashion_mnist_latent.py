"""Latent diffusion on Fashion-MNIST (Debian's idx files): an autoencoder with f = 2 (28x28x1 ->
14x14x4), then a U-Net on the latents (or ``--config.model.backbone=dit``):

    python main.py --config=configs/fashion_mnist_latent.py --workdir=runs/fm_ae --mode=train_autoencoder
    python main.py --config=configs/fashion_mnist_latent.py --workdir=runs/fm_ldm \
        --config.latent.autoencoder=runs/fm_ae
"""

from configs import fashion_mnist


def get_config(family: str = "ddpm"):
    config = fashion_mnist.get_config(family)
    ae = config.autoencoder
    ae.block_out_channels = (32, 64)
    ae.layers_per_block = 1
    ae.latent_channels = 4
    ae.norm_num_groups = 16
    ae.num_train_steps = 5000
    ae.learning_rate = 1e-3
    config.model.ch_mult = (1, 2)  # 14x14 and 7x7 latents
    config.model.attn_resolutions = (7,)
    config.model.dit.patch_size = 2
    config.sampling.clip_x0 = False  # latents have unit std, not the images' [-1, 1]
    return config
