"""Turning a causal LM into an SVF model and back, and merging an expert into its weights.

``get_svf_model`` wraps the targeted layers in place (PEFT-style, ``base_layer`` kept),
freezes all but ``svf_z`` and gives the model PEFT's methods (see :data:`PEFT_METHODS`):
``print_trainable_parameters()``, ``merge_and_unload()``, ``unload()``,
``disable_adapter()``, ``save_pretrained()`` (the expert, as PEFT saves the adapter) and
``export_expert()``. An expert is applied per call with ``routekit.mixture`` (factored
path, one mixture per batch row, safe under threads), or written into the weights with
``merge`` (base speed, for every caller; ``unmerge`` restores them bit-exactly).
``disable_adapter`` makes the calls of one block compute the base (``disable_svf`` is its
deprecated old name).
"""

from __future__ import annotations

import contextlib
import os
import types
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, FingerprintMismatchError
from ..experts import disable_experts
from ..io import model_fingerprint
from .config import SVFConfig, resolve_targets
from .expert import SVFExpert, check_z
from .factors import iter_factors
from .fusion import install_fusion, remove_fusion
from .layer import SVFLinear, current_state
from .residency import release_pages, trim_heap


def svf_layers(model: nn.Module) -> dict[str, SVFLinear]:
    """The SVF layers of a wrapped model by module name (the names experts use)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SVFLinear)}


def _require_svf(model: nn.Module) -> dict[str, SVFLinear]:
    layers = svf_layers(model)
    if not layers:
        raise ConfigError(
            f"{type(model).__name__} has no SVF layers; wrap it with get_svf_model(model, config) first."
        )
    return layers


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def get_svf_model(model: nn.Module, config: SVFConfig | None = None) -> nn.Module:
    """Wrap ``config.target_modules`` of ``model`` in place with SVFLinear; return ``model``.

    The targeted layers are factored one at a time (SVD or cache read, see
    ``routekit.svf.factors``); a weight memory-mapped from the checkpoint then leaves memory
    (``routekit.svf.residency``): the factored forward does not read it. ``SVFConfig``
    documents what the wrapped model holds in memory.

    Every other parameter is frozen; only the ``svf_z`` vectors train. With the default
    ``z_init=1.0`` the wrapped model computes what the base computes, up to the float32
    rounding of the SVD reconstruction (see ``routekit.svf.factors`` for the measured bound).

    The returned object is ``model`` itself (still its own class, so everything that takes a
    ``PreTrainedModel`` takes it), with PEFT's methods bound on it: ``print_trainable_parameters()``,
    ``get_nb_trainable_parameters()``, ``merge_and_unload()``, ``unload()``,
    ``disable_adapter()``, ``save_pretrained(directory)`` (writes the expert; the full
    adapted model is ``save_adapted_checkpoint``) and ``export_expert(name)``.
    """
    config = config or SVFConfig()
    if svf_layers(model):
        raise ConfigError("model is already an SVF model; call unwrap_svf_model(model) first.")
    targets = resolve_targets(model, config.target_modules)
    fingerprint = model_fingerprint(model)
    cache = config.resolved_cache_dir()
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        # One layer at a time: its SVD (or cache read), its wrapper, and its float32 factors
        # freed (when stored narrower) before the next layer's SVD.
        for name, factors in iter_factors(targets, cache):
            layer = targets[name]
            _replace(model, name, SVFLinear(layer, factors, config.z_init, config.torch_factor_dtype))
            del factors
            # The factored forward never reads W: a weight mapped from the checkpoint goes
            # back to disk (read again, bit for bit, if the base is ever computed).
            release_pages(layer.weight)
    except BaseException:
        for name, layer in svf_layers(model).items():  # leave the model as it came
            _replace(model, name, layer.base_layer)
        for n, p in model.named_parameters():
            p.requires_grad_(requires_grad.get(n, p.requires_grad))
        raise
    model.svf_config = config
    model.svf_base_fingerprint = fingerprint
    model._svf_requires_grad = requires_grad
    for name in PEFT_METHODS:  # instance attributes: the class and other models are untouched
        model.__dict__[name] = types.MethodType(globals()[name], model)
    install_fusion(model)
    trim_heap()  # the per-layer float32 factors and SVD workspace, freed above
    return model


def unwrap_svf_model(model: nn.Module) -> nn.Module:
    """Unmerge, put every base layer back and restore each parameter's ``requires_grad``."""
    layers = _require_svf(model)
    remove_fusion(model)
    for name, layer in layers.items():
        layer.unmerge()
        _replace(model, name, layer.base_layer)
    for n, p in model.named_parameters():
        p.requires_grad_(model._svf_requires_grad.get(n, p.requires_grad))
    for attr in ("svf_config", "svf_base_fingerprint", "_svf_requires_grad", *PEFT_METHODS):
        model.__dict__.pop(attr, None)
    return model


