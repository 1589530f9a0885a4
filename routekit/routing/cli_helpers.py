"""The command line's router plumbing, shared by ``routekit router fit`` / ``routekit route``
(:mod:`routekit.routing.commands`) and ``routekit generate`` / ``routekit export``
(:mod:`routekit.adaptive.commands`).

Loading experts from their directories, readying a base for SVF experts, reading prompts and
``NAME=W`` weights, the options that build a router, and building (or loading) one. Public so
that each command module imports it from here rather than from another command module.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError

KINDS = ("classifier", "prompt", "fewshot", "fixed", "logit-fusion")


def load_experts(paths: list[str]) -> list[Any]:
    """Experts of either kind from their directories (``routekit.experts.load_expert``)."""
    from ..experts import load_expert

    if not paths:
        raise ConfigError("give at least one expert directory with --experts.")
    return [load_expert(p) for p in paths]


def svf_ready(model: Any, experts: list[Any]) -> Any:
    """Wrap ``model`` for its SVF experts (their target modules) unless it already is."""
    svf = [e for e in experts if getattr(e, "kind", None) == "svf"]
    if not svf or hasattr(model, "svf_config"):
        return model
    from ..svf import SVFConfig, get_svf_model

    targets = {json.dumps(e.target_modules) for e in svf}
    if len(targets) > 1:
        raise ConfigError(
            f"the SVF experts target different modules {sorted(targets)}; one model can carry "
            "experts of one target_modules setting."
        )
    return get_svf_model(model, SVFConfig(target_modules=svf[0].target_modules))


def read_prompts(args: argparse.Namespace) -> list[str]:
    """The prompts given as arguments, then those of ``--prompts FILE`` (its non-empty lines)."""
    prompts = list(args.prompt)
    if args.prompts:
        path = Path(args.prompts)
        if not path.is_file():
            raise ConfigError(f"prompts file {str(path)!r} does not exist.")
        prompts += [line for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ConfigError("give prompts as arguments or with --prompts FILE (one per line).")
    return prompts


def parse_weights(items: list[str]) -> dict[str, float]:
    """``NAME=NUMBER`` items (``--weights``, ``--mixture``) as a mapping of expert names to weights."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise ConfigError(f"--weights takes NAME=NUMBER items, got {item!r}.")
    return out


def parse_budget(value: str | None) -> float | str | None:
    """``--budget``: a number of nats, ``matched``, or None (no cap)."""
    if value is None or value == "matched":
        return value
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"--budget takes a number of nats or 'matched', got {value!r}.") from None


def parse_layers(text: str) -> str | tuple[int, ...]:
    """``--layers``: ``all`` or comma-separated hidden-state indices (``0,2,-1``)."""
    if text.strip() == "all":
        return "all"
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(f"--layers takes 'all' or comma-separated integers like '0,2,-1', "
                          f"not {text!r}.") from None


def fit_router(kind: str, model: Any, tokenizer: Any, experts: list[Any],
               args: argparse.Namespace) -> Any:
    """Build a router of ``kind`` for ``experts`` from the command's options."""
    from .classifier import ClassifierRouter
    from .data import read_routing_jsonl, task_routing_prompts
    from .fewshot import FewShotRouter
    from .fixed import FixedRouter
    from .fusion import LogitFusionRouter
    from .prompt import PromptRouter

    if kind == "classifier":
        data = (read_routing_jsonl(args.data) if args.data
                else task_routing_prompts(experts, none_task=args.none_task))
        return ClassifierRouter.fit(model, tokenizer, data, experts=experts, seed=args.seed,
                                    max_per_class=args.max_per_class, top_k=args.top_k,
                                    temperature=args.temperature, chat=bool(args.chat),
                                    layers=parse_layers(args.layers), head=args.head,
                                    min_confidence=args.min_confidence)
    if kind == "prompt":
        kw = {"template": args.template} if args.template else {}
        return PromptRouter(model, tokenizer, experts, chat=bool(args.chat), **kw)
    if kind == "fewshot":
        if not args.task:
            raise ConfigError("a few-shot router needs --task (the task whose examples score α).")
        return FewShotRouter.fit(
            svf_ready(model, experts), tokenizer, experts, args.task, n_shots=args.shots,
            optimizer=args.optimizer, iterations=args.iterations, population=args.population,
            seed=args.seed, per_layer=args.per_layer, chat=args.chat,
        )
    if kind == "fixed":
        return FixedRouter(experts, parse_weights(args.weights or []))
    if kind == "logit-fusion":
        return LogitFusionRouter(experts, temperature=args.temperature, budget=parse_budget(args.budget))
    raise ConfigError(f"unknown router kind {kind!r}; choose one of {', '.join(KINDS)}.")


