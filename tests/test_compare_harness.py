"""routekit compare's harness: suites, planning, resumable runs, the subnet mask, results and
the report, on a world entry of tiny random models (the tiny world's tasks and facts) and
tiny suites of a few steps."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from routekit.compare import commands, worker
from routekit.compare.cells import best_lrs, first_phase, second_phase
from routekit.compare.claims import View, all_claims
from routekit.compare.measure import Evaluator
from routekit.compare.report import render, write_report
from routekit.compare.results import (
    CellKey,
    CellRecord,
    Overlap,
    Results,
    RunManifest,
    Scores,
    StructureSummary,
    WorldStamp,
    read_model,
    write_model,
)
from routekit.compare.runner import MANIFEST, read_results, routekit_version, run_suite
from routekit.compare.suite import load_suite, narrow, parse_lrs, suite_from_dict
from routekit.errors import ConfigError, TrainingError, UnknownTaskError
from routekit.io import storage_bits
from routekit.world.config import WorldConfig

torch.set_num_threads(1)

LIMITS = dict(test=6, ood=6, probes=6, statements=6, heldout_text=6, kl_prompts=4,
              activations=6, behaviour=4)


@pytest.fixture(scope="module")
def letter_task(tmp_path_factory) -> str:
    """A task whose answer is one letter, so RL from a random model meets some reward."""
    path = tmp_path_factory.mktemp("task") / "letter.jsonl"
    rows = [{"question": f"item {i}", "answer": "a", "split": s}
            for s, n in (("train", 8), ("test", 4)) for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return f"jsonl:{path}"


def tiny_suite(world_dir: Path, methods: list[str], **over) -> dict:
    rl = {m: {"group_size": 4, "max_new_tokens": 2, "micro_batch_size": 2}
          for m in methods if m.endswith(("_rl", "_rl_bf16"))}
    data = dict(name="tiny", world=str(world_dir), tasks=["hop"], seeds=[0], methods=methods,
                steps=2, batch_size=2, checkpoints=2, proxy_alphas=[1.0], lora_rank=2,
                lrs={m: [1e-3] for m in methods if m != "base"}, train=rl, eval=LIMITS,
                max_new_tokens=3, subnet_from="full_rl")
    data.update(over)
    return data


def comparable(results: Results) -> list[dict]:
    """The records without what timing and the machine's load decide."""
    out = []
    for c in results.cells:
        d = c.model_dump(mode="json", exclude={"train_seconds", "eval_seconds", "peak_rss_mb"})
        for h in d["history"]:
            h.pop("seconds", None)
        out.append(d)
    return out


# ----------------------------------------------------------------------------- suites
def test_suite_refuses_unknown_keys_and_wrong_types(world_dir):
    good = tiny_suite(world_dir, ["base"])
    with pytest.raises(ConfigError, match="unknown key 'colour'"):
        suite_from_dict({**good, "colour": "red"})
    with pytest.raises(ConfigError, match="key 'steps'"):
        suite_from_dict({**good, "steps": "many"})
    with pytest.raises(ConfigError, match="key 'eval.test'"):
        suite_from_dict({**good, "eval": {"test": "all"}})
    with pytest.raises(ConfigError, match="unknown key 'eval.colour'"):
        suite_from_dict({**good, "eval": {"colour": 1}})
    with pytest.raises(ConfigError, match="train.svf_rl.lr"):
        suite_from_dict({**good, "methods": ["svf_rl"], "train": {"svf_rl": {"lr": 1.0}}})
    with pytest.raises(ConfigError, match="unknown key 'group_sise'"):
        suite_from_dict({**good, "methods": ["svf_rl"], "train": {"svf_rl": {"group_sise": 4}}})


def test_unknown_method_and_task_are_refused_listing_the_known_ones(world_dir):
    good = tiny_suite(world_dir, ["base"])
    with pytest.raises(ConfigError, match=r"unknown method 'svf_rll'.*svf_rl.*subnet_rl"):
        suite_from_dict({**good, "methods": ["svf_rll"]})
    with pytest.raises(UnknownTaskError, match=r"unknown task 'hopp'.*hop"):
        suite_from_dict({**good, "tasks": ["hopp"]})
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        parse_lrs(["nope=1e-3"])
    with pytest.raises(ConfigError, match="expected numbers"):
        parse_lrs(["svf_rl=fast"])


