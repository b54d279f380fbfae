"""The seed's diffusers example: CIFAR-10 upsampled to 64x64 (``transforms.Resize(64)``), a
``UNet2DModel(block_out_channels=(128, 256, 512, 1024), layers_per_block=2, attention_head_dim=8)``,
a cosine schedule over T=1000, AdamW at 4e-4, batch 64, 100 epochs.

diffusers' default block types put attention at every level but the first (32, 16 and 8 here) and in
the middle, with 8 channels per head; jaxdiff's U-Net has one head count for all levels, so 32 heads
(8 channels per head at the 32x32 level, 32 at 8x8). Horizontal flips as in DDPM's CIFAR-10
recipe. 253,761,283 parameters.
Offline: ``--config.data.dataset=cifar_python --config.data.data_dir=FOLDER`` reads the
``cifar-10-python.tar.gz`` download instead of TFDS (see docs/data.md).
"""

from configs import default


def get_config(family: str = "ddpm"):
    config = default.get_config()
    config.data.dataset = "cifar10"
    config.data.image_size = 64
    config.data.random_flip = True
    config.model.ch = 128
    config.model.ch_mult = (1, 2, 4, 8)  # 64 -> 32 -> 16 -> 8 with 128 / 256 / 512 / 1024 channels
    config.model.num_res_blocks = 2
    config.model.attn_resolutions = (32, 16, 8)
    config.model.num_heads = 32
    config.model.dropout = 0.0
    config.diffusion.schedule = "cosine"  # DDPMScheduler(beta_schedule=...) in the seed
    config.training.batch_size = 64
    config.training.num_train_steps = 78_200  # 100 epochs of 50,000 images at batch 64 (782 steps each)
    config.training.optimizer = "adamw"
    config.training.learning_rate = 4e-4
    config.training.weight_decay = 0.01  # torch.optim.AdamW's default, which the seed uses
    config.training.warmup_steps = 0  # the seed uses a constant learning rate
    config.training.grad_clip_norm = 0.0  # and no clipping
    config.training.ema_decay = 0.9999
    config.training.log_every = 100
    config.training.checkpoint_every = 5000
    config.training.sample_every = 20_000
    return default.with_family(config, family)
