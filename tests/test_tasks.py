"""Checkers, the Task protocol, and tasks read from JSONL files and `datasets` datasets."""

import json

import datasets
import pytest

from routekit.errors import RoutekitError, UnknownTaskError
from routekit.tasks import (
    Example,
    Task,
    answer_match,
    dataset_task,
    exact_match,
    extract_answer,
    get_task,
    jsonl_task,
)


@pytest.mark.parametrize(
    "completion, reference, expected",
    [
        (" 55", "55", True),
        (" = 55\nrev x", "55", True),
        ("the answer is 55.", "55", True),
        ("so it is 1,000", "1000", True),
        (" 56", "55", False),
        (" 5", "55", False),
        ("", "55", False),
        (" quenzy", "quenzy", True),
        (" Quenzy.", "quenzy", True),
        ("A: quenzy", "quenzy", True),
        (" ruto", "quenzy", False),
        (" island", "island", True),
        ("reasoning...\n#### 42", "42", True),
    ],
)
def test_answer_match_tolerates_formats(completion, reference, expected):
    assert answer_match(completion, reference) is expected


def test_exact_match_is_strict_about_content_but_not_case_or_space():
    assert exact_match("  Hello  World ", "hello world")
    assert not exact_match("hello world!!", "hello")
    assert extract_answer("=> 12") == "12"


def test_task_reward_is_the_checker():
    t = Task("t", {"train": [Example("1+1=", "2")]}, answer_match)
    assert t.reward([" 2", " 3"], ["2", "2"]) == [1.0, 0.0]
    with pytest.raises(RoutekitError, match="no split 'dev'"):
        t.examples("dev")


def test_world_tasks_have_disjoint_test_and_train():
    for name in ("add", "rev", "hop"):
        t = get_task(name)
        train = {e.prompt for e in t.examples("train")}
        test = {e.prompt for e in t.examples("test")}
        assert train and test and not train & test, name
        assert set(t.splits) == {"train", "test", "ood"}
    add = get_task("add")
    for e in add.examples("test"):
        assert int(e.reference) == e.meta["a"] + e.meta["b"]
    rev = get_task("rev")
    assert all(e.reference == e.meta["word"][::-1] for e in rev.examples("ood"))


def test_continuation_joins_the_reference_as_text_does():
    assert Example("sum of 3 and 4 is", "7").continuation == " 7"
    assert Example("Answer:\n", "7").continuation == "7"  # prompt ends in whitespace
    assert Example("x =", " 7").continuation == " 7"  # reference brings its own space
    assert Example("", "7").continuation == "7"
    assert Example("3+4=", "7", target="7").continuation == "7"  # an explicit target wins


def test_world_task_examples_read_like_the_corpus():
    """SFT trains on prompt + continuation: for world tasks that must be a line the world's
    corpus actually holds (same spacing), or the tuned model learns a format no text has."""
    from routekit.world import get_world

    lines = set(get_world().corpus_lines)
    for name, split in (("add", "train"), ("rev", "train"), ("hop", "train"), ("facts", "train")):
        examples = get_task(name).examples(split)
        found = sum(e.prompt + e.continuation in lines for e in examples)
        # mixed formats show some wrong answers, so not every train item is in the corpus
        # with its right answer; but most are, and none would be without the space.
        assert found >= 0.5 * len(examples), (name, found, len(examples))
        assert not any(e.prompt + e.reference in lines for e in examples), name


def test_unknown_task_lists_known_ones():
    with pytest.raises(UnknownTaskError) as info:
        get_task("arith")
    msg = str(info.value)
    assert "'arith'" in msg and "add" in msg and "rev" in msg and "jsonl:PATH" in msg


def test_jsonl_task_gsm8k_style(tmp_path):
    path = tmp_path / "gsm.jsonl"
    recs = [
        {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=7\n#### 7"},
        {"question": "What is 10-4?", "answer": "#### 6", "split": "train"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    task = get_task(f"jsonl:{path}")
    assert task.splits == ("test", "train")
    (ex,) = task.examples("test")
    assert ex.reference == "7" and ex.prompt.startswith("Question: Tom has")
    assert task.check("They have 7 apples.\n", ex.reference)
    assert not task.check("8", ex.reference)


def test_jsonl_folder_splits_and_bad_records(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"q": "a", "a": "1"}) + "\n")
    (tmp_path / "test.jsonl").write_text(json.dumps({"q": "b", "a": "2"}) + "\n")
    task = jsonl_task(tmp_path, prompt_key="q", answer_key="a", template="{question} =")
    assert task.references("train") == ["1"] and task.prompts("test") == ["b ="]
    with pytest.raises(RoutekitError, match=r"lacks \['question', 'answer'\]"):
        jsonl_task(tmp_path / "train.jsonl")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(RoutekitError, match="line 1 is not JSON"):
        jsonl_task(tmp_path / "bad.jsonl")
    with pytest.raises(RoutekitError, match="does not exist"):
        jsonl_task(tmp_path / "missing.jsonl")


def test_dataset_task_from_memory_and_disk(tmp_path):
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"question": "x", "answer": "#### 1"}]),
        "test": datasets.Dataset.from_list([{"question": "y", "answer": "#### 2"}]),
    })
    t1 = dataset_task(dd, name="toy")
    dd.save_to_disk(str(tmp_path / "toy"))
    t2 = get_task(f"hf:{tmp_path / 'toy'}")
    for t in (t1, t2):
        assert t.references("train") == ["1"] and t.references("test") == ["2"]


