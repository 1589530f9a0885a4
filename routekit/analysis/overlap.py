"""Overlap of the changed sets of two updates of one base, against random-mask expectations.

``overlap_checkpoints(base, a, b)`` streams the three checkpoints one tensor triple at a time;
``overlap(stats_a, stats_b)`` does the same for two ``diff_checkpoints`` results.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError
from .aggregate import breakdown, overlap_group
from .checkpoint import describe, natural_key, open_checkpoint
from .elementwise import CHUNK_ELEMENTS, compute_dtype, same_storage_view
from .names import layer_index, matrix_type
from .pairing import pair_tensors, progress_bar
from .schema import OverlapGroup, OverlapStats, UpdateStats


def _changed(a: torch.Tensor, b: torch.Tensor, tolerance: float | None) -> torch.Tensor:
    """Where b differs from a: in its stored bits (None) or by more than ``tolerance``."""
    if tolerance is None:
        ab, bb = same_storage_view(a, b)
        return ab != bb
    cd = compute_dtype(a, b)
    d = b.to(cd) - a.to(cd)
    return ~(d.abs_() <= tolerance)  # NaN counts as changed


def overlap_checkpoints(
    base: Any,
    tuned_a: Any,
    tuned_b: Any,
    *,
    tolerance: float | None = None,
    progress: bool = False,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> OverlapStats:
    """Overlap of the changed sets of two updates of ``base`` (streamed, one triple at a time).

    An entry is changed when its stored bits differ (``tolerance=None``) or when
    ``|w' - w| > tolerance`` in float32.
    """
    if tolerance is not None and not (tolerance >= 0 and math.isfinite(tolerance)):
        raise ConfigError(f"tolerance must be finite and >= 0, got {tolerance}.")
    t_start = time.perf_counter()
    rb = open_checkpoint(base, label="base")
    ra = open_checkpoint(tuned_a, label="tuned A")
    rbb = open_checkpoint(tuned_b, label="tuned B")
    plan_a, _ = pair_tensors(rb, ra)
    plan_b, _ = pair_tensors(rb, rbb)
    map_b = {n: (bn, tn) for n, bn, tn in plan_b}
    if set(map_b) != {n for n, _, _ in plan_a}:
        raise CheckpointError(
            "tuned A and tuned B pair differently with the base (tied embeddings stored "
            "differently); save both the same way."
        )
    rows: list[OverlapGroup] = []
    with progress_bar(len(plan_a), progress, "overlap") as bar:
        for name, bn, an in plan_a:
            w = rb.get(bn).reshape(-1)
            a = ra.get(an).reshape(-1)
            b = rbb.get(map_b[name][1]).reshape(-1)
            n = w.numel()
            na = nb = nboth = 0
            for s in range(0, n, chunk_elements):
                sl = slice(s, s + chunk_elements)
                ca = _changed(w[sl], a[sl], tolerance)
                cb = _changed(w[sl], b[sl], tolerance)
                na += int(torch.count_nonzero(ca))
                nb += int(torch.count_nonzero(cb))
                nboth += int(torch.count_nonzero(ca & cb))
            rows.append(
                OverlapGroup(
                    name=name,
                    layer=layer_index(name),
                    matrix_type=matrix_type(name),
                    numel=n,
                    n_changed_a=na,
                    n_changed_b=nb,
                    n_changed_both=nboth,
                    expected_both_stratified=(na * nb / n) if n else 0.0,
                )
            )
            del w, a, b
            bar.update(1)
    by_type, by_layer, _ = breakdown(rows, overlap_group)
    return OverlapStats(
        base=describe(rb),
        tuned_a=describe(ra),
        tuned_b=describe(rbb),
        criterion="bitwise" if tolerance is None else f"atol={tolerance:g}",
        tolerance=tolerance,
        overall=overlap_group(rows),
        by_matrix_type=by_type,
        by_layer=by_layer,
        tensors=sorted(rows, key=lambda r: natural_key(r.name or "")),
        seconds_total=time.perf_counter() - t_start,
    )


def overlap(
    stats_a: UpdateStats,
    stats_b: UpdateStats,
    *,
    tolerance: float | None = None,
    progress: bool = False,
) -> OverlapStats:
    """Overlap of two updates of the same base, given their ``diff_checkpoints`` results.

    The changed sets are not stored in UpdateStats (they would be as large as the model), so
    the three checkpoints are streamed again: from their paths, or from the in-memory objects
    the stats were computed from.
    """
    if stats_a.schema_version != stats_b.schema_version:
        raise CheckpointError(
            f"the two diffs were made by different routekit versions (schema "
            f"{stats_a.schema_version} and {stats_b.schema_version}), whose fingerprints cannot "
            "be compared; diff both again, or call overlap_checkpoints(base, tuned_a, tuned_b)."
        )
    if stats_a.base_fingerprint != stats_b.base_fingerprint:
        raise CheckpointError(
            f"the two updates have different bases (fingerprints {stats_a.base_fingerprint} "
            f"and {stats_b.base_fingerprint}; {stats_a.base} vs {stats_b.base}); overlap is "
            "only meaningful for two updates of the same base."
        )

    def sources(s: UpdateStats, which: str) -> tuple[Any, Any]:
        if s._sources is not None:
            return s._sources
        if s.base.startswith("<in-memory") or s.tuned.startswith("<in-memory"):
            raise CheckpointError(
                f"stats {which} were computed from in-memory models and loaded from JSON, so "
                "the models are not at hand; call overlap_checkpoints(base, tuned_a, tuned_b)."
            )
        return s.base, s.tuned

    base_a, tuned_a = sources(stats_a, "A")
    _, tuned_b = sources(stats_b, "B")
    result = overlap_checkpoints(base_a, tuned_a, tuned_b, tolerance=tolerance, progress=progress)
    if tolerance is None:
        ov = result.overall
        expect = (
            stats_a.overall.numel - stats_a.overall.n_bitwise_unchanged,
            stats_b.overall.numel - stats_b.overall.n_bitwise_unchanged,
        )
        if (ov.n_changed_a, ov.n_changed_b) != expect:
            raise CheckpointError(
                "the checkpoints changed since the stats were computed (changed counts "
                f"{(ov.n_changed_a, ov.n_changed_b)} now, {expect} then); diff them again."
            )
    return result
