"""Atomic file writing (temp file + rename), safetensors/JSON helpers and fingerprints.

Everything routekit writes goes through here so that a killed process never leaves a
half-written file that a later run would load.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import BaseModel, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import ExpertFileError

PathLike = str | os.PathLike
T = TypeVar("T", bound=BaseModel)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same directory and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_json(path: PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: PathLike, what: str = "file") -> Any:
    """Read JSON, turning a missing or unparsable file into an ExpertFileError that names it."""
    path = Path(path)
    if not path.is_file():
        raise ExpertFileError(f"{what} {str(path)!r} does not exist.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExpertFileError(f"{what} {str(path)!r} is not valid JSON ({e}); re-create it.") from e


def read_config(
    path: PathLike, schema: type[T], what: str = "config", *,
    error: type[Exception] = ExpertFileError, advice: str = "save it again.",
) -> T:
    """Read a JSON file and validate it with a pydantic ``schema``; a missing or unparsable
    file is an ExpertFileError, an invalid one an ``error`` naming the file and the first
    offending key, followed by ``advice``."""
    raw = read_json(path, what=what)
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "(top level)"
        raise error(
            f"{what} {str(path)!r} is invalid: key {where!r}: {err['msg']} "
            f"({len(e.errors())} problem(s)); {advice}"
        ) from e


def atomic_save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """Save tensors as safetensors atomically (contiguous CPU copies)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(
            {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
            tmp,
            metadata=dict(metadata) if metadata else None,
        )
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def load_safetensors(path: PathLike, what: str = "tensor file") -> dict[str, torch.Tensor]:
    """Load a safetensors file, refusing a missing, truncated or corrupt one with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise ExpertFileError(f"{what} {str(path)!r} does not exist.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ExpertFileError(
            f"{what} {str(path)!r} is truncated or corrupt ({e}); delete it and save it again."
        ) from e


@contextlib.contextmanager
def atomic_directory(target: PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``target`` in one rename.

    If the body raises (or the process is killed) ``target`` is untouched and only a
    ``.tmp-<name>-<pid>-*`` sibling is left, which no loader ever reads. Replacing an existing
    ``target`` takes two renames (``target`` to ``.old-<name>-<pid>-*``, then the new one into
    place); a kill between them leaves no ``target`` but a complete ``.old-`` sibling, which
    :func:`recover_directory` (called here first, and by the readers of resumable state) puts
    back.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-{os.getpid()}-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            # A fresh name each time: a leftover .old- of a killed process with this pid
            # (pids repeat) must not make the rename fail.
            old = Path(tempfile.mkdtemp(prefix=f".old-{target.name}-{os.getpid()}-",
                                        dir=target.parent))
            os.replace(target, old)  # onto the empty directory just made
            os.replace(tmp, target)
            _discard(old)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (or one of another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _discard(path: Path) -> None:
    """Delete a directory by renaming it to ``.del-...`` first, so that a kill during the
    delete leaves a ``.del-`` remnant, never a partial ``.old-`` that would be put back."""
    doomed = path.with_name(".del-" + path.name.split("-", 1)[1])
    try:
        os.replace(path, doomed)
    except OSError:
        doomed = path
    shutil.rmtree(doomed, ignore_errors=True)


def _leftovers(parent: Path, kind: str, name: str) -> list[tuple[Path, int]]:
    """``.<kind>-<name>-<pid>[-<random>]`` siblings with their writer's pid (the random part
    of ``mkdtemp`` has no '-', so ``.tmp-<name>-v2-...`` of another target ``<name>-v2`` is
    not taken for one of ``<name>``)."""
    shape = re.compile(rf"\.{kind}-{re.escape(name)}-(\d+)(-[^-]+)?")
    out = []
    for p in parent.glob(f".{kind}-{glob.escape(name)}-*"):
        m = shape.fullmatch(p.name)
        if m:
            out.append((p, int(m.group(1))))
    return out


def recover_directory(target: PathLike, *, all_stale: bool = False) -> bool:
    """Tidy what killed :func:`atomic_directory` writers left beside ``target``; returns
    whether ``target`` was put back.

    With ``target`` missing, an ``.old-<name>-*`` sibling is the complete previous version (a
    kill fell between the two renames; a replaced version is renamed to ``.del-`` before it
    is deleted, so an ``.old-`` one is never partial) and is renamed back, the newest if there
    are several. Other ``.old-`` and all ``.del-`` siblings are removed, and so are
    ``.tmp-<name>-*`` ones of writers no longer running on this machine, or all of them with
    ``all_stale=True`` (for a caller that knows it is the only writer, such as a cell of a
    locked run).
    """
    target = Path(target)
    parent, name = target.parent, target.name
    if not parent.is_dir():
        return False
    # A rename sets the moved directory's ctime, so the newest .old- is the last one replaced.
    olds = sorted((p for p, _ in _leftovers(parent, "old", name)),
                  key=lambda p: p.stat().st_ctime_ns)
    restored = False
    if olds and not target.exists():
        os.replace(olds.pop(), target)
        _fsync_dir(parent)
        restored = True
    for p in olds + [p for p, _ in _leftovers(parent, "del", name)]:
        shutil.rmtree(p, ignore_errors=True)
    for p, pid in _leftovers(parent, "tmp", name):
        if all_stale or (pid != os.getpid() and not pid_alive(pid)):
            shutil.rmtree(p, ignore_errors=True)
    return restored


# --------------------------------------------------------------------------------------------
# fingerprints
#
# One scheme for every tensor fingerprint routekit records (SVF factor-cache keys, expert and
# proxy base fingerprints, ``routekit diff``'s base/tuned fingerprints): a SHA-256 over the
# tensors in sorted name order, each contributing ``"<name>|<shape tuple>|<torch dtype>|"``
# followed by the raw stored bytes of its values (all of them with ``full=True``; otherwise,
# for tensors of more than 8192 entries, a strided sample of every (numel // 4096)-th entry),
# truncated to 16 hex digits. Float values are hashed as their storage bits, so bf16 and fp8
# tensors hash without an upcast. These are the values routekit has always written into
# expert_config.json files and factor-cache names: saved experts stay valid.

_SAMPLE_ABOVE = 8192
_SAMPLE_TARGET = 4096
_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def storage_bits(t: torch.Tensor) -> torch.Tensor:
    """The raw storage bits of a tensor as an integer tensor of the same element size."""
    if t.dtype == torch.bool:
        return t.view(torch.uint8)
    if t.is_floating_point():
        return t.view(_INT_OF_SIZE[t.element_size()])
    return t


def tensor_digest_bytes(name: str, t: torch.Tensor, full: bool = False) -> bytes:
    """What one tensor contributes to a fingerprint: its header and (sampled) stored bytes."""
    t = t.detach()
    header = f"{name}|{tuple(t.shape)}|{t.dtype}|".encode()
    flat = t.reshape(-1)
    if not full and flat.numel() > _SAMPLE_ABOVE:
        # A strided sample: any fine-tune that touches a tensor changes many sampled entries,
        # while hashing every byte of an 8B model would cost tens of seconds per load.
        flat = flat[:: flat.numel() // _SAMPLE_TARGET]
    data = storage_bits(flat.to("cpu").contiguous())  # bf16 and fp8 hash without an upcast
    return header + data.numpy().tobytes()


class TensorFingerprint:
    """A fingerprint fed one tensor at a time, in any order (for streaming readers).

    ``hexdigest()`` equals :func:`fingerprint_tensors` of the same tensors; only the sampled
    bytes are held (``full=False``: at most ~8192 entries per tensor).
    """

    def __init__(self) -> None:
        self._parts: dict[str, bytes] = {}

    def add(self, name: str, t: torch.Tensor) -> None:
        self._parts[name] = tensor_digest_bytes(name, t)

    def hexdigest(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self._parts):
            h.update(self._parts[name])
        return h.hexdigest()[:16]


def fingerprint_tensors(tensors: Mapping[str, torch.Tensor], full: bool = False) -> str:
    """A short hex digest of named tensors (names, shapes, dtypes and values); see above."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(tensor_digest_bytes(name, tensors[name], full))
    return h.hexdigest()[:16]


def model_fingerprint(model: torch.nn.Module) -> str:
    """Fingerprint of a model's own weights (base layers, not adapter parameters).

    Wrapped layers expose their original weight under ``base_layer``; adapter parameters
    (SVF ``svf_z``, LoRA ``lora_``) are skipped so a wrapped model has its base's fingerprint.
    """
    sd = {}
    for name, t in model.state_dict().items():
        if "svf_" in name or "lora_" in name:
            continue
        sd[name.replace(".base_layer.", ".")] = t
    return fingerprint_tensors(sd)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Fingerprint of a tokenizer's vocabulary (token string -> id) and special tokens."""
    vocab = tokenizer.get_vocab()
    h = hashlib.sha256()
    for tok, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
        h.update(f"{idx}\t{tok}\n".encode())
    h.update(json.dumps(
        {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    ).encode())
    return h.hexdigest()[:16]
