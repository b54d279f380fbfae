"""jaxdiff as a library: train a diffusion model on your own float array, then sample with DDIM.

    python examples/train_on_arrays.py

The array here is scikit-learn's 8x8 digits scaled to [-1, 1]; put yours in its place (any
``[N, H, W, C]`` float array in [-1, 1] whose size halves once). No config file, no command line:
the marked part is the README's example as printed, and its first line sets the number of training
steps and the file the samples go to.
"""

# --- the example the README shows -------------------------------------------------------------
import jax
import numpy as np
from sklearn.datasets import load_digits

import jaxdiff

steps, png = 300, "samples.png"  # training steps; the file of the sample grid
x = load_digits().images[..., None].astype(np.float32) / 8.0 - 1.0  # your data: [N, 8, 8, 1] in [-1, 1]
family = jaxdiff.families.ddpm(jaxdiff.make_tables(jaxdiff.make_betas("linear", 1000)))  # or families.edm(), .flow()
model = jaxdiff.UNet(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, out_ch=1)
apply_fn = jaxdiff.denoiser_apply(model)
optimizer = jaxdiff.make_optimizer(jaxdiff.learning_rate_schedule(2e-3, warmup_steps=50), grad_clip_norm=1.0)
state = jaxdiff.init_train_state(jaxdiff.init_denoiser(model, jax.random.key(0), x.shape[1:]), optimizer)
step = jax.jit(jaxdiff.make_train_step(apply_fn, family, optimizer, ema_decay_rate=0.99), donate_argnums=0)
rng = np.random.default_rng(0)
losses = []
for n in range(steps):
    state, metrics = step(state, {"image": x[rng.choice(len(x), 64)]})
    losses.append(float(metrics["loss"]))
sampler = jaxdiff.make_sampler(family, "ddim", num_steps=20)  # edm: "heun"; flow: "euler" (any: dpm_solver++)
out = jaxdiff.generate(apply_fn, state.ema_params, sampler, (64, 8, 8, 1), jax.random.key(1))
jaxdiff.save_image_grid(out.samples, png)
# -----------------------------------------------------------------------------------------------

first, last = np.mean(losses[:20]), np.mean(losses[-20:])
print(f"loss {first:.4f} -> {last:.4f} over {steps} steps; {len(out.samples)} DDIM-20 samples in {png}")
