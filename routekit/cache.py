"""routekit's one cache root and the SHA-256 manifests that verify its entries.

Every cache routekit keeps (the world's models, converted GGUF checkpoints, SVD factors)
lives under :func:`cache_root`: ``$ROUTEKIT_CACHE`` if set, else ``~/.cache/routekit``. An
entry directory is complete when its ``manifest.json`` (written last) lists every other file
with its size and SHA-256; :func:`verify_manifest` re-checks them on every load.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import CorruptCacheError
from .io import atomic_write_json, read_json

MANIFEST = "manifest.json"


def cache_root() -> Path:
    """``$ROUTEKIT_CACHE``, else ``~/.cache/routekit`` (not created here)."""
    return Path(os.environ.get("ROUTEKIT_CACHE", Path.home() / ".cache" / "routekit")).expanduser()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(root: str | os.PathLike) -> None:
    """Write ``root/manifest.json``: every other file under ``root`` with size and SHA-256."""
    root = Path(root)
    files = {
        str(p.relative_to(root)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(root.rglob("*"))
        if p.is_file() and p != root / MANIFEST
    }
    atomic_write_json(root / MANIFEST, {"files": files})


def verify_manifest(root: str | os.PathLike, what: str = "cache entry") -> None:
    """Raise CorruptCacheError if a file listed in ``root``'s manifest is missing or differs
    (size or SHA-256), or the manifest itself is missing or unreadable. ``what`` names the
    entry's kind in the message (``"world cache entry"``)."""
    root = Path(root)
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise CorruptCacheError(f"{what} {str(root)!r} has no {MANIFEST}.")
    try:
        files = read_json(manifest, "manifest")["files"]
        entries = [
            (str(rel), int(meta["size"]), str(meta["sha256"])) for rel, meta in files.items()
        ]
    except Exception as e:  # an unreadable or malformed manifest is corruption too
        raise CorruptCacheError(
            f"{what} {str(root)!r}: unreadable manifest ({type(e).__name__}: {e})."
        ) from e
    for rel, size, sha256 in entries:
        p = root / rel
        if not p.is_file():
            raise CorruptCacheError(f"{what} {str(root)!r}: file {rel!r} is missing.")
        if p.stat().st_size != size or sha256_file(p) != sha256:
            raise CorruptCacheError(
                f"{what} {str(root)!r}: file {rel!r} does not match its checksum "
                "(truncated or modified)."
            )
