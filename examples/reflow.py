"""Rectified flow's reflow (Liu et al. 2023) on scikit-learn's digits, with the library alone.

1. Train a flow-matching model ("1-rectified flow") on the digits.
2. Draw pairs ``(x_T, ODE(x_T))`` from it with an accurate solver (``generate(..., keep_noise=True)``).
3. Fine-tune it on the pairs: the train step noises each sample with its own paired noise
   (``batch["noise"]``), which straightens the ODE paths ("2-rectified flow").
4. Measure straightness: for fresh noise, the distance between a k-step Euler sample and the model's own
   accurate ODE solution, for both models, and save their 1-step and 2-step grids side by side.

    python examples/reflow.py [--steps 1500] [--pairs 8192] [--reflow-steps 1500]
"""

import argparse

import jax
import numpy as np
from sklearn.datasets import load_digits

import jaxdiff

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=1500)
parser.add_argument("--pairs", type=int, default=8192)
parser.add_argument("--reflow-steps", type=int, default=1500)
parser.add_argument("--out", default="reflow.png")
args = parser.parse_args()
jaxdiff.cpu_tuning.apply()

x = load_digits().images[..., None].astype(np.float32) / 8.0 - 1.0  # [N, 8, 8, 1] in [-1, 1]
family = jaxdiff.families.flow(t_sampling="logit_normal")
model = jaxdiff.UNet(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, out_ch=1)
apply_fn = jaxdiff.denoiser_apply(model)
optimizer = jaxdiff.make_optimizer(jaxdiff.learning_rate_schedule(2e-3, warmup_steps=100), grad_clip_norm=1.0)
step = jax.jit(jaxdiff.make_train_step(apply_fn, family, optimizer, ema_decay_rate=0.999, ema_warmup=True))
rng = np.random.default_rng(0)


def train(state, num_steps, batches):
    losses = []
    for _ in range(num_steps):
        state, metrics = step(state, batches())
        losses.append(float(metrics["loss"]))
    return state, losses


# 1. 1-rectified flow on the data.
state = jaxdiff.init_train_state(jaxdiff.init_denoiser(model, jax.random.key(0), x.shape[1:]), optimizer)
state, losses = train(state, args.steps, lambda: {"image": x[rng.choice(len(x), 64)]})
teacher = state.ema_params
print(f"1-rectified flow: loss {np.mean(losses[:20]):.4f} -> {np.mean(losses[-20:]):.4f}")

# 2. Pairs from its ODE (midpoint, 50 steps = 100 network evaluations).
ode = jaxdiff.make_sampler(family, "midpoint", 25, clip_x0=False)
pairs = jaxdiff.generate(apply_fn, teacher, ode, (args.pairs,) + x.shape[1:], jax.random.key(1), keep_noise=True)
noise, images = pairs.noise, np.asarray(pairs.samples)

# 3. 2-rectified flow: the same model fine-tuned on the pairs (fresh optimizer state, EMA restarted).
state = jaxdiff.init_train_state(teacher, optimizer)
state, losses = train(state, args.reflow_steps, lambda: (lambda i: {"image": images[i], "noise": noise[i]})(
    rng.choice(args.pairs, 64)))
student = state.ema_params
print(f"2-rectified flow (reflow on {args.pairs} pairs): loss {np.mean(losses[:20]):.4f} -> "
      f"{np.mean(losses[-20:]):.4f}")

# 4. Straightness: k-step Euler against each model's own accurate ODE solution, same noise.
shape, key = (512,) + x.shape[1:], jax.random.key(2)
rows, grids = [], []
for name, params in (("1-RF", teacher), ("2-RF", student)):
    reference = np.asarray(jaxdiff.generate(apply_fn, params, ode, shape, key).samples)
    errors = []
    for k in (1, 2, 4):
        few = np.asarray(jaxdiff.generate(apply_fn, params, jaxdiff.make_sampler(family, "euler", k), shape,
                                          key).samples)
        errors.append(float(np.sqrt(np.mean((few - reference) ** 2))))
        if k <= 2:
            grids.append(few[:32])
    rows.append((name, errors))
    print(f"{name}: RMS distance of 1 / 2 / 4-step Euler to its 100-NFE ODE solution: "
          + " / ".join(f"{e:.3f}" for e in errors))
jaxdiff.save_image_grid(np.concatenate(grids), args.out, nrow=16)
print(f"{args.out}: rows 1-2 1-RF with 1 Euler step, 3-4 1-RF with 2, 5-6 2-RF with 1, 7-8 2-RF with 2")
