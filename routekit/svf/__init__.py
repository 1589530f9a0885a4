"""SVF experts (Transformer², arXiv:2501.06252): singular-value fine-tuning of any HF causal LM.

For each targeted linear layer W = U diag(S) Vh an expert is a vector z and the adapted
layer is U diag(S ⊙ z) Vh. ``config`` says which layers, ``factors`` computes and caches
the SVD, ``layer`` holds the factored and merged forwards and the per-call state, ``fusion``
shares one projection between siblings, ``model`` wraps a model and merges experts into it,
``expert`` saves, loads and mixes experts, ``delta`` gives the exact update ΔW. Importing
the package registers the kind ``"svf"`` with ``routekit.experts.registry``.
"""

from ..experts import ExpertKind, register_kind
from .config import SVFConfig
from .delta import save_adapted_checkpoint, svf_delta
from .expert import FORMAT, SVFExpert, mix_experts
from .layer import SVFLinear, svf_disabled
from .model import (
    disable_adapter,
    disable_svf,
    export_expert,
    get_svf_model,
    merge,
    svf_layers,
    unmerge,
    unwrap_svf_model,
)

register_kind(ExpertKind("svf", SVFExpert, formats=(FORMAT,), disabled=svf_disabled))

__all__ = [
    "SVFConfig",
    "SVFExpert",
    "SVFLinear",
    "mix_experts",
    "get_svf_model",
    "unwrap_svf_model",
    "svf_layers",
    "export_expert",
    "merge",
    "unmerge",
    "disable_adapter",
    "disable_svf",
    "svf_delta",
    "save_adapted_checkpoint",
]