def resolve_router(spec: str, model: Any, tokenizer: Any, experts: list[Any],
                   args: argparse.Namespace) -> Any:
    """A saved router directory, or a router KIND built now with the command's options."""
    from .base import load_router

    if Path(spec).is_dir():
        return load_router(spec, experts=experts, model=model, tokenizer=tokenizer)
    if spec in KINDS:
        return fit_router(spec, model, tokenizer, experts, args)
    raise ConfigError(f"--router {spec!r} is neither a router directory nor a kind ({', '.join(KINDS)}).")


def add_router_options(p: argparse.ArgumentParser) -> None:
    """The options that build a router of any kind (``router fit``, ``route``, ``generate``)
    and the base model's (``--model``, ``--json``, ``--seed``, ``--chat``)."""
    p.add_argument("--model", default="world", help="the base: a local checkpoint or world")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="read prompts through the tokenizer's chat template (classifier and "
                   "prompt routers: default off; fewshot: the task's own setting)")
    g = p.add_argument_group("classifier")
    g.add_argument("--data", help="JSONL of {prompt, expert} pairs (expert may be none); "
                   "default: each expert's task's train prompts")
    g.add_argument("--none-task", default="facts",
                   help="task whose train prompts need no expert (default facts; 'none' for none)")
    g.add_argument("--max-per-class", type=int, default=None)
    g.add_argument("--layers", default="-1",
                   help="hidden states to pool: 'all', or indices like '-1' or '0,2,-1' "
                        "(0 the embeddings, -1 the last; default -1)")
    g.add_argument("--head", choices=("logistic", "centroid"), default="logistic",
                   help="logistic regression, or nearest class mean (cosine)")
    g.add_argument("--min-confidence", type=float, default=None,
                   help="send a prompt whose likeliest class is below this to the base")
    g.add_argument("--top-k", type=int, default=1)
    g.add_argument("--temperature", type=float, default=1.0,
                   help="softmax temperature (classifier; logit-fusion: in nats of expert shift)")
    g = p.add_argument_group("prompt")
    g.add_argument("--template", help="a template with {prompt} (default: the world's)")
    g = p.add_argument_group("fewshot")
    g.add_argument("--task", help="the task whose examples score a mixture")
    g.add_argument("--shots", type=int, default=10)
    g.add_argument("--optimizer", choices=("cem", "cmaes"), default="cem")
    g.add_argument("--population", type=int, default=32)
    g.add_argument("--iterations", type=int, default=50)
    g.add_argument("--per-layer", action="store_true", help="one weight per expert per SVF layer")
    g = p.add_argument_group("fixed")
    g.add_argument("--weights", nargs="+", metavar="NAME=W", help="the fixed mixture")
    g = p.add_argument_group("logit-fusion (proxy experts; also takes --temperature)")
    g.add_argument("--budget", help="cap in nats on how far one step moves the base, or "
                   "'matched' (as far as the experts moved their own models); default no cap")


def normalize_none_task(args: argparse.Namespace) -> None:
    """``--none-task none`` means no such task: None."""
    if getattr(args, "none_task", None) == "none":
        args.none_task = None
