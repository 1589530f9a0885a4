"""Choosing a sweep's rate and a proxy cell's α apart from the verdicts' test prompts
(routekit.compare.selection): on val where a task has a val split, else on test labelled
"chosen on test (optimistic)", or refused with ``select_on: val``; and the world's opt-in val
split (``WorldConfig.n_val``), held out of the corpus like test."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from routekit.compare.cells import best_lrs, second_phase
from routekit.compare.claims import View
from routekit.compare.report import headline, render
from routekit.compare.results import (
    _PRESENTATION,
    CellKey,
    CellRecord,
    Results,
    RunManifest,
    Scores,
    WorldStamp,
)
from routekit.compare.runner import run_suite
from routekit.compare.selection import OPTIMISTIC, check_selection, selections
from routekit.compare.suite import suite_from_dict
from routekit.errors import ConfigError
from routekit.tasks.base import Example, Task
from routekit.world.config import WorldConfig
from routekit.world.corpus import World
from routekit.world.tasks import world_task
from tests.test_compare_harness import tiny_suite

torch.set_num_threads(1)


def _suite(**over) -> dict:
    data = dict(name="sel", world="tiny", tasks=["hop"], seeds=[0, 1],
                methods=["base", "full_sft", "proxy_sft"],
                lrs={"full_sft": [1e-4, 1e-3, 3e-3], "proxy_sft": [1e-4, 1e-3]},
                proxy_alphas=[0.5, 1.0])
    data.update(over)
    return data


def _rec(method: str, lr: float, variants: list[Scores], seed: int = 0) -> CellRecord:
    key = CellKey(method=method, task="hop", lr=lr, seed=seed)
    return CellRecord(key=key, cell_id=key.cell_id, settings_hash="x", train_config=None,
                      variants=variants, peak_rss_mb=1.0)


def _planted(with_val: bool = True) -> tuple[dict, dict[str, CellRecord]]:
    """full_sft: 3e-3 is best on test (0.9) but worst on val; 1e-3 is best on val (0.7).
    proxy_sft: at lr 1e-4, α 1.0 is best on test, α 0.5 on val; lr 1e-3 ties lr 1e-4 on val."""
    def s(test, val, alpha=None, ll=-1.0):
        return Scores(test_accuracy=test, val_accuracy=val if with_val else None, alpha=alpha,
                      probe_loglik=ll)

    recs = [
        _rec("base", 0.0, [s(0.2, 0.2)]),
        _rec("full_sft", 1e-4, [s(0.5, 0.5)]),
        _rec("full_sft", 1e-3, [s(0.6, 0.7)]),
        _rec("full_sft", 3e-3, [s(0.9, 0.3)]),
        _rec("proxy_sft", 1e-4, [s(0.4, 0.8, 0.5), s(0.8, 0.6, 1.0)]),
        _rec("proxy_sft", 1e-3, [s(0.3, 0.8, 0.5, ll=0.0), s(0.3, 0.8, 1.0, ll=0.0)]),
    ]
    return _suite(), {r.cell_id: r for r in recs}


def _results(suite: dict, records: dict[str, CellRecord]) -> Results:
    stamp = WorldStamp(config_hash="c", base_fingerprint="b", proxy_fingerprint="p",
                       tokenizer_fingerprint="t")
    s = suite_from_dict(suite)
    return Results(suite=s.model_dump(mode="json"),
                   manifest=RunManifest(suite="sel", settings_hash="h", world=stamp,
                                        routekit_version="0"),
                   packages={}, cells=list(records.values()),
                   selection=selections(s, records))


def test_a_rate_is_chosen_on_val_where_test_would_choose_another():
    suite, records = _planted()
    s = suite_from_dict(suite)
    # test would pick full_sft 3e-3 (0.9); val picks 1e-3 (0.7 against 0.3)
    assert best_lrs(s, records)[("full_sft", "hop")] == 1e-3
    # α on val: 0.5 (val 0.8) though α 1.0 has the better test accuracy (0.8)
    assert records["proxy_sft__hop__lr0.0001__s0"].best().alpha == 0.5
    # lr 1e-3 ties 1e-4 on val (0.8) and beats it on probe log-likelihood, which must not
    # decide: a tie goes to the smaller rate (and within a cell, to the smaller α)
    assert best_lrs(s, records)[("proxy_sft", "hop")] == 1e-4
    assert records["proxy_sft__hop__lr0.001__s0"].best().alpha == 0.5
    # the other seeds run at the rate val chose
    assert {k.cell_id for k in second_phase(s, records)} == {
        "full_sft__hop__lr0.001__s1", "proxy_sft__hop__lr0.0001__s1"}

    sel = {x.method: x for x in selections(s, records)}
    full = sel["full_sft"]
    assert (full.split, full.optimistic, full.lr, full.val_accuracy, full.test_accuracy) == (
        "val", False, 1e-3, 0.7, 0.6)
    assert [(c.lr, c.val_accuracy, c.test_accuracy, c.chosen) for c in full.candidates] == [
        (1e-4, 0.5, 0.5, False), (1e-3, 0.7, 0.6, True), (3e-3, 0.3, 0.9, False)]
    assert (sel["proxy_sft"].lr, sel["proxy_sft"].alpha) == (1e-4, 0.5)
    assert len(sel["proxy_sft"].candidates) == 4 and "base" not in sel


def test_the_report_shows_the_val_figure_that_chose_beside_the_test_figure():
    results = _results(*_planted())
    again = Results.model_validate_json(results.model_dump_json())  # results.json round trip
    assert again.selection == results.selection
    header, rows = headline(again)
    row = {r[1]: dict(zip(header, r)) for r in rows}["full_sft"]
    assert (row["lr"], row["chosen on"], row["val acc"], row["test acc"]) == (
        "0.001", "val", "0.700", "0.600")
    text = render(again)
    assert "## How each rate was chosen" in text
    assert "| hop | full_sft | 0.001 | — | 0.700 | 0.600 | chosen on val |" in text
    assert "| hop | full_sft | 0.003 | — | 0.300 | 0.900 |  |" in text
    assert OPTIMISTIC not in text
    assert View(again).best[("full_sft", "hop")] == 1e-3


def test_without_val_the_choice_is_made_on_test_and_labelled_optimistic():
    suite, records = _planted(with_val=False)
    s = suite_from_dict(suite)
    # the rule routekit used before val splits: test accuracy, then probe log-likelihood
    assert best_lrs(s, records) == {("full_sft", "hop"): 3e-3, ("proxy_sft", "hop"): 1e-4}
    assert records["proxy_sft__hop__lr0.0001__s0"].best().alpha == 1.0
    sel = {x.method: x for x in selections(s, records)}
    assert sel["full_sft"].split == "test" and sel["full_sft"].optimistic
    assert sel["full_sft"].val_accuracy is None
    text = render(_results(suite, records))
    assert "**Chosen on test (optimistic):** task hop has no val split" in text
    assert f"| {OPTIMISTIC} |" in text
    # one rate and one α: nothing was chosen, so nothing is optimistic
    one = _suite(methods=["base", "full_sft"], lrs={"full_sft": [1e-3]})
    solo = {k: v for k, v in records.items() if k.startswith(("base", "full_sft__hop__lr0.001_"))}
    assert [x.optimistic for x in selections(suite_from_dict(one), solo)] == [False]
    assert OPTIMISTIC not in render(_results(one, solo))


@dataclass
class _Env:
    splits: tuple[str, ...]

    def task(self, name: str) -> Task:
        return Task(name, {s: [Example("p", "a")] for s in self.splits})


def test_select_on_val_refuses_a_sweep_on_a_task_without_val():
    strict = suite_from_dict(_suite(select_on="val"))
    with pytest.raises(ConfigError, match="task 'hop' has no val split.*full_sft"):
        check_selection(strict, _Env(("train", "test")))
    check_selection(strict, _Env(("train", "val", "test")))
    check_selection(suite_from_dict(_suite()), _Env(("train", "test")))  # val_or_test: labelled
    # one rate and one α per method: nothing is chosen, nothing to refuse
    check_selection(suite_from_dict(_suite(select_on="val", methods=["base", "full_sft"],
                                           lrs={"full_sft": [1e-3]})), _Env(("train", "test")))
    # what chooses is not a cell setting: both policies share a run directory
    assert strict.settings_hash() == suite_from_dict(_suite()).settings_hash()


def test_the_selection_module_is_part_of_the_code_version():
    assert "compare/selection.py" not in _PRESENTATION


# ----------------------------------------------------------------------------- the world
def test_the_default_and_tiny_worlds_are_unchanged_and_have_no_val_split():
    # the cache keys of worlds built before n_val existed (their corpus is byte-identical)
    assert WorldConfig().hash() == "3dcd5fac22e5"
    assert WorldConfig.tiny().hash() == "810a01a505b2"
    for name in ("add", "rev", "hop"):
        assert set(world_task(name).splits) == {"train", "test", "ood"}


@pytest.mark.parametrize("n_val", [10, 1000])
def test_a_world_with_n_val_holds_val_out_of_the_corpus_like_test(n_val):
    plain, cfg = World(WorldConfig.tiny()), WorldConfig.tiny().model_copy(update={"n_val": n_val})
    w = World(cfg)
    corpus = w.corpus_text()
    for name in ("add", "rev", "hop"):
        t, before = world_task(name, world=w), world_task(name, world=plain)
        prompts = {s: {e.prompt for e in t.examples(s)} for s in t.splits}
        assert prompts["val"] and len(prompts["val"]) <= len(prompts["train"]) // 3
        assert not prompts["val"] & (prompts["train"] | prompts["test"])
        # test is the same; val is carved from train, which loses exactly those items
        assert t.examples("test") == before.examples("test")
        assert prompts["train"] | prompts["val"] == {e.prompt for e in before.examples("train")}
        # neither held-out split's prompt appears in the corpus (train prompts all do)
        for split in ("val", "test"):
            assert not [p for p in prompts[split] if p + " " in corpus], (name, split)
        assert all(p + " " in corpus for p in prompts["train"])
    assert cfg.hash() != WorldConfig.tiny().hash()


def test_a_world_val_split_is_measured_and_chooses_the_rate(world_dir, tmp_path):
    """End to end on a world entry whose config has n_val: every cell scores val, and the
    run records that val chose."""
    entry = tmp_path / "world"
    for which in ("base", "proxy"):
        shutil.copytree(Path(world_dir) / which, entry / which)
    cfg = WorldConfig.tiny().model_copy(update={"n_val": 6})
    (entry / "world_config.json").write_text(json.dumps(cfg.model_dump(mode="json")))
    limits = dict(test=4, val=3, ood=2, probes=2, statements=2, heldout_text=2, kl_prompts=2,
                  activations=2, behaviour=2)
    suite = suite_from_dict(tiny_suite(entry, ["base", "svf_sft"], lrs={"svf_sft": [1e-3, 3e-3]},
                                       eval=limits, checkpoints=1, select_on="val"))
    out = run_suite(suite, tmp_path / "run", workers=0, progress=False)
    for c in out.results.cells:
        v = c.best()
        assert v.val_accuracy is not None and len(v.per_prompt["val"]) == 3
    (sel,) = out.results.selection
    assert sel.method == "svf_sft" and sel.split == "val" and not sel.optimistic
    assert [c.lr for c in sel.candidates] == [1e-3, 3e-3]
    assert "| val |" in (tmp_path / "run" / "report.md").read_text()
