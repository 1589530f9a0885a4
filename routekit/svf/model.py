"""Turning a causal LM into an SVF model and back, and merging an expert into its weights.

``get_svf_model`` wraps the targeted layers in place (PEFT-style, ``base_layer`` kept) and
freezes all but ``svf_z``. An expert is applied per call with ``routekit.mixture`` (factored
path, one mixture per batch row, safe under threads), or written into the weights with
``merge`` (base speed, for every caller; ``unmerge`` restores them bit-exactly).
``disable_svf`` makes the calls of one block compute the base.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, FingerprintMismatchError
from ..io import model_fingerprint
from .config import SVFConfig, resolve_targets
from .expert import SVFExpert, check_z
from .factors import load_or_compute_factors
from .fusion import install_fusion, remove_fusion
from .layer import SVFCallState, SVFLinear, call_state, current_state


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

    Every other parameter is frozen; only the ``svf_z`` vectors train. With the default
    ``z_init=1.0`` the wrapped model computes what the base computes, up to the float32
    rounding of the SVD reconstruction (see ``routekit.svf.factors`` for the measured bound).
    """
    config = config or SVFConfig()
    if svf_layers(model):
        raise ConfigError("model is already an SVF model; call unwrap_svf_model(model) first.")
    targets = resolve_targets(model, config.target_modules)
    fingerprint = model_fingerprint(model)
    cache = config.resolved_cache_dir()
    factors, _ = load_or_compute_factors(targets, cache)
    requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for name, layer in targets.items():
        _replace(model, name, SVFLinear(layer, factors[name], config.z_init, config.torch_factor_dtype))
    model.svf_config = config
    model.svf_base_fingerprint = fingerprint
    model._svf_requires_grad = requires_grad
    model.export_expert = functools.partial(export_expert, model)
    install_fusion(model)
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
    for attr in ("svf_config", "svf_base_fingerprint", "_svf_requires_grad", "export_expert"):
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
    """Restore every merged base weight bit-exactly from its kept copy."""
    for layer in _require_svf(model).values():
        layer.unmerge()


@contextlib.contextmanager
def disable_svf(model: nn.Module) -> Iterator[nn.Module]:
    """``with disable_svf(model):`` this thread's calls compute the base (merged or not), as
    PEFT's ``disable_adapter()``; used for reference passes such as an RL KL penalty. Other
    threads keep their own behaviour."""
    _require_svf(model)
    with call_state(SVFCallState(disabled=True)):
        yield model
