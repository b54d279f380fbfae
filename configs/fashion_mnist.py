"""Fashion-MNIST offline: the idx files that Debian's ``dataset-fashion-mnist`` installs (60,000 train +
10,000 test 28x28 grayscale images, 10 classes), class-conditional for classifier-free guidance.

``apt-get install dataset-fashion-mnist`` puts them in /usr/share/datasets/fashion-mnist/; any folder
holding ``train-images-idx3-ubyte.gz`` etc. works (``--config.data.data_dir=...``). No flips: sandals, sneakers
and ankle boots all face the same way in Fashion-MNIST (their mean images are far from mirror-symmetric).
"""

from configs import default


def get_config():
    config = default.get_config()
    config.data.dataset = "idx"
    config.data.data_dir = "/usr/share/datasets/fashion-mnist"
    config.data.image_size = 28
    config.data.random_flip = False
    config.model.ch = 64
    config.model.ch_mult = (1, 2, 2)  # 28 -> 14 -> 7
    config.model.num_res_blocks = 2
    config.model.attn_resolutions = (14,)
    config.model.dropout = 0.1
    config.model.class_conditional = True
    config.training.label_dropout = 0.1
    config.training.batch_size = 128
    config.training.num_train_steps = 20000
    config.training.learning_rate = 2e-4
    config.training.warmup_steps = 1000
    config.training.ema_decay = 0.9995
    config.training.log_every = 100
    config.training.checkpoint_every = 2000
    config.training.sample_every = 5000
    return config
