"""Summing per-tensor rows into groups: per matrix type, per layer, per (layer, type), overall."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from .names import layer_order, type_order
from .schema import GroupStats, OverlapGroup, TensorStats

Row = TypeVar("Row", TensorStats, OverlapGroup)
Group = TypeVar("Group", GroupStats, OverlapGroup)


def group_stats(
    members: Sequence[TensorStats], n_atols: int, layer: int | None = None,
    mtype: str | None = None,
) -> GroupStats:
    """Counts summed over ``members``; rank figures are means over the ranked ones."""
    ranked = [t for t in members if t.rank is not None]
    return GroupStats(
        layer=layer,
        matrix_type=mtype,
        n_tensors=len(members),
        numel=sum(t.numel for t in members),
        n_bitwise_unchanged=sum(t.n_bitwise_unchanged for t in members),
        n_unchanged_atol=[sum(t.n_unchanged_atol[i] for t in members) for i in range(n_atols)],
        n_unchanged_rtol=sum(t.n_unchanged_rtol for t in members),
        sum_sq_delta=sum(t.sum_sq_delta for t in members),
        sum_sq_base=sum(t.sum_sq_base for t in members),
        max_abs_delta=max((t.max_abs_delta for t in members), default=0.0),
        n_ranked=len(ranked),
        mean_rank_fraction=(
            sum(t.rank_fraction or 0.0 for t in ranked) / len(ranked) if ranked else None
        ),
        mean_effective_rank=(
            sum(t.effective_rank or 0.0 for t in ranked) / len(ranked) if ranked else None
        ),
    )


def overlap_group(
    rows: Sequence[OverlapGroup],
    name: str | None = None,
    layer: int | None = None,
    mtype: str | None = None,
) -> OverlapGroup:
    """Changed counts (and the stratified expectation) summed over ``rows``."""
    return OverlapGroup(
        name=name,
        layer=layer,
        matrix_type=mtype,
        numel=sum(r.numel for r in rows),
        n_changed_a=sum(r.n_changed_a for r in rows),
        n_changed_b=sum(r.n_changed_b for r in rows),
        n_changed_both=sum(r.n_changed_both for r in rows),
        expected_both_stratified=sum(r.expected_both_stratified for r in rows),
    )


def breakdown(
    rows: Sequence[Row], make: Callable[..., Group]
) -> tuple[list[Group], list[Group], list[Group]]:
    """``(by_matrix_type, by_layer, by_layer_type)`` groups of ``rows``, each in a fixed order.

    ``make(members, layer=..., mtype=...)`` builds one group; rows must carry ``layer`` and
    ``matrix_type``. Empty (layer, type) cells are left out.
    """
    types = sorted({r.matrix_type for r in rows}, key=type_order)
    layers = sorted({r.layer for r in rows}, key=layer_order)
    by_type = [make([r for r in rows if r.matrix_type == m], mtype=m) for m in types]
    by_layer = [make([r for r in rows if r.layer == ly], layer=ly) for ly in layers]
    by_cell = []
    for ly in layers:
        for m in types:
            members = [r for r in rows if r.layer == ly and r.matrix_type == m]
            if members:
                by_cell.append(make(members, layer=ly, mtype=m))
    return by_type, by_layer, by_cell
