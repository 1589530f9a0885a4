"""ClassifierRouter: a linear classifier on the base's own hidden states.

Features are the base's hidden layers (``layers``: the last one by default, or several,
concatenated; 0 is the embeddings), each mean-pooled over a prompt's real tokens (left
padding, position ids counted from the first real token, so a row's features do not depend
on what it was batched with), standardised with the training set's mean and spread.

Two heads map them to one class per expert plus a ``none`` class for prompts that fit no
expert:

- ``head="logistic"`` (the default): a multinomial logistic regression (L2-penalised,
  class-balanced, fitted to convergence by L-BFGS from zero, so the fit is a convex problem
  with one answer).
- ``head="centroid"``: nearest class mean by cosine similarity of the standardised features;
  the logits are ``CENTROID_SCALE`` times the cosine similarities. It has nothing to fit
  beyond the class means, so it cannot latch onto a direction that only separates the one
  format each class was fitted on (benchmarks/bench_routing.py, ``out_of_format``).

Outputs are soft: a softmax with a temperature, cut to the top-k classes and renormalised;
the ``none`` share goes to the base. ``min_confidence`` abstains: a prompt whose likeliest
class has a probability below it goes to the base.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..errors import ConfigError, ExpertFileError, FingerprintMismatchError
from ..models import left_pad
from ..tasks.chat import render_prompts
from .base import (
    ExpertLike,
    Router,
    RouterFile,
    base_fingerprint_of,
    base_from_context,
    register_router,
)
from .mixture import Mixture

NONE_CLASS = "none"
HEADS = ("logistic", "centroid")
CENTROID_SCALE = 10.0  # cosine similarity (-1..1) to logits: softmax over a usable range


def _layer_indices(layers: Sequence[int] | str, n_hidden: int) -> list[int]:
    """``layers`` as indices into hidden_states (0: embeddings .. n_hidden - 1: last);
    ``"all"`` is every one. Negative indices count from the end."""
    if isinstance(layers, str):
        if layers != "all":
            raise ConfigError(f"layers must be a list of layer indices or 'all', got {layers!r}.")
        return list(range(n_hidden))
    out = []
    for i in layers:
        j = int(i) + n_hidden if int(i) < 0 else int(i)
        if not 0 <= j < n_hidden:
            raise ConfigError(f"layer {i} is out of range for a model with {n_hidden} hidden "
                              f"states (0: embeddings .. {n_hidden - 1}: last).")
        out.append(j)
    if not out or len(set(out)) != len(out):
        raise ConfigError(f"layers must be distinct and at least one, got {list(layers)!r}.")
    return out


def _n_hidden_states(model: PreTrainedModel) -> int:
    return int(getattr(model.config, "num_hidden_layers", None) or model.config.n_layer) + 1


@torch.no_grad()
def hidden_features(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    batch_size: int = 32,
    chat: bool = False,
    layers: Sequence[int] | str = (-1,),
) -> torch.Tensor:
    """Mean of hidden layers over each prompt's real tokens, concatenated in ``layers`` order:
    (N, hidden * len(layers)) float32. The default is the last layer alone.

    ``chat``: the prompts are read through the chat template first, as generation reads them
    (:func:`routekit.tasks.chat.render_prompt`)."""
    idx = _layer_indices(layers, _n_hidden_states(model))
    prompts = render_prompts(tokenizer, list(prompts), chat)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    feats = []
    try:
        for i in range(0, len(prompts), batch_size):
            enc = left_pad(tokenizer, list(prompts[i : i + batch_size]), device)
            ids, mask = enc["input_ids"], enc["attention_mask"]
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos,
                        output_hidden_states=True, use_cache=False)
            m = mask[..., None].float()
            feats.append(torch.cat([
                (out.hidden_states[j].float() * m).sum(1) / m.sum(1).clamp(min=1.0)
                for j in idx], -1).cpu())
    finally:
        model.train(was_training)
    if not feats:
        return torch.zeros((0, model.config.hidden_size * len(idx)), dtype=torch.float32)
    return torch.cat(feats)


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, *, l2: float = 1e-3, max_iter: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced multinomial logistic regression with an L2 penalty on the weights:
    (W (C, D), b (C,)), fitted by L-BFGS from zero (a convex problem: one optimum)."""
    x = x.double()
    counts = torch.bincount(y, minlength=n_classes).double()
    sample_w = (len(y) / (n_classes * counts.clamp(min=1)))[y]
    w = torch.zeros((n_classes, x.shape[1]), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9,
                            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        nll = torch.nn.functional.cross_entropy(x @ w.T + b, y, reduction="none")
        loss = (nll * sample_w).sum() / sample_w.sum() + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().float(), b.detach().float()


def fit_centroids(x: torch.Tensor, y: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-class-mean by cosine similarity as a linear map on unit-length features:
    (W (C, D): CENTROID_SCALE x each class's unit mean direction, b (C,): zeros)."""
    means = torch.stack([x[y == c].mean(0) for c in range(n_classes)])
    w = CENTROID_SCALE * torch.nn.functional.normalize(means.double(), dim=-1)
    return w.float(), torch.zeros(n_classes)


@register_router
class ClassifierRouter(Router):
    """Routes with a linear classifier over the base's hidden states (see the module doc).

    Build it with :meth:`fit`. ``temperature`` softens (>1) or sharpens (<1) the class
    probabilities; ``top_k`` keeps that many classes (1: hard routing to the likeliest);
    ``min_confidence`` sends a prompt whose likeliest class is below it to the base.
    ``layers`` and ``head`` say which features and which head the router was fitted with.
    """

    kind = "classifier"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        experts: Sequence[ExpertLike],
        *,
        classes: Sequence[str],
        weight: torch.Tensor,
        bias: torch.Tensor,
        feature_mean: torch.Tensor,
        feature_std: torch.Tensor,
        temperature: float = 1.0,
        top_k: int = 1,
        none_class: str = NONE_CLASS,
        batch_size: int = 32,
        base_fingerprint: str | None = None,
        fit_info: Mapping[str, Any] | None = None,
        chat: bool = False,
        layers: Sequence[int] | str = (-1,),
        head: str = "logistic",
        min_confidence: float | None = None,
    ) -> None:
        super().__init__(experts, base_fingerprint or base_fingerprint_of(model))
        self.classes = list(classes)
        self.none_class = none_class
        unknown = [c for c in self.classes if c != none_class and c not in self.expert_names]
        if unknown:
            raise ConfigError(
                f"classifier classes {unknown} name no expert; the experts are "
                f"{self.expert_names} (plus the {none_class!r} class)."
            )
        if head not in HEADS:
            raise ConfigError(f"classifier head must be one of {list(HEADS)}, got {head!r}; a "
                              "router saved by a newer routekit needs that version.")
        self.layers = _layer_indices(layers, _n_hidden_states(model))
        self.head = head
        hidden = getattr(model.config, "hidden_size", None) or model.config.n_embd
        width = hidden * len(self.layers)
        if tuple(weight.shape) != (len(self.classes), width) or tuple(bias.shape) != (len(self.classes),):
            raise FingerprintMismatchError(
                f"classifier weights of shape {tuple(weight.shape)} do not fit {len(self.classes)} "
                f"classes over {len(self.layers)} layer(s) of a model with hidden size {hidden}; "
                "the router was fitted on another model."
            )
        self.model, self.tokenizer = model, tokenizer
        self.weight, self.bias = weight.float().clone(), bias.float().clone()
        self.feature_mean, self.feature_std = feature_mean.float().clone(), feature_std.float().clone()
        self.batch_size = batch_size
        self.chat = bool(chat)
        self.fit_info = dict(fit_info or {})
        self.min_confidence: float | None = None
        self.set_output(temperature=temperature, top_k=top_k, min_confidence=min_confidence)

    def set_output(self, *, temperature: float | None = None, top_k: int | None = None,
                   min_confidence: float | None | str = "keep") -> None:
        """Change how soft the routing is, and the abstention threshold, without refitting
        (``min_confidence=None`` turns abstention off)."""
        t = self.temperature if temperature is None else float(temperature)
        k = self.top_k if top_k is None else int(top_k)
        c = self.min_confidence if isinstance(min_confidence, str) else min_confidence
        if c is not None and not 0.0 <= float(c) <= 1.0:
            raise ConfigError(f"min_confidence must be between 0 and 1 (or None), got {c!r}.")
        if not t > 0 or t != t or t == float("inf"):
            raise ConfigError(f"temperature must be a positive finite number, got {temperature!r}.")
        if not 1 <= k <= len(self.classes):
            raise ConfigError(f"top_k must be between 1 and {len(self.classes)} classes, got {top_k!r}.")
        self.temperature, self.top_k = t, k
        self.min_confidence = None if c is None else float(c)

    # ----------------------------------------------------------------- fitting
    @classmethod
    def fit(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        prompts_by_class: Mapping[str, Sequence[str]],
        *,
        experts: Sequence[ExpertLike] | None = None,
        none_class: str = NONE_CLASS,
        max_per_class: int | None = None,
        l2: float = 1e-3,
        temperature: float = 1.0,
        top_k: int = 1,
        batch_size: int = 32,
        seed: int = 0,
        chat: bool = False,
        layers: Sequence[int] | str = (-1,),
        head: str = "logistic",
        min_confidence: float | None = None,
    ) -> ClassifierRouter:
        """Fit on labelled prompts: ``{expert name: prompts, ..., "none": prompts}``.

        Use prompts from each expert's *training* split only (and, for ``none``, prompts no
        expert should take, such as the world's knowledge questions). ``experts`` defaults to
        the classes other than ``none``; an expert without prompts is never routed to.
        ``max_per_class`` keeps a seeded random subset of each class. ``chat``: features are
        read from the chat-rendered prompts (the router keeps the setting and routes so too).
        ``layers``: which hidden states to pool (indices, 0 the embeddings, -1 the last; or
        ``"all"``); ``head``: ``"logistic"`` or ``"centroid"`` (see the module doc);
        ``min_confidence``: the abstention threshold (None: never abstain).
        """
        if head not in HEADS:
            raise ConfigError(f"classifier head must be one of {list(HEADS)}, got {head!r}.")
        layer_idx = _layer_indices(layers, _n_hidden_states(model))
        names = list(prompts_by_class)
        experts = list(experts) if experts is not None else [n for n in names if n != none_class]
        empty = [c for c in names if not prompts_by_class[c]]
        if empty or len(names) < 2:
            raise ConfigError(
                f"a classifier needs prompts for at least two classes; got classes {names}"
                + (f", of which {empty} have none" if empty else "") + "."
            )
        rng = random.Random(seed)
        prompts: list[str] = []
        labels: list[int] = []
        for c, name in enumerate(names):
            ps = list(prompts_by_class[name])
            if max_per_class is not None and len(ps) > max_per_class:
                ps = rng.sample(ps, max_per_class)
            prompts += ps
            labels += [c] * len(ps)
        x = hidden_features(model, tokenizer, prompts, batch_size=batch_size, chat=chat,
                            layers=layer_idx)
        mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
        y = torch.tensor(labels)
        z = (x - mean) / std
        if head == "centroid":
            w, b = fit_centroids(z, y, len(names))
            z = torch.nn.functional.normalize(z, dim=-1)
        else:
            w, b = fit_logistic(z, y, len(names), l2=l2)
        train_acc = float((z @ w.T + b).argmax(-1).eq(y).float().mean())
        info = {"n_per_class": {n: labels.count(c) for c, n in enumerate(names)},
                "train_accuracy": train_acc, "l2": l2, "seed": seed}
        return cls(model, tokenizer, experts, classes=names, weight=w, bias=b,
                   feature_mean=mean, feature_std=std, temperature=temperature, top_k=top_k,
                   none_class=none_class, batch_size=batch_size, fit_info=info, chat=chat,
                   layers=layer_idx, head=head, min_confidence=min_confidence)

    # ----------------------------------------------------------------- routing
    def logits(self, prompts: Sequence[str]) -> torch.Tensor:
        """Class logits (N, C) before temperature."""
        x = hidden_features(self.model, self.tokenizer, prompts, batch_size=self.batch_size,
                            chat=self.chat, layers=self.layers)
        z = (x - self.feature_mean) / self.feature_std
        if self.head == "centroid":
            z = torch.nn.functional.normalize(z, dim=-1)
        return z @ self.weight.T + self.bias

    def probabilities(self, prompts: Sequence[str]) -> torch.Tensor:
        """Routing probabilities (N, C): softmax(logits / temperature), top-k kept, renormalised;
        rows whose largest softmax share is below ``min_confidence`` go to the none class."""
        p = torch.softmax(self.logits(prompts) / self.temperature, dim=-1)
        confidence = p.max(-1).values  # before the top-k cut, which renormalises
        if self.top_k < p.shape[-1]:
            keep = torch.zeros_like(p, dtype=torch.bool)
            keep.scatter_(-1, p.topk(self.top_k, dim=-1).indices, True)
            p = torch.where(keep, p, torch.zeros_like(p))
            p = p / p.sum(-1, keepdim=True)
        if self.min_confidence is not None and p.shape[0]:
            # Abstain: a row whose likeliest class is unsure goes wholly to the none class
            # (to the base: an all-zero row when the router has no none class).
            unsure = confidence < self.min_confidence
            p[unsure] = 0.0
            if self.none_class in self.classes:
                p[unsure, self.classes.index(self.none_class)] = 1.0
        return p

    def classify(self, prompts: Sequence[str]) -> list[str]:
        """The likeliest class of each prompt (an expert name or the none class; with
        ``min_confidence``, the none class for a prompt the router abstains on)."""
        if self.min_confidence is not None:
            return [self.classes[i] for i in self.probabilities(prompts).argmax(-1).tolist()]
        return [self.classes[i] for i in self.logits(prompts).argmax(-1).tolist()]

    def route(self, prompts: Sequence[str]) -> list[Mixture]:
        out = []
        for row in self.probabilities(prompts).tolist():
            if not any(row):  # abstained with no none class: the base
                out.append(Mixture())
                continue
            out.append(Mixture(weights={c: p for c, p in zip(self.classes, row)
                                        if c != self.none_class and p > 0.0}))
        return out

    # ----------------------------------------------------------------- files
    def _config(self) -> dict[str, Any]:
        return {"classes": self.classes, "none_class": self.none_class,
                "temperature": self.temperature, "top_k": self.top_k,
                "batch_size": self.batch_size, "fit_info": self.fit_info, "chat": self.chat,
                "layers": self.layers, "head": self.head, "min_confidence": self.min_confidence}

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight, "bias": self.bias, "feature_mean": self.feature_mean,
                "feature_std": self.feature_std}

    @classmethod
    def _from_saved(cls, file: RouterFile, tensors: dict[str, torch.Tensor], **context: Any) -> Router:
        model, tokenizer = base_from_context(context, "reads the base's hidden states")
        missing = {"weight", "bias", "feature_mean", "feature_std"} - set(tensors)
        if missing:
            raise ExpertFileError(
                f"classifier router weights lack {sorted(missing)}; save the router again."
            )
        return cls(model, tokenizer, file.expert_names, base_fingerprint=file.base_fingerprint,
                   **tensors, **file.config)
