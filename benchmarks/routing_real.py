"""Routing real prompts on smollm2: routers on held-out phrasings, AdaptiveModel on a mixed set.

The experts are the SVF SFT experts that benchmarks/real_targets.py trains on the shipped real
tasks (benchmarks/results/real_experts/{add,successor,past_tense}_svf_sft); the knowledge set
(``real:knowledge``) is the ``none`` class, which goes to the base. Every prompt is read
through the chat template, for routing and for generation.

Data (no prompt is in two of fit / val / test; knowledge questions are split once, seeded):

- fit: each task's train prompts (its one phrasing, ``FIT_PER_TASK`` of them, seeded) and
  ``KNOWLEDGE_FIT`` knowledge questions;
- val: each task's val prompts (the fitting phrasing, ``VAL_PER_TASK``) and ``KNOWLEDGE_VAL``
  knowledge questions. Every router setting (the classifier's features and head, the prompt
  router's template) is chosen here, and so is the router AdaptiveModel uses;
- routing test: each task's ood prompts (the same items asked in a held-out phrasing,
  ``TEST_PER_TASK``) and ``KNOWLEDGE_TEST`` knowledge questions, labelled ``none``;
- mixed set: each task's test prompts (``TEST_PER_TASK``) and the same knowledge questions,
  greedy, ``MAX_NEW_TOKENS`` new tokens, each checked by its task's lenient ``sentence``
  checker. Rows: the base; each expert applied to everything; a uniform mixture; oracle
  routing (true labels); AdaptiveModel with the router chosen on val.

Routers: the classifier (the default, logistic on the last layer, and ``layers="all",
head="centroid"``); the prompt router (few-shot templates whose shots are fitting prompts,
read without the chat template: the base answers a class word); the few-shot router (one CEM
search over the three experts' weights on ``FEWSHOT_SHOTS`` fitting examples of all four
classes, a small budget: it gives every prompt the same mixture, so its routing accuracy is
that of one label for all). A prompt routed to the base counts as ``none``; otherwise its
label is its mixture's largest weight.

Speed: ``first_pass_share`` is routing time over routing + generation for 16 mixed-set
prompts with 64 new tokens (min = max = 64), classifier router, median of ``--rounds``
rounds after a warm-up, as bench_routing.py measures it on the world.

    python benchmarks/routing_real.py --json

Writes benchmarks/results/routing_real.json. These figures check that the machinery works on
a real model; they are not claims to make true.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import routekit as rk
from routekit.adaptive import AdaptiveModel
from routekit.eval import generate
from routekit.experts import load_expert
from routekit.io import atomic_write_json, model_fingerprint
from routekit.routing import (
    ClassifierRouter,
    FewShotRouter,
    FixedRouter,
    Mixture,
    PromptRouter,
    Router,
)
from routekit.svf import SVFConfig, get_svf_model
from routekit.tasks import get_task

sys.path.insert(0, str(Path(__file__).parent))
from bench_routing import LabelRouter  # noqa: E402  oracle routing, the world bench's own

RESULTS = Path(__file__).parent / "results"
EXPERTS = RESULTS / "real_experts"
TASKS = ("add", "successor", "past_tense")
# sizes: the whole run in about 15 minutes on one or two CPU threads (see the README)
FIT_PER_TASK = 60
VAL_PER_TASK = 30
TEST_PER_TASK = 40
KNOWLEDGE_FIT, KNOWLEDGE_VAL, KNOWLEDGE_TEST = 80, 40, 80
MAX_NEW_TOKENS = 20  # as real_targets.py: the answers are one short sentence
FEWSHOT_SHOTS = 2  # per class (8 examples)
FEWSHOT = {"population": 6, "iterations": 2, "optimizer": "cem"}
# Classifier settings, chosen on val. Val is in the fitting phrasing, where both may be
# perfect; a tie goes to the first listed: bench_routing.py's setting, chosen there on the
# world's out-of-format prompts (a prior from another setting, not from these test prompts).
CLASSIFIERS: dict[str, dict[str, Any]] = {
    "centroid, all layers": {"layers": "all", "head": "centroid"},
    "default (logistic, last layer)": {},
}
# Prompt-router templates: class words, and how many fitting prompts of each class are
# shots (in a seeded order). The base answers with the first word after "Type:".
PROMPT_TEMPLATES: dict[str, dict[str, Any]] = {
    "words sum/next/past/fact": {
        "classes": {"sum": "add", "next": "successor", "past": "past_tense", "fact": None},
        "shots": {"add": 1, "successor": 2, "past_tense": 1, "none": 2}},
    "words addition/successor/verb/other": {
        "classes": {"addition": "add", "successor": "successor", "verb": "past_tense",
                    "other": None},
        "shots": {"add": 1, "successor": 1, "past_tense": 1, "none": 2}},
}
TARGETS = {
    "best_routing_accuracy": (">=", 0.9),
    "adaptive_vs_oracle_points": (">=", -2.0),
    "knowledge_vs_base_points": (">=", -1.0),
    "first_pass_share": ("<=", 0.15),
}


class RawQueryRouter(Router):
    """A prompt router whose few-shot query is read without the chat template, for an
    AdaptiveModel that generates with it. AdaptiveModel refuses a PromptRouter whose ``chat``
    differs from generation's (tests/test_chat.py), a check meant for routers that read the
    generation prompt itself; a PromptRouter reads its own template instead, and smollm2
    answers a class word only without the chat template. This delegate carries no ``chat``."""

    kind = "raw-query"

    def __init__(self, inner: PromptRouter) -> None:
        super().__init__(inner.expert_names, inner.base_fingerprint)
        self.inner = inner

    def route(self, prompts: Sequence[str]) -> list[Mixture]:
        return self.inner.route(prompts)


def for_adaptive(router: Router) -> Router:
    if isinstance(router, PromptRouter) and not router.chat:
        return RawQueryRouter(router)
    return router


# ----- data ---------------------------------------------------------------------------------


def seeded(items: Sequence[Any], n: int, seed: str) -> list[Any]:
    items = list(items)
    random.Random(seed).shuffle(items)
    return items[:n]


def build_sets(names: dict[str, str]) -> dict[str, Any]:
    """fit / val / routing test prompts {label: [prompts]} and the mixed set's (label, Example)."""
    tasks = {t: get_task(f"real:{t}") for t in TASKS}
    know = get_task("real:knowledge").examples("test")
    know = seeded(know, len(know), "routing_real:knowledge")
    k_fit = know[:KNOWLEDGE_FIT]
    k_val = know[KNOWLEDGE_FIT:KNOWLEDGE_FIT + KNOWLEDGE_VAL]
    k_test = know[KNOWLEDGE_FIT + KNOWLEDGE_VAL:][:KNOWLEDGE_TEST]
    fit = {names[t]: [e.prompt for e in seeded(tasks[t].examples("train"), FIT_PER_TASK, f"fit:{t}")]
           for t in TASKS}
    fit["none"] = [e.prompt for e in k_fit]
    val = {names[t]: [e.prompt for e in seeded(tasks[t].examples("val"), VAL_PER_TASK, f"val:{t}")]
           for t in TASKS}
    val["none"] = [e.prompt for e in k_val]
    test = {names[t]: [e.prompt for e in seeded(tasks[t].examples("ood"), TEST_PER_TASK, f"ood:{t}")]
            for t in TASKS}
    test["none"] = [e.prompt for e in k_test]
    mixed = [(names[t], e) for t in TASKS
             for e in seeded(tasks[t].examples("test"), TEST_PER_TASK, f"test:{t}")]
    mixed += [("none", e) for e in k_test]
    random.Random("routing_real:mixed").shuffle(mixed)
    fit_examples = {names[t]: seeded(tasks[t].examples("train"), FIT_PER_TASK, f"fit:{t}")
                    for t in TASKS}
    fit_examples["none"] = k_fit
    seen = {p for ps in fit.values() for p in ps}
    for other in (val, test):
        assert not seen & {p for ps in other.values() for p in ps}, "a fitting prompt is held out"
    assert not seen & {e.prompt for _, e in mixed}, "a fitting prompt is in the mixed set"
    return {"fit": fit, "val": val, "test": test, "mixed": mixed, "fit_examples": fit_examples,
            "checker": tasks["add"]}


