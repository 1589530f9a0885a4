"""Training checkpoints: trainable parameters, Adam state, RNG states and the step, atomically.

Layout of ``out_dir/checkpoint/`` (replaced in one rename, so a kill leaves the previous one):
``trainable.safetensors`` (parameters by name), ``optimizer.safetensors`` (``<name>::<key>``
for each Adam state tensor), ``rng.safetensors`` and ``state.json`` (step, config, history).
No pickle files: every tensor is safetensors, everything else JSON. ``out_dir/started.json``
records the run started there, so that a run killed before its first checkpoint is started
again by a resume rather than refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from ..errors import CheckpointError, ExpertFileError, TrainingError, format_validation_error
from ..io import (
    atomic_directory,
    atomic_save_safetensors,
    atomic_write_json,
    load_safetensors,
    read_json,
    recover_directory,
)
from .config import TrainConfig

FORMAT = 1


STARTED = "started.json"  # beside checkpoint/: which run was started in out_dir


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoint"


def has_checkpoint(out_dir: str | Path) -> bool:
    """Whether ``out_dir`` holds a checkpoint, after putting back one that a kill caught
    between the two renames of its replacement (``routekit.io.recover_directory``)."""
    recover_directory(checkpoint_dir(out_dir))
    return (checkpoint_dir(out_dir) / "state.json").is_file()


def mark_started(out_dir: str | Path, config: TrainConfig, identity: dict[str, str]) -> None:
    """Record in ``out_dir`` which run starts there, so that a resume of a run killed before
    its first checkpoint can start it again instead of refusing."""
    atomic_write_json(Path(out_dir) / STARTED,
                      {"config": config.model_dump(mode="json"), "identity": identity})


def started_here(out_dir: str | Path, config: TrainConfig, identity: dict[str, str]) -> bool:
    """Whether ``out_dir`` records the start of this very run (same resume key, base and
    data), as :func:`mark_started` wrote it."""
    path = Path(out_dir) / STARTED
    try:
        started = read_json(path, "run start")
        saved = TrainConfig.model_validate(started["config"])
    except (ExpertFileError, ValidationError, KeyError, TypeError):
        return False
    return saved.resume_key() == config.resume_key() and started.get("identity") == identity


def save_checkpoint(
    out_dir: str | Path,
    params: dict[str, nn.Parameter],
    optimizer: torch.optim.Optimizer,
    step: int,
    config: TrainConfig,
    history: list[dict[str, Any]],
    num_processes: int = 1,
    identity: dict[str, str] | None = None,
) -> Path:
    """Write the checkpoint after ``step`` completed steps; returns its directory.

    ``num_processes`` is recorded for the reader only: a run may resume on another count.
    ``identity`` (what the run trains: the base's and the current weights' fingerprints, the
    task data's hash) is checked by :func:`read_checkpoint` on resume.
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
                "identity": identity or {},
            },
        )
    return target


