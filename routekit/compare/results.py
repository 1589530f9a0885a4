"""The harness's records: one ``cell.json`` per cell, ``run.json`` per run directory and
``results.json`` for the whole run, as pydantic models validated on write and on read.

Per-prompt outcomes (1/0 per test prompt, each probe answer's log-likelihood ...) are kept
beside the means, so a figure can be bootstrapped over prompts and seeds from results.json
alone. ``docs/compare.md`` describes every field.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError
from ..io import atomic_write_bytes, read_config

RESULTS_SCHEMA = 1

# Modules that only present finished cells (verdicts, tables, plots, the command line): a
# change to them changes no cell, so it does not make finished cells stale.
_PRESENTATION = frozenset({
    "compare/report.py", "compare/plots.py", "compare/claims.py", "compare/stats.py",
    "compare/commands.py", "cli.py", "analysis/diff_report.py", "analysis/commands.py",
    "reporting.py",
    # runs no cell: which worlds run which rates, and the verdicts across them
    "compare/worlds.py",
})


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of the source of every routekit module that can change what a cell computes
    (training, models, experts, tasks, metrics, the world ...; not the presentation modules).

    Cells are keyed on it, not on the version string: after any such change, finished cells
    are stale and a run directory holding them is refused (or redone with ``--force``).
    """
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel not in _PRESENTATION:
            h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")


class CellKey(_Strict):
    """What identifies a cell: method × task × learning rate × seed (lr 0 for the base)."""

    method: str
    task: str
    lr: float
    seed: int

    @property
    def cell_id(self) -> str:
        return f"{self.method}__{self.task.replace(':', '-').replace('/', '-')}__lr{self.lr:g}__s{self.seed}"


class Scores(_Strict):
    """What one model (a trained cell, or the base steered at one α) scores."""

    alpha: float | None = Field(None, description="proxy methods: the steering weight α")
    test_accuracy: float
    val_accuracy: float | None = Field(
        None, description="accuracy on the task's val split (None: it has none); what "
        "chooses rates and α (routekit.compare.selection)")
    ood_accuracy: float | None = None
    probe_accuracy: float | None = Field(None, description="held-out knowledge probes (facts test)")
    statement_accuracy: float | None = None
    probe_loglik: float | None = Field(None, description="mean log p(answer | probe) in nats")
    heldout_ce: float | None = Field(None, description="cross-entropy on held-out world text")
    forgetting: float | None = Field(None, description="heldout_ce minus the base's (PEFT's sense)")
    kl_text: float | None = Field(None, description="KL(base||tuned) per token, held-out text")
    kl_prompts: float | None = Field(None, description="KL(base||tuned) per token, task prompts")
    behaviour: dict[str, float] | None = Field(None, description="final shares on test prompts")
    per_prompt: dict[str, list[float]] = Field(
        default_factory=dict,
        description="per prompt: test, val, ood, probes (1/0 correct), systematic (1/0: the test "
        "answer is the skill's systematic wrong one), probe_loglik (nats per answer), and for "
        "cells with activations act_top_k_energy_<split>, act_l1_normalised_<split> (split "
        "test or ood; the last token's value averaged over layers)",
    )


class StructureSummary(_Strict):
    """The weight update's structure (routekit.analysis.diff_checkpoints), condensed; the
    full diff is the cell's update_stats.json."""

    against: str = Field(description="'base' or 'base cast to bfloat16'")
    share_bitwise_unchanged: float
    atols: list[float]
    share_unchanged_atol: list[float]
    mean_rank_fraction: float | None
    rel_frob_norm: float | None
    density_by_layer: dict[str, float]
    density_by_matrix_type: dict[str, float]
    rank_fraction_by_matrix_type: dict[str, float | None]


class CellRecord(_Strict):
    """Everything one cell measured (written last, as ``cells/<id>/cell.json``)."""

    schema_version: int = RESULTS_SCHEMA
    key: CellKey
    cell_id: str
    settings_hash: str
    code_version: str = Field(
        "", description="routekit.compare.results.code_version() of the code that computed it"
    )
    train_config: dict[str, Any] | None
    variants: list[Scores] = Field(description="one per α for proxy methods, else one")
    proxy_own: dict[str, float] | None = Field(
        None, description="proxy methods: the tuned proxy's own test/ood accuracy"
    )
    behaviour_history: list[dict[str, float]] = Field(
        default_factory=list, description="{step, correct, systematic, other} over training"
    )
    activations: dict[str, list[dict[str, float]]] | None = Field(
        None, description="per split (test, ood): per layer top_k_energy, l1_normalised, "
        "effective_rank_over_d"
    )
    structure: StructureSummary | None = None
    mask_density: float | None = Field(None, description="subnet_rl: share of entries trained")
    trainable_parameters: int = 0
    total_parameters: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    peak_rss_mb: float = Field(description="ru_maxrss of the process that ran the cell")
    device: str = Field("", description="where the cell's models lived ('' before it was kept)")
    history: list[dict[str, float]] = Field(default_factory=list, description="per step log")
    artifacts: dict[str, str] = Field(default_factory=dict, description="relative paths")
    notes: list[str] = Field(default_factory=list)

    def best(self) -> Scores:
        """The variant that counts for the cell (proxy: the best α on val, ties to the smaller
        α; without val figures the best on test, ties to the higher probe log-likelihood;
        routekit.compare.selection)."""
        return choose_variant(self.variants)


