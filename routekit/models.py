"""Loading causal LMs and tokenizers (a name, a local path or loaded ones), with checks.

Every entry point of routekit accepts a registered name, a local checkpoint directory or
``.gguf`` file, or a loaded ``PreTrainedModel`` plus tokenizer; :func:`load_model` turns each
into the same pair (``resolve_model`` is its deprecated old name). It never downloads: paths
must exist locally, and weights are read from safetensors only (a pickle checkpoint is
refused, never unpickled). Named models (``world``, ``world-proxy``, ``smollm2``) are
registered here by the package that provides them, so this module imports none of them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .errors import ModelLoadError, TokenizerMismatchError


def check_tokenizer_fits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse a tokenizer whose ids do not fit the model's input embeddings."""
    n_embed = model.get_input_embeddings().weight.shape[0]
    n_vocab = len(tokenizer)
    if n_vocab > n_embed:
        raise TokenizerMismatchError(
            f"tokenizer has {n_vocab} tokens but the model's embedding table has {n_embed} rows; "
            f"ids >= {n_embed} would index past it. Load the tokenizer saved with this model, or "
            "call model.resize_token_embeddings(len(tokenizer)) before training."
        )


# Files transformers would unpickle; routekit loads safetensors only.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _refuse_pickle_only(path: Path) -> None:
    """Refuse a checkpoint directory whose weights exist only as pickle files."""
    if any(path.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickled:
        raise ModelLoadError(
            f"{str(path)!r} holds its weights only as pickle files ({', '.join(pickled)}); "
            "routekit never unpickles (a pickle can run code). Convert it where you trust it: "
            "load it with transformers and save_pretrained() it, which writes model.safetensors."
        )


def _is_gguf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"GGUF"


def load_model(
    model: str | os.PathLike | PreTrainedModel,
    tokenizer: str | os.PathLike | PreTrainedTokenizerBase | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return ``(model, tokenizer)`` from a registered name, a local path or loaded objects.

    * A registered name (``world``, ``world-proxy``, ``smollm2``: see
      :func:`register_model_name`) gives that model and its own tokenizer; a local path of
      the same name, when one exists, is loaded instead.
    * A path must be a local directory holding a causal LM config, or a local ``.gguf`` file
      (converted once into the cache by :func:`routekit.gguf.convert_gguf`); the tokenizer
      defaults to the one saved beside it.
    * A loaded ``PreTrainedModel`` needs its ``tokenizer`` (a loaded one or a path).

    ``dtype`` / ``device`` apply to each. Left padding is set for batched generation, and a
    missing pad token falls back to EOS.
    """
    if (isinstance(model, (str, os.PathLike)) and str(model) in _NAMED_MODELS
            and not Path(model).exists()):
        if tokenizer is not None:
            raise ModelLoadError(f"the named model {model!r} brings its own tokenizer; pass none.")
        lm, tok = _NAMED_MODELS[str(model)]()
        if dtype is not None:
            lm.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        if device is not None:
            lm.to(device)
        return lm, tok
    if isinstance(model, (str, os.PathLike)):
        path = Path(model).expanduser()
        if not path.exists():
            raise ModelLoadError(
                f"model path {str(path)!r} does not exist. Give a local directory written by "
                "save_pretrained (routekit never downloads from a hub)."
            )
        if path.is_file() and (path.suffix == ".gguf" or _is_gguf(path)):
            from .gguf import convert_gguf

            path = convert_gguf(path)
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{str(path)!r} has no config.json, so it is not a transformers checkpoint. Give "
                "the directory that save_pretrained wrote."
            )
        _refuse_pickle_only(path)
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=True)
            kwargs: dict[str, Any] = {"local_files_only": True, "use_safetensors": True}
            if dtype is not None:
                kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) else dtype
            lm = AutoModelForCausalLM.from_pretrained(path, config=config, **kwargs)
        except ValueError as e:
            raise ModelLoadError(
                f"{str(path)!r} holds a {type(config).__name__ if 'config' in locals() else 'model'} "
                f"that is not a causal language model ({e}). routekit needs an "
                "AutoModelForCausalLM checkpoint."
            ) from e
        except SafetensorError as e:
            files = ", ".join(sorted(p.name for p in path.glob("*.safetensors")))
            raise ModelLoadError(
                f"the weights in {str(path)!r} ({files}) are truncated or corrupt ({e}); "
                "save the model again with save_pretrained()."
            ) from e
        except OSError as e:
            raise ModelLoadError(f"could not load a model from {str(path)!r}: {e}") from e
        if tokenizer is None:
            tokenizer = path
    else:
        lm = model
        if not isinstance(lm, PreTrainedModel):
            raise ModelLoadError(
                f"expected a path or a transformers PreTrainedModel, got {type(model).__name__}."
            )
        if tokenizer is None:
            raise ModelLoadError("a loaded model needs its tokenizer: pass tokenizer=...")
    if isinstance(tokenizer, (str, os.PathLike)):
        tpath = Path(tokenizer).expanduser()
        if not tpath.exists():
            raise ModelLoadError(f"tokenizer path {str(tpath)!r} does not exist.")
        try:
            tok = AutoTokenizer.from_pretrained(tpath, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"no tokenizer could be loaded from {str(tpath)!r}: {e}") from e
    else:
        tok = tokenizer
    check_tokenizer_fits(lm, tok)
    prepare_tokenizer(tok)
    if device is not None:
        lm.to(device)
    lm.eval()
    return lm, tok


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Left padding (for batched generation) and a pad token (EOS if none)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


ModelLoader = Callable[[], tuple[PreTrainedModel, PreTrainedTokenizerBase]]
_NAMED_MODELS: dict[str, ModelLoader] = {}


def register_model_name(name: str, loader: ModelLoader) -> None:
    """Make ``load_model(name)`` return ``loader()``.

    ``routekit.world`` registers ``world`` and ``world-proxy`` when it is imported (``import
    routekit`` imports it), so the world depends on this module and not the reverse.
    """
    _NAMED_MODELS[name] = loader


def resolve_model(spec: str | os.PathLike) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Deprecated: use :func:`load_model`, which takes everything this took (a registered
    name or a local path) and loaded models too."""
    warnings.warn(
        "routekit.resolve_model is deprecated; use routekit.load_model, which takes the same "
        "names and paths.", DeprecationWarning, stacklevel=2,
    )
    return load_model(spec)


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its EOS token."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise TokenizerMismatchError(
            f"{type(tokenizer).__name__} has neither a pad nor an EOS token, so batches cannot be "
            "padded; set tokenizer.pad_token first."
        )
    return int(pad)


def left_pad(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], device: str | torch.device | None = None
) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of ``texts``, left-padded for generation.

    The one left-padding helper: it never changes the tokenizer (no ``padding_side`` or pad
    token is set on it), so concurrent calls on a shared tokenizer cannot disturb each other.
    """
    rows = tokenizer(list(texts))["input_ids"]
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_token_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    return {"input_ids": ids, "attention_mask": mask}
