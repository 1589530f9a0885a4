"""SVD factors of the targeted weights, computed once in float32 and cached as safetensors.

The cache holds one file per weight matrix, named by a full fingerprint of that matrix's
values (shape and dtype included): the same weight (any model, path, process or
``target_modules``) reuses its factors, a partial cache (an interrupted SVD, another preset)
is used for the layers it has, no file grows with the model (an 8B model's MLP is 96 files
of at most 0.2 GB, none of 20 GB), and a changed weight can never hit a stale entry. An
entry that cannot be read, or does not fit its layer, is reported with a RoutekitWarning
naming the file, deleted and recomputed (that layer only).

The SVD runs one layer at a time (:func:`iter_factors`): its float32 copy of the weight
and its workspace are freed before the next layer's, so the SVD's peak memory is one
layer's, not the model's.

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
from collections.abc import Iterator
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


def _cache_problem(tensors: dict[str, torch.Tensor], w: torch.Tensor) -> str | None:
    """Why cached factors do not fit the (out, in) weight ``w`` (None when they do)."""
    out_f, in_f = w.shape
    r = min(out_f, in_f)
    for name, shape in {"U": (out_f, r), "S": (r,), "Vh": (r, in_f)}.items():
        t = tensors.get(name)
        if t is None:
            return f"it lacks {name!r}"
        if tuple(t.shape) != shape:
            return f"{name!r} has shape {tuple(t.shape)}, expected {shape}"
        if t.dtype != torch.float32:
            return f"{name!r} is {t.dtype}, expected torch.float32"
        if not torch.isfinite(t).all():
            return f"{name!r} holds NaN/inf values"
    return None


def cache_key(w: torch.Tensor) -> str:
    """The cache entry's name for the (out, in) weight ``w``: a full fingerprint of it."""
    return fingerprint_tensors({"svf-factors-v2": w}, full=True)


def layer_factors(w: torch.Tensor, cache_dir: Path | None) -> Factors:
    """Factors of the (out, in) weight ``w`` (float32, on its device), read from its cache
    entry or computed (and then cached). A corrupt or unfitting entry is reported
    (RoutekitWarning naming the file and the reason), deleted and rebuilt."""
    path = cache_dir / f"{cache_key(w)}.safetensors" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            cached = load_safetensors(path, what="SVF factor cache")
            problem = _cache_problem(cached, w)
        except ExpertFileError as e:
            cached, problem = None, f"it cannot be read ({e.__cause__ or e})"
        if cached is not None and problem is None:
            # Copies: the loaded tensors are views of one mapping of the whole file, which any
            # one of them kept alive would keep resident (a bf16 U/Vh keeps only S, fusion
            # replaces Vh).
            return tuple(cached[k].to(w.device, copy=True) for k in ("U", "S", "Vh"))
        warnings.warn(
            f"SVF factor cache entry {str(path)!r} is corrupt: {problem}. It was deleted and the "
            "factors are being recomputed (and cached again); nothing to do unless this repeats, "
            "which would point at the disk or at another process writing the cache.",
            RoutekitWarning,
            stacklevel=4,
        )
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    factors = compute_factors(w)
    if path is not None:
        atomic_save_safetensors(dict(zip(("U", "S", "Vh"), factors)), path,
                                metadata={"format": "routekit-svf-factors"})
    return factors


def iter_factors(
    layers: dict[str, nn.Module], cache_dir: Path | None
) -> Iterator[tuple[str, Factors]]:
    """(name, factors) for each layer in turn, one layer's SVD (or cache read) at a time, so
    the caller can wrap the layer and drop what it does not keep before the next one."""
    for name, layer in tqdm(layers.items(), desc="SVD", unit="layer", disable=None, leave=False):
        yield name, layer_factors(linear_weight(layer), cache_dir)


def load_or_compute_factors(
    layers: dict[str, nn.Module], cache_dir: Path | None
) -> dict[str, Factors]:
    """Factors for every layer at once (all in memory together; ``get_svf_model`` uses
    :func:`iter_factors` instead)."""
    return dict(iter_factors(layers, cache_dir))
