"""What one configuration describes, built from the library: the network, the schedule tables,
the optimiser, the mesh and shardings, the compiled train step and the state initialiser.

Each piece comes from the driver module of its config block (``model_config.build_model``,
``diffusion_config.family_from_config``, ``training_config``'s optimiser and train step), each a
library call with explicit arguments; :class:`Experiment` puts them together and is used alike by the
train loop and the sample, eval, edit and export modes.
"""

from __future__ import annotations

import json

import jax

from jaxdiff.common import parallel
from jaxdiff.drivers.diffusion_config import family_from_config
from jaxdiff.drivers.model_config import build_model
from jaxdiff.drivers.training_config import optimizer_from_config, train_step_from_config
from jaxdiff.models.denoiser import denoiser_apply, init_denoiser
from jaxdiff.training.keys import INIT_STREAM, stream_key
from jaxdiff.training.state import TrainState, init_train_state


class Experiment:
    """The compiled pieces of one configuration for images of ``channels`` channels and a dataset of
    ``num_classes`` classes: ``model`` (a Flax module), ``apply_fn``, ``family`` (its ``tables`` for the
    ddpm family, else ``None``), ``tx``, ``mesh``,
    ``state_sharding``, ``step`` (the jitted train step), :meth:`init`, :meth:`abstract_state`.

    With ``latent`` (a :class:`~jaxdiff.drivers.latent.LatentSpace`; ``channels`` its latent channels) the
    model denoises latents: ``image_shape`` is the latent shape and :meth:`decode` turns samples into
    images (the identity otherwise)."""

    kind = "diffusion"

    def __init__(self, config, channels: int, num_classes: int, mesh=None, latent=None):
        parallel.check_partitionable_rng()
        self.config = config
        pc = config.parallel
        self.mesh = mesh or parallel.make_mesh(pc.num_devices)
        parallel.check_batch_divides(config.training.batch_size, self.mesh,
                                     accum_steps=config.training.grad_accum_steps)
        self.num_classes = num_classes
        self.latent = latent
        self.image_shape = tuple(latent.shape) if latent else (config.data.image_size, config.data.image_size, channels)
        self.family = family_from_config(config.diffusion)
        self.model = build_model(config, channels, num_classes, self.family)
        self.apply_fn = denoiser_apply(self.model)
        self.tables = self.family.tables
        self.tx = optimizer_from_config(config.training)
        init = lambda key: init_train_state(init_denoiser(self.model, key, self.image_shape), self.tx,  # noqa: E731
                                            num_ema_profiles=len(config.training.ema_stds))
        shapes = jax.eval_shape(init, jax.random.key(0))
        self.state_sharding = parallel.state_shardings(shapes, self.mesh, pc.shard_params, pc.shard_min_size)
        self._shapes = shapes
        rep, batch = parallel.replicated(self.mesh), parallel.batch_sharded(self.mesh)
        step = train_step_from_config(config, self.apply_fn, self.family, self.tx, self.model.num_classes, self.mesh,
                                      latent=latent is not None)
        self.step = jax.jit(step, in_shardings=(self.state_sharding, batch),
                            out_shardings=(self.state_sharding, rep), donate_argnums=0)
        # The key is made inside the program, so every process builds the same state without inputs.
        self._init = jax.jit(lambda: init(stream_key(config.seed, INIT_STREAM, 0)),
                             out_shardings=self.state_sharding)
        # Compiled sampling programs of this model (sample grids during training reuse them).
        self.sampler_cache: dict = {}

    def init(self) -> TrainState:
        return self._init()

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and shardings of the state, without computing it."""
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            self._shapes, self.state_sharding)

    def decode(self, samples):
        """Samples as images in [-1, 1]: decoded by the latent space's autoencoder, else as they are."""
        return samples if self.latent is None else self.latent.decode(samples)

    def meta(self) -> dict:
        """What a checkpoint records besides the state: the config, the data's shape (the latents'
        channels for latent diffusion, then also the latent space's ``latent`` info) and the kind."""
        meta = {"config": json.loads(self.config.to_json()), "channels": self.image_shape[-1],
                "num_classes": self.num_classes, "kind": self.kind}
        if self.latent is not None:
            meta["latent"] = self.latent.info
        return meta
