"""Routing on the world: routers and AdaptiveModel on a mixed test set, and their speed.

Experts are trained with the shipped recipes (SVF RL, recipes/configs/world/<task>_svf_rl.yaml,
for add, rev and hop; one SVF expert trained by the same recipe on all three tasks at once,
with as many steps as the three single experts together, as the multi-task baseline; and the
hop proxy expert, <task>_proxy_sft.yaml, for the mixed-kinds timing). They are cached under
benchmarks/results/routing_experts/<world base fingerprint>/ (the proxy expert in a
folder named with the world proxy's fingerprint) and reused.

The mixed test set is every task's test prompts (add 50, rev 50, hop 30) plus the knowledge
probes (the facts task's held-out questions, 90), which need no expert (label ``none``),
shuffled; the ood set is the same with each task's ood split. Accuracy is each prompt's
task checker, greedy. Rows: the base; each expert applied to everything; a uniform mixture;
the multi-task expert; oracle routing (true labels); and each router. Routing accuracy counts
a probe routed to the base as right.

Out of format (``out_of_format``): 184 prompts no router is fitted on (out_of_format_set):
each task in its clean format, its other mixed format and four wordings written here, and
knowledge questions in five new wordings (``none``); routing accuracy per task, per kind and
overall for each router, beside ``classifier_routing_accuracy`` (in format).

Speed: ``first_pass_share`` is routing time over routing + generation for a batch of 16 mixed
prompts with 64 new tokens (classifier router; medians of interleaved rounds);
``mixed_kinds_vs_sum`` is one generate call whose 16 rows mix SVF (rev) and proxy (hop) experts
over the SVF per-row call plus the proxy call, each alone on the same batch;
``fewshot_seconds`` is one few-shot CEM fit with the default settings (population 32, elite
0.2, 50 iterations, 10 examples), beside CMA-ES with the same budget.

    python benchmarks/bench_routing.py --json

Writes benchmarks/results/bench_routing.json. These figures check that the machinery works;
they are not claims to make true.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from routekit import world
from routekit.adaptive import AdaptiveModel
from routekit.eval import generate
from routekit.experts import load_expert
from routekit.experts.mixture import mixture
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
from routekit.tasks import Example, Task, get_task
from routekit.tasks.checkers import answer_match
from routekit.training import TrainConfig, train
from routekit.world.corpus import World

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "recipes" / "configs" / "world"
RESULTS = Path(__file__).parent / "results"
SKILLS = ("add", "rev", "hop")
TARGETS = {
    "classifier_routing_accuracy": (">=", 0.95),
    "classifier_out_of_format_accuracy": (">=", 0.95),
    "adaptive_vs_oracle_points": (">=", -2.0),
    "adaptive_vs_base_points": (">", 0.0),
    "first_pass_share": ("<=", 0.15),
    "mixed_kinds_vs_sum": ("<=", 0.75),
    "fewshot_seconds": ("<=", 120.0),
}


# The classifier router's settings: mean-pooled features of every hidden state (embeddings
# and all layers, not picked one by one) and the nearest-centroid head. Why: see the
# "why the classifier fails" table in README.md (each task's fitting prompts have one format;
# a logistic head separates that format, not the task).
CLASSIFIER: dict[str, Any] = {"layers": "all", "head": "centroid"}


class LabelRouter(Router):
    """Oracle routing: each prompt's true task's expert (probes: the base)."""

    kind = "oracle"

    def __init__(self, experts: Sequence[Any], labels: dict[str, str]) -> None:
        super().__init__(experts)
        self.labels = labels

    def route(self, prompts: Sequence[str]) -> list[Mixture]:
        return [Mixture(weights={self.labels[p]: 1.0} if self.labels[p] != "none" else {})
                for p in prompts]


# ----- experts -------------------------------------------------------------------------------


def train_expert(base, tok, task: Task, recipe: str, name: str, out: Path, **overrides: Any):
    """Train with a shipped recipe (or reuse the cached expert); returns the loaded expert."""
    if (out / "expert_config.json").is_file():
        return load_expert(out)
    config = TrainConfig.from_yaml(CONFIGS / recipe).model_copy(
        update={"eval_every": 0, **overrides})
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = train(copy.deepcopy(base), tok, task, config, out_dir=tmp, progress=False)
    meta = {"task": task.name, "recipe": recipe, **overrides}
    if config.parameterization == "svf":
        expert = result.model.export_expert(name, training_config=meta,
                                            metrics={"seconds": time.perf_counter() - t0})
        expert.save_pretrained(out)
    else:
        from routekit.proxy import ProxyExpert

        small, _ = world.load_proxy()
        ProxyExpert(result.model, small, name, tokenizer=tok).save_pretrained(out, base_tokenizer=tok)
    print(f"trained {name} ({recipe}) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return load_expert(out)


def multi_task(tasks: dict[str, Task]) -> Task:
    """All skills' train examples in one task (interleaved), for the multi-task baseline."""
    rows: list[Example] = []
    for t in tasks.values():
        rows.extend(t.examples("train"))
    random.Random(0).shuffle(rows)
    return Task("multi", {"train": rows, "test": rows[:50]}, answer_match,
                world=next(iter(tasks.values())).world)


