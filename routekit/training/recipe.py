"""The pieces of a training recipe: resolve the config's task, train, save the result.

The model comes from :func:`load_config_model` ('world' or 'world-proxy' of the config's
world, or a path); world tasks come from the same world (:func:`resolve_task`).

``recipes/train_expert.py`` reads top to bottom as these calls; ``routekit train`` runs
:func:`run_recipe`, the same sequence.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from accelerate import PartialState
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..errors import ConfigError
from ..experts import refuse_foreign_directory
from ..io import atomic_directory, atomic_write_json
from ..models import load_model
from ..tasks.base import Task
from ..world.tasks import WORLD_TASKS, agreed_world, named_world, require_world, world_task
from .config import TrainConfig
from .trainer import TrainResult, train

# The files a full/mask output (save_pretrained of a model and its tokenizer) or a LoRA
# adapter (PEFT's save_pretrained, with its model card) consists of.
_MODEL_FILES = re.compile(
    r"(config|generation_config)\.json|model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json"
)
_TOKENIZER_FILES = {
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
}
_LORA_FILES = {"adapter_config.json", "adapter_model.safetensors", "README.md"}


def load_config_model(config: TrainConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model a config trains: 'world' / 'world-proxy' of the world ``config.world`` names
    (default: the default world), or a local checkpoint directory."""
    if config.model in ("world", "world-proxy"):
        from .. import world

        chosen = named_world(config.world) if config.world is not None else None
        return world.load(chosen) if config.model == "world" else world.load_proxy(chosen)
    return load_model(config.model)


def resolve_task(config: TrainConfig, model: Any = None) -> Task:
    """The config's task by name (world tasks, ``jsonl:PATH``, ``hf:PATH``).

    A world task is drawn from the world of ``model`` (its world cache entry) and of
    ``config.world``; they must agree, and a model of no world needs ``config.world``.
    """
    from ..tasks import get_task

    if config.task is None:
        raise ConfigError("the config has no 'task'; name one, e.g. task: add or task: jsonl:data.jsonl")
    if not isinstance(config.task, str):
        return get_task(config.task, chat=config.chat)
    if config.task in WORLD_TASKS:
        world = agreed_world(model=model, named=config.world)
        task = world_task(config.task, require_world(f"task {config.task!r}", world, model))
        return task.with_chat(config.chat)
    return get_task(config.task, chat=config.chat)


def output_names(parameterization: str, tokenizer: PreTrainedTokenizerBase | None = None) -> set[str]:
    """The file names (besides sharded ``model-*-of-*.safetensors``) that a training output of
    this parameterization consists of; an existing output directory may hold only these."""
    if parameterization == "svf":
        from ..svf.expert import CONFIG_NAME, WEIGHTS_NAME

        return {CONFIG_NAME, WEIGHTS_NAME}
    if parameterization in ("lora", "peft"):  # a PEFT adapter directory
        return set(_LORA_FILES)
    extra = set(getattr(tokenizer, "vocab_files_names", {}).values()) if tokenizer is not None else set()
    return _TOKENIZER_FILES | extra


def check_output_dir(
    out: str | os.PathLike,
    parameterization: str,
    tokenizer: PreTrainedTokenizerBase | None = None,
    written: Iterable[str] = (),
) -> None:
    """Refuse (ExpertFileError) an ``out`` that exists and is not an earlier output of this
    kind: a file, or a directory holding other files or folders (a folder of the user's is
    never replaced). ``written``: names this save has just written, which are its own too."""
    out = Path(out)
    if not out.is_dir():
        refuse_foreign_directory(out, ())  # absent: fine; a file: refused
        return
    ours = output_names(parameterization, tokenizer) | set(written)
    shards = parameterization in ("full", "mask")
    own = [
        p.name for p in out.iterdir()
        if p.is_file() and (p.name in ours or bool(shards and _MODEL_FILES.fullmatch(p.name)))
    ]
    refuse_foreign_directory(out, own)


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
    config and metrics inside); lora, peft: the PEFT adapter; full/mask: the whole model with its
    tokenizer (a proxy expert's tuned model, say). Each appears in one rename, and an
    existing ``out`` holding files of another kind is refused (:func:`check_output_dir`).
    ``run_dir/train_result.json`` holds the config, metrics and the per-step history.
    """
    out = Path(out)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(out)
    if not PartialState().is_main_process:
        return out
    config, model = result.config, result.model
    kind = config.parameterization
    check_output_dir(out, kind, tokenizer)
    if kind == "svf":
        from ..svf import export_expert

        expert = export_expert(
            model, name, training_config=config.model_dump(mode="json"), metrics=result.metrics()
        )
        expert.save_pretrained(out)
    else:
        with atomic_directory(out) as tmp:  # a killed save leaves the previous output
            model.save_pretrained(tmp)
            if kind not in ("lora", "peft"):
                tokenizer.save_pretrained(tmp)
            check_output_dir(out, kind, tokenizer, written=[p.name for p in tmp.iterdir()])
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
    chat: bool | None = None,
    task_options: dict[str, Any] | None = None,
) -> tuple[Path, TrainResult]:
    """Load a YAML config, train, save the expert to ``out`` (default experts/<config name>);
    checkpoints and the log go to ``run_dir`` (default runs/<name of out>). ``chat`` and
    ``task_options`` (``--chat``, ``--prompt-key`` ...; None: the config's) override the
    config's ``chat`` and its task's options."""
    from ..tasks.registry import with_options

    config = TrainConfig.from_yaml(config_path)
    update: dict[str, Any] = {}
    if chat is not None:
        update["chat"] = chat
    if task_options and any(v is not None for v in task_options.values()):
        if config.task is None:
            raise ConfigError("task options were given but the config has no 'task'.")
        update["task"] = with_options(config.task, **task_options)
    if update:
        config = TrainConfig(**{**config.model_dump(), **update})
    out = Path(out) if out is not None else Path("experts") / Path(config_path).stem
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(out)
    model, tokenizer = load_config_model(config)
    check_output_dir(out, config.parameterization, tokenizer)  # refused now, not after training
    task = resolve_task(config, model)
    result = train(model, tokenizer, task, config, out_dir=run_dir, progress=progress, resume=resume)
    return save_trained(result, tokenizer, out, name=out.name, run_dir=run_dir), result
