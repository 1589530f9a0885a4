"""SVD factors of the targeted weights, computed once in float32 and cached as safetensors.

The cache key is a full fingerprint of the targeted base weights, so the same base (any
path, any process) reuses the factors, and a changed weight can never hit a stale entry. A
cache entry that cannot be read, or does not fit the layers, is reported with a
RoutekitWarning naming the file, deleted and recomputed.

The factors reproduce the weight to float32 rounding, not bit for bit. Measured with
torch 2.13 on CPU (tests/test_svf_delta.py checks the 1e-5 bounds): max |U diag(S) Vh − W|
is 0.8-2.3e-7 on the tiny test models (hidden 32 and 256), at most 3.2e-6 of max |W|
(Frobenius 1.6e-6 relative), and 4.3e-7 (4.1e-6 of max |W|) for a 5632 x 2048 matrix of std
0.02; written back in float32 (a merge at z = 1) it changes 97-99 % of the entries, in bf16
0.04-0.1 %. So z = 1 gives the base up to this rounding: float32 logits within 3e-6 of
max |logit| of the base's; bf16 models within one or two bf16 steps of the logits (up to
0.61 % of max |logit|), the factored path computing in float32 where the base computes in
bf16. ``svf.delta`` gives the exact update ΔW, without this error.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers.pytorch_utils import Conv1D

from ..errors import ExpertFileError, RoutekitWarning
from ..io import atomic_save_safetensors, fingerprint_tensors, load_safetensors

Factors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # U (out, r), S (r,), Vh (r, in)


def linear_weight(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as ``(out_features, in_features)``; GPT-2 Conv1D stores it transposed."""
    return layer.weight.t() if isinstance(layer, Conv1D) else layer.weight


def _svd(w: torch.Tensor) -> Factors:
    # One place that calls the SVD, so tests can count calls (a cache hit makes none).
    return torch.linalg.svd(w, full_matrices=False)


def compute_factors(w: torch.Tensor) -> Factors:
    """SVD of ``w`` (out, in) in float32, contiguous in the orientation F.linear wants.

    U diag(S) Vh equals ``w`` up to float32 rounding (see the module docstring), not exactly.
    """
    u, s, vh = _svd(w.detach().to(torch.float32))
    return u.contiguous(), s.contiguous(), vh.contiguous()


def _cache_problem(tensors: dict[str, torch.Tensor], layers: dict[str, nn.Module]) -> str | None:
    """Why cached factors do not fit ``layers`` (None when they do)."""
    for name, layer in layers.items():
        out_f, in_f = linear_weight(layer).shape
        r = min(out_f, in_f)
        want = {".U": (out_f, r), ".S": (r,), ".Vh": (r, in_f)}
        for suffix, shape in want.items():
            t = tensors.get(name + suffix)
            if t is None:
                return f"it lacks {name + suffix!r}"
            if tuple(t.shape) != shape:
                return f"{name + suffix!r} has shape {tuple(t.shape)}, expected {shape}"
            if not torch.isfinite(t).all():
                return f"{name + suffix!r} holds NaN/inf values"
    return None


def load_or_compute_factors(
    layers: dict[str, nn.Module], cache_dir: Path | None
) -> tuple[dict[str, Factors], str]:
    """Factors for every layer (float32, on the weight's device) and the cache key used.

    A cache entry that cannot be read or does not fit is reported (RoutekitWarning naming
    the file and the reason), deleted and rebuilt.
    """
    key = fingerprint_tensors({n: linear_weight(m) for n, m in layers.items()}, full=True)
    path = cache_dir / f"{key}.safetensors" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            cached = load_safetensors(path, what="SVF factor cache")
            problem = _cache_problem(cached, layers)
        except ExpertFileError as e:
            cached, problem = None, f"it cannot be read ({e.__cause__ or e})"
        if cached is not None and problem is None:
            return {
                n: tuple(cached[f"{n}{s}"].to(linear_weight(m).device) for s in (".U", ".S", ".Vh"))
                for n, m in layers.items()
            }, key
        warnings.warn(
            f"SVF factor cache entry {str(path)!r} is corrupt: {problem}. It was deleted and the "
            "factors are being recomputed (and cached again); nothing to do unless this repeats, "
            "which would point at the disk or at another process writing the cache.",
            RoutekitWarning,
            stacklevel=3,
        )
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    factors = {}
    for name, layer in tqdm(layers.items(), desc="SVD", unit="layer", disable=None, leave=False):
        factors[name] = compute_factors(linear_weight(layer))
    if path is not None:
        flat = {f"{n}{s}": t for n, f in factors.items() for s, t in zip((".U", ".S", ".Vh"), f)}
        atomic_save_safetensors(flat, path, metadata={"format": "routekit-svf-factors"})
    return factors, key
