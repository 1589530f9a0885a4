"""The world-level accuracy and retention targets of the SVF and proxy-tuning issues.

For each world task (default: all three) this measures, from one fresh copy of the world's
base each time:

- ``base``: the base's greedy test accuracy and its knowledge (held-out probes, statements);
- ``svf_rl`` / ``svf_sft``: an SVF expert trained with the shipped recipe
  (recipes/configs/world/<task>_svf_{rl,sft}.yaml), then the same three figures;
- ``proxy``: the world proxy tuned with <task>_proxy_sft.yaml, steering the base over
  alpha in (0, 0.5, 1, 1.5, 2); the gap it closes is measured against the base fine-tuned
  directly on the task (SFT, all parameters, the same data), run twice: with
  <task>_full_sft.yaml (``full_sft``) and with the proxy's own recipe (``full_sft_proxy_recipe``).
  The better of the two on the task is the gap's reference, so the gap is never made small
  by a weak baseline.

These figures check that the machinery works; they are not claims to make true. Nothing here
is tuned per method beyond the shipped recipes.

    python benchmarks/world_targets.py [--tasks rev hop add] [--methods svf_rl svf_sft proxy] --json

Writes benchmarks/results/world_targets.json (merged with earlier runs of other tasks).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from proxy_world_sweep import proxy_alpha_sweep  # noqa: E402

from routekit import world  # noqa: E402
from routekit.eval import evaluate  # noqa: E402
from routekit.io import atomic_write_json  # noqa: E402
from routekit.tasks import get_task  # noqa: E402
from routekit.training import TrainConfig, train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "recipes" / "configs" / "world"
RESULTS = Path(__file__).parent / "results" / "world_targets.json"


def score(model, tok, task, facts) -> dict[str, float]:
    return {
        "task_test": evaluate(model, tok, task, "test").accuracy,
        "probes": evaluate(model, tok, facts, "test").accuracy,
        "statements": evaluate(model, tok, facts, "statements").accuracy,
    }


def run_recipe(name: str, model, tok, task, **overrides: Any) -> tuple[Any, dict[str, Any]]:
    config = TrainConfig.from_yaml(CONFIGS / name).model_copy(update=overrides)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(model, tok, task, config, out_dir=tmp, progress=True)
    return result.model, {"seconds": round(result.seconds, 1),
                          "trainable_parameters": result.trainable_parameters,
                          "lr": config.lr, "steps": config.steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["rev", "hop", "add"])
    parser.add_argument("--methods", nargs="+", default=["svf_rl", "svf_sft", "proxy"])
    parser.add_argument("--svf-lr", type=float, nargs="+", default=None,
                        help="learning rates to run the SVF recipes at (default: the recipe's)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    base, tok = world.load()
    proxy_small, _ = world.load_proxy()
    facts = get_task("facts")
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    world_hash = world.WorldConfig().hash()
    for name in args.tasks:
        task = get_task(name)
        t0 = time.perf_counter()
        row: dict[str, Any] = results.get(name, {})
        if row.get("world") != world_hash:  # figures of another world are not mixed in
            row = {"world": world_hash}
        row["base"] = score(base, tok, task, facts)
        for method in ("svf_rl", "svf_sft"):
            if method not in args.methods:
                continue
            for lr in args.svf_lr or [None]:
                extra = {} if lr is None else {"lr": lr}
                model, info = run_recipe(f"{name}_{method}.yaml", copy.deepcopy(base), tok, task,
                                         **extra)
                key = method if lr is None else f"{method}@lr={lr:g}"
                row[key] = {**score(model, tok, task, facts), **info}
        if "proxy" in args.methods:
            tuned, info = run_recipe(f"{name}_proxy_sft.yaml", copy.deepcopy(proxy_small), tok, task)
            direct = {}
            for key, recipe in (("full_sft", "full_sft"), ("full_sft_proxy_recipe", "proxy_sft")):
                model, finfo = run_recipe(f"{name}_{recipe}.yaml", copy.deepcopy(base), tok, task)
                row[key] = {**score(model, tok, task, facts), **finfo}
                direct[key] = model
            ref = max(direct, key=lambda k: row[k]["task_test"])
            sweep = proxy_alpha_sweep(base, tok, tuned, proxy_small, task, facts,
                                      finetuned=direct[ref], progress=False)
            row["proxy"] = {"sweep": sweep, "train": info, "gap_reference": ref}
        row["seconds"] = round(time.perf_counter() - t0, 1)
        results[name] = row
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(RESULTS, results)
        print(json.dumps({name: row}, indent=None if args.json else 2), flush=True)


if __name__ == "__main__":
    main()
