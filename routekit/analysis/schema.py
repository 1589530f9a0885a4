"""The result schema of ``routekit diff``: pydantic models that round-trip through JSON.

:class:`UpdateStats` (one base/tuned comparison: per tensor, per group and overall counts)
and :class:`OverlapStats` (where two updates of one base overlap). Shares and ratios are
computed fields derived from the stored counts, so a loaded result recomputes them exactly.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, computed_field

from ..errors import RoutekitError
from .names import MATRIX_TYPES, format_names


class UnknownStatsKeyError(RoutekitError, KeyError):
    """A group or tensor that an UpdateStats result does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class _Counts(BaseModel):
    """Counts shared by a tensor and a group of tensors; shares are derived from them."""

    model_config = ConfigDict(ser_json_inf_nan="constants")

    numel: int
    n_bitwise_unchanged: int
    n_unchanged_atol: list[int]  # aligned with UpdateStats.atols
    n_unchanged_rtol: int
    sum_sq_delta: float
    sum_sq_base: float
    max_abs_delta: float

    @computed_field  # type: ignore[prop-decorator]
    @property
    def share_bitwise_unchanged(self) -> float:
        return self.n_bitwise_unchanged / self.numel if self.numel else 1.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def density(self) -> float:
        """Share of entries whose stored bits changed (the update density)."""
        return 1.0 - self.share_bitwise_unchanged

    @computed_field  # type: ignore[prop-decorator]
    @property
    def share_unchanged_atol(self) -> list[float]:
        return [n / self.numel if self.numel else 1.0 for n in self.n_unchanged_atol]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def share_unchanged_rtol(self) -> float:
        return self.n_unchanged_rtol / self.numel if self.numel else 1.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def rel_frob_norm(self) -> float | None:
        """||dW||_F / ||W||_F (None when ||W||_F is 0)."""
        if self.sum_sq_base <= 0:
            return None if self.sum_sq_delta > 0 else 0.0
        return math.sqrt(self.sum_sq_delta) / math.sqrt(self.sum_sq_base)


class TensorStats(_Counts):
    name: str
    matrix_type: str
    layer: int | None
    shape: list[int]
    base_dtype: str
    tuned_dtype: str
    tuned_name: str | None = None  # set when the tuned tensor is stored under another name (tied)
    base_name: str | None = None  # likewise for the base
    rank: int | None = None
    rank_fraction: float | None = None
    effective_rank: float | None = None
    rank_seconds: float | None = None


class GroupStats(_Counts):
    """Sums over a group of tensors (a layer, a matrix type, a (layer, type) cell, or all)."""

    layer: int | None = None
    matrix_type: str | None = None
    n_tensors: int
    n_ranked: int = 0
    mean_rank_fraction: float | None = None
    mean_effective_rank: float | None = None


class RunInfo(BaseModel):
    """How the comparison ran (excluded when comparing two results for equality)."""

    seconds_total: float
    seconds_rank: float
    rank_device: str | None
    bytes_compared: int
    gb_per_s: float
    torch_version: str = torch.__version__


# Version 2: base/tuned fingerprints use routekit.io's one tensor-fingerprint scheme (the one
# experts and model_fingerprint use); version 1 hashed tensors its own way.
UPDATE_STATS_SCHEMA = 2


