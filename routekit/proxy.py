"""Proxy-tuning experts: a small tuned/untuned model pair that steers a base model's logits.

A :class:`ProxyExpert` (proxy-tuning, arXiv:2401.08565; DExperts) holds a small model tuned
for a task and its untuned twin. At each decoding step its *offset* is
``log_softmax(tuned) - log_softmax(untuned)`` over the shared vocabulary, and the base's
next-token scores become ``log_softmax(base) + sum_k alpha_k * offset_k``. The base's
weights are never touched.

:class:`ProxyLogitsProcessor` does this inside ``base.generate(...)``: it keeps its own KV
cache for every distinct proxy model and feeds it only the new token each step, so the
decode costs about one step of each model. Temperature, top-k/top-p and sampling apply
*after* the offset, because ``generate`` appends its warpers after user processors.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .errors import ConfigError, ExpertFileError, TokenizerMismatchError
from .io import (
    atomic_directory,
    atomic_write_json,
    model_fingerprint,
    read_json,
    tokenizer_fingerprint,
)

EXPERT_CONFIG = "expert_config.json"
FORMAT_VERSION = 1

AlphaLike = float | Sequence[float] | Sequence[Sequence[float]] | torch.Tensor


class ProxyExpertConfig(BaseModel):
    """What ``expert_config.json`` of a saved proxy expert records."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="the expert's name")
    kind: str = Field("proxy", description="always 'proxy' (SVF experts say 'svf')")
    format_version: int = Field(FORMAT_VERSION, description="layout version of the directory")
    model_type: str = Field(description="config.model_type of the proxy models")
    vocab_size: int = Field(description="tokens in the proxy tokenizer")
    base_tokenizer_fingerprint: str = Field(description="fingerprint of the base's tokenizer")
    tokenizer_fingerprint: str = Field(description="fingerprint of the proxy's own tokenizer")
    tuned_fingerprint: str = Field(description="routekit.io.model_fingerprint of tuned/")
    untuned_fingerprint: str = Field(description="routekit.io.model_fingerprint of untuned/")


def check_vocab_compatible(
    base_tokenizer: PreTrainedTokenizerBase, proxy_tokenizer: PreTrainedTokenizerBase
) -> None:
    """Refuse a proxy tokenizer that gives any of the base's token strings another id.

    Every id below ``len(base_tokenizer)`` must name the same token string in both; the
    proxy may have extra tail tokens (the base never produces them; they are sliced off).
    Raises :class:`TokenizerMismatchError` naming the first differing token and both ids.
    """
    base_vocab = base_tokenizer.get_vocab()
    proxy_vocab = proxy_tokenizer.get_vocab()
    if base_vocab == proxy_vocab:
        return
    base_by_id = {i: t for t, i in base_vocab.items()}
    proxy_by_id = {i: t for t, i in proxy_vocab.items()}
    for i in range(len(base_tokenizer)):
        base_tok, proxy_tok = base_by_id.get(i), proxy_by_id.get(i)
        if base_tok == proxy_tok:
            continue
        if base_tok is None:
            raise TokenizerMismatchError(
                f"id {i} is unused in the base tokenizer but is {proxy_tok!r} in the proxy's; "
                "the proxy and the base must share a vocabulary. Use a proxy trained with the "
                "base's tokenizer."
            )
        proxy_id = proxy_vocab.get(base_tok)
        where = "is missing from the proxy's" if proxy_id is None else f"has id {proxy_id} in the proxy's"
        raise TokenizerMismatchError(
            f"token {base_tok!r} has id {i} in the base tokenizer but {where} (which gives id {i} "
            f"to {proxy_tok!r}); a proxy expert must give every base token the base's id. Use a "
            "proxy trained with the base's tokenizer (extra tokens after the base's last id are allowed)."
        )


