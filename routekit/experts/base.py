"""What every expert kind shares: the ``Expert`` base, kind records, alpha and file checks.

An expert is either an SVF expert (weight space: one vector z per targeted layer,
``routekit.svf``) or a proxy expert (logit space: a tuned/untuned small-model pair,
``routekit.proxy``). Both subclass :class:`Expert` from here and mix by the same rule, with
the same alpha shapes and the same validation (:func:`normalize_alpha`):

* alpha ``(K,)``: one weight per expert for every prompt; ``(B, K)``: one row per prompt;
  ``(B, K, L)``: per prompt, per expert and per SVF layer (SVF experts only: a proxy
  expert's column must not vary over L). A single number means that weight for every expert.
* Weight 0 is the base, 1 the expert alone, and a mixture is linear in its weights: SVF rows
  use z = 1 + Σₖ αₖ (zₖ − 1) (equal to Transformer²'s Σₖ αₖ zₖ when the weights sum to 1, and
  to the base when every weight is 0); proxy rows add Σₖ αₖ (log p_tunedₖ − log p_untunedₖ).

Each kind describes itself with an :class:`ExpertKind` record and registers it with
``routekit.experts.registry`` when its package is imported; this module knows no kind, so
it imports nothing of ``svf`` or ``proxy``. The ``mixture`` context that applies experts of
both kinds lives above them, in ``routekit.experts.mixture``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..errors import ConfigError, ExpertFileError, FingerprintMismatchError

EXPERT_CONFIG = "expert_config.json"
AlphaLike = float | Sequence[float] | Sequence[Sequence[float]] | torch.Tensor


class Expert:
    """What every expert kind shares: a name, a ``kind`` recorded in ``expert_config.json``,
    ``save_pretrained(save_directory)`` / ``from_pretrained(directory, dtype=..., device=...)``,
    and the identity of the base it was made for (``base_id``: the base model's fingerprint
    for SVF, its tokenizer's for proxies)."""

    kind: ClassVar[str] = ""
    name: str

    @property
    def base_id(self) -> str | None:
        raise NotImplementedError

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> Path:
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **kwargs: Any) -> Expert:
        raise NotImplementedError


@dataclass(frozen=True)
class ExpertKind:
    """How one kind of expert is found, loaded and switched off (registered by its package).

    ``name``: the ``kind`` its ``expert_config.json`` records; ``cls``: its :class:`Expert`
    subclass; ``load``: ``load(directory, **kwargs)`` (default ``cls.from_pretrained``);
    ``formats``: ``format`` values of older configs that predate the ``kind`` field and mean
    this kind; ``disabled``: a factory of a context in which this kind steers nothing (its
    part of ``routekit.experts.disable_experts``).
    """

    name: str
    cls: type[Expert]
    load: Callable[..., Expert] | None = None
    formats: tuple[str, ...] = ()
    disabled: Callable[[], contextlib.AbstractContextManager] | None = None

    def load_from(self, directory: str | os.PathLike, **kwargs: Any) -> Expert:
        """Load an expert of this kind from ``directory``."""
        loader = self.load if self.load is not None else self.cls.from_pretrained
        return loader(directory, **kwargs)


def refuse_foreign_directory(target: Path, own: Sequence[str]) -> None:
    """Refuse to replace ``target`` when it is a file or holds anything but the names in ``own``
    (so saving an expert never deletes a user's directory)."""
    if not target.exists():
        return
    foreign = sorted(p.name for p in target.iterdir() if p.name not in own) if target.is_dir() else []
    if not target.is_dir() or foreign:
        raise ExpertFileError(
            f"{str(target)!r} exists and is not an expert directory (holds {foreign[:5]}); "
            "choose an empty or new directory."
        )


# ----- alpha ---------------------------------------------------------------------------------


def short_alpha(a: torch.Tensor) -> str:
    """An alpha for an error message: its values, cut to 80 characters."""
    text = str(a.tolist())
    return text if len(text) <= 80 else text[:77] + "..."


