"""A base steered by proxy experts as one module, so likelihood metrics see proxy-tuning's
distribution: log p_base + Σₖ αₖ (log p_tunedₖ − log p_untunedₖ), renormalised.

Proxy steering (``routekit.mixture``) acts on ``generate`` only; answer log-likelihood,
forgetting and KL read a model's forward logits. :class:`SteeredLM`'s forward returns the
steered log-probabilities as its logits (``log_softmax`` of them is themselves renormalised),
which is exactly the distribution proxy-tuned decoding samples from. ``alpha`` may be one
number, one weight per expert (K,), or one row per batch row (B, K), so a batch whose rows
were routed to different experts is scored in one forward of each model. Each model reads
the batch on its own device, so a proxy may live apart from the base.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..proxy.expert import ProxyExpert


class SteeredLM(nn.Module):
    """``base`` steered by ``expert`` (one, or a sequence) at weight ``alpha``, for forward
    passes (no generate)."""

    def __init__(
        self,
        base: nn.Module,
        expert: ProxyExpert | Sequence[ProxyExpert],
        alpha: float | Sequence[float] | torch.Tensor,
    ) -> None:
        super().__init__()
        experts = [expert] if isinstance(expert, ProxyExpert) else list(expert)
        self.base = base
        self.experts = experts
        # Registered so that .eval() / .train() reach the proxies too.
        self.proxies = nn.ModuleList([m for e in experts for m in (e.tuned, e.untuned)])
        a = torch.as_tensor(alpha, dtype=torch.float32)
        a = a.expand(len(experts)) if a.ndim == 0 else a
        if a.shape[-1] != len(experts) or a.ndim > 2:
            raise ConfigError(
                f"alpha of shape {tuple(a.shape)} does not fit {len(experts)} proxy expert(s); "
                "give one number, one per expert (K,) or one row per batch row (B, K)."
            )
        self.alpha = a

    def forward(self, input_ids: torch.Tensor, **kw: Any) -> SimpleNamespace:
        kw.pop("output_hidden_states", None)
        cache: dict[int, torch.Tensor] = {}

        def logp(m: nn.Module) -> torch.Tensor:
            if id(m) not in cache:  # an untuned model shared by several experts runs once
                # each model reads the batch on its own device; every result comes back to
                # the device of the ids (the metrics put them on the base's)
                dev = next(m.parameters()).device
                moved = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
                logits = m(input_ids=input_ids.to(dev), **moved).logits.float()
                cache[id(m)] = torch.log_softmax(logits, -1).to(input_ids.device)
            return cache[id(m)]

        out = logp(self.base)
        width = out.shape[-1]
        rows = self.alpha.expand(input_ids.shape[0], -1) if self.alpha.ndim == 1 else self.alpha
        if rows.shape[0] != input_ids.shape[0]:
            raise ConfigError(
                f"alpha has {rows.shape[0]} rows but the batch has {input_ids.shape[0]}; give "
                "one row per batch row."
            )
        rows = rows.to(out.device)
        for k, e in enumerate(self.experts):
            if not bool(rows[:, k].ne(0).any()):
                continue
            offset = logp(e.tuned)[..., :width] - logp(e.untuned)[..., :width]
            out = out.clone() if out is cache.get(id(self.base)) else out
            out[..., : offset.shape[-1]] += rows[:, k, None, None] * offset
        return SimpleNamespace(logits=torch.log_softmax(out, dim=-1))
