"""SVFConfig and the rule that turns ``target_modules`` into the layers an SVF model wraps."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, field_validator
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..cache import cache_root
from ..errors import ConfigError

PRESETS = ("mlp", "attention", "all-linear")
FACTOR_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
# Path components that mark a feed-forward or an attention block across HF architectures
# (Llama/Qwen2/Mistral: mlp/self_attn; GPT-2: mlp/attn; others: feed_forward, attention).
_MLP_PARTS = {"mlp", "feed_forward", "ffn", "mlp_block"}
_ATTN_SUFFIXES = ("attn", "attention")


class SVFConfig(BaseModel):
    """Which layers get an SVF vector ``z``, how ``z`` starts, and how factors are stored.

    target_modules: "mlp" (default), "attention", "all-linear" (every linear layer but the
        LM head), a list of module-name suffixes (``["q_proj", "v_proj"]``), or a regular
        expression prefixed ``"re:"`` that must match a full module name.
    z_init: starting value of every entry of z; 1.0 makes an untrained expert the base (up to
        the float32 rounding of the SVD reconstruction; see ``routekit.svf.factors``).
    factor_dtype: dtype of the stored U and Vh (the SVD itself always runs in float32, the
        cache holds float32, S and S ⊙ z stay float32 and are never rounded to it).
        "bfloat16" halves the factors' memory and makes the factored forward compute in
        bf16. Measured on smollm2 (a float32 base, "mlp", 8 × 64 random tokens), max |z = 1
        logits − base logits| / max |base logits| is 7.5e-2 with bf16 factors (2.7e-2 from
        rounding U and Vh alone, the rest from computing in bf16; rounding the MLP weights
        themselves to bf16 gives 5.7e-3) against 1.3e-5 with float32 factors
        (``benchmarks/bench_real.py``, row ``logit_err``). So it suits a bf16 base, which
        computes in bf16 anyway, rather than a float32 one. Merges and
        ``merge_and_unload`` still compute W + ΔW in float32.
    cache_dir: where SVD factors are cached, one file per weight matrix named by its
        fingerprint (``routekit.svf.factors``); default ``$ROUTEKIT_CACHE/svf_factors`` or
        ``~/.cache/routekit/svf_factors``.

    Memory, per wrapped (out × in) layer with r = min(out, in):

    - factors: r · (out + in) numbers of ``factor_dtype`` (U and Vh) + 2r float32 (S, z):
      (1 + r / max(out, in)) × the layer's weight in float32, half that in bf16. For
      smollm2's MLP: 0.44 GB float32, 0.22 GB bf16, against 0.32 GB of weights.
    - the base weight: nothing while it is memory-mapped from a safetensors checkpoint and
      unmodified (transformers' default on CPU): its pages go back to disk after the SVD,
      and come back only while something reads it (``disable_adapter``'s base forward,
      ``unload``, a merge). A weight in ordinary memory (a GPU, a dtype conversion at
      load, a model built or changed in memory) stays: its full size.
    - merged (``merge``, ``merged``, RL sampling): one W' per layer in the base's dtype;
      the original is set aside, not copied (a mapped one stays on disk).
    - the SVD: one layer's float32 copy and workspace at a time.
    """

    model_config = ConfigDict(extra="forbid")

    target_modules: str | list[str] = "mlp"
    z_init: float = 1.0
    factor_dtype: str = "float32"
    cache_dir: str | None = None

    @field_validator("target_modules")
    @classmethod
    def _check_targets(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list):
            if not v or not all(isinstance(s, str) and s for s in v):
                raise ValueError(f"target_modules list must hold module-name suffixes, got {v!r}")
            return v
        if v in PRESETS:
            return v
        if v.startswith("re:"):
            try:
                re.compile(v[3:])
            except re.error as e:
                raise ValueError(f"target_modules regex {v[3:]!r} does not compile: {e}") from e
            return v
        raise ValueError(
            f"target_modules {v!r} is not one of {PRESETS}; pass a list for module names "
            f"(e.g. [{v!r}]) or 're:<regex>' for a regular expression"
        )

    @field_validator("z_init")
    @classmethod
    def _check_z_init(cls, v: float) -> float:
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError(f"z_init must be finite, got {v!r}")
        return v

    @field_validator("factor_dtype")
    @classmethod
    def _check_dtype(cls, v: str) -> str:
        if v not in FACTOR_DTYPES:
            raise ValueError(f"factor_dtype {v!r} is not one of {sorted(FACTOR_DTYPES)}")
        return v

    @property
    def torch_factor_dtype(self) -> torch.dtype:
        return FACTOR_DTYPES[self.factor_dtype]

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir)
        return cache_root() / "svf_factors"


def _in_block(name: str, kind: str) -> bool:
    parts = name.split(".")[:-1]
    if kind == "mlp":
        return any(p in _MLP_PARTS for p in parts)
    return any(p.endswith(_ATTN_SUFFIXES) for p in parts)


def _matches(name: str, spec: str | list[str]) -> bool:
    if isinstance(spec, list):
        return any(name == s or name.endswith("." + s) for s in spec)
    if spec == "all-linear":
        return True
    if spec.startswith("re:"):
        return re.fullmatch(spec[3:], name) is not None
    return _in_block(name, spec)


def linear_candidates(model: nn.Module) -> dict[str, nn.Module]:
    """Every ``nn.Linear``/GPT-2 ``Conv1D`` that SVF may wrap: all but the output embeddings."""
    get_out = getattr(model, "get_output_embeddings", None)
    out_emb = get_out() if callable(get_out) else None
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, Conv1D)) and m is not out_emb and name.split(".")[-1] != "lm_head"
    }


# A linear inside a mixture-of-experts block's expert list (``mlp.experts.3.w1``) sees only
# the tokens routed to that expert, packed together, so its dimension 0 is not the batch.
_ROUTED_EXPERT = re.compile(r"(^|\.)experts\.\d+(\.|$)")


def fused_expert_parameters(model: nn.Module, spec: str | list[str] = "all-linear") -> list[str]:
    """3-D expert weights (transformers 5 fuses MoE experts into ``experts.gate_up_proj`` of
    shape experts × out × in) inside the blocks a preset ``spec`` covers."""
    return [
        n for n, p in model.named_parameters()
        if p.dim() == 3 and "experts" in n.split(".")[:-1]
        and (not isinstance(spec, str) or spec == "all-linear" or spec.startswith("re:")
             or _in_block(n, spec))
    ]


def _refuse_moe(model: nn.Module, spec: str | list[str], chosen: dict[str, nn.Module]) -> None:
    routed = [n for n in chosen if _ROUTED_EXPERT.search(n)]
    if routed:
        raise ConfigError(
            f"target_modules {spec!r} selects mixture-of-experts expert layers ({', '.join(routed[:3])}"
            f"{', ...' if len(routed) > 3 else ''}), which receive routed tokens, not batch rows, so "
            "a per-row z cannot apply; SVF does not support MoE experts. Target attention or "
            "the dense (shared) layers with a list of names instead."
        )
    if isinstance(spec, str) and spec in PRESETS:
        fused = fused_expert_parameters(model, spec)
        if fused:
            raise ConfigError(
                f"target_modules {spec!r} covers {type(model).__name__}'s fused mixture-of-experts "
                f"weights ({', '.join(fused[:3])}{', ...' if len(fused) > 3 else ''}: 3-D, one "
                "matrix per expert, fed routed tokens), which SVF does not support. Use "
                "'attention', or a list naming dense layers (e.g. ['shared_expert.up_proj'])."
            )


_FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def quantization_of(layer: nn.Module) -> str | None:
    """Why ``layer`` is a quantized linear (bitsandbytes, GPTQ/AWQ, torchao, fp8 ...), or None.

    Such layers subclass ``nn.Linear`` but hold packed integers or a tensor subclass, not a
    floating-point matrix: an SVD of their ``weight`` would factor the packing, not W."""
    cls = type(layer)
    w = getattr(layer, "weight", None)
    if not isinstance(w, torch.Tensor):
        return f"its weight is {type(w).__name__}, not a tensor"
    if w.dtype not in _FLOAT_DTYPES:
        return f"its weight is {w.dtype}"
    if type(w) not in (nn.Parameter, torch.Tensor):
        return f"its weight is a {type(w).__name__} (a quantized tensor subclass)"
    if hasattr(w, "quant_state") or hasattr(layer, "quant_state") or hasattr(layer, "qweight"):
        return "it carries quantization state"
    if cls not in (nn.Linear, Conv1D) and any(
        k in f"{cls.__module__}.{cls.__name__}".lower()
        for k in ("bitsandbytes", "quant", "gptq", "awq", "fp8", "int8", "4bit", "8bit")
    ):
        return f"it is a {cls.__module__}.{cls.__name__}"
    return None


def _refuse_quantized(chosen: dict[str, nn.Module]) -> None:
    bad = {n: why for n, m in chosen.items() if (why := quantization_of(m)) is not None}
    if bad:
        name, why = next(iter(bad.items()))
        raise ConfigError(
            f"target_modules selects {len(bad)} quantized linear layer(s) ({name}: {why}); SVF "
            "factors a floating-point weight matrix, so it cannot wrap them. Load the model "
            "unquantized (float32, bfloat16 or float16; SVFConfig(factor_dtype='bfloat16') "
            "halves the factors' memory), or target layers that are not quantized."
        )


def resolve_targets(model: nn.Module, spec: str | list[str]) -> dict[str, nn.Module]:
    """The layers ``spec`` selects, in module order; refuses a spec that selects none,
    mixture-of-experts expert weights (routed tokens, see :func:`fused_expert_parameters`)
    and quantized linear layers (:func:`quantization_of`)."""
    candidates = linear_candidates(model)
    chosen = {n: m for n, m in candidates.items() if _matches(n, spec)}
    _refuse_moe(model, spec, chosen)
    _refuse_quantized(chosen)
    if not chosen:
        examples = ", ".join(list(candidates)[:6]) or "(the model has no linear layers)"
        raise ConfigError(
            f"target_modules {spec!r} matches no linear layer of {type(model).__name__}; "
            f"its linear layers include: {examples}"
        )
    return chosen
