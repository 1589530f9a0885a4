"""SVD factors of the targeted weights, computed once in float32 and cached as safetensors.

The cache key is a full fingerprint of the targeted base weights, so the same base (any
path, any process) reuses the factors, and a changed weight can never hit a stale entry.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.pytorch_utils import Conv1D

from ..errors import ExpertFileError
from ..io import atomic_save_safetensors, fingerprint_tensors, load_safetensors

Factors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # U (out, r), S (r,), Vh (r, in)


def linear_weight(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as ``(out_features, in_features)``; GPT-2 Conv1D stores it transposed."""
    return layer.weight.t() if isinstance(layer, Conv1D) else layer.weight


def _svd(w: torch.Tensor) -> Factors:
    # One place that calls the SVD, so tests can count calls (a cache hit makes none).
    return torch.linalg.svd(w, full_matrices=False)


def compute_factors(w: torch.Tensor) -> Factors:
    """SVD of ``w`` (out, in) in float32, contiguous in the orientation F.linear wants."""
    u, s, vh = _svd(w.detach().to(torch.float32))
    return u.contiguous(), s.contiguous(), vh.contiguous()


def _check_cached(tensors: dict[str, torch.Tensor], layers: dict[str, nn.Module]) -> bool:
    for name, layer in layers.items():
        out_f, in_f = linear_weight(layer).shape
        r = min(out_f, in_f)
        want = {".U": (out_f, r), ".S": (r,), ".Vh": (r, in_f)}
        for suffix, shape in want.items():
            t = tensors.get(name + suffix)
            if t is None or tuple(t.shape) != shape or not torch.isfinite(t).all():
                return False
    return True


def load_or_compute_factors(
    layers: dict[str, nn.Module], cache_dir: Path | None
) -> tuple[dict[str, Factors], str]:
    """Factors for every layer (float32, on the weight's device) and the cache key used.

    A cache entry that cannot be read or does not fit is deleted and rebuilt.
    """
    key = fingerprint_tensors({n: linear_weight(m) for n, m in layers.items()}, full=True)
    path = cache_dir / f"{key}.safetensors" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            cached = load_safetensors(path, what="SVF factor cache")
        except ExpertFileError:
            cached = None
        if cached is not None and _check_cached(cached, layers):
            return {
                n: tuple(cached[f"{n}{s}"].to(linear_weight(m).device) for s in (".U", ".S", ".Vh"))
                for n, m in layers.items()
            }, key
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    factors = {}
    for name, layer in tqdm(layers.items(), desc="SVD", unit="layer", disable=None, leave=False):
        factors[name] = compute_factors(linear_weight(layer))
    if path is not None:
        flat = {f"{n}{s}": t for n, f in factors.items() for s, t in zip((".U", ".S", ".Vh"), f)}
        atomic_save_safetensors(flat, path, metadata={"format": "routekit-svf-factors"})
    return factors, key
