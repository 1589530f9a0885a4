"""ProxyLogitsProcessor: adds proxy experts' log-prob offsets to a base's scores inside generate.

It keeps its own KV cache for every distinct proxy model and feeds it only the new token each
step, so the decode costs about one step of each model. Temperature, top-k/top-p and sampling
apply *after* the offset, because ``generate`` appends its warpers after user processors.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor, PreTrainedModel, PreTrainedTokenizerBase

from ..errors import ConfigError
from ..experts import AlphaLike, normalize_alpha
from . import concurrent as _conc
from .concurrent import ConcurrentLike, Pending, ProxyStepper, Runner
from .expert import ProxyExpert

#: ``fusion(base_logp (B, V), tuned_logp (B, K, V), untuned_logp (B, K, V), prior (B, K))``
#: returns the step's weights (B, K); see routekit.proxy.fusion.FusionRule.
FusionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _forward_kwargs(model: PreTrainedModel) -> tuple[str, dict[str, Any]]:
    """The cache keyword this transformers version uses, and logits_to_keep when supported."""
    params = inspect.signature(model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"
    extra: dict[str, Any] = {"use_cache": True}
    if "logits_to_keep" in params:
        extra["logits_to_keep"] = 1
    elif "num_logits_to_keep" in params:
        extra["num_logits_to_keep"] = 1
    return cache_kw, extra


class ProxyLogitsProcessor(LogitsProcessor):
    """Adds ``sum_k alpha_k * (log p_tuned_k - log p_untuned_k)`` to the base's log-probs.

    Use it inside generate, first in the list::

        proc = ProxyLogitsProcessor([expert], alpha=1.0, tokenizer=tok)
        base.generate(**enc, logits_processor=LogitsProcessorList([proc]))

    It returns ``log_softmax(base scores) + offset``; generate's temperature and top-k/top-p
    warpers run after it, so temperature scales the steered distribution.

    * ``alpha``: one number, one per expert (K,), or one row per prompt (batch, K). With
      ``num_return_sequences = n`` the rows are repeated n times.
    * Each distinct proxy model (by object identity) runs once per step with its own KV
      cache: the prompt at the first call (attention mask and positions from the left
      padding, i.e. leading ``pad_token_id``s), then only the newest token. Rows that
      finished get generate's pad tokens; their caches stay aligned and their scores are
      unused. A model whose net weight is zero in every row (alpha = 0) is not run at all.
    * A call whose ``input_ids`` do not extend the previous call's by one token starts over
      (a new ``generate`` call reuses the processor safely; beam search gives the right
      scores but re-runs the proxies on the whole sequence whenever beams reorder).
    * Proxy logits are sliced to ``base_vocab_size`` (default: the width of the base's
      scores); base score columns past it are set to -inf.
    * A sequence longer than a proxy's ``max_position_embeddings`` is refused with a
      ConfigError (no silent truncation: a truncated proxy would steer from another context).
    * Padding: ``attention_mask`` (the prompt's, as given to generate) says which prompt
      positions are padding; without it, leading ``pad_token_id``s are. With neither, a batch
      of more than one row is refused (its padding could not be told from text).
    * ``fusion``: a per-step rule (e.g. :class:`~routekit.proxy.fusion.FusionRule`) called as
      ``fusion(base_logp, tuned_logp, untuned_logp, prior)`` with (B, V), (B, K, V), (B, K, V)
      and alpha rows (B, K) as the prior; the offset added is then ``sum_k w_k * offset_k`` with
      its weights ``w`` (B, K), recorded per step in ``weights_trace``. Experts whose alpha is
      0 in every row are not run; the rule sees only the others.
    * ``concurrent``: inside ``with proc.beside(base):`` (``routekit.mixture`` and
      ``proxy_generate`` do it for you), each step's proxy forward starts when the base's
      forward for that step starts, and runs beside it: ``None`` chooses (a CUDA stream
      on GPU, a forked worker on CPU with >= 2 cores, else sequential), ``False`` keeps
      the sequential path, ``True`` / ``"thread"`` / ``"process"`` force one; see
      :mod:`routekit.proxy.concurrent`. The scores are equal either way. Outside a
      ``beside`` block the proxies run sequentially, inside ``__call__``.
    """

    def __init__(
        self,
        experts: ProxyExpert | Sequence[ProxyExpert],
        alpha: AlphaLike = 1.0,
        *,
        base_vocab_size: int | None = None,
        pad_token_id: int | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        attention_mask: torch.Tensor | None = None,
        fusion: FusionFn | None = None,
        concurrent: ConcurrentLike = None,
    ) -> None:
        experts = [experts] if isinstance(experts, ProxyExpert) else list(experts)
        if not experts:
            raise ConfigError("ProxyLogitsProcessor needs at least one ProxyExpert, got none.")
        for e in experts:
            if not isinstance(e, ProxyExpert):
                raise ConfigError(f"expected ProxyExpert objects, got {type(e).__name__}.")
        if tokenizer is not None:
            for e in experts:
                e.check_base(tokenizer)
            if pad_token_id is None:
                pad_token_id = tokenizer.pad_token_id
        self.experts = experts
        self.alpha = normalize_alpha(alpha, len(experts))
        if fusion is not None and bool((self.alpha < 0).any()):
            raise ConfigError(
                f"dynamic fusion takes non-negative alpha (the prior over experts), got "
                f"{self.alpha.tolist()}; give 0 to leave an expert out."
            )
        self.fusion = fusion
        self.prompt_mask = attention_mask
        self.base_vocab_size = base_vocab_size
        self.pad_token_id = pad_token_id
        # Distinct models by identity, and the sign matrix S (K, M): offset = alpha @ S @ logp.
        self.models: list[PreTrainedModel] = []
        index: dict[int, int] = {}
        pairs = []
        for e in experts:
            for m in (e.tuned, e.untuned):
                if id(m) not in index:
                    index[id(m)] = len(self.models)
                    self.models.append(m)
            pairs.append((index[id(e.tuned)], index[id(e.untuned)]))
        self._pairs = pairs
        sign = torch.zeros(len(experts), len(self.models))
        for k, (t, u) in enumerate(pairs):
            sign[k, t] += 1.0
            sign[k, u] -= 1.0
        self._sign = sign
        self._stepper = ProxyStepper(self.models, [_forward_kwargs(m) for m in self.models])
        self.concurrent = concurrent
        _conc.check_concurrent(concurrent)  # refuse a bad value now, not at the first step
        self._runner: Runner | None = None
        self._resolved = False  # the mode is chosen at the first launch of each beside block
        #: The mode the last ``beside`` block ran in ("sequential", "thread", "process"), and
        #: how many of this processor's steps took their proxy logits from a launch.
        self.mode: str | None = None
        self.concurrent_steps = 0
        self._pending: tuple[torch.Tensor, Pending] | None = None
        limits = [getattr(m.config, "max_position_embeddings", None) for m in self.models]
        self.max_positions = min((int(x) for x in limits if x), default=None)
        self.reset()

    def reset(self) -> None:
        """Forget the caches; the next call starts from its whole ``input_ids``."""
        self._prev_ids: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None
        self._next_pos: torch.Tensor | None = None
        self._length = 0  # longest row's token count fed so far (for the context check)
        self._active: list[int] = []  # models whose coefficient is not zero for some row
        self._coef: list[torch.Tensor] = []  # per active model: (batch, 1) weights
        self._fused: list[int] = []  # with fusion: experts whose alpha is not zero for some row
        self._prior: torch.Tensor | None = None  # with fusion: (batch, K) alpha rows
        self.weights_trace: list[torch.Tensor] = []  # with fusion: (batch, K) weights per step

    # -- state --------------------------------------------------------------------------
    def _continues(self, input_ids: torch.Tensor) -> bool:
        prev = self._prev_ids
        return (
            prev is not None
            and input_ids.shape[0] == prev.shape[0]
            and input_ids.shape[1] == prev.shape[1] + 1
            and torch.equal(input_ids[:, :-1], prev)
        )

    def _coefficients(self, batch: int, device: torch.device) -> None:
        a = self.alpha
        if a.ndim == 2:
            rows = a.shape[0]
            if batch % rows:
                raise ConfigError(
                    f"alpha has {rows} rows but generate runs a batch of {batch}; give one row per "
                    "prompt (rows are repeated for num_return_sequences)."
                )
            a = a.repeat_interleave(batch // rows, dim=0)
        else:
            a = a.expand(batch, -1)
        coef = a @ self._sign  # (batch, M): the weight of each distinct model's log-probs
        self._active = [m for m in range(coef.shape[1]) if bool(coef[:, m].ne(0).any())]
        if self.fusion is not None:  # weights come per step: run every model of a used expert
            self._fused = [k for k in range(a.shape[1]) if bool(a[:, k].ne(0).any())]
            used = {m for k in self._fused for m in self._pairs[k]}
            self._active = sorted(used)
            self._prior = a.to(device)
        self._coef = [coef[:, m : m + 1].to(device) for m in self._active]

    def _check_length(self) -> None:
        if self.max_positions is not None and self._length > self.max_positions:
            raise ConfigError(
                f"the sequence has reached {self._length} tokens but a proxy model's context is "
                f"{self.max_positions} tokens (max_position_embeddings); shorten the prompt or "
                "lower max_new_tokens (routekit does not truncate what a proxy sees)."
            )

    def _prefill_state(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Coefficients, padding mask and positions for a fresh start from ``input_ids``."""
        self._coefficients(input_ids.shape[0], input_ids.device)
        given = self.prompt_mask
        if given is not None and given.shape[1] == input_ids.shape[1] and (
                input_ids.shape[0] % given.shape[0] == 0):
            mask = given.to(input_ids.device).long().repeat_interleave(
                input_ids.shape[0] // given.shape[0], dim=0)
        elif self.pad_token_id is None:
            if input_ids.shape[0] > 1:
                raise ConfigError(
                    "ProxyLogitsProcessor got a batch of several rows but neither pad_token_id "
                    "nor attention_mask, so it cannot tell left padding from text (the proxies "
                    "would read padding as tokens). Pass tokenizer=..., pad_token_id=... or "
                    "attention_mask=..."
                )
            mask = torch.ones_like(input_ids)
        else:
            # Left padding: positions before a row's first non-pad token are padding. Pad may
            # equal EOS, so only *leading* pads count.
            mask = (input_ids != self.pad_token_id).cumsum(1).gt(0).long()
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        self._mask, self._next_pos = mask, pos[:, -1:] + 1
        self._length = int(mask.sum(1).max()) if self._active else 0
        self._check_length()
        return mask, pos

    def _step_state(self, new: torch.Tensor) -> torch.Tensor:
        """Extend the mask by ``new``'s column; returns its positions."""
        self._mask = torch.cat([self._mask, self._mask.new_ones(new.shape[0], 1)], dim=1)
        pos = self._next_pos
        self._next_pos = pos + 1
        self._length += 1
        self._check_length()
        return pos

    def _call(self, method: str, *args: object) -> list[torch.Tensor]:
        # Through the runner when there is one: a forked worker holds the caches.
        if self._runner is not None:
            return self._runner.submit(method, *args).result()
        return getattr(self._stepper, method)(*args)

    def _prefill(self, input_ids: torch.Tensor) -> list[torch.Tensor]:
        mask, pos = self._prefill_state(input_ids)
        return self._call("prefill", self._active, input_ids, mask, pos)

    def _step(self, new: torch.Tensor) -> list[torch.Tensor]:
        pos = self._step_state(new)
        return self._call("step", new, self._mask, pos)

    # -- beside the base ------------------------------------------------------------------
    def beside(self, model: PreTrainedModel) -> Any:
        """``with proc.beside(base): base.generate(..., logits_processor=[proc])`` runs the
        proxies' forward of each step beside the base's (see ``concurrent``); the block's
        end stops the worker."""
        return _conc.beside(model, self)

    def _ensure_runner(self) -> bool:
        if not self._resolved:
            mode = _conc.resolve_mode(self.concurrent, self._stepper.devices)
            try:
                self._runner = _conc.make_runner(mode, self._stepper)
            except (OSError, AssertionError, RuntimeError):
                if self.concurrent is not None:
                    raise
                mode, self._runner = "sequential", None  # no worker here: run in the caller
            self.mode, self._resolved = mode, True
        return self._runner is not None

    def launch(self, ids: torch.Tensor) -> None:
        """Start the proxies' forward on the ids the base's forward is about to read.

        Called by the base's pre-forward hook inside :meth:`beside`. A one-token input that
        extends the last call is a step; anything else starts over. ``__call__`` uses the
        result only if its ``input_ids`` are the ones launched for, else starts over."""
        if self._pending is not None or not self._ensure_runner():
            return
        prev = self._prev_ids
        if (ids.shape[1] == 1 and prev is not None and self._mask is not None
                and ids.shape[0] == prev.shape[0]):
            if not self._active:
                return
            expected = torch.cat([prev, ids], dim=1)
            pos = self._step_state(ids)
            self._pending = (expected, self._runner.submit("step", ids, self._mask, pos))
        else:
            mask, pos = self._prefill_state(ids)
            self._pending = (ids, self._runner.submit("prefill", self._active, ids, mask, pos))

    def close(self) -> None:
        """Stop the worker (thread or process) of a concurrent call; idempotent."""
        pending, self._pending = self._pending, None
        if pending is not None:
            with contextlib.suppress(Exception):
                pending[1].result()
        runner, self._runner, self._resolved = self._runner, None, False
        if runner is not None:
            runner.close()

    # -- the processor ------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logits, restart = None, False
        if self._pending is not None:
            expected, pending = self._pending
            self._pending = None
            out = pending.result()
            if expected.shape == input_ids.shape and torch.equal(expected, input_ids):
                logits = out
                self.concurrent_steps += 1
            else:  # launched for other ids: the state moved on for them, start over
                restart = True
        if logits is None:
            if not restart and self._continues(input_ids):
                logits = self._step(input_ids[:, -1:]) if self._active else []
            else:
                logits = self._prefill(input_ids)
        self._prev_ids = input_ids
        width = scores.shape[-1]
        vocab = self.base_vocab_size or width
        out = F.log_softmax(scores[:, :vocab].float(), dim=-1)
        logps = []
        for lg in logits:
            if lg.shape[-1] < vocab:
                raise ConfigError(
                    f"a proxy model scores {lg.shape[-1]} tokens but the base scores {vocab}; pass "
                    "base_vocab_size=len(tokenizer) if the base's extra rows are padding, or use a "
                    "proxy with the base's vocabulary."
                )
            # A no-op move when the proxy shares the device.
            logps.append(F.log_softmax(lg[:, :vocab].float(), dim=-1).to(out.device))
        if self.fusion is not None:
            out = out + self._fused_offset(out, logps)
        else:
            for lp, c in zip(logps, self._coef):
                out.addcmul_(c, lp)
        if vocab < width:
            out = torch.cat([out, out.new_full((out.shape[0], width - vocab), -math.inf)], dim=1)
        return out

    def _fused_offset(self, base_logp: torch.Tensor, logps: list[torch.Tensor]) -> torch.Tensor:
        """``sum_k w_k * offset_k`` with this step's weights from the fusion rule."""
        weights = base_logp.new_zeros(base_logp.shape[0], len(self.experts))
        if not self._fused:
            self.weights_trace.append(weights)
            return torch.zeros_like(base_logp)
        at = {m: i for i, m in enumerate(self._active)}
        tuned = torch.stack([logps[at[self._pairs[k][0]]] for k in self._fused], dim=1)
        untuned = torch.stack([logps[at[self._pairs[k][1]]] for k in self._fused], dim=1)
        w = self.fusion(base_logp, tuned, untuned, self._prior[:, self._fused])
        weights[:, self._fused] = w
        self.weights_trace.append(weights)
        return torch.einsum("bk,bkv->bv", w, tuned - untuned)
