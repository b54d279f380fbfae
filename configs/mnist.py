"""The seeds' MNIST DDPM: 28x28x1 through TFDS, linear schedule over T=1000, eps target."""

from configs import default


def get_config(family: str = "ddpm"):
    config = default.get_config()
    config.data.dataset = "mnist"
    config.data.image_size = 28
    config.model.ch = 64
    config.model.ch_mult = (1, 2, 2)  # 28 -> 14 -> 7
    config.model.num_res_blocks = 2
    config.model.attn_resolutions = (14,)
    config.model.dropout = 0.1
    config.training.batch_size = 128
    config.training.num_train_steps = 20000
    config.training.learning_rate = 2e-4
    config.training.warmup_steps = 1000
    config.training.ema_decay = 0.9995
    config.training.log_every = 100
    config.training.checkpoint_every = 2000
    config.training.sample_every = 5000
    return default.with_family(config, family)
