"""Scikit-learn's embedded 8x8 digits (no download), a few minutes on 2 CPU cores.

A small class-conditional U-Net (ch 32, one res block per level, ~0.7M parameters); the sample grid
has 10 columns, one per digit class, sampled with DDPM over T=1000 steps from the EMA parameters.

Another diffusion family, the same network and recipe: ``--config=configs/digits.py:edm`` (Heun, 18
steps), ``:flow`` (flow matching, Euler 50) or ``:vp`` (continuous-time VP, DPM-Solver++ 50).
"""

from configs import default


def get_config(family: str = "ddpm"):
    config = default.get_config()
    config.data.dataset = "digits"
    config.data.image_size = 8
    config.model.ch = 32
    config.model.ch_mult = (1, 2)
    config.model.num_res_blocks = 1
    config.model.attn_resolutions = (4,)
    config.model.class_conditional = True
    config.training.batch_size = 64
    config.training.num_train_steps = 1500
    config.training.learning_rate = 2e-3
    config.training.warmup_steps = 100
    config.training.log_every = 50
    config.training.checkpoint_every = 500
    config.training.sample_every = 500
    config.sampling.num_samples = 100
    config.eval.num_samples = 1000  # --mode=eval: FID/KID on 1,000 samples (minutes on a CPU, not hours)
    return default.with_family(config, family)
