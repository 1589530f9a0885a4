"""``routekit eval``: accuracy of a model on a task split, with a progress bar; with
``--lm-eval TASKS``, lm-evaluation-harness tasks on the same model (``routekit.lm_eval``)."""

from __future__ import annotations

import argparse
import json

from ..errors import ConfigError
from ..io import model_fingerprint
from ..models import load_model
from ..tasks.registry import add_task_arguments, get_task, task_options, with_options
from .evaluate import evaluate


def _eval(args: argparse.Namespace) -> int:
    if args.lm_eval is not None:
        return _lm_eval(args)
    if args.task is None:
        raise ConfigError("give --task NAME (routekit's evaluation) or --lm-eval TASKS (lm-eval's).")
    model, tok = load_model(args.model)
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


def _lm_eval(args: argparse.Namespace) -> int:
    """lm-eval's ``simple_evaluate`` of ``--lm-eval`` tasks on ``--model routekit``, printing
    lm-eval's table (or, with --json, its results per task)."""
    if args.task is not None:
        raise ConfigError("give --task (routekit's evaluation) or --lm-eval (lm-eval's), not both.")
    try:
        from ..lm_eval import run_tasks, table
        from ..lm_eval.model import parse_model_args
    except ImportError as e:
        raise ConfigError(f"{e}") from None
    extra = parse_model_args(args.model_args or "")
    clash = sorted({"model", "batch_size"} & set(extra))
    if clash:
        raise ConfigError(f"give {clash} with --model / --batch-size, not in --model-args.")
    model_args = {"model": args.model, "batch_size": args.batch_size, **extra}
    results = run_tasks(args.lm_eval, model_args, include_path=args.include_path, limit=args.limit)
    if args.json:
        print(json.dumps({"model_args": {k: str(v) for k, v in model_args.items()},
                          "results": results["results"]}, default=str))
    else:
        print(table(results))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="accuracy of a model on a task split")
    p.add_argument("--model", required=True,
                   help="a local checkpoint or .gguf file, or world / world-proxy / smollm2")
    p.add_argument("--task",
                   help="add, rev, hop, facts, real:NAME, jsonl:PATH or hf:PATH (or use --lm-eval)")
    add_task_arguments(p)
    p.add_argument("--split", default="test")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N examples only")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--lm-eval", metavar="TASKS", default=None,
                   help="run lm-evaluation-harness tasks (comma-separated) instead of --task")
    p.add_argument("--include-path", action="append", metavar="DIR",
                   help="a directory of lm-eval task YAMLs (repeatable; recipes/lm_eval is included)")
    p.add_argument("--model-args", default=None, metavar="K=V,...",
                   help="more --model routekit args: experts=A:B, router=DIR or mixture=a=1:b=0.5, "
                        "chat=true, dtype=, device=")
    p.set_defaults(func=_eval)
