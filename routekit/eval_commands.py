"""``routekit eval``: accuracy of a model on a task split, with a progress bar."""

from __future__ import annotations

import argparse
import json

from .eval import evaluate
from .io import model_fingerprint
from .models import resolve_model
from .tasks.registry import add_task_arguments, get_task, task_options, with_options


def _eval(args: argparse.Namespace) -> int:
    model, tok = resolve_model(args.model)
    task = get_task(with_options(args.task, **task_options(args)), chat=args.chat)
    result = evaluate(model, tok, task, args.split, max_new_tokens=args.max_new_tokens,
                      batch_size=args.batch_size, limit=args.limit, progress=not args.json)
    if args.json:
        print(json.dumps({"model": str(args.model), "task": task.name, "split": args.split,
                          "chat": task.chat, "accuracy": result.accuracy, "n": result.n,
                          "model_fingerprint": model_fingerprint(model)}))
    else:
        print(f"{task.name}/{args.split}: accuracy {result.accuracy:.3f} "
              f"({sum(result.correct)}/{result.n})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="accuracy of a model on a task split")
    p.add_argument("--model", required=True,
                   help="a local checkpoint or .gguf file, or world / world-proxy / smollm2")
    p.add_argument("--task", required=True,
                   help="add, rev, hop, facts, real:NAME, jsonl:PATH or hf:PATH")
    add_task_arguments(p)
    p.add_argument("--split", default="test")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N examples only")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.set_defaults(func=_eval)