# ----- evaluation ----------------------------------------------------------------------------


def mixed_set(tasks: dict[str, Task], facts: Task, split: str) -> list[tuple[str, Example, Task]]:
    items = [(name, e, t) for name, t in tasks.items() for e in t.examples(split)]
    items += [("none", e, facts) for e in facts.examples("test")]
    random.Random(1).shuffle(items)
    return items


# Out-of-format routing prompts: formats and wordings the routers are not fitted on. Each
# task's train/test prompts use its first mixed format (routekit.world.corpus); these are the
# clean format, the other mixed format, and wordings written here that no corpus line holds.
# Entities and strings are held-out ones (test items, probe entities) or fresh random strings.
NEW_WORDINGS = {
    "add": ["what is {a} added to {b}?", "{a} and {b} together make", "add {a} to {b}:",
            "the total of {a} with {b} is"],
    "rev": ["reverse the letters of {w}:", "{w} spelled backwards is", "write {w} back to front:",
            "flip {w}:"],
    "hop": ["in which country does {e} live?", "{e} is a citizen of", "the country {e} lives in is",
            "name the country of {e}:"],
    "none": ["where is the home of {e}?", "tell me the job of {e}:",
             "which color is the favorite of {e}?", "what does {e} do for work?",
             "in which city does {e} live?"],
}
OOF_PER_FORMAT = 8  # prompts per (task, format or wording)


def out_of_format_set(w: World, per: int = OOF_PER_FORMAT) -> list[tuple[str, str, str]]:
    """(label, prompt, kind) rows: kind is 'clean', 'other mixed' or 'new wording'."""
    from routekit.world.corpus import add_formats, hop_formats, rev_formats

    rng = random.Random("out-of-format")
    fresh: list[str] = []
    while len(fresh) < per * len(NEW_WORDINGS["rev"]):
        s = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.choice((3, 4, 5))))
        if s not in w.rev_items and s != s[::-1] and s not in fresh:
            fresh.append(s)
    rows: list[tuple[str, str, str]] = []
    pairs = rng.sample(w.add_test, min(len(w.add_test), 2 * per))
    for i, (a, b) in enumerate(pairs):
        kind, fmt = ("clean", 0) if i < per else ("other mixed", 2)
        rows.append(("add", add_formats(a, b, 0)[fmt][0], kind))
    words = rng.sample(w.rev_test, min(len(w.rev_test), 2 * per))
    for i, s in enumerate(words):
        kind, fmt = ("clean", 0) if i < per else ("other mixed", 2)
        rows.append(("rev", rev_formats(s, "")[fmt][0], kind))
    ents = rng.sample(w.probe_entities, min(len(w.probe_entities), 2 * per))
    for i, e in enumerate(ents):
        kind, fmt = ("clean", 0) if i < per else ("other mixed", 2)
        rows.append(("hop", hop_formats(e, w.facts[e]["city"], "")[fmt][0], kind))
    for template in NEW_WORDINGS["add"]:
        for a, b in rng.sample(w.add_test, per):
            rows.append(("add", template.format(a=a, b=b), "new wording"))
    for j, template in enumerate(NEW_WORDINGS["rev"]):
        for s in fresh[j * per:(j + 1) * per]:
            rows.append(("rev", template.format(w=s), "new wording"))
    for label in ("hop", "none"):
        for template in NEW_WORDINGS[label]:
            for e in rng.sample(w.probe_entities, per):
                rows.append((label, template.format(e=e), "new wording"))
    return rows


