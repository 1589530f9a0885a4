"""Element-wise statistics of an update ``b - a``, streamed chunk by chunk in reused buffers.

Bitwise comparison happens on the raw storage bits (a bf16 checkpoint is judged in bf16);
tolerances and norms are computed in float32 of the stored values (float64 when stored so).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..io import storage_bits

CHUNK_ELEMENTS = 1 << 24  # elements per chunk of the elementwise statistics (64 MiB in fp32)

def compute_dtype(*ts: torch.Tensor) -> torch.dtype:
    """float64 when either tensor is stored in float64, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def same_storage_view(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bit views of a and b for comparison; checkpoints that store different dtypes are compared
    after an exact widening to the common dtype."""
    if a.dtype != b.dtype:
        common = torch.promote_types(a.dtype, b.dtype)
        a, b = a.to(common), b.to(common)
    return storage_bits(a), storage_bits(b)


class Workspace:
    """Reusable chunk buffers: fresh 64 MiB allocations per operation (page faults, zeroing)
    cost several times the arithmetic itself on CPU."""

    def __init__(self, chunk: int) -> None:
        self.chunk = chunk
        self._bufs: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def get(self, key: str, dtype: torch.dtype, m: int) -> torch.Tensor:
        buf = self._bufs.get((key, dtype))
        if buf is None or buf.numel() < m:
            buf = torch.empty(max(m, min(self.chunk, 1 << 20)), dtype=dtype)
            self._bufs[(key, dtype)] = buf
        return buf[:m]


def _sum_sq_into(x: torch.Tensor, scratch: torch.Tensor) -> float:
    """Sum of squares via a scratch buffer; torch's cascade sum keeps float32 accurate."""
    torch.mul(x, x, out=scratch)
    return float(scratch.sum())


class NonFiniteValues(Exception):
    """Raised by :func:`elementwise_counts` when the ``side`` ("base" or "tuned") tensor holds
    NaN or inf; the caller turns it into a CheckpointError that names tensor and file."""

    def __init__(self, side: str) -> None:
        super().__init__(side)
        self.side = side


def nonfinite_counts(t: torch.Tensor) -> tuple[int, int]:
    """``(number of NaN, number of +-inf)`` entries of ``t``."""
    if not t.is_floating_point():
        return 0, 0
    return int(torch.isnan(t).sum()), int(torch.isinf(t).sum())


def elementwise_counts(
    a: torch.Tensor,
    b: torch.Tensor,
    atols: Sequence[float],
    rtol: float,
    chunk: int,
    ws: Workspace | None = None,
) -> dict[str, Any]:
    """Counts and sums of the difference b - a, chunk by chunk over the flattened tensors.

    Raises NonFiniteValues for NaN/inf in either tensor. The check costs no extra pass: a
    chunk's sum of squares is non-finite whenever the chunk holds NaN/inf (and is then
    confirmed entry by entry, since huge finite values can overflow it too); b is only
    looked at where its bits differ from a's.
    """
    ws = ws or Workspace(chunk)
    a = a.reshape(-1)
    b = b.reshape(-1)
    n = a.numel()
    cd = compute_dtype(a, b)
    out: dict[str, Any] = {
        "numel": n,
        "n_bitwise_unchanged": 0,
        "n_unchanged_atol": [0] * len(atols),
        "n_unchanged_rtol": 0,
        "sum_sq_delta": 0.0,
        "sum_sq_base": 0.0,
        "max_abs_delta": 0.0,
    }
    ab, bb = same_storage_view(a, b)
    unchanged_whole = torch.equal(ab, bb)  # fast path: the whole tensor is bitwise unchanged
    for s in range(0, n, chunk):
        ac, bc = a[s : s + chunk], b[s : s + chunk]
        m = ac.numel()
        a32 = ws.get("a", cd, m)
        sq = ws.get("sq", cd, m)
        a32.copy_(ac)
        sum_sq = _sum_sq_into(a32, sq)
        if not math.isfinite(sum_sq) and not bool(torch.isfinite(a32).all()):
            raise NonFiniteValues("base")
        out["sum_sq_base"] += sum_sq
        if unchanged_whole:
            n_same = m
        else:
            mask = ws.get("mask", torch.bool, m)
            torch.ne(ab[s : s + chunk], bb[s : s + chunk], out=mask)
            n_same = m - int(torch.count_nonzero(mask))
        out["n_bitwise_unchanged"] += n_same
        if n_same == m:
            out["n_unchanged_atol"] = [x + m for x in out["n_unchanged_atol"]]
            out["n_unchanged_rtol"] += m
            continue
        b32 = ws.get("b", cd, m)
        d = ws.get("d", cd, m)
        b32.copy_(bc)
        torch.sub(b32, a32, out=d)
        sum_sq = _sum_sq_into(d, sq)
        if not math.isfinite(sum_sq) and not bool(torch.isfinite(b32).all()):
            raise NonFiniteValues("tuned")
        out["sum_sq_delta"] += sum_sq
        d.abs_()
        out["max_abs_delta"] = max(out["max_abs_delta"], float(d.max()))
        mask = ws.get("mask", torch.bool, m)
        for i, tol in enumerate(atols):
            torch.le(d, tol, out=mask)
            out["n_unchanged_atol"][i] += int(torch.count_nonzero(mask))
        # relative: |dw| <= rtol * max(|w|, |w'|), in the workspace buffers
        a32.abs_()
        b32.abs_()
        torch.maximum(a32, b32, out=a32)
        a32.mul_(rtol)
        torch.le(d, a32, out=mask)
        out["n_unchanged_rtol"] += int(torch.count_nonzero(mask))
    return out

