"""Exclusive locks on a directory's lock file, naming their holder: one writer per directory.

:func:`exclusive_lock` takes ``fcntl.flock`` on a lock file for as long as its ``with`` block
runs and writes the holder (pid, host, start time, command) into the file. The kernel
releases a flock when its holder dies, by any signal, so a lock never outlives its process;
the file's content does, which is how a *stale* lock (content, but no holder) is told from a
held one (content, and the flock refused) and reported when it is taken over. The file is
emptied, not deleted, on a clean exit: deleting a lock file lets two processes lock two
different files of one name.

The holder text doubles as a fencing token: a process that works for the holder (a worker)
can compare :func:`lock_holder` with the token it was given and stop writing once another
process has taken the lock over.

``flock`` is advisory and local to one machine's kernel, and on NFS it is emulated with
byte-range locks (Linux 2.6.12 and later), which NFS servers honour across clients.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import LockHeldError, RoutekitError

if sys.platform != "win32":
    import fcntl
else:  # pragma: no cover - routekit's locks need POSIX flock
    fcntl = None


def lock_holder(path: str | os.PathLike) -> dict | None:
    """The holder recorded in a lock file (None when the file is absent, empty or unreadable)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    try:
        holder = json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        return None
    return holder if isinstance(holder, dict) else None


def describe_holder(holder: dict | None) -> str:
    if not holder:
        return "an unknown process"
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')!r} (since "
        f"{holder.get('started')}, running {holder.get('command')!r})"
    )


@contextlib.contextmanager
def exclusive_lock(
    path: str | os.PathLike,
    what: str,
    *,
    wait: bool = False,
    on_stale: Callable[[str], None] | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[dict]:
    """Hold an exclusive flock on ``path`` for the ``with`` block; yields the holder record
    written into it.

    A lock held by a live process is refused with :class:`LockHeldError` naming its pid
    and host (or, with ``wait=True``, waited for, after telling ``on_wait``). A lock file
    left with content by a dead holder is taken over, after telling ``on_stale``.
    """
    if fcntl is None:  # pragma: no cover
        raise RoutekitError(f"{what}: exclusive locks need a POSIX system (fcntl.flock).")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by spawned processes
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = describe_holder(lock_holder(path))
            if not wait:
                raise LockHeldError(
                    f"{what} is in use by {holder}: its lock {str(path)!r} is held. Wait for "
                    "that run to finish (or stop it), or choose another directory."
                ) from None
            if on_wait:
                on_wait(f"{what} is in use by {holder}; waiting for it to finish.")
            fcntl.flock(fd, fcntl.LOCK_EX)
        stale = lock_holder(path)
        if stale and on_stale:
            on_stale(
                f"taking over the lock of {what} from {describe_holder(stale)}, which "
                "is no longer running."
            )
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv)[:300],
            "token": secrets.token_hex(8),
        }
        _rewrite(fd, json.dumps(me, sort_keys=True) + "\n")
        try:
            yield me
        finally:
            _rewrite(fd, "")  # a clean exit leaves no holder behind
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _rewrite(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)
    os.fsync(fd)