def every_format_prompts(w: World, facts: Task) -> dict[str, list[str]]:
    """Each task's *train* items in all three of its formats (the facts train questions as
    ``none``): what a fit on every format would see. The clean and other mixed formats are
    then fitted on, so for a router fitted so only the new wordings are out of format."""
    from routekit.world.corpus import add_formats, hop_formats, rev_formats

    return {"add": [f[0] for a, b in w.add_train for f in add_formats(a, b, 0)],
            "rev": [f[0] for s in w.rev_train for f in rev_formats(s, "")],
            "hop": [f[0] for e in w.seen_entities for f in hop_formats(e, w.facts[e]["city"], "")],
            "none": facts.prompts("train")}


def label_accuracy(chosen: Sequence[str], rows: Sequence[tuple[str, str, str]]) -> dict[str, Any]:
    """Routing accuracy per task, per kind and overall, of chosen labels against rows' labels."""
    by: dict[str, list[bool]] = {}
    for c, (label, _, kind) in zip(chosen, rows):
        ok = c == label
        by.setdefault(label, []).append(ok)
        by.setdefault(f"{label} / {kind}", []).append(ok)
        by.setdefault(f"all / {kind}", []).append(ok)
        by.setdefault("overall", []).append(ok)
    return {k: round(sum(v) / len(v), 4) for k, v in sorted(by.items())}


def routed_labels(router: Router, prompts: Sequence[str]) -> list[str]:
    """Each prompt's top expert, or 'none' for the base (the bench's experts are named by task)."""
    out = []
    for m in router.route(list(prompts)):
        out.append(max(m.weights, key=lambda n: m.weights[n]) if not m.is_base else "none")
    return out


def score(texts: Sequence[str], items) -> dict[str, float]:
    by: dict[str, list[bool]] = {}
    for text, (label, ex, task) in zip(texts, items):
        by.setdefault(label, []).append(task.check(text, ex.reference))
    out = {("probes" if k == "none" else k): sum(v) / len(v) for k, v in sorted(by.items())}
    out["overall"] = sum(sum(v) for v in by.values()) / sum(len(v) for v in by.values())
    return out


def evaluate_router(base, tok, experts, router, items) -> tuple[dict[str, float], list[Mixture]]:
    am = AdaptiveModel(base, tok, experts, router)
    out = am.generate_with_details([e.prompt for _, e, _ in items], max_new_tokens=16)
    return score(out.texts, items), out.mixtures


def routing_accuracy(mixtures: Sequence[Mixture], items, experts_by_task: dict[str, str]) -> float:
    right = 0
    for m, (label, _, _) in zip(mixtures, items):
        chosen = max(m.weights, key=lambda n: m.weights[n]) if not m.is_base else "none"
        right += chosen == (experts_by_task.get(label, "none"))
    return right / len(items)


