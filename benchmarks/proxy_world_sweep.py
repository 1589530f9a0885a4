"""Proxy-tuning on the world: accuracy on a task and on the knowledge probes over an alpha sweep.

For each alpha in (0, 0.5, 1, 1.5, 2) the base is steered by ``tuned - untuned`` and scored
greedily on the task's test split and on the knowledge-probe task ("facts": held-out question
probes ``test`` and statement recall ``statements``). With ``--finetuned`` (the base fine-tuned
directly on the task: SFT, full parameters, same data) it also reports the share of the
base -> fine-tuned gap that each alpha closes. alpha = 0 is the base itself.

    python benchmarks/proxy_world_sweep.py --task rev --tuned runs/rev_proxy_sft \
        [--untuned PATH] [--base PATH] [--finetuned runs/rev_full_sft] [--limit 200] --json

``--tuned`` is a model directory (save_pretrained) or a saved ProxyExpert directory (with
expert_config.json; then its own untuned model is used). ``--untuned``/``--base`` default to
the world's proxy and base. Writes benchmarks/results/proxy_world_sweep_<task>.json.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase

from routekit.eval import evaluate
from routekit.io import atomic_write_json
from routekit.models import load_model
from routekit.proxy import ProxyExpert, ProxyLogitsProcessor
from routekit.tasks.base import Task

ALPHAS = (0.0, 0.5, 1.0, 1.5, 2.0)
RESULTS = Path(__file__).parent / "results"


def proxy_alpha_sweep(
    base: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tuned: PreTrainedModel,
    untuned: PreTrainedModel,
    task: Task,
    probes: Task | None = None,
    *,
    alphas: Sequence[float] = ALPHAS,
    split: str = "test",
    probe_splits: Sequence[str] = ("test", "statements"),
    finetuned: PreTrainedModel | None = None,
    limit: int | None = None,
    max_new_tokens: int = 16,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """Greedy accuracy of the steered base per alpha on ``task``/``split`` and on ``probes``.

    Returns ``{"alphas": [...], "task": {alpha: acc}, "probes": {split: {alpha: acc}},
    "finetuned": {...} | None, "gap_closed": {alpha: share} | None,
    "probe_delta_points": {split: {alpha: points vs alpha 0}},
    "best_within_1_point": {alpha, gap_closed, ...} | None}`` (the last two need alpha 0 in
    ``alphas``; the best alpha is judged on the first probe split, held-out questions).
    """
    expert = ProxyExpert(tuned, untuned, f"{task.name}-proxy", tokenizer=tokenizer)
    probe_splits = [s for s in probe_splits if probes is not None and s in probes.splits]

    def score(model: PreTrainedModel, t: Task, s: str, procs: list | None = None) -> float:
        kw = {"logits_processor": LogitsProcessorList(procs)} if procs else {}
        return evaluate(model, tokenizer, t, s, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, limit=limit, progress=progress, **kw).accuracy

    out: dict[str, Any] = {"task_name": task.name, "split": split, "alphas": list(alphas),
                           "task": {}, "probes": {s: {} for s in probe_splits}}
    for a in alphas:
        # One processor per alpha serves every batch: it restarts its caches on a new prompt.
        proc = ProxyLogitsProcessor(expert, alpha=a, tokenizer=tokenizer)
        out["task"][str(a)] = score(base, task, split, [proc])
        for s in probe_splits:
            out["probes"][s][str(a)] = score(base, probes, s, [proc])
    out["finetuned"] = None
    out["gap_closed"] = None
    if finetuned is not None:
        ft = {"task": score(finetuned, task, split)}
        ft.update({f"probes_{s}": score(finetuned, probes, s) for s in probe_splits})
        out["finetuned"] = ft
        base_acc = out["task"][str(0.0)] if 0.0 in alphas else score(base, task, split)
        gap = ft["task"] - base_acc
        # A share of the gap means something only when fine-tuning improved on the base.
        out["gap_closed"] = {
            k: (v - base_acc) / gap if gap > 0 else None for k, v in out["task"].items()
        }
    if 0.0 in alphas:
        out["probe_delta_points"] = {
            s: {k: round(100 * (v - accs[str(0.0)]), 2) for k, v in accs.items()}
            for s, accs in out["probes"].items()
        }
        out["best_within_1_point"] = best_within(out, probe_splits[0]) if probe_splits else None
    return out


def best_within(result: dict[str, Any], split: str, points: float = 1.0) -> dict[str, Any] | None:
    """The alpha that closes most of the gap while ``split`` probes lose at most ``points``
    against alpha 0 (the proxy issue's target: knowledge within 1 point of the base; a gain
    is not a loss), or None when fine-tuning did not beat the base."""
    gaps = result.get("gap_closed") or {}
    deltas = result["probe_delta_points"][split]
    ok = [a for a, g in gaps.items() if g is not None and deltas[a] >= -points]
    if not ok:
        return None
    a = max(ok, key=lambda k: (gaps[k], -float(k)))
    return {"alpha": float(a), "gap_closed": gaps[a], "task": result["task"][a],
            "probe_split": split, "probe_delta_points": deltas[a]}


def _load(path: str | None, default: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None]:
    from routekit import world

    if path is not None:
        return load_model(path)
    loaded = world.load() if default == "base" else world.load_proxy()
    return loaded if isinstance(loaded, tuple) else (loaded, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", required=True, help="task name (world: add, rev, hop) or jsonl:PATH")
    ap.add_argument("--tuned", required=True, help="tuned proxy model dir, or a ProxyExpert dir")
    ap.add_argument("--untuned", default=None, help="untuned proxy dir (default: world proxy)")
    ap.add_argument("--base", default=None, help="base model dir (default: world base)")
    ap.add_argument("--finetuned", default=None, help="base fine-tuned directly on the task")
    ap.add_argument("--probes", default="facts", help="knowledge-probe task name ('' to skip)")
    ap.add_argument("--alphas", default=",".join(str(a) for a in ALPHAS))
    ap.add_argument("--limit", type=int, default=None, help="examples per split at most")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from routekit.tasks.registry import get_task  # the registry arrives with the world

    base, tok = _load(args.base, "base")
    tuned_path = Path(args.tuned)
    if (tuned_path / "expert_config.json").is_file():
        saved = ProxyExpert.from_pretrained(tuned_path)
        tuned, untuned = saved.tuned, saved.untuned
    else:
        tuned, _ = load_model(tuned_path)
        untuned, _ = _load(args.untuned, "proxy")
    finetuned = load_model(args.finetuned)[0] if args.finetuned else None
    task = get_task(args.task)
    probes = get_task(args.probes) if args.probes else None
    result = proxy_alpha_sweep(
        base, tok, tuned.eval(), untuned.eval(), task, probes,
        alphas=[float(a) for a in args.alphas.split(",")], finetuned=finetuned,
        limit=args.limit, max_new_tokens=args.max_new_tokens, progress=not args.json,
    )
    out = args.out or RESULTS / f"proxy_world_sweep_{task.name}.json"
    atomic_write_json(out, result)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'alpha':>6} {task.name:>8} " + " ".join(f"{'probes/' + s:>16}" for s in result["probes"]))
    for a in result["alphas"]:
        k = str(a)
        row = f"{a:6.1f} {result['task'][k]:8.3f} "
        row += " ".join(f"{result['probes'][s][k]:16.3f}" for s in result["probes"])
        if result["gap_closed"] and result["gap_closed"].get(k) is not None:
            row += f"   gap closed {result['gap_closed'][k]:.0%}"
        print(row)
    if result["finetuned"]:
        print(f"fine-tuned directly: {result['finetuned']}")


if __name__ == "__main__":
    main()
