"""FewShotRouter: one mixture for a task, searched on a handful of labelled examples.

Transformer²'s few-shot adaptation: a gradient-free search (cross-entropy method by default,
CMA-ES as the alternative, see :mod:`routekit.routing.search`) over α, one weight per expert
or, for SVF experts, one per expert per layer. A candidate's score is its accuracy on the
examples under the task's checker (greedy completions generated with the candidate mixture),
ties broken by the mean log-likelihood of the references' tokens. A whole population is
scored in one pass: every (candidate, example) pair is one batch row with its own mixture.
The router then gives every prompt the best mixture found.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..errors import ConfigError
from ..eval import generate
from ..models import pad_token_id
from ..scoring import answer_row, right_padded, token_logprobs
from ..tasks.base import Example, Task
from ..tasks.chat import render_chat_example, render_task
from ..tasks.registry import get_task
from .base import ExpertLike, expert_names, register_router
from .fixed import FixedRouter
from .search import SEARCHES, Objective, SearchResult

#: ``apply_mixture(model, experts, alpha, tokenizer=...)``: a context manager in which the
#: model computes every batch row with its own alpha row (``routekit.experts.mixture``).
ApplyMixture = Callable[..., AbstractContextManager]


def _default_apply_mixture() -> ApplyMixture:
    from ..experts.mixture import mixture  # the one mixture context for both expert kinds

    return mixture


def svf_layer_count(experts: Sequence[ExpertLike]) -> int:
    """Number of SVF layers the experts share (per-layer search is for SVF experts only)."""
    counts = set()
    for e in experts:
        z = getattr(e, "z", None)
        if getattr(e, "kind", "svf") != "svf" or not isinstance(z, dict):
            raise ConfigError(
                f"per-layer weights are for SVF experts only; expert "
                f"{getattr(e, 'name', e)!r} is not one. Search one weight per expert instead."
            )
        counts.add(len(z))
    if len(counts) != 1:
        raise ConfigError(f"the SVF experts have different layer counts {sorted(counts)}.")
    return counts.pop()


def alpha_from_vectors(x: np.ndarray, n_experts: int, n_layers: int | None = None) -> torch.Tensor:
    """Search vectors (P, D) as alpha (P, K), or (P, K, L) when ``n_layers`` is given."""
    x = np.asarray(x, dtype=np.float64)
    shape = (x.shape[0], n_experts) if n_layers is None else (x.shape[0], n_experts, n_layers)
    return torch.tensor(x, dtype=torch.float32).reshape(shape)


def steered_logprobs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    experts: Sequence[Any],
    alpha: torch.Tensor,
    ids: torch.Tensor,
    attn: torch.Tensor,
) -> torch.Tensor:
    """log p(ids[:, t] | ids[:, <t]) (B, L-1) under the row mixtures ``alpha`` (B, K[, L]).

    The forward pass carries the SVF experts (the caller's mixture context applies them);
    proxy experts act on ``generate`` only, so their offsets are added here the way their
    logits processor adds them: log_softmax(base) + Σₖ αₖ (log p_tunedₖ − log p_untunedₖ),
    renormalised.
    """
    proxies = [k for k, e in enumerate(experts) if getattr(e, "kind", None) == "proxy"]
    if not proxies:
        return token_logprobs(model, ids, attn)
    vocab = len(tokenizer)
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
    out = torch.log_softmax(logits[:, :-1, :vocab].float(), -1)
    a = alpha[..., 0] if alpha.dim() == 3 else alpha
    for k in proxies:
        w = a[:, k].to(out.device)[:, None, None]
        for m, sign in ((experts[k].tuned, 1.0), (experts[k].untuned, -1.0)):
            dev = next(m.parameters()).device
            lg = m(input_ids=ids.to(dev), attention_mask=attn.to(dev), use_cache=False).logits
            out = out + sign * w * torch.log_softmax(lg[:, :-1, :vocab].float(), -1).to(out.device)
    return torch.log_softmax(out, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def fewshot_objective(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    experts: Sequence[Any],
    examples: Sequence[Example],
    check: Callable[[str, str], bool],
    *,
    n_layers: int | None = None,
    max_new_tokens: int = 16,
    batch_size: int = 64,
    loglik: bool = True,
    apply_mixture: ApplyMixture | None = None,
) -> Objective:
    """The few-shot score of candidate α vectors: keys (accuracy, mean reference log-lik).

    A population (P, D) becomes P × len(examples) rows, candidate-major, scored in chunks of
    ``batch_size`` rows, each chunk under ``apply_mixture`` with its own alpha rows
    (``routekit.experts.mixture`` by default). ``loglik=False`` drops the tie-break key.
    """
    if not examples:
        raise ConfigError("a few-shot objective needs at least one labelled example.")
    apply = apply_mixture or _default_apply_mixture()
    prompts = [e.prompt for e in examples]
    refs = [e.reference for e in examples]
    rows = [answer_row(tokenizer, e.prompt, e.continuation) for e in examples]
    pad = pad_token_id(tokenizer)
    n = len(examples)

    def chunks(alpha: torch.Tensor):
        for i in range(0, alpha.shape[0], batch_size):
            yield i, alpha[i : i + batch_size]

    @torch.no_grad()
    def objective(x: np.ndarray) -> np.ndarray:
        alpha = alpha_from_vectors(x, len(experts), n_layers).repeat_interleave(n, dim=0)
        completions: list[str] = []
        lls: list[torch.Tensor] = []
        device = next(model.parameters()).device
        for i, a in chunks(alpha):
            idx = [(i + j) % n for j in range(a.shape[0])]
            with apply(model, experts, a, tokenizer=tokenizer):
                completions += generate(model, tokenizer, [prompts[j] for j in idx],
                                        max_new_tokens=max_new_tokens, batch_size=a.shape[0])
                if loglik:
                    ids, attn, comp = right_padded([rows[j] for j in idx], pad, device)
                    lp = steered_logprobs(model, tokenizer, experts, a, ids, attn)
                    mask = comp[:, 1:].float()
                    lls.append(((lp * mask).sum(1) / mask.sum(1).clamp(min=1.0)).cpu())
        correct = np.array([check(c, refs[k % n]) for k, c in enumerate(completions)], float)
        keys = [correct.reshape(-1, n).mean(1)]
        if loglik:
            keys.append(torch.cat(lls).double().numpy().reshape(-1, n).mean(1))
        return np.stack(keys, 1)

    return objective


@register_router
class FewShotRouter(FixedRouter):
    """Every prompt gets the mixture a few-shot search found (see :meth:`fit`)."""

    kind = "fewshot"

    def __init__(
        self,
        experts: Sequence[ExpertLike],
        weights: Any,
        *,
        allow_negative: bool = False,
        base_fingerprint: str | None = None,
        search_info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(experts, weights, allow_negative=allow_negative,
                         base_fingerprint=base_fingerprint)
        self.search_info = dict(search_info or {})

    @classmethod
    def fit(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        experts: Sequence[Any],
        task: str | Task,
        *,
        examples: Sequence[Example] | None = None,
        n_shots: int = 10,
        split: str = "train",
        optimizer: str = "cem",
        population: int = 32,
        elite_share: float = 0.2,
        iterations: int = 50,
        sigma0: float = 0.3,
        bounds: tuple[float, float] | None = None,
        per_layer: bool = False,
        allow_negative: bool = False,
        max_new_tokens: int = 16,
        batch_size: int = 64,
        seed: int = 0,
        apply_mixture: ApplyMixture | None = None,
        chat: bool | None = None,
    ) -> FewShotRouter:
        """Search α on ``n_shots`` seeded examples of ``task``'s ``split`` (or ``examples``).

        ``optimizer``: ``"cem"`` (population, elite_share, iterations: 32, 0.2, 50 as in
        Transformer²) or ``"cmaes"``; both spend 1 + population × iterations evaluations,
        start from the uniform mixture (1/K each) and keep the best candidate seen.
        ``bounds`` default to (0, 1.5), or (-1.5, 1.5) with ``allow_negative`` (LoraHub's
        range). ``per_layer``: one weight per expert per SVF layer. ``chat`` (None: the task's
        own setting): the examples are scored through the chat template, as evaluation does.
        """
        if optimizer not in SEARCHES:
            raise ConfigError(f"unknown optimizer {optimizer!r}; choose one of {sorted(SEARCHES)}.")
        task = get_task(task, chat=chat)
        use_chat = task.chat or task.rendered
        task = render_task(task, tokenizer)
        source = split if examples is None else "given"
        if examples is not None and use_chat:
            examples = [e if "raw_prompt" in e.meta else render_chat_example(tokenizer, e)
                        for e in examples]
        if examples is None:
            pool = task.examples(split)
            if n_shots < 1:
                raise ConfigError(f"n_shots must be >= 1, got {n_shots}.")
            examples = random.Random(seed).sample(pool, min(n_shots, len(pool)))
        names = expert_names(experts)
        n_layers = svf_layer_count(experts) if per_layer else None
        bounds = bounds or ((-1.5, 1.5) if allow_negative else (0.0, 1.5))
        if bounds[0] < 0 and not allow_negative:
            raise ConfigError(f"bounds {bounds} allow negative weights; pass allow_negative=True.")
        k = len(experts)
        x0 = np.full(k * (n_layers or 1), 1.0 / k)
        objective = fewshot_objective(
            model, tokenizer, experts, examples, task.check, n_layers=n_layers,
            max_new_tokens=max_new_tokens, batch_size=batch_size, apply_mixture=apply_mixture,
        )
        kwargs: dict[str, Any] = dict(population=population, iterations=iterations,
                                      sigma0=sigma0, bounds=bounds, seed=seed)
        if optimizer == "cem":
            kwargs["elite_share"] = elite_share
        result: SearchResult = SEARCHES[optimizer](objective, x0, **kwargs)
        alpha = alpha_from_vectors(result.x[None], k, n_layers)[0]
        weights = {name: (tuple(alpha[i].tolist()) if n_layers else float(alpha[i]))
                   for i, name in enumerate(names)}
        info = {"task": task.name, "split": source, "chat": use_chat,
                "n_shots": len(examples), "optimizer": optimizer, **kwargs,
                "bounds": list(bounds), "per_layer": per_layer, "keys": list(result.keys),
                "start_keys": list(result.start_keys), "evaluations": result.evaluations,
                "history": [list(h) for h in result.history]}
        return cls(experts, weights, allow_negative=allow_negative, search_info=info)

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "search_info": self.search_info}