def timed(fn, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


# ----- main ----------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rounds", type=int, default=5, help="timing rounds (medians)")
    ap.add_argument("--skip-fewshot", action="store_true", help="leave out the few-shot fits")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    base, tok = world.load()
    base_fp = model_fingerprint(base)
    cache = RESULTS / "routing_experts" / base_fp
    tasks = {name: get_task(name) for name in SKILLS}
    facts = get_task("facts")
    svf_experts = [train_expert(base, tok, tasks[n], f"{n}_svf_rl.yaml", n, cache / n)
                   for n in SKILLS]
    steps = TrainConfig.from_yaml(CONFIGS / "hop_svf_rl.yaml").steps * len(SKILLS)
    multi = train_expert(base, tok, multi_task(tasks), "hop_svf_rl.yaml", "multi",
                         cache / "multi", steps=steps)
    small, _ = world.load_proxy()
    proxy_fp = model_fingerprint(small)  # the proxy expert is cached per proxy, too
    hop_proxy = train_expert(small, tok, tasks["hop"], "hop_proxy_sft.yaml", "hop_proxy",
                             cache / f"hop_proxy-{proxy_fp}")
    model = get_svf_model(base, SVFConfig(target_modules=svf_experts[0].target_modules))
    by_task = {n: n for n in SKILLS}
    report: dict[str, Any] = {"world_base_fingerprint": base_fp,
                              "world_proxy_fingerprint": proxy_fp, "experts": {
        e.name: e.training_config for e in [*svf_experts, multi]}}

    # Routers: fitted on train prompts only (each task's one format, and the facts questions).
    fit_prompts = {**{n: tasks[n].prompts("train") for n in SKILLS}, "none": facts.prompts("train")}
    t0 = time.perf_counter()
    classifier = ClassifierRouter.fit(model, tok, fit_prompts, experts=svf_experts, seed=0,
                                      **CLASSIFIER)
    report["classifier_fit_seconds"] = round(time.perf_counter() - t0, 1)
    report["classifier_settings"] = CLASSIFIER
    t0 = time.perf_counter()
    classifier_before = ClassifierRouter.fit(model, tok, fit_prompts, experts=svf_experts, seed=0)
    report["classifier_before_fit_seconds"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    classifier_every = ClassifierRouter.fit(
        model, tok, every_format_prompts(World(tasks["rev"].world), facts), experts=svf_experts,
        seed=0, layers="all")
    report["classifier_every_format_fit_seconds"] = round(time.perf_counter() - t0, 1)
    routers: dict[str, Router] = {
        "classifier": classifier,
        "classifier (before: logistic, last layer)": classifier_before,
        "classifier (every format of the train items; logistic, all layers)": classifier_every,
        "prompt": PromptRouter(model, tok, svf_experts,
                               classes={"add": "add", "rev": "rev", "hop": "hop", "fact": None}),
    }
    for split in ("test", "ood"):
        items = mixed_set(tasks, facts, split)
        labels = {e.prompt: label for label, e, _ in items}
        rows: dict[str, dict[str, float]] = {}
        rows["base"] = score(generate(model, tok, [e.prompt for _, e, _ in items]), items)
        for e in svf_experts:
            rows[f"only {e.name}"] = evaluate_router(model, tok, svf_experts,
                                                     FixedRouter(svf_experts, {e.name: 1.0}), items)[0]
        rows["uniform"] = evaluate_router(
            model, tok, svf_experts,
            FixedRouter(svf_experts, {n: 1 / len(SKILLS) for n in SKILLS}), items)[0]
        rows["multi-task expert"] = evaluate_router(
            model, tok, [multi], FixedRouter([multi], {"multi": 1.0}), items)[0]
        rows["oracle"] = evaluate_router(model, tok, svf_experts, LabelRouter(svf_experts, labels),
                                         items)[0]
        routing: dict[str, float] = {}
        for rname, router in routers.items():
            rows[f"router: {rname}"], mixtures = evaluate_router(model, tok, svf_experts, router, items)
            routing[rname] = routing_accuracy(mixtures, items, by_task)
        report[split] = {"accuracy": rows, "routing_accuracy": routing, "n": len(items)}

    # Out-of-format routing: formats and wordings no router was fitted on.
    rows_oof = out_of_format_set(World(tasks["rev"].world))
    fitted = {p for ps in fit_prompts.values() for p in ps}
    assert not fitted & {p for _, p, _ in rows_oof}, "an out-of-format prompt is a fitting prompt"
    corpus = World(tasks["rev"].world).corpus_text()
    in_corpus = [p for _, p, k in rows_oof if k == "new wording" and p in corpus]
    assert not in_corpus, f"new wordings found in the corpus: {in_corpus[:3]}"
    oof_prompts = [p for _, p, _ in rows_oof]
    report["out_of_format"] = {
        "n": len(rows_oof),
        "n_by_label": {k: sum(r[0] == k for r in rows_oof) for k in (*SKILLS, "none")},
        "wordings": NEW_WORDINGS,
        "routing_accuracy": {name: label_accuracy(routed_labels(r, oof_prompts), rows_oof)
                             for name, r in routers.items()},
        "note": "'all / new wording' is the share over the new wordings alone, the only rows "
                "out of format for the router fitted on every format of the train items; "
                "the few-shot router routes every prompt to one mixture fitted on one task, "
                "so it has no per-prompt routing accuracy here",
    }
    report["classifier_out_of_format_accuracy"] = \
        report["out_of_format"]["routing_accuracy"]["classifier"]["overall"]
    report["classifier_out_of_format_accuracy_before"] = report["out_of_format"][
        "routing_accuracy"]["classifier (before: logistic, last layer)"]["overall"]

    test = report["test"]
    adaptive = test["accuracy"]["router: classifier"]
    report["classifier_routing_accuracy"] = test["routing_accuracy"]["classifier"]
    report["adaptive_vs_oracle_points"] = 100 * (adaptive["overall"] - test["accuracy"]["oracle"]["overall"])
    report["adaptive_vs_base_points"] = 100 * (adaptive["overall"] - test["accuracy"]["base"]["overall"])
    report["probes_vs_base_points"] = 100 * (adaptive["probes"] - test["accuracy"]["base"]["probes"])

    # Speed: the first pass's share, and both kinds in one call.
    batch = [e.prompt for _, e, _ in mixed_set(tasks, facts, "test")[:16]]
    long = {"max_new_tokens": 64, "min_new_tokens": 64}
    am = AdaptiveModel(model, tok, svf_experts, classifier)
    shares = []
    for _ in range(args.rounds):
        out = am.generate_with_details(batch, **long)
        shares.append(out.route_s / (out.route_s + out.generate_s))
    report["first_pass_share"] = statistics.median(shares)
    rev = svf_experts[SKILLS.index("rev")]
    kinds = [rev, hop_proxy]
    alpha = torch.tensor([[1.0, 0.0] if i % 2 else [0.0, 1.0] for i in range(16)])

    def both():
        with mixture(model, kinds, alpha, tokenizer=tok):
            generate(model, tok, batch, **long)

    def svf_alone():
        with mixture(model, [rev], alpha[:, :1], tokenizer=tok):
            generate(model, tok, batch, **long)

    def proxy_alone():
        with mixture(model, [hop_proxy], alpha[:, 1:], tokenizer=tok):
            generate(model, tok, batch, **long)

    both(), svf_alone(), proxy_alone()  # warm-up
    t = {"both": [], "svf": [], "proxy": []}
    for _ in range(args.rounds):  # interleaved rounds
        t["both"] += timed(both, 1)
        t["svf"] += timed(svf_alone, 1)
        t["proxy"] += timed(proxy_alone, 1)
    report["mixed_kinds_vs_sum"] = statistics.median(
        b / (s + p) for b, s, p in zip(t["both"], t["svf"], t["proxy"]))
    report["mixed_kinds_seconds"] = {k: statistics.median(v) for k, v in t.items()}

    if not args.skip_fewshot:
        few: dict[str, Any] = {}
        for optimizer in ("cem", "cmaes"):
            t0 = time.perf_counter()
            router = FewShotRouter.fit(model, tok, svf_experts, tasks["hop"], n_shots=10,
                                       optimizer=optimizer, seed=0)
            seconds = time.perf_counter() - t0
            items = [("hop", e, tasks["hop"]) for e in tasks["hop"].examples("test")]
            acc = evaluate_router(model, tok, svf_experts, router, items)[0]["hop"]
            info = router.search_info
            few[optimizer] = {"seconds": round(seconds, 1), "best_keys": info.get("keys"),
                              "start_keys": info.get("start_keys"),
                              "evaluations": info.get("evaluations"), "hop_test": acc,
                              "mixture": router.mixture.weights}
        report["fewshot"] = few
        report["fewshot_seconds"] = few["cem"]["seconds"]
        cem, cma = few["cem"]["best_keys"], few["cmaes"]["best_keys"]
        report["fewshot_better"] = ("cem" if cem > cma else "cmaes" if cma > cem else "tie")

    report["targets"] = {k: {"value": report.get(k), "target": f"{op} {v}",
                             "met": report.get(k) is not None and (
                                 report[k] >= v if op == ">=" else report[k] <= v if op == "<="
                                 else report[k] > v)}
                         for k, (op, v) in TARGETS.items()}
    atomic_write_json(RESULTS / "bench_routing.json", report)
    print(json.dumps(report, indent=None if args.json else 2, default=str))


if __name__ == "__main__":
    main()
