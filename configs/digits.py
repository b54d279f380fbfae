"""Quick start: scikit-learn's embedded 8x8 digits (no download), ~3 minutes on 2 CPU cores."""

from configs import default


def get_config():
    config = default.get_config()
    config.data.dataset = "digits"
    config.data.image_size = 8
    config.model.ch = 64
    config.model.ch_mult = (1, 2)
    config.model.attn_resolutions = (4,)
    config.training.batch_size = 128
    config.training.num_train_steps = 2000
    return config
