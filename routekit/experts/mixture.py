"""The ``mixture`` context: experts of both kinds applied to one model, per call.

``with mixture(model, experts, alpha, tokenizer=tok):`` applies a mixture (alpha as in
``routekit.experts.base``) to every forward and ``generate`` call *of this thread or task* on
``model``: the state lives in ``contextvars``, never on the model, so several threads may use
one model with different mixtures at once. SVF and proxy experts may be mixed in one call.

This is the one room above both kinds: it imports ``routekit.svf`` and ``routekit.proxy``
(which import only ``routekit.experts.base`` / ``registry`` below it). It also holds the
per-call row window, :data:`ROW_WINDOW`, through which ``routekit.generate`` hands each of
its chunks that chunk's rows of a per-prompt alpha.

Three names look alike: ``routekit.mixture`` (this context: apply experts now),
``routekit.Mixture`` (a router's weights for one prompt, ``routekit.routing.mixture``) and
``routekit.mix_experts`` (one SVF expert made from a fixed mixture, to merge or save).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ConfigError
from ..proxy.expert import ProxyExpert
from ..proxy.steering import steering
from ..svf.expert import SVFExpert
from ..svf.layer import SVFCallState, call_state, current_state
from ..svf.model import check_expert_fits, svf_layers
from .base import AlphaLike, Expert, check_experts, normalize_alpha, short_alpha

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

#: Set by :func:`mixture` while a per-prompt (B, ...) alpha is active: called with (chunk
#: start, chunk stop, number of prompts), it returns a context that applies that chunk's rows.
#: ``routekit.generate`` reads it for each chunk it hands to ``model.generate``.
ROW_WINDOW: ContextVar[Callable[[int, int, int], contextlib.AbstractContextManager] | None] = (
    ContextVar("routekit_row_window", default=None))


class _Mixture:
    """A validated mixture ready to apply: SVF scales per layer and proxy alpha per row."""

    def __init__(
        self, model: PreTrainedModel, experts: Sequence[Expert], alpha: AlphaLike,
        tokenizer: PreTrainedTokenizerBase | None, fusion: Any = None,
    ) -> None:
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
                    f"non-negative; got {short_alpha(self.proxy_alpha(self.alpha))}."
                )
        self.experts, self.model, self.tokenizer, self.fusion = experts, model, tokenizer, fusion

    def svf_scales(self, alpha: torch.Tensor) -> dict[int, torch.Tensor]:
        """S ⊙ (1 + Σₖ αₖ (zₖ − 1)) per SVF layer: (r,) or (rows, r)."""
        a = alpha[:, self.svf_idx] if alpha.ndim >= 2 else alpha[self.svf_idx]
        svf = [self.experts[k] for k in self.svf_idx]
        out = {}
        for i, (name, layer) in enumerate(self.layers.items()):
            delta = torch.stack([e.z[name].to("cpu", torch.float32) for e in svf]) - 1.0  # (K_svf, r)
            ai = a[..., i] if a.ndim == 3 else a
            z = 1.0 + ai @ delta
            out[id(layer)] = layer.row_scales(z.to(layer.svf_S.device))
        return out

    def proxy_alpha(self, alpha: torch.Tensor) -> torch.Tensor:
        a = alpha[:, self.proxy_idx] if alpha.ndim >= 2 else alpha[self.proxy_idx]
        return a[..., 0] if a.ndim == 3 else a

    @contextlib.contextmanager
    def applied(self, alpha: torch.Tensor) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            if self.svf_idx:
                # Layers are keyed by identity, so a mixture on another model stays in force.
                outer = current_state()
                scales = {**(outer.scales if outer else {}), **self.svf_scales(alpha)}
                # An enclosing disable_experts() / disable_adapter() stays in force.
                disabled = outer.disabled if outer else False
                stack.enter_context(call_state(SVFCallState(scales=scales, disabled=disabled)))
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

    Not ``routekit.Mixture`` (a router's weights for one prompt: turn a list of them into
    alpha with ``routekit.routing.alpha_table``) nor ``routekit.mix_experts`` (one SVF expert
    made from fixed weights, to merge).
    """
    mix = _Mixture(model, experts, alpha, tokenizer, fusion)
    with mix.applied(mix.alpha):
        yield model
