"""routekit's error family: every message says what was wrong, the offending value, and what to do."""

from __future__ import annotations


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
