"""Proxy-tuning experts: a small tuned/untuned model pair that steers a base model's logits.

A :class:`ProxyExpert` (proxy-tuning, arXiv:2401.08565; DExperts) holds a small model tuned
for a task and its untuned twin. At each decoding step its *offset* is
``log_softmax(tuned) - log_softmax(untuned)`` over the shared vocabulary, and the base's
next-token scores become ``log_softmax(base) + sum_k alpha_k * offset_k``. The base's
weights are never touched. ``expert`` holds the pair and its files, ``processor`` the
``LogitsProcessor``, ``steering`` the per-call hook that ``routekit.mixture`` uses,
``fusion`` the per-step weighting rule (dynamic logit fusion), ``concurrent`` where the
proxies' forward runs beside the base's (a worker thread / CUDA stream, or a forked process). The one-call helper
``proxy_generate`` lives with generation (:mod:`routekit.eval.proxy`; ``rk.proxy_generate``),
which sits above the expert kinds; ``routekit.proxy.proxy_generate`` still works, deprecated.
Importing the package registers the kind ``"proxy"`` with ``routekit.experts.registry``.
"""

import importlib
import warnings
from typing import Any

from ..experts import ExpertKind, register_kind
from .expert import ProxyExpert, ProxyExpertConfig, check_vocab_compatible
from .fusion import FusionRule
from .processor import ProxyLogitsProcessor
from .steering import proxy_concurrency, steering_disabled

register_kind(ExpertKind("proxy", ProxyExpert, disabled=steering_disabled))

__all__ = [
    "FusionRule",
    "ProxyExpert",
    "ProxyExpertConfig",
    "ProxyLogitsProcessor",
    "check_vocab_compatible",
    "proxy_concurrency",
]


def __getattr__(name: str) -> Any:
    """``proxy_generate``, deprecated here: it moved to ``routekit.eval`` (imported on first
    use, so this package does not import generation, which sits above it)."""
    if name == "proxy_generate":
        warnings.warn(
            "routekit.proxy.proxy_generate is deprecated; use routekit.proxy_generate "
            "(routekit.eval.proxy_generate).",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module("routekit.eval.proxy").proxy_generate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
