"""Suites: which methods, tasks, learning rates and seeds a comparison runs, as validated YAML.

A suite file is a :class:`Suite` written out (``routekit/compare/suites/default.yaml`` and
``science.yaml`` ship with routekit); an unknown key or a wrong type is a ConfigError naming
the key. ``load_suite("default" | "science" | PATH)`` reads one, :func:`narrow` applies the
command line's ``--methods/--tasks/--seeds/--lrs``.

**Sweep policy** (``sweep: first_seed``, the default): every learning rate of a method runs
on the first seed; each method then runs on the other seeds only at its *best* rate on the
first seed, per task. The best rate is chosen apart from the verdicts' prompts: on the
task's val split where it has one (highest val accuracy at the cell's own best-on-val α;
ties to the smaller α, then the smaller rate); on a task without one (the default world's),
on test accuracy, ties to the higher probe answer log-likelihood, and the choice is labelled
"chosen on test (optimistic)" (``select_on: val`` refuses such a run instead). See
:mod:`.selection`. ``sweep: all_seeds`` runs every rate on every seed.

**Several worlds** (``worlds:`` instead of ``world:``): the suite runs on each world into a
sub-run of its own, the later worlds at the rates the first one chose (``world_sweep:
first``, given to them as ``chosen_lrs``) or sweeping too (``every``), and a verdict commits
only when every world gives it (:mod:`.worlds`).
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import ConfigError, UnknownTaskError
from ..training.config import validate_mapping
from ..world.config import world_from_overrides
from .env.local import ModelBlock
from .methods import (
    PEFT_PREFIX,
    SUBNET_SOURCES,
    MethodSpec,
    PeftMethod,
    check_overrides,
    get_method,
    parse_method_entry,
)

BUILTIN_SUITES = ("default", "science", "smollm2", "smollm2_gpu")


class EvalLimits(BaseModel):
    """How many prompts or texts each metric uses (null = the whole split)."""

    model_config = ConfigDict(extra="forbid")

    test: int | None = Field(200, gt=0, description="task test prompts (accuracy)")
    val: int | None = Field(
        200, gt=0, description="task val prompts (accuracy; what chooses rates and α), where "
        "the task has a val split")
    ood: int | None = Field(200, gt=0, description="task ood prompts (accuracy)")
    probes: int | None = Field(None, gt=0, description="held-out knowledge probes (facts test)")
    statements: int | None = Field(300, gt=0, description="fact statements (recall accuracy)")
    heldout_text: int = Field(200, gt=0, description="held-out world text lines (forgetting, KL)")
    kl_prompts: int = Field(100, gt=0, description="task test prompts for KL(base||tuned)")
    activations: int = Field(100, gt=0, description="test and ood prompts for activation sparsity")
    behaviour: int = Field(100, gt=0, description="test prompts for behaviour shares over training")


class Suite(BaseModel):
    """A comparison: methods × tasks × learning rates × seeds, and how each cell is measured."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="the suite's name (recorded in the run directory)")
    description: str = ""
    world: str = Field(
        "default",
        description="'default', 'tiny', or a world cache entry directory (base/, proxy/, "
        "world_config.json, metrics.json)",
    )
    worlds: list[str | dict[str, Any]] = Field(
        default_factory=list,
        description="instead of one world: several, each run into its own sub-run directory "
        "and the verdicts combined across them (routekit.compare.worlds); each entry is "
        "'default', 'tiny', a world cache entry directory, or a mapping of WorldConfig fields "
        "overriding the default config (from: tiny overrides the tiny one), e.g. {seed: 1, "
        "n_val: 50}, built into the cache on first use",
    )
    world_sweep: Literal["first", "every"] = Field(
        "first",
        description="with worlds: the first world runs the sweep and the later ones only each "
        "method's rate chosen there, per task (first), or every world runs the sweep (every)",
    )
    chosen_lrs: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="per method, per task: the one rate run on every seed instead of the "
        "sweep (a multi-world run fills it in for its later worlds from the first world's "
        "choices); it must be one of the method's lrs",
    )
    model: ModelBlock | None = Field(
        None,
        description="a local model with its own tasks, probes and texts instead of the world "
        "(routekit.compare.env.local); the suite then names no world",
    )
    tasks: list[str] = Field(
        min_length=1, description="task names (routekit.get_task, or the model block's tasks)"
    )
    seeds: list[int] = Field(min_length=1, description="seeds; the first is the sweep seed")
    methods: list[str] = Field(
        min_length=1,
        description="method names (routekit compare --list), or PEFT methods: peft:<file.yaml> "
        "or a mapping {peft: {peft_type: ..., ...}, name:, objective:} (stored under "
        "peft_methods, the list keeping their names)",
    )
    peft_methods: dict[str, PeftMethod] = Field(
        default_factory=dict,
        description="the suite's PEFT methods by name (routekit.compare.methods.PeftMethod); "
        "filled in from methods: entries",
    )
    device: str | None = Field(
        None,
        description="where every cell's base, proxies and trained models live: cpu, cuda "
        "(cells spread over the GPUs, one worker each), cuda:N, or auto (default: the model "
        "block's device, else cuda when available, else cpu); --device overrides it",
    )
    lrs: dict[str, list[float]] = Field(
        default_factory=dict, description="learning rates per method (default: the method's own)"
    )
    steps: int = Field(150, gt=0, description="optimiser steps of every trained method")
    batch_size: int = Field(
        16, gt=0, description="prompts per step; steps × batch_size examples seen by every method"
    )
    checkpoints: int = Field(
        3, ge=1, description="points over training where behaviour shares are measured"
    )
    proxy_alphas: list[float] = Field(
        default_factory=lambda: [0.5, 1.0], min_length=1,
        description="α sweep of the proxy methods (the steered base at each)",
    )
    lora_rank: int = Field(16, gt=0, description="LoRA rank (lora_alpha = 2 × rank)")
    subnet_from: Literal["full_rl", "full_rl_bf16"] = Field(
        "full_rl_bf16",
        description="whose changed parameters subnet_rl trains (same seed and lr); default "
        "full_rl_bf16, since float32 RL changes nearly every entry and its mask would be the "
        "whole model",
    )
    sweep: Literal["first_seed", "all_seeds"] = Field(
        "first_seed", description="every lr on the first seed, then each best lr (first_seed)"
    )
    select_on: Literal["val_or_test", "val"] = Field(
        "val_or_test",
        description="what chooses rates and α: a task's val split; without one, test accuracy "
        "labelled 'chosen on test (optimistic)' (val_or_test), or refuse the run (val)",
    )
    max_new_tokens: int = Field(12, gt=0, description="greedy tokens per evaluated answer")
    train: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per method: TrainConfig fields overriding its recipe"
    )
    eval: EvalLimits = Field(default_factory=EvalLimits)

    @model_validator(mode="before")
    @classmethod
    def _read_peft_methods(cls, data: Any) -> Any:
        """``methods:`` entries that define PEFT methods become names, their definitions
        ``peft_methods`` entries (each PEFT config checked by PEFT's own config class)."""
        if not isinstance(data, dict) or not isinstance(data.get("methods"), list):
            return data
        data = dict(data)
        defined: dict[str, dict] = {}
        for key, value in dict(data.get("peft_methods") or {}).items():
            if isinstance(value, PeftMethod):
                value = value.model_dump()
            if not isinstance(value, dict):
                raise ConfigError(f"peft_methods.{key}: expected a mapping, got {value!r}.")
            pm = validate_mapping(PeftMethod, {**value, "name": value.get("name") or key},
                                  f"suite key 'peft_methods.{key}'").resolved()
            if pm.name != key:
                raise ConfigError(f"peft_methods.{key} is named {pm.name!r}; use one name.")
            defined[key] = pm.model_dump(mode="json")
        names = []
        for entry in data["methods"]:
            if isinstance(entry, str) and entry in defined:
                names.append(entry)
                continue
            pm = parse_method_entry(entry)
            if pm is None:
                names.append(entry)
                continue
            dumped = pm.model_dump(mode="json")
            if pm.name in defined and defined[pm.name] != dumped:
                raise ConfigError(
                    f"two PEFT methods are named {pm.name!r} with different configs; give "
                    "each its own name: in its methods entry."
                )
            defined[pm.name] = dumped
            names.append(pm.name)
        data["methods"], data["peft_methods"] = names, defined
        return data

    @field_validator("methods")
    @classmethod
    def _distinct_methods(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"methods are listed twice: {v}")
        return v

    @field_validator("device")
    @classmethod
    def _a_device(cls, v: str | None) -> str | None:
        from .devices import check_device_name

        return None if v is None else check_device_name(v)

    @field_validator("tasks")
    @classmethod
    def _distinct_tasks(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"tasks are listed twice: {v}")
        return v

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds are listed twice: {v}")
        return v

    @model_validator(mode="after")
    def _check(self) -> Suite:
        for m in self.methods:
            self.method(m)  # every name a built-in method or one of peft_methods
        if self.model is not None and self.world != "default":
            raise ValueError(
                "the suite names both a world and a model block; a comparison runs in one "
                "environment, so keep one of the two"
            )
        if self.worlds:
            self._check_worlds()
        for t in self.tasks:
            self.model.check_task(t) if self.model is not None else check_task_name(t)
        if self.model is not None and self.model.proxy is None:
            steered = [m for m in self.methods if self.method(m).steered]
            if steered:
                raise ValueError(
                    f"methods {steered} steer the base with a tuned/untuned proxy pair, and the "
                    "model block has no proxy; add model.proxy (a small model sharing the "
                    "base's vocabulary) or drop them"
                )
        if self.model is not None and self.model.retain_text is None:
            for m in self.methods:
                over = {**self.method(m).defaults, **self.train.get(m, {})}
                if over.get("retain_kl_coef", 0) > 0 and not over.get("retain_text"):
                    raise ValueError(
                        f"method {m} keeps a retention KL (retain_kl_coef "
                        f"{over['retain_kl_coef']:g}) and the model block names no "
                        f"retain_text; add model.retain_text, or set train.{m}.retain_kl_coef: 0"
                    )
        for m, rates in self.lrs.items():
            if not self.method(m).trains:
                raise ValueError(f"lrs.{m}: method {m!r} trains nothing, it has no learning rate")
            if not rates or any(not (r > 0) for r in rates):
                raise ValueError(f"lrs.{m}: give one or more learning rates > 0, got {rates}")
        for m, over in self.train.items():
            check_overrides(m, over, self.peft_methods)
        for m, per_task in self.chosen_lrs.items():
            if m not in self.methods or not self.method(m).trains:
                raise ValueError(f"chosen_lrs.{m}: {m!r} is not a method of the suite that trains")
            for t, lr in per_task.items():
                if t not in self.tasks:
                    raise ValueError(f"chosen_lrs.{m}.{t}: {t!r} is not one of the suite's tasks")
                if lr not in self.method_lrs(m):
                    raise ValueError(f"chosen_lrs.{m}.{t}: {lr:g} is not one of {m}'s lrs "
                                     f"{self.method_lrs(m)}")
        if "subnet_rl" in self.methods:
            src = self.subnet_from
            if src not in self.methods:
                raise ValueError(
                    f"method subnet_rl trains what the same seed's {src} changed, but the suite "
                    f"has no {src}; add {src} to methods (or drop subnet_rl)"
                )
            missing = sorted(set(self.method_lrs("subnet_rl")) - set(self.method_lrs(src)))
            if missing:
                raise ValueError(
                    f"subnet_rl runs at lrs {missing} that {src} does not; its mask comes from "
                    f"{src} at the same lr, so list them under lrs.{src} too"
                )
        return self

    def _check_worlds(self) -> None:
        if self.model is not None:
            raise ValueError(
                "the suite names both worlds and a model block; a model block is one "
                "environment of its own, so keep one of the two"
            )
        if self.world != "default":
            raise ValueError(
                f"the suite names both world ({self.world!r}) and worlds; list every world "
                "under worlds (it may include that one) and drop world"
            )
        from ..world.tasks import named_world

        seen: dict[str, int] = {}
        for i, spec in enumerate(self.worlds):
            if isinstance(spec, dict):
                config = world_from_overrides(spec, f"worlds[{i}]")
            elif spec in ("default", "tiny"):
                config = named_world(spec)
            else:
                continue  # a cache entry directory: read (and checked) when the run reaches it
            h = config.hash()
            if h in seen:
                raise ValueError(
                    f"worlds[{seen[h]}] and worlds[{i}] are one world (config {h}); each world "
                    "needs its own config, e.g. another seed"
                )
            seen[h] = i

    def method(self, name: str) -> MethodSpec:
        """The method ``name``: a built-in one or one of the suite's PEFT methods."""
        return get_method(name, self.peft_methods)

    def method_lrs(self, method: str) -> list[float]:
        """The learning rates ``method`` sweeps ([] for the base)."""
        spec = self.method(method)
        if not spec.trains:
            return []
        return list(self.lrs.get(method, spec.default_lrs))

    def settings_hash(self) -> str:
        """What every cell of a run depends on (not which cells run): two suites with the
        same hash may share a run directory, whatever their methods, tasks, lrs and seeds."""
        # the model block is the environment's: run.json keeps its stamp (weights and data)
        # Worlds are environments (each sub-run's run.json keeps its stamp); world_sweep and
        # chosen_lrs, like lrs, say which cells run.
        # PEFT methods, like the others, say which cells run: each cell's record keeps its
        # PEFT config, and a finished cell of another config is refused (runner). The device
        # says where cells run, not what they compute.
        d = self.model_dump(mode="json", exclude={"name", "description", "tasks", "seeds",
                                                  "methods", "lrs", "sweep", "select_on",
                                                  "model", "peft_methods", "device",
                                                  "worlds", "world_sweep", "chosen_lrs"})
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def check_task_name(name: str) -> None:
    """Refuse a task name that routekit.get_task does not know, listing the known ones."""
    from ..tasks.registry import known_tasks

    if name.startswith(("jsonl:", "hf:")) or name in known_tasks():
        return
    raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(known_tasks())}.")


