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
"""

from __future__ import annotations

import hashlib
import math
import re
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, computed_field

from ..errors import CheckpointError, ConfigError
from .checkpoint import CheckpointReader, describe, dtype_name, natural_key, open_checkpoint

DEFAULT_ATOLS: tuple[float, ...] = (1e-8, 1e-7, 1e-6, 1e-5)
DEFAULT_RTOL = 1e-3
CHUNK_ELEMENTS = 1 << 24  # elements per chunk of the elementwise statistics (64 MiB in fp32)

MATRIX_TYPES: tuple[str, ...] = (
    "embed",
    "q",
    "k",
    "v",
    "qkv",
    "o",
    "gate",
    "up",
    "down",
    "norm",
    "head",
    "other",
)

_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)\.")
_DIRECT_TYPES = {
    "q_proj": "q",
    "k_proj": "k",
    "v_proj": "v",
    "o_proj": "o",
    "gate_proj": "gate",
    "up_proj": "up",
    "down_proj": "down",
    "qkv_proj": "qkv",
    "c_attn": "qkv",
    "query_key_value": "qkv",
    "c_fc": "up",
    "lm_head": "head",
    "embed_out": "head",
    "embed_tokens": "embed",
    "wte": "embed",
    "wpe": "embed",
    "word_embeddings": "embed",
}


def matrix_type(name: str) -> str:
    """The matrix type of a tensor name (Llama/Qwen2/Mistral and GPT-2 naming), else 'other'."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part in _DIRECT_TYPES:
            return _DIRECT_TYPES[part]
        if part == "c_proj":  # GPT-2: attn.c_proj is the output projection, mlp.c_proj the down one
            parent = parts[i - 1] if i else ""
            return "o" if parent == "attn" else "down" if parent == "mlp" else "other"
        if "norm" in part or re.fullmatch(r"ln_\w+", part):
            return "norm"
    return "other"


def layer_index(name: str) -> int | None:
    """The decoder layer of a tensor name (``layers.N.`` or ``h.N.``), None outside layers."""
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------------------------
# pydantic models


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


class UpdateStats(BaseModel):
    """Result of ``diff_checkpoints``; ``model_validate_json(model_dump_json())`` round-trips."""

    model_config = ConfigDict(ser_json_inf_nan="constants")

    schema_version: int = 1
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
        """The group for a matrix type, a layer, or a (layer, type) cell."""
        if matrix_type is not None and layer is not None:
            pool: Iterable[GroupStats] = self.by_layer_type
        elif matrix_type is not None:
            pool = self.by_matrix_type
        elif layer is not None:
            pool = self.by_layer
        else:
            return self.overall
        for g in pool:
            if (matrix_type is None or g.matrix_type == matrix_type) and (
                layer is None or g.layer == layer
            ):
                return g
        raise KeyError(f"no group for matrix_type={matrix_type!r}, layer={layer!r}")

    def tensor(self, name: str) -> TensorStats:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

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


# --------------------------------------------------------------------------------------------
# pairing the tensors of two checkpoints


def _check_configs(a: CheckpointReader, b: CheckpointReader) -> None:
    ca, cb = a.config or {}, b.config or {}
    ta, tb = ca.get("model_type"), cb.get("model_type")
    if ta and tb and ta != tb:
        raise CheckpointError(
            f"{a.label} is a {ta!r} checkpoint ({ca.get('architectures')}) but {b.label} is a "
            f"{tb!r} one ({cb.get('architectures')}): they have different architectures. "
            "Compare a fine-tuned checkpoint with the base it was trained from."
        )


