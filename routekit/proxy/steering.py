"""Steering a base's ``generate`` by proxy experts for the running call only.

``steering(model, experts, alpha, tokenizer)`` puts the proxy experts and their alpha (one
row per prompt, or one for all) in a ``ContextVar`` and makes sure ``model.generate`` is
wrapped: the wrapper, installed once per model and stateless, reads the variable and, when a
steering is active in the calling thread or task, puts a fresh
:class:`~routekit.proxy.processor.ProxyLogitsProcessor` first in that call's processors. So
``model.generate(...)`` and ``routekit.generate(...)`` both steer, two threads steer one
model with different experts at once, and a call outside any steering is untouched. Each
call's proxies run beside the base's forward where that pays (:mod:`routekit.proxy.concurrent`;
:func:`proxy_concurrency` forces a mode). A
steering may carry a ``fusion`` rule (``routekit.proxy.fusion``), which the processor then
uses to choose the experts' weights at every step. Inside :func:`steering_disabled` (part of
``routekit.experts.disable_experts``) every call of this context runs unsteered.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase

from ..errors import ConfigError
from .concurrent import ConcurrentLike, check_concurrent
from .expert import ProxyExpert, logits_width
from .processor import FusionFn, ProxyLogitsProcessor


@dataclass(frozen=True)
class _Steering:
    experts: tuple[ProxyExpert, ...]
    alpha: torch.Tensor  # (K,) or (rows, K)
    tokenizer: PreTrainedTokenizerBase
    fusion: FusionFn | None = None  # a per-step weighting rule (routekit.proxy.fusion)


_ACTIVE: ContextVar[dict[int, _Steering] | None] = ContextVar("routekit_proxy_steering", default=None)
_OFF: ContextVar[bool] = ContextVar("routekit_proxy_steering_off", default=False)
_CONCURRENT: ContextVar[ConcurrentLike] = ContextVar("routekit_proxy_concurrent", default=None)
_HOOK_LOCK = threading.Lock()


@contextlib.contextmanager
def proxy_concurrency(concurrent: ConcurrentLike) -> Iterator[None]:
    """Inside the block, this context's steered ``generate`` calls run their proxies with
    ``concurrent`` (None: routekit chooses; False: sequential; True, "thread", "process";
    see :mod:`routekit.proxy.concurrent`)."""
    check_concurrent(concurrent)  # refuse a bad value before any work
    token = _CONCURRENT.set(concurrent)
    try:
        yield
    finally:
        _CONCURRENT.reset(token)


def check_context(experts: Sequence[ProxyExpert], prompt_tokens: int, max_new_tokens: int) -> None:
    """Refuse, before any work, a prompt that with ``max_new_tokens`` outgrows a proxy's context."""
    limits = [e.max_positions for e in experts if e.max_positions]
    # The last generated token is never fed to a proxy, hence the -1.
    if limits and prompt_tokens + max_new_tokens - 1 > min(limits):
        raise ConfigError(
            f"the longest prompt has {prompt_tokens} tokens; with max_new_tokens={max_new_tokens} a "
            f"proxy would see {prompt_tokens + max_new_tokens - 1} tokens but its context is "
            f"{min(limits)} (max_position_embeddings). Shorten the prompt or lower "
            "max_new_tokens; routekit does not truncate what a proxy sees."
        )


def _steered(model: PreTrainedModel) -> Any:
    # An earlier instance-level wrapper is kept; otherwise the class's generate is looked up at
    # every call, so patching the class later (profilers, tests) still takes effect.
    own = model.__dict__.get("generate")

    def original(*args: Any, **kwargs: Any) -> Any:
        return own(*args, **kwargs) if own is not None else type(model).generate(model, *args, **kwargs)

    @functools.wraps(type(model).generate)
    def generate(*args: Any, **kwargs: Any) -> Any:
        active = (_ACTIVE.get() or {}).get(id(model))
        if active is None or _OFF.get():
            return original(*args, **kwargs)
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if isinstance(input_ids, torch.Tensor):
            longest = int(mask.sum(1).max()) if mask is not None else input_ids.shape[1]
            max_new = kwargs.get("max_new_tokens") or model.generation_config.max_new_tokens or 0
            check_context(active.experts, longest, int(max_new))
        tok = active.tokenizer
        pad = kwargs.get("pad_token_id", model.generation_config.pad_token_id)
        proc = ProxyLogitsProcessor(
            list(active.experts), active.alpha,
            base_vocab_size=min(len(tok), logits_width(model)),
            pad_token_id=pad if pad is not None else tok.pad_token_id,
            attention_mask=mask, fusion=active.fusion, concurrent=_CONCURRENT.get(),
        )
        # Ours first: later processors and generate's warpers see the steered log-probs.
        user = list(kwargs.pop("logits_processor", None) or [])
        kwargs["logits_processor"] = LogitsProcessorList([proc, *user])
        with proc.beside(model):  # this call's proxies run beside the base; stopped at its end
            return original(*args, **kwargs)

    generate._routekit_steered = True  # type: ignore[attr-defined]
    return generate


def install_generate_hook(model: PreTrainedModel) -> None:
    """Wrap ``model.generate`` once so that an active steering applies to it (idempotent)."""
    with _HOOK_LOCK:
        if not getattr(model.generate, "_routekit_steered", False):
            # An instance attribute: the class and other models are untouched.
            model.__dict__["generate"] = _steered(model)


@contextlib.contextmanager
def steering(
    model: PreTrainedModel,
    experts: Sequence[ProxyExpert],
    alpha: torch.Tensor,
    tokenizer: PreTrainedTokenizerBase,
    fusion: FusionFn | None = None,
) -> Iterator[None]:
    """Inside the block, this context's ``model.generate`` calls are steered by ``experts``
    (with ``fusion``, per-step weights from that rule, ``alpha`` being its prior)."""
    install_generate_hook(model)
    current = dict(_ACTIVE.get() or {})
    current[id(model)] = _Steering(tuple(experts), alpha, tokenizer, fusion)
    token = _ACTIVE.set(current)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


@contextlib.contextmanager
def steering_disabled() -> Iterator[None]:
    """Inside the block, this context's ``generate`` calls run unsteered, even within a
    ``steering`` / ``routekit.mixture`` block (other threads keep theirs)."""
    token = _OFF.set(True)
    try:
        yield
    finally:
        _OFF.reset(token)
