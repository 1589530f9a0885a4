"""Any PEFT method as a parameterization: a PEFT config written as a mapping, built by PEFT's
own config classes (``peft.get_peft_config``), checked before a model is touched.

``parameterization: peft`` with ``peft: {peft_type: OSF, effective_rank: 8, target_modules:
all-linear}`` trains what PEFT's ``get_peft_model`` marks trainable, and the trained model
merges with PEFT's ``merge_and_unload()``. Only methods that change weights qualify:
prompt-learning methods (prompt tuning, prefix tuning, ...) add virtual tokens and have no
merge, so they are refused, as is a method whose tuner has no ``merge_and_unload``.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError


def known_peft_types() -> list[str]:
    """The weight-space PEFT methods this PEFT version ships (``peft_type`` values)."""
    from peft import PromptLearningConfig
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    return sorted(
        str(getattr(k, "value", k)) for k, cls in PEFT_TYPE_TO_CONFIG_MAPPING.items()
        if not issubclass(cls, PromptLearningConfig)
        and hasattr(PEFT_TYPE_TO_TUNER_MAPPING.get(k), "merge_and_unload")
    )


def peft_config(mapping: dict[str, Any], where: str = "peft") -> Any:
    """The ``peft.PeftConfig`` a mapping describes (``peft_type`` and that config class's
    fields; ``task_type`` defaults to CAUSAL_LM). A missing or unknown ``peft_type``, a
    prompt-learning method, an unknown field or a value PEFT refuses is a ConfigError that
    names ``where`` and the offending key or value."""
    from peft import PromptLearningConfig, get_peft_config
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: expected a mapping with peft_type, got {type(mapping).__name__}.")
    data = dict(mapping)
    kind = data.get("peft_type")
    if not isinstance(kind, str) or not kind:
        raise ConfigError(
            f"{where}: no peft_type; name the PEFT method, e.g. peft_type: LORA (known: "
            f"{', '.join(known_peft_types())})."
        )
    data["peft_type"] = kind = kind.upper()
    if kind not in PEFT_TYPE_TO_CONFIG_MAPPING:
        raise ConfigError(
            f"{where}: peft_type {mapping['peft_type']!r} is not a method of this PEFT version; "
            f"known: {', '.join(known_peft_types())}."
        )
    cls = PEFT_TYPE_TO_CONFIG_MAPPING[kind]
    if issubclass(cls, PromptLearningConfig) or kind not in known_peft_types():
        raise ConfigError(
            f"{where}: peft_type {kind} adds virtual tokens or cannot merge into the weights, "
            "so its update has no weight diff to measure; use a method that changes weights "
            f"({', '.join(known_peft_types())})."
        )
    data.setdefault("task_type", "CAUSAL_LM")
    fields = set(getattr(cls, "__dataclass_fields__", {}))
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(
            f"{where}: {cls.__name__} has no field {unknown[0]!r}"
            + (f" (nor {', '.join(map(repr, unknown[1:]))})" if unknown[1:] else "")
            + "; see PEFT's documentation of that class for its fields."
        )
    try:
        return get_peft_config(data)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: PEFT refuses this {cls.__name__}: {e}") from None


__all__ = ["known_peft_types", "peft_config"]
