"""Analysis tools: ``diff_checkpoints`` measures how a fine-tuned checkpoint differs from its base.

Modules: ``checkpoint`` (streaming readers), ``pairing``, ``names``, ``schema`` (results),
``elementwise``, ``rank``, ``aggregate``, ``overlap``, ``update_stats`` (``diff_checkpoints``),
``diff_report`` (tables, markdown, plots) and ``commands`` (``routekit diff``).
"""

from .checkpoint import CheckpointReader, open_checkpoint
from .names import layer_index, matrix_type
from .overlap import overlap, overlap_checkpoints
from .schema import (
    GroupStats,
    OverlapGroup,
    OverlapStats,
    TensorStats,
    UnknownStatsKeyError,
    UpdateStats,
)
from .update_stats import DEFAULT_ATOLS, DEFAULT_RTOL, diff_checkpoints

__all__ = [
    "CheckpointReader",
    "open_checkpoint",
    "DEFAULT_ATOLS",
    "DEFAULT_RTOL",
    "GroupStats",
    "OverlapGroup",
    "OverlapStats",
    "TensorStats",
    "UnknownStatsKeyError",
    "UpdateStats",
    "diff_checkpoints",
    "layer_index",
    "matrix_type",
    "overlap",
    "overlap_checkpoints",
]
