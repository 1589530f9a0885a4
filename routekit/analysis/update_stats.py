"""How a fine-tuned checkpoint differs from its base: sparsity, tolerance, rank, location, overlap.

``diff_checkpoints(base, tuned)`` streams both checkpoints one tensor pair at a time and
returns :class:`UpdateStats` (pydantic, JSON round-trippable) with, per tensor, per layer, per
matrix type, per (layer, matrix type) and overall:

* the share of parameters bitwise unchanged in the checkpoint's storage dtype (raw bits are
  compared, so a bf16 checkpoint is judged in bf16, not after an upcast);
* the share unchanged within each absolute tolerance ``|w' - w| <= atol`` and within the
  relative tolerance ``|w' - w| <= rtol * max(|w|, |w'|)``, computed in float32 of the stored
  values (float64 when a checkpoint stores float64);
* ``||dW||_F / ||W||_F`` and, for 2-D tensors (``rank="full"``), the rank of ``dW`` with
  ``torch.linalg.matrix_rank``'s default tolerance (``sigma > max(m, n) * eps * sigma_max``),
  rank / min(m, n) and the effective rank ``exp(H(sigma / sum(sigma)))``.

``overlap(stats_a, stats_b)`` (or ``overlap_checkpoints(base, a, b)``) compares the changed
sets I1, I2 of two updates of the same base: o1 = |I1 n I2| / |I1|, o2 = |I1 n I2| / |I2|
(arXiv:2505.11711) and Jaccard, each beside its expectation for independent random masks of
the same densities p1, p2 over the same N entries: E|I1 n I2| = N p1 p2, hence E[o1] = p2,
E[o2] = p1 and Jaccard ~ p1 p2 / (p1 + p2 - p1 p2) (the ratio of expectations, exact as N grows).

This module runs the comparison; the pieces live beside it: ``names`` (tensor name -> layer,
matrix type), ``schema`` (the pydantic results), ``pairing`` (which tensors compare),
``elementwise`` (chunked counts and norms), ``rank`` (SVD figures), ``aggregate`` (group
sums) and ``overlap``. A checkpoint holding NaN or inf is refused with a CheckpointError that
names the tensor and its file, before any SVD.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from typing import Any, Literal

import torch

from ..errors import CheckpointError, ConfigError
from ..io import TensorFingerprint
from .aggregate import breakdown, group_stats
from .checkpoint import CheckpointReader, describe, dtype_name, natural_key, open_checkpoint
from .elementwise import (
    CHUNK_ELEMENTS,
    NonFiniteValues,
    Workspace,
    compute_dtype,
    elementwise_counts,
    nonfinite_counts,
)
from .names import layer_index, matrix_type
from .pairing import pair_tensors, progress_bar
from .rank import rank_stats, resolve_device
from .schema import GroupStats, RunInfo, TensorStats, UpdateStats

DEFAULT_ATOLS: tuple[float, ...] = (1e-8, 1e-7, 1e-6, 1e-5)
DEFAULT_RTOL = 1e-3


def _check_tolerances(atols: Sequence[float], rtol: float) -> list[float]:
    atols = [float(x) for x in atols]
    if not atols:
        raise ConfigError("give at least one absolute tolerance (e.g. 1e-8 1e-7 1e-6 1e-5).")
    bad = [x for x in atols if not (x >= 0 and math.isfinite(x))]
    if bad:
        raise ConfigError(f"absolute tolerances must be finite and >= 0, got {bad}.")
    if not (rtol >= 0 and math.isfinite(rtol)):
        raise ConfigError(f"rtol must be finite and >= 0, got {rtol}.")
    return sorted(atols)


def _refuse_nonfinite(
    err: NonFiniteValues, name: str, readers: dict[str, tuple[CheckpointReader, str]],
    tensors: dict[str, torch.Tensor],
) -> CheckpointError:
    reader, stored = readers[err.side]
    n_nan, n_inf = nonfinite_counts(tensors[err.side])
    return CheckpointError(
        f"tensor {stored!r} in {reader.location(stored)} holds {n_nan} NaN and {n_inf} inf "
        f"value(s) (of {tensors[err.side].numel()}); update statistics of a diverged or "
        "damaged checkpoint mean nothing. Compare a checkpoint saved before training "
        "diverged, or re-save/re-download this one."
    )


def diff_checkpoints(
    base: Any,
    tuned: Any,
    *,
    atols: Sequence[float] = DEFAULT_ATOLS,
    rtol: float = DEFAULT_RTOL,
    rank: Literal["full", "skip"] = "full",
    device: str | torch.device | None = "cpu",
    rank_only: str | None = None,
    progress: bool = False,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> UpdateStats:
    """Compare a fine-tuned checkpoint with its base, one tensor pair in memory at a time.

    ``base`` and ``tuned`` are each a checkpoint directory, a ``.safetensors`` file, a loaded
    ``torch.nn.Module`` or a ``{name: tensor}`` mapping. ``rank="skip"`` leaves the SVDs out
    (the elementwise statistics then stream at disk speed); ``device="cuda"`` runs them on
    the GPU when one is available; ``rank_only`` (a regular expression) ranks only the 2-D
    tensors whose names it matches (``re.search``), e.g. to rank a sample of a large model.
    """
    if rank not in ("full", "skip"):
        raise ConfigError(f"rank must be 'full' or 'skip', got {rank!r}.")
    try:
        rank_re = re.compile(rank_only) if rank_only is not None else None
    except re.error as e:
        raise ConfigError(
            f"rank_only {rank_only!r} is not a valid regular expression ({e})."
        ) from e
    atols = _check_tolerances(atols, rtol)
    if chunk_elements < 1:
        raise ConfigError(f"chunk_elements must be >= 1, got {chunk_elements}.")
    t_start = time.perf_counter()
    rb = open_checkpoint(base, label="base")
    rt = open_checkpoint(tuned, label="tuned")
    plan, notes = pair_tensors(rb, rt)
    rank_device = resolve_device(device) if rank == "full" else None

    fp_base, fp_tuned = TensorFingerprint(), TensorFingerprint()
    tensors: list[TensorStats] = []
    seconds_rank = 0.0
    bytes_compared = 0
    ws = Workspace(chunk_elements)
    with progress_bar(len(plan), progress, "diff") as bar:
        for name, bn, tn in plan:
            a = rb.get(bn)
            b = rt.get(tn)
            bytes_compared += a.numel() * a.element_size() + b.numel() * b.element_size()
            fp_base.add(name, a)
            fp_tuned.add(name, b)
            try:
                counts = elementwise_counts(a, b, atols, rtol, chunk_elements, ws)
            except NonFiniteValues as e:
                raise _refuse_nonfinite(
                    e, name, {"base": (rb, bn), "tuned": (rt, tn)}, {"base": a, "tuned": b}
                ) from None
            ts = TensorStats(
                name=name,
                matrix_type=matrix_type(name),
                layer=layer_index(name),
                shape=list(a.shape),
                base_dtype=dtype_name(a.dtype),
                tuned_dtype=dtype_name(b.dtype),
                base_name=bn if bn != name else None,
                tuned_name=tn if tn != name else None,
                **counts,
            )
            if (
                rank_device is not None
                and a.dim() == 2
                and (a.is_floating_point() or b.is_floating_point())
                and (rank_re is None or rank_re.search(name))
            ):
                t0 = time.perf_counter()
                if ts.n_bitwise_unchanged == ts.numel:
                    r, rf, er = 0, 0.0, 0.0
                else:
                    cd = compute_dtype(a, b)
                    delta = torch.empty(a.shape, dtype=cd)  # never alias a caller's tensor
                    delta.copy_(b)
                    delta.sub_(a)
                    r, rf, er = rank_stats(delta, rank_device)
                    del delta
                dt = time.perf_counter() - t0
                seconds_rank += dt
                ts.rank, ts.rank_fraction, ts.effective_rank, ts.rank_seconds = r, rf, er, dt
            tensors.append(ts)
            del a, b
            bar.update(1)

    # Sums in name order, so that storage order (sharding) cannot change a float's last bit.
    tensors.sort(key=lambda t: natural_key(t.name))
    n_atols = len(atols)

    def make(members: list[TensorStats], **key: Any) -> GroupStats:
        return group_stats(members, n_atols, **key)

    by_type, by_layer, by_layer_type = breakdown(tensors, make)
    seconds = time.perf_counter() - t_start
    stats = UpdateStats(
        base=describe(rb),
        tuned=describe(rt),
        base_fingerprint=fp_base.hexdigest(),
        tuned_fingerprint=fp_tuned.hexdigest(),
        atols=atols,
        rtol=rtol,
        rank_mode=rank,
        rank_only=rank_only if rank == "full" else None,
        storage_dtypes={
            "base": sorted({t.base_dtype for t in tensors}),
            "tuned": sorted({t.tuned_dtype for t in tensors}),
        },
        n_tensors=len(tensors),
        params_compared=sum(t.numel for t in tensors),
        tied=notes,
        overall=group_stats(tensors, n_atols),
        by_matrix_type=by_type,
        by_layer=by_layer,
        by_layer_type=by_layer_type,
        tensors=tensors,
        run=RunInfo(
            seconds_total=seconds,
            seconds_rank=seconds_rank,
            rank_device=str(rank_device) if rank_device is not None else None,
            bytes_compared=bytes_compared,
            gb_per_s=bytes_compared / 1e9 / seconds if seconds > 0 else 0.0,
        ),
    )
    if rb.source is None or rt.source is None:
        stats._sources = (base, tuned)
    return stats
