"""FixedRouter: the same user-given mixture for every prompt."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .base import ExpertLike, Router, RouterFile, register_router
from .mixture import Mixture, Weight


@register_router
class FixedRouter(Router):
    """Routes every prompt to ``weights`` (expert name -> weight, or per-layer weights).

    ``FixedRouter(experts, {"rev": 1.0})`` runs the ``rev`` expert alone; ``{}`` runs the base.
    """

    kind = "fixed"

    def __init__(
        self,
        experts: Sequence[ExpertLike],
        weights: Mapping[str, Weight] | Mixture,
        *,
        allow_negative: bool = False,
        base_fingerprint: str | None = None,
    ) -> None:
        super().__init__(experts, base_fingerprint)
        self.allow_negative = allow_negative
        if isinstance(weights, Mixture):
            weights = weights.weights
        self.mixture = Mixture(weights=dict(weights), allow_negative=allow_negative).check(
            self.expert_names
        )

    def route(self, prompts: Sequence[str]) -> list[Mixture]:
        return [self.mixture for _ in prompts]

    def _config(self) -> dict[str, Any]:
        return {"weights": {k: list(v) if isinstance(v, tuple) else v
                            for k, v in self.mixture.weights.items()},
                "allow_negative": self.allow_negative}

    @classmethod
    def _from_saved(cls, file: RouterFile, tensors: dict[str, torch.Tensor], **context: Any) -> Router:
        config = dict(file.config)
        return cls(file.expert_names, config.pop("weights", {}),
                   base_fingerprint=file.base_fingerprint, **config)
