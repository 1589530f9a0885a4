"""Streaming, read-only access to the tensors of a checkpoint, one tensor at a time.

A :class:`CheckpointReader` lists a checkpoint's tensor names, shapes and storage dtypes from
the safetensors headers alone, and hands out one tensor at a time. Each ``get`` opens the
file with ``safetensors.safe_open``, copies that one tensor out and closes the file again, so
the memory map never accumulates the pages of tensors already compared: resident memory
stays near the tensors currently held, whatever the size of the checkpoint.

Accepted inputs:

* a directory holding ``model.safetensors``, or shards and a ``*.safetensors.index.json``;
* a single ``.safetensors`` file;
* an in-memory ``torch.nn.Module`` (e.g. a ``PreTrainedModel``) or a ``{name: tensor}`` mapping.

Pickle-based weight files (``pytorch_model.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``) are
refused and never opened: unpickling a file can run arbitrary code.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

# safetensors header dtype codes -> torch dtypes (those this torch build knows).
_ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
for _code, _attr in (
    ("F8_E4M3", "float8_e4m3fn"),
    ("F8_E5M2", "float8_e5m2"),
    ("U16", "uint16"),
    ("U32", "uint32"),
    ("U64", "uint64"),
):
    if hasattr(torch, _attr):
        _ST_DTYPES[_code] = getattr(torch, _attr)

_HEAD_NAMES = ("lm_head.weight",)
_EMBED_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight")


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def natural_key(name: str) -> list[Any]:
    """Sort key that orders ``layers.2`` before ``layers.10``."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _pickle_refusal(paths: list[Path], where: str) -> CheckpointError:
    shown = ", ".join(repr(p.name) for p in paths[:5])
    more = f" and {len(paths) - 5} more" if len(paths) > 5 else ""
    what = (
        "is a pickle-based weight file"
        if len(paths) == 1 and where.endswith(f"{str(paths[0])!r}")
        else f"holds only pickle-based weight files ({shown}{more})"
    )
    return CheckpointError(
        f"{where} {what}. routekit refuses to load it: unpickling can run arbitrary code, so "
        "nothing was opened. Convert the "
        "checkpoint to safetensors once, in an environment you trust, e.g. "
        "`AutoModelForCausalLM.from_pretrained(path).save_pretrained(new_path, "
        "safe_serialization=True)` (or safetensors.torch.save_file(state_dict, "
        "'model.safetensors') for a bare state dict), and compare the new directory."
    )


class CheckpointReader:
    """Names, shapes and storage dtypes of a checkpoint's tensors, and one tensor at a time.

    ``aliases`` maps a name the checkpoint does not store separately to the stored tensor that
    holds its values (tied input/output embeddings).
    """

    label: str
    source: str | None  # absolute path for on-disk checkpoints, None in memory
    config: dict[str, Any] | None

    def __init__(self) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        self.aliases: dict[str, str] = {}
        self.order: list[str] = []  # reading order (storage order on disk)

    @property
    def names(self) -> list[str]:
        return list(self.order)

    def get(self, name: str) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def location(self, name: str) -> str:
        """Where tensor ``name`` is stored, for error messages (a file path, or in memory)."""
        return f"the in-memory {getattr(self, 'kind', 'state dict')} ({self.label})"

    def nbytes(self, name: str) -> int:
        n = 1
        for s in self.shapes[name]:
            n *= s
        return n * self.dtypes[name].itemsize

    def _add_tied_aliases(self, tied_flag: bool) -> None:
        """Alias a missing ``lm_head.weight`` to the input embedding when weights are tied."""
        if not tied_flag:
            return
        embed = next(
            (n for n in self.order if n.endswith(_EMBED_SUFFIXES)),
            None,
        )
        if embed is None:
            return
        for head in _HEAD_NAMES:
            if head not in self.shapes and head not in self.aliases:
                self.aliases[head] = embed


