"""One surface for every expert: the ``Expert`` base, ``load_expert`` and the ``mixture`` context.

An expert is either an SVF expert (weight space: one vector z per targeted layer) or a proxy
expert (logit space: a tuned/untuned small-model pair). Both mix by the same rule, with the
same alpha shapes and the same validation:

* alpha ``(K,)``: one weight per expert for every prompt; ``(B, K)``: one row per prompt;
  ``(B, K, L)``: per prompt, per expert and per SVF layer (SVF experts only: a proxy
  expert's column must not vary over L). A single number means that weight for every expert.
* Weight 0 is the base, 1 the expert alone, and a mixture is linear in its weights: SVF rows
  use z = 1 + Σₖ αₖ (zₖ − 1) (equal to Transformer²'s Σₖ αₖ zₖ when the weights sum to 1, and
  to the base when every weight is 0); proxy rows add Σₖ αₖ (log p_tunedₖ − log p_untunedₖ).

``with mixture(model, experts, alpha, tokenizer=tok):`` applies a mixture to every forward
and ``generate`` call *of this thread or task* on ``model``: the state lives in
``contextvars``, never on the model, so several threads may use one model with different
mixtures at once. SVF and proxy experts may be mixed in one call.

This module sits above ``routekit.svf`` and ``routekit.proxy`` (which subclass ``Expert``
from here): it imports them inside functions only, so either package imports on its own.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from .errors import ConfigError, ExpertFileError, FingerprintMismatchError
from .io import read_json

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

EXPERT_CONFIG = "expert_config.json"
AlphaLike = float | Sequence[float] | Sequence[Sequence[float]] | torch.Tensor


class Expert:
    """What every expert kind shares: a name, a ``kind`` recorded in ``expert_config.json``,
    ``save_pretrained`` / ``from_pretrained``, and the identity of the base it was made for
    (``base_id``: the base model's fingerprint for SVF, its tokenizer's for proxies)."""

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


def _kinds() -> dict[str, type[Expert]]:
    from .proxy import ProxyExpert
    from .svf import SVFExpert

    return {"svf": SVFExpert, "proxy": ProxyExpert}


def expert_kind(directory: str | os.PathLike) -> str:
    """The ``kind`` an expert directory records; refuses a directory that is no expert."""
    directory = Path(directory)
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise ExpertFileError(
            f"expert directory {str(directory)!r} {what}; an expert is a directory written by "
            "save_pretrained."
        )
    raw = read_json(directory / EXPERT_CONFIG, what="expert config")
    kind = raw.get("kind") if isinstance(raw, dict) else None
    if kind is None and isinstance(raw, dict) and raw.get("format") == "routekit-svf-expert":
        kind = "svf"  # version-1 SVF experts predate the kind field
    known = sorted(_kinds())
    if kind not in known:
        found = f"kind {kind!r}" if kind is not None else (
            f"no kind (keys {sorted(raw)[:8]})" if isinstance(raw, dict) else f"a {type(raw).__name__}")
        raise ExpertFileError(
            f"{str(directory / EXPERT_CONFIG)!r} holds {found}; routekit experts are of kind "
            f"{known}. Give a directory written by SVFExpert or ProxyExpert.save_pretrained."
        )
    return kind


def load_expert(directory: str | os.PathLike, **kwargs: Any) -> Expert:
    """Load an expert of either kind from its directory (keyword arguments go to the kind's
    ``from_pretrained``, e.g. ``dtype`` or ``device`` for proxy experts)."""
    return _kinds()[expert_kind(directory)].from_pretrained(directory, **kwargs)


def check_expert_kind(directory: str | os.PathLike, cls: type[Expert]) -> None:
    """Refuse loading ``directory`` with ``cls`` when it holds the other kind (naming it)."""
    kind = expert_kind(directory)
    if kind != cls.kind:
        raise ExpertFileError(
            f"{str(directory)!r} holds a {kind!r} expert, not a {cls.kind!r} expert; load it with "
            f"routekit.load_expert(path) or {_kinds()[kind].__name__}.from_pretrained."
        )


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


def _short(a: torch.Tensor) -> str:
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
            f"alpha {_short(a)} has shape {tuple(a.shape)} but {n_experts} experts need "
            f"{shapes}{extra}."
        )
    if rows is not None and a.ndim >= 2 and a.shape[0] != rows:
        raise ConfigError(
            f"alpha has {a.shape[0]} row(s) but there are {rows} prompt(s); give one row per prompt."
        )
    if not torch.isfinite(a).all():
        raise ConfigError(f"alpha {_short(a)} holds NaN or inf; every weight must be finite.")
    if a.ndim == 3 and svf_columns is not None:
        for k, is_svf in enumerate(svf_columns):
            if not is_svf and not bool((a[:, k, :] == a[:, k, :1]).all()):
                raise ConfigError(
                    f"alpha column {k} is a proxy expert's but varies over the {n_layers} SVF "
                    "layers; a proxy expert has one weight per prompt (repeat it over L)."
                )
    return a


# ----- the mixture context -------------------------------------------------------------------


class _Mixture:
    """A validated mixture ready to apply: SVF scales per layer and proxy alpha per row."""

    def __init__(
        self, model: PreTrainedModel, experts: Sequence[Expert], alpha: AlphaLike,
        tokenizer: PreTrainedTokenizerBase | None, fusion: Any = None,
    ) -> None:
        from .proxy import ProxyExpert
        from .svf import SVFExpert
        from .svf.model import check_expert_fits, svf_layers

        experts = list(experts)
        names = check_experts(experts, "a mixture")
        is_svf = [isinstance(e, SVFExpert) for e in experts]
        self.svf_idx = [k for k, s in enumerate(is_svf) if s]
        self.proxy_idx = [k for k, e in enumerate(experts) if isinstance(e, ProxyExpert)]
        self.layers = svf_layers(model) if self.svf_idx else {}
        if self.svf_idx:
            if not self.layers:
                raise ConfigError(
                    f"experts {[names[k] for k in self.svf_idx]} are SVF experts but "
                    f"{type(model).__name__} has no SVF layers; wrap it with "
                    "routekit.get_svf_model(model, SVFConfig(...)) first."
                )
            if any(layer.merged for layer in self.layers.values()):
                raise ConfigError(
                    "the model has an expert merged into its weights; a mixture needs the "
                    "factored path: call routekit.unmerge(model) first."
                )
            for k in self.svf_idx:
                check_expert_fits(model, self.layers, experts[k])
        if self.proxy_idx:
            if tokenizer is None:
                raise ConfigError(
                    "a mixture with proxy experts needs the base's tokenizer (to check the "
                    "proxies' vocabulary and find padding): pass tokenizer=..."
                )
            for k in self.proxy_idx:
                experts[k].check_base(tokenizer)
        self.alpha = normalize_alpha(
            alpha, len(experts), len(self.layers) if self.svf_idx else None, svf_columns=is_svf)
        self.rows = self.alpha.shape[0] if self.alpha.ndim >= 2 else None
        if fusion is not None:
            if not self.proxy_idx:
                raise ConfigError(
                    f"fusion weights proxy experts per decoding step, but the mixture's experts "
                    f"{names} are all SVF experts; drop fusion= or add proxy experts."
                )
            if bool((self.proxy_alpha(self.alpha) < 0).any()):
                raise ConfigError(
                    "with fusion, the proxy experts' alpha is a prior over them and must be "
                    f"non-negative; got {_short(self.proxy_alpha(self.alpha))}."
                )
        self.experts, self.model, self.tokenizer, self.fusion = experts, model, tokenizer, fusion

    def svf_scales(self, alpha: torch.Tensor) -> dict[int, torch.Tensor]:
        """S ⊙ (1 + Σₖ αₖ (zₖ − 1)) per SVF layer: (r,) or (rows, r)."""
        a = alpha[:, self.svf_idx] if alpha.ndim >= 2 else alpha[self.svf_idx]
        svf = [self.experts[k] for k in self.svf_idx]
        out = {}
        for i, (name, layer) in enumerate(self.layers.items()):
            delta = torch.stack([e.z[name] for e in svf]) - 1.0  # (K_svf, r)
            ai = a[..., i] if a.ndim == 3 else a
            z = 1.0 + ai @ delta
            out[id(layer)] = layer.row_scales(z.to(layer.svf_S.device))
        return out

    def proxy_alpha(self, alpha: torch.Tensor) -> torch.Tensor:
        a = alpha[:, self.proxy_idx] if alpha.ndim >= 2 else alpha[self.proxy_idx]
        return a[..., 0] if a.ndim == 3 else a

    @contextlib.contextmanager
    def applied(self, alpha: torch.Tensor) -> Iterator[None]:
        from .eval import ROW_WINDOW
        from .proxy.steering import steering
        from .svf.layer import SVFCallState, call_state, current_state

        with contextlib.ExitStack() as stack:
            if self.svf_idx:
                # Layers are keyed by identity, so a mixture on another model stays in force.
                outer = current_state()
                scales = {**(outer.scales if outer else {}), **self.svf_scales(alpha)}
                stack.enter_context(call_state(SVFCallState(scales=scales)))
            if self.proxy_idx:
                stack.enter_context(steering(
                    self.model, [self.experts[k] for k in self.proxy_idx],
                    self.proxy_alpha(alpha), self.tokenizer, self.fusion))
            token = ROW_WINDOW.set(self._window if alpha.ndim >= 2 else None)
            try:
                yield
            finally:
                ROW_WINDOW.reset(token)

    def _window(self, start: int, stop: int, total: int) -> contextlib.AbstractContextManager:
        # Chunked generation (routekit.generate) hands each chunk its own rows.
        if total != self.rows:
            raise ConfigError(
                f"the mixture has {self.rows} row(s) but generate was given {total} prompt(s); "
                "give one row of alpha per prompt."
            )
        return self.applied(self.alpha[start:stop])


@contextlib.contextmanager
def mixture(
    model: PreTrainedModel,
    experts: Sequence[Expert],
    alpha: AlphaLike = 1.0,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    fusion: Any = None,
) -> Iterator[PreTrainedModel]:
    """``with mixture(model, experts, alpha, tokenizer=tok):`` every forward and ``generate``
    call on ``model`` in this thread (or asyncio task) uses the mixture; nothing changes on
    exit or for other threads.

    ``alpha``: (K,), (B, K) or (B, K, L) as described in this module's docstring. With
    (B, ...) alpha, B must equal the batch of each forward / ``model.generate`` call (rows are
    repeated for ``num_return_sequences``), or the number of prompts given to
    ``routekit.generate``, which hands each of its chunks that chunk's rows. SVF experts need
    ``model`` wrapped by ``get_svf_model`` (and not merged); proxy experts need ``tokenizer``.
    ``fusion``: a per-step rule for the proxy experts (``routekit.proxy.fusion.FusionRule``);
    their alpha is then its non-negative prior and their weights are chosen at every decoding
    step for every row (SVF experts keep their alpha). Everything is checked before anything
    is applied.
    """
    mix = _Mixture(model, experts, alpha, tokenizer, fusion)
    with mix.applied(mix.alpha):
        yield model


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

