"""The base model's figures on the project's real data (routekit/real/data/*.jsonl).

For every task file and split: greedy accuracy through the chat template with the lenient
``sentence`` checker and the strict ``answer`` checker, and the mean per-token log-likelihood
of the reference answer (the answer text as the assistant turn's content, its tokens only,
teacher-forced after the chat-rendered prompt). Deterministic, so one run is the figure.

    python benchmarks/real_data_baseline.py --json            # smollm2 (routekit's named model)
    python benchmarks/real_data_baseline.py --model DIR --json

Results go to benchmarks/results/real_data_baseline.json, rewritten atomically after every
split; a rerun keeps the splits already measured on the same model, data and settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

from routekit.compare.metrics import answer_loglik
from routekit.eval import generate
from routekit.io import atomic_write_json, model_fingerprint
from routekit.models import load_model
from routekit.tasks.base import Example
from routekit.tasks.checkers import CHECKERS

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "routekit" / "real" / "data"
OUT = ROOT / "benchmarks" / "results" / "real_data_baseline.json"
SPLIT_ORDER = ["test", "val", "ood", "train"]  # the figures that choose and report come first


def render(tokenizer, question: str) -> str:
    """The question as a user turn, through the tokenizer's chat template, ready for the reply."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )


def measure_split(model, tok, records: list[dict], max_new_tokens: int, batch_size: int) -> dict:
    prompts = [render(tok, r["question"]) for r in records]
    refs = [str(r["answer"]) for r in records]
    t0 = time.perf_counter()
    outs = generate(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    gen_s = time.perf_counter() - t0
    lenient = [CHECKERS["sentence"](o, a) for o, a in zip(outs, refs)]
    strict = [CHECKERS["answer"](o, a) for o, a in zip(outs, refs)]
    # target=answer: the answer text itself follows the rendered prompt, no space added
    ll = answer_loglik(model, tok, [Example(p, a, target=a) for p, a in zip(prompts, refs)])
    by_kind: dict[str, list[bool]] = {}
    for r, ok in zip(records, lenient):
        if "kind" in r:
            by_kind.setdefault(r["kind"], []).append(ok)
    out = {
        "n": len(records),
        "lenient_accuracy": sum(lenient) / len(records),
        "strict_accuracy": sum(strict) / len(records),
        "answer_loglik_per_token": ll.per_token(),
        "answer_loglik_per_answer": ll.per_text(),
        "answer_tokens": sum(ll.tokens),
        "generate_s": round(gen_s, 1),
        "examples": [
            {"question": r["question"], "answer": a, "completion": o, "lenient": ok, "strict": st}
            for r, a, o, ok, st in list(zip(records, refs, outs, lenient, strict))[:5]
        ],
    }
    if by_kind:
        out["lenient_by_kind"] = {k: sum(v) / len(v) for k, v in sorted(by_kind.items())}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--model", default="smollm2", help="a model name or local checkpoint")
    ap.add_argument("--files", nargs="*", help="data files by name (default: every task file)")
    ap.add_argument("--splits", nargs="*", default=SPLIT_ORDER)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model, tok = load_model(args.model, dtype=torch.float32)
    names = args.files or sorted(
        p.stem
        for p in DATA.glob("*.jsonl")
        if p.stem != "heldout_prompts"  # no answers there
    )
    settings = {"max_new_tokens": args.max_new_tokens, "checkers": ["sentence", "answer"]}
    base = {"model": str(args.model), "fingerprint": model_fingerprint(model), "settings": settings}
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    keep = {k: old.get(k) for k in base} == base
    results = {**base, "files": old.get("files", {}) if keep else {}}
    data = {}
    for name in names:
        text = (DATA / f"{name}.jsonl").read_text(encoding="utf-8")
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        data[name] = [json.loads(line) for line in text.splitlines() if line.strip()]
        if results["files"].get(name, {}).get("data_sha256") != digest:
            results["files"][name] = {"data_sha256": digest, "splits": {}}
    for split in args.splits:  # split-major: every file's test figures come first
        for name in names:
            entry = results["files"][name]
            recs = [r for r in data[name] if r.get("split") == split]
            if not recs or split in entry["splits"]:
                continue
            s = measure_split(model, tok, recs, args.max_new_tokens, args.batch_size)
            entry["splits"][split] = s
            atomic_write_json(args.out, results)
            print(
                f"{name}/{split}: n={s['n']} lenient={s['lenient_accuracy']:.3f} "
                f"strict={s['strict_accuracy']:.3f} ll/token={s['answer_loglik_per_token']:.3f} "
                f"({s['generate_s']} s)",
                file=sys.stderr,
                flush=True,
            )
    if args.json:
        summary = {
            name: {
                sp: {k: v for k, v in s.items() if k not in ("examples",)}
                for sp, s in e["splits"].items()
            }
            for name, e in results["files"].items()
        }
        print(json.dumps({**base, "files": summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
