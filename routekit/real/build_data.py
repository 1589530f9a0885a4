"""Builds the project's real data files in ``routekit/real/data/`` from a fixed seed.

``python -m routekit.real.build_data`` rewrites them bit-identically (``--check`` only compares).
Everything is written by the project: the facts (routekit/real/facts.py) are common knowledge,
the wording is ours. Files and record fields (see docs/real_data.md):

- ``knowledge.jsonl``: real-world questions with short answers (``kind`` says which sort),
  split ``test``: a retention set.
- ``successor.jsonl``, ``add.jsonl``, ``past_tense.jsonl``: tasks in one phrasing (splits
  ``train``, ``val``, ``test``) with ``ood`` holding the test items in a second phrasing.
- ``multiply.jsonl``: the control task, 3-digit products, which the base cannot do.
- ``heldout_prompts.jsonl``: diverse prompts (``question`` and ``kind``, no answer) whose base
  greedy answers serve as held-out text for forgetting; the answers are computed at run time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

from .facts import knowledge_entries, past_tenses

SEED = 17
DATA_DIR = Path(__file__).resolve().parent / "data"
SIZES = {"train": 300, "val": 100, "test": 200}

# Each task: the main phrasing, and a second phrasing of the same items (the ``ood`` split).
SUCCESSOR = ("What is the next number after {n}?", "What number is one more than {n}?")
ADD = ("What is the sum of {a} and {b}?", "What is {a} plus {b}?")
PAST_TENSE = ("What is the past tense of the verb {v}?", 'What is the past tense of "{v}"?')
MULTIPLY = "What is {a} times {b}?"

HELDOUT_TEMPLATES = [
    ("describe", "Write one sentence about {t}."),
    ("explain", "Explain {t} to a child."),
    ("facts", "Give two facts about {t}."),
    ("use", "Why do people care about {t}?"),
    ("advice", "Give one tip about {t}."),
]
HELDOUT_TOPICS = """the ocean|rainbows|bicycles|coffee|the moon|winter|libraries|bread|volcanoes
|music|trees|the internet|honey bees|trains|chess|sleep|the desert|soap|clocks|rain|maps|cats
|gardens|the sun|bridges|paper|mountains|swimming|birthdays|money""".replace("\n", "").split("|")


def _record(question: str, answer: str, split: str, **extra: str) -> dict[str, str]:
    return {"question": question, "answer": answer, "split": split, **extra}


def _split_items(items: list, rng: random.Random) -> dict[str, list]:
    """Shuffle ``items`` and cut them into disjoint train / val / test of :data:`SIZES`
    (train keeps whatever is beyond val and test)."""
    items = list(items)
    rng.shuffle(items)
    n_test, n_val = SIZES["test"], SIZES["val"]
    out = {"test": items[:n_test], "val": items[n_test : n_test + n_val]}
    out["train"] = items[n_test + n_val :]
    if len(out["train"]) < SIZES["train"]:
        raise ValueError(f"only {len(items)} items; {sum(SIZES.values())} are needed")
    return out


def _task(items: list, phrase: tuple[str, str] | str, answer, rng: random.Random) -> list[dict]:
    main, second = phrase if isinstance(phrase, tuple) else (phrase, None)
    parts = _split_items(items, rng)
    records = []
    for split in ("train", "val", "test"):
        records += [_record(main.format(**it), answer(it), split) for it in parts[split]]
    if second is not None:
        records += [_record(second.format(**it), answer(it), "ood") for it in parts["test"]]
    return records


def successor(rng: random.Random) -> list[dict]:
    """The next integer after n, n from 100 to 9999."""
    ns = rng.sample(range(100, 10000), 700)
    return _task([{"n": n} for n in ns], SUCCESSOR, lambda it: str(it["n"] + 1), rng)


def add(rng: random.Random) -> list[dict]:
    """Sums of two integers from 1 to 30 (ordered pairs, each pair used once)."""
    pairs = rng.sample([(a, b) for a in range(1, 31) for b in range(1, 31)], 700)
    items = [{"a": a, "b": b} for a, b in pairs]
    return _task(items, ADD, lambda it: str(it["a"] + it["b"]), rng)


def past_tense(rng: random.Random) -> list[dict]:
    """The past tense of English verbs (regular and irregular), each verb in one split."""
    pasts = past_tenses()
    items = [{"v": v} for v in sorted(pasts)]
    return _task(items, PAST_TENSE, lambda it: pasts[it["v"]], rng)


def multiply(rng: random.Random) -> list[dict]:
    """The control: products of two 3-digit integers."""
    pairs = set()
    while len(pairs) < 700:
        pairs.add((rng.randint(100, 999), rng.randint(100, 999)))
    items = [{"a": a, "b": b} for a, b in sorted(pairs)]
    return _task(items, MULTIPLY, lambda it: str(it["a"] * it["b"]), rng)


def knowledge() -> list[dict]:
    """Every knowledge question, in the fixed order of routekit/real/facts.py."""
    return [_record(q, a, "test", kind=k) for k, q, a in knowledge_entries()]


def heldout_prompts() -> list[dict]:
    """Diverse open prompts: every template with every topic."""
    return [
        {"question": tpl.format(t=t), "kind": kind}
        for t in HELDOUT_TOPICS
        for kind, tpl in HELDOUT_TEMPLATES
    ]


def build() -> dict[str, str]:
    """The text of every data file, by file name. One seeded generator per task, so that
    changing one task never changes another's draw."""
    files = {
        "knowledge": knowledge(),
        "successor": successor(random.Random(f"{SEED}:successor")),
        "add": add(random.Random(f"{SEED}:add")),
        "past_tense": past_tense(random.Random(f"{SEED}:past_tense")),
        "multiply": multiply(random.Random(f"{SEED}:multiply")),
        "heldout_prompts": heldout_prompts(),
    }
    return {
        f"{name}.jsonl": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
        for name, recs in files.items()
    }


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument(
        "--out", type=Path, default=DATA_DIR, help="folder to write (default: the package's)"
    )
    ap.add_argument(
        "--check", action="store_true", help="only report files that differ from a rebuild"
    )
    args = ap.parse_args(argv)
    stale = []
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in build().items():
        path = args.out / name
        same = path.is_file() and path.read_text(encoding="utf-8") == text
        if args.check:
            if not same:
                stale.append(name)
        elif not same:
            _write_atomic(path, text)
            print(f"wrote {path} ({text.count(chr(10))} records)")
    if stale:
        print(f"differ from a rebuild: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