def _logits_width(model: PreTrainedModel) -> int:
    head = model.get_output_embeddings()
    if head is not None and hasattr(head, "weight"):
        return int(head.weight.shape[0])
    return int(model.config.get_text_config().vocab_size)


class ProxyExpert:
    """A tuned small model and its untuned twin; their log-prob difference steers a base.

    ``tokenizer`` is the tokenizer the pair was trained with (needed to check it against a
    base's and to save the expert). Several experts may share one ``untuned`` model object;
    the processor then runs it once per step.
    """

    kind = "proxy"

    def __init__(
        self,
        tuned: PreTrainedModel,
        untuned: PreTrainedModel,
        name: str,
        tokenizer: PreTrainedTokenizerBase | None = None,
        *,
        base_tokenizer_fingerprint: str | None = None,
    ) -> None:
        for role, m in (("tuned", tuned), ("untuned", untuned)):
            if not isinstance(m, PreTrainedModel):
                raise ConfigError(
                    f"ProxyExpert {name!r}: {role} must be a transformers PreTrainedModel, got "
                    f"{type(m).__name__}."
                )
        t_type, u_type = tuned.config.model_type, untuned.config.model_type
        if t_type != u_type:
            raise ConfigError(
                f"ProxyExpert {name!r}: the untuned model is a {u_type!r} but the tuned one is a "
                f"{t_type!r}; the untuned model must be the tuned model's own starting point (same "
                "architecture family and vocabulary)."
            )
        t_width, u_width = _logits_width(tuned), _logits_width(untuned)
        if t_width != u_width:
            raise ConfigError(
                f"ProxyExpert {name!r}: the tuned model scores {t_width} tokens but the untuned one "
                f"{u_width}; they must share one vocabulary."
            )
        self.tuned = tuned
        self.untuned = untuned
        self.name = name
        self.tokenizer = tokenizer
        self.base_tokenizer_fingerprint = base_tokenizer_fingerprint

    def __repr__(self) -> str:
        return f"ProxyExpert({self.name!r}, {self.tuned.config.model_type}, vocab={_logits_width(self.tuned)})"

    @property
    def max_positions(self) -> int | None:
        """The proxies' context length (``max_position_embeddings``), or None if unbounded."""
        limits = [
            getattr(m.config, "max_position_embeddings", None) for m in (self.tuned, self.untuned)
        ]
        limits = [int(x) for x in limits if x]
        return min(limits) if limits else None

    def check_base(self, base_tokenizer: PreTrainedTokenizerBase) -> None:
        """Refuse a base whose tokenizer gives token strings other ids than this expert's."""
        if self.tokenizer is not None:
            check_vocab_compatible(base_tokenizer, self.tokenizer)
            return
        fp = self.base_tokenizer_fingerprint
        if fp is not None and fp != tokenizer_fingerprint(base_tokenizer):
            raise TokenizerMismatchError(
                f"proxy expert {self.name!r} was saved for a base tokenizer with fingerprint {fp!r}, "
                f"but this base's tokenizer has {tokenizer_fingerprint(base_tokenizer)!r}. Use the "
                "base it was made for."
            )

    def save_pretrained(
        self, directory: str | os.PathLike, base_tokenizer: PreTrainedTokenizerBase | None = None
    ) -> Path:
        """Write ``tuned/`` and ``untuned/`` (safetensors + tokenizer) and ``expert_config.json``.

        The directory appears in one rename, so a killed save leaves no half-written expert.
        ``base_tokenizer`` (checked for compatibility) is the one whose fingerprint is recorded;
        by default the expert's own tokenizer, which is the base's when they share it.
        """
        tok = self.tokenizer
        if tok is None:
            raise ConfigError(
                f"proxy expert {self.name!r} has no tokenizer, so a saved copy could not be "
                "checked against a base. Build it with ProxyExpert(..., tokenizer=tok)."
            )
        if base_tokenizer is not None:
            check_vocab_compatible(base_tokenizer, tok)
        base_fp = tokenizer_fingerprint(base_tokenizer if base_tokenizer is not None else tok)
        with atomic_directory(directory) as tmp:
            for role, m in (("tuned", self.tuned), ("untuned", self.untuned)):
                m.save_pretrained(tmp / role, safe_serialization=True)
                tok.save_pretrained(tmp / role)
            cfg = ProxyExpertConfig(
                name=self.name,
                model_type=self.tuned.config.model_type,
                vocab_size=len(tok),
                base_tokenizer_fingerprint=base_fp,
                tokenizer_fingerprint=tokenizer_fingerprint(tok),
                tuned_fingerprint=model_fingerprint(self.tuned),
                untuned_fingerprint=model_fingerprint(self.untuned),
            )
            atomic_write_json(tmp / EXPERT_CONFIG, cfg.model_dump())
        return Path(directory)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> ProxyExpert:
        """Load an expert written by :meth:`save_pretrained`; refuses missing or altered files."""
        directory = Path(directory)
        raw = read_json(directory / EXPERT_CONFIG, what="proxy expert config")
        if not isinstance(raw, dict) or raw.get("kind") != cls.kind:
            kind = raw.get("kind") if isinstance(raw, dict) else None
            raise ExpertFileError(
                f"{str(directory)!r} holds a {kind!r} expert, not a proxy expert; load it with "
                "its own class."
            )
        try:
            cfg = ProxyExpertConfig.model_validate(raw)
        except ValidationError as e:
            raise ExpertFileError(
                f"{str(directory / EXPERT_CONFIG)!r} is not a valid proxy expert config: {e}"
            ) from e
        models = {}
        for role in ("tuned", "untuned"):
            path = directory / role
            try:
                kwargs: dict[str, Any] = {"local_files_only": True}
                if dtype is not None:
                    kwargs["dtype"] = dtype
                m = AutoModelForCausalLM.from_pretrained(path, **kwargs)
            except (OSError, ValueError) as e:
                raise ExpertFileError(
                    f"proxy expert {str(directory)!r}: its {role} model cannot be loaded ({e}); "
                    "save the expert again."
                ) from e
            recorded = getattr(cfg, f"{role}_fingerprint")
            if dtype is None and model_fingerprint(m) != recorded:
                raise ExpertFileError(
                    f"proxy expert {str(directory)!r}: the {role} weights have fingerprint "
                    f"{model_fingerprint(m)!r} but expert_config.json recorded {recorded!r}; the "
                    "files were altered. Save it again."
                )
            if device is not None:
                m.to(device)
            models[role] = m.eval()
        try:
            tok = AutoTokenizer.from_pretrained(directory / "tuned", local_files_only=True)
        except (OSError, ValueError) as e:
            raise ExpertFileError(
                f"proxy expert {str(directory)!r}: its tokenizer cannot be loaded ({e})."
            ) from e
        return cls(
            models["tuned"],
            models["untuned"],
            name=cfg.name,
            tokenizer=tok,
            base_tokenizer_fingerprint=cfg.base_tokenizer_fingerprint,
        )


