"""``routekit train CONFIG [--out DIR] [--resume]``: run a training recipe and write the expert."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train an expert from a YAML recipe config",
        description="Train with a YAML config (see recipes/configs/) and write the expert. "
        "Multi-process: accelerate launch -m routekit.cli train CONFIG ...",
    )
    p.add_argument("config", help="YAML config validated by routekit.training.TrainConfig")
    p.add_argument("--out", default=None, help="output directory (default experts/<config name>)")
    p.add_argument(
        "--run-dir", default=None, help="checkpoints and train_result.json (default runs/<name of OUT>)"
    )
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint (refused if there is none)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the run's metrics as JSON")
    from ..tasks.registry import add_task_arguments

    add_task_arguments(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from ..tasks.registry import task_options
    from .recipe import run_recipe

    out, result = run_recipe(
        args.config, args.out, resume=args.resume, progress=not args.no_progress,
        run_dir=args.run_dir, chat=args.chat, task_options=task_options(args),
    )
    if PartialState().is_main_process:
        metrics = result.metrics()
        if args.json:
            print(json.dumps({"out": str(out), **metrics}, sort_keys=True))
        else:
            shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
            print(f"wrote {out} ({shown})")
    return 0
