"""Progress bars of the long modes that also listen for signals: every update (one per chunk of
samples, features or bits/dim batches) runs the guard's stop check, so SIGTERM or Ctrl-C stops
``--mode=sample`` and ``--mode=eval`` between two chunks, before anything is written."""

from __future__ import annotations

from tqdm.auto import tqdm

from jaxdiff.common import paths


class GuardedBar(tqdm):
    """``tqdm`` (rate and ETA; shown by process 0) whose :meth:`update` then calls ``check()``
    (:meth:`jaxdiff.common.preemption.PreemptionGuard.stop_check`), which raises to stop."""

    def __init__(self, total: int, desc: str, check=None, unit: str = "img", leave: bool = True):
        self._check = check
        super().__init__(total=total, desc=desc, unit=unit, disable=not paths.is_writer(), dynamic_ncols=True,
                         leave=leave)

    def update(self, n=1):
        shown = super().update(n)
        self.check()
        return shown

    def check(self) -> None:
        """Run the stop check now (between the chunks' own updates, e.g. every few sampler steps)."""
        if self._check is not None:
            self._check()
