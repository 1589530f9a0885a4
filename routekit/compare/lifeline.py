"""Local worker processes that die with the process that started them.

A ``routekit compare`` killed by any signal (SIGKILL included: a closed terminal, the OOM
killer, a pre-empted job) must not leave its workers training and writing into the run
directory. Two layers:

- :func:`parent_bound_spawning` (Linux): while the pool runs, multiprocessing spawns its
  processes (the workers and the resource tracker) through a few-line launcher that calls
  ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (through ctypes), checks that its parent is still the
  process that wrote the launcher, and then ``exec``s the real interpreter. The death signal
  survives the ``exec``, so it is armed before the worker spends seconds importing torch:
  the kernel kills the worker the moment its parent dies, whatever it is doing.
- :func:`bind_to_parent`, the pool's initializer (every platform): the death signal again,
  the parent-pid check, and a daemon thread that polls ``os.getppid()`` and kills the worker
  once it no longer names the parent (an orphan is re-parented), within ``POLL`` s. SIGINT
  is ignored there: Ctrl-C reaches the whole terminal process group, and stopping the
  workers is the parent's job (it kills them and says how to resume).

The resource tracker also exits by itself once the last process holding its pipe (the
parent and the workers) is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

POLL = 0.5  # seconds between the watchdog's looks at the parent pid
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the Linux kernel to send ``sig`` to this process when its parent dies; returns
    whether it was set (False off Linux or if prctl is unavailable)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the interpreter's own symbols: libc's
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _watch(parent_pid: int, poll: float) -> None:
    while True:
        time.sleep(poll)
        if os.getppid() != parent_pid:
            _die()


def bind_to_parent(parent_pid: int, poll: float = POLL) -> None:
    """Make this (worker) process die when ``parent_pid``, its parent, dies: the parent-death
    signal where the kernel has one, and a watchdog thread everywhere."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        _die()
    threading.Thread(
        target=_watch, args=(parent_pid, poll), daemon=True, name="routekit-parent-watchdog"
    ).start()


_LAUNCHER = """#!{exe} -S
import ctypes, os, sys
ctypes.CDLL(None).prctl({option}, {sig}, 0, 0, 0)
if os.getppid() != {parent}:  # the parent died before the signal was armed
    os._exit(1)
os.execv({exe!r}, [{exe!r}] + sys.argv[1:])
"""


@contextlib.contextmanager
def parent_bound_spawning() -> Iterator[Path | None]:
    """While the block runs, processes that multiprocessing spawns start through a launcher
    that arms the parent-death signal before ``exec``ing the interpreter (Linux; elsewhere, or
    where the interpreter's path cannot stand in a ``#!`` line or the launcher does not run,
    nothing changes and None is yielded). Yields the launcher's path; the previous executable is restored afterwards."""
    from multiprocessing import spawn

    exe = sys.executable
    if (
        not sys.platform.startswith("linux")
        or not exe
        or len(exe) > 120
        or any(c.isspace() for c in exe)
    ):
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="routekit-workers-"))
    launcher = folder / "python"
    launcher.write_text(
        _LAUNCHER.format(
            exe=exe, option=PR_SET_PDEATHSIG, sig=int(signal.SIGKILL), parent=os.getpid()
        )
    )
    launcher.chmod(0o700)
    if not _runs(launcher):  # a temp dir mounted noexec, say: spawn as usual
        shutil.rmtree(folder, ignore_errors=True)
        yield None
        return
    before = spawn.get_executable()
    spawn.set_executable(str(launcher))
    try:
        yield launcher
    finally:
        spawn.set_executable(before)
        shutil.rmtree(folder, ignore_errors=True)


def _runs(launcher: Path) -> bool:
    try:
        done = subprocess.run(
            [str(launcher), "-S", "-c", "pass"],
            timeout=60,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0
