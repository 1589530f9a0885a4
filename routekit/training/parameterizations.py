"""Parameterizations: which numbers of a model a training run may change.

``prepare(model, config)`` turns a plain causal LM into one whose ``requires_grad``
parameters are exactly the trainable ones (SVF z vectors, PEFT LoRA matrices, any other
weight-space PEFT method's parameters, every parameter, or every parameter under a fixed
boolean gradient mask).
``frozen_base(model, config)`` gives the untouched base that the RL KL penalty compares to.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..io import load_safetensors
from .config import TrainConfig

PARAMETERIZATION_ATTR = "_routekit_parameterization"
MASKS_ATTR = "_routekit_masks"


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple of parts (stable across processes and Python runs)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name -> parameter for every parameter with ``requires_grad`` (tied weights once)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of scalars; for a masked model, the entries its masks free."""
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    masks = getattr(model, MASKS_ATTR, None)
    if masks is not None:
        return sum(int(m.sum()) for n, m in masks.items() if params[n].requires_grad), total
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    return trainable, total


def prepare(model: nn.Module, config: TrainConfig) -> nn.Module:
    """Make ``config.parameterization``'s parameters the only trainable ones; idempotent.

    Returns the model to train: the same object for svf/full/mask (wrapped in place), a
    ``PeftModel`` around it for lora and peft. Trainable parameters are stored in float32 unless
    ``config.bf16_storage``.
    """
    kind = config.parameterization
    done = getattr(model, PARAMETERIZATION_ATTR, None)
    if done is not None:
        if done != kind:
            raise ConfigError(
                f"model was already prepared for parameterization {done!r}; config asks for "
                f"{kind!r}. Start from an unwrapped base model."
            )
        return model
    torch.manual_seed(derive_seed(config.seed, "init"))  # LoRA's random A, PiSSA's random SVD
    if kind == "svf":
        model = _prepare_svf(model, config)
    elif kind == "lora":
        model = _prepare_lora(model, config)
    elif kind == "peft":
        model = _prepare_peft(model, config)
    elif kind == "full":
        model.requires_grad_(True)
    elif kind == "mask":
        _prepare_mask(model, config)
    _set_storage_dtype(model, kind, torch.bfloat16 if config.bf16_storage else torch.float32)
    if not trainable_parameters(model):
        raise ConfigError(
            f"parameterization {kind!r} left no trainable parameter in "
            f"{type(model).__name__}; check target_modules / mask."
        )
    setattr(model, PARAMETERIZATION_ATTR, kind)
    return model


def _prepare_svf(model: nn.Module, config: TrainConfig) -> nn.Module:
    from ..svf import SVFConfig, get_svf_model

    if any("svf_z" in n for n, _ in model.named_parameters()):
        return model  # already an SVF model (e.g. built by the caller with its own SVFConfig)
    return get_svf_model(model, SVFConfig(**config.svf))


