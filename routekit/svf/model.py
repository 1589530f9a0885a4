"""Turning a causal LM into an SVF model and back, and putting experts into it.

``get_svf_model`` wraps the targeted layers in place (PEFT-style, ``base_layer`` kept) and
freezes all but ``svf_z``. Experts go in with ``set_expert`` (one z for the batch),
``use_row_mixture``/``use_row_z`` (one z per batch row, factored path) or ``merge`` (one z
written into the weights, base speed; ``unmerge`` restores them bit-exactly).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, FingerprintMismatchError
from ..io import model_fingerprint
from .config import SVFConfig, resolve_targets
from .expert import SVFExpert, check_z, stacked_mixture
from .factors import load_or_compute_factors
from .fusion import install_fusion, remove_fusion
from .layer import SVFLinear


@dataclass
class RowMixture:
    """One mixture per batch row: row b uses z = Σₖ alpha[b, k] zₖ (alpha (B, K) or (B, K, L))."""

    experts: Sequence[SVFExpert]
    alpha: torch.Tensor | Sequence[Sequence[float]]


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
    ``z_init=1.0`` the wrapped model computes what the base computes.
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
    return SVFExpert(
        {n: layer.svf_z.detach() for n, layer in layers.items()},
        name=name, target_modules=model.svf_config.target_modules,
        base_fingerprint=model.svf_base_fingerprint,
        training_config=dict(training_config or {}), metrics=dict(metrics or {}),
    )


def _check_expert(model: nn.Module, layers: dict[str, SVFLinear], expert: SVFExpert) -> None:
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


@torch.no_grad()
def set_expert(model: nn.Module, expert: SVFExpert | RowMixture | None) -> None:
    """Load one expert's z into ``svf_z`` (None: back to ``z_init``), or a RowMixture per row.

    Everything is checked before anything changes. A merged model is re-merged with the
    new z.
    """
    layers = _require_svf(model)
    if isinstance(expert, RowMixture):
        set_row_mixture(model, expert.experts, expert.alpha)
        return
    if expert is not None:
        _check_expert(model, layers, expert)
    was_merged = any(layer.merged for layer in layers.values())
    unmerge(model)
    clear_row_z(model)
    for n, layer in layers.items():
        if expert is None:
            layer.svf_z.fill_(model.svf_config.z_init)
        else:
            layer.svf_z.copy_(expert.z[n])
    if was_merged:
        merge(model)


def merge(model: nn.Module, expert: SVFExpert | None = None) -> None:
    """Write U diag(S ⊙ z) Vh into every base weight (z from ``expert``, else ``svf_z``)."""
    layers = _require_svf(model)
    if expert is not None:
        set_expert(model, expert)
    if any(layer._row_sz is not None for layer in layers.values()):
        raise ConfigError("cannot merge while per-row z is set; call clear_row_z(model) first.")
    for layer in layers.values():
        layer.merge()


def unmerge(model: nn.Module) -> None:
    """Restore every merged base weight bit-exactly from its kept copy."""
    for layer in _require_svf(model).values():
        layer.unmerge()


def set_row_z(model: nn.Module, z: Mapping[str, torch.Tensor]) -> None:
    """Give the named layers one z per batch row ((batch, r) each); others keep ``svf_z``."""
    layers = _require_svf(model)
    rows = None
    for n, t in z.items():
        if n not in layers:
            raise ConfigError(f"{n!r} is not an SVF layer; SVF layers include {list(layers)[:3]}.")
        r = layers[n].rank
        if t.dim() != 2 or t.shape[1] != r or (rows is not None and t.shape[0] != rows):
            raise ConfigError(
                f"per-row z of layer {n!r} has shape {tuple(t.shape)}, expected (batch, {r}) "
                f"with one batch size for all layers" + (f" ({rows})" if rows else "") + "."
            )
        if not torch.isfinite(t).all():
            raise ConfigError(f"per-row z of layer {n!r} holds NaN/inf values.")
        rows = t.shape[0]
    if any(layer.merged for layer in layers.values()):
        raise ConfigError("per-row z needs the factored path; call unmerge(model) first.")
    for n, t in z.items():
        layers[n].set_row_z(t)


def clear_row_z(model: nn.Module) -> None:
    """Back to one shared ``svf_z`` per layer."""
    for layer in _require_svf(model).values():
        layer.set_row_z(None)


def row_z_from_mixture(
    model: nn.Module, experts: Sequence[SVFExpert], alpha: torch.Tensor | Sequence[Sequence[float]]
) -> dict[str, torch.Tensor]:
    """Per-layer (batch, r) z for alpha (B, K) or (B, K, L) over ``experts``."""
    layers = _require_svf(model)
    for e in experts:
        _check_expert(model, layers, e)
    alpha = torch.as_tensor(alpha, dtype=torch.float32)
    if alpha.dim() not in (2, 3):
        raise ConfigError(
            f"a per-row mixture needs alpha of shape (batch, K) or (batch, K, n_layers); got "
            f"{tuple(alpha.shape)}."
        )
    return stacked_mixture(experts, alpha, rows=alpha.shape[0])


def set_row_mixture(
    model: nn.Module, experts: Sequence[SVFExpert], alpha: torch.Tensor | Sequence[Sequence[float]]
) -> None:
    """Row b of the next batches uses z = Σₖ alpha[b, k] zₖ (factored path)."""
    layers = _require_svf(model)
    z = row_z_from_mixture(model, experts, alpha)
    device = next(iter(layers.values())).svf_S.device
    set_row_z(model, {n: t.to(device) for n, t in z.items()})


@contextlib.contextmanager
def disable_svf(model: nn.Module) -> Iterator[nn.Module]:
    """``with disable_svf(model):`` the model computes its base (merged or not), as PEFT's
    ``disable_adapter()``; used for reference passes such as an RL KL penalty."""
    layers = _require_svf(model)
    for layer in layers.values():
        layer.svf_disabled = True
        layer.__dict__.pop("forward", None)
    try:
        yield model
    finally:
        for layer in layers.values():
            layer.svf_disabled = False
            if layer.merged:
                layer.forward = layer.base_layer.forward


@contextlib.contextmanager
def use_row_z(model: nn.Module, z: Mapping[str, torch.Tensor]) -> Iterator[nn.Module]:
    """``with use_row_z(model, {layer: (batch, r)}):`` per-row z inside, cleared on exit."""
    set_row_z(model, z)
    try:
        yield model
    finally:
        clear_row_z(model)


@contextlib.contextmanager
def use_row_mixture(
    model: nn.Module, experts: Sequence[SVFExpert], alpha: torch.Tensor | Sequence[Sequence[float]]
) -> Iterator[nn.Module]:
    """``with use_row_mixture(model, experts, alpha):`` row b mixes experts by alpha[b]."""
    set_row_mixture(model, experts, alpha)
    try:
        yield model
    finally:
        clear_row_z(model)
