"""jaxdiff command line: ``python main.py --config=configs/NAME.py --workdir=DIR [--mode=train|sample]``.

Override any config field with ``--config.FIELD=VALUE`` (e.g. ``--config.training.batch_size=64``).
The config is checked before anything is compiled or written; bad input is a one-line error.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and pictures (resumes if it has a checkpoint).")
flags.DEFINE_enum("mode", "train", ["train", "sample"], "What to do with the config and workdir.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines off the terminal
    from jaxdiff import checkpoint, config as config_lib, sample, train

    config = FLAGS.config
    try:
        if FLAGS.mode == "train":
            train.train(config, FLAGS.workdir)
            print(f"done: checkpoints, samples_*.png, loss.png and metrics.jsonl in {FLAGS.workdir}")
        elif FLAGS.mode == "sample":
            info = sample.run_sample_mode(config, FLAGS.workdir)
            print(f"wrote {info['num_samples']} samples to {FLAGS.workdir}")
    except (config_lib.ConfigError, checkpoint.CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