def _prepare_lora(model: nn.Module, config: TrainConfig) -> nn.Module:
    from peft import LoraConfig, PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        return model
    lc = config.lora
    peft_config = LoraConfig(
        r=lc.r,
        lora_alpha=lc.alpha,
        target_modules=lc.target_modules,
        lora_dropout=lc.dropout,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


def _prepare_peft(model: nn.Module, config: TrainConfig) -> nn.Module:
    from peft import PeftModel, get_peft_model

    from .peft_methods import peft_config

    if isinstance(model, PeftModel):
        return model
    cfg = peft_config(config.peft, where="TrainConfig.peft")
    try:
        return get_peft_model(model, cfg)
    except (ValueError, TypeError, KeyError) as e:  # PEFT's word on this model: no such module ...
        raise ConfigError(
            f"PEFT could not apply peft {config.peft} to {type(model).__name__}: {e}"
        ) from None


def build_masks(model: nn.Module, config: TrainConfig) -> dict[str, torch.Tensor]:
    """Boolean masks by parameter name: a seeded random fraction, or read from a file."""
    params = dict(model.named_parameters())
    if isinstance(config.mask, str):
        path = Path(config.mask)
        masks = load_safetensors(path, what="mask file")
        for name, m in masks.items():
            if name not in params:
                raise ConfigError(
                    f"mask file {str(path)!r} has a mask for {name!r}, which the model does not "
                    f"have (its parameters include {list(params)[:3]}...)."
                )
            if tuple(m.shape) != tuple(params[name].shape):
                raise ConfigError(
                    f"mask for {name!r} in {str(path)!r} has shape {tuple(m.shape)}, the "
                    f"parameter has {tuple(params[name].shape)}."
                )
            if m.dtype != torch.bool:
                bad = m[(m != 0) & (m != 1)]  # NaN too: it equals neither
                if bad.numel():
                    raise ConfigError(
                        f"mask for {name!r} in {str(path)!r} is not boolean: it holds "
                        f"{bad.numel()} entries other than 0 and 1 (e.g. {bad.flatten()[0].item()!r}). "
                        "Save masks as bool tensors (or 0/1), e.g. (scores > threshold)."
                    )
        return {n: m.to(torch.bool) for n, m in masks.items()}
    fraction = float(config.mask)  # type: ignore[arg-type]
    masks = {}
    for name, p in params.items():
        g = torch.Generator().manual_seed(derive_seed(config.seed, "mask", name))
        masks[name] = torch.rand(p.shape, generator=g) < fraction
    return masks


def _prepare_mask(model: nn.Module, config: TrainConfig) -> None:
    masks = build_masks(model, config)
    for name, p in model.named_parameters():
        if name not in masks:
            p.requires_grad_(False)
            continue
        p.requires_grad_(True)
        keep = masks[name]
        # A tensor hook runs on the gradient before it is accumulated (and before DDP
        # all-reduces it), so every optimiser and launcher sees the masked gradient; with
        # weight decay 0, Adam then leaves masked-out entries bit-identical.
        p.register_hook(lambda grad, keep=keep: grad * keep.to(device=grad.device, dtype=grad.dtype))
    setattr(model, MASKS_ATTR, masks)


def _set_storage_dtype(model: nn.Module, kind: str, dtype: torch.dtype) -> None:
    if kind in ("full", "mask"):
        model.to(dtype)  # the whole network trains: keep one dtype through it
        return
    for p in trainable_parameters(model).values():  # adapters: only their own numbers
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)


def needs_reference(config: TrainConfig) -> bool:
    """Whether a run pays a KL to the untrained model (RL's ``kl_coef`` or retention KL)."""
    return (config.objective == "rl" and config.kl_coef > 0) or config.retain_kl_coef > 0


def frozen_reference(model: nn.Module, config: TrainConfig) -> nn.Module | None:
    """A frozen copy of ``model`` as it is now, for a full/mask/peft run that pays a KL to it;
    None otherwise (SVF and LoRA compute their base from the live model, exactly). A PEFT
    method's ``disable_adapter()`` is not always the base: an initialisation such as PiSSA's
    moves part of each weight into the adapter, leaving the residual in the base layer.

    Make it once from the *untrained* weights and pass it as ``train(..., reference=)`` to
    every call that continues the same run (segments, resumes onto a trained object), so the
    anchor never moves with training.
    """
    if config.parameterization not in ("full", "mask", "peft") or not needs_reference(config):
        return None
    frozen = copy.deepcopy(model)
    frozen.requires_grad_(False)
    frozen.eval()
    return frozen


def frozen_base(
    model: nn.Module, config: TrainConfig, reference: nn.Module | None = None
) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of contexts that yield a module computing the untrained base's logits.

    ``reference``, when given, is that module (see :func:`frozen_reference`). Otherwise SVF
    and LoRA: the same model computing its base (``model.disable_adapter()``, PEFT's and
    routekit's SVF models'); full/mask/peft: a frozen deep copy made now, which is the
    untrained base only when ``model`` is untrained (a fresh model, or a resume that restores
    its weights after this call; a PEFT method's adapter computes the identity at init).
    """
    if reference is not None:
        return lambda: contextlib.nullcontext(reference)
    kind = config.parameterization
    if kind in ("svf", "lora"):  # both PEFT-shaped: disable_adapter() computes the base

        @contextlib.contextmanager
        def _adapter_disabled() -> Iterator[nn.Module]:
            with model.disable_adapter():
                yield model

        return _adapter_disabled
    frozen = copy.deepcopy(model)
    frozen.requires_grad_(False)
    frozen.eval()
    return lambda: contextlib.nullcontext(frozen)
