"""Mixture: how much of each named expert one prompt uses, validated, and the alpha table.

A router returns one :class:`Mixture` per prompt. A weight is one number per expert, or (SVF
experts only) one number per SVF layer. A mixture with no weight, or only zero weights,
means the base model alone. :func:`alpha_table` turns a batch of mixtures into the alpha
tensor that ``routekit.experts.mixture`` takes, (B, K) or (B, K, L), for an ordered expert list.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, model_validator

from ..errors import MixtureError

Weight = float | tuple[float, ...]


def check_weight(name: str, value: Any, allow_negative: bool = False) -> float:
    """``value`` as a float, refusing non-numbers, NaN, inf and (unless allowed) negatives."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise MixtureError(
            f"mixture weight of expert {name!r} is {value!r} ({type(value).__name__}); "
            "give a finite number (or, for SVF experts, a list of one number per layer)."
        )
    x = float(value)
    if not math.isfinite(x):
        raise MixtureError(
            f"mixture weight of expert {name!r} is {x!r}; weights must be finite numbers "
            "(a NaN or infinite weight usually comes from a diverged router or search)."
        )
    if x < 0 and not allow_negative:
        raise MixtureError(
            f"mixture weight of expert {name!r} is negative ({x!r}); this mixture does not "
            "allow negative weights (only routers made with allow_negative=True produce them)."
        )
    return x


class Mixture(BaseModel):
    """Weights over named experts (either kind) for one prompt.

    ``weights`` maps an expert name to a number, or to a tuple of one number per SVF layer.
    Every weight must be finite, and non-negative unless ``allow_negative`` (set by routers
    that search signed weights). Names are checked against a model's experts by
    :meth:`check`, since a mixture is made before it meets a model. An empty mixture, or one
    whose weights are all zero, routes to the base alone (:attr:`is_base`).

    Data only: ``routekit.mixture`` (lower case) is the context that applies experts, and
    ``routekit.mix_experts`` makes one SVF expert from fixed weights.
    """

    model_config = ConfigDict(frozen=True)

    weights: dict[str, Weight] = {}
    allow_negative: bool = False

    @model_validator(mode="before")
    @classmethod
    def _validate(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            raise MixtureError(f"a Mixture is built from a mapping, got {type(data).__name__}.")
        extra = set(data) - {"weights", "allow_negative"}
        if extra:
            raise MixtureError(
                f"unknown Mixture field(s) {sorted(extra)}; a Mixture has 'weights' and "
                "'allow_negative'."
            )
        allow = data.get("allow_negative", False)
        if not isinstance(allow, bool):
            raise MixtureError(f"allow_negative must be true or false, got {allow!r}.")
        weights = data.get("weights", {})
        if weights is None:
            weights = {}
        if not isinstance(weights, Mapping):
            raise MixtureError(
                f"mixture weights must map expert names to numbers, got {weights!r}."
            )
        clean: dict[str, Weight] = {}
        n_layers: int | None = None
        for name, w in weights.items():
            if not isinstance(name, str) or not name:
                raise MixtureError(f"mixture expert names must be non-empty strings, got {name!r}.")
            if isinstance(w, (list, tuple)) or (isinstance(w, torch.Tensor) and w.dim() == 1):
                vals = tuple(check_weight(name, float(v) if isinstance(v, torch.Tensor) else v, allow)
                             for v in w)
                if not vals:
                    raise MixtureError(f"per-layer weights of expert {name!r} are empty.")
                if n_layers is not None and len(vals) != n_layers:
                    raise MixtureError(
                        f"per-layer weights of expert {name!r} have {len(vals)} values, but "
                        f"another expert in this mixture has {n_layers}; give one per SVF layer."
                    )
                n_layers = len(vals)
                clean[name] = vals
            else:
                if isinstance(w, torch.Tensor) and w.dim() == 0:
                    w = w.item()
                clean[name] = check_weight(name, w, allow)
        return {"weights": clean, "allow_negative": allow}

    @classmethod
    def base(cls) -> Mixture:
        """The empty mixture: the base model alone."""
        return cls()

    @property
    def names(self) -> list[str]:
        """The experts this mixture names (zero weights included), in insertion order."""
        return list(self.weights)

    @property
    def is_base(self) -> bool:
        """True when no expert carries a non-zero weight."""
        return all(
            (all(v == 0.0 for v in w) if isinstance(w, tuple) else w == 0.0)
            for w in self.weights.values()
        )

    @property
    def n_layers(self) -> int | None:
        """Number of per-layer weights when some expert has them, else None."""
        for w in self.weights.values():
            if isinstance(w, tuple):
                return len(w)
        return None

    def check(self, expert_names: Sequence[str]) -> Mixture:
        """Refuse names outside ``expert_names`` (MixtureError naming them); returns self."""
        known = set(expert_names)
        unknown = [n for n in self.weights if n not in known]
        if unknown:
            raise MixtureError(
                f"mixture names unknown expert(s) {unknown}; the model's experts are "
                f"{list(expert_names)}. Route with a router made for these experts."
            )
        return self

    def row(self, expert_names: Sequence[str], n_layers: int | None = None) -> torch.Tensor:
        """This mixture's alpha over ``expert_names`` (in that order): (K,), or (K, L) when
        ``n_layers`` is given (scalar weights repeated over layers). Unnamed experts get 0."""
        self.check(expert_names)
        own = self.n_layers
        if own is not None and n_layers is None:
            raise MixtureError(
                f"mixture has per-layer weights ({own} layers); ask for a (K, L) row with "
                "n_layers."
            )
        if own is not None and own != n_layers:
            raise MixtureError(
                f"mixture has per-layer weights for {own} layers, but the table has {n_layers}."
            )
        shape = (len(expert_names),) if n_layers is None else (len(expert_names), n_layers)
        out = torch.zeros(shape, dtype=torch.float32)
        for k, name in enumerate(expert_names):
            w = self.weights.get(name, 0.0)
            out[k] = torch.tensor(w, dtype=torch.float32) if isinstance(w, tuple) else w
        return out

    def __str__(self) -> str:
        if self.is_base:
            return "base"

        def fmt(w: Weight) -> str:
            return "[" + ", ".join(f"{v:.3g}" for v in w) + "]" if isinstance(w, tuple) else f"{w:.3g}"

        return " + ".join(f"{fmt(w)}·{n}" for n, w in self.weights.items() if w)


def alpha_table(mixtures: Sequence[Mixture], expert_names: Sequence[str]) -> torch.Tensor:
    """Stack one alpha row per mixture over ``expert_names``: (B, K) float32, or (B, K, L) when
    any mixture carries per-layer weights (the others' weights repeated over the L layers).

    An empty mixture is a zero row. Names are checked (MixtureError names an unknown one).
    """
    if len(set(expert_names)) != len(expert_names):
        raise MixtureError(f"expert names must be distinct, got {list(expert_names)}.")
    layered = {m.n_layers for m in mixtures} - {None}
    if len(layered) > 1:
        raise MixtureError(
            f"mixtures in one batch have per-layer weights for different layer counts "
            f"{sorted(layered)}; every row must use the same SVF layers."
        )
    n_layers = layered.pop() if layered else None
    if not mixtures:
        shape = (0, len(expert_names)) if n_layers is None else (0, len(expert_names), n_layers)
        return torch.zeros(shape, dtype=torch.float32)
    return torch.stack([m.row(expert_names, n_layers) for m in mixtures])