def test_subnet_rl_needs_its_full_rl_cells(world_dir):
    good = tiny_suite(world_dir, ["base"])
    with pytest.raises(ConfigError, match="has no full_rl; add full_rl"):
        suite_from_dict({**good, "methods": ["subnet_rl"]})
    with pytest.raises(ConfigError, match=r"lrs \[0.5\] that full_rl does not"):
        suite_from_dict({**good, "methods": ["full_rl", "subnet_rl"],
                         "lrs": {"full_rl": [1e-3], "subnet_rl": [0.5]}})


def test_builtin_suites_load_and_narrow():
    default, science = load_suite("default"), load_suite("science")
    assert default.tasks == ["hop"] and default.seeds == [0]
    assert {"base", "svf_rl", "proxy_rl", "lora_sft", "full_rl_bf16", "subnet_rl"} <= set(default.methods)
    assert science.tasks == ["hop", "rev"] and len(science.seeds) == 5 and len(science.worlds) == 3
    n = narrow(default, methods=["base", "svf_rl"], lrs=[5e-3])
    assert n.methods == ["base", "svf_rl"] and n.method_lrs("svf_rl") == [5e-3]
    assert n.settings_hash() == default.settings_hash()  # which cells run is not a setting
    with pytest.raises(ConfigError, match="neither a built-in suite"):
        load_suite("no-such-suite")


def test_sweep_runs_every_lr_on_the_first_seed_then_the_best_lr_on_the_others(world_dir):
    suite = suite_from_dict(tiny_suite(
        world_dir, ["base", "full_rl", "subnet_rl"], seeds=[0, 1],
        lrs={"full_rl": [1e-3, 2e-3], "subnet_rl": [1e-3, 2e-3]}))
    first = first_phase(suite)
    ids = [k.cell_id for k in first]
    assert len(first) == 5 and all(k.seed == 0 for k in first)
    # dependencies come before their dependants
    assert ids.index("full_rl__hop__lr0.001__s0") < ids.index("subnet_rl__hop__lr0.001__s0")

    def rec(key: CellKey, acc: float, ll: float) -> CellRecord:
        return CellRecord(key=key, cell_id=key.cell_id, settings_hash="x", train_config=None,
                          variants=[Scores(test_accuracy=acc, probe_loglik=ll)], peak_rss_mb=1.0)

    scores = {("full_rl", 1e-3): (0.5, -3.0), ("full_rl", 2e-3): (0.5, -2.0),  # tie -> retention
              ("subnet_rl", 1e-3): (0.7, -9.0), ("subnet_rl", 2e-3): (0.6, -1.0)}
    records = {k.cell_id: rec(k, *scores.get((k.method, k.lr), (0.0, 0.0))) for k in first}
    assert best_lrs(suite, records) == {("full_rl", "hop"): 2e-3, ("subnet_rl", "hop"): 1e-3}
    second = {k.cell_id for k in second_phase(suite, records)}
    # subnet_rl's best lr (1e-3) needs full_rl at 1e-3 on seed 1 too, besides full_rl's own best
    assert second == {"full_rl__hop__lr0.002__s1", "subnet_rl__hop__lr0.001__s1",
                      "full_rl__hop__lr0.001__s1"}


# ----------------------------------------------------------------------------- runs
METHODS = ["base", "svf_sft", "proxy_rl", "lora_sft", "full_rl"]


@pytest.fixture(scope="module")
def uninterrupted(world_dir, tmp_path_factory):
    suite = suite_from_dict(tiny_suite(world_dir, METHODS, seeds=[0, 1]))
    out = tmp_path_factory.mktemp("run") / "a"
    return suite, run_suite(suite, out, workers=0, progress=False)