def suite_from_dict(data: Any, source: str = "suite") -> Suite:
    """Validate a mapping as a Suite; errors name the offending key."""
    return validate_mapping(Suite, data, source)


def load_suite(spec: str | os.PathLike) -> Suite:
    """A built-in suite by name (``default``, ``science``, ``smollm2``, ``smollm2_gpu``) or a
    suite YAML file.
    A model block's relative paths are read from the suite file's directory."""
    import yaml

    if str(spec) in BUILTIN_SUITES:
        file = resources.files("routekit.compare").joinpath(f"suites/{spec}.yaml")
        text, source = file.read_text(), f"built-in suite {str(spec)!r}"
        path = Path(str(file))
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"suite {str(spec)!r} is neither a built-in suite ({', '.join(BUILTIN_SUITES)}) "
                "nor a YAML file."
            )
        text, source = path.read_text(), str(path)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data["model"].setdefault("root", str(path.resolve().parent))
    if isinstance(data, dict) and isinstance(data.get("methods"), list):
        data["methods"] = [_peft_file_from(m, path.resolve().parent) for m in data["methods"]]
    return suite_from_dict(data, source)


def _peft_file_from(entry: Any, root: Path) -> Any:
    """A methods entry with its PEFT config file's relative path read from ``root``."""
    if isinstance(entry, str) and entry.startswith(PEFT_PREFIX):
        return PEFT_PREFIX + _from_root(entry.removeprefix(PEFT_PREFIX).strip(), root)
    if isinstance(entry, dict) and isinstance(entry.get("peft"), str):
        return {**entry, "peft": _from_root(entry["peft"], root)}
    return entry


