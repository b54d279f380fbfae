"""DDPM CIFAR-10 (Ho et al. 2020): the 35.7M-parameter network and its training recipe."""

from configs import default


def get_config(family: str = "ddpm"):
    config = default.get_config()
    config.data.dataset = "cifar10"
    config.data.image_size = 32
    config.data.random_flip = True
    config.model.ch = 128
    config.model.ch_mult = (1, 2, 2, 2)
    config.model.num_res_blocks = 2
    config.model.attn_resolutions = (16,)
    config.model.dropout = 0.1
    config.training.batch_size = 128
    config.training.num_train_steps = 800_000
    config.training.learning_rate = 2e-4
    config.training.warmup_steps = 5000
    config.training.grad_clip_norm = 1.0
    config.training.ema_decay = 0.9999
    config.training.ema_warmup = False  # DDPM's plain EMA
    config.training.log_every = 100
    config.training.checkpoint_every = 10_000
    config.training.sample_every = 50_000
    config.sampling.variance = "fixed_large"  # the setting of DDPM's FID 3.17
    config.eval.feature_extractor = "inception"  # paper-comparable FID; needs eval.inception_weights
    config.eval.num_samples = 50_000  # DDPM / DDIM protocol: 50k samples vs training-set statistics
    config.eval.sampler = "same"  # ... drawn with the sampler above (DDPM, 1000 steps, fixed-large)
    config.eval.bpd_num_images = 0  # bits/dim on the whole test split
    return default.with_family(config, family)