class _State(BaseModel):
    """What ``state.json`` must hold (checked before anything is restored)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    format: int
    step: int = Field(ge=0)
    num_processes: int = Field(ge=1)
    param_names: list[str]
    config: dict[str, Any]
    history: list[dict[str, Any]]
    identity: dict[str, str] = Field(default_factory=dict)


# What an identity entry names, for the refusal message.
_IDENTITY = {
    "base_fingerprint": "base model weights (fingerprint)",
    "task_data": "training data (hash of the split's prompts and references)",
    "retain_data": "retention text (hash)",
}


def check_identity(path: Path, saved: dict[str, str], current: dict[str, str]) -> None:
    """Refuse a resume onto another base, other task data or other retention text.

    ``current["weights_fingerprint"]`` (the model as passed in) may equal either the saved
    base's fingerprint (a fresh model; the checkpoint then restores the trained weights) or
    the saved weights' (the same object, trained so far, continuing in segments).
    """
    if not saved:
        raise TrainingError(
            f"checkpoint {str(path)!r} records no fingerprint of its base or hash of its data "
            "(written by an older routekit), so a resume cannot be checked; start without "
            "resume or in another out_dir."
        )
    diffs = []
    for key, what in _IDENTITY.items():
        if key == "base_fingerprint":
            now = current.get("weights_fingerprint")
            if now not in (saved.get("base_fingerprint"), saved.get("weights_fingerprint")):
                diffs.append(f"{what}: {saved.get(key)} -> {now}")
        elif saved.get(key) != current.get(key):
            diffs.append(f"{what}: {saved.get(key)} -> {current.get(key)}")
    if diffs:
        raise TrainingError(
            f"checkpoint {str(path)!r} belongs to another run ({'; '.join(diffs)}); resuming "
            "would mix two runs. Resume with the original model and data, or use another out_dir."
        )


@dataclass
class Checkpoint:
    """A checkpoint read from disk and checked, not yet applied to a model."""

    path: Path
    step: int
    history: list[dict[str, Any]]
    param_names: list[str]
    params: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]
    rng: dict[str, torch.Tensor]
    identity: dict[str, str] = field(default_factory=dict)


def _tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        return load_safetensors(path, what=what)
    except ExpertFileError as e:
        raise CheckpointError(f"{e} Resume from another run_dir or start without resume.") from None


def read_checkpoint(
    out_dir: str | Path, config: TrainConfig, identity: dict[str, str] | None = None
) -> Checkpoint:
    """Read and check ``out_dir/checkpoint`` for a run with ``config``; changes nothing.

    A checkpoint that a kill caught between the two renames of its replacement is put back
    first. A missing checkpoint is a TrainingError (``resume=True`` never silently starts
    afresh; :func:`~routekit.training.train` restarts only the run that :func:`started_here`);
    an unreadable or inconsistent ``state.json`` or tensor file is a CheckpointError naming
    the file; a checkpoint written with a different config is a TrainingError, since resuming
    it would not reproduce the uninterrupted run (only steps and bookkeeping may change).
    """
    path = checkpoint_dir(out_dir)
    state_file = path / "state.json"
    if not has_checkpoint(out_dir):
        raise TrainingError(
            f"resume=True but there is no checkpoint to resume: {str(state_file)!r} does not "
            "exist. Point out_dir / --run-dir at the run to continue, or start without resume."
        )
    bad = f"checkpoint state {str(state_file)!r}"
    try:
        state = _State.model_validate(read_json(state_file, what="checkpoint state"))
    except ExpertFileError as e:
        raise CheckpointError(f"{e} Resume from another run_dir or start without resume.") from None
    except ValidationError as e:
        raise CheckpointError(
            f"{bad} is damaged ({format_validation_error(e)}); resume from another run_dir or "
            "start without resume."
        ) from None
    if state.format != FORMAT:
        raise CheckpointError(f"{bad} has format {state.format!r}; this routekit reads {FORMAT}.")
    if len(state.history) != state.step:
        raise CheckpointError(
            f"{bad} is damaged: step {state.step} but {len(state.history)} history records."
        )
    try:
        saved = TrainConfig.model_validate(state.config)
    except ValidationError as e:
        raise CheckpointError(f"{bad} holds an invalid config ({format_validation_error(e)}).") from None
    old, new = saved.resume_key(), config.resume_key()
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
        raise TrainingError(
            f"checkpoint {str(path)!r} was written with a different config ({shown}); resuming "
            "would not reproduce that run. Use the original config or another out_dir."
        )
    if identity is not None:
        check_identity(path, state.identity, identity)
    ckpt = Checkpoint(
        path=path,
        step=state.step,
        history=state.history,
        param_names=state.param_names,
        params=_tensors(path / "trainable.safetensors", "checkpoint parameters"),
        optimizer=_tensors(path / "optimizer.safetensors", "checkpoint optimizer"),
        rng=_tensors(path / "rng.safetensors", "checkpoint RNG"),
        identity=state.identity,
    )
    missing = sorted(set(state.param_names) - set(ckpt.params))
    opt_names = {key.rsplit("::", 1)[0] for key in ckpt.optimizer}
    stray = sorted(opt_names - set(state.param_names)) + [k for k in ckpt.optimizer if "::" not in k]
    if missing or stray or "torch_cpu" not in ckpt.rng:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is inconsistent (parameters missing from "
            f"trainable.safetensors: {missing[:5]}; optimizer entries of unknown parameters: "
            f"{stray[:5]}; CPU RNG state present: {'torch_cpu' in ckpt.rng}). Resume from "
            "another run_dir or start without resume."
        )
    return ckpt


def restore_checkpoint(
    ckpt: Checkpoint, params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer
) -> tuple[int, list[dict[str, Any]]]:
    """Apply a read checkpoint to parameters, optimizer and RNG; returns (step, history).

    Names and shapes are all checked first, so a refused checkpoint changes nothing.
    """
    names = list(params)
    if ckpt.param_names != names:
        differing = sorted(set(ckpt.param_names) ^ set(names))[:5]
        raise CheckpointError(
            f"checkpoint {str(ckpt.path)!r} holds other trainable parameters than the model "
            f"(differing names: {differing}); resume onto the same base and parameterization."
        )
    for name, p in params.items():
        t = ckpt.params[name]
        if t.shape != p.shape:
            raise CheckpointError(
                f"checkpoint parameter {name!r} in {str(ckpt.path)!r} has shape "
                f"{tuple(t.shape)}, the model has {tuple(p.shape)}."
            )
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in ckpt.optimizer.items():
        name, field = key.rsplit("::", 1)
        if value.dim() and value.shape != params[name].shape:
            raise CheckpointError(
                f"checkpoint optimizer entry {key!r} in {str(ckpt.path)!r} has shape "
                f"{tuple(value.shape)}, the parameter has {tuple(params[name].shape)}."
            )
        per_param.setdefault(names.index(name), {})[field] = value
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(ckpt.params[name].to(p.dtype))
    current = optimizer.state_dict()
    optimizer.load_state_dict({"state": per_param, "param_groups": current["param_groups"]})
    torch.set_rng_state(ckpt.rng["torch_cpu"])
    if torch.cuda.is_available():
        cuda = [ckpt.rng[k] for k in sorted(ckpt.rng) if k.startswith("torch_cuda_")]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    return ckpt.step, list(ckpt.history)


def load_checkpoint(
    out_dir: str | Path,
    params: dict[str, nn.Parameter],
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
) -> tuple[int, list[dict[str, Any]]]:
    """Read, check and restore ``out_dir/checkpoint`` in place; returns (step, history)."""
    return restore_checkpoint(read_checkpoint(out_dir, config), params, optimizer)
