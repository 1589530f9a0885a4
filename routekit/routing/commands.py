"""``routekit router fit KIND`` (train and save a router) and ``routekit route`` (print each
prompt's mixture). The plumbing they share with ``routekit generate`` is
:mod:`.cli_helpers`."""

from __future__ import annotations

import argparse
import json

from .cli_helpers import (
    KINDS,
    add_router_options,
    fit_router,
    load_experts,
    normalize_none_task,
    read_prompts,
    resolve_router,
)


def _fit(args: argparse.Namespace) -> int:
    from ..models import load_model

    normalize_none_task(args)
    experts = load_experts(args.experts)
    model, tok = load_model(args.model)
    router = fit_router(args.kind, model, tok, experts, args)
    router.save_pretrained(args.out)
    info = {"out": str(args.out), "kind": router.kind, "experts": router.expert_names}
    info.update({k: v for k, v in (getattr(router, "fit_info", None)
                                   or getattr(router, "search_info", None) or {}).items()
                 if k in ("train_accuracy", "n_per_class", "keys", "start_keys", "evaluations")})
    print(json.dumps(info, sort_keys=True) if args.json else
          f"wrote {args.kind} router for {', '.join(router.expert_names)} to {args.out}")
    return 0


def _route(args: argparse.Namespace) -> int:
    from ..models import load_model

    normalize_none_task(args)
    prompts = read_prompts(args)
    experts = load_experts(args.experts)
    model, tok = load_model(args.model)
    router = resolve_router(args.router, model, tok, experts, args)
    mixtures = router.route(prompts)
    rule = router.fusion_rule  # per-step weights: the mixture is only the prior over experts
    fusion = None if rule is None else {"temperature": rule.temperature, "budget": rule.budget}
    for p, m in zip(prompts, mixtures):
        if args.json:
            line = {"prompt": p, "mixture": m.model_dump(mode="json")["weights"]}
            print(json.dumps(line if fusion is None else {**line, "fusion": fusion}))
        else:
            print(f"{m}{'' if fusion is None else ', reweighted per step'}\t{p}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    router = sub.add_parser("router", help="fit and save routers")
    rsub = router.add_subparsers(dest="router_command", metavar="COMMAND")
    fit = rsub.add_parser("fit", help="fit a router for a set of experts and save it")
    fit.add_argument("kind", choices=KINDS)
    fit.add_argument("--experts", nargs="+", required=True, metavar="DIR")
    fit.add_argument("--out", required=True, help="directory to write the router to")
    add_router_options(fit)
    fit.set_defaults(func=_fit)
    router.set_defaults(func=lambda _args: router.print_help() or 2)

    route = sub.add_parser("route", help="print the mixture a router gives each prompt")
    route.add_argument("prompt", nargs="*", help="prompts (or --prompts FILE)")
    route.add_argument("--experts", nargs="+", required=True, metavar="DIR")
    route.add_argument("--router", required=True, help="a router directory or a kind: "
                       + ", ".join(KINDS))
    route.add_argument("--prompts", help="a file of prompts, one per line")
    add_router_options(route)
    route.set_defaults(func=_route)