# --------------------------------------------------------------------------------------------
# safetensors on disk


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Parse a safetensors header (8-byte little-endian length, then JSON) without mapping data."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("file is shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8 or n > 100_000_000:
                raise ValueError(f"header length {n} exceeds the file size {size}")
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"{str(path)!r} is not a readable safetensors file ({e}); it may be truncated or "
            "corrupt. Re-save or re-download it."
        ) from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{str(path)!r} has a malformed safetensors header.")
    data_len = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = info["data_offsets"]
        except (TypeError, KeyError, ValueError) as e:
            raise CheckpointError(
                f"{str(path)!r} has a malformed entry for tensor {name!r} in its header."
            ) from e
        if end > data_len:
            raise CheckpointError(
                f"{str(path)!r} is truncated: tensor {name!r} ends at byte {end} of the data "
                f"section, which holds only {data_len} bytes. Re-save or re-download it."
            )
    return header


class SafetensorsCheckpoint(CheckpointReader):
    """A checkpoint directory (single file or sharded with an index) or one .safetensors file."""

    def __init__(self, path: str | os.PathLike, label: str = "checkpoint") -> None:
        super().__init__()
        path = Path(path).expanduser()
        self.label = label
        self.source = str(path.resolve()) if path.exists() else str(path)
        self.config = None
        self.files: dict[str, Path] = {}  # tensor name -> file
        where = f"{label} {str(path)!r}"
        if not path.exists():
            raise CheckpointError(f"{where} does not exist. Give a local checkpoint directory.")
        if path.is_file():
            if path.name.endswith(PICKLE_SUFFIXES):
                raise _pickle_refusal([path], where)
            if not path.name.endswith(".safetensors"):
                raise CheckpointError(
                    f"{where} is neither a checkpoint directory nor a .safetensors file."
                )
            files = [path]
            cfg_path = path.parent / "config.json"
        else:
            files = self._files_of_directory(path, where)
            cfg_path = path / "config.json"
        if cfg_path.is_file():
            try:
                self.config = json.loads(cfg_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{str(cfg_path)!r} is not valid JSON ({e}).") from e
        self._index_files(files, where)
        tied = bool((self.config or {}).get("tie_word_embeddings", False))
        self._add_tied_aliases(tied)

    def _files_of_directory(self, path: Path, where: str) -> list[Path]:
        indexes = sorted(path.glob("*.safetensors.index.json"))
        if indexes:
            index_path = path / "model.safetensors.index.json"
            if not index_path.is_file():
                index_path = indexes[0]
            try:
                index = json.loads(index_path.read_text())
                weight_map = index["weight_map"]
                if not isinstance(weight_map, dict):
                    raise TypeError("weight_map is not an object")
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(
                    f"{where}: the shard index {index_path.name!r} is not a valid safetensors "
                    f"index ({e}); re-save the checkpoint."
                ) from e
            shards = list(dict.fromkeys(weight_map.values()))
            missing = [s for s in shards if not (path / s).is_file()]
            if missing:
                names = [n for n, s in weight_map.items() if s == missing[0]]
                raise CheckpointError(
                    f"{where}: the shard index {index_path.name!r} names shard file(s) "
                    f"{', '.join(repr(m) for m in missing)} that do not exist (holding "
                    f"{len(names)} tensor(s) such as {names[0]!r}). Copy or download the "
                    "complete checkpoint."
                )
            self._weight_map = weight_map
            return [path / s for s in shards]
        single = path / "model.safetensors"
        if single.is_file():
            return [single]
        found = sorted(path.glob("*.safetensors"))
        if found:
            return found
        pickles = sorted(
            p for p in path.iterdir() if p.is_file() and p.name.endswith(PICKLE_SUFFIXES)
        )
        pickles += sorted(path.glob("*.bin.index.json"))
        if pickles:
            raise _pickle_refusal(pickles, where)
        raise CheckpointError(
            f"{where} is not a checkpoint: it holds no .safetensors file and no shard index. "
            "Give the directory that save_pretrained wrote (or a .safetensors file)."
        )

    def _index_files(self, files: list[Path], where: str) -> None:
        weight_map = getattr(self, "_weight_map", None)
        entries: list[tuple[int, int, str]] = []
        for fi, f in enumerate(files):
            header = read_safetensors_header(f)
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                if weight_map is not None and weight_map.get(name) != f.name:
                    continue  # the index is authoritative for which shard holds a tensor
                if name in self.files:
                    raise CheckpointError(
                        f"{where}: tensor {name!r} is stored in both {self.files[name].name!r} "
                        f"and {f.name!r}; keep one copy."
                    )
                code = info.get("dtype")
                if code not in _ST_DTYPES:
                    raise CheckpointError(
                        f"{where}: tensor {name!r} has storage dtype {code!r}, which this "
                        "torch build cannot read."
                    )
                self.files[name] = f
                self.shapes[name] = tuple(int(s) for s in info["shape"])
                self.dtypes[name] = _ST_DTYPES[code]
                entries.append((fi, int(info["data_offsets"][0]), name))
        if weight_map is not None:
            absent = [n for n in weight_map if n not in self.files]
            if absent:
                raise CheckpointError(
                    f"{where}: the shard index says {absent[0]!r} is in "
                    f"{weight_map[absent[0]]!r}, but that file does not hold it"
                    + (
                        f" ({len(absent) - 1} more tensors are missing likewise)"
                        if len(absent) > 1
                        else ""
                    )
                    + ". Re-save or re-download the checkpoint."
                )
        if not entries:
            raise CheckpointError(f"{where} holds no tensors.")
        # Storage order: shard by shard, by offset within a shard (sequential reads).
        self.order = [n for _, _, n in sorted(entries)]

    def location(self, name: str) -> str:
        return f"{self.label} file {str(self.files[self.aliases.get(name, name)])!r}"

    def get(self, name: str) -> torch.Tensor:
        from safetensors import SafetensorError, safe_open

        name = self.aliases.get(name, name)
        f = self.files[name]
        try:
            # Opened per tensor: closing unmaps the file, so pages of tensors already compared
            # do not stay resident.
            with safe_open(str(f), framework="pt", device="cpu") as h:
                return h.get_tensor(name)
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise CheckpointError(
                f"{self.label}: could not read tensor {name!r} from {str(f)!r} ({e}); the file "
                "may be truncated or corrupt."
            ) from e


# --------------------------------------------------------------------------------------------
# in memory


class StateDictCheckpoint(CheckpointReader):
    """A loaded model or ``{name: tensor}`` mapping; tensors that share storage are listed once."""

    def __init__(
        self,
        tensors: Mapping[str, torch.Tensor],
        label: str = "checkpoint",
        config: dict[str, Any] | None = None,
        kind: str = "state dict",
    ) -> None:
        super().__init__()
        self.label = label
        self.source = None
        self.kind = kind
        self.config = config
        self._tensors: dict[str, torch.Tensor] = {}
        seen: dict[tuple[int, tuple[int, ...], tuple[int, ...], torch.dtype], str] = {}
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor):
                raise CheckpointError(
                    f"{label}: entry {name!r} is a {type(t).__name__}, not a tensor."
                )
            t = t.detach()
            key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype)
            if t.numel() > 0 and key in seen:
                self.aliases[name] = seen[key]  # tied: same storage as an earlier tensor
                continue
            seen[key] = name
            self._tensors[name] = t
            self.shapes[name] = tuple(t.shape)
            self.dtypes[name] = t.dtype
            self.order.append(name)
        if not self.order:
            raise CheckpointError(f"{label}: the {kind} holds no tensors.")
        tied = bool((config or {}).get("tie_word_embeddings", False))
        self._add_tied_aliases(tied)

    def get(self, name: str) -> torch.Tensor:
        t = self._tensors[self.aliases.get(name, name)]
        return t.to("cpu") if t.device.type != "cpu" else t


def open_checkpoint(obj: Any, label: str = "checkpoint") -> CheckpointReader:
    """A reader for a path, a loaded ``nn.Module`` or a ``{name: tensor}`` mapping."""
    if isinstance(obj, CheckpointReader):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return SafetensorsCheckpoint(obj, label=label)
    if isinstance(obj, torch.nn.Module):
        config = getattr(obj, "config", None)
        cfg = config.to_dict() if hasattr(config, "to_dict") else None
        return StateDictCheckpoint(
            obj.state_dict(), label=label, config=cfg, kind=f"{type(obj).__name__} model"
        )
    if isinstance(obj, Mapping):
        return StateDictCheckpoint(obj, label=label)
    raise CheckpointError(
        f"{label}: expected a checkpoint directory, a .safetensors file, a torch model or a "
        f"state dict, got a {type(obj).__name__}."
    )


def describe(reader: CheckpointReader) -> str:
    """A one-line description of where a checkpoint came from."""
    if reader.source is not None:
        return reader.source
    return f"<in-memory {getattr(reader, 'kind', 'state dict')}>"
