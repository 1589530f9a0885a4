"""proxy_generate (``rk.proxy_generate``): generate from a base steered by proxy experts,
``routekit.mixture`` around :func:`routekit.eval.generate`, with the proxies' checks first.

It lives with generation, not in ``routekit.proxy``: it calls ``generate``, which sits above
the expert kinds (``routekit.proxy.proxy_generate`` still works, deprecated)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..errors import ConfigError
from ..experts import AlphaLike, normalize_alpha
from ..experts.mixture import mixture
from ..proxy.concurrent import ConcurrentLike
from ..proxy.expert import ProxyExpert
from ..proxy.steering import check_context, proxy_concurrency
from ..tasks.chat import render_prompts
from .generate import generate


def proxy_generate(
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    experts: ProxyExpert | Sequence[ProxyExpert],
    prompts: Sequence[str],
    alpha: AlphaLike = 1.0,
    *,
    max_new_tokens: int = 16,
    do_sample: bool = False,
    batch_size: int = 64,
    chat: bool = False,
    concurrent: ConcurrentLike = None,
    **kw: Any,
) -> list[str]:
    """Generate from ``base`` steered by proxy ``experts``; returns each prompt's new text.

    ``alpha``: one number, one per expert (K,), or a (len(prompts), K) table (one row per
    prompt). Prompts are left-padded in batches of ``batch_size``; other keyword arguments
    (temperature, num_return_sequences, progress ...) go to :func:`routekit.generate`. A
    prompt plus ``max_new_tokens`` longer than a proxy's context is refused before any work.
    ``chat``: each prompt is rendered through the chat template once, before generation, so
    the base and every proxy model read the same rendered ids.
    ``concurrent``: where each step's proxy forward runs beside the base's (None: routekit
    chooses, a CUDA stream on GPU or a forked worker on a CPU with >= 2 cores; False:
    sequential; True, "thread" or "process"); the text is the same either way.
    """
    prompts = render_prompts(tokenizer, list(prompts), chat)
    experts = [experts] if isinstance(experts, ProxyExpert) else list(experts)
    for e in experts:
        if not isinstance(e, ProxyExpert):
            raise ConfigError(f"proxy_generate takes ProxyExperts, got {type(e).__name__}.")
    normalize_alpha(alpha, len(experts), rows=len(prompts))
    if prompts:
        longest = max(len(ids) for ids in tokenizer(list(prompts))["input_ids"])
        check_context(experts, longest, max_new_tokens)
    models = {id(m): m for e in experts for m in (e.tuned, e.untuned)}
    modes = {k: m.training for k, m in models.items()}
    for m in models.values():
        if m.training:
            m.eval()
    try:
        with proxy_concurrency(concurrent), mixture(base, experts, alpha, tokenizer=tokenizer):
            return generate(base, tokenizer, prompts, max_new_tokens=max_new_tokens,
                            batch_size=batch_size, do_sample=do_sample, **kw)
    finally:
        for k, m in models.items():
            if modes[k]:
                m.train(True)
