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

The defaults come from the world recipes (``recipes/configs/world/<task>_<method>.yaml``):
RL samples 8 completions of at most 12 tokens per prompt at temperature 1, gradients are
clipped at norm 1, no weight decay; full SFT keeps a Learning-without-Forgetting KL of 1.0 to
the base on the environment's retention text (the world's pretraining corpus, or a local
model block's ``retain_text``) and proxy SFT one of 3.0, as those recipes do. A suite's
``train`` section overrides any of these per method. The ``model`` and ``world`` fields of a
cell's TrainConfig are the environment's (:mod:`routekit.compare.env`), not the method's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ConfigError
from ..training.config import TrainConfig

# TrainConfig fields a method or a cell decides; a suite may not override them.
OWNED_FIELDS = frozenset({
    "objective", "parameterization", "lr", "seed", "steps", "batch_size", "bf16_storage",
    "mask", "model", "task", "world", "split", "checkpoint_every", "eval_every",
})

_RL = {"group_size": 8, "max_new_tokens": 12, "temperature": 1.0, "kl_coef": 0.0}
_COMMON = {"micro_batch_size": 4, "grad_clip": 1.0, "weight_decay": 0.0}


@dataclass(frozen=True)
class MethodSpec:
    """One method of the comparison: how its cells train and what they produce."""

    name: str
    description: str
    objective: Literal["sft", "rl"] | None  # None: nothing trains (the base)
    parameterization: Literal["svf", "lora", "full", "mask"] | None
    model: Literal["base", "proxy"] = "base"
    bf16_storage: bool = False
    default_lrs: tuple[float, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields (recipes')

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


def get_method(name: str) -> MethodSpec:
    """The method named ``name``; an unknown name is a ConfigError listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(
            f"unknown method {name!r}; known methods: {', '.join(METHODS)}."
        ) from None


def train_config(
    method: MethodSpec, *, task: str, lr: float, seed: int, steps: int, batch_size: int,
    env: dict[str, Any], retain_text: str | None, lora_rank: int,
    overrides: dict[str, Any] | None = None, mask: str | None = None,
) -> TrainConfig:
    """The TrainConfig of one cell: the method's recipe defaults, the suite's overrides for it,
    then what the cell fixes (objective, parameterization, lr, seed, steps, batch) and what
    the environment fixes (``env``: the ``model`` and ``world`` fields). A retention KL reads
    the environment's ``retain_text`` unless the suite names its own."""
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
    data.update(
        objective=method.objective, parameterization=method.parameterization, lr=lr, seed=seed,
        steps=steps, batch_size=batch_size, bf16_storage=method.bf16_storage, task=task,
        world=env.get("world"), model=env["model"], checkpoint_every=0, eval_every=0,
    )
    if method.parameterization == "mask":
        data["mask"] = mask or "mask.safetensors"
    return TrainConfig.from_dict(data, source=f"method {method.name!r} train config")


def check_overrides(method: str, overrides: dict[str, Any]) -> None:
    """Refuse a suite override of a field the harness sets itself, or an invalid one."""
    owned = sorted(set(overrides) & OWNED_FIELDS)
    if owned:
        raise ConfigError(
            f"suite key 'train.{method}.{owned[0]}': the harness sets {', '.join(owned)} for "
            f"every cell (use the suite's lrs/steps/batch_size/seeds keys); remove it."
        )
    spec = get_method(method)
    if spec.trains:
        data = {**spec.defaults, **overrides, "objective": spec.objective,
                "parameterization": spec.parameterization}
        if data.get("retain_kl_coef", 0) > 0 and not data.get("retain_text"):
            data["retain_text"] = "text:ENVIRONMENT"  # the environment's, filled in per cell
        if spec.parameterization == "mask":
            data["mask"] = 0.5
        TrainConfig.from_dict(data, source=f"suite key 'train.{method}'")
    elif overrides:
        raise ConfigError(f"suite key 'train.{method}': method {method!r} trains nothing.")
