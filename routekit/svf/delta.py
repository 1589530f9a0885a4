"""The exact weight update of an SVF expert, and an SVF-adapted model as a plain HF checkpoint.

For a wrapped layer W ≈ U diag(S) Vh, the expert's adapted weight is U diag(S ⊙ z) Vh, so its
update is ΔW = U diag(S ⊙ (z − 1)) Vh. Computing ΔW from the factors (rather than subtracting
the original weight from a merged one) leaves out the SVD reconstruction error
W − U diag(S) Vh, which is nonzero in nearly every entry even where z = 1 (about 1e-7 of
the weight scale in float32, see ``factors``): a merged-minus-original difference is dense
whatever z is, and useless for sparsity or overlap figures.

``svf_delta(model, expert)`` returns ΔW per layer (exact zeros where z = 1);
``save_adapted_checkpoint(model, directory, expert)`` writes W + ΔW in the base dtype as an
ordinary ``save_pretrained`` directory, with the untouched layers bitwise equal to the
base, so ``routekit diff BASE DIRECTORY`` reports exactly the layers the expert changes.
Neither changes the model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..io import atomic_directory
from .expert import SVFExpert
from .layer import SVFLinear
from .model import check_expert_fits, svf_layers


def _expert_z(
    model: nn.Module, layers: dict[str, SVFLinear], expert: SVFExpert | None
) -> dict[str, torch.Tensor]:
    """z per layer: the expert's (checked against the model) or each layer's ``svf_z``."""
    if expert is None:
        return {n: layer.svf_z.detach() for n, layer in layers.items()}
    check_expert_fits(model, layers, expert)
    return {n: expert.z[n] for n in layers}


def _require_layers(model: nn.Module) -> dict[str, SVFLinear]:
    layers = svf_layers(model)
    if not layers:
        raise ConfigError(
            f"{type(model).__name__} has no SVF layers; wrap it with get_svf_model(model, config) "
            "first."
        )
    return layers


def svf_delta(model: nn.Module, expert: SVFExpert | None = None) -> dict[str, torch.Tensor]:
    """ΔW = U diag(S ⊙ (z − 1)) Vh per SVF layer (module name as in ``svf_layers``).

    float32, on the factors' device, shaped like the base layer's own weight (``(in, out)``
    for GPT-2 ``Conv1D``). z comes from ``expert`` (checked against the model) or from each
    layer's ``svf_z``. A layer whose z is exactly 1 gets an exact zero ΔW. The model is not
    changed.
    """
    layers = _require_layers(model)
    z = _expert_z(model, layers, expert)
    return {n: layer.delta_weight(z[n]) for n, layer in layers.items()}


def adapted_state_dict(
    model: nn.Module, expert: SVFExpert | None = None
) -> dict[str, torch.Tensor]:
    """The unwrapped model's state dict with W + ΔW (base dtype) in every SVF layer.

    Names are the base model's (``.base_layer.`` removed, SVF buffers and ``svf_z`` left
    out); a layer with z = 1 keeps its original tensor, bit for bit.
    """
    layers = _require_layers(model)
    z = _expert_z(model, layers, expert)
    new_weights = {}
    for n, layer in layers.items():  # one float32 ΔW at a time
        new_weights[f"{n}.base_layer.weight"] = layer.weight_with_delta(z[n])
    sd = {}
    for key, t in model.state_dict().items():
        if ".svf_" in key or key.startswith("svf_"):
            continue
        sd[key.replace(".base_layer.", ".")] = new_weights.get(key, t)
    return sd


def save_adapted_checkpoint(
    model: nn.Module,
    directory: str | os.PathLike,
    expert: SVFExpert | None = None,
    tokenizer: Any | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write the SVF-adapted model as a plain HF checkpoint (config + model.safetensors).

    Weights are W + ΔW in the base dtype (see :func:`svf_delta`), so layers with z = 1 are
    bitwise the base's and ``routekit diff BASE DIRECTORY`` shows no reconstruction noise;
    it loads with ``AutoModelForCausalLM.from_pretrained`` alone. ``tokenizer`` is saved
    beside it when given. Written in one atomic rename; an existing non-empty ``directory``
    is refused unless ``overwrite=True`` (it is then replaced as a whole). The model is not
    changed (merged or not).
    """
    target = Path(directory)
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not overwrite:
        raise ConfigError(
            f"{str(target)!r} exists and is not empty; choose a new directory, or pass "
            "overwrite=True to replace it as a whole."
        )
    if not hasattr(type(model), "save_pretrained"):
        raise ConfigError(
            f"{type(model).__name__} has no save_pretrained; give a wrapped HF PreTrainedModel."
        )
    state_dict = adapted_state_dict(model, expert)
    with atomic_directory(target) as tmp:
        # The class's save_pretrained (the full model): an SVF model's own saves its expert.
        type(model).save_pretrained(model, tmp, state_dict=state_dict, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return target
