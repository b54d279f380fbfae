"""One run per work directory: a lock that a second process on the same workdir (a double launch,
a restarted job while the old one still runs) meets as a one-line error instead of mixing two runs.

A local (or NFS) work directory is locked with ``fcntl.flock`` on ``<workdir>/.jaxdiff.lock``: the
kernel releases it when the holder exits or is killed, so a crashed run never leaves a stale lock.
The file records the holder's host, pid and start time for the error message. On an object store
(``gs://``) there is no lock primitive: the lock is the object itself, taken over only when it names
this host and a pid that no longer runs, and removed when the run ends. In a multi-process job only
process 0 takes the lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time

from jaxdiff.common import paths

LOCK_NAME = ".jaxdiff.lock"


class WorkdirLocked(RuntimeError):
    """Another process holds the work directory."""


def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(text: str) -> str:
    try:
        h = json.loads(text)
        return f"pid {h['pid']} on host {h['host']} (since {h['since']})"
    except (ValueError, KeyError, TypeError):
        return "another process"


class RunLock:
    """``with RunLock(workdir):`` holds the work directory for one run; raises :class:`WorkdirLocked`
    (one line naming the holder) when another process holds it. ``enabled=False`` (the other
    processes of a multi-process job) makes it a no-op."""

    def __init__(self, workdir: paths.PathLike, enabled: bool = True):
        self.path = paths.as_path(workdir) / LOCK_NAME
        self.enabled = enabled
        self._fd: int | None = None

    def _refuse(self, who: str):
        raise WorkdirLocked(f"work directory {self.path.parent} is in use by {who}: wait for that run to end or "
                            "stop it, or use another --workdir")

    def __enter__(self) -> "RunLock":
        if not self.enabled:
            return self
        if paths.is_url(self.path):
            if self.path.exists():
                text = self.path.read_text()
                try:
                    h = json.loads(text)
                    stale = h["host"] == socket.gethostname() and not _pid_alive(int(h["pid"]))
                except (ValueError, KeyError, TypeError):
                    stale = False
                if not stale:
                    self._refuse(_describe(text))
            paths.write_text(self.path, json.dumps(_holder()))
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            text = os.pread(fd, 4096, 0).decode(errors="replace")
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                self._refuse(_describe(text))
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        elif paths.is_url(self.path):
            self.path.unlink(missing_ok=True)
