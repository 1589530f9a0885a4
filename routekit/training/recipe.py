"""The pieces of a training recipe: resolve the config's task, train, save the result.

The model comes from :func:`routekit.models.resolve_model` ('world', 'world-proxy' or a path).

``recipes/train_expert.py`` reads top to bottom as these calls; ``routekit train`` runs
:func:`run_recipe`, the same sequence.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from accelerate import PartialState
from transformers import PreTrainedTokenizerBase

from ..io import atomic_write_json
from ..models import resolve_model
from ..tasks.base import Task
from .config import TrainConfig
from .trainer import TrainResult, train


def resolve_task(config: TrainConfig) -> Task:
    """The config's task by name (world tasks, ``jsonl:PATH``, ``hf:PATH``)."""
    from ..errors import ConfigError
    from ..tasks import get_task

    if config.task is None:
        raise ConfigError("the config has no 'task'; name one, e.g. task: add or task: jsonl:data.jsonl")
    return get_task(config.task)


def default_run_dir(out: str | os.PathLike) -> Path:
    """Where a recipe keeps checkpoints and its log: ``runs/<name of out>``."""
    return Path("runs") / Path(out).name


def save_trained(
    result: TrainResult,
    tokenizer: PreTrainedTokenizerBase,
    out: str | os.PathLike,
    name: str,
    run_dir: str | os.PathLike | None = None,
) -> Path:
    """Write what the run trained to ``out`` (main process only), its log to ``run_dir``.

    svf: an SVFExpert (expert_config.json + expert_model.safetensors, with the training
    config and metrics inside); lora: the PEFT adapter; full/mask: the whole model with its
    tokenizer (a proxy expert's tuned model, say). ``run_dir/train_result.json`` holds the
    config, metrics and the per-step history.
    """
    out = Path(out)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(out)
    if not PartialState().is_main_process:
        return out
    config, model = result.config, result.model
    if config.parameterization == "svf":
        from ..svf import export_expert

        expert = export_expert(
            model, name, training_config=config.model_dump(mode="json"), metrics=result.metrics()
        )
        expert.save_pretrained(out)
    else:
        model.save_pretrained(out)
        if config.parameterization != "lora":
            tokenizer.save_pretrained(out)
    summary: dict[str, Any] = {
        "name": name,
        "config": config.model_dump(mode="json"),
        "metrics": result.metrics(),
        "history": result.history,
    }
    atomic_write_json(run_dir / "train_result.json", summary)
    return out


def run_recipe(
    config_path: str | os.PathLike,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    run_dir: str | os.PathLike | None = None,
) -> tuple[Path, TrainResult]:
    """Load a YAML config, train, save the expert to ``out`` (default experts/<config name>);
    checkpoints and the log go to ``run_dir`` (default runs/<name of out>)."""
    config = TrainConfig.from_yaml(config_path)
    out = Path(out) if out is not None else Path("experts") / Path(config_path).stem
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(out)
    model, tokenizer = resolve_model(config.model)
    task = resolve_task(config)
    result = train(model, tokenizer, task, config, out_dir=run_dir, progress=progress, resume=resume)
    return save_trained(result, tokenizer, out, name=out.name, run_dir=run_dir), result