def _fmt_names(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" ... and {len(names) - limit} more" if len(names) > limit else "")


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
                f"{tuned.label}: {_fmt_names(missing_in_tuned)}"
            )
        if missing_in_base:
            parts.append(
                f"{len(missing_in_base)} tensor(s) of {tuned.label} are missing from "
                f"{base.label}: {_fmt_names(missing_in_base)}"
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


# --------------------------------------------------------------------------------------------
# elementwise statistics


_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw storage bits of a tensor as an integer tensor of the same element size."""
    if t.dtype == torch.bool:
        return t.view(torch.uint8)
    if t.is_floating_point():
        return t.view(_INT_OF_SIZE[t.element_size()])
    return t


def _compute_dtype(*ts: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def _same_storage_view(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bit views of a and b for comparison; checkpoints that store different dtypes are compared
    after an exact widening to the common dtype."""
    if a.dtype != b.dtype:
        common = torch.promote_types(a.dtype, b.dtype)
        a, b = a.to(common), b.to(common)
    return _bits(a), _bits(b)


def _tensor_digest(name: str, t: torch.Tensor) -> bytes:
    """Digest of a tensor's name, shape, dtype and a strided sample of its stored bits."""
    h = hashlib.sha256(f"{name}|{tuple(t.shape)}|{dtype_name(t.dtype)}|".encode())
    flat = _bits(t).reshape(-1)
    if flat.numel() > 8192:
        flat = flat[:: flat.numel() // 4096]
    h.update(flat.contiguous().numpy().tobytes())
    return h.digest()


def _fingerprint(digests: dict[str, bytes]) -> str:
    """Combine per-tensor digests in name order, so sharding and storage order do not matter."""
    h = hashlib.sha256()
    for name in sorted(digests):
        h.update(digests[name])
    return h.hexdigest()[:16]


class _Workspace:
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


def _elementwise(
    a: torch.Tensor,
    b: torch.Tensor,
    atols: Sequence[float],
    rtol: float,
    chunk: int,
    ws: _Workspace | None = None,
) -> dict[str, Any]:
    """Counts and sums of the difference b - a, chunk by chunk over the flattened tensors."""
    ws = ws or _Workspace(chunk)
    a = a.reshape(-1)
    b = b.reshape(-1)
    n = a.numel()
    cd = _compute_dtype(a, b)
    out: dict[str, Any] = {
        "numel": n,
        "n_bitwise_unchanged": 0,
        "n_unchanged_atol": [0] * len(atols),
        "n_unchanged_rtol": 0,
        "sum_sq_delta": 0.0,
        "sum_sq_base": 0.0,
        "max_abs_delta": 0.0,
    }
    ab, bb = _same_storage_view(a, b)
    unchanged_whole = torch.equal(ab, bb)  # fast path: the whole tensor is bitwise unchanged
    for s in range(0, n, chunk):
        ac, bc = a[s : s + chunk], b[s : s + chunk]
        m = ac.numel()
        a32 = ws.get("a", cd, m)
        sq = ws.get("sq", cd, m)
        a32.copy_(ac)
        out["sum_sq_base"] += _sum_sq_into(a32, sq)
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
        out["sum_sq_delta"] += _sum_sq_into(d, sq)
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


# --------------------------------------------------------------------------------------------
# rank


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


# --------------------------------------------------------------------------------------------
# aggregation


def _group(
    members: list[TensorStats], n_atols: int, layer: int | None = None, mtype: str | None = None
) -> GroupStats:
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


def _type_order(t: str | None) -> int:
    return MATRIX_TYPES.index(t) if t in MATRIX_TYPES else len(MATRIX_TYPES)


def _layer_order(layer: int | None) -> int:
    return -1 if layer is None else layer


# --------------------------------------------------------------------------------------------
# public API


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


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="tensor", disable=not enabled, file=sys.stderr)


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

    digests_base: dict[str, bytes] = {}
    digests_tuned: dict[str, bytes] = {}
    tensors: list[TensorStats] = []
    seconds_rank = 0.0
    bytes_compared = 0
    ws = _Workspace(chunk_elements)
    with _progress(len(plan), progress, "diff") as bar:
        for name, bn, tn in plan:
            a = rb.get(bn)
            b = rt.get(tn)
            bytes_compared += a.numel() * a.element_size() + b.numel() * b.element_size()
            digests_base[name] = _tensor_digest(name, a)
            digests_tuned[name] = _tensor_digest(name, b)
            counts = _elementwise(a, b, atols, rtol, chunk_elements, ws)
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
                    cd = _compute_dtype(a, b)
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
    types = sorted({t.matrix_type for t in tensors}, key=_type_order)
    layers = sorted({t.layer for t in tensors}, key=_layer_order)
    by_type = [_group([t for t in tensors if t.matrix_type == m], n_atols, mtype=m) for m in types]
    by_layer = [_group([t for t in tensors if t.layer == ly], n_atols, layer=ly) for ly in layers]
    by_layer_type = []
    for ly in layers:
        for m in types:
            members = [t for t in tensors if t.layer == ly and t.matrix_type == m]
            if members:
                by_layer_type.append(_group(members, n_atols, layer=ly, mtype=m))
    seconds = time.perf_counter() - t_start
    stats = UpdateStats(
        base=describe(rb),
        tuned=describe(rt),
        base_fingerprint=_fingerprint(digests_base),
        tuned_fingerprint=_fingerprint(digests_tuned),
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
        overall=_group(tensors, n_atols),
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


def _changed(a: torch.Tensor, b: torch.Tensor, tolerance: float | None) -> torch.Tensor:
    if tolerance is None:
        ab, bb = _same_storage_view(a, b)
        return ab != bb
    cd = _compute_dtype(a, b)
    d = b.to(cd) - a.to(cd)
    return ~(d.abs_() <= tolerance)  # NaN counts as changed


def _overlap_group(
    rows: list[OverlapGroup],
    name: str | None = None,
    layer: int | None = None,
    mtype: str | None = None,
) -> OverlapGroup:
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
    with _progress(len(plan_a), progress, "overlap") as bar:
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
    types = sorted({r.matrix_type for r in rows}, key=_type_order)
    layers = sorted({r.layer for r in rows}, key=_layer_order)
    return OverlapStats(
        base=describe(rb),
        tuned_a=describe(ra),
        tuned_b=describe(rbb),
        criterion="bitwise" if tolerance is None else f"atol={tolerance:g}",
        tolerance=tolerance,
        overall=_overlap_group(rows),
        by_matrix_type=[
            _overlap_group([r for r in rows if r.matrix_type == m], mtype=m) for m in types
        ],
        by_layer=[_overlap_group([r for r in rows if r.layer == ly], layer=ly) for ly in layers],
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
