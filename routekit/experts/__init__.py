"""Experts of every kind: the ``Expert`` base, the kind registry and ``load_expert``.

``base`` holds what the kinds share (``Expert``, ``ExpertKind``, alpha validation, file
checks) and ``registry`` the kinds ``routekit.svf`` and ``routekit.proxy`` register, so
``load_expert`` needs neither. The ``mixture`` context, which applies experts of both kinds
per call, is ``routekit.experts.mixture.mixture`` (also ``routekit.mixture``); it sits above
both kinds, so this package does not import it (``from routekit.experts import mixture``
names that module, not the context).
"""

from .base import (
    EXPERT_CONFIG,
    AlphaLike,
    Expert,
    ExpertKind,
    check_experts,
    check_same_base,
    normalize_alpha,
    refuse_foreign_directory,
)
from .registry import (
    check_expert_kind,
    disable_experts,
    expert_kind,
    kind_record,
    load_expert,
    register_kind,
    registered_kinds,
)

__all__ = [
    "EXPERT_CONFIG",
    "AlphaLike",
    "Expert",
    "ExpertKind",
    "check_expert_kind",
    "check_experts",
    "check_same_base",
    "disable_experts",
    "expert_kind",
    "kind_record",
    "load_expert",
    "normalize_alpha",
    "refuse_foreign_directory",
    "register_kind",
    "registered_kinds",
]
