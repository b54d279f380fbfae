"""configs/digits.py with a Diffusion Transformer (Peebles & Xie 2023) for the U-Net: 8x8 digits as 16
patches of 2x2, 4 blocks of width 128 (1.3M parameters), class-conditional; minutes on 2 CPU cores.

Any family after the colon: ``--config=configs/digits_dit.py:flow``.
"""

from configs import digits


def get_config(family: str = "ddpm"):
    config = digits.get_config(family)
    config.model.backbone = "dit"
    config.model.dit.depth = 4
    config.model.dit.hidden_size = 128
    config.model.dit.num_heads = 4
    config.model.dit.patch_size = 2
    config.training.learning_rate = 1e-3
    return config
