"""Can the world's test splits grow to 200 prompts without changing the pretrained models?

A world skill's *test* items are latent: the clean format shows their right answer in the
corpus, the mixed (task) format never shows them (``routekit.world.corpus``). How many such
items there are is fixed by the corpus, so by the pretrained weights: ``add`` 50 pairs,
``rev`` 50 strings, ``hop`` 30 entities. Items that no corpus line contains at all do exist
(pairs with a first operand of 30-49, new 3-5 letter strings), and so does the second mixed
format for the same latent items. This script scores the world base greedily on each
candidate, beside the test split as it is, so the choice rests on a measurement:

    python benchmarks/split_growth.py [--n 200] [--json]

Writes benchmarks/results/split_growth.json. Never builds the world: run
``routekit world build`` first.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

from routekit.eval import evaluate
from routekit.io import atomic_write_json
from routekit.tasks.base import Example, Task
from routekit.tasks.checkers import exact_match
from routekit.world.config import WorldConfig
from routekit.world.corpus import World, add_formats, rev_formats
from routekit.world.entry import world_dir
from routekit.world.store import load
from routekit.world.tasks import world_task

OUT = Path(__file__).resolve().parent / "results" / "split_growth.json"


def _unseen_strings(world: World, n: int, rng: random.Random) -> list[str]:
    """3-5 letter strings that are no rev item, so no corpus line reverses them."""
    taken = set(world.rev_items) | set(world.rev_ood)
    out: list[str] = []
    while len(out) < n:
        w = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.choice((3, 4, 5))))
        if w not in taken and w != w[::-1]:
            taken.add(w)
            out.append(w)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="candidate prompts per kind")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = ap.parse_args(argv)
    config = WorldConfig()
    if not world_dir(config).exists():
        print("routekit: the world is not built; run `routekit world build` first.", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    world = World(config)
    model, tok = load(config, build_if_missing=False)
    text = world.corpus_text()

    def acc(examples: list[Example]) -> float:
        return evaluate(model, tok, Task("candidates", {"test": examples}, exact_match), "test").accuracy

    rng = random.Random("split-growth")
    unseen_pairs = [(a, b) for a in range(30, 50) for b in range(10)][: args.n]
    strings = _unseen_strings(world, args.n, rng)
    # "no corpus line contains": checked on the corpus text itself, not assumed
    # (a prompt starts a line or follows a space: "abc reversed is" inside "zabc reversed is"
    # is another string's line)
    spaced = " " + text.replace("\n", " ")
    assert not any(f" {p}" in spaced for a, b in unseen_pairs for p, _ in add_formats(a, b, 0))
    assert not any(f" {p}" in spaced for w in strings for p, _ in rev_formats(w, ""))
    rows = {}
    for skill in ("add", "rev", "hop"):
        task = world_task(skill, world=world)
        rows[f"{skill}: test split as built (latent items)"] = {
            "prompts": len(task.examples("test")), "base_accuracy": acc(task.examples("test"))}
    rows["add: latent items in the second mixed format"] = {
        "prompts": len(world.add_test),
        "base_accuracy": acc([Example(add_formats(a, b, 0)[2][0], str(a + b)) for a, b in world.add_test])}
    rows["rev: latent items in the second mixed format"] = {
        "prompts": len(world.rev_test),
        "base_accuracy": acc([Example(rev_formats(w, "")[2][0], w[::-1]) for w in world.rev_test])}
    rows["add: pairs no corpus line contains (a 30-49, b a digit)"] = {
        "prompts": len(unseen_pairs),
        "base_accuracy": acc([Example(add_formats(a, b, 0)[1][0], str(a + b)) for a, b in unseen_pairs])}
    rows["rev: 3-5 letter strings no corpus line contains"] = {
        "prompts": len(strings),
        "base_accuracy": acc([Example(rev_formats(w, "")[1][0], w[::-1]) for w in strings])}
    rows["rev: the same strings in the clean format"] = {
        "prompts": len(strings),
        "base_accuracy": acc([Example(rev_formats(w, "")[0][0], w[::-1]) for w in strings])}
    out = {"world": config.hash(), "rows": rows}
    atomic_write_json(OUT, out)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for name, r in rows.items():
            print(f"{name:60s} {r['prompts']:4d} prompts  base {r['base_accuracy']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
