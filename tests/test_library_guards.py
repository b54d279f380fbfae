"""The library's entry points refuse inconsistent arguments with one line in their own terms (argument
names of the library's functions, never the command line's config fields) instead of training or
sampling on them. Each check is traced, not compiled (``jax.eval_shape``), except the donated step."""

import jax
import jax.numpy as jnp
import numpy as np

import jaxdiff

SHAPE = (4, 4, 1)
FAMILY = jaxdiff.families.ddpm(jaxdiff.make_tables(jaxdiff.make_betas("linear", 20)))
OPTIMIZER = jaxdiff.make_optimizer(jaxdiff.learning_rate_schedule(1e-3, warmup_steps=0))


# --------------------------------------------------------------------------- a donated state

def test_a_fresh_state_can_be_donated():
    def apply_fn(params, x, t, y=None, dropout_key=None):
        return params["w"] * x + params["b"]

    state = jaxdiff.init_train_state({"w": jnp.ones(()), "b": jnp.zeros((1,))}, OPTIMIZER, num_ema_profiles=2)
    pointers = [a.unsafe_buffer_pointer() for a in jax.tree.leaves((state.params, state.ema_params,
                                                                    state.ema_profiles))]
    assert len(set(pointers)) == len(pointers)  # every copy of the parameters in a buffer of its own
    step = jax.jit(jaxdiff.make_train_step(apply_fn, FAMILY, OPTIMIZER, ema_stds=(0.05, 0.1)), donate_argnums=0)
    batch = {"image": jax.random.uniform(jax.random.key(2), (4, *SHAPE), minval=-1.0, maxval=1.0)}
    for _ in range(2):
        state, metrics = step(state, batch)
    assert int(state.step) == 2 and np.isfinite(float(metrics["loss"]))
