"""A local model with the user's own data as an :class:`~routekit.compare.env.Environment`:
a suite's ``model:`` block.

.. code-block:: yaml

    model:
      path: /models/my-llama          # a save_pretrained directory, smollm2, or a .gguf file
      dtype: bfloat16                 # optional: float32 / bfloat16 / float16
      device: cpu                     # optional: where the cells' models live (the suite's device: wins)
      proxy: /models/my-llama-small   # optional: a small model sharing the vocabulary
      tasks:                          # tasks the suite's `tasks:` may name (beside real:<name>)
        sums: {path: data/sums.jsonl, checker: number, chat: true, paired_ood: true}
      probes: {path: data/facts.jsonl, checker: sentence, chat: true}
      heldout_text: text:data/heldout.txt            # or text:FILE.jsonl#FIELD, or a task name
      retain_text: text:data/retain.txt               # what full_sft / proxy_sft's KL keeps

A task is a :class:`~routekit.tasks.jsonl.TaskSpec` (its records' ``split`` field gives train /
val / test / ood) plus ``paired_ood``: ood record i asks about test record i's item, so claim
(d) pairs them prompt by prompt (their counts must agree). ``probes`` is a task whose ``test``
split holds the knowledge questions (a ``statements`` split is optional). Held-out text (for
forgetting and the KL on text) is a file's lines, a ``.jsonl`` file's ``text`` field (or the
field after ``#``), or a task's test examples (prompt + answer). Relative paths are read from
``root`` (by default the suite file's directory). There are no behaviour labels: claim (e) is
not applicable; proxy methods need ``proxy``.

The stamp's config hash covers the model block and the content of every file it names (the
tasks' examples, the probes, the texts), so a run directory refuses cells of other data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ...errors import ConfigError, UnknownTaskError
from ...tasks.base import Example, Task
from ...tasks.jsonl import TaskSpec
from ..results import WorldStamp


class LocalTask(TaskSpec):
    """A JSONL task of a local environment: a TaskSpec and whether its ood split pairs."""

    paired_ood: bool = Field(
        False, description="ood record i asks about test record i's item (claim (d) pairs them)"
    )

    def spec(self, root: Path) -> TaskSpec:
        """The TaskSpec, its path read from ``root`` when relative."""
        data = self.model_dump(exclude={"paired_ood"})
        data["path"] = _resolve_data_path(data["path"], root)
        return TaskSpec(**data)


class ModelBlock(BaseModel):
    """A suite's ``model:`` block: a local base, its optional proxy and the user's data."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="a save_pretrained directory, 'smollm2' or a .gguf file")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="the base's (and proxy's) dtype (default: as stored)"
    )
    device: str | None = Field(
        None, description="where models are placed when the suite names no device and no "
        "--device is given (default: auto, routekit.compare.devices)"
    )
    proxy: str | None = Field(
        None, description="a small model sharing the base's vocabulary, tuned by proxy methods"
    )
    tasks: dict[str, LocalTask] = Field(
        default_factory=dict, description="tasks by name (beside routekit's own, e.g. real:add)"
    )
    probes: LocalTask | str | None = Field(
        None, description="knowledge probes: a task (its test split; statements optional)"
    )
    heldout_text: str | None = Field(
        None, description="text:PATH, text:FILE.jsonl#FIELD or a task name (its test examples)"
    )
    retain_text: str | None = Field(
        None, description="text:PATH or a task name (its train examples): retention KL text"
    )
    root: str | None = Field(
        None, description="where relative paths are read from (default: the suite's directory)"
    )

    @field_validator("path", "proxy")
    @classmethod
    def _not_the_world(cls, v: str | None) -> str | None:
        if v in ("world", "world-proxy"):
            raise ValueError(
                f"{v!r} is the embedded world's model; name the world with the suite's "
                "`world:` key instead of a model block"
            )
        return v

    @field_validator("tasks")
    @classmethod
    def _no_world_names(cls, v: dict[str, LocalTask]) -> dict[str, LocalTask]:
        from ...world.tasks import WORLD_TASKS

        clash = sorted(set(v) & set(WORLD_TASKS))
        if clash:
            raise ValueError(f"task names {clash} are the world's; name local tasks otherwise")
        return v

    def root_dir(self) -> Path:
        return Path(self.root).expanduser() if self.root else Path.cwd()

    def check_task(self, name: str) -> None:
        """Refuse a task this block cannot give (a world task, or one nobody knows)."""
        from ...tasks.registry import known_tasks
        from ...world.tasks import WORLD_TASKS

        if name in self.tasks or name.startswith(("jsonl:", "hf:")):
            return
        if name in WORLD_TASKS:
            raise UnknownTaskError(
                f"task {name!r} is the world's, and this suite runs on the model block's model "
                f"{self.path!r}; name a task of model.tasks ({', '.join(self.tasks) or 'none'}) "
                "or real:<name>."
            )
        named = [t for t in known_tasks() if t not in WORLD_TASKS]
        if name in named:
            return
        raise UnknownTaskError(
            f"unknown task {name!r}; model.tasks has {', '.join(self.tasks) or 'none'}, "
            f"routekit knows {', '.join(named)}."
        )


