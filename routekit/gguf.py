"""Local ``.gguf`` checkpoints: converted once into a cached safetensors checkpoint.

transformers reads a GGUF file (dequantising it to float32) but refuses to ``save_pretrained``
the result, and reading it again costs a conversion each time. :func:`convert_gguf` does it
once: it builds a plain model from the GGUF's config (its ``quantization_config`` dropped),
loads the dequantised state dict into it strictly, and saves it with the tokenizer into
``$ROUTEKIT_CACHE/gguf/<sha256[:16]>/``:

- ``model/``: ``save_pretrained`` output (safetensors, config, tokenizer with chat template);
- ``source.json``: the GGUF's path, size, SHA-256, architecture, the converted weights'
  ``routekit.io.model_fingerprint`` and tokenizer fingerprint, and the ``converter`` versions
  (transformers, gguf) that read it;
- ``manifest.json``, written last: every file's size and SHA-256 (``routekit.cache``).

The entry is assembled in a temporary sibling and renamed into place, so a killed conversion
leaves nothing that loads. Every load re-verifies the manifest; a damaged entry is reported
and converted again, and so is an entry another transformers or gguf version converted (how a
GGUF's tokenizer and chat template are read has changed between releases: transformers 5.0
read smollm2's vocabulary with five extra tokens). A file that is not GGUF, is truncated, or holds an architecture
transformers cannot read is refused with a one-line :class:`~routekit.errors.ModelLoadError`.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path
from typing import Any

import torch

from .cache import cache_root, sha256_file, verify_manifest, write_manifest
from .errors import CorruptCacheError, ModelLoadError
from .io import (
    atomic_directory,
    atomic_write_json,
    model_fingerprint,
    read_json,
    tokenizer_fingerprint,
)

GGUF_MAGIC = b"GGUF"


def supported_architectures() -> list[str]:
    """The GGUF ``general.architecture`` values transformers can read (installed version)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]


def converter_versions() -> dict[str, str]:
    """The versions of the packages that read a GGUF file into a checkpoint."""
    return {name: importlib.metadata.version(name) for name in ("transformers", "gguf")}


def gguf_entry(sha256: str) -> Path:
    """The cache directory of the GGUF file whose SHA-256 is ``sha256``."""
    return cache_root() / "gguf" / sha256[:16]


def _check_magic(path: Path) -> None:
    with path.open("rb") as f:
        head = f.read(4)
    if head != GGUF_MAGIC:
        raise ModelLoadError(
            f"{str(path)!r} is not a GGUF file (it starts with {head!r}, not {GGUF_MAGIC!r}); give a "
            ".gguf file written by llama.cpp or gguf-py, or a save_pretrained directory."
        )


def read_architecture(path: str | os.PathLike) -> str:
    """The GGUF's ``general.architecture``, after checking the file is whole.

    A file shorter than its header and tensor table say (a truncated download) is refused.
    """
    from gguf import GGUFReader

    path = Path(path)
    _check_magic(path)
    size = path.stat().st_size
    try:
        reader = GGUFReader(path)
        field = reader.get_field("general.architecture")
        arch = field.contents() if field is not None else None
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as e:  # the reader raises assorted errors on a cut-off header
        raise ModelLoadError(
            f"{str(path)!r} is truncated or corrupt: its GGUF header cannot be read "
            f"({type(e).__name__}: {e}). Copy or download the file again."
        ) from None
    if end > size:
        raise ModelLoadError(
            f"{str(path)!r} is truncated: its tensors need {end} bytes but the file has {size}. "
            "Copy or download the file again."
        )
    if not isinstance(arch, str) or not arch:
        raise ModelLoadError(
            f"{str(path)!r} has no general.architecture, so no model can be built from it."
        )
    return arch


def _convert_into(path: Path, target: Path) -> tuple[Any, Any]:
    """Load ``path`` through transformers and save a plain float32 checkpoint into ``target``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": path.name, "local_files_only": True}
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, **kw)
        quantised = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kw)
    except ValueError as e:
        raise ModelLoadError(
            f"{str(path)!r} could not be read as a causal LM by transformers "
            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})."
        ) from None
    config = AutoConfig.from_pretrained(path.parent, **kw)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict(), strict=True)
    if getattr(quantised, "generation_config", None) is not None:
        plain.generation_config = quantised.generation_config
    del quantised
    plain.save_pretrained(target)
    tok.save_pretrained(target)
    return plain, tok


def convert_gguf(
    path: str | os.PathLike, sha256: str | None = None, *, progress: bool = True
) -> Path:
    """The cached safetensors checkpoint of the GGUF file ``path`` (converted on first use).

    ``sha256``: the file's expected SHA-256; a file that differs is refused. Returns the
    checkpoint directory, which :func:`routekit.load_model` loads.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {str(path)!r} does not exist.")
    _check_magic(path)
    digest = sha256_file(path)
    if sha256 is not None and digest != sha256.lower():
        raise ModelLoadError(
            f"{str(path)!r} has SHA-256 {digest}, not the expected {sha256}; the file is "
            "damaged or another version. Reinstall it."
        )
    root = gguf_entry(digest)
    if root.exists():
        try:
            verify_manifest(root, "GGUF cache entry")
            was = gguf_source(root / "model").get("converter")
            if was == converter_versions():
                return root / "model"
            print(f"routekit: {str(root)!r} was converted by {was or 'an older routekit'}, not "
                  f"{converter_versions()}; converting {str(path)!r} again.", file=sys.stderr)
        except CorruptCacheError as e:
            print(f"routekit: {e} Converting {str(path)!r} again.", file=sys.stderr)
    arch = read_architecture(path)
    known = supported_architectures()
    if arch not in known:
        raise ModelLoadError(
            f"{str(path)!r} holds architecture {arch!r}, which transformers cannot read from GGUF; "
            f"supported: {', '.join(known)}."
        )
    if progress:
        print(
            f"routekit: converting {path.name} ({arch}) into {str(root)!r} (once)", file=sys.stderr
        )
    with atomic_directory(root) as tmp:
        model, tok = _convert_into(path, tmp / "model")
        atomic_write_json(
            tmp / "source.json",
            {
                "source": str(path.resolve()),
                "size": path.stat().st_size,
                "sha256": digest,
                "architecture": arch,
                "model_fingerprint": model_fingerprint(model),
                "tokenizer_fingerprint": tokenizer_fingerprint(tok),
                "converter": converter_versions(),
            },
        )
        write_manifest(tmp)
    return root / "model"


def gguf_source(checkpoint: str | os.PathLike) -> dict[str, Any]:
    """The ``source.json`` recorded beside a converted checkpoint directory."""
    return read_json(Path(checkpoint).parent / "source.json", "GGUF source record")
