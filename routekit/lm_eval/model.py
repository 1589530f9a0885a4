"""``RoutekitLM``: a base with routekit experts, a router or a fixed mixture, as an lm-eval model.

Registered with lm-evaluation-harness as ``routekit``. Every batch of requests is routed
first (one mixture per request: a router's choice, or the same fixed mixture), then runs with
one alpha row per request under :func:`routekit.mixture`: one forward per batch for the
log-likelihoods, one ``generate`` per batch for ``generate_until``. SVF experts act on the
base's weights in both; proxy experts steer ``generate`` through the proxy processor and the
log-likelihoods through :class:`routekit.compare.steered.SteeredLM` (proxy-tuning's
distribution, renormalised), so all three request types see one model.

``model_args`` (``--model_args`` or a dict; lm-eval splits the string on ``,``):

- ``model``: ``world`` (default), ``smollm2``, a local checkpoint directory or a ``.gguf``
  file (anything :func:`routekit.load_model` accepts), or a
  loaded ``PreTrainedModel`` with ``tokenizer=`` (dict form only).
- ``experts``: expert directories of either kind, separated by ``:`` (a list in dict form).
- ``router``: a router directory saved for these experts, or ``mixture``: one fixed mixture,
  ``NAME=W`` items separated by ``:`` (``rev=1.0:add=0.5``), or one number for every expert.
- ``chat``: render each context through the tokenizer's chat template (default false).
- ``dtype``, ``device``, ``batch_size`` (requests per forward / generate; default 16),
  ``max_batch_size`` (lm-eval passes it; caps ``batch_size``), ``max_gen_toks`` (default 256).

Anything else is refused, as are experts of another base and a router made for other
experts, all before any request runs (routekit's one-line errors).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..adaptive import AdaptiveModel, check_experts_fit
from ..compare.metrics import answer_rows, score_rows
from ..compare.steered import SteeredLM
from ..errors import ConfigError
from ..eval import generate
from ..experts import Expert, load_expert
from ..experts.mixture import mixture
from ..io import model_fingerprint
from ..models import load_model
from ..proxy import ProxyExpert
from ..routing import FixedRouter, Mixture, Router, alpha_table, load_router
from ..tasks.base import Example
from ..tasks.chat import render_prompt

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import (
        get_rolling_token_windows,
        make_disjoint_window,
        simple_parse_args_string,
    )
except ImportError as e:  # an optional extra
    raise ImportError(
        "routekit.lm_eval needs lm-evaluation-harness: pip install 'routekit[lmeval]'."
    ) from e

MODEL_ARGS = (
    "model",
    "tokenizer",
    "experts",
    "router",
    "mixture",
    "chat",
    "dtype",
    "device",
    "batch_size",
    "max_batch_size",
    "max_gen_toks",
)
LIST_SEP = ":"
GEN_KWARGS = ("until", "max_gen_toks", "do_sample", "temperature")


def parse_model_args(text: str) -> dict[str, Any]:
    """lm-eval's ``key=value,...`` model_args string as a dict (``true``, numbers converted as
    lm-eval converts them); a key given twice is refused."""
    keys = [item.split("=", 1)[0] for item in text.split(",") if item]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ConfigError(f"model_args key(s) {twice} are given more than once in {text!r}.")
    return simple_parse_args_string(text)


def split_list(value: Any, what: str) -> list[Any]:
    """A ``:``-separated string (``--model_args``) or a list (dict form) as a list."""
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [p for p in str(value).split(LIST_SEP) if p]
    if isinstance(value, Sequence):
        return list(value)
    raise ConfigError(f"{what} takes items separated by {LIST_SEP!r} or a list, got {value!r}.")


def parse_mixture(value: Any, names: Sequence[str]) -> dict[str, float]:
    """``mixture=``: ``NAME=W`` items separated by ``:``, a dict, or one number for all experts."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {n: float(value) for n in names}
    if isinstance(value, dict):
        items = list(value.items())
    else:
        items = []
        for item in split_list(value, "mixture"):
            name, sep, weight = str(item).partition("=")
            try:
                items.append((name, float(weight)))
            except ValueError:
                sep = ""
            if not sep or not name:
                raise ConfigError(
                    f"mixture takes NAME=WEIGHT items separated by {LIST_SEP!r} (rev=1.0:add=0.5) "
                    f"or one number, got {item!r}."
                ) from None
    return {str(k): float(v) for k, v in items}


