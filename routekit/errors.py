"""routekit's error family: every message says what was wrong, the offending value, and what to do.

Also :func:`format_validation_error`, which turns a pydantic ``ValidationError`` into that kind
of message (one clause per offending key), for every config, file and command line that
validates with pydantic.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError


class RoutekitError(Exception):
    """Base class of every error routekit raises on purpose."""


class ConfigError(RoutekitError, ValueError):
    """A config file or object has an unknown key, a wrong type or an impossible value."""


class UnknownTaskError(RoutekitError, KeyError):
    """A task name that no registry knows."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ModelLoadError(RoutekitError):
    """A model path that does not exist, or is not a causal language model."""


class TokenizerMismatchError(RoutekitError):
    """A tokenizer that does not fit a model (vocabulary larger than the embeddings, differing ids)."""


class CorruptCacheError(RoutekitError):
    """A cache entry that exists but cannot be loaded; it is removed and rebuilt."""


class FingerprintMismatchError(RoutekitError):
    """A file made for one base model loaded onto another."""


class ExpertFileError(RoutekitError):
    """An expert file that is missing, truncated, corrupt or of the wrong shape."""


class CheckpointError(RoutekitError):
    """A checkpoint directory that cannot be read or compared (missing shards, pickle files, shapes)."""


class TrainingError(RoutekitError):
    """Training stopped: NaN/inf in the loss or parameters, or a resume that does not match."""


class LockHeldError(RoutekitError):
    """A directory another live process is writing (its lock file names the holder's pid and
    host): a second ``routekit compare`` on one run directory."""


class RunTakenOverError(RoutekitError):
    """A worker whose run lost its run directory's lock to another run: it stops writing."""


class MixtureError(RoutekitError):
    """An expert mixture with an unknown expert name, or a NaN, infinite or (where the router
    does not allow it) negative weight.

    Deliberately not a ``ValueError``: pydantic passes it through unwrapped, so the user sees
    routekit's message, not a validation dump.
    """


class RoutekitWarning(UserWarning):
    """Something routekit recovered from on its own but the user should know (e.g. a corrupt
    cache entry that was recomputed)."""


# A union's alternatives add their type to an error's location ('mask.float', 'mask.str');
# field names are lower-case identifiers, so these tags are told apart by their shape.
_UNION_TAG = re.compile(r"(str|int|float|bool|none|(list|dict|tuple|set|literal)\[.*\]|[A-Z]\w*)")


_MISSING = object()


def format_validation_error(e: ValidationError) -> str:
    """One line per key: "key 'a.b': message (got value)"; a union's alternatives are joined."""
    rules: list[str] = []  # rules over several keys: their messages name the keys
    unknown: list[str] = []
    by_key: dict[str, tuple[list[str], Any]] = {}
    for err in e.errors():
        loc = [str(x) for x in err["loc"]]
        while loc and _UNION_TAG.fullmatch(loc[-1]):
            loc.pop()
        key = ".".join(loc)
        msg = str(err["msg"]).removeprefix("Value error, ")
        if not key:
            rules.append(msg)
        elif err["type"] == "extra_forbidden":
            unknown.append(f"unknown key {key!r}; remove it or check its spelling")
        elif err["type"] == "missing":  # its input is the enclosing mapping: not shown
            by_key.setdefault(key, ([], _MISSING))[0].append("this key is required")
        else:
            by_key.setdefault(key, ([], err.get("input")))[0].append(msg)
    parts = [
        f"key {k!r}: {' or '.join(msgs)}" + ("" if value is _MISSING else f" (got {value!r})")
        for k, (msgs, value) in by_key.items()
    ]
    return "; ".join(rules + unknown + parts)
