"""LogitFusionRouter: proxy experts weighted at every decoding step, per row, with no labels.

Unlike the other routers it does not fix one mixture per prompt: its ``route`` gives every
prompt the uniform mixture over its proxy experts (weight 1.0 each), which marks them all as
candidates, and its :attr:`fusion_rule` (a :class:`~routekit.proxy.fusion.FusionRule`) chooses
the weights at every step from the experts' own next-token distributions: a softmax over how
far each expert's tuned model moved from its untuned twin on the row's prefix, optionally
capped by a KL budget (the rule, and why, is documented in ``routekit.proxy.fusion``).
``AdaptiveModel`` hands the rule to the proxy processor of its generate call
(``routekit.mixture(..., fusion=router.fusion_rule)``); the processor computes the weights from
the KV-cached proxy runs it makes anyway, so fusion costs no extra forward.

With one expert (any temperature, no budget) the weight is 1 at every step: the router then
equals ``proxy_generate`` at alpha = 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ConfigError, ExpertFileError
from ..proxy.fusion import FusionRule
from .base import ExpertLike, Router, RouterFile, register_router
from .mixture import Mixture


@register_router
class LogitFusionRouter(Router):
    """``LogitFusionRouter(experts, temperature=1.0, budget=None)`` over proxy experts.

    ``temperature`` (> 0, nats): how sharply each step's weights follow the experts' shifts
    (small: one expert per token). ``budget``: None, a KL cap in nats on how far one step may
    move the base's distribution, or ``"matched"`` (at most as far as the experts moved their
    own small models). SVF experts are refused: their weights live in the base's layers and
    cannot change per token.
    """

    kind = "logit-fusion"

    def __init__(
        self,
        experts: Sequence[ExpertLike],
        *,
        temperature: float = 1.0,
        budget: float | str | None = None,
        base_fingerprint: str | None = None,
    ) -> None:
        svf = [e.name for e in experts if getattr(e, "kind", None) == "svf"]
        if svf:
            raise ConfigError(
                f"LogitFusionRouter weights proxy experts per decoding step, but {svf} are SVF "
                "experts (their weights live in the base's layers and are fixed for a whole "
                "call); route them with another router (classifier, prompt, fewshot, fixed)."
            )
        super().__init__(experts, base_fingerprint)
        self.fusion_rule = FusionRule(temperature=temperature, budget=budget)

    def __repr__(self) -> str:
        rule = self.fusion_rule
        return (f"LogitFusionRouter(experts={self.expert_names}, temperature={rule.temperature}, "
                f"budget={rule.budget})")

    def route(self, prompts: Sequence[str]) -> list[Mixture]:
        uniform = Mixture(weights={name: 1.0 for name in self.expert_names})
        return [uniform for _ in prompts]

    def _config(self) -> dict[str, Any]:
        return {"temperature": self.fusion_rule.temperature, "budget": self.fusion_rule.budget}

    @classmethod
    def _from_saved(cls, file: RouterFile, tensors: dict[str, torch.Tensor], **context: Any) -> Router:
        config = dict(file.config)
        unknown = sorted(set(config) - {"temperature", "budget"})
        if unknown:
            raise ExpertFileError(
                f"a logit-fusion router's config has unknown setting(s) {unknown}; it has "
                "temperature and budget. Save the router again."
            )
        return cls(file.expert_names, base_fingerprint=file.base_fingerprint, **config)
