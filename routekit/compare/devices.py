"""Where a comparison's cells run: the device a suite or ``--device`` names, resolved once per
run, and how cells spread over several GPUs.

``auto`` (the default) is ``cuda`` where a GPU exists, else ``cpu``. ``cuda`` spreads cells
over every visible GPU (each running cell on its own GPU, one worker per GPU by default);
``cuda:N`` pins every cell to GPU N; ``cpu`` keeps everything on the CPU (workers: one per
core, as before). Inside a cell, the base, the proxies and every trained model are placed
on that one device (:func:`place`), and every input tensor follows the model it feeds.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..errors import ConfigError

AUTO = "auto"


def check_device_name(name: str) -> str:
    """``name`` if it is ``auto`` or a torch device (cpu, cuda, cuda:1, mps ...); else a
    ConfigError saying what a device may be."""
    if name == AUTO:
        return name
    try:
        torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"device {name!r} is not a torch device; give auto, cpu, cuda (every GPU) or cuda:N."
        ) from None
    return name


def resolve_device(name: str | None) -> str:
    """The device ``name`` means on this machine: ``auto``/None → ``cuda`` when a GPU exists,
    else ``cpu``; a CUDA device that does not exist is a ConfigError naming what does."""
    name = check_device_name(name or AUTO)
    if name == AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError(
                f"device {name!r}: this machine has no CUDA GPU (torch sees none); use "
                "--device cpu (or auto)."
            )
        if device.index is not None and device.index >= n:
            raise ConfigError(
                f"device {name!r}: this machine has {n} CUDA GPU(s), cuda:0 to cuda:{n - 1}."
            )
    return name


def cell_devices(device: str) -> list[str]:
    """The devices cells are dealt to: every GPU for an unindexed ``cuda``, else ``device``."""
    if device == "cuda":
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cuda"]
    return [device]


def suite_device(suite: object) -> str | None:
    """The device a suite names: its ``device``, else its model block's, else None (auto)."""
    named = getattr(suite, "device", None)
    if named is None and getattr(suite, "model", None) is not None:
        named = suite.model.device  # type: ignore[attr-defined]
    return named


def default_workers(devices: list[str] | None = None) -> int:
    """One worker per GPU when cells run on GPUs; otherwise what the cores allow (one
    single-threaded worker per core)."""
    if devices and all(torch.device(d).type == "cuda" for d in devices):
        return len(devices)
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, n)


def place(model: nn.Module, device: str | torch.device) -> nn.Module:
    """``model`` moved to ``device`` (in place; returned for chaining)."""
    return model.to(torch.device(device))


def enter_device(device: str | torch.device) -> torch.device:
    """Make ``device`` this process's current CUDA device when it is one (so libraries that
    ask for "the" GPU, the accelerator among them, use it); returns it as a torch.device."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device


__all__ = [
    "AUTO", "cell_devices", "check_device_name", "default_workers", "enter_device", "place",
    "resolve_device", "suite_device",
]
