"""AdaptiveModel: two-pass adaptive inference (Transformer²) over experts of either kind.

Pass 1 routes: a :class:`~routekit.routing.Router` gives every prompt a
:class:`~routekit.routing.Mixture`. Pass 2 generates every row with its own mixture in one
``generate`` call (``routekit.mixture``): SVF experts through the factored per-row path, or
merged into the weights when the whole batch shares one mixture; proxy experts through the
proxy processor with one alpha row per prompt; both kinds in the same call.

Many threads may call :meth:`AdaptiveModel.generate` at once. Requests that arrive while a
batch runs are gathered into the next batch (their mixtures are simply more rows) and each
caller gets back its own results; only one batch uses the model at a time, which is also
what makes the merged path (a change to shared weights) safe.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..errors import ConfigError, ExpertFileError, FingerprintMismatchError
from ..eval import generate as generate_texts
from ..experts import Expert, check_experts, check_same_base, load_expert
from ..experts.mixture import mixture
from ..io import (
    atomic_directory,
    atomic_write_json,
    model_fingerprint,
    read_config,
    tokenizer_fingerprint,
)
from ..proxy import ProxyExpert
from ..routing import Mixture, Router, alpha_table, load_router
from ..svf import SVFConfig, SVFExpert, get_svf_model, mix_experts, svf_layers
from ..svf.model import merged

CONFIG_NAME = "adaptive_config.json"
FORMAT = "routekit-adaptive"


class _AdaptiveFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: str
    version: int
    experts: list[str]  # subdirectories of experts/, in order
    base_fingerprint: str
    tokenizer_fingerprint: str
    chat: bool = False  # prompts read through the tokenizer's chat template


@dataclass
class AdaptiveOutput:
    """What one :meth:`AdaptiveModel.generate_with_details` call produced."""

    texts: list[str]
    mixtures: list[Mixture]
    route_s: float
    generate_s: float
    merged: bool  # True when the batch shared one mixture and ran merged


@dataclass
class _Request:
    prompts: list[str]
    kwargs: dict[str, Any]
    key: Any
    done: threading.Event = field(default_factory=threading.Event)
    result: AdaptiveOutput | None = None
    error: BaseException | None = None


def _batch_key(kwargs: dict[str, Any]) -> Any:
    """Requests batch together only when their generate options are equal plain values."""
    items = []
    for k, v in sorted(kwargs.items()):
        if not isinstance(v, (int, float, str, bool, type(None))):
            return object()  # a tensor, processor, ...: this request runs on its own
        items.append((k, v))
    return tuple(items)


def check_experts_fit(
    base_fingerprint: str, tokenizer: PreTrainedTokenizerBase, experts: Sequence[Expert]
) -> None:
    """Refuse an expert made for another base: an SVF expert by the base's fingerprint, a
    proxy expert by the tokenizer's vocabulary (naming the expert and both identities)."""
    for e in experts:
        if isinstance(e, ProxyExpert):
            e.check_base(tokenizer)
        elif e.base_fingerprint != base_fingerprint:
            raise FingerprintMismatchError(
                f"expert {e.name!r} was trained on base {e.base_fingerprint} but this base is "
                f"{base_fingerprint}; load the base it was trained on."
            )


