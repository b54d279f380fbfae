"""What ``--mode=train_autoencoder`` trains, built from a config: the KL autoencoder of
``config.autoencoder``, its optimiser (``config.training`` with the block's own ``num_train_steps`` and
``learning_rate``), the mesh and shardings, the compiled step and the state initialiser, with the
interface the train loop uses for :class:`~jaxdiff.drivers.experiment.Experiment` (``step``, ``init``,
``abstract_state``, ``meta``); and the reconstruction grids it writes while training."""

from __future__ import annotations

import copy
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.common import parallel, paths, plotting
from jaxdiff.data import preprocess
from jaxdiff.drivers.autoencoder_config import autoencoder_from_config
from jaxdiff.drivers.training_config import learning_rate_from_config, optimizer_from_config
from jaxdiff.models.autoencoder import autoencoder_apply, init_autoencoder
from jaxdiff.training.autoencoder_step import make_autoencoder_train_step
from jaxdiff.training.keys import INIT_STREAM, stream_key
from jaxdiff.training.state import init_train_state

KIND = "autoencoder"  # what the checkpoints of this mode record as their "kind"
GRID_IMAGES = 16  # training images shown (input row above reconstruction row) in each grid


def training_config(config):
    """``config`` with ``training.num_train_steps`` and ``training.learning_rate`` the autoencoder's."""
    out = copy.deepcopy(config)
    out.training.num_train_steps = config.autoencoder.num_train_steps
    out.training.learning_rate = config.autoencoder.learning_rate
    return out


class AutoencoderExperiment:
    """The compiled pieces of autoencoder training for images of ``channels`` channels: ``config``
    (the training block already the autoencoder's, :func:`training_config`), ``model``, ``apply_fn``,
    ``tx``, ``mesh``, ``state_sharding``, ``step``, :meth:`init`, :meth:`abstract_state`, :meth:`meta`."""

    kind = KIND

    def __init__(self, config, channels: int, mesh=None):
        parallel.check_partitionable_rng()
        config = training_config(config)
        self.config, tc = config, config.training
        self.mesh = mesh or parallel.make_mesh(config.parallel.num_devices)
        parallel.check_batch_divides(tc.batch_size, self.mesh)
        self.image_shape = (config.data.image_size, config.data.image_size, channels)
        self.model = autoencoder_from_config(config.autoencoder, channels, jnp.dtype(tc.dtype))
        self.apply_fn = autoencoder_apply(self.model)
        self.tx = optimizer_from_config(tc)
        init = lambda key: init_train_state(init_autoencoder(self.model, key, self.image_shape), self.tx)  # noqa: E731
        shapes = jax.eval_shape(init, jax.random.key(0))
        self.state_sharding = parallel.state_shardings(shapes, self.mesh, config.parallel.shard_params,
                                                       config.parallel.shard_min_size)
        self._shapes = shapes
        step = make_autoencoder_train_step(
            self.apply_fn, self.tx, kl_weight=config.autoencoder.kl_weight,
            reconstruction=config.autoencoder.reconstruction, ema_decay_rate=tc.ema_decay, ema_warmup=tc.ema_warmup,
            preprocess=functools.partial(preprocess, random_flip=config.data.random_flip), seed=config.seed,
            learning_rate_fn=learning_rate_from_config(tc), mesh=self.mesh)
        rep, batch = parallel.replicated(self.mesh), parallel.batch_sharded(self.mesh)
        self.step = jax.jit(step, in_shardings=(self.state_sharding, batch), out_shardings=(self.state_sharding, rep),
                            donate_argnums=0)
        self._init = jax.jit(lambda: init(stream_key(config.seed, INIT_STREAM, 0)), out_shardings=self.state_sharding)
        self.reconstruct = jax.jit(lambda params, images: self.apply_fn(params, preprocess(images, None))[0])

    def init(self):
        return self._init()

    def abstract_state(self):
        """Shapes, dtypes and shardings of the state, without computing it."""
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            self._shapes, self.state_sharding)

    def meta(self) -> dict:
        """What a checkpoint records besides the state: the config, the data's shape, the kind of model."""
        return {"config": json.loads(self.config.to_json()), "channels": self.image_shape[-1], "num_classes": 0,
                "kind": KIND}


def write_reconstructions(experiment: AutoencoderExperiment, state, source, workdir, step: int):
    """``reconstructions_<step>.png``: the first :data:`GRID_IMAGES` training images, each row of inputs
    followed by the row of their reconstructions (EMA parameters, posterior means). Returns the uint8
    grid (``None`` on processes other than 0)."""
    images = np.asarray(source[np.arange(min(GRID_IMAGES, len(source)))][0])
    recon = parallel.to_host(experiment.reconstruct(state.ema_params, images))
    inputs = np.asarray(preprocess(images, None))
    rows = [block for i in range(0, len(images), 8) for block in (inputs[i:i + 8], recon[i:i + 8])]
    if not paths.is_writer():
        return None
    return plotting.save_image_grid(np.concatenate(rows), paths.as_path(workdir) / f"reconstructions_{step:07d}.png",
                                    nrow=min(8, len(images)))
