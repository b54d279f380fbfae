"""Layer 3, training as functions of explicit arguments: the train state, the optimiser and EMA,
the key streams, post-hoc EMA (``posthoc_ema``), the compiled step (``make_train_step``; the KL
autoencoder's in ``autoencoder_step``), and Orbax checkpoints."""