def test_a_killed_run_resumes_to_the_uninterrupted_results(uninterrupted, tmp_path, monkeypatch):
    suite, full = uninterrupted
    out = tmp_path / "b"
    # A first run with fewer methods; then the full suite, where the full_rl cell of seed 0
    # is killed after its first training segment.
    run_suite(narrow(suite, methods=["base", "svf_sft"]), out, workers=0, progress=False)
    calls = {"n": 0}
    real = Evaluator.behaviour

    def dies_in_second_segment(self, model, steer=None):
        if self.task.name == "hop" and isinstance(model, torch.nn.Module) and not hasattr(
                model, "peft_config") and getattr(model, "_routekit_parameterization", "") == "full":
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt  # like a kill: not caught by the cell's error handling
        return real(self, model, steer)

    monkeypatch.setattr(Evaluator, "behaviour", dies_in_second_segment)
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, out, workers=0, progress=False)
    monkeypatch.setattr(Evaluator, "behaviour", real)
    killed = out / "cells" / ".work-full_rl__hop__lr0.001__s0"
    assert (killed / "checkpoint" / "state.json").is_file()  # the second segment's checkpoint
    assert not (out / "cells" / "full_rl__hop__lr0.001__s0").exists()
    resumed = run_suite(suite, out, workers=0, progress=False)
    assert "base__hop__lr0__s0" in resumed.reused and "full_rl__hop__lr0.001__s0" in resumed.ran
    assert not killed.exists()
    assert comparable(resumed.results) == comparable(full.results)


def test_run_dir_of_other_settings_world_version_or_code_is_refused(uninterrupted, world_dir):
    suite, full = uninterrupted
    run_dir = full.run_dir
    before = sorted(p.name for p in (run_dir / "cells").iterdir())
    with pytest.raises(ConfigError, match=r"settings .*--out ANOTHER_DIR, or --force"):
        run_suite(suite_from_dict(tiny_suite(world_dir, METHODS, steps=3)), run_dir,
                  workers=0, progress=False)
    manifest = read_model(run_dir / MANIFEST, RunManifest, "run manifest")
    for change in ({"routekit_version": "0.0.1"},
                   {"world": manifest.world.model_copy(update={"base_fingerprint": "0" * 16})},
                   {"code_version": "0123456789abcdef"}):
        write_model(run_dir / MANIFEST, manifest.model_copy(update=change))
        with pytest.raises(ConfigError, match="--force"):
            run_suite(suite, run_dir, workers=0, progress=False)
    write_model(run_dir / MANIFEST, manifest)
    assert sorted(p.name for p in (run_dir / "cells").iterdir()) == before
    # every cell records the code that computed it; one from other code is stale, even
    # where the manifest agrees (a cell copied in, or run.json rewritten)
    from routekit.compare.results import code_version
    from routekit.compare.worker import RECORD

    cell = run_dir / "cells" / before[0] / RECORD
    rec = read_model(cell, CellRecord, "cell")
    assert rec.code_version == code_version() == manifest.code_version and len(rec.code_version) == 16
    write_model(cell, rec.model_copy(update={"code_version": "stale"}))
    try:
        with pytest.raises(ConfigError, match=r"computed by other code \(code version stale"):
            run_suite(suite, run_dir, workers=0, progress=False)
    finally:
        write_model(cell, rec)


