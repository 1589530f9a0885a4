"""One shipped real task through lm-evaluation-harness, with and without an SVF expert.

Runs ``--task`` (default ``routekit_real_add`` from recipes/lm_eval/) on ``--model`` (default
smollm2, chat template on) twice through ``routekit.lm_eval``: the base alone, then the base
with ``--expert`` at ``--alpha`` (a fixed mixture) or routed by ``--router``. Records per run
the score lm-eval reports, the number of prompts, and wall time (model load excluded, task
loading and every request included), with the model's fingerprint so a figure names the
weights it came from.

    python benchmarks/lm_eval_real.py --expert experts/add_svf --json
    python benchmarks/lm_eval_real.py --model world --chat false --task routekit_world_rev \\
        --expert experts/rev --json      # the same on the embedded world (CPU, seconds)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from routekit.io import atomic_write_json, model_fingerprint

RESULTS = Path(__file__).parent / "results" / "lm_eval_real.json"


def run_once(lm: Any, task: str, limit: int | None) -> dict[str, Any]:
    from routekit.lm_eval import run_tasks

    start = time.perf_counter()
    results = run_tasks([task], lm, limit=limit, log_samples=True)
    seconds = time.perf_counter() - start
    scores = {
        k: float(v) for k, v in results["results"][task].items() if "," in k and "stderr" not in k
    }  # "metric,filter" entries
    n = len(results["samples"][task])
    return {
        "scores": scores,
        "n": n,
        "seconds": round(seconds, 2),
        "seconds_per_prompt": round(seconds / max(n, 1), 4),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--task", default="routekit_real_add")
    p.add_argument("--expert", help="an SVF expert directory (omit: the base run only)")
    p.add_argument("--alpha", type=float, default=1.0, help="the expert's fixed weight")
    p.add_argument("--router", help="route with this router directory instead of --alpha")
    p.add_argument("--chat", default="true", choices=["true", "false"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default=None)
    p.add_argument("--limit", type=int, default=None, help="first N prompts only")
    p.add_argument("--json", action="store_true", help=f"print JSON and write {RESULTS.name}")
    args = p.parse_args()

    from routekit.lm_eval import RoutekitLM

    common = {
        "model": args.model,
        "chat": args.chat == "true",
        "batch_size": args.batch_size,
        "device": args.device,
    }
    t0 = time.perf_counter()
    base_lm = RoutekitLM(**common)
    load_s = time.perf_counter() - t0
    out: dict[str, Any] = {
        "task": args.task,
        "model": args.model,
        "chat": common["chat"],
        "batch_size": args.batch_size,
        "model_fingerprint": model_fingerprint(base_lm.base),
        "load_seconds": round(load_s, 2),
        "runs": {"base": run_once(base_lm, args.task, args.limit)},
    }
    if args.expert:
        routing = {"router": args.router} if args.router else {"mixture": args.alpha}
        # The expert run reuses the loaded base: RoutekitLM wraps it for SVF in place.
        expert_lm = RoutekitLM(
            model=base_lm.base,
            tokenizer=base_lm.tokenizer,
            experts=[args.expert],
            chat=common["chat"],
            batch_size=args.batch_size,
            **routing,
        )
        run = run_once(expert_lm, args.task, args.limit)
        out["runs"]["expert"] = {"expert": args.expert, **routing, **run}
    if args.json:
        atomic_write_json(RESULTS, out)
        print(json.dumps(out))
    else:
        for name, run in out["runs"].items():
            print(f"{args.task} {name}: {run['scores']} n={run['n']} {run['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
