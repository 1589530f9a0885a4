"""Pairing the tensors of two checkpoints by name (tied embeddings resolved), checked first."""

from __future__ import annotations

import sys

from ..errors import CheckpointError
from .checkpoint import CheckpointReader, natural_key
from .names import format_names


def _check_configs(a: CheckpointReader, b: CheckpointReader) -> None:
    ca, cb = a.config or {}, b.config or {}
    ta, tb = ca.get("model_type"), cb.get("model_type")
    if ta and tb and ta != tb:
        raise CheckpointError(
            f"{a.label} is a {ta!r} checkpoint ({ca.get('architectures')}) but {b.label} is a "
            f"{tb!r} one ({cb.get('architectures')}): they have different architectures. "
            "Compare a fine-tuned checkpoint with the base it was trained from."
        )


def pair_tensors(
    base: CheckpointReader, tuned: CheckpointReader
) -> tuple[list[tuple[str, str, str]], list[str]]:
    """``[(name, base_name, tuned_name)]`` in the base's storage order, and notes on ties.

    Raises CheckpointError for tensors present in one checkpoint only (tied embeddings are
    resolved, not errors) and for the first tensor whose shapes differ.
    """
    _check_configs(base, tuned)
    plan: list[tuple[str, str, str]] = []
    notes: list[str] = []
    missing_in_tuned: list[str] = []
    missing_in_base: list[str] = []
    for n in base.order:
        if n in tuned.shapes:
            plan.append((n, n, n))
        elif n in tuned.aliases:
            plan.append((n, n, tuned.aliases[n]))
            notes.append(f"{n}: {tuned.label} ties it to {tuned.aliases[n]}")
        else:
            missing_in_tuned.append(n)
    for n in tuned.order:
        if n in base.shapes:
            continue
        if n in base.aliases:
            plan.append((n, base.aliases[n], n))
            notes.append(f"{n}: {base.label} ties it to {base.aliases[n]}")
        else:
            missing_in_base.append(n)
    for n in sorted(set(base.aliases) & set(tuned.aliases), key=natural_key):
        notes.append(f"{n}: tied in both ({base.label}: {base.aliases[n]}), compared once")
    if missing_in_tuned or missing_in_base:
        parts = []
        if missing_in_tuned:
            parts.append(
                f"{len(missing_in_tuned)} tensor(s) of {base.label} are missing from "
                f"{tuned.label}: {format_names(missing_in_tuned)}"
            )
        if missing_in_base:
            parts.append(
                f"{len(missing_in_base)} tensor(s) of {tuned.label} are missing from "
                f"{base.label}: {format_names(missing_in_base)}"
            )
        raise CheckpointError(
            "; ".join(parts)
            + ". The checkpoints do not have the same architecture (or one is incomplete); "
            "compare a fine-tuned checkpoint with the base it was trained from."
        )
    for n, bn, tn in sorted(plan, key=lambda x: natural_key(x[0])):
        if base.shapes[bn] != tuned.shapes[tn]:
            raise CheckpointError(
                f"the checkpoints differ in shape: the first differing tensor is {n!r}, "
                f"{list(base.shapes[bn])} in {base.label} but {list(tuned.shapes[tn])} in "
                f"{tuned.label}. They are not the same architecture/size; compare a fine-tuned "
                "checkpoint with the base it was trained from."
            )
    return plan, notes



def progress_bar(total: int, enabled: bool, desc: str):
    """A tqdm bar over tensors on stderr (disabled: a no-op bar)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="tensor", disable=not enabled, file=sys.stderr)