def test_unknown_checker_and_template_fields_are_refused_by_name(tmp_path):
    from routekit.errors import ConfigError

    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"question": "x", "answer": "1", "topic": "math"}) + "\n")
    with pytest.raises(ConfigError, match=r"unknown checker 'fuzzy'; known checkers: answer, exact"):
        jsonl_task(path, checker="fuzzy")
    with pytest.raises(ConfigError, match=r"reads \['context'\].*it has \['answer', 'question', 'topic'\]"):
        jsonl_task(path, template="{context}\n{question} =")
    with pytest.raises(ConfigError, match=r"positional fields \[''\]"):
        jsonl_task(path, template="{} =")
    with pytest.raises(ConfigError, match="is malformed"):
        jsonl_task(path, template="{question =")
    with pytest.raises(ConfigError, match=r"cannot be filled from record 0.*AttributeError"):
        jsonl_task(path, template="{question.upper_case}")
    # a field the record does have is read, including the prompt field under its own name
    task = jsonl_task(path, template="[{topic}] {question} =")
    assert task.prompts("test") == ["[math] x ="]
    ds = datasets.Dataset.from_list([{"question": "y", "answer": "2"}])
    with pytest.raises(ConfigError, match=r"unknown checker 'fuzzy'"):
        dataset_task(ds, checker="fuzzy")
    with pytest.raises(ConfigError, match=r"reads \['context'\]"):
        dataset_task(ds, template="{context}")


# ------------------------------------------------------- the registry below the world
def test_bare_names_registered_by_a_provider_resolve_list_and_refuse_clashes(monkeypatch):
    from routekit.errors import ConfigError
    from routekit.tasks import register_named_tasks, registry

    monkeypatch.setattr(registry, "_NAMED", dict(registry._NAMED))  # undone after the test
    toy = Task("toy", {"test": [Example("1+1=", "2")]}, exact_match)
    seen: list = []

    def loader(name, world_config):
        seen.append((name, world_config))
        return toy

    register_named_tasks(["toy"], loader)
    marker = object()
    assert get_task("toy", marker) is toy and seen == [("toy", marker)]
    assert get_task("toy", chat=True).chat is True and toy.chat is False  # a copy
    assert "toy" in registry.known_tasks()
    with pytest.raises(UnknownTaskError, match=r"Known tasks: add, rev, hop, facts, .*toy"):
        get_task("toys")
    with pytest.raises(ConfigError, match="'rev' is already registered by another provider"):
        register_named_tasks(["rev"], loader)
    with pytest.raises(ConfigError, match="holds ':'"):
        register_named_tasks(["my:toy"], loader)
    assert get_task("rev").examples("test") == get_task("rev", None).examples("test")


def test_world_tasks_come_from_the_world_through_the_registry():
    from routekit.errors import ConfigError
    from routekit.world import WorldConfig
    from routekit.world.tasks import world_task

    tiny = WorldConfig.tiny()
    got = get_task("hop", tiny)
    assert got.world == tiny and got.examples("train") == world_task("hop", tiny).examples("train")
    assert get_task("facts").world == WorldConfig()  # no world named: the default one
    with pytest.raises(ConfigError, match="takes a routekit.world.WorldConfig, not a str"):
        get_task("rev", "tiny")


def test_world_task_names_resolve_in_a_fresh_interpreter(tmp_path):
    """Importing routekit.tasks alone (as a user does) registers the world's names: the
    package's __init__ imports the world before any get_task call."""
    import os
    import subprocess
    import sys

    from routekit.world.tasks import world_task

    code = ("from routekit.tasks import get_task, known_tasks; t = get_task('rev'); "
            "print(repr(t), known_tasks()[:4], t.examples('test')[0].prompt)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    rev = world_task("rev")
    assert out.stdout.strip() == (
        f"{rev!r} ['add', 'rev', 'hop', 'facts'] {rev.examples('test')[0].prompt}"
    )


def test_world_names_on_routekit_tasks_are_deprecated_but_work():
    import routekit.tasks as tasks
    import routekit.world as world
    from routekit.world import tasks as world_tasks

    with pytest.warns(DeprecationWarning, match=r"routekit\.world\.tasks\.world_task"):
        assert tasks.world_task is world_tasks.world_task is world.world_task
    with pytest.warns(DeprecationWarning, match=r"routekit\.world\.tasks\.WORLD_TASKS"):
        from routekit.tasks import WORLD_TASKS
    assert WORLD_TASKS == ("add", "rev", "hop", "facts") == world.WORLD_TASKS
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        tasks.nothing  # noqa: B018


def test_format_validation_error_names_each_key_once():
    from pydantic import BaseModel, ConfigDict, ValidationError

    from routekit.errors import format_validation_error
    from routekit.training import config as training_config

    class Toy(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n: int
        mask: float | str = 1.0
        lr: float = 1.0

    with pytest.raises(ValidationError) as info:
        Toy.model_validate({"lr": "fast", "extra": 1, "mask": None})
    assert format_validation_error(info.value) == (
        "unknown key 'extra'; remove it or check its spelling; "
        "key 'n': this key is required; "
        "key 'mask': Input should be a valid number or Input should be a valid string (got None); "
        "key 'lr': Input should be a valid number, unable to parse string as a number (got 'fast')"
    )
    # the training config keeps using the one formatter (re-imported, not copied)
    assert training_config.format_validation_error is format_validation_error