def export_expert(
    model: nn.Module, name: str, *, training_config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> SVFExpert:
    """The model's current ``svf_z`` vectors as an SVFExpert remembering the base fingerprint."""
    layers = _require_svf(model)
    return SVFExpert(  # SVFExpert copies the vectors: later training leaves this expert as it is
        {n: layer.svf_z.detach() for n, layer in layers.items()},
        name=name, target_modules=model.svf_config.target_modules,
        base_fingerprint=model.svf_base_fingerprint,
        training_config=dict(training_config or {}), metrics=dict(metrics or {}),
    )


def check_expert_fits(model: nn.Module, layers: dict[str, SVFLinear], expert: SVFExpert) -> None:
    """Refuse an expert made for another base or other layers (naming what differs)."""
    if expert.base_fingerprint != model.svf_base_fingerprint:
        raise FingerprintMismatchError(
            f"expert {expert.name!r} was trained on base {expert.base_fingerprint} but this model's "
            f"base is {model.svf_base_fingerprint}; load the base it was trained on."
        )
    missing = [n for n in layers if n not in expert.z]
    extra = [n for n in expert.z if n not in layers]
    if missing or extra:
        raise ConfigError(
            f"expert {expert.name!r} (target_modules={expert.target_modules!r}) does not fit the "
            f"model's SVF layers (target_modules={model.svf_config.target_modules!r}): missing "
            f"{missing[:3]}, extra {extra[:3]}."
        )
    for n, layer in layers.items():
        check_z(n, expert.z[n], layer.rank, what=f"expert {expert.name!r}")


def _refuse_while_mixing(what: str) -> None:
    state = current_state()
    if state is not None and state.scales:
        raise ConfigError(f"cannot {what} inside a routekit.mixture block; leave the block first.")


@torch.no_grad()
def _set_expert(model: nn.Module, expert: SVFExpert | None) -> None:
    """Load one expert's z into ``svf_z`` (None: back to ``z_init``); checked before any change.

    ``svf_z`` is shared by every caller of the model (it is what trains): per-call experts go
    through ``routekit.mixture`` instead. A merged model is re-merged with the new z.
    """
    layers = _require_svf(model)
    if expert is not None:
        check_expert_fits(model, layers, expert)
    was_merged = any(layer.merged for layer in layers.values())
    unmerge(model)
    for n, layer in layers.items():
        if expert is None:
            layer.svf_z.fill_(model.svf_config.z_init)
        else:
            layer.svf_z.copy_(expert.z[n])
    if was_merged:
        merge(model)


def merge(model: nn.Module, expert: SVFExpert | None = None) -> None:
    """Write U diag(S ⊙ z) Vh into every base weight (z from ``expert``, else ``svf_z``).

    Merging changes the model for every caller (the weights are shared); it is for serving
    one fixed expert or mixture (``mix_experts``) at the base's speed.
    """
    layers = _require_svf(model)
    _refuse_while_mixing("merge")
    if expert is not None:
        _set_expert(model, expert)
    for layer in layers.values():
        layer.merge()


@contextlib.contextmanager
def merged(model: nn.Module, expert: SVFExpert) -> Iterator[nn.Module]:
    """``with merged(model, expert):`` the expert is merged inside; on exit the weights are
    restored bit-exactly and ``svf_z`` holds what it held before (for every caller: use it
    where one caller owns the model, as ``AdaptiveModel`` does for its batches)."""
    layers = _require_svf(model)
    kept = {n: layer.svf_z.detach().clone() for n, layer in layers.items()}
    merge(model, expert)
    try:
        yield model
    finally:
        unmerge(model)
        with torch.no_grad():
            for n, layer in layers.items():
                layer.svf_z.copy_(kept[n])


def unmerge(model: nn.Module) -> None:
    """Put every merged base weight's original tensor back (bit-exact; none was copied) and
    return the freed W' to the system."""
    was = False
    for layer in _require_svf(model).values():
        was |= layer.merged
        layer.unmerge()
    if was:
        trim_heap()


@contextlib.contextmanager
def disable_adapter(model: nn.Module) -> Iterator[nn.Module]:
    """``with model.disable_adapter():`` this thread's calls compute the base, as PEFT's
    ``disable_adapter()``: SVF layers (merged or not) and proxy steering are off, inside
    ``routekit.mixture`` blocks too (``routekit.experts.disable_experts``); used for
    reference passes such as an RL KL penalty. Other threads keep their own behaviour."""
    _require_svf(model)
    with disable_experts():
        yield model


def disable_svf(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """Deprecated: use ``model.disable_adapter()`` (``routekit.svf.disable_adapter(model)``),
    which also turns proxy steering off."""
    warnings.warn(
        "routekit.disable_svf is deprecated; use model.disable_adapter() "
        "(routekit.svf.disable_adapter(model)), which also turns proxy steering off.",
        DeprecationWarning, stacklevel=2,
    )
    return disable_adapter(model)


# ----- PEFT's methods on an SVF model --------------------------------------------------------


def get_nb_trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters) of the model, as PEFT counts them."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def print_trainable_parameters(model: nn.Module) -> None:
    """Print PEFT's line: ``trainable params: N || all params: M || trainable%: P``."""
    trainable, total = get_nb_trainable_parameters(model)
    print(f"trainable params: {trainable:,d} || all params: {total:,d} || "
          f"trainable%: {100 * trainable / max(total, 1):.4f}")


@torch.no_grad()
def merge_and_unload(model: nn.Module, expert: SVFExpert | None = None) -> nn.Module:
    """Write the expert into the base weights and remove the SVF wrappers; returns the plain
    base model (the same object, its own class, no SVF module left), as PEFT's.

    Every targeted weight becomes W + ΔW in its own dtype (ΔW = U diag(S ⊙ (z − 1)) Vh, from
    ``expert`` or else ``svf_z``): what ``save_adapted_checkpoint`` writes, and a layer with
    z = 1 keeps its weight bit for bit. ``requires_grad`` is restored as ``unload`` does.
    """
    layers = _require_svf(model)
    _refuse_while_mixing("merge_and_unload")
    if expert is not None:
        check_expert_fits(model, layers, expert)
    for n, layer in layers.items():
        new = layer.weight_with_delta(expert.z[n] if expert is not None else None)
        layer.unmerge()  # the base layer holds W again
        w = layer.base_layer.weight
        if new.data_ptr() != w.data_ptr():  # z = 1 on an unmerged layer: W itself
            w.data = new  # a new tensor: no copy-on-write copy of a memory-mapped W first
        del new
    return unwrap_svf_model(model)


def unload(model: nn.Module) -> nn.Module:
    """Remove the SVF wrappers without merging (PEFT's ``unload``): the base model with its
    weights bit-exactly as loaded; same as :func:`unwrap_svf_model`."""
    return unwrap_svf_model(model)


def save_pretrained(
    model: nn.Module, save_directory: str | os.PathLike, name: str | None = None, *,
    training_config: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Save the model's expert (its ``svf_z``) as an expert directory, as PEFT saves the
    adapter; ``name`` defaults to the directory's name. Load it with ``routekit.load_expert``.
    The whole adapted model as a plain checkpoint is ``save_adapted_checkpoint``."""
    target = Path(save_directory)
    expert = export_expert(model, name or target.name, training_config=training_config,
                           metrics=metrics)
    return expert.save_pretrained(target)


#: The methods ``get_svf_model`` binds on the model it wraps (PEFT's names).
PEFT_METHODS = (
    "export_expert", "print_trainable_parameters", "get_nb_trainable_parameters",
    "merge_and_unload", "unload", "disable_adapter", "save_pretrained",
)
