"""Analysis tools: ``diff_checkpoints`` measures how a fine-tuned checkpoint differs from its base."""

from .checkpoint import CheckpointReader, open_checkpoint
from .update_stats import (
    DEFAULT_ATOLS,
    DEFAULT_RTOL,
    GroupStats,
    OverlapGroup,
    OverlapStats,
    TensorStats,
    UpdateStats,
    diff_checkpoints,
    layer_index,
    matrix_type,
    overlap,
    overlap_checkpoints,
)

__all__ = [
    "CheckpointReader",
    "open_checkpoint",
    "DEFAULT_ATOLS",
    "DEFAULT_RTOL",
    "GroupStats",
    "OverlapGroup",
    "OverlapStats",
    "TensorStats",
    "UpdateStats",
    "diff_checkpoints",
    "layer_index",
    "matrix_type",
    "overlap",
    "overlap_checkpoints",
]