def normalize_alpha(
    alpha: AlphaLike,
    n_experts: int,
    n_layers: int | None = None,
    *,
    rows: int | None = None,
    svf_columns: Sequence[bool] | None = None,
) -> torch.Tensor:
    """Alpha as a float32 CPU tensor of shape (K,), (B, K) or (B, K, L), validated.

    The one validation every mixture goes through. ``n_layers``: the SVF layer count (needed
    for (B, K, L)); ``rows``: the batch size a (B, ...) alpha must have, when known;
    ``svf_columns``: which experts are SVF (a non-SVF column of a (B, K, L) alpha must not
    vary over L).
    """
    if isinstance(alpha, bool):
        raise ConfigError(f"alpha {alpha!r} is a bool; give numbers.")
    if isinstance(alpha, (int, float)):
        a = torch.full((n_experts,), float(alpha))
    else:
        try:
            a = torch.as_tensor(alpha, dtype=torch.float32).detach().cpu()
        except (TypeError, ValueError, RuntimeError) as e:
            raise ConfigError(f"alpha {alpha!r} is not a number or a table of numbers ({e}).") from e
        if a.ndim == 0:
            a = a.expand(n_experts).clone()
    shapes = f"(K,) = ({n_experts},), (B, K) = (batch, {n_experts})"
    if n_layers is not None:
        shapes += f" or (B, K, L) = (batch, {n_experts}, {n_layers})"
    ok = a.ndim in (1, 2, 3) and a.shape[min(a.ndim - 1, 1)] == n_experts
    if a.ndim == 3:
        ok = ok and n_layers is not None and a.shape[2] == n_layers
    if not ok:
        extra = "" if n_layers is not None or a.ndim != 3 else (
            " (per-layer alpha needs SVF experts on an SVF model)")
        raise ConfigError(
            f"alpha {short_alpha(a)} has shape {tuple(a.shape)} but {n_experts} experts need "
            f"{shapes}{extra}."
        )
    if rows is not None and a.ndim >= 2 and a.shape[0] != rows:
        raise ConfigError(
            f"alpha has {a.shape[0]} row(s) but there are {rows} prompt(s); give one row per prompt."
        )
    if not torch.isfinite(a).all():
        raise ConfigError(f"alpha {short_alpha(a)} holds NaN or inf; every weight must be finite.")
    if a.ndim == 3 and svf_columns is not None:
        for k, is_svf in enumerate(svf_columns):
            if not is_svf and not bool((a[:, k, :] == a[:, k, :1]).all()):
                raise ConfigError(
                    f"alpha column {k} is a proxy expert's but varies over the {n_layers} SVF "
                    "layers; a proxy expert has one weight per prompt (repeat it over L)."
                )
    return a


# ----- expert lists ------------------------------------------------------------------------


def check_experts(experts: Sequence[Expert], what: str) -> list[str]:
    """Refuse no experts, objects that are not experts, and repeated names; returns the names."""
    if not experts:
        raise ConfigError(f"{what} needs at least one expert; got none.")
    for e in experts:
        if not isinstance(e, Expert):
            raise ConfigError(
                f"expected routekit experts (SVFExpert, ProxyExpert), got {type(e).__name__}; "
                "load one with routekit.load_expert(path)."
            )
    names = [e.name for e in experts]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"expert names must be unique in {what}; repeated: {dupes}.")
    return names


def check_same_base(experts: Sequence[Expert]) -> None:
    """Refuse experts of one kind that were made for different bases (naming both)."""
    seen: dict[str, Expert] = {}
    for e in experts:
        first = seen.setdefault(e.kind, e)
        if e.base_id != first.base_id:
            raise FingerprintMismatchError(
                f"expert {e.name!r} was made for base {e.base_id} but expert {first.name!r} for "
                f"base {first.base_id}; experts of one mixture must share a base."
            )

