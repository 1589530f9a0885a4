"""The project's real data files: they equal a rebuild, their splits are disjoint and large
enough, and their answers are right by an independent computation."""

import json
import re

import pytest

from routekit.real import build_data
from routekit.tasks.checkers import sentence_match

TASKS = ["successor", "add", "past_tense", "multiply"]


def _records(name: str) -> list[dict]:
    path = build_data.DATA_DIR / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_committed_files_equal_a_rebuild(tmp_path):
    built = build_data.build()
    assert set(built) == {f"{n}.jsonl" for n in [*TASKS, "knowledge", "heldout_prompts"]}
    for name, text in built.items():
        assert (build_data.DATA_DIR / name).read_text(encoding="utf-8") == text, name
    assert build_data.main(["--check"]) == 0
    assert build_data.main(["--out", str(tmp_path)]) == 0  # the command writes the same bytes
    for name, text in built.items():
        assert (tmp_path / name).read_bytes() == text.encode("utf-8")
    (tmp_path / "add.jsonl").write_text("{}\n")
    assert build_data.main(["--out", str(tmp_path), "--check"]) == 1


@pytest.mark.parametrize("name", TASKS)
def test_task_splits_are_disjoint_and_large_enough(name):
    recs = _records(name)
    by = {}
    for r in recs:
        assert set(r) == {"question", "answer", "split"}
        by.setdefault(r["split"], []).append(r["question"])
    assert len(by["train"]) >= 300 and len(by["val"]) >= 100 and len(by["test"]) >= 200
    main = [q for s in ("train", "val", "test") for q in by[s]]
    assert len(set(main)) == len(main)  # no prompt in two splits, none twice
    if name != "multiply":  # the ood split asks the test items in another phrasing
        assert len(by["ood"]) == len(by["test"]) and not set(by["ood"]) & set(main)


def _ints(question: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", question)]


def test_numeric_answers_are_right():
    for r in _records("successor"):
        (n,) = _ints(r["question"])
        assert int(r["answer"]) == n + 1 and 100 <= n <= 9999
    for r in _records("add"):
        a, b = _ints(r["question"])
        assert int(r["answer"]) == a + b and 1 <= min(a, b) and max(a, b) <= 30
    for r in _records("multiply"):
        a, b = _ints(r["question"])
        assert int(r["answer"]) == a * b and 100 <= min(a, b) and max(a, b) <= 999


def test_past_tenses_are_right_and_each_verb_sits_in_one_split():
    known = {
        "go": "went",
        "stop": "stopped",
        "carry": "carried",
        "live": "lived",
        "walk": "walked",
        "swim": "swam",
        "think": "thought",
        "prefer": "preferred",
    }
    seen: dict[str, str] = {}
    for r in _records("past_tense"):
        verb = re.search(r'verb (\w+)\?$|"(\w+)"\?$', r["question"])
        verb = verb.group(1) or verb.group(2)
        if verb in known:
            assert r["answer"] == known[verb]
        assert r["answer"] != verb and re.fullmatch(r"[a-z]+", r["answer"])
        split = "test" if r["split"] == "ood" else r["split"]
        assert seen.setdefault(verb, split) == split


def test_knowledge_set_is_large_varied_and_never_answered_by_its_question():
    recs = _records("knowledge")
    assert len(recs) >= 300 and {r["split"] for r in recs} == {"test"}
    assert len({r["question"] for r in recs}) == len(recs)
    kinds = {r["kind"] for r in recs}
    assert {"capital", "element", "science", "opposite", "plural", "everyday"} <= kinds
    for r in recs:
        # a model that only repeats the question never scores
        assert not sentence_match(r["question"], r["answer"]), r
    by_q = {r["question"]: r["answer"] for r in recs}
    assert by_q["What is the capital of France?"] == "Paris"
    assert by_q["What is the chemical symbol for gold?"] == "Au"
    assert by_q["How many days are in a week?"] == "7"


def test_heldout_prompts_are_distinct_open_prompts():
    recs = _records("heldout_prompts")
    assert 100 <= len(recs) <= 200 and all(set(r) == {"question", "kind"} for r in recs)
    assert len({r["question"] for r in recs}) == len(recs)


def test_real_tasks_are_the_shipped_files_but_the_heldout_prompts():
    from routekit.errors import UnknownTaskError
    from routekit.real.tasks import real_task_names
    from routekit.tasks import get_task

    assert real_task_names() == ["add", "knowledge", "multiply", "past_tense", "successor"]
    for name in real_task_names():
        task = get_task(f"real:{name}")
        assert task.chat and "test" in task.splits
    with pytest.raises(UnknownTaskError, match="prompts without answers"):
        get_task("real:heldout_prompts")
