"""The Router interface and its files: ``route(prompts) -> list[Mixture]``, save and load.

A router directory holds ``router_config.json`` (format, kind, the expert names it was made
for, the base fingerprint where it has one, and the router's own settings) and, for routers
with learned tensors, ``router_model.safetensors``. Both are written in one atomic directory
rename; nothing is pickled. Loading a router for another set of experts, or onto another
base, is refused with both named.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from ..errors import ConfigError, ExpertFileError, FingerprintMismatchError
from ..io import (
    atomic_directory,
    atomic_save_safetensors,
    atomic_write_json,
    load_safetensors,
    model_fingerprint,
    read_config,
)
from .mixture import Mixture

CONFIG_NAME = "router_config.json"
WEIGHTS_NAME = "router_model.safetensors"
FORMAT = "routekit-router"
VERSION = 1

ExpertLike = Any  # an Expert (anything with a ``name``) or an expert name


def expert_names(experts: Sequence[ExpertLike]) -> list[str]:
    """Names of ``experts`` (Expert objects or plain names), refusing none or duplicates."""
    names = [e if isinstance(e, str) else getattr(e, "name", None) for e in experts]
    if not names:
        raise ConfigError("a router needs at least one expert; got none.")
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        raise ConfigError(f"experts must be Expert objects or non-empty names, got {bad!r}.")
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise ConfigError(f"expert names must be distinct; {dups} appear more than once.")
    return names


def base_fingerprint_of(model: torch.nn.Module) -> str:
    """The fingerprint of ``model``'s base weights (an SVF-wrapped model remembers its base's,
    which stays right while an expert is merged in)."""
    return getattr(model, "svf_base_fingerprint", None) or model_fingerprint(model)


def experts_base_fingerprint(experts: Sequence[ExpertLike]) -> str | None:
    """The base fingerprint the SVF experts among ``experts`` share (None if none has one)."""
    fps = {getattr(e, "base_fingerprint", None) for e in experts} - {None}
    if len(fps) > 1:
        raise FingerprintMismatchError(
            f"the experts were made on different bases (fingerprints {sorted(fps)}); route "
            "among experts of one base."
        )
    return fps.pop() if fps else None


class RouterFile(BaseModel):
    """What ``router_config.json`` must contain (unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid")

    format: str
    version: int
    kind: str
    expert_names: list[str]
    base_fingerprint: str | None = None
    config: dict[str, Any] = {}


class Router(ABC):
    """Decides, per prompt, how much of each expert to use.

    Subclasses set ``kind``, implement :meth:`route`, and describe themselves to
    :meth:`save_pretrained` through :meth:`_config` / :meth:`_tensors` and to
    :meth:`from_pretrained` through :meth:`_from_saved`.
    """

    kind: ClassVar[str]
    #: whether this router may produce negative weights (its mixtures carry allow_negative)
    allow_negative: bool = False
    #: a per-decoding-step rule for proxy experts (``routekit.proxy.fusion.FusionRule``) that
    #: generation applies on top of the mixtures, or None when the mixtures are the whole answer
    fusion_rule: Any = None

    def __init__(self, experts: Sequence[ExpertLike], base_fingerprint: str | None = None) -> None:
        self.expert_names = expert_names(experts)
        theirs = experts_base_fingerprint(experts)
        if base_fingerprint and theirs and base_fingerprint != theirs:
            raise FingerprintMismatchError(
                f"the experts were made on a base with fingerprint {theirs!r}, but this router's "
                f"base has fingerprint {base_fingerprint!r}; route with the experts' own base."
            )
        self.base_fingerprint = base_fingerprint or theirs

    @abstractmethod
    def route(self, prompts: Sequence[str]) -> list[Mixture]:
        """One mixture per prompt, over (a subset of) ``self.expert_names``."""

    def __call__(self, prompts: Sequence[str]) -> list[Mixture]:
        return self.route(prompts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(experts={self.expert_names})"

    # ------------------------------------------------------------------ files
    def _config(self) -> dict[str, Any]:
        """JSON-serialisable settings that, with the tensors, rebuild this router."""
        return {}

    def _tensors(self) -> dict[str, torch.Tensor]:
        """Learned tensors saved to ``router_model.safetensors`` (none by default)."""
        return {}

    @classmethod
    def _from_saved(
        cls, file: RouterFile, tensors: dict[str, torch.Tensor], **context: Any
    ) -> Router:
        raise NotImplementedError

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the router to ``directory`` in one rename (a killed save leaves nothing)."""
        file = RouterFile(
            format=FORMAT, version=VERSION, kind=self.kind, expert_names=self.expert_names,
            base_fingerprint=self.base_fingerprint, config=self._config(),
        )
        tensors = self._tensors()
        with atomic_directory(directory) as tmp:
            atomic_write_json(tmp / CONFIG_NAME, file.model_dump(mode="json"))
            if tensors:
                atomic_save_safetensors(tensors, tmp / WEIGHTS_NAME, {"format": FORMAT})
        return Path(directory)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        *,
        experts: Sequence[ExpertLike] | None = None,
        model: torch.nn.Module | None = None,
        **context: Any,
    ) -> Router:
        """Load a router saved by :meth:`save_pretrained`.

        ``experts`` (names or Expert objects): refuse a router made for another set of
        experts. ``model``: refuse a router made on another base (by fingerprint); routers
        that run the base (prompt, classifier) need it, with ``tokenizer=``.
        """
        file = read_router_file(directory)
        router_cls = ROUTERS.get(file.kind)
        if router_cls is None:
            raise ExpertFileError(
                f"router {str(directory)!r} is of unknown kind {file.kind!r}; known kinds: "
                f"{sorted(ROUTERS)}."
            )
        if cls is not Router and not issubclass(router_cls, cls):
            raise ExpertFileError(
                f"{str(directory)!r} holds a {file.kind!r} router, not a {cls.kind!r} one; "
                "load it with routekit.routing.load_router."
            )
        if experts is not None:
            check_expert_set(file, expert_names(experts), directory)
            fp = experts_base_fingerprint(experts)
            check_base(file, fp, directory, what="the experts' base")
        if model is not None:
            check_base(file, base_fingerprint_of(model), directory, what="the model")
        path = Path(directory) / WEIGHTS_NAME
        tensors = load_safetensors(path, "router weights") if path.exists() else {}
        return router_cls._from_saved(file, tensors, model=model, **context)


ROUTERS: dict[str, type[Router]] = {}


def base_from_context(context: dict[str, Any], why: str) -> tuple[Any, Any]:
    """The ``model`` and ``tokenizer`` a router that runs the base must be loaded with."""
    model, tokenizer = context.get("model"), context.get("tokenizer")
    if model is None or tokenizer is None:
        raise ConfigError(f"a router that {why} needs the base: load it with model=... and "
                          "tokenizer=....")
    return model, tokenizer


def register_router(cls: type[Router]) -> type[Router]:
    """Class decorator: make ``cls`` loadable by its ``kind``."""
    ROUTERS[cls.kind] = cls
    return cls


def read_router_file(directory: str | os.PathLike) -> RouterFile:
    """The validated ``router_config.json`` of a router directory."""
    file = read_config(Path(directory) / CONFIG_NAME, RouterFile, "router config")
    if file.format != FORMAT or file.version > VERSION:
        raise ExpertFileError(
            f"{str(directory)!r} is not a routekit router (format {file.format!r}, version "
            f"{file.version}); expected {FORMAT!r} version <= {VERSION}."
        )
    return file


def check_expert_set(file: RouterFile, names: Sequence[str], directory: Any = "router") -> None:
    """Refuse a router made for another set of experts (order does not matter)."""
    if sorted(file.expert_names) != sorted(names):
        raise FingerprintMismatchError(
            f"router {str(directory)!r} was made for experts {file.expert_names}, but was "
            f"given {list(names)}; fit a router for these experts (routekit router fit)."
        )


def check_base(file: RouterFile, fingerprint: str | None, directory: Any, what: str) -> None:
    """Refuse a router made on a base whose fingerprint differs from ``fingerprint``."""
    if fingerprint is not None and file.base_fingerprint is not None and (
        fingerprint != file.base_fingerprint
    ):
        raise FingerprintMismatchError(
            f"router {str(directory)!r} was made on a base with fingerprint "
            f"{file.base_fingerprint!r}, but {what} has fingerprint {fingerprint!r}; fit a "
            "router on this base."
        )


def load_router(
    directory: str | os.PathLike,
    *,
    experts: Sequence[ExpertLike] | None = None,
    model: torch.nn.Module | None = None,
    **context: Any,
) -> Router:
    """Load a router of any kind (see :meth:`Router.from_pretrained`)."""
    return Router.from_pretrained(directory, experts=experts, model=model, **context)
