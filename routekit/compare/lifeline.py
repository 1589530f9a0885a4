"""Local worker processes that die with the process that started them.

A ``routekit compare`` killed by any signal (SIGKILL included: a closed terminal, the OOM
killer, a pre-empted job) must not leave its workers training and writing into the run
directory. Each worker calls :func:`bind_to_parent` first (the process pool's initializer):

- on Linux, ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (through ctypes) makes the kernel kill the
  worker the moment its parent dies; ``os.getppid()`` is checked right after, since the
  parent may have died before the call;
- everywhere, a daemon thread polls ``os.getppid()`` and kills the worker once it no longer
  names the parent (an orphan is re-parented): the portable fallback, within ``POLL`` s;
- SIGINT is ignored: Ctrl-C reaches the whole terminal process group, and stopping the
  workers is the parent's job (it kills them and says how to resume).

The multiprocessing resource tracker needs nothing of its own: it exits when the last process
holding its pipe (the parent and the workers) is gone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

POLL = 0.5  # seconds between the watchdog's looks at the parent pid
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the Linux kernel to send ``sig`` to this process when its parent dies; returns
    whether it was set (False off Linux or if prctl is unavailable)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
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
