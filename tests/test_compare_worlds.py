"""A suite on several worlds (routekit.compare.worlds): the verdicts combined across worlds,
the suite's ``worlds:`` validated, and an end-to-end run on three world entries of tiny
random models (each a tiny-world config of its own seed with a val split)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from routekit.compare import commands
from routekit.compare.claims import NOT_APPLICABLE, Claim, all_claims
from routekit.compare.results import Results, read_model
from routekit.compare.runner import run_suite
from routekit.compare.suite import load_suite, suite_from_dict
from routekit.compare.worlds import (
    MIN_WORLDS,
    WorldsOutcome,
    WorldsResults,
    combine_verdicts,
    cross_world,
    read_worlds_results,
    render_worlds,
    resolve_world_spec,
    run_worlds,
)
from routekit.errors import ConfigError
from routekit.world.config import WorldConfig, world_from_overrides
from tests.conftest import tiny_causal_lm
from tests.test_compare_env import local_data, local_suite  # noqa: F401 (a fixture)
from tests.test_compare_harness import fixture_results, tiny_suite

torch.set_num_threads(1)

LIMITS = dict(test=4, val=3, ood=2, probes=2, statements=2, heldout_text=2, kl_prompts=2,
              activations=2, behaviour=2)


# ----------------------------------------------------------------------------- combining
def test_a_verdict_commits_only_when_every_world_gives_it():
    assert combine_verdicts(["supported"] * 3) == ("supported", "supported on all 3 worlds")
    assert combine_verdicts(["contradicted"] * 4)[0] == "contradicted"
    assert combine_verdicts(["supported", "supported", "inconclusive"]) == (
        "inconclusive", "worlds disagree: supported on 2 of 3, inconclusive on 1")
    v, why = combine_verdicts(["supported", "contradicted", "contradicted"])
    assert v == "inconclusive" and why == "worlds disagree: contradicted on 2 of 3, supported on 1"
    assert combine_verdicts([NOT_APPLICABLE] * 3) == (NOT_APPLICABLE, "not applicable on every world")
    # not applicable on one world and held on the others: not shown to hold on every world
    assert combine_verdicts(["supported", NOT_APPLICABLE, "supported"]) == (
        "inconclusive", "worlds disagree: supported on 2 of 3, not applicable on 1")
    assert combine_verdicts(["inconclusive"] * 3) == ("inconclusive", "inconclusive on every world")
    # unanimous on fewer worlds than MIN_WORLDS: no verdict across worlds
    v, why = combine_verdicts(["supported"] * (MIN_WORLDS - 1))
    assert v == "inconclusive" and f"fewer than {MIN_WORLDS}" in why


def _claims(verdicts: dict[tuple[str, str], str]) -> list[tuple[str, list[Claim]]]:
    scopes: dict[str, list[Claim]] = {}
    for (scope, letter), v in verdicts.items():
        scopes.setdefault(scope, []).append(Claim(letter, f"claim {letter}", verdict=v,
                                                  reason="why" if v == NOT_APPLICABLE else ""))
    return list(scopes.items())


def test_cross_world_keys_lines_by_claim_and_task_and_names_the_split():
    w1 = _claims({("hop", "a"): "supported", ("hop", "d"): NOT_APPLICABLE,
                  ("rev", "a"): "supported", ("all tasks", "h"): "contradicted"})
    w2 = _claims({("hop", "a"): "supported", ("hop", "d"): NOT_APPLICABLE,
                  ("rev", "a"): "inconclusive", ("all tasks", "h"): "contradicted"})
    w3 = _claims({("hop", "a"): "supported", ("hop", "d"): NOT_APPLICABLE,
                  ("rev", "a"): "supported"})  # (h) missing on this world
    lines = {(c.scope, c.letter): c for c in cross_world([w1, w2, w3])}
    assert list(lines) == [("hop", "a"), ("hop", "d"), ("rev", "a"), ("all tasks", "h")]
    assert lines["hop", "a"].verdict == "supported"
    assert lines["hop", "d"].verdict == NOT_APPLICABLE and lines["hop", "d"].reasons == ["why"] * 3
    assert lines["rev", "a"].verdicts == ["supported", "inconclusive", "supported"]
    assert lines["rev", "a"].reason == "worlds disagree: supported on 2 of 3, inconclusive on 1"
    assert lines["all tasks", "h"].verdicts == ["contradicted", "contradicted", "missing"]
    assert lines["all tasks", "h"].verdict == "inconclusive"


def test_three_worlds_of_one_fixture_keep_each_committed_verdict():
    res = fixture_results(n_seeds=5)
    one = all_claims(res)
    lines = cross_world([one, one, one])
    for (scope, claims) in one:
        for c in claims:
            line = next(x for x in lines if (x.scope, x.letter) == (scope, c.letter))
            assert line.verdicts == [c.verdict] * 3 and line.verdict == c.verdict


# ----------------------------------------------------------------------------- suites
def test_suite_refuses_world_and_worlds_and_bad_world_mappings(world_dir, local_data):  # noqa: F811
    good = tiny_suite(world_dir, ["base"])
    good.pop("world")
    s = suite_from_dict({**good, "worlds": ["tiny", {"seed": 1, "n_val": 50}, str(world_dir)]})
    assert s.worlds[1] == {"seed": 1, "n_val": 50} and s.world == "default"
    assert s.settings_hash() == suite_from_dict(good).settings_hash()  # worlds: environments
    with pytest.raises(ConfigError, match=r"both world \('tiny'\) and worlds"):
        suite_from_dict({**good, "world": "tiny", "worlds": ["default"]})
    with pytest.raises(ConfigError, match=r"worlds\[0\]: unknown key 'n_vla'"):
        suite_from_dict({**good, "worlds": [{"seed": 1, "n_vla": 50}]})
    with pytest.raises(ConfigError, match=r"worlds\[1\]: key 'base.hidden_size'"):
        suite_from_dict({**good, "worlds": ["tiny", {"base": {"hidden_size": "wide"}}]})
    with pytest.raises(ConfigError, match=r"worlds\[0\] and worlds\[1\] are one world"):
        suite_from_dict({**good, "worlds": ["tiny", {"from": "tiny"}]})
    with pytest.raises(ConfigError, match="both worlds and a model block"):
        suite_from_dict({**local_suite(local_data, ["base"]), "worlds": ["tiny"]})


def test_world_overrides_start_from_the_default_or_the_tiny_config():
    cfg = world_from_overrides({"seed": 2, "n_val": 50, "base_pretrain": {"steps": 900}})
    assert cfg == WorldConfig(seed=2, n_val=50, base_pretrain={**WorldConfig().base_pretrain
                                                               .model_dump(), "steps": 900})
    assert world_from_overrides({"from": "tiny", "seed": 3}) == WorldConfig.tiny(seed=3)


def test_the_science_suite_runs_three_worlds_of_five_seeds_each_with_val():
    science = load_suite("science")
    assert len(science.worlds) == 3 and len(science.seeds) == 5 and science.world_sweep == "first"
    configs = [world_from_overrides(w) for w in science.worlds]
    assert [c.seed for c in configs] == [0, 1, 2] and all(c.n_val > 0 for c in configs)
    assert len({c.hash() for c in configs}) == 3


def test_a_world_mapping_is_built_by_the_world_builder_and_named_by_its_entry(
        world_dir, tmp_path, monkeypatch):
    import importlib

    from routekit.world.entry import world_dir as entry_of

    build_mod = importlib.import_module("routekit.world.build")  # the module, not the function

    monkeypatch.setenv("ROUTEKIT_CACHE", str(tmp_path / "cache"))
    built = []

    def fake_build(config, progress=True):  # the entry a real build would write, cheaply
        built.append(config)
        root = entry_of(config)
        for which in ("base", "proxy"):
            shutil.copytree(world_dir / which, root / which)
        (root / "world_config.json").write_text(json.dumps(config.model_dump(mode="json")))

    monkeypatch.setattr(build_mod, "build", fake_build)
    name, env = resolve_world_spec({"from": "tiny", "seed": 4, "n_val": 6}, progress=False)
    want = WorldConfig.tiny(seed=4).model_copy(update={"n_val": 6})
    assert built == [want] and name == str(entry_of(want))
    assert env.stamp.config_hash == want.hash() and "val" in env.task("hop").splits


# ----------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def three_worlds(tmp_path_factory) -> list[Path]:
    """Three world entries: tiny-world configs of seeds 0, 1, 2 with a val split, each with
    its own tiny random base and proxy."""
    from routekit.world.tokenizer import build_tokenizer

    tok = build_tokenizer()
    out = []
    for seed in range(3):
        root = tmp_path_factory.mktemp(f"world{seed}")
        for which, s in (("base", 10 + seed), ("proxy", 20 + seed)):
            m = tiny_causal_lm("llama", vocab_size=len(tok), seed=s)
            m.save_pretrained(root / which)
            tok.save_pretrained(root / which)
        cfg = WorldConfig.tiny(seed=seed).model_copy(update={"n_val": 6})
        (root / "world_config.json").write_text(json.dumps(cfg.model_dump(mode="json")))
        out.append(root)
    return out


def _worlds_suite(worlds: list[Path]) -> dict:
    data = tiny_suite(worlds[0], ["base", "svf_sft"], seeds=[0, 1], eval=LIMITS, checkpoints=1,
                      lrs={"svf_sft": [1e-3, 3e-2]})
    data.pop("world")
    data["worlds"] = [str(w) for w in worlds]
    return data


@pytest.fixture(scope="module")
def multi(three_worlds, tmp_path_factory) -> tuple[dict, WorldsOutcome]:
    data = _worlds_suite(three_worlds)
    out = tmp_path_factory.mktemp("multi") / "run"
    return data, run_worlds(suite_from_dict(data), out, workers=0, progress=False)


def test_each_world_runs_into_its_own_sub_run_and_later_worlds_run_the_first_ones_rate(multi):
    data, outcome = multi
    run = outcome.run_dir
    res = outcome.results
    assert [w.dir for w in res.worlds] == [
        f"worlds/{i}-{WorldConfig.tiny(seed=i - 1).model_copy(update={'n_val': 6}).hash()}"
        for i in (1, 2, 3)]
    subs = [read_model(run / w.dir / "results.json", Results, "results") for w in res.worlds]
    for w, sub in zip(res.worlds, subs):
        assert (run / w.dir / "run.json").is_file() and (run / w.dir / "report.md").is_file()
        assert sub.manifest.world == w.stamp  # each its own environment
    assert len({w.stamp.base_fingerprint for w in res.worlds}) == 3
    (sel,) = subs[0].selection
    assert sel.split == "val" and [c.lr for c in sel.candidates] == [1e-3, 3e-2]
    swept = sorted((c.key.lr, c.key.seed) for c in subs[0].cells if c.key.method == "svf_sft")
    assert swept == sorted([(1e-3, 0), (3e-2, 0), (sel.lr, 1)])
    for sub in subs[1:]:  # only world 1's chosen rate, on every seed
        assert sorted((c.key.lr, c.key.seed) for c in sub.cells if c.key.method == "svf_sft") == [
            (sel.lr, 0), (sel.lr, 1)]
        assert sub.suite["chosen_lrs"] == {"svf_sft": {"hop": sel.lr}}
        assert "fixed (chosen_lrs)" in (run / res.worlds[1].dir / "report.md").read_text()
    assert [w.rates for w in res.worlds] == ["swept", "first world's", "first world's"]
    assert [(s.method, s.lr) for s in res.chosen] == [("svf_sft", sel.lr)]
    # the verdicts across worlds are each world's own, combined
    per_world = [{(scope, c.letter): c.verdict for scope, cs in all_claims(sub) for c in cs}
                 for sub in subs]
    assert [(x.scope, x.letter) for x in res.claims] == list(per_world[0])
    for line in res.claims:
        assert line.verdicts == [w[line.scope, line.letter] for w in per_world]
        assert (line.verdict, line.reason) == combine_verdicts(line.verdicts)


def test_the_top_level_results_round_trip_and_the_report_links_every_world(multi):
    _, outcome = multi
    run = outcome.run_dir
    back = read_worlds_results(run)
    assert back == outcome.results == WorldsResults.model_validate_json(
        (run / "results.json").read_text())
    report = (run / "report.md").read_text()
    assert report == render_worlds(back)
    assert "| claim | task | statement | world 1 | world 2 | world 3 | across worlds |" in report
    for w in back.worlds:
        assert f"({w.dir}/report.md)" in report


def test_a_finished_worlds_report_is_rewritten_to_say_what_the_table_says(multi):
    # verdicts are presentation (a change to claims.py makes no cell stale), so a resume
    # rewrites a finished world's report rather than keep one an older claims module wrote
    data, outcome = multi
    run = outcome.run_dir
    world_dir = run / outcome.results.worlds[0].dir
    (world_dir / "report.md").write_text("# stale: verdicts by older claim code\n")
    again = run_worlds(suite_from_dict(data), run, workers=0, progress=False)
    assert again.ran == [] and 1 in again.skipped
    text = (world_dir / "report.md").read_text()
    assert "stale" not in text
    sub = read_model(world_dir / "results.json", Results, "results")
    for _, claims in all_claims(sub):
        for c in claims:
            assert f"**({c.letter})** {c.text} — **{c.verdict}**" in text
    line = again.results.claims[0]
    assert line.verdicts[0] == dict(((sc, c.letter), c.verdict) for sc, cs in all_claims(sub)
                                    for c in cs)[line.scope, line.letter]


def test_a_resume_after_completion_does_no_new_work(multi, tmp_path, capsys):
    data, outcome = multi
    run = outcome.run_dir
    stamps = {p: p.stat().st_mtime_ns for p in run.glob("worlds/*/results.json")}
    again = run_worlds(suite_from_dict(data), run, workers=0, progress=False)
    assert again.ran == [] and again.skipped == [1, 2, 3] and again.results == outcome.results
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # no world collected again
    # a world killed after its cells but before its results: collected, nothing recomputed
    third = run / outcome.results.worlds[2].dir / "results.json"
    third.unlink()
    again = run_worlds(suite_from_dict(data), run, workers=0, progress=False)
    assert again.ran == [] and again.skipped == [1, 2] and third.is_file()
    # a world killed halfway: its finished cells are kept, the missing one alone runs
    w3 = outcome.results.worlds[2].dir
    lost = next(p for p in (run / w3 / "cells").iterdir() if p.name.startswith("svf_sft"))
    shutil.rmtree(lost)
    third.unlink()
    again = run_worlds(suite_from_dict(data), run, workers=0, progress=False)
    assert again.ran == [f"{Path(w3).name}/{lost.name}"] and again.skipped == [1, 2]
    # the command prints the table across worlds
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(yaml.safe_dump(data))
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    args = parser.parse_args(["compare", "--suite", str(suite_file), "--out", str(run),
                              "--workers", "0", "--no-progress"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "across worlds" in printed and "world 3" in printed and "0 cell(s) run" in printed


def test_a_single_world_run_directory_is_not_taken_for_a_multi_world_one(multi, world_dir,
                                                                          tmp_path):
    data, _ = multi
    single = tmp_path / "single"
    run_suite(suite_from_dict(tiny_suite(world_dir, ["base"], eval=LIMITS)), single, workers=0,
              progress=False, report=False)
    with pytest.raises(ConfigError, match="holds a single-world run"):
        run_worlds(suite_from_dict(data), single, workers=0, progress=False)


def test_run_suite_refuses_a_multi_world_suite(three_worlds, tmp_path):
    with pytest.raises(ConfigError, match="run_worlds"):
        run_suite(suite_from_dict(_worlds_suite(three_worlds)), tmp_path / "run", workers=0,
                  progress=False)
    assert not (tmp_path / "run").exists()


def test_world_sweep_every_sweeps_on_every_world(three_worlds, tmp_path):
    data = {**_worlds_suite(three_worlds), "world_sweep": "every", "seeds": [0]}
    out = run_worlds(suite_from_dict(data), tmp_path / "run", workers=0, progress=False,
                     report=False)
    assert [w.rates for w in out.results.worlds] == ["swept"] * 3
    for w in out.results.worlds:
        sub = read_model(tmp_path / "run" / w.dir / "results.json", Results, "results")
        assert sub.suite["chosen_lrs"] == {}
        assert sorted(c.key.lr for c in sub.cells if c.key.method == "svf_sft") == [1e-3, 3e-2]
    assert not (tmp_path / "run" / "report.md").exists()  # report=False: results.json only
