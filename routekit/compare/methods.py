"""The methods the comparison harness trains, by name, and the TrainConfig each cell runs.

Every method is one objective (SFT or RL) times one parameterization of routekit's one
trainer (:func:`routekit.training.train`), so methods differ only in which numbers train:

=============== ========= ================= ======= =====================================
method          objective parameterization  model   notes
=============== ========= ================= ======= =====================================
base            —         —                 base    the untrained base (the reference)
svf_rl          rl        svf (MLP)         base    Transformer²'s expert vectors
svf_sft         sft       svf (MLP)         base
proxy_sft       sft       full              proxy   base steered at each α of the sweep
proxy_rl        rl        full              proxy   idem
lora_rl         rl        lora (PEFT)       base    rank from the suite
lora_sft        sft       lora (PEFT)       base
full_sft        sft       full              base
full_rl         rl        full              base    float32 master weights
full_rl_bf16    rl        full              base    bf16 storage (TrainConfig.bf16_storage)
subnet_rl       rl        mask              base    only what the same seed's full RL at the
                                                    same lr changed (bitwise)
=============== ========= ================= ======= =====================================

Beside these, a suite may name **any weight-space PEFT method** (:class:`PeftMethod`, in the
suite's ``methods:`` as ``peft:<file.yaml>`` or ``{peft: {peft_type: ..., ...}}``): objective
SFT or RL, parameterization ``peft`` (the config built by PEFT's own classes,
:mod:`routekit.training.peft_methods`), merged with PEFT's ``merge_and_unload()`` for the
update diff and reported like LoRA. Its cells read their method from the suite
(:meth:`~routekit.compare.suite.Suite.method`).

The defaults come from the world recipes (``recipes/configs/world/<task>_<method>.yaml``):
RL samples 8 completions of at most 12 tokens per prompt at temperature 1, gradients are
clipped at norm 1, no weight decay; full SFT keeps a Learning-without-Forgetting KL of 1.0 to
the base on the environment's retention text (the world's pretraining corpus, or a local
model block's ``retain_text``) and proxy SFT one of 3.0, as those recipes do. A suite's
``train`` section overrides any of these per method. The ``model`` and ``world`` fields of a
cell's TrainConfig are the environment's (:mod:`routekit.compare.env`), not the method's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import ConfigError
from ..training.config import TrainConfig

# TrainConfig fields a method or a cell decides; a suite may not override them.
OWNED_FIELDS = frozenset({
    "objective", "parameterization", "lr", "seed", "steps", "batch_size", "bf16_storage",
    "mask", "model", "task", "world", "split", "checkpoint_every", "eval_every", "peft",
    "device",
})

_RL = {"group_size": 8, "max_new_tokens": 12, "temperature": 1.0, "kl_coef": 0.0}
_COMMON = {"micro_batch_size": 4, "grad_clip": 1.0, "weight_decay": 0.0}


@dataclass(frozen=True)
class MethodSpec:
    """One method of the comparison: how its cells train and what they produce."""

    name: str
    description: str
    objective: Literal["sft", "rl"] | None  # None: nothing trains (the base)
    parameterization: Literal["svf", "lora", "peft", "full", "mask"] | None
    model: Literal["base", "proxy"] = "base"
    bf16_storage: bool = False
    default_lrs: tuple[float, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields (recipes')
    peft: dict[str, Any] | None = None  # parameterization peft: the PEFT config mapping

    @property
    def trains(self) -> bool:
        return self.objective is not None

    @property
    def weight_space(self) -> bool:
        """Whether the method changes the base's weights (its update structure is measured)."""
        return self.model == "base" and self.trains

    @property
    def steered(self) -> bool:
        """Proxy-tuning: the base is steered at decoding time by a tuned/untuned proxy pair."""
        return self.model == "proxy"


_SVF = {"svf": {"target_modules": "mlp"}}
METHODS: dict[str, MethodSpec] = {m.name: m for m in (
    MethodSpec("base", "the untrained base model", None, None),
    MethodSpec("svf_rl", "SVF expert vectors (MLP), RL", "rl", "svf",
               default_lrs=(1e-3, 3e-3), defaults={**_COMMON, **_RL, **_SVF}),
    MethodSpec("svf_sft", "SVF expert vectors (MLP), SFT", "sft", "svf",
               default_lrs=(1e-3, 3e-3), defaults={**_COMMON, **_SVF}),
    MethodSpec("proxy_sft", "proxy-tuning: the proxy tuned by SFT steers the base",
               "sft", "full", model="proxy", default_lrs=(3e-4, 1e-3),
               defaults={**_COMMON, "retain_kl_coef": 3.0}),
    MethodSpec("proxy_rl", "proxy-tuning: the proxy tuned by RL steers the base",
               "rl", "full", model="proxy", default_lrs=(1e-4, 3e-4),
               defaults={**_COMMON, **_RL}),
    MethodSpec("lora_rl", "LoRA (PEFT, all linear layers), RL", "rl", "lora",
               default_lrs=(1e-4, 3e-4), defaults={**_COMMON, **_RL}),
    MethodSpec("lora_sft", "LoRA (PEFT, all linear layers), SFT", "sft", "lora",
               default_lrs=(1e-3, 3e-3), defaults=dict(_COMMON)),
    MethodSpec("full_sft", "every parameter, SFT (float32)", "sft", "full",
               default_lrs=(1e-4, 1e-3),
               defaults={**_COMMON, "retain_kl_coef": 1.0}),
    MethodSpec("full_rl", "every parameter, RL, float32 master weights", "rl", "full",
               default_lrs=(1e-5, 3e-5), defaults={**_COMMON, **_RL}),
    MethodSpec("full_rl_bf16", "every parameter, RL, bfloat16 storage", "rl", "full",
               bf16_storage=True, default_lrs=(1e-5, 1e-4), defaults={**_COMMON, **_RL}),
    MethodSpec("subnet_rl", "RL on only the parameters the same seed's full RL changed",
               "rl", "mask", default_lrs=(1e-5, 3e-5), defaults={**_COMMON, **_RL}),
)}

