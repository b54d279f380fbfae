"""Alternating A/B timing across worker processes.

Each side (jaxdiff, PyTorch + diffusers, or a jaxdiff variant with other settings) lives in its own
``spawn``-ed process, so thread pools, XLA flags and allocators never mix. The parent builds every
workload (compile + warm-up), then runs rounds: in each round every worker in turn does ``reps``
units of work while the others block on a pipe (idle, no CPU). The order is reversed every other
round (A B, B A, ...) so slow drifts in machine load cancel. Each round gives one images/s figure
per side and one ratio per pair; the report gives medians.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time
import traceback


def _worker(conn, env: dict, builder: str, kwargs: dict):
    os.environ.update(env)
    try:
        if builder.startswith("jax"):  # the library's CPU settings, as main.py applies them (unless
            from jaxdiff.common import cpu_tuning  # JAXDIFF_CPU_TUNING=0), before any computation

            cpu_tuning.apply()
        import bench.workloads as workloads  # noqa: F401 (imports jax/torch after env is set)
        w = getattr(workloads, builder)(**kwargs)
        info = dict(w.info)
        conn.send(("ready", w.images, info))
        while True:
            msg = conn.recv()
            if msg is None:
                break
            if msg == "peak":
                conn.send(workloads.matmul_peak("jax" if builder.startswith("jax") else "torch"))
                continue
            t0 = time.perf_counter()
            for _ in range(msg):
                w.run()
            conn.send(time.perf_counter() - t0)
    except Exception:  # noqa: BLE001 (report any failure to the parent)
        conn.send(("error", traceback.format_exc(), None))


class Side:
    """One worker process: ``label``, ``builder`` name in :mod:`bench.workloads`, its kwargs, env."""

    def __init__(self, label: str, builder: str, kwargs: dict, env: dict | None = None):
        self.label, self.builder, self.kwargs, self.env = label, builder, kwargs, dict(env or {})
        self.times: list[float] = []

    def start(self):
        """Spawn the worker with ``env`` in its environment from the start (variables that the C
        library reads when the process starts, such as ``GLIBC_TUNABLES``, need that)."""
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, self.env, self.builder, self.kwargs),
                                daemon=True)
        saved = dict(os.environ)
        os.environ.update(self.env)
        try:
            self.proc.start()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def wait_ready(self):
        kind, images, info = self.conn.recv()
        if kind == "error":
            raise RuntimeError(f"{self.label} failed:\n{images}")
        self.images, self.info = images, info

    def time(self, reps: int) -> float:
        self.conn.send(reps)
        return self.conn.recv() / reps

    def stop(self):
        try:
            self.conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(timeout=30)


def run_ab(sides: list[Side], rounds: int, reps: int, measure_peak: bool = True,
           log=print) -> dict:
    """Build every side (one at a time, so compiles do not overlap), then ``rounds`` alternating
    rounds of ``reps`` units each. Returns per-side medians and per-pair median ratios."""
    for s in sides:
        s.start()
        s.wait_ready()  # one build at a time: compile timings are not disturbed by the other side
        log(f"  built {s.label}: {s.info}")
    peaks = {}
    if measure_peak:
        for s in sides:
            kind = "jax" if s.builder.startswith("jax") else "torch"
            if kind not in peaks:
                s.conn.send("peak")
                peaks[kind] = s.conn.recv()
    for r in range(rounds):
        order = sides if r % 2 == 0 else sides[::-1]
        for s in order:
            s.times.append(s.time(reps))
        log("  round %d: " % r + ", ".join(f"{s.label} {s.images / s.times[-1]:.2f} img/s"
                                           for s in sides))
    if measure_peak:  # again after the rounds: the best of both is the machine's matmul peak
        for s in sides:
            kind = "jax" if s.builder.startswith("jax") else "torch"
            s.conn.send("peak")
            peaks[kind] = max(peaks.get(kind, 0.0), s.conn.recv())
    for s in sides:
        s.stop()
    out = {"sides": {}, "ratios": {}, "peaks": peaks}
    for s in sides:
        ips = [s.images / t for t in s.times]
        out["sides"][s.label] = dict(s.info, images_per_s=statistics.median(ips),
                                     step_s=statistics.median(s.times), all_images_per_s=ips)
    base = sides[-1]
    for s in sides[:-1]:
        ratios = [b / a for a, b in zip(s.times, base.times)]
        out["ratios"][f"{s.label} / {base.label}"] = statistics.median(ratios)
    first = sides[0]
    for s in sides[1:-1]:  # the first side against every variant between it and the reference
        ratios = [b / a for a, b in zip(first.times, s.times)]
        out["ratios"][f"{first.label} / {s.label}"] = statistics.median(ratios)
    return out