class AdaptiveModel:
    """Route, then generate: ``AdaptiveModel(base, tokenizer, experts, router)``.

    SVF experts need ``base`` wrapped by ``get_svf_model``; a plain base is wrapped here with
    the experts' ``target_modules``. Every expert must have been made for this base (SVF:
    model fingerprint; proxy: the tokenizer's vocabulary), and the router for these experts.
    """

    def __init__(
        self,
        base: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        experts: Sequence[Expert],
        router: Router,
        *,
        svf_config: SVFConfig | None = None,
        chat: bool | None = None,
    ) -> None:
        experts = list(experts)
        router_chat = getattr(router, "chat", None)
        if chat is not None and router_chat is not None and bool(chat) != router_chat:
            raise ConfigError(
                f"chat={chat} but the {type(router).__name__} reads prompts with chat={router_chat}; "
                "fit the router with the same chat setting, so routing and generation read the "
                "same rendered prompt."
            )
        self.chat = bool(chat if chat is not None else router_chat or False)
        names = check_experts(experts, "an AdaptiveModel")
        check_same_base(experts)
        if sorted(router.expert_names) != sorted(names):
            raise FingerprintMismatchError(
                f"the router was made for experts {router.expert_names} but the model has "
                f"{names}; fit a router for these experts (routekit router fit)."
            )
        svf = [e for e in experts if isinstance(e, SVFExpert)]
        if svf and router.fusion_rule is not None:
            raise ConfigError(
                f"the {type(router).__name__} weights proxy experts per decoding step, but "
                f"{[e.name for e in svf]} are SVF experts; use it with proxy experts only."
            )
        if svf and not svf_layers(base):
            get_svf_model(base, svf_config or SVFConfig(target_modules=svf[0].target_modules))
        base_fp = getattr(base, "svf_base_fingerprint", None) or model_fingerprint(base)
        if router.base_fingerprint is not None and router.base_fingerprint != base_fp:
            raise FingerprintMismatchError(
                f"the router was made on base {router.base_fingerprint} but this base is {base_fp}."
            )
        check_experts_fit(base_fp, tokenizer, experts)
        self.base, self.tokenizer, self.experts, self.router = base, tokenizer, experts, router
        self.expert_names = names
        self.base_fingerprint = base_fp
        self._run_lock = threading.Lock()  # one batch on the model at a time
        self._queue_lock = threading.Lock()
        self._queue: list[_Request] = []

    def __repr__(self) -> str:
        kinds = ", ".join(f"{e.name}:{e.kind}" for e in self.experts)
        return f"AdaptiveModel(experts=[{kinds}], router={type(self.router).__name__})"

    # ----- pass 1 ----------------------------------------------------------------------------
    def route(self, prompts: Sequence[str]) -> list[Mixture]:
        """The router's mixture for each prompt, checked against this model's experts."""
        mixtures = self.router.route(list(prompts))
        if len(mixtures) != len(prompts):
            raise ConfigError(
                f"the router returned {len(mixtures)} mixtures for {len(prompts)} prompts."
            )
        return [m.check(self.expert_names) for m in mixtures]

    # ----- pass 2 ----------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], **generate_kwargs: Any) -> list[str]:
        """Route every prompt, then generate it with its own mixture; returns the new text of
        each (``num_return_sequences`` completions per prompt, grouped by prompt). Keyword
        arguments go to :func:`routekit.generate` (max_new_tokens, do_sample, ...)."""
        return self.generate_with_details(prompts, **generate_kwargs).texts

    def generate_with_details(self, prompts: Sequence[str], **generate_kwargs: Any) -> AdaptiveOutput:
        """:meth:`generate`, also returning the mixtures and the time of each pass."""
        if isinstance(prompts, str):
            raise ConfigError("generate takes a list of prompts, not one string; wrap it in [].")
        req = _Request(list(prompts), dict(generate_kwargs), _batch_key(generate_kwargs))
        with self._queue_lock:
            self._queue.append(req)
        with self._run_lock:
            if not req.done.is_set():
                with self._queue_lock:
                    batch = [r for r in self._queue if r.key == req.key]
                    self._queue = [r for r in self._queue if r.key != req.key]
                self._serve(batch)
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    def _serve(self, batch: list[_Request]) -> None:
        prompts = [p for r in batch for p in r.prompts]
        try:
            out = self._run(prompts, batch[0].kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to every caller of the batch
            for r in batch:
                r.error = e
                r.done.set()
            return
        n = len(out.texts) // max(len(prompts), 1)
        start = 0
        for r in batch:
            stop = start + len(r.prompts)
            r.result = AdaptiveOutput(out.texts[start * n: stop * n], out.mixtures[start:stop],
                                      out.route_s, out.generate_s, out.merged)
            r.done.set()
            start = stop

    def _run(self, prompts: list[str], kwargs: dict[str, Any]) -> AdaptiveOutput:
        t0 = time.perf_counter()
        mixtures = self.route(prompts)
        t1 = time.perf_counter()
        alpha = alpha_table(mixtures, self.expert_names)
        svf_idx = [k for k, e in enumerate(self.experts) if isinstance(e, SVFExpert)]
        shared = len(prompts) > 0 and bool((alpha == alpha[:1]).all())
        use_merged = shared and bool(alpha[0, svf_idx].ne(0).any()) if svf_idx else False
        if use_merged:
            texts = self._generate_merged(prompts, alpha[0], svf_idx, kwargs)
        else:
            with mixture(self.base, self.experts, alpha, tokenizer=self.tokenizer,
                         fusion=self.router.fusion_rule):
                texts = generate_texts(self.base, self.tokenizer, prompts, chat=self.chat, **kwargs)
        return AdaptiveOutput(texts, mixtures, t1 - t0, time.perf_counter() - t1, use_merged)

    def _generate_merged(
        self, prompts: list[str], row: torch.Tensor, svf_idx: list[int], kwargs: dict[str, Any]
    ) -> list[str]:
        # One mixture for the whole batch: its SVF part merged (base speed), its proxy part (if
        # any) through the processor. Safe because only one batch runs at a time.
        svf = [self.experts[k] for k in svf_idx]
        with merged(self.base, mix_experts(svf, row[svf_idx].unsqueeze(0), name="batch")):
            proxy_idx = [k for k in range(len(self.experts)) if k not in svf_idx]
            if proxy_idx and bool(row[proxy_idx].ne(0).any()):
                with mixture(self.base, [self.experts[k] for k in proxy_idx], row[proxy_idx],
                             tokenizer=self.tokenizer, fusion=self.router.fusion_rule):
                    return generate_texts(self.base, self.tokenizer, prompts, chat=self.chat,
                                          **kwargs)
            return generate_texts(self.base, self.tokenizer, prompts, chat=self.chat,
                                          **kwargs)

    # ----- serving one mixture elsewhere ------------------------------------------------------
    def export_merged(self, mixture_: Mixture | dict[str, float], directory: str | os.PathLike) -> Path:
        """Write an ordinary Hugging Face checkpoint (safetensors, config, tokenizer) with one
        SVF mixture merged in, loadable by ``AutoModelForCausalLM.from_pretrained`` and so
        servable by vLLM or TGI. Proxy experts cannot be merged (they run extra models at
        every step) and per-row mixtures need routekit's own path; both are refused."""
        from ..svf.delta import save_adapted_checkpoint

        mix = mixture_ if isinstance(mixture_, Mixture) else Mixture(weights=dict(mixture_))
        mix.check(self.expert_names)
        row = alpha_table([mix], self.expert_names)[0]
        proxies = [e.name for k, e in enumerate(self.experts)
                   if isinstance(e, ProxyExpert) and bool(row[k].ne(0).any())]
        if proxies:
            raise ConfigError(
                f"the mixture gives weight to proxy expert(s) {proxies}; a proxy expert steers "
                "every decoding step with its own models, so it cannot be merged into one "
                "checkpoint. Serve it with routekit (AdaptiveModel.generate / routekit generate)."
            )
        svf_idx = [k for k, e in enumerate(self.experts) if isinstance(e, SVFExpert)]
        if not svf_idx:
            raise ConfigError("this AdaptiveModel has no SVF experts to merge.")
        expert = mix_experts([self.experts[k] for k in svf_idx], row[svf_idx].unsqueeze(0),
                             name=str(mix))
        return save_adapted_checkpoint(self.base, directory, expert=expert, tokenizer=self.tokenizer)

    # ----- files ------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the bundle (experts/, router/, adaptive_config.json) in one atomic rename."""
        dirs = [f"{i:02d}-{e.name}" for i, e in enumerate(self.experts)]
        with atomic_directory(directory) as tmp:
            for d, e in zip(dirs, self.experts):
                if isinstance(e, ProxyExpert):
                    e.save_pretrained(tmp / "experts" / d, base_tokenizer=self.tokenizer)
                else:
                    e.save_pretrained(tmp / "experts" / d)
            self.router.save_pretrained(tmp / "router")
            atomic_write_json(tmp / CONFIG_NAME, _AdaptiveFile(
                format=FORMAT, version=1, experts=dirs, base_fingerprint=self.base_fingerprint,
                tokenizer_fingerprint=tokenizer_fingerprint(self.tokenizer),
                chat=self.chat).model_dump())
        return Path(directory)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, base: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
    ) -> AdaptiveModel:
        """Load a bundle onto ``base``; refuses a base (or tokenizer) other than the one it was
        made for, naming both fingerprints."""
        directory = Path(directory)
        cfg = read_config(directory / CONFIG_NAME, _AdaptiveFile, "adaptive model config")
        if cfg.format != FORMAT:
            raise ExpertFileError(f"{str(directory)!r} holds format {cfg.format!r}, not {FORMAT!r}.")
        have = getattr(base, "svf_base_fingerprint", None) or model_fingerprint(base)
        if have != cfg.base_fingerprint:
            raise FingerprintMismatchError(
                f"{str(directory)!r} was made for base {cfg.base_fingerprint} but the given base is "
                f"{have}; load the base it was made for."
            )
        if tokenizer_fingerprint(tokenizer) != cfg.tokenizer_fingerprint:
            raise FingerprintMismatchError(
                f"{str(directory)!r} was made with tokenizer {cfg.tokenizer_fingerprint} but the "
                f"given tokenizer is {tokenizer_fingerprint(tokenizer)}."
            )
        experts = [load_expert(directory / "experts" / d) for d in cfg.experts]
        router = load_router(directory / "router", experts=experts, model=base, tokenizer=tokenizer)
        return cls(base, tokenizer, experts, router, chat=cfg.chat)
