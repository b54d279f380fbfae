"""Layer 4, the command line's logic on top of the library.

One module per config block checks that block and turns it into library arguments:

=========================== ===========================================================================
``data_config``             ``data.*``; the source it names (``load_source``)
``model_config``            ``model.*`` and the backbone's fields (via ``jaxdiff.models.backbones``);
                            ``build_model``
``training_config``         ``training.*``, ``parallel.*``; learning rate, optimiser, train step
``latent_config``           ``latent.*`` (latent diffusion)
``autoencoder_config``      ``autoencoder.*`` (``--mode=train_autoencoder``); ``autoencoder_from_config``
``diffusion_config``        ``diffusion.*`` -> the family (``family_from_config``)
``sampling_config``         ``sampling.*`` -> samplers and generation (``generate_from_config``)
``edit_config``             ``edit.*`` (``validate_edit``)
``eval_config``             ``eval.*`` (``validate_eval``, ``feature_dim``)
=========================== ===========================================================================

``checks`` holds :class:`~jaxdiff.drivers.checks.ConfigError`, the shared field checks and
``check_workdir``; ``config_checks.validate(config, blocks)`` composes the block checks.

Built on those: ``experiment`` (the compiled pieces of a diffusion config), ``autoencoder_experiment``,
``model_source`` (a checkpoint's or ``model.init_from``'s network, and the run's resolved config),
``trained_model`` (the network a mode opens), ``latent`` (latent spaces), ``progress``,
``eval_features`` (splits, feature extractor, reference statistics), ``edit_inputs`` and ``edit_tasks``
(what edit mode reads and runs), and the modes, each naming the config blocks it reads (``BLOCKS``) and
registered in ``modes.MODES``: ``train_loop`` (``train`` and ``train_autoencoder``), ``sample_mode``,
``eval_mode``, ``edit_mode``, ``export_mode``. ``main.py`` is a thin absl wrapper around ``MODES``."""