def _resolve_data_path(spec: str, root: Path) -> str:
    """``jsonl:``/``hf:``/bare paths with a relative part read from ``root``."""
    prefix = next((p for p in ("jsonl:", "hf:") if spec.startswith(p)), "")
    path = Path(spec.removeprefix(prefix)).expanduser()
    return prefix + str(path if path.is_absolute() else root / path)


def _texts_hash(texts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest()[:16]


def task_hash(task: Task) -> str:
    """A hash of a task's examples (every split's prompts and references)."""
    rows = {s: [(e.prompt, e.reference) for e in task.examples(s)] for s in sorted(task.splits)}
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


@dataclass
class LocalEnvironment:
    """A local base (and optional proxy) with the data of a model block."""

    block: ModelBlock
    stamp: WorldStamp
    data_hashes: dict[str, str]
    metrics: dict = field(default_factory=dict)
    kind: str = "local"

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_block(cls, block: ModelBlock | dict[str, Any]) -> LocalEnvironment:
        """Load the block's models once for their fingerprints (and the proxy's vocabulary
        check) and hash its data; every refusal names the block key at fault."""
        from ...io import model_fingerprint, tokenizer_fingerprint

        if not isinstance(block, ModelBlock):
            from ...training.config import validate_mapping

            block = validate_mapping(ModelBlock, block, "model block")
        env = cls(
            block,
            WorldStamp(
                config_hash="", base_fingerprint="", proxy_fingerprint="", tokenizer_fingerprint=""
            ),
            {},
        )
        base, tok = env.load_base()
        proxy_fp = ""
        if block.proxy is not None:
            proxy, ptok = env.load_proxy()
            if ptok.get_vocab() != tok.get_vocab():
                raise ConfigError(
                    f"model.proxy {block.proxy!r} does not share the base's vocabulary "
                    f"({len(ptok.get_vocab())} vs {len(tok.get_vocab())} tokens, or other ids); "
                    "proxy-tuning adds log-probabilities token by token, so both must use one "
                    "tokenizer."
                )
            proxy_fp = model_fingerprint(proxy)
        hashes = {f"task:{name}": task_hash(env.task(name)) for name in block.tasks}
        if block.probes is not None:
            hashes["probes"] = task_hash(env.probes())
        for key in ("heldout_text", "retain_text"):
            spec = getattr(block, key)
            if spec is not None:
                hashes[key] = _texts_hash(
                    env._texts(spec, "test" if key == "heldout_text" else "train", key)
                )
        described = block.model_dump(mode="json", exclude={"root", "device"})
        digest = hashlib.sha256(json.dumps([described, hashes], sort_keys=True).encode())
        env.stamp = WorldStamp(
            config_hash=digest.hexdigest()[:16],
            base_fingerprint=model_fingerprint(base),
            proxy_fingerprint=proxy_fp,
            tokenizer_fingerprint=tokenizer_fingerprint(tok),
        )
        env.data_hashes = hashes
        return env

    def _load(self, spec: str):
        from ...models import load_model

        path = Path(spec).expanduser()
        if not path.is_absolute() and (self.block.root_dir() / path).exists():
            spec = str(self.block.root_dir() / path)
        return load_model(spec, dtype=self.block.dtype, device=self.block.device)

    # ---------------------------------------------------------------- the protocol
    @property
    def has_proxy(self) -> bool:
        return self.block.proxy is not None

    def load_base(self):
        return self._load(self.block.path)

    def load_proxy(self):
        if self.block.proxy is None:
            raise ConfigError(
                f"proxy methods need a proxy pair; the model block of {self.block.path!r} has "
                "no model.proxy (a small model sharing the base's vocabulary)."
            )
        return self._load(self.block.proxy)

    def check_task(self, name: str) -> None:
        self.block.check_task(name)

    def task(self, name: str) -> Task:
        from ...tasks.registry import get_task

        self.check_task(name)
        if name in self.block.tasks:
            entry = self.block.tasks[name]
            task = (
                entry.spec(self.block.root_dir())
                .model_copy(update={"name": entry.name or name})
                .load()
            )
            if entry.paired_ood:
                _check_pairing(task, f"model.tasks.{name}")
            return task
        return get_task(name)

    def paired_ood(self, name: str) -> bool:
        entry = self.block.tasks.get(name)
        return bool(entry and entry.paired_ood)

    @cached_property
    def _probes(self) -> Task | None:
        p = self.block.probes
        if p is None:
            return None
        task = self.task(p) if isinstance(p, str) else p.spec(self.block.root_dir()).load()
        if "test" not in task.splits:
            raise ConfigError(
                f"model.probes: the probe task has splits {sorted(task.splits)}; its probes "
                "are its 'test' split (records without a split field are test)."
            )
        return task

    def probes(self) -> Task | None:
        return self._probes

    def _texts(self, spec: str, split: str, key: str) -> list[str]:
        if spec.startswith("text:"):
            rest, _, fld = spec.removeprefix("text:").partition("#")
            path = Path(rest).expanduser()
            path = path if path.is_absolute() else self.block.root_dir() / path
            if not path.is_file():
                raise ConfigError(f"model.{key}: file {str(path)!r} does not exist.")
            lines = [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
            if path.suffix == ".jsonl" or fld:
                try:
                    lines = [str(json.loads(x)[fld or "text"]) for x in lines]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ConfigError(
                        f"model.{key}: {str(path)!r} is not JSONL records with a "
                        f"{fld or 'text'!r} field."
                    ) from None
            texts = lines
        else:
            texts = [e.prompt + e.continuation for e in self.task(spec).examples(split)]
        if not texts:
            raise ConfigError(f"model.{key} {spec!r} holds no text.")
        return texts

    def heldout_text(self, n: int, task: Task) -> list[str]:
        if self.block.heldout_text is None:
            raise ConfigError(
                "forgetting and the KL on text need held-out text; add heldout_text to the "
                "suite's model block (text:PATH or a task name)."
            )
        return self._texts(self.block.heldout_text, "test", "heldout_text")[:n]

    def retain_text(self) -> str | None:
        spec = self.block.retain_text
        if spec is None or not spec.startswith("text:"):
            return spec
        path = Path(spec.removeprefix("text:")).expanduser()
        return "text:" + str(path if path.is_absolute() else self.block.root_dir() / path)

    def train_fields(self, steered: bool) -> dict[str, Any]:
        return {"world": None, "model": self.block.proxy if steered else self.block.path}

    def has_behaviour(self, task: Task) -> bool:
        return False

    def behaviour_labels(
        self, task: Task, examples: Sequence[Example], completions: Sequence[str]
    ) -> list[str]:
        raise ConfigError(
            "a local environment has no behaviour labels (correct / systematic / other)."
        )

    def describe(self, tasks: Sequence[str]) -> dict[str, Any]:
        hashes = dict(self.data_hashes)
        for t in tasks:
            hashes.setdefault(f"task:{t}", task_hash(self.task(t)))
        return {
            "kind": "local",
            "model": self.block.path,
            "proxy": self.has_proxy,
            "dtype": self.block.dtype,
            "device": self.block.device,
            "ood": [t for t in tasks if "ood" in self.task(t).splits],
            "paired_ood": [t for t in tasks if self.paired_ood(t)],
            "behaviour": False,
            "probes": self.block.probes is not None,
            "data_hashes": hashes,
            "config_hash": self.stamp.config_hash,
        }


def _check_pairing(task: Task, where: str) -> None:
    n_test, n_ood = (len(task.examples(s)) if s in task.splits else 0 for s in ("test", "ood"))
    if n_ood == 0 or n_test != n_ood:
        raise ConfigError(
            f"{where}: paired_ood says ood record i asks about test record i's item, but the "
            f"task has {n_test} test and {n_ood} ood records; give as many of each, in the same "
            "order, or set paired_ood: false."
        )


__all__ = ["LocalEnvironment", "LocalTask", "ModelBlock", "task_hash"]
