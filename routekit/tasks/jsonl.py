"""Tasks read from local data: a JSONL file (or a folder of them) or a `datasets` dataset.

GSM8K-style records (``question`` / ``answer`` with ``#### 42`` at the end) work as they are:
the reference keeps only the final answer and the format-tolerant checker compares it.
"""

from __future__ import annotations

import json
import os
import re
import string
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import ConfigError, RoutekitError
from .base import Example, Task
from .checkers import CHECKERS, Checker, extract_answer

DEFAULT_TEMPLATE = "Question: {question}\nAnswer:"


def _checker(name: str) -> Checker:
    """The checker named ``name``; an unknown name is a ConfigError listing the known ones."""
    if name not in CHECKERS:
        raise ConfigError(
            f"unknown checker {name!r}; known checkers: {', '.join(sorted(CHECKERS))} "
            "('exact': normalised first line equals the reference, 'answer': format-tolerant)."
        )
    return CHECKERS[name]


def template_fields(template: str) -> set[str]:
    """The record fields a prompt template reads (``{question}`` is the prompt field).

    A malformed template or a positional field (``{}``, ``{0}``) is a ConfigError.
    """
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ConfigError(f"prompt template {template!r} is malformed ({e}); write fields as {{name}}.") from None
    roots = {re.split(r"[.\[]", f, maxsplit=1)[0] for f in names}
    positional = sorted(r for r in roots if not r or r.isdigit())
    if positional:
        raise ConfigError(
            f"prompt template {template!r} has positional fields {positional}; name record "
            "fields instead, e.g. {question}."
        )
    return roots


def _examples(
    records: Iterable[Mapping[str, Any]], prompt_key: str, answer_key: str, template: str, where: str
) -> list[Example]:
    fields = template_fields(template)
    out = []
    for i, rec in enumerate(records):
        missing = [k for k in (prompt_key, answer_key) if k not in rec]
        if missing:
            raise RoutekitError(
                f"record {i} of {where} lacks {missing}; it has {sorted(rec)}. Pass "
                "prompt_key=/answer_key= naming its fields."
            )
        values = {**rec, "question": rec[prompt_key]}
        unknown = sorted(fields - set(values))
        if unknown:
            raise ConfigError(
                f"prompt template {template!r} reads {unknown}, which record {i} of {where} "
                f"lacks; it has {sorted(values)}. Use those fields in the template."
            )
        try:
            prompt = template.format(**values)
        except (KeyError, IndexError, AttributeError, TypeError, ValueError) as e:
            raise ConfigError(
                f"prompt template {template!r} cannot be filled from record {i} of {where} "
                f"({type(e).__name__}: {e}); its fields are {sorted(values)}."
            ) from None
        out.append(Example(prompt, extract_answer(str(rec[answer_key])), {"raw_answer": rec[answer_key]}))
    return out


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise RoutekitError(f"{str(path)!r} line {n} is not JSON: {e}") from e
    return records


def jsonl_task(
    path: str | os.PathLike,
    *,
    name: str | None = None,
    prompt_key: str = "question",
    answer_key: str = "answer",
    template: str = DEFAULT_TEMPLATE,
    checker: str = "answer",
    chat: bool = False,
) -> Task:
    """A task from a JSONL file (records with a ``split`` field are split by it, others are
    ``test``) or from a folder whose ``<split>.jsonl`` files are the splits. ``chat``: its
    prompts are read through the tokenizer's chat template (``routekit.tasks.chat``)."""
    check = _checker(checker)
    template_fields(template)
    p = Path(path).expanduser()
    if not p.exists():
        raise RoutekitError(f"task data {str(p)!r} does not exist; give a local .jsonl file or folder.")
    files = sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    if not files:
        raise RoutekitError(f"folder {str(p)!r} holds no *.jsonl files.")
    splits: dict[str, list[Example]] = {}
    for f in files:
        records = _read_jsonl(f)
        if p.is_dir():
            splits[f.stem] = _examples(records, prompt_key, answer_key, template, str(f))
            continue
        by_split: dict[str, list[dict[str, Any]]] = {}
        for rec in records:
            by_split.setdefault(str(rec.get("split", "test")), []).append(rec)
        for split, recs in by_split.items():
            splits[split] = _examples(recs, prompt_key, answer_key, template, str(f))
    return Task(name or p.stem, splits, check, chat=chat)


def dataset_task(
    dataset: Any,
    *,
    name: str = "dataset",
    prompt_key: str = "question",
    answer_key: str = "answer",
    template: str = DEFAULT_TEMPLATE,
    checker: str = "answer",
    chat: bool = False,
) -> Task:
    """A task from a `datasets` ``Dataset`` (one split, ``test``) or ``DatasetDict``, or from a
    folder written by ``save_to_disk`` (loaded with ``datasets.load_from_disk``, no download)."""
    import datasets

    check = _checker(checker)
    template_fields(template)
    if isinstance(dataset, (str, os.PathLike)):
        p = Path(dataset).expanduser()
        if not p.exists():
            raise RoutekitError(f"dataset folder {str(p)!r} does not exist.")
        dataset = datasets.load_from_disk(str(p))
    parts = dict(dataset) if isinstance(dataset, datasets.DatasetDict) else {"test": dataset}
    splits = {k: _examples(v, prompt_key, answer_key, template, f"{name}/{k}") for k, v in parts.items()}
    return Task(name, splits, check, chat=chat)


class TaskSpec(BaseModel):
    """A local-data task with its options: what ``task:`` takes as a mapping in recipes and
    suites, and what ``--prompt-key/--answer-key/--template/--checker/--chat`` build on the CLI.

    ``path``: ``jsonl:PATH`` (or a bare path: a JSONL file or folder) or ``hf:PATH`` (a
    ``save_to_disk`` folder). The other fields are :func:`jsonl_task`'s options.
    """

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="jsonl:PATH, a bare JSONL path, or hf:PATH")
    name: str | None = Field(None, description="task name (default: the file's stem)")
    prompt_key: str = Field("question", description="record field holding the prompt")
    answer_key: str = Field("answer", description="record field holding the reference")
    template: str = Field(DEFAULT_TEMPLATE, description="prompt template; {question} is the prompt field")
    checker: str = Field("answer", description="checker name (routekit.tasks.checkers.CHECKERS)")
    chat: bool = Field(False, description="read prompts through the tokenizer's chat template")

    @field_validator("checker")
    @classmethod
    def _known_checker(cls, v: str) -> str:
        if v not in CHECKERS:
            raise ValueError(f"unknown checker {v!r}; known checkers: {', '.join(sorted(CHECKERS))}")
        return v

    @field_validator("template")
    @classmethod
    def _valid_template(cls, v: str) -> str:
        template_fields(v)
        return v

    def load(self) -> Task:
        """The Task this spec names."""
        opts = self.model_dump(exclude={"path", "name"})
        if self.path.startswith("hf:"):
            path = self.path.removeprefix("hf:")
            name = self.name or path.rstrip("/").rsplit("/", 1)[-1]
            return dataset_task(path, name=name, **opts)
        return jsonl_task(self.path.removeprefix("jsonl:"), name=self.name, **opts)