def _from_root(spec: str, root: Path) -> str:
    path = Path(spec).expanduser()
    return str(path if path.is_absolute() or not spec else root / path)


def parse_lrs(specs: list[str], suite: Suite | None = None) -> dict[str, list[float]] | list[float]:
    """``--lrs`` values: ``1e-3,3e-3`` (every selected method) or ``svf_rl=1e-3,3e-3``; a
    method's name must be a built-in one or one of ``suite``'s PEFT methods."""
    shared: list[float] = []
    per: dict[str, list[float]] = {}
    for spec in specs:
        method, _, rates = spec.rpartition("=")
        try:
            values = [float(x) for x in rates.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(
                f"--lrs {spec!r}: expected numbers separated by commas, optionally after "
                "METHOD=, e.g. 1e-3,3e-3 or svf_rl=1e-3,3e-3."
            ) from None
        if not values:
            raise ConfigError(f"--lrs {spec!r} lists no learning rate.")
        if method:
            get_method(method, suite.peft_methods if suite is not None else None)
            per[method] = values
        else:
            shared = values
    if shared and per:
        raise ConfigError("--lrs: give either one list for every method or METHOD=... lists, not both.")
    return per or shared


def narrow(
    suite: Suite, *, methods: list[str] | None = None, tasks: list[str] | None = None,
    seeds: list[int] | None = None, lrs: dict[str, list[float]] | list[float] | None = None,
    device: str | None = None,
) -> Suite:
    """The suite with its methods, tasks, seeds, learning rates or device replaced
    (validated again). ``lrs`` as one list applies to every selected method that trains;
    ``methods`` may name the suite's PEFT methods or add ``peft:<file.yaml>`` ones."""
    data = suite.model_dump(mode="json")
    if methods is not None:
        data["methods"] = methods
    if tasks is not None:
        data["tasks"] = tasks
    if seeds is not None:
        data["seeds"] = seeds
    if device is not None:
        data["device"] = device
    source = f"suite {suite.name!r} narrowed by the command line"
    if isinstance(lrs, list) and lrs:
        wide = suite_from_dict(data, source)  # the methods' names, PEFT entries read
        data = wide.model_dump(mode="json")
        data["lrs"] = {m: list(lrs) for m in wide.methods if wide.method(m).trains}
    elif isinstance(lrs, dict) and lrs:
        data["lrs"] = {**data["lrs"], **lrs}
    return suite_from_dict(data, source)


__all__ = [
    "BUILTIN_SUITES", "EvalLimits", "SUBNET_SOURCES", "Suite", "check_task_name", "load_suite",
    "narrow", "parse_lrs", "suite_from_dict",
]
