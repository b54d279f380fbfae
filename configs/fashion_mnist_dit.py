"""Fashion-MNIST (Debian's idx files) with a Diffusion Transformer: 28x28 as 49 patches of 4x4,
6 blocks of width 192, class-conditional. Sized for a GPU or a patient CPU.

Any family after the colon: ``--config=configs/fashion_mnist_dit.py:flow``.
"""

from configs import fashion_mnist


def get_config(family: str = "ddpm"):
    config = fashion_mnist.get_config(family)
    config.model.backbone = "dit"
    config.model.dit.depth = 6
    config.model.dit.hidden_size = 192
    config.model.dit.num_heads = 6
    config.model.dit.patch_size = 4
    config.training.learning_rate = 3e-4
    return config