class UpdateStats(BaseModel):
    """Result of ``diff_checkpoints``; ``model_validate_json(model_dump_json())`` round-trips."""

    model_config = ConfigDict(ser_json_inf_nan="constants")

    schema_version: int = UPDATE_STATS_SCHEMA
    base: str
    tuned: str
    base_fingerprint: str
    tuned_fingerprint: str
    atols: list[float]
    rtol: float
    rank_mode: Literal["full", "skip"]
    rank_only: str | None = None  # regex: only matching 2-D tensors were ranked
    storage_dtypes: dict[str, list[str]]  # {"base": [...], "tuned": [...]}
    n_tensors: int
    params_compared: int
    tied: list[str] = Field(default_factory=list)
    overall: GroupStats
    by_matrix_type: list[GroupStats]
    by_layer: list[GroupStats]
    by_layer_type: list[GroupStats]
    tensors: list[TensorStats]
    run: RunInfo

    # The in-memory objects compared, kept so that overlap() can re-read them (never serialised).
    _sources: tuple[Any, Any] | None = PrivateAttr(default=None)

    def group(self, matrix_type: str | None = None, layer: int | None = None) -> GroupStats:
        """The group for a matrix type, a layer, or a (layer, type) cell; no argument: overall.

        Raises UnknownStatsKeyError (a KeyError) naming the key and the groups this result
        holds.
        """
        if matrix_type is not None and layer is not None:
            pool: list[GroupStats] = self.by_layer_type
            known = [f"(layer={g.layer}, {g.matrix_type!r})" for g in pool]
        elif matrix_type is not None:
            pool = self.by_matrix_type
            known = [repr(g.matrix_type) for g in pool]
        elif layer is not None:
            pool = self.by_layer
            known = [str(g.layer) for g in pool]
        else:
            return self.overall
        for g in pool:
            if (matrix_type is None or g.matrix_type == matrix_type) and (
                layer is None or g.layer == layer
            ):
                return g
        raise UnknownStatsKeyError(
            f"this diff has no group for matrix_type={matrix_type!r}, layer={layer!r}; it holds "
            f"{format_names(known, quote=False)}. (Matrix types are {', '.join(MATRIX_TYPES)}; "
            "a layer is the N of 'layers.N.', None outside the decoder layers.)"
        )

    def tensor(self, name: str) -> TensorStats:
        """The statistics of one tensor, by its name in the base checkpoint.

        Raises UnknownStatsKeyError (a KeyError) naming the tensor, the closest known names
        and how many tensors the result holds.
        """
        for t in self.tensors:
            if t.name == name:
                return t
        names = [t.name for t in self.tensors]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        hint = f" Closest names: {format_names(close)}." if close else ""
        raise UnknownStatsKeyError(
            f"this diff has no tensor {name!r}.{hint} It compared {len(names)} tensor(s): "
            f"{format_names(names, limit=8)}; list them all with [t.name for t in stats.tensors]."
        )

    def comparable_dump(self) -> dict[str, Any]:
        """The statistics without timing and sources: equal for equal checkpoint contents."""
        d = self.model_dump(exclude={"run", "base", "tuned"})
        for t in d["tensors"]:
            t.pop("rank_seconds", None)
        return d


class OverlapGroup(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="constants")

    name: str | None = None
    layer: int | None = None
    matrix_type: str | None = None
    numel: int
    n_changed_a: int
    n_changed_b: int
    n_changed_both: int
    expected_both_stratified: float  # sum over tensors of n_t * p1_t * p2_t

    @computed_field  # type: ignore[prop-decorator]
    @property
    def density_a(self) -> float:
        return self.n_changed_a / self.numel if self.numel else 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def density_b(self) -> float:
        return self.n_changed_b / self.numel if self.numel else 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def o1(self) -> float | None:
        """|I1 n I2| / |I1|."""
        return self.n_changed_both / self.n_changed_a if self.n_changed_a else None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def o2(self) -> float | None:
        """|I1 n I2| / |I2|."""
        return self.n_changed_both / self.n_changed_b if self.n_changed_b else None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def jaccard(self) -> float | None:
        union = self.n_changed_a + self.n_changed_b - self.n_changed_both
        return self.n_changed_both / union if union else None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def expected_o1(self) -> float | None:
        """E[o1] for independent random masks of the same densities: p2."""
        return self.density_b if self.n_changed_a else None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def expected_o2(self) -> float | None:
        """E[o2] for independent random masks of the same densities: p1."""
        return self.density_a if self.n_changed_b else None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def expected_jaccard(self) -> float | None:
        """p1 p2 / (p1 + p2 - p1 p2) for independent random masks of the same densities."""
        p1, p2 = self.density_a, self.density_b
        denom = p1 + p2 - p1 * p2
        return p1 * p2 / denom if denom > 0 else None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def expected_o1_stratified(self) -> float | None:
        """E[o1] when each tensor gets its own random mask of its own densities."""
        return self.expected_both_stratified / self.n_changed_a if self.n_changed_a else None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def expected_o2_stratified(self) -> float | None:
        return self.expected_both_stratified / self.n_changed_b if self.n_changed_b else None


class OverlapStats(BaseModel):
    """Overlap of the changed sets of two updates of the same base."""

    model_config = ConfigDict(ser_json_inf_nan="constants")

    schema_version: int = 1
    base: str
    tuned_a: str
    tuned_b: str
    criterion: str  # "bitwise" or "atol=..."
    tolerance: float | None
    overall: OverlapGroup
    by_matrix_type: list[OverlapGroup]
    by_layer: list[OverlapGroup]
    tensors: list[OverlapGroup]
    seconds_total: float

