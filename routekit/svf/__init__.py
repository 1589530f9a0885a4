"""SVF experts (Transformer², arXiv:2501.06252): singular-value fine-tuning of any HF causal LM.

For each targeted linear layer W = U diag(S) Vh an expert is a vector z and the adapted
layer is U diag(S ⊙ z) Vh. ``config`` says which layers, ``factors`` computes and caches
the SVD, ``layer`` holds the factored and merged forwards, ``model`` wraps a model and puts
experts into it, ``expert`` saves, loads and mixes experts.
"""

from .config import SVFConfig
from .expert import SVFExpert, mix_experts
from .layer import SVFLinear
from .model import (
    RowMixture,
    clear_row_z,
    disable_svf,
    export_expert,
    get_svf_model,
    merge,
    row_z_from_mixture,
    set_expert,
    set_row_mixture,
    set_row_z,
    svf_layers,
    unmerge,
    unwrap_svf_model,
    use_row_mixture,
    use_row_z,
)

__all__ = [
    "SVFConfig",
    "SVFExpert",
    "SVFLinear",
    "RowMixture",
    "mix_experts",
    "get_svf_model",
    "unwrap_svf_model",
    "svf_layers",
    "export_expert",
    "set_expert",
    "merge",
    "unmerge",
    "set_row_z",
    "clear_row_z",
    "disable_svf",
    "use_row_z",
    "row_z_from_mixture",
    "set_row_mixture",
    "use_row_mixture",
]
