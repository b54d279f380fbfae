"""MNIST on a CPU from idx files: ``configs/fashion_mnist_cpu.py``'s recipe on the digits' 28x28 set.

Any folder holding ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz`` (the files of yann.lecun.com's MNIST):
``--config.data.data_dir=/path`` is required (Debian has no MNIST package; without it the run stops with
a one-line error before anything is read).
"""

from configs import fashion_mnist_cpu


def get_config(family: str = "flow"):
    config = fashion_mnist_cpu.get_config(family)
    config.data.data_dir = ""
    return config
