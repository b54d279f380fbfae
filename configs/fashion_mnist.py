"""Fashion-MNIST offline: the idx files that Debian's ``dataset-fashion-mnist`` installs (60,000 train +
10,000 test 28x28 grayscale images, 10 classes), class-conditional for classifier-free guidance.

``apt-get install dataset-fashion-mnist`` puts them in /usr/share/datasets/fashion-mnist/; any folder
holding ``train-images-idx3-ubyte.gz`` etc. works (``--config.data.data_dir=...``). No flips: sandals, sneakers
and ankle boots all face the same way in Fashion-MNIST (their mean images are far from mirror-symmetric).

Another diffusion family, the same network and recipe: ``--config=configs/fashion_mnist.py:edm`` (or
``:vp``, ``:flow``).
"""

from configs import mnist


def get_config(family: str = "ddpm"):
    config = mnist.get_config(family)  # the same network and training recipe as MNIST
    config.data.dataset = "idx"
    config.data.data_dir = "/usr/share/datasets/fashion-mnist"
    config.data.random_flip = False
    config.model.class_conditional = True
    config.training.label_dropout = 0.1
    return config
