"""Preemption: turn SIGTERM / SIGINT into "checkpoint at the next step boundary, then stop".

Cluster schedulers (Cloud TPU, GKE, SLURM) announce an eviction with SIGTERM some seconds ahead.
:class:`PreemptionGuard` catches it (and Ctrl-C) so the training loop can finish the step in flight,
save, wait for the checkpoint to be complete and exit, instead of dying mid-write. A second SIGTERM
ends the process at once (the checkpoints on disk stay intact: Orbax commits by renaming); a second
Ctrl-C interrupts at once.

With several processes the stop step must be the same everywhere (the save is a collective). There
JAX's preemption sync service does it: its coordination service receives SIGTERM on any host and all
hosts agree on the first step ``max(step of every host) + 1`` that they then report as the sync point
(:func:`jax.experimental.multihost_utils.reached_preemption_sync_point`, called at every step). A
Ctrl-C on one host is forwarded to that service as SIGTERM. If the service is off
(``jax_enable_preemption_service=False``), hosts exchange their flags every ``agree_every`` steps.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxdiff.common import jax_internals


class Interrupted(Exception):
    """Long work (sampling, evaluation) stopped on signal ``signum`` between two of its chunks;
    nothing of it was written."""

    def __init__(self, signum: int, what: str = "the work"):
        super().__init__(f"stopped by signal {signum} during {what}; nothing of it was written (the "
                         "checkpoints are untouched): re-run the same command to do it again")
        self.signum = signum


class PreemptionGuard:
    """Context manager: ``with PreemptionGuard() as g: ... if g.should_stop(step): save; stop``.

    ``signum`` is the signal received (SIGTERM if another host was preempted), else ``None``.
    Outside the main thread no handler can be installed and :meth:`should_stop` only reports
    what the multi-host service reports.
    """

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT), agree_every: int = 10):
        self.signals = tuple(signals)
        self.agree_every = agree_every
        self.signum: int | None = None
        self._previous: dict = {}
        self._multi = False
        self._service = False

    def __enter__(self) -> "PreemptionGuard":
        self._multi = jax.process_count() > 1
        self._service = self._multi and jax_internals.preemption_sync_manager() is not None
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                if sig == signal.SIGTERM and self._service:
                    continue  # JAX's coordination service listens for SIGTERM itself
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        if self.signum is not None and signum == signal.SIGTERM:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)  # a second SIGTERM: die now, as without the guard
        self.signum = signum
        if self._service:
            signal.raise_signal(signal.SIGTERM)  # let the sync service tell every host

    def stop_check(self, what: str):
        """A ``should_stop()`` callable for chunked work (:func:`jaxdiff.common.chunks.map_chunks`):
        it raises :class:`Interrupted` once a signal has arrived (agreed by every process, as
        :meth:`should_stop`, counting its own calls as steps)."""
        calls = iter(range(1, 2 ** 62))

        def check() -> None:
            if self.should_stop(next(calls)):
                raise Interrupted(self.signum or signal.SIGTERM, what)

        return check

    def should_stop(self, step: int) -> bool:
        """Whether to checkpoint after ``step`` and stop; call it at every step on every process."""
        if not self._multi:
            return self.signum is not None
        if self._service:
            if multihost_utils.reached_preemption_sync_point(step):
                self.signum = self.signum or signal.SIGTERM
                return True
            return False
        if step % self.agree_every:
            return False
        flags = multihost_utils.process_allgather(np.int32(self.signum or 0))
        if np.any(flags):
            self.signum = self.signum or int(np.max(flags))
            return True
        return False
