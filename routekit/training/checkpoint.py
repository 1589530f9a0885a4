"""Training checkpoints: trainable parameters, Adam state, RNG states and the step, atomically.

Layout of ``out_dir/checkpoint/`` (replaced in one rename, so a kill leaves the previous one):
``trainable.safetensors`` (parameters by name), ``optimizer.safetensors`` (``<name>::<key>``
for each Adam state tensor), ``rng.safetensors`` and ``state.json`` (step, config, history).
No pickle files: every tensor is safetensors, everything else JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, TrainingError
from ..io import (
    atomic_directory,
    atomic_save_safetensors,
    atomic_write_json,
    load_safetensors,
    read_json,
)
from .config import TrainConfig

FORMAT = 1


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoint"


def save_checkpoint(
    out_dir: str | Path,
    params: dict[str, nn.Parameter],
    optimizer: torch.optim.Optimizer,
    step: int,
    config: TrainConfig,
    history: list[dict[str, Any]],
    num_processes: int = 1,
) -> Path:
    """Write the checkpoint after ``step`` completed steps; returns its directory.

    ``num_processes`` is recorded for the reader only: a run may resume on another count.
    """
    names = list(params)
    opt_state = optimizer.state_dict()["state"]
    opt_tensors = {}
    for i, name in enumerate(names):
        for key, value in opt_state.get(i, {}).items():
            opt_tensors[f"{name}::{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for d, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"torch_cuda_{d}"] = s
    target = checkpoint_dir(out_dir)
    with atomic_directory(target) as tmp:
        atomic_save_safetensors({n: p.detach() for n, p in params.items()}, tmp / "trainable.safetensors")
        atomic_save_safetensors(opt_tensors, tmp / "optimizer.safetensors")
        atomic_save_safetensors(rng, tmp / "rng.safetensors")
        atomic_write_json(
            tmp / "state.json",
            {
                "format": FORMAT,
                "step": step,
                "num_processes": num_processes,
                "param_names": names,
                "config": config.model_dump(mode="json"),
                "history": history,
            },
        )
    return target


def load_checkpoint(
    out_dir: str | Path,
    params: dict[str, nn.Parameter],
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
) -> tuple[int, list[dict[str, Any]]]:
    """Restore parameters, optimizer and RNG in place; returns (step, history).

    Refuses (TrainingError) a checkpoint written with a different config, since resuming it
    would not reproduce the uninterrupted run; only steps and bookkeeping may change.
    """
    path = checkpoint_dir(out_dir)
    state = read_json(path / "state.json", what="checkpoint state")
    saved = TrainConfig.model_validate(state["config"])
    old, new = saved.resume_key(), config.resume_key()
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
        raise TrainingError(
            f"checkpoint {str(path)!r} was written with a different config ({shown}); resuming "
            "would not reproduce that run. Use the original config or another out_dir."
        )
    names = list(params)
    if state["param_names"] != names:
        missing = sorted(set(state["param_names"]) ^ set(names))[:5]
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds other trainable parameters than the model "
            f"(differing names: {missing}); resume onto the same base and parameterization."
        )
    tensors = load_safetensors(path / "trainable.safetensors", what="checkpoint parameters")
    with torch.no_grad():
        for name, p in params.items():
            t = tensors[name]
            if t.shape != p.shape:
                raise CheckpointError(
                    f"checkpoint parameter {name!r} has shape {tuple(t.shape)}, model has {tuple(p.shape)}."
                )
            p.copy_(t.to(p.dtype))
    opt_tensors = load_safetensors(path / "optimizer.safetensors", what="checkpoint optimizer")
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in opt_tensors.items():
        name, field = key.rsplit("::", 1)
        per_param.setdefault(names.index(name), {})[field] = value
    current = optimizer.state_dict()
    optimizer.load_state_dict({"state": per_param, "param_groups": current["param_groups"]})
    rng = load_safetensors(path / "rng.safetensors", what="checkpoint RNG")
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(rng) if k.startswith("torch_cuda_")]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    return int(state["step"]), list(state["history"])
