"""Fashion-MNIST on a CPU: a 28x28 recipe for minutes of a 2-core machine, not hours of an accelerator.

The idx files of Debian's ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``), as
``configs/fashion_mnist.py``. What ``bench/time_to_quality.py`` measured for it, against the seeds'
recipe in the same run, is in bench/README.md ("Time to quality"); the choices:

- flow matching (logit-normal times), whose few-step samples were the best per training budget in
  ``bench/families.py`` (Euler 20 here: 20 network evaluations);
- a narrow U-Net (ch 32, levels 28/14/7, one res block per level, attention only at 7x7): a fraction of
  the seeds' 1.6M-parameter network's cost per step;
- batch 128 at learning rate 2e-3 with 100 warm-up steps and a short EMA (0.999 with warm-up);
- class-conditional with label dropout, sampled at guidance 1 (the grid has one class per column).

Train for a wall-clock budget instead of a step count: ``--config.training.max_minutes=10``.
"""

from configs import default


def get_config(family: str = "flow"):
    config = default.get_config()
    config.data.dataset = "idx"
    config.data.data_dir = "/usr/share/datasets/fashion-mnist"
    config.data.image_size = 28
    config.data.random_flip = False  # sandals, sneakers and ankle boots all face the same way
    config.model.ch = 32
    config.model.ch_mult = (1, 2, 2)  # 28 -> 14 -> 7
    config.model.num_res_blocks = 1
    config.model.attn_resolutions = (7,)
    config.model.class_conditional = True
    config.training.label_dropout = 0.1
    config.training.batch_size = 128
    config.training.num_train_steps = 100_000  # with max_minutes, the budget ends the run first
    config.training.max_minutes = 10.0
    config.training.learning_rate = 2e-3
    config.training.warmup_steps = 100
    config.training.ema_decay = 0.999
    config.training.log_every = 50
    config.training.checkpoint_every = 500
    config.training.sample_every = 1000
    config.sampling.sampler = "euler"
    config.sampling.num_steps = 20
    config.sampling.num_samples = 100
    config.eval.num_samples = 1000
    return default.with_family(config, family)
