"""Proxy-tuning experts: a small tuned/untuned model pair that steers a base model's logits.

A :class:`ProxyExpert` (proxy-tuning, arXiv:2401.08565; DExperts) holds a small model tuned
for a task and its untuned twin. At each decoding step its *offset* is
``log_softmax(tuned) - log_softmax(untuned)`` over the shared vocabulary, and the base's
next-token scores become ``log_softmax(base) + sum_k alpha_k * offset_k``. The base's
weights are never touched. ``expert`` holds the pair and its files, ``processor`` the
``LogitsProcessor``, ``steering`` the per-call hook that ``routekit.mixture`` uses,
``fusion`` the per-step weighting rule (dynamic logit fusion), and ``generate`` the one-call
helper. Importing the package registers the kind ``"proxy"`` with ``routekit.experts.registry``.
"""

from ..experts import ExpertKind, register_kind
from .expert import ProxyExpert, ProxyExpertConfig, check_vocab_compatible
from .fusion import FusionRule
from .generate import proxy_generate
from .processor import ProxyLogitsProcessor
from .steering import steering_disabled

register_kind(ExpertKind("proxy", ProxyExpert, disabled=steering_disabled))

__all__ = [
    "FusionRule",
    "ProxyExpert",
    "ProxyExpertConfig",
    "ProxyLogitsProcessor",
    "check_vocab_compatible",
    "proxy_generate",
]