# Which methods' cells a subnet_rl cell may take its mask from (suite key ``subnet_from``).
SUBNET_SOURCES = ("full_rl", "full_rl_bf16")


PEFT_PREFIX = "peft:"


class PeftMethod(BaseModel):
    """A PEFT method of a suite: a PEFT config trained with one objective.

    In a suite's ``methods:``, ``peft:<file.yaml>`` is ``{peft: <file.yaml>}`` (a YAML file
    holding the PEFT config mapping); the mapping form takes the keys below. Without
    ``name``, a file's method is ``peft_<file stem>`` and an inline one
    ``peft_<peft_type>_<objective>`` (lower case)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="the method's name in tables and cell ids")
    peft: dict[str, Any] | str = Field(
        description="the PEFT config: a mapping (peft_type and that config class's fields, "
        "as peft.get_peft_config reads it) or a YAML file holding one"
    )
    objective: Literal["sft", "rl"] = Field("sft", description="what trains it (default sft)")
    description: str = ""
    lrs: list[float] | None = Field(
        None, description="its default learning rates (default: LoRA's for the objective; a "
        "suite's lrs: entry wins)"
    )
    source: str | None = Field(None, description="the file the PEFT config was read from")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and (v in METHODS or not v or any(c in v for c in " /:")):
            raise ValueError(
                f"PEFT method name {v!r} is a built-in method's or holds ' ', '/' or ':'; "
                "choose another"
            )
        return v

    def resolved(self, root: str | os.PathLike | None = None) -> PeftMethod:
        """This method with its file read, its PEFT config checked by PEFT's own config class
        and its name filled in (ConfigError naming the file or key at fault)."""
        import yaml

        from ..training.peft_methods import peft_config

        mapping, source = self.peft, self.source
        where = f"PEFT method {self.name!r}" if self.name else "PEFT method"
        if isinstance(mapping, str):
            path = Path(mapping).expanduser()
            if not path.is_absolute() and root is not None:
                path = Path(root) / path
            if not path.is_file():
                raise ConfigError(
                    f"{where}: PEFT config file {str(path)!r} does not exist (peft:<file.yaml> "
                    "names a YAML file holding a PEFT config mapping, read from the suite "
                    "file's directory)."
                )
            try:
                mapping = yaml.safe_load(path.read_text())
            except yaml.YAMLError as e:
                raise ConfigError(f"{where}: {str(path)!r} is not valid YAML: {e}") from None
            source, where = str(path), f"{where} (file {str(path)!r})"
        cfg = peft_config(mapping, where=where)  # type: ignore[arg-type]
        mapping = {**mapping, "peft_type": str(cfg.peft_type.value),  # type: ignore[dict-item]
                   "task_type": str(getattr(cfg.task_type, "value", cfg.task_type))}
        name = self.name
        if name is None:
            name = (f"peft_{Path(source).stem}" if source
                    else f"peft_{mapping['peft_type'].lower()}_{self.objective}")
        if self.lrs is not None and (not self.lrs or any(not (r > 0) for r in self.lrs)):
            raise ConfigError(f"{where}: lrs must be one or more learning rates > 0, got {self.lrs}.")
        return self.model_copy(update={"name": name, "peft": mapping, "source": source})

    def spec(self) -> MethodSpec:
        """The MethodSpec of this (resolved) method."""
        if self.name is None or not isinstance(self.peft, dict):
            raise ConfigError("a PEFT method must be resolved (PeftMethod.resolved) first.")
        defaults = {**_COMMON, **(_RL if self.objective == "rl" else {})}
        lora = METHODS[f"lora_{self.objective}"]
        return MethodSpec(
            self.name,
            self.description or f"PEFT {self.peft['peft_type']} ({self.source or 'inline'}), "
            f"{self.objective.upper()}",
            self.objective, "peft", default_lrs=tuple(self.lrs or lora.default_lrs),
            defaults=defaults, peft=dict(self.peft),
        )


def parse_method_entry(entry: Any, root: str | os.PathLike | None = None) -> PeftMethod | None:
    """A suite ``methods:`` entry read as a PEFT method (resolved), or None for a built-in
    method's name; anything else is a ConfigError saying what an entry may be."""
    from ..training.config import validate_mapping

    if isinstance(entry, str) and entry.startswith(PEFT_PREFIX):
        entry = {"peft": entry.removeprefix(PEFT_PREFIX).strip()}
        if not entry["peft"]:
            raise ConfigError("methods entry 'peft:' names no file; write peft:<file.yaml>.")
    if isinstance(entry, dict):
        if "peft" not in entry:
            raise ConfigError(
                f"methods entry {entry!r}: a mapping defines a PEFT method and needs key "
                "'peft' (a PEFT config mapping with peft_type, or a YAML file)."
            )
        return validate_mapping(PeftMethod, entry, f"methods entry {entry!r}").resolved(root)
    if isinstance(entry, str):
        get_method(entry)
        return None
    raise ConfigError(
        f"methods entry {entry!r}: give a method name, peft:<file.yaml> or a mapping "
        "{peft: {peft_type: ..., ...}}."
    )