def rank_key(s: Scores) -> tuple[float, float]:
    """The test fallback's rank (:func:`test_key`): test accuracy, then probe answer
    log-likelihood."""
    return test_key(s)


# The choice rules on one cell's figures; routekit.compare.selection applies them to a sweep
# (they live here, below it, because CellRecord.best() uses them).
def on_val(variants: Sequence[Scores]) -> bool:
    """Whether every candidate has a val figure (then the choice is made on val)."""
    return bool(variants) and all(v.val_accuracy is not None for v in variants)


def test_key(s: Scores) -> tuple[float, float]:
    """The test fallback's rank: test accuracy, then probe answer log-likelihood."""
    return (s.test_accuracy, s.probe_loglik if s.probe_loglik is not None else float("-inf"))


def choose_variant(variants: Sequence[Scores]) -> Scores:
    """The variant that counts for a cell: the best α on val (ties to the smaller α), or
    without val figures the best on test (ties to the higher probe log-likelihood)."""
    if on_val(variants):
        return max(variants, key=lambda v: (v.val_accuracy,
                                            -(v.alpha if v.alpha is not None else 0.0)))
    return max(variants, key=test_key)


class Candidate(_Strict):
    """One (rate, α) a choice was made among, with its first-seed figures."""

    lr: float
    alpha: float | None = None
    val_accuracy: float | None
    test_accuracy: float
    chosen: bool


class Selection(_Strict):
    """How one (method, task)'s rate and α were chosen (routekit.compare.selection)."""

    method: str
    task: str
    split: Literal["val", "test"] = Field(description="the split whose accuracy chose")
    optimistic: bool = Field(
        description="chosen on test among two or more candidates: the chosen test figure is a "
        "maximum over the sweep on the prompts it is judged on")
    lr: float
    alpha: float | None = None
    val_accuracy: float | None = Field(description="the chosen candidate's val accuracy")
    test_accuracy: float = Field(description="the chosen candidate's test accuracy")
    candidates: list[Candidate]


class WorldStamp(_Strict):
    """Which environment's weights a run used (the config hash alone does not say): a world's
    config hash, or for a local environment a hash of its model block and data files; the
    base's, the proxy's ('' when there is none) and the tokenizer's fingerprints."""

    config_hash: str
    base_fingerprint: str
    proxy_fingerprint: str
    tokenizer_fingerprint: str


class RunManifest(_Strict):
    """``run.json``: what a run directory's cells were computed with; another suite's
    settings, another world or another routekit version is refused."""

    suite: str
    settings_hash: str
    world: WorldStamp
    routekit_version: str
    code_version: str = Field(
        "", description="code_version() of the code that computes the cells ('' before it was kept)"
    )


class Overlap(_Strict):
    """Overlap of two seeds' updated sets (bitwise), beside random masks' expectation."""

    method: str
    task: str
    lr: float
    seeds: list[int]
    o1: float | None
    o2: float | None
    jaccard: float | None
    expected_jaccard: float | None
    expected_o1: float | None


class Results(_Strict):
    """``results.json``: the run's suite, environment and every cell's record."""

    schema_version: int = RESULTS_SCHEMA
    suite: dict[str, Any]
    manifest: RunManifest
    environment: dict[str, Any] = Field(
        default_factory=dict, description="the environment (routekit.compare.env): kind, "
        "sources, data file hashes, which tasks' ood prompts pair with test prompts, whether "
        "it has a proxy pair and behaviour labels ({} in runs made before it was kept: the world)",
    )
    world_metrics: dict[str, Any] = Field(default_factory=dict)
    packages: dict[str, str]
    cells: list[CellRecord]
    overlaps: list[Overlap] = Field(default_factory=list)
    selection: list[Selection] = Field(
        default_factory=list, description="per (method, task): which split chose its rate "
        "and α, and every candidate's val and test accuracy ([] in runs made before it was kept)")


def write_model(path: str | os.PathLike, obj: BaseModel) -> Path:
    """Validate ``obj`` again (a record built field by field may hold anything) and write it
    atomically as JSON."""
    type(obj).model_validate(obj.model_dump())
    return atomic_write_bytes(path, (obj.model_dump_json(indent=1) + "\n").encode())


def read_model(path: str | os.PathLike, cls: type[BaseModel], what: str) -> Any:
    """Read and validate a JSON record; an unreadable file is an ExpertFileError, one that
    does not match the schema a ConfigError, each saying what to do."""
    return read_config(
        path, cls, what, error=ConfigError,
        advice="it was written by another routekit version or edited. Rerun the cell (delete "
        "its directory) or start the run afresh.")


def package_versions() -> dict[str, str]:
    """Versions of the packages a result depends on."""
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for name in ("routekit", "torch", "transformers", "peft", "accelerate", "numpy", "pydantic"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


__all__ = [
    "Candidate", "CellKey", "CellRecord", "Overlap", "RESULTS_SCHEMA", "Results", "code_version",
    "RunManifest", "Scores", "StructureSummary", "WorldStamp", "package_versions", "rank_key",
    "read_model", "Selection", "write_model",
]