def _alpha_matrix(alpha: AlphaLike, n_experts: int) -> torch.Tensor:
    """Alpha as a float tensor of shape (K,) or (rows, K); refuses NaN/inf and wrong lengths."""
    if isinstance(alpha, (int, float)):
        a = torch.full((n_experts,), float(alpha))
    else:
        try:
            a = torch.as_tensor(alpha, dtype=torch.float32).detach().cpu()
        except (TypeError, ValueError) as e:
            raise ConfigError(f"alpha {alpha!r} is not a number or a list of numbers ({e}).") from e
    if a.ndim == 0:
        a = a.expand(n_experts).clone()
    if a.ndim not in (1, 2) or a.shape[-1] != n_experts:
        raise ConfigError(
            f"alpha {alpha!r} has shape {tuple(a.shape)}, but there are {n_experts} experts: give "
            f"one number, {n_experts} numbers (one per expert), or a (batch, {n_experts}) table "
            "(one row per prompt)."
        )
    if not torch.isfinite(a).all():
        raise ConfigError(f"alpha {alpha!r} contains NaN or inf; every weight must be a finite number.")
    return a


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


def _new_cache(model: PreTrainedModel) -> Any:
    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers: no config argument
        return DynamicCache()


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
    """

    def __init__(
        self,
        experts: ProxyExpert | Sequence[ProxyExpert],
        alpha: AlphaLike = 1.0,
        *,
        base_vocab_size: int | None = None,
        pad_token_id: int | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
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
        self.alpha = _alpha_matrix(alpha, len(experts))
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
        sign = torch.zeros(len(experts), len(self.models))
        for k, (t, u) in enumerate(pairs):
            sign[k, t] += 1.0
            sign[k, u] -= 1.0
        self._sign = sign
        self._call_kwargs = [_forward_kwargs(m) for m in self.models]
        limits = [getattr(m.config, "max_position_embeddings", None) for m in self.models]
        self.max_positions = min((int(x) for x in limits if x), default=None)
        self.reset()

    def reset(self) -> None:
        """Forget the caches; the next call starts from its whole ``input_ids``."""
        self._prev_ids: torch.Tensor | None = None
        self._caches: list[Any] = []
        self._mask: torch.Tensor | None = None
        self._next_pos: torch.Tensor | None = None
        self._length = 0  # longest row's token count fed so far (for the context check)
        self._active: list[int] = []  # models whose coefficient is not zero for some row
        self._coef: list[torch.Tensor] = []  # per active model: (batch, 1) weights
        self._devices: list[torch.device] = []

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
        self._coef = [coef[:, m : m + 1].to(device) for m in self._active]

    def _check_length(self) -> None:
        if self.max_positions is not None and self._length > self.max_positions:
            raise ConfigError(
                f"the sequence has reached {self._length} tokens but a proxy model's context is "
                f"{self.max_positions} tokens (max_position_embeddings); shorten the prompt or "
                "lower max_new_tokens (routekit does not truncate what a proxy sees)."
            )

    def _run(self, m: int, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        model = self.models[m]
        cache_kw, extra = self._call_kwargs[m]
        dev = self._devices[m]
        out = model(
            input_ids=ids.to(dev),
            attention_mask=mask.to(dev),
            position_ids=pos.to(dev),
            **{cache_kw: self._caches[m]},
            **extra,
        )
        return out.logits[:, -1]

    def _prefill(self, input_ids: torch.Tensor) -> list[torch.Tensor]:
        self._coefficients(input_ids.shape[0], input_ids.device)
        if self.pad_token_id is None:
            mask = torch.ones_like(input_ids)
        else:
            # Left padding: positions before a row's first non-pad token are padding. Pad may
            # equal EOS, so only *leading* pads count.
            mask = (input_ids != self.pad_token_id).cumsum(1).gt(0).long()
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        self._mask, self._next_pos = mask, pos[:, -1:] + 1
        self._length = int(mask.sum(1).max()) if self._active else 0
        self._check_length()
        self._caches = [_new_cache(m) if i in self._active else None for i, m in enumerate(self.models)]
        self._devices = [m.device for m in self.models]  # looked up once, not every step
        return [self._run(m, input_ids, mask, pos) for m in self._active]

    def _step(self, new: torch.Tensor) -> list[torch.Tensor]:
        self._mask = torch.cat([self._mask, self._mask.new_ones(new.shape[0], 1)], dim=1)
        pos = self._next_pos
        self._next_pos = pos + 1
        self._length += 1
        self._check_length()
        return [self._run(m, new, self._mask, pos) for m in self._active]

    # -- the processor ------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._continues(input_ids):
            logits = self._step(input_ids[:, -1:]) if self._active else []
        else:
            logits = self._prefill(input_ids)
        self._prev_ids = input_ids
        width = scores.shape[-1]
        vocab = self.base_vocab_size or width
        out = F.log_softmax(scores[:, :vocab].float(), dim=-1)
        for lg, c in zip(logits, self._coef):
            if lg.shape[-1] < vocab:
                raise ConfigError(
                    f"a proxy model scores {lg.shape[-1]} tokens but the base scores {vocab}; pass "
                    "base_vocab_size=len(tokenizer) if the base's extra rows are padding, or use a "
                    "proxy with the base's vocabulary."
                )
            lp = F.log_softmax(lg[:, :vocab].float(), dim=-1)
            out.addcmul_(c, lp.to(out.device))  # a no-op move when the proxy shares the device
        if vocab < width:
            out = torch.cat([out, out.new_full((out.shape[0], width - vocab), -math.inf)], dim=1)
        return out


def proxy_generate(
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    experts: ProxyExpert | Sequence[ProxyExpert],
    prompts: Sequence[str],
    alpha: AlphaLike = 1.0,
    *,
    max_new_tokens: int = 16,
    do_sample: bool = False,
    batch_size: int = 64,
    **kw: Any,
) -> list[str]:
    """Generate from ``base`` steered by proxy ``experts``; returns each prompt's new text.

    ``alpha``: one number, one per expert, or a (len(prompts), K) table (one row per prompt).
    Prompts are left-padded in batches of ``batch_size``; other keyword arguments
    (temperature, num_return_sequences, progress ...) go to :func:`routekit.eval.generate`.
    A prompt plus ``max_new_tokens`` longer than a proxy's context is refused before any work.
    """
    from .eval import generate  # eval imports tasks; keep proxy importable on its own

    experts = [experts] if isinstance(experts, ProxyExpert) else list(experts)
    table = _alpha_matrix(alpha, len(experts))
    if table.ndim == 2 and table.shape[0] != len(prompts):
        raise ConfigError(
            f"alpha has {table.shape[0]} rows but there are {len(prompts)} prompts; give one row per prompt."
        )
    for e in experts:
        e.check_base(tokenizer)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    limits = [e.max_positions for e in experts if e.max_positions]
    if limits and prompts:
        longest = max(len(ids) for ids in tokenizer(list(prompts))["input_ids"])
        # The last generated token is never fed to a proxy, hence the -1.
        if longest + max_new_tokens - 1 > min(limits):
            raise ConfigError(
                f"the longest prompt has {longest} tokens; with max_new_tokens={max_new_tokens} a "
                f"proxy would see {longest + max_new_tokens - 1} tokens but its context is "
                f"{min(limits)} (max_position_embeddings). Shorten the prompt or lower "
                "max_new_tokens; routekit does not truncate what a proxy sees."
            )
    models = {id(m): m for e in experts for m in (e.tuned, e.untuned)}
    modes = {k: m.training for k, m in models.items()}
    for m in models.values():
        m.eval()
    user = list(kw.pop("logits_processor", None) or [])
    out: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            chunk = list(prompts[i : i + batch_size])
            rows = table[i : i + batch_size] if table.ndim == 2 else table
            proc = ProxyLogitsProcessor(
                experts,
                rows,
                base_vocab_size=min(len(tokenizer), _logits_width(base)),
                pad_token_id=tokenizer.pad_token_id,
            )
            # Ours first: later processors and generate's warpers see the steered log-probs.
            procs = LogitsProcessorList([proc, *user])
            out.extend(
                generate(
                    base,
                    tokenizer,
                    chunk,
                    max_new_tokens=max_new_tokens,
                    batch_size=len(chunk),
                    do_sample=do_sample,
                    logits_processor=procs,
                    **kw,
                )
            )
    finally:
        for k, m in models.items():
            m.train(modes[k])
    return out
