"""Latent diffusion on CIFAR-10 for accelerators: an autoencoder with f = 4 (32x32x3 -> 8x8x4,
channels 128/256/256, two resnets per level), then DiT-S/2 (33M parameters, 16 tokens) on the latents:

    python main.py --config=configs/cifar10_latent.py --workdir=runs/cifar_ae --mode=train_autoencoder
    python main.py --config=configs/cifar10_latent.py --workdir=runs/cifar_ldm \
        --config.latent.autoencoder=runs/cifar_ae

DiT's recipe: AdamW, learning rate 1e-4, no weight decay, EMA 0.9999, batch 256.
"""

from configs import cifar10


def get_config(family: str = "ddpm"):
    config = cifar10.get_config(family)
    ae = config.autoencoder
    ae.block_out_channels = (128, 256, 256)
    ae.layers_per_block = 2
    ae.latent_channels = 4
    ae.norm_num_groups = 32
    ae.num_train_steps = 100_000
    ae.learning_rate = 1e-4
    config.model.backbone = "dit"
    config.model.dit.size = "S"
    config.model.dit.patch_size = 2
    config.model.class_conditional = True
    config.training.optimizer = "adamw"
    config.training.learning_rate = 1e-4
    config.training.weight_decay = 0.0
    config.training.batch_size = 256
    config.training.warmup_steps = 0
    config.sampling.sampler = "ddim"  # 1000-step DDPM on 50k samples is for the pixel-space protocol
    config.sampling.num_steps = 250
    config.eval.bpd = False  # a bound on latents is not one on pixels
    config.sampling.clip_x0 = False  # latents have unit std, not the images' [-1, 1]
    return config
