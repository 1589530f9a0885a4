"""``routekit generate`` (route, then generate each prompt with its mixture) and
``routekit export`` (one SVF mixture merged into a plain Hugging Face checkpoint). The
router plumbing they share with ``routekit route`` is :mod:`routekit.routing.cli_helpers`."""

from __future__ import annotations

import argparse
import json

from ..errors import ConfigError
from ..routing.cli_helpers import (
    KINDS,
    add_router_options,
    load_experts,
    normalize_none_task,
    parse_weights,
    read_prompts,
    resolve_router,
    svf_ready,
)


def _adaptive(args: argparse.Namespace):
    from ..models import load_model
    from .model import AdaptiveModel

    experts = load_experts(args.experts)
    model, tok = load_model(args.model)
    model = svf_ready(model, experts)
    router = resolve_router(args.router, model, tok, experts, args)
    return AdaptiveModel(model, tok, experts, router)


def _generate(args: argparse.Namespace) -> int:
    normalize_none_task(args)
    prompts = read_prompts(args)
    am = _adaptive(args)
    out = am.generate_with_details(prompts, max_new_tokens=args.max_new_tokens,
                                   batch_size=args.batch_size)
    for p, m, text in zip(prompts, out.mixtures, out.texts):
        if args.json:
            print(json.dumps({"prompt": p, "mixture": m.model_dump(mode="json")["weights"],
                              "completion": text}))
        else:
            print(f"{p}{text}\t[{m}]")
    return 0


def _export(args: argparse.Namespace) -> int:
    from ..models import load_model
    from ..routing import FixedRouter
    from .model import AdaptiveModel

    experts = load_experts(args.experts)
    weights = parse_weights(args.mixture)
    if not weights:
        raise ConfigError("give the mixture to merge with --mixture NAME=WEIGHT ...")
    model, tok = load_model(args.model)
    model = svf_ready(model, experts)
    am = AdaptiveModel(model, tok, experts, FixedRouter(experts, weights))
    path = am.export_merged(weights, args.out)
    print(json.dumps({"out": str(path), "mixture": weights}) if args.json else
          f"wrote a plain checkpoint with {weights} merged to {path} "
          "(AutoModelForCausalLM.from_pretrained loads it; vLLM/TGI can serve it)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser("generate", help="route each prompt, then generate it with its mixture")
    gen.add_argument("prompt", nargs="*", help="prompts (or --prompts FILE)")
    gen.add_argument("--experts", nargs="+", required=True, metavar="DIR")
    gen.add_argument("--router", required=True,
                     help="a router directory or a kind: " + ", ".join(KINDS))
    gen.add_argument("--prompts", help="a file of prompts, one per line")
    gen.add_argument("--max-new-tokens", type=int, default=16)
    gen.add_argument("--batch-size", type=int, default=64)
    add_router_options(gen)
    gen.set_defaults(func=_generate)

    exp = sub.add_parser("export", help="merge one SVF mixture into a plain HF checkpoint")
    exp.add_argument("--experts", nargs="+", required=True, metavar="DIR")
    exp.add_argument("--mixture", nargs="+", required=True, metavar="NAME=W",
                     help="the mixture to merge, e.g. rev=1.0 or rev=0.5 hop=0.5")
    exp.add_argument("--out", required=True, help="directory for the checkpoint")
    exp.add_argument("--model", default="world", help="the base: a local checkpoint or world")
    exp.add_argument("--json", action="store_true")
    exp.set_defaults(func=_export)
