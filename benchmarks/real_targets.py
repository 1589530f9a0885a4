"""The real-model targets: every method on SmolLM2-135M-Instruct's shipped real tasks.

For each shipped real task (default: all), from one fresh copy of the converted base each
time, this trains and measures:

- ``base``: greedy accuracy (the task's lenient ``sentence`` checker) on val, test and ood;
- ``svf_sft`` / ``svf_rl``: an SVF expert on the MLP layers;
- ``lora_sft`` / ``lora_rl``: PEFT LoRA (rank 16) on the attention and MLP projections;
- ``full_sft``: every parameter;

each beside retention on the shipped knowledge set: lenient accuracy and the mean per-token
log-likelihood of the reference answers (the assistant turn's tokens after the chat-rendered
question). Every prompt goes through the tokenizer's chat template, as the tasks say.

Hyperparameters are fixed in ``METHODS`` below, one setting per method, the same for every
task; nothing is tuned on test. ``--lrs`` runs a sweep instead, and the rate is then chosen
on the val split (best val accuracy, ties to the knowledge log-likelihood), never on test.
These figures check that the machinery works on a real model; they are not claims to make
true.

    python benchmarks/real_targets.py [--tasks add successor past_tense] [--methods ...] --json

Writes benchmarks/results/real_targets.json (merged with earlier runs of other cells).
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

import torch

import routekit as rk
from routekit.compare.metrics import answer_loglik
from routekit.eval import evaluate
from routekit.io import atomic_write_json, model_fingerprint
from routekit.svf import export_expert
from routekit.tasks import get_task
from routekit.tasks.chat import render_task
from routekit.training import TrainConfig, train

RESULTS = Path(__file__).parent / "results" / "real_targets.json"
# each SVF cell's expert is kept here (a few hundred KB each), so that lm-eval, routing and
# the README's commands can use the very experts the table measured
EXPERTS = Path(__file__).parent / "results" / "real_experts"
MAX_NEW_TOKENS = 20  # the tasks' answers are one short sentence ("The sum of 3 and 3 is 6.")
EVAL_SPLITS = ("test",)  # --splits val test ood widens it; each split costs a greedy pass
SFT = dict(objective="sft", steps=40, batch_size=8, micro_batch_size=4)
RL = dict(objective="rl", steps=16, batch_size=4, micro_batch_size=2, group_size=4,
          max_new_tokens=MAX_NEW_TOKENS, temperature=1.0)
METHODS: dict[str, dict[str, Any]] = {
    "svf_sft": dict(SFT, parameterization="svf", svf={"target_modules": "mlp"}, lr=2e-3),
    "svf_rl": dict(RL, parameterization="svf", svf={"target_modules": "mlp"}, lr=2e-3),
    "lora_sft": dict(SFT, parameterization="lora", lora={"r": 16}, lr=2e-4),
    "lora_rl": dict(RL, parameterization="lora", lora={"r": 16}, lr=2e-4),
    "full_sft": dict(SFT, parameterization="full", lr=1e-5),
}
TASKS = ("add", "successor", "past_tense")


def knowledge_scores(model, tok, knowledge) -> dict[str, float]:
    res = evaluate(model, tok, knowledge, "test", max_new_tokens=MAX_NEW_TOKENS, batch_size=64)
    # the assistant turn after the chat-rendered question, as SFT's reference reads it
    ll = answer_loglik(model, tok, render_task(knowledge, tok).examples("test"))
    per_token = sum(ll.sums) / sum(ll.tokens)
    return {"knowledge_acc": res.accuracy, "knowledge_loglik": per_token}


def task_scores(model, tok, task, splits) -> dict[str, float]:
    return {split: evaluate(model, tok, task, split, max_new_tokens=MAX_NEW_TOKENS,
                            batch_size=64).accuracy
            for split in splits if split in task.splits}


def run_method(name: str, base, tok, task, lr: float | None) -> tuple[Any, dict[str, Any]]:
    settings = dict(METHODS[name])
    if lr is not None:
        settings["lr"] = lr
    config = TrainConfig.model_validate({**settings, "seed": 0})
    model = copy.deepcopy(base)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(model, tok, task, config, out_dir=tmp, progress=True)
    if config.parameterization == "svf":
        out = EXPERTS / f"{task.name.removeprefix('real:')}_{name}"
        export_expert(result.model, out.name, training_config=config.model_dump(mode="json"),
                      metrics=result.metrics()).save_pretrained(out)
    return result.model, {"seconds": round(result.seconds, 1), "lr": config.lr,
                          "steps": config.steps, "batch_size": config.batch_size,
                          "trainable_parameters": result.trainable_parameters}


def table(results: dict[str, Any]) -> str:
    """The README's table: one row per task and method, retention beside, with the deltas
    against the task's base row and the issue's retention bounds (2 points, 0.05 nats)."""
    cells = results.get("cells", {})
    lines = ["| task | method | test | Δ test | knowledge acc | Δ acc | knowledge log-lik/token "
             "| Δ nats | train s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for tname in TASKS:
        base = cells.get(f"{tname}/base")
        for method in ["base", *METHODS]:
            row = cells.get(f"{tname}/{method}")
            if row is None or base is None:
                continue
            d_test = 100 * (row["test"] - base["test"])
            d_acc = 100 * (row["knowledge_acc"] - base["knowledge_acc"])
            d_ll = row["knowledge_loglik"] - base["knowledge_loglik"]
            keep = abs(d_acc) <= 2 and abs(d_ll) <= 0.05
            mark = "" if method == "base" else (" ✓" if d_test >= 10 and keep else "")
            lines.append(
                f"| {tname} | {method}{mark} | {row['test']:.3f} | {d_test:+.1f} "
                f"| {row['knowledge_acc']:.3f} | {d_acc:+.1f} | {row['knowledge_loglik']:.3f} "
                f"| {d_ll:+.3f} | {row.get('seconds', '')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--methods", nargs="+", default=["base", *METHODS])
    parser.add_argument("--lrs", type=float, nargs="+", default=None,
                        help="sweep these rates per method and choose on val (default: METHODS)")
    parser.add_argument("--splits", nargs="+", default=list(EVAL_SPLITS))
    parser.add_argument("--force", action="store_true", help="remeasure cells already in the JSON")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--table", action="store_true",
                        help="print the measured cells as the README's markdown table, and stop")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(RESULTS.read_text()) if RESULTS.exists() else {}))
        return

    torch.manual_seed(0)
    base, tok = rk.load_model("smollm2")
    fingerprint = model_fingerprint(base)
    knowledge = get_task("real:knowledge")
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.setdefault("model", {})["smollm2"] = fingerprint
    cells = results.setdefault("cells", {})
    splits = sorted(set(args.splits) | ({"val"} if args.lrs else set()))
    tasks = {t: get_task(f"real:{t}") for t in args.tasks}
    base_knowledge = None
    # methods outside, tasks inside: each method's row for every task lands before the next
    # method starts, so a run cut short still has whole columns
    for method in args.methods:
        for tname, task in tasks.items():
            key = f"{tname}/{method}"
            if key in cells and cells[key].get("base_fingerprint") == fingerprint and not args.force:
                continue  # measured by an earlier run on the same base: resume
            t0 = time.perf_counter()
            if method == "base":
                base_knowledge = base_knowledge or knowledge_scores(base, tok, knowledge)
                row = {**task_scores(base, tok, task, splits), **base_knowledge}
            else:
                tried = []
                for lr in args.lrs or [None]:
                    model, info = run_method(method, base, tok, task, lr)
                    tried.append({**info, **task_scores(model, tok, task, splits),
                                  **knowledge_scores(model, tok, knowledge)})
                    del model
                # the rate is chosen on val, never on test
                row = max(tried, key=lambda r: (r.get("val", 0.0), r["knowledge_loglik"]))
                if len(tried) > 1:
                    row["sweep"] = [{k: r[k] for k in ("lr", "val", "test")} for r in tried]
            row["wall_seconds"] = round(time.perf_counter() - t0, 1)
            row["base_fingerprint"] = fingerprint
            cells[key] = row
            atomic_write_json(RESULTS, results)  # after every cell: a killed run keeps them
            print(f"{tname:>11} {method:>9}  " + "  ".join(
                f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float)
                and k in ("val", "test", "ood", "knowledge_acc", "knowledge_loglik")), flush=True)
    if args.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    sys.exit(main())