def test_results_json_validates_and_files_load_with_routekit_loaders(uninterrupted):
    from peft import PeftModel

    from routekit.models import load_model
    from routekit.proxy.expert import ProxyExpert
    from routekit.svf import SVFExpert

    _, full = uninterrupted
    res = read_results(full.run_dir)
    assert comparable(res) == comparable(full.results)
    cells = {c.key.method: full.run_dir / "cells" / c.cell_id for c in res.cells if c.key.seed == 0}
    assert SVFExpert.from_pretrained(cells["svf_sft"] / "expert").num_parameters > 0
    assert isinstance(ProxyExpert.from_pretrained(cells["proxy_rl"] / "expert"), ProxyExpert)
    base, _ = load_model(Path(res.suite["world"]) / "base")
    assert isinstance(PeftModel.from_pretrained(base, cells["lora_sft"] / "adapter"), PeftModel)
    load_model(cells["full_rl"] / "weights")
    # each SVF cell's diff: only the MLP matrices (SVF's targets) changed
    svf = next(c for c in res.cells if c.key.method == "svf_sft")
    dens = svf.structure.density_by_matrix_type
    assert dens.get("q", 0) == 0 and max(dens.get(t, 0) for t in ("gate", "up", "down")) > 0
    bad = json.loads((full.run_dir / "results.json").read_text())
    del bad["cells"][0]["variants"]
    (full.run_dir / "broken.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="variants"):
        read_results(full.run_dir / "broken.json")


def test_base_cell_measures_what_the_base_scores(uninterrupted):
    from routekit.eval import evaluate
    from routekit.models import load_model
    from routekit.world.tasks import world_task

    _, full = uninterrupted
    base_cell = next(c for c in full.results.cells if c.key.method == "base")
    s = base_cell.best()
    base, tok = load_model(Path(full.results.suite["world"]) / "base")
    facts = world_task("facts", WorldConfig.tiny())
    probes = evaluate(base, tok, facts, "test", limit=LIMITS["probes"], max_new_tokens=3)
    assert s.per_prompt["probes"] == [float(c) for c in probes.correct]
    assert s.forgetting == 0.0 and s.kl_prompts == 0.0
    assert math.isclose(s.probe_loglik, float(np.mean(s.per_prompt["probe_loglik"])))
    # each prompt's sparsity, as the record keeps it for claim (f): recomputed here from the
    # base's own hidden states with the per-state formulas, averaged over layers by hand
    from routekit.compare.activations import hidden_states, top_k_energy_share

    hop = world_task("hop", WorldConfig.tiny())
    for split in ("test", "ood"):
        prompts = hop.prompts(split)[: LIMITS["activations"]]
        states = hidden_states(base, tok, prompts)
        want = [float(np.mean([top_k_energy_share(h[i], 0.05).item() for h in states]))
                for i in range(len(prompts))]
        assert s.per_prompt[f"act_top_k_energy_{split}"] == pytest.approx(want, rel=1e-6)
        assert len(s.per_prompt[f"act_l1_normalised_{split}"]) == len(prompts)


def test_subnet_mask_is_what_full_rl_changed(world_dir, letter_task, tmp_path):
    suite = suite_from_dict(tiny_suite(
        world_dir, ["full_rl_bf16", "subnet_rl"], tasks=[letter_task], subnet_from="full_rl_bf16",
        steps=3, lrs={"full_rl_bf16": [3e-4], "subnet_rl": [3e-4]},
        train={m: {"group_size": 8, "max_new_tokens": 1, "micro_batch_size": 2}
               for m in ("full_rl_bf16", "subnet_rl")}))
    out = run_suite(suite, tmp_path / "run", workers=0, progress=False, report=False)
    cells = {c.key.method: tmp_path / "run" / "cells" / c.cell_id for c in out.results.cells}
    base = load_file(str(world_dir / "base" / "model.safetensors"))
    src = load_file(str(cells["full_rl_bf16"] / "weights" / "model.safetensors"))
    mask = load_file(str(cells["subnet_rl"] / "mask.safetensors"))
    sub = load_file(str(cells["subnet_rl"] / "weights" / "model.safetensors"))
    n_changed = 0
    for name, m in mask.items():
        expect = storage_bits(base[name].to(torch.bfloat16)) != storage_bits(src[name])
        assert torch.equal(m, expect), name
        n_changed += int(m.sum())
        moved = storage_bits(base[name]) != storage_bits(sub[name])
        assert not (moved & ~m).any(), f"{name}: subnet_rl moved entries outside its mask"
    total = sum(m.numel() for m in mask.values())
    assert 0 < n_changed < total  # bf16 storage left part of the model bitwise unchanged
    rec = next(c for c in out.results.cells if c.key.method == "subnet_rl")
    assert math.isclose(rec.mask_density, n_changed / total)


def test_the_run_records_the_version_the_package_states():
    """run.json's routekit version (read from the installed metadata, not the package) is
    the one ``routekit.__version__`` states."""
    import routekit

    assert routekit_version() == routekit.__version__


# ----------------------------------------------------------------------------- report
def fixture_results(task: str = "hop", ood: list[float] | None = None,
                    ood_tuned: list[float] | None = None, n_seeds: int = 2) -> Results:
    """``n_seeds`` seeds of base, full_rl (fp32), full_rl_bf16, subnet_rl and the SFT methods,
    with planted numbers whose verdicts are known; ``ood`` replaces the base's ood scores and
    ``ood_tuned`` the trained cells' (default: ``ood``)."""
    rng = np.random.default_rng(0)
    n = 40
    suite = dict(name="fixture", world="tiny", tasks=[task], seeds=list(range(n_seeds)),
                 methods=["base", "full_rl", "full_rl_bf16", "subnet_rl", "svf_rl", "full_sft",
                          "svf_sft", "lora_sft"],
                 lrs={m: [1e-4] for m in ("full_rl", "full_rl_bf16", "subnet_rl", "svf_rl",
                                          "full_sft", "svf_sft", "lora_sft")},
                 subnet_from="full_rl_bf16")
    base_test = (np.arange(n) % 4 == 0).astype(float)  # 0.25
    structure = {"full_rl": 0.0, "full_rl_bf16": 0.9, "subnet_rl": 0.91}
    loglik_shift = {"base": 0.0, "full_sft": -1.0, "svf_sft": -0.01, "lora_sft": -0.4}
    cells = []
    for m in suite["methods"]:
        for seed in ([0] if m == "base" else range(n_seeds)):
            key = CellKey(method=m, task=task, lr=0.0 if m == "base" else 1e-4, seed=seed)
            test = base_test.copy() if m == "base" else (np.arange(n) % 4 != 3).astype(float)
            kl = 0.0 if m == "base" else 0.01 * (len(cells) + 1)
            v = Scores(test_accuracy=float(test.mean()), ood_accuracy=0.25, probe_accuracy=0.5,
                       probe_loglik=-2.0 + loglik_shift.get(m, 0.0), forgetting=2.0 * kl,
                       kl_prompts=kl, kl_text=kl, behaviour={"correct": 0.5, "systematic": 0.3, "other": 0.2},
                       per_prompt={"test": test.tolist(),
                                   "ood": base_test.tolist() if ood is None else
                                   list(ood if m == "base" or ood_tuned is None else ood_tuned),
                                   "systematic": np.zeros(n).tolist(),
                                   "probe_loglik": (-2.0 + loglik_shift.get(m, 0.0)
                                                    + 0.01 * rng.standard_normal(n)).tolist(),
                                   # ood states sparser than test ones, prompt by prompt
                                   "act_top_k_energy_test": (0.2 + 0.01 * rng.standard_normal(n)).tolist(),
                                   "act_top_k_energy_ood": (0.3 + 0.01 * rng.standard_normal(n + 3)).tolist(),
                                   "act_l1_normalised_test": [5.0] * n,
                                   "act_l1_normalised_ood": [4.0] * (n + 3)})
            st = None
            if m in structure:
                st = StructureSummary(against="base", share_bitwise_unchanged=structure[m] + 0.01 * seed,
                                      atols=[1e-8, 1e-5], share_unchanged_atol=[structure[m], 0.95],
                                      mean_rank_fraction=0.99, rel_frob_norm=1e-3,
                                      density_by_layer={"0": 0.1, "1": 0.05},
                                      density_by_matrix_type={"q_proj": 0.1},
                                      rank_fraction_by_matrix_type={"q_proj": 0.99})
            cells.append(CellRecord(
                key=key, cell_id=key.cell_id, settings_hash="h", train_config=None, variants=[v],
                structure=st, peak_rss_mb=100.0, behaviour_history=[{"step": 2, "correct": 0.5,
                                                                   "systematic": 0.3, "other": 0.2}],
                activations={"test": [{"layer": 0, "top_k_energy": 0.2, "l1_normalised": 5.0,
                                       "effective_rank_over_d": 0.5, "n_states": 4}],
                             "ood": [{"layer": 0, "top_k_energy": 0.3, "l1_normalised": 4.0,
                                      "effective_rank_over_d": 0.4, "n_states": 4}]},
                mask_density=0.1 if m == "subnet_rl" else None))
    stamp = WorldStamp(config_hash="c", base_fingerprint="b", proxy_fingerprint="p",
                       tokenizer_fingerprint="t")
    return Results(suite=suite_from_dict(suite).model_dump(mode="json"),
                   manifest=RunManifest(suite="fixture", settings_hash="h", world=stamp,
                                        routekit_version="0.1.0"),
                   packages={"torch": "x"}, cells=cells,
                   overlaps=[Overlap(method="full_rl_bf16", task=task, lr=1e-4, seeds=[0, 1],
                                     o1=0.5, o2=0.5, jaccard=0.3, expected_jaccard=0.05,
                                     expected_o1=0.1)])


def test_report_renders_tables_verdicts_and_plots_from_a_fixture(tmp_path):
    results = fixture_results()
    verdicts = {c.letter: c.verdict for _, claims in all_claims(results) for c in claims}
    assert verdicts["b"] == "inconclusive"  # a per-seed figure over 2 seeds commits nothing
    assert verdicts["c"] == "supported"  # subnet's answers are full_rl_bf16's, prompt by prompt
    assert verdicts["g"] == "supported"  # full −1.0 nats, lora −0.4, svf −0.01 (kept: within 0.05)
    assert verdicts["h"] == "supported"  # forgetting = 2 × KL exactly
    assert verdicts["f"] == "supported"  # ood 0.3 > test 0.2 everywhere
    assert verdicts["a"] == "inconclusive"  # one seed pair: no interval over pairs
    path = write_report(results, tmp_path)
    text = path.read_text()
    assert "| hop | full_sft | 0.0001 |" in text and "## Verdicts" in text
    assert "**(b)** update sparsity comes from bf16 storage" in text and "Pareto frontier" in text
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pngs == ["activations.png", "behaviour.png", "forgetting_kl.png", "frontier.png",
                    "layer_density.png", "sparsity_tolerance.png"]
    assert all((tmp_path / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert render(results) == render(Results.model_validate_json(results.model_dump_json()))
    assert View(results).best[("full_sft", "hop")] == 1e-4


def test_missing_cells_make_verdicts_inconclusive():
    results = fixture_results()
    results = results.model_copy(update={"cells": [c for c in results.cells if c.key.method == "base"],
                                         "overlaps": []})
    verdicts = {c.letter: c.verdict for _, claims in all_claims(results) for c in claims}
    assert set(verdicts.values()) <= {"inconclusive", "supported", "not applicable"}
    assert all(verdicts[x] == "inconclusive" for x in "bcegh")
    # (a) is about bf16 RL and (d) about SVF RL: without those cells they do not apply
    assert verdicts["a"] == verdicts["d"] == "not applicable"


def test_claim_d_pairs_hop_prompts_and_resamples_unpaired_ood_sets_on_their_own():
    results = fixture_results()
    d = next(c for c in dict(all_claims(results))["hop"] if c.letter == "d")
    # tuned test 0.75 vs base 0.25 on the same 40 prompts; ood 0.25 for both: +50 points
    assert d.verdict == "supported" and "test − ood gain +50 pts" in d.numbers[-1]
    # a task whose ood prompts are other items, 3x as many: every one counts. The tuned
    # models gain on the first 40 ood prompts only: +33.3 points over all 120, so test − ood
    # is +16.7 (an index pairing would have compared the first 40 alone: −50)
    unpaired = fixture_results(task="rev", ood=[0.0] * 120, ood_tuned=[1.0] * 40 + [0.0] * 80)
    d = next(c for c in dict(all_claims(unpaired))["rev"] if c.letter == "d")
    assert "ood gain +33.3 pts [" in d.numbers[1] and "(2 seeds × 120)" in d.numbers[1]
    assert d.numbers[-1].startswith("test − ood gain +16.7 pts [")


def test_claim_c_reports_the_gain_of_the_runs_the_masks_came_from():
    results = fixture_results()
    # full_rl_bf16 also ran at 3e-4 and did better there, so that is its best rate; the
    # subnetwork ran at 1e-4 with masks from the 1e-4 runs, whose gain is what it must match
    extra = []
    for cell in results.cells:
        if cell.key.method == "full_rl_bf16":
            key = cell.key.model_copy(update={"lr": 3e-4})
            v = cell.variants[0].model_copy(deep=True)
            v.per_prompt["test"] = [1.0] * len(v.per_prompt["test"])
            v.test_accuracy = 1.0
            extra.append(cell.model_copy(update={"key": key, "cell_id": key.cell_id, "variants": [v]}))
    results = results.model_copy(update={"cells": results.cells + extra})
    results.suite["lrs"]["full_rl_bf16"] = [1e-4, 3e-4]
    assert View(results).best[("full_rl_bf16", "hop")] == 3e-4
    c = next(x for x in dict(all_claims(results))["hop"] if x.letter == "c")
    assert c.verdict == "supported"
    assert any(n.startswith("full_rl_bf16 test gain at lr 0.0001 +50 pts [") for n in c.numbers)


def test_every_cell_row_of_a_steered_result_shows_its_tuned_proxy_alone():
    results = fixture_results().model_copy(deep=True)
    cell = next(c for c in results.cells if c.key.method == "svf_sft")
    cell.proxy_own = {"test_accuracy": 0.4333, "ood_accuracy": 0.2}
    rows = [line for line in render(results).splitlines() if line.startswith(f"| {cell.cell_id} |")]
    assert rows and " 0.433 / 0.200 |" in rows[0]
    other = next(c for c in results.cells if c.key.method == "full_sft" and c.proxy_own is None)
    assert "| — |" in next(line for line in render(results).splitlines()
                           if line.startswith(f"| {other.cell_id} |"))


def test_claim_f_bootstraps_the_bases_prompts_and_tallies_trained_models():
    results = fixture_results()
    hop = dict(all_claims(results))["hop"]
    f = next(c for c in hop if c.letter == "f")
    assert f.verdict == "supported"
    base = next(c for c in results.cells if c.key.method == "base").variants[0].per_prompt
    want = np.mean(base["act_top_k_energy_ood"]) - np.mean(base["act_top_k_energy_test"])
    assert f.numbers[0].startswith(f"base: ood − test top-5% energy share {want:+.3g} [")
    assert "(1 model × " in f.numbers[0]  # the base is one model: prompts are the units
    assert "above 0 for 7" in f.numbers[-1]  # every trained method in the fixture
    # the same states with test and ood swapped: denser on ood, so contradicted
    swapped = results.model_copy(deep=True)
    for cell in swapped.cells:
        pp = cell.variants[0].per_prompt
        pp["act_top_k_energy_test"], pp["act_top_k_energy_ood"] = (
            pp["act_top_k_energy_ood"], pp["act_top_k_energy_test"])
    f = next(c for c in dict(all_claims(swapped))["hop"] if c.letter == "f")
    assert f.verdict == "contradicted" and "below 0 for 7" in f.numbers[-1]
    # results without per-prompt activations (written before they were kept)
    old = results.model_copy(deep=True)
    for cell in old.cells:
        for k in [k for k in cell.variants[0].per_prompt if k.startswith("act_")]:
            del cell.variants[0].per_prompt[k]
    f = next(c for c in dict(all_claims(old))["hop"] if c.letter == "f")
    assert f.verdict == "inconclusive" and "per-prompt activation" in f.reason


# ----------------------------------------------------------------------------- CLI, executors
def test_compare_command_runs_a_suite_file_and_prints_the_headline(world_dir, tmp_path, capsys):
    import yaml

    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(yaml.safe_dump(tiny_suite(world_dir, ["base", "svf_sft"])))
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers())
    args = parser.parse_args(["compare", "--suite", str(suite_file), "--out", str(tmp_path / "r"),
                              "--workers", "0", "--no-progress"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "svf_sft" in out and str(tmp_path / "r" / "report.md") in out
    bad = parser.parse_args(["compare", "--suite", str(suite_file), "--methods", "base,nope",
                             "--out", str(tmp_path / "r")])
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        bad.func(bad)


def test_a_failed_cell_is_reported_and_the_others_kept(world_dir, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("planted failure")

    suite = suite_from_dict(tiny_suite(world_dir, ["base", "svf_sft"]))
    monkeypatch.setattr(worker, "train", boom)
    with pytest.raises(TrainingError, match=r"svf_sft__hop__lr0.001__s0: RuntimeError: planted"):
        run_suite(suite, tmp_path / "r", workers=0, progress=False)
    assert (tmp_path / "r" / "cells" / "base__hop__lr0__s0" / "cell.json").is_file()
    assert read_results(tmp_path / "r").cells[0].key.method == "base"


def test_worker_processes_equal_the_calling_process(world_dir, tmp_path):
    suite = suite_from_dict(tiny_suite(world_dir, ["base", "svf_sft"]))
    inline = run_suite(suite, tmp_path / "inline", workers=0, progress=False, report=False)
    spawned = run_suite(suite, tmp_path / "spawned", workers=2, progress=False, report=False)
    assert sorted(spawned.ran) == sorted(inline.ran)
    assert comparable(spawned.results) == comparable(inline.results)


def test_ray_executor_equals_local(world_dir, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'routekit[ray]')")
    suite = suite_from_dict(tiny_suite(world_dir, ["base", "svf_sft"]))
    local = run_suite(suite, tmp_path / "local", workers=0, progress=False, report=False)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        remote = run_suite(suite, tmp_path / "ray", executor="ray", progress=False, report=False)
    finally:
        ray.shutdown()
    assert remote.ran == local.ran
    assert comparable(remote.results) == comparable(local.results)
