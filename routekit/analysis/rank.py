"""Rank and effective rank of a 2-D update, on CPU or a CUDA device."""

from __future__ import annotations

import sys

import torch

from ..errors import ConfigError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'cuda' when asked and available, else CPU (with a note on stderr when cuda was asked)."""
    dev = torch.device(device or "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        print(
            "routekit diff: --device cuda asked but no CUDA device is available; ranking on CPU.",
            file=sys.stderr,
        )
        return torch.device("cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {str(device)!r} is not supported; use 'cpu' or 'cuda'.")
    return dev


def rank_stats(delta: torch.Tensor, device: torch.device) -> tuple[int, float, float]:
    """``(rank, rank_fraction, effective_rank)`` of a 2-D update.

    The rank uses torch.linalg.matrix_rank's default tolerance, sigma_max * max(m, n) * eps of
    the dtype, applied to one singular value decomposition that also gives the effective rank
    exp(-sum p_i log p_i), p = sigma / sum(sigma) (Roy & Vetterli 2007).
    """
    m, n = delta.shape
    k = min(m, n)
    if k == 0:
        return 0, 0.0, 0.0
    d = delta.to(device)
    if m < n:  # same singular values; LAPACK is several times faster on the tall orientation
        d = d.mT
    s = torch.linalg.svdvals(d)
    smax = s.max()
    if float(smax) == 0.0:
        return 0, 0.0, 0.0
    tol = smax * max(m, n) * torch.finfo(s.dtype).eps
    rank = int((s > tol).sum())
    p = s.to(torch.float64)
    p = p / p.sum()
    p = p[p > 0]
    erank = float(torch.exp(-(p * p.log()).sum()))
    return rank, rank / k, erank

