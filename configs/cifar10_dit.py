"""DiT-S/2 in pixel space on CIFAR-10 (256 tokens of 2x2x3), class-conditional, DiT's recipe (AdamW
1e-4, no weight decay, EMA 0.9999, batch 256): for accelerators. ``--config.model.dit.size=B`` (or L, XL)
for the larger models; ``--config.parallel.shard_params=True`` shards them (FSDP) over the devices.
"""

from configs import cifar10


def get_config(family: str = "ddpm"):
    config = cifar10.get_config(family)
    config.model.backbone = "dit"
    config.model.dit.size = "S"
    config.model.dit.patch_size = 2
    config.model.class_conditional = True
    config.training.optimizer = "adamw"
    config.training.learning_rate = 1e-4
    config.training.weight_decay = 0.0
    config.training.batch_size = 256
    config.training.warmup_steps = 0
    return config
