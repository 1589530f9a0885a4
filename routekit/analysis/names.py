"""Tensor names -> decoder layer and matrix type (Llama/Qwen2/Mistral and GPT-2 naming)."""

from __future__ import annotations

import re
from collections.abc import Sequence

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



def type_order(t: str | None) -> int:
    """Sort key: matrix types in MATRIX_TYPES order, unknown ones last."""
    return MATRIX_TYPES.index(t) if t in MATRIX_TYPES else len(MATRIX_TYPES)


def layer_order(layer: int | None) -> int:
    """Sort key: tensors outside the decoder layers first, then layers in order."""
    return -1 if layer is None else layer


def format_names(names: Sequence[str], limit: int = 20, quote: bool = True) -> str:
    """``'a', 'b' ... and N more``: at most ``limit`` names for an error message."""
    if not names:
        return "none"
    shown = ", ".join(repr(n) if quote else n for n in names[:limit])
    return shown + (f" ... and {len(names) - limit} more" if len(names) > limit else "")