def flat(sets: dict[str, list[str]]) -> list[tuple[str, str]]:
    return [(label, p) for label, ps in sets.items() for p in ps]


def routed_labels(router: Router, prompts: Sequence[str]) -> list[str]:
    out = []
    for m in router.route(list(prompts)):
        out.append(max(m.weights, key=lambda n: m.weights[n]) if not m.is_base else "none")
    return out


def routing_report(router: Router, rows: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Routing accuracy per label and overall, and the confusion (label -> routed counts)."""
    chosen = routed_labels(router, [p for _, p in rows])
    by: dict[str, list[bool]] = collections.defaultdict(list)
    confusion: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for c, (label, _) in zip(chosen, rows):
        by[label].append(c == label)
        confusion[label][c] += 1
    acc = {k: round(sum(v) / len(v), 4) for k, v in by.items()}
    acc["overall"] = round(sum(c == label for c, (label, _) in zip(chosen, rows)) / len(rows), 4)
    return {"accuracy": acc, "confusion": {k: dict(v) for k, v in confusion.items()},
            "errors": [(label, p, c) for c, (label, p) in zip(chosen, rows) if c != label][:20]}


def correct(texts: Sequence[str], items, check) -> list[bool]:
    return [bool(check(text, ex.reference)) for text, (_, ex) in zip(texts, items)]


def score(texts: Sequence[str], items, check) -> dict[str, float]:
    by: dict[str, list[bool]] = collections.defaultdict(list)
    for ok, (label, _) in zip(correct(texts, items, check), items):
        by[label].append(ok)
    out = {("knowledge" if k == "none" else k): round(sum(v) / len(v), 4) for k, v in sorted(by.items())}
    out["overall"] = round(sum(sum(v) for v in by.values()) / sum(len(v) for v in by.values()), 4)
    return out


def why_table(items, chosen: Sequence[str], per_prompt: dict[str, list[bool]]) -> dict[str, Any]:
    """Where AdaptiveModel's mixed-set accuracy parts from oracle routing's, and its knowledge
    accuracy from the base's: prompts it misrouted (to which expert, and right or wrong under
    each row), and prompts routed as the oracle routes them whose answers still differ (the
    per-row path against the oracle's, same mixtures)."""
    ad, orc, base = per_prompt["adaptive"], per_prompt["oracle"], per_prompt["base"]
    mis = [i for i, (c, (label, _)) in enumerate(zip(chosen, items)) if c != label]
    same = [i for i in range(len(items)) if i not in set(mis)]
    know = [i for i, (label, _) in enumerate(items) if label == "none"]
    routes: dict[str, int] = collections.Counter(f"{items[i][0]} -> {chosen[i]}" for i in mis)
    return {
        "misrouted": {"n": len(mis), "routes": dict(routes),
                      "right_adaptive": sum(ad[i] for i in mis),
                      "right_oracle": sum(orc[i] for i in mis),
                      "points_lost": round(100 * (sum(orc[i] for i in mis) - sum(ad[i] for i in mis))
                                           / len(items), 2)},
        "routed_as_oracle": {"n": len(same), "answers_differ": sum(ad[i] != orc[i] for i in same),
                             "points": round(100 * (sum(ad[i] for i in same) - sum(orc[i] for i in same))
                                             / len(items), 2)},
        "knowledge": {"n": len(know), "to_an_expert": sum(chosen[i] != "none" for i in know),
                      "right_base": sum(base[i] for i in know),
                      "right_adaptive": sum(ad[i] for i in know),
                      "right_oracle": sum(orc[i] for i in know),
                      "flipped_vs_base": {
                          "right_to_wrong": sum(base[i] and not ad[i] for i in know),
                          "wrong_to_right": sum(ad[i] and not base[i] for i in know)}},
    }


# ----- main ---------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rounds", type=int, default=3, help="first-pass timing rounds (median)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--experts", default=str(EXPERTS), help="folder of <task>_svf_sft experts")
    ap.add_argument("--skip-fewshot", action="store_true")
    ap.add_argument("--small", action="store_true",
                    help="a smoke run on a few prompts (to time the phases; not a result)")
    args = ap.parse_args()
    if args.small:
        global FIT_PER_TASK, VAL_PER_TASK, TEST_PER_TASK, KNOWLEDGE_FIT, KNOWLEDGE_VAL
        global KNOWLEDGE_TEST, FEWSHOT
        FIT_PER_TASK, VAL_PER_TASK, TEST_PER_TASK = 20, 8, 8
        KNOWLEDGE_FIT, KNOWLEDGE_VAL, KNOWLEDGE_TEST = 20, 8, 8
        FEWSHOT = {**FEWSHOT, "iterations": 1}
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    walls: dict[str, float] = {}

    def lap(name: str, t0: float) -> None:
        walls[name] = round(time.perf_counter() - t0, 1)
        print(f"[{time.perf_counter() - t_start:6.0f} s] {name}: {walls[name]} s", file=sys.stderr,
              flush=True)

    base, tok = rk.load_model("smollm2")
    fingerprint = model_fingerprint(base)
    experts = [load_expert(Path(args.experts) / f"{t}_svf_sft") for t in TASKS]
    names = {t: e.name for t, e in zip(TASKS, experts)}
    model = get_svf_model(base, SVFConfig(target_modules=experts[0].target_modules))
    sets = build_sets(names)
    check = sets["checker"].check
    report: dict[str, Any] = {
        "model": {"smollm2": fingerprint}, "experts": {e.name: e.metrics for e in experts},
        "sizes": {"fit": {k: len(v) for k, v in sets["fit"].items()},
                  "val": {k: len(v) for k, v in sets["val"].items()},
                  "routing_test": {k: len(v) for k, v in sets["test"].items()},
                  "mixed": dict(collections.Counter(label for label, _ in sets["mixed"]))},
        "settings": {"max_new_tokens": MAX_NEW_TOKENS, "chat": True, "fewshot": FEWSHOT,
                     "fewshot_shots_per_class": FEWSHOT_SHOTS}}
    val_rows, test_rows = flat(sets["val"]), flat(sets["test"])

    # ---- routers, each setting chosen on val (the fitting phrasing) -----------------------
    candidates: dict[str, dict[str, Any]] = {}
    for label, opts in CLASSIFIERS.items():
        t0 = time.perf_counter()
        r = ClassifierRouter.fit(model, tok, sets["fit"], experts=experts, seed=0, chat=True,
                                 **opts)
        fit_s = time.perf_counter() - t0
        candidates[f"classifier: {label}"] = {"router": r, "family": "classifier",
                                              "settings": opts, "fit_seconds": round(fit_s, 1)}
        lap(f"fit classifier {label}", t0)
    for label, spec in PROMPT_TEMPLATES.items():
        # class word -> expert name (None: the base); shots: the first fitting prompts
        classes = {w: (names[t] if t else None) for w, t in spec["classes"].items()}
        word = {(t or "none"): w for w, t in spec["classes"].items()}
        shots = [(p, word[t]) for t, n in spec["shots"].items()
                 for p in sets["fit"][names.get(t, "none")][:n]]
        random.Random(f"prompt shots:{label}").shuffle(shots)
        template = "".join(f"Question: {q}\nType: {a}\n\n" for q, a in shots)
        template += "Question: {prompt}\nType:"
        r = PromptRouter(model, tok, experts, classes=classes, template=template,
                         max_new_tokens=3, chat=False)
        candidates[f"prompt: {label}"] = {"router": r, "family": "prompt",
                                          "settings": {"template": template, "classes": classes}}
    if not args.skip_fewshot:
        t0 = time.perf_counter()
        shots = [e for cls in sets["fit_examples"]
                 for e in seeded(sets["fit_examples"][cls], FEWSHOT_SHOTS, f"fewshot:{cls}")]
        fs = FewShotRouter.fit(model, tok, experts, sets["checker"], examples=shots,
                               max_new_tokens=MAX_NEW_TOKENS, seed=0, **FEWSHOT)
        candidates["fewshot (one CEM mixture)"] = {
            "router": fs, "family": "fewshot", "fit_seconds": round(time.perf_counter() - t0, 1),
            "settings": {"mixture": fs.mixture.weights, "keys": fs.search_info.get("keys"),
                         "start_keys": fs.search_info.get("start_keys")}}
        lap("fit fewshot", t0)
    routing: dict[str, Any] = {}
    for name, c in candidates.items():
        t0 = time.perf_counter()
        routing[name] = {"family": c["family"], "settings": c["settings"],
                         "fit_seconds": c.get("fit_seconds"),
                         "val": routing_report(c["router"], val_rows)}
        lap(f"val {name}", t0)
    # per family, the setting with the best val accuracy (ties: the first listed)
    chosen_by_family: dict[str, str] = {}
    for name, r in routing.items():
        best = chosen_by_family.get(r["family"])
        if best is None or r["val"]["accuracy"]["overall"] > routing[best]["val"]["accuracy"]["overall"]:
            chosen_by_family[r["family"]] = name
    # held out: every classifier setting (both are cheap; the why-table compares them), and
    # the chosen setting of the other families (a prompt-router pass costs a long prompt)
    for name, r in routing.items():
        if r["family"] == "classifier" or chosen_by_family[r["family"]] == name:
            t0 = time.perf_counter()
            r["held_out"] = routing_report(candidates[name]["router"], test_rows)
            lap(f"held out {name}", t0)
    report["routing"] = routing
    report["chosen_on_val"] = chosen_by_family
    report["routing_accuracy_held_out"] = {
        fam: routing[name]["held_out"]["accuracy"]["overall"] for fam, name in chosen_by_family.items()}
    report["best_routing_accuracy"] = max(report["routing_accuracy_held_out"].values())
    # AdaptiveModel's router: the best val accuracy over the families' choices (ties: the
    # classifier, one forward pass). The prompt router reads its own template without the
    # chat template, so AdaptiveModel is told chat=True for generation explicitly.
    order = ["classifier", "prompt", "fewshot"]
    adaptive_name = max((chosen_by_family[f] for f in order if f in chosen_by_family),
                        key=lambda n: (routing[n]["val"]["accuracy"]["overall"],
                                       -order.index(routing[n]["family"])))
    report["adaptive_router"] = adaptive_name

    # ---- the mixed set ---------------------------------------------------------------------
    items = sets["mixed"]
    prompts = [e.prompt for _, e in items]
    labels = {e.prompt: label for label, e in items}
    gen = {"max_new_tokens": MAX_NEW_TOKENS}

    per_prompt: dict[str, list[bool]] = {}

    def run(router: Router, row: str) -> tuple[dict[str, float], list[Mixture]]:
        am = AdaptiveModel(model, tok, experts, for_adaptive(router), chat=True)
        out = am.generate_with_details(prompts, **gen)
        per_prompt[row] = correct(out.texts, items, check)
        return score(out.texts, items, check), out.mixtures

    rows: dict[str, dict[str, float]] = {}
    t0 = time.perf_counter()
    texts = generate(model, tok, prompts, chat=True, **gen)
    rows["base"] = score(texts, items, check)
    per_prompt["base"] = correct(texts, items, check)
    lap("mixed base", t0)
    for e in experts:
        t0 = time.perf_counter()
        rows[f"only {e.name}"] = run(FixedRouter(experts, {e.name: 1.0}), f"only {e.name}")[0]
        lap(f"mixed only {e.name}", t0)
    t0 = time.perf_counter()
    rows["uniform"] = run(FixedRouter(experts, {e.name: 1 / len(experts) for e in experts}),
                         "uniform")[0]
    lap("mixed uniform", t0)
    t0 = time.perf_counter()
    rows["oracle"] = run(LabelRouter(experts, labels), "oracle")[0]
    lap("mixed oracle", t0)
    t0 = time.perf_counter()
    adaptive_router = candidates[adaptive_name]["router"]
    rows[f"AdaptiveModel ({adaptive_name})"], mixtures = run(adaptive_router, "adaptive")
    lap("mixed adaptive", t0)
    chosen = ["none" if m.is_base else max(m.weights, key=lambda n: m.weights[n]) for m in mixtures]
    adaptive = rows[f"AdaptiveModel ({adaptive_name})"]
    report["mixed"] = {"accuracy": rows, "n": len(items),
                       "adaptive_routing_accuracy": round(sum(
                           c == label for c, (label, _) in zip(chosen, items)) / len(items), 4)}
    report["mixed"]["why"] = why_table(items, chosen, per_prompt)
    report["adaptive_vs_oracle_points"] = round(100 * (adaptive["overall"] - rows["oracle"]["overall"]), 2)
    report["adaptive_vs_base_points"] = round(100 * (adaptive["overall"] - rows["base"]["overall"]), 2)
    report["knowledge_vs_base_points"] = round(100 * (adaptive["knowledge"] - rows["base"]["knowledge"]), 2)

    # ---- first-pass share (classifier router; and the AdaptiveModel's router if another) ---
    batch = prompts[:16]
    long = {"max_new_tokens": 64, "min_new_tokens": 64}
    classifier_name = chosen_by_family["classifier"]
    shares: dict[str, Any] = {}
    for name in dict.fromkeys([classifier_name, adaptive_name]):
        t0 = time.perf_counter()
        am = AdaptiveModel(model, tok, experts, for_adaptive(candidates[name]["router"]),
                           chat=True)
        # no warm-up call: the mixed-set runs above have warmed every path
        s, rs, gs = [], [], []
        for _ in range(args.rounds):
            out = am.generate_with_details(batch, **long)
            s.append(out.route_s / (out.route_s + out.generate_s))
            rs.append(out.route_s)
            gs.append(out.generate_s)
        shares[name] = {"share": round(statistics.median(s), 4),
                        "route_s": round(statistics.median(rs), 3),
                        "generate_s": round(statistics.median(gs), 3)}
        lap(f"first pass {name}", t0)
    report["first_pass"] = shares
    report["first_pass_share"] = shares[classifier_name]["share"]

    report["targets"] = {k: {"value": report.get(k), "target": f"{op} {v}",
                             "met": report.get(k) is not None and (
                                 report[k] >= v if op == ">=" else report[k] <= v)}
                         for k, (op, v) in TARGETS.items()}
    report["wall_seconds"] = {**walls, "total": round(time.perf_counter() - t_start, 1)}
    report["threads"] = args.threads
    for r in routing.values():
        r["errors"] = {k: r[k].pop("errors") for k in ("val", "held_out") if k in r}
    out = RESULTS / ("routing_real_small.json" if args.small else "routing_real.json")
    atomic_write_json(out, report)
    print(json.dumps(report, indent=None if args.json else 2, default=str))


if __name__ == "__main__":
    main()