def _render_chat(tokenizer: Any, prompt: str) -> str:
    """The prompt as one user turn of the tokenizer's chat template, ready for generation:
    ``routekit.tasks.chat.render_prompt``, so lm-eval renders exactly as routekit's own
    evaluation does (a tokenizer without a template is refused there)."""
    return render_prompt(tokenizer, prompt, True)


def _cut(text: str, until: Sequence[str]) -> str:
    """The text before the first stop string (lm-eval's ``until``)."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


@register_model("routekit")
class RoutekitLM(LM):
    """An lm-eval model over a routekit base, its experts and a router or fixed mixture."""

    def __init__(
        self,
        model: Any = "world",
        experts: Any = None,
        router: Any = None,
        mixture: Any = None,
        chat: bool = False,
        dtype: str | None = None,
        device: str | None = None,
        batch_size: int | str = 16,
        max_batch_size: int | None = None,
        max_gen_toks: int = 256,
        tokenizer: Any = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise ConfigError(
                f"unknown model_args key(s) {sorted(unknown)} for --model routekit; known keys: "
                f"{', '.join(MODEL_ARGS)}."
            )
        self.batch_size = self._batch_size(batch_size, max_batch_size)
        if not isinstance(chat, bool):
            raise ConfigError(f"chat takes true or false, got {chat!r}.")
        self.chat = chat
        self.max_gen_toks = int(max_gen_toks)
        if router is not None and mixture is not None:
            raise ConfigError("give router= or mixture=, not both.")
        expert_list = [
            e if isinstance(e, Expert) else load_expert(Path(e).expanduser())
            for e in split_list(experts, "experts")
        ]
        names = [e.name for e in expert_list]
        if not expert_list and (router is not None or mixture is not None):
            raise ConfigError("router= and mixture= need experts= (expert directories).")
        if expert_list and router is None and mixture is None:
            raise ConfigError(
                f"experts {names} need a router= directory or a fixed mixture= (e.g. "
                f"mixture={names[0]}=1.0)."
            )
        base, tok = self._load_base(model, tokenizer, dtype, device)
        if not expert_list:
            self.adaptive: AdaptiveModel | None = None
            self.base, self.tokenizer = base, tok
            return
        base_fp = getattr(base, "svf_base_fingerprint", None) or model_fingerprint(base)
        check_experts_fit(base_fp, tok, expert_list)  # before a router names the base
        if router is None:
            router_obj: Router = FixedRouter(expert_list, parse_mixture(mixture, names))
        elif isinstance(router, Router):
            router_obj = router
        else:
            # Refuses a router made for other experts (or another base) before loading it.
            router_obj = load_router(
                Path(router).expanduser(), experts=expert_list, model=base, tokenizer=tok
            )
        # Refuses experts of another base (fingerprints) and a router for other experts.
        self.adaptive = AdaptiveModel(base, tok, expert_list, router_obj)
        self.base, self.tokenizer = self.adaptive.base, tok

    @classmethod
    def create_from_arg_string(
        cls, arg_string: str, additional_config: dict | None = None
    ) -> RoutekitLM:
        """lm-eval's constructor from ``--model_args``; a key given there (``batch_size``,
        ``device``) wins over lm-eval's own option of that name, whose default it always sends."""
        return cls.create_from_arg_obj(parse_model_args(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(
        cls, arg_dict: dict[str, Any], additional_config: dict | None = None
    ) -> RoutekitLM:
        extra = {
            k: v
            for k, v in (additional_config or {}).items()
            if v is not None and k not in arg_dict
        }
        if str(extra.get("device", "")).startswith("cuda") and not torch.cuda.is_available():
            del extra["device"]  # lm-eval's CLI default; without a GPU the model stays on CPU
        return cls(**arg_dict, **extra)

    # ----- setup -------------------------------------------------------------------------------
    @staticmethod
    def _batch_size(batch_size: int | str, max_batch_size: int | None) -> int:
        try:
            size = int(batch_size)
        except (TypeError, ValueError):
            raise ConfigError(
                f"batch_size takes a whole number of requests per forward, got {batch_size!r} "
                "('auto' is not supported by --model routekit)."
            ) from None
        if size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {size}.")
        return min(size, int(max_batch_size)) if max_batch_size else size

    @staticmethod
    def _load_base(model: Any, tokenizer: Any, dtype: str | None, device: str | None) -> Any:
        if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} is not available here (no CUDA); use device=cpu.")
        if dtype is not None and not isinstance(getattr(torch, str(dtype), None), torch.dtype):
            raise ConfigError(f"dtype {dtype!r} is not a torch dtype (float32, bfloat16, ...).")
        return load_model(model, tokenizer, dtype=dtype, device=device)  # names, paths, objects

    # ----- one batch ---------------------------------------------------------------------------
    @property
    def experts(self) -> list[Expert]:
        return self.adaptive.experts if self.adaptive else []

    def mixtures(self, prompts: Sequence[str]) -> list[Mixture]:
        """Each prompt's mixture (the router's choice, or the fixed one)."""
        return self.adaptive.route(prompts) if self.adaptive else [Mixture.base() for _ in prompts]

    def _prompt(self, context: str) -> str:
        return _render_chat(self.tokenizer, context) if self.chat else context

    def _applied(self, contexts: Sequence[str]) -> tuple[Any, torch.Tensor | None]:
        """The ``routekit.mixture`` context for these requests (one alpha row each)."""
        if not self.adaptive:
            return _nothing(), None
        alpha = alpha_table(self.mixtures(contexts), self.adaptive.expert_names)
        return mixture(
            self.base,
            self.experts,
            alpha,
            tokenizer=self.tokenizer,
            fusion=self.adaptive.router.fusion_rule,
        ), alpha

    def _scorer(self, alpha: torch.Tensor | None) -> torch.nn.Module:
        """The model whose forward gives the mixture's log-probs: the base (SVF rows act
        inside it) or the base steered by the proxy experts' rows."""
        if alpha is None:
            return self.base
        if self.adaptive.router.fusion_rule is not None:
            raise ConfigError(
                f"the {type(self.adaptive.router).__name__} chooses proxy weights at each decoding "
                "step, so it defines no log-likelihood; use it with generate_until tasks only."
            )
        idx = [k for k, e in enumerate(self.experts) if isinstance(e, ProxyExpert)]
        if not idx:
            return self.base
        rows = alpha[:, idx] if alpha.ndim == 2 else alpha[:, idx, 0]
        return SteeredLM(self.base, [self.experts[k] for k in idx], rows)

    def _score(
        self, contexts: Sequence[str], rows: list[tuple[list[int], int]]
    ) -> tuple[Any, list[bool]]:
        applied, alpha = self._applied(contexts)
        with applied:
            return score_rows(self._scorer(alpha), self.tokenizer, rows, batch_size=len(rows))

    def _chunks(self, items: Sequence[Any], desc: str) -> Iterator[Sequence[Any]]:
        bar = tqdm(
            total=len(items), desc=desc, disable=len(items) < 2 * self.batch_size, leave=False
        )
        for i in range(0, len(items), self.batch_size):
            yield items[i : i + self.batch_size]
            bar.update(min(self.batch_size, len(items) - i))
        bar.close()

    # ----- lm-eval's three request types ------------------------------------------------------
    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        """``(context, continuation)`` -> (log p(continuation | context), is_greedy).

        The context is encoded as generation sees it (special tokens included) and the
        continuation on its own, as routekit's compare metrics do (``answer_loglik``)."""
        out: list[tuple[float, bool]] = []
        for chunk in self._chunks([r.args for r in requests], "loglikelihood"):
            contexts = [c for c, _ in chunk]
            rows = answer_rows(
                self.tokenizer, [Example(self._prompt(c), x, target=x) for c, x in chunk]
            )
            rows = [self._with_prefix(ids, start) for ids, start in rows]
            scores, greedy = self._score(contexts, rows)
            out.extend(zip(scores.sums, greedy))
        return out

    def _prefix_id(self) -> int:
        tok = self.tokenizer
        for cand in (tok.bos_token_id, tok.eos_token_id):
            if cand is not None:
                return int(cand)
        raise ConfigError("the tokenizer has neither a BOS nor an EOS token to start a text with.")

    def _with_prefix(self, ids: list[int], start: int) -> tuple[list[int], int]:
        # An empty context encodes to nothing on tokenizers without BOS; the first token would
        # then go unscored, so it is conditioned on BOS/EOS (lm-eval's prefix token).
        return ([self._prefix_id(), *ids], start + 1) if start == 0 else (ids, start)

    def _max_length(self) -> int:
        limits = [getattr(self.base.config, "max_position_embeddings", None)]
        limits += [e.max_positions for e in self.experts if isinstance(e, ProxyExpert)]
        return min(int(n) for n in limits if n) if any(limits) else 2048

    def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
        """``(text,)`` -> log p(text), in windows of the model's context (lm-eval's rolling
        windows, each conditioned on the BOS/EOS prefix token); routed on the text."""
        out = []
        for (text,) in (r.args for r in requests):
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    token_list=ids,
                    prefix_token=self._prefix_id(),
                    max_seq_len=self._max_length(),
                    context_len=1,
                )
            ]
            total = 0.0
            for chunk in self._chunks(windows, "loglikelihood_rolling"):
                rows = [(ctx + pred, len(ctx)) for ctx, pred in chunk]
                total += sum(self._score([text] * len(rows), rows)[0].sums)
            out.append(total)
        return out

    def generate_until(self, requests: list[Any]) -> list[str]:
        """``(context, gen_kwargs)`` -> the greedy (or sampled) continuation, cut before the
        first ``until`` string; at most ``max_gen_toks`` new tokens, stopping at EOS."""
        results: list[str | None] = [None] * len(requests)
        groups: dict[Any, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(_gen_key(r.args[1]), []).append(i)
        for key, idx in groups.items():
            kw = dict(key)
            until = kw.pop("until")
            max_new = int(kw.pop("max_gen_toks", self.max_gen_toks))
            do_sample = bool(kw.pop("do_sample", False))
            temperature = float(kw.pop("temperature", 1.0))
            do_sample = do_sample and temperature > 0  # temperature 0 is greedy, as in lm-eval
            temperature = temperature if do_sample else 1.0
            for chunk in self._chunks(idx, "generate_until"):
                contexts = [requests[i].args[0] for i in chunk]
                applied, _ = self._applied(contexts)
                with applied:
                    texts = generate(
                        self.base,
                        self.tokenizer,
                        [self._prompt(c) for c in contexts],
                        max_new_tokens=max_new,
                        batch_size=len(contexts),
                        do_sample=do_sample,
                        temperature=temperature,
                    )
                for i, text in zip(chunk, texts):
                    results[i] = _cut(text, until)
        return [r or "" for r in results]


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _gen_key(gen_kwargs: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Requests with equal generation options share batches; unknown options are refused."""
    extra = sorted(set(gen_kwargs) - set(GEN_KWARGS))
    if extra:
        raise ConfigError(
            f"generation option(s) {extra} are not supported by --model routekit; it takes "
            f"{', '.join(GEN_KWARGS)}."
        )
    until = gen_kwargs.get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    items = {k: v for k, v in gen_kwargs.items() if k != "until"}
    return (("until", tuple(until)), *sorted(items.items()))
