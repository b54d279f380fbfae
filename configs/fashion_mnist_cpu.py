"""Fashion-MNIST on a CPU: a 28x28 recipe for minutes of a 2-core machine, not hours of an accelerator.

The quick start (``scripts/quickstart.sh`` trains it for 5 minutes). The idx files of Debian's
``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``), as ``configs/fashion_mnist.py``.
What ``bench/time_to_quality.py`` measured for it, against the seeds' recipe in the same run, and the
one-at-a-time trials behind each choice are in bench/README.md ("Time to quality"):

- flow matching (logit-normal times): at 5 minutes, FID 23.6 against 36.0 for DDPM with a v target
  (cosine schedule), 52.3 with min-SNR weighting added, 71.2 for EDM;
- a narrow U-Net (ch 32, levels 28/14/7, one res block per level, attention only at 7x7): width 48 or two
  res blocks per level cost more per step than they give in 5 minutes (FID 46.3, 39.7);
- batch 128 at learning rate 2e-3 with 100 warm-up steps (batch 256: 45.2; batch 64 was level with 128),
  float32 (bfloat16 ran 12% fewer steps on an AVX-512-BF16 CPU), EMA 0.999 with warm-up (the raw
  parameters: 47.2);
- class-conditional with label dropout 0.1, sampled with Heun 10 (19 network evaluations; 20.5 against
  Euler 20's 23.6) at classifier-free guidance 2 (9.5 against 23.6 at guidance 1); the grid has one
  class per column.

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
    config.sampling.sampler = "heun"
    config.sampling.num_steps = 10  # 19 network evaluations
    config.sampling.guidance_scale = 2.0
    config.sampling.num_samples = 100
    config.eval.num_samples = 1000
    config.eval.fid_guidance_scale = 2.0
    return default.with_family(config, family)