def get_method(name: str, peft_methods: dict[str, PeftMethod] | None = None) -> MethodSpec:
    """The method named ``name`` (a built-in one, or one of a suite's ``peft_methods``); an
    unknown name is a ConfigError listing the known ones."""
    if name in METHODS:
        return METHODS[name]
    if peft_methods and name in peft_methods:
        return peft_methods[name].spec()
    extra = f", the suite's PEFT methods {', '.join(peft_methods)}" if peft_methods else ""
    raise ConfigError(
        f"unknown method {name!r}; known methods: {', '.join(METHODS)}{extra}, or a PEFT "
        "method: peft:<file.yaml> or {peft: {peft_type: ..., ...}}."
    )


def train_config(
    method: MethodSpec, *, task: str, lr: float, seed: int, steps: int, batch_size: int,
    env: dict[str, Any], retain_text: str | None, lora_rank: int,
    overrides: dict[str, Any] | None = None, mask: str | None = None, device: str | None = None,
) -> TrainConfig:
    """The TrainConfig of one cell: the method's recipe defaults, the suite's overrides for it,
    then what the cell fixes (objective, parameterization, lr, seed, steps, batch) and what
    the environment fixes (``env``: the ``model`` and ``world`` fields), and the cell's
    ``device``. A retention KL reads the environment's ``retain_text`` unless the suite names
    its own."""
    if not method.trains:
        raise ConfigError(f"method {method.name!r} trains nothing; it has no train config.")
    data: dict[str, Any] = dict(method.defaults)
    data.update(overrides or {})
    if data.get("retain_kl_coef", 0) > 0 and not data.get("retain_text"):
        if not retain_text:
            raise ConfigError(
                f"method {method.name!r} keeps a retention KL (retain_kl_coef "
                f"{data['retain_kl_coef']:g}) but the environment has no retention text; add "
                f"retain_text to the suite's model block, or set train.{method.name}."
                "retain_kl_coef: 0"
            )
        data["retain_text"] = retain_text
    if method.parameterization == "lora":
        data["lora"] = {**data.get("lora", {}), "r": lora_rank, "alpha": 2.0 * lora_rank}
    if method.parameterization == "peft":
        data["peft"] = dict(method.peft or {})
    data.update(
        objective=method.objective, parameterization=method.parameterization, lr=lr, seed=seed,
        steps=steps, batch_size=batch_size, bf16_storage=method.bf16_storage, task=task,
        world=env.get("world"), model=env["model"], checkpoint_every=0, eval_every=0,
        device=device,
    )
    if method.parameterization == "mask":
        data["mask"] = mask or "mask.safetensors"
    return TrainConfig.from_dict(data, source=f"method {method.name!r} train config")


def check_overrides(method: str, overrides: dict[str, Any],
                    peft_methods: dict[str, PeftMethod] | None = None) -> None:
    """Refuse a suite override of a field the harness sets itself, or an invalid one."""
    owned = sorted(set(overrides) & OWNED_FIELDS)
    if owned:
        raise ConfigError(
            f"suite key 'train.{method}.{owned[0]}': the harness sets {', '.join(owned)} for "
            f"every cell (use the suite's lrs/steps/batch_size/seeds/device keys, or a PEFT "
            "method's own config); remove it."
        )
    spec = get_method(method, peft_methods)
    if spec.trains:
        data = {**spec.defaults, **overrides, "objective": spec.objective,
                "parameterization": spec.parameterization}
        if spec.peft:
            data["peft"] = spec.peft
        if data.get("retain_kl_coef", 0) > 0 and not data.get("retain_text"):
            data["retain_text"] = "text:ENVIRONMENT"  # the environment's, filled in per cell
        if spec.parameterization == "mask":
            data["mask"] = 0.5
        TrainConfig.from_dict(data, source=f"suite key 'train.{method}'")
    elif overrides:
        raise ConfigError(f"suite key 'train.{method}': method {method!r} trains nothing.")
