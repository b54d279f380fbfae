"""Layer 4, the command line's logic on top of the library: config checks, the config-to-arguments
adapter (``experiment``, ``sampling``), one restore path, and the train, sample and eval modes.
``main.py`` is a thin absl wrapper around these."""
