"""A base steered by a proxy expert as one module, so likelihood metrics see proxy-tuning's
distribution: log p_base + α (log p_tuned − log p_untuned), renormalised.

Proxy steering (``routekit.mixture``) acts on ``generate`` only; answer log-likelihood,
forgetting and KL read a model's forward logits. :class:`SteeredLM`'s forward returns the
steered log-probabilities as its logits (``log_softmax`` of them is themselves renormalised),
which is exactly the distribution proxy-tuned decoding samples from.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ..proxy.expert import ProxyExpert


class SteeredLM(nn.Module):
    """``base`` steered by ``expert`` at weight ``alpha``, for forward passes (no generate)."""

    def __init__(self, base: nn.Module, expert: ProxyExpert, alpha: float) -> None:
        super().__init__()
        self.base, self.tuned, self.untuned = base, expert.tuned, expert.untuned
        self.alpha = float(alpha)

    def forward(self, input_ids: torch.Tensor, **kw: Any) -> SimpleNamespace:
        kw.pop("output_hidden_states", None)

        def logp(m: nn.Module) -> torch.Tensor:
            return torch.log_softmax(m(input_ids=input_ids, **kw).logits.float(), dim=-1)

        out = logp(self.base)
        width = out.shape[-1]
        if self.alpha:
            out = out.clone()
            offset = logp(self.tuned)[..., :width] - logp(self.untuned)[..., :width]
            out[..., : offset.shape[-1]] += self.alpha * offset
        return SimpleNamespace(logits=torch.log_softmax(out, dim=-1))
