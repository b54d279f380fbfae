"""jaxdiff command line: ``python main.py --config=configs/NAME.py --workdir=DIR [--mode=train|sample|eval|edit|...]``.

Override any config field with ``--config.FIELD=VALUE`` (e.g. ``--config.training.batch_size=64``).
The config is checked before anything is compiled or written; bad input is a one-line error.
The logic lives in :mod:`jaxdiff.drivers`; this file parses flags and maps errors to exit codes.

Multi-process (multi-host GPU, TPU pods): run the same command on every host with ``--jax_distributed``
(TPU pods, SLURM, Open MPI and Kubernetes are auto-detected) or with ``--coordinator_address``,
``--num_processes`` and ``--process_id`` (or the environment variables ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``). See docs/scaling.md.

Exit codes: 0 done; 2 bad input, an unusable checkpoint, a failed save or a work directory in use by
another run; 3 training diverged (a non-finite loss; nothing non-finite was saved); 128 + N (143 for
SIGTERM, 130 for SIGINT) when training was stopped by signal N after saving a checkpoint: re-run the
same command to continue; 128 + N too when ``--mode=sample``, ``--mode=eval`` or ``--mode=edit`` was stopped by signal N
(between two chunks, before anything was written).
"""

import re
import sys

from jaxdiff.common import cpu_tuning

if __name__ == "__main__":
    cpu_tuning.reexec_with_tcmalloc()  # restarts once with tcmalloc preloaded, if installed
    cpu_tuning.apply()  # before the first JAX computation; JAXDIFF_CPU_TUNING=0 opts out

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jaxdiff.common import parallel, preemption  # noqa: E402
from jaxdiff.common.run_lock import WorkdirLocked  # noqa: E402
from jaxdiff.drivers import config_checks, train_loop  # noqa: E402
from jaxdiff.drivers.modes import MODES  # noqa: E402
from jaxdiff.training import checkpoint  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory (or gs:// URL) for checkpoints, metrics and pictures (resumes "
                    "if it has a checkpoint).")
flags.DEFINE_enum("mode", "train", list(MODES), "What to do with the config and workdir: "
                  + "; ".join(f"{name}: {mode.help}" for name, mode in MODES.items()) + ".")
flags.DEFINE_bool("jax_distributed", False, "Call jax.distributed.initialize() (auto-detects TPU pods, SLURM, MPI).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (implies --jax_distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process job.")
flags.DEFINE_integer("process_id", None, "Index of this process in [0, num_processes).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def ignore_abandoned_writes(unraisable, default=sys.unraisablehook) -> None:
    """``sys.unraisablehook`` without the "Event loop is closed" reports that TensorStore's callback
    threads raise when they finish writes of a save that already failed (one per array); everything
    else goes to Python's own hook."""
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
        return
    default(unraisable)


def flag_error_line(error: Exception) -> str:
    """One line for a flag that cannot be parsed: an unknown ``--config.FIELD`` (ml_collections' own
    "did you mean" kept), a config file that is missing or does not load, a value of the wrong type."""
    text = str(error)
    if isinstance(error, (AttributeError, KeyError)):  # ml_collections: a repr of the field and a hint
        decoded = text.encode().decode("unicode_escape")
        name = re.search(r"'(\w+)'", decoded)
        hint = re.search(r"Did you mean.*", decoded)
        return (f"unknown config field {name.group(1) if name else decoded.strip()}"
                + (f": {hint.group(0).rstrip(chr(39))}" if hint else ""))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if ("Failed loading config file" in text or "Error whilst parsing config file" in text) and lines:
        return f"cannot load the --config file: {lines[-1]}"
    return " ".join(lines) or type(error).__name__


def parse_flags(argv):
    """absl's flag parsing and the loading of the config file, with every failure one ``error:`` line
    and exit code 2 (no traceback)."""
    try:
        argv = FLAGS(argv)
        FLAGS.config.to_json()  # config_flags reports a file that failed to load on first use
    except Exception as e:  # noqa: BLE001 (config_flags raises many types: all are bad input)
        print(f"error: {flag_error_line(e)}", file=sys.stderr)
        sys.exit(2)
    return argv


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines off the terminal
    sys.unraisablehook = ignore_abandoned_writes
    config, workdir = FLAGS.config, FLAGS.workdir
    # the fields set by --config.FIELD flags: a checkpoint's recorded network and process replace the
    # config file's, but a flag that contradicts them is an error (jaxdiff.drivers.model_source.configure)
    given = tuple(config_flags.get_override_values(FLAGS["config"]))
    try:
        parallel.initialize_distributed(FLAGS.jax_distributed, FLAGS.coordinator_address,
                                        FLAGS.num_processes, FLAGS.process_id)
        print(MODES[FLAGS.mode].run(config, workdir, given))
    except (train_loop.Preempted, preemption.Interrupted) as e:
        print(str(e), file=sys.stderr)
        sys.exit(128 + e.signum)
    except train_loop.Diverged as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    except (config_checks.ConfigError, checkpoint.CheckpointError, WorkdirLocked, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
