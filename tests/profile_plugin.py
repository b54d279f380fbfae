"""Where the suite's time goes: with ``JAXDIFF_TEST_PROFILE=DIR`` set, each pytest process (each xdist
worker) writes ``DIR/<worker>.jsonl``, one line per test: its wall time, the seconds JAX spent tracing,
lowering and compiling in this process (``jax.monitoring``'s compile events), the seconds spent waiting
on subprocesses (``main.py``, the 8-device and multi-process workers, the wheel), and the seconds spent
in training loops (``drivers.train_loop._train``). ``python -m tests.profile_plugin DIR`` sums them.

Loaded by ``tests/conftest.py`` only when the variable is set; without it nothing is patched."""

import collections
import contextlib
import json
import os
import subprocess
import sys
import time

_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
_current = collections.Counter()


_open = collections.Counter()  # timed calls in progress, by kind: only the outermost one counts


def _timed(kind, fn):
    def wrapper(*args, **kwargs):
        _open[kind] += 1
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _open[kind] -= 1
            if not _open[kind]:  # communicate() calls wait(): count the time once
                _current[kind] += time.perf_counter() - start
    return wrapper


def install():
    """Patch the timers in; called once per pytest process before the tests import anything heavy."""
    import jax

    def on_duration(event, duration, **_):
        if event in _COMPILE_EVENTS:
            _current["compile"] += duration

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    subprocess.Popen.wait = _timed("subprocess", subprocess.Popen.wait)
    subprocess.Popen.communicate = _timed("subprocess", subprocess.Popen.communicate)
    from jaxdiff.drivers import train_loop

    train_loop._train = _timed("train_loop", train_loop._train)


@contextlib.contextmanager
def record(nodeid: str):
    """Time one test and append its line to this worker's file."""
    _current.clear()
    start = time.perf_counter()
    try:
        yield
    finally:
        row = {"test": nodeid, "wall": time.perf_counter() - start, **_current}
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        with open(os.path.join(os.environ["JAXDIFF_TEST_PROFILE"], f"{worker}.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")


def summary(directory: str, top: int = 30) -> str:
    rows = []
    for name in os.listdir(directory):
        with open(os.path.join(directory, name)) as f:
            rows += [json.loads(line) for line in f]
    totals = collections.Counter()
    for row in rows:
        for key in ("wall", "compile", "subprocess", "train_loop"):
            totals[key] += row.get(key, 0.0)
    lines = [f"{len(rows)} tests, {totals['wall']:.0f} s of test time (summed over workers): "
             f"compile {totals['compile']:.0f} s ({totals['compile'] / totals['wall']:.0%}), "
             f"subprocesses {totals['subprocess']:.0f} s ({totals['subprocess'] / totals['wall']:.0%}), "
             f"training loops {totals['train_loop']:.0f} s ({totals['train_loop'] / totals['wall']:.0%})",
             f"{'wall':>7} {'compile':>7} {'subproc':>7} {'train':>7}  test"]
    for row in sorted(rows, key=lambda r: -r["wall"])[:top]:
        lines.append(f"{row['wall']:7.1f} {row.get('compile', 0):7.1f} {row.get('subprocess', 0):7.1f} "
                     f"{row.get('train_loop', 0):7.1f}  {row['test']}")
    files = collections.Counter()
    for row in rows:
        files[row["test"].split("::")[0]] += row["wall"]
    lines.append("by file: " + ", ".join(f"{k.removeprefix('tests/')} {v:.0f}" for k, v in files.most_common()))
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(sys.argv[1], *(int(a) for a in sys.argv[2:])))
