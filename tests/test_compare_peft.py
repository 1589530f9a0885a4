"""Any PEFT method as a harness method: plain LoRA, PiSSA-initialised LoRA and OSF (PEFT's
orthogonal-subspace method) given as ``peft:<file.yaml>`` or ``{peft: {...}}`` in a suite's
methods train through routekit's trainer, and each cell's merged weights and update diff
equal PEFT's own ``merge_and_unload()`` of a PeftModel built and trained by hand; bad specs
are refused naming the problem; a killed PEFT cell resumes to the uninterrupted figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from peft import get_peft_config, get_peft_model

from routekit.analysis import diff_checkpoints
from routekit.compare import worker
from routekit.compare.runner import run_suite
from routekit.compare.suite import load_suite, narrow, suite_from_dict
from routekit.errors import ConfigError
from routekit.io import load_safetensors
from routekit.models import load_model
from routekit.tasks.chat import render_task
from routekit.training import TrainConfig, train
from routekit.training.parameterizations import derive_seed
from tests.test_compare_env import local_data, local_suite  # noqa: F401  (the fixture)
from tests.test_compare_harness import comparable

torch.set_num_threads(1)

LORA = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": "all-linear"}
PISSA = {**LORA, "init_lora_weights": "pissa_niter_4"}
OSF = {"peft_type": "OSF", "effective_rank": 12, "target_modules": ["q_proj", "down_proj"]}


def _methods(root: Path) -> list:
    (root / "osf.yaml").write_text(yaml.safe_dump(OSF))
    return [
        "base",
        {"name": "peft_lora", "peft": LORA},
        {"name": "pissa_rl", "peft": PISSA, "objective": "rl"},
        f"peft:{root / 'osf.yaml'}",  # named peft_osf, SFT
    ]


def _suite(root: Path, **over):
    data = local_suite(root, ["base"], **over)
    data["methods"] = _methods(root)
    data["lrs"] = {"peft_lora": [3e-3], "pissa_rl": [3e-3], "peft_osf": [3e-3]}
    data["train"] = {"pissa_rl": {"group_size": 2, "max_new_tokens": 3}}
    return suite_from_dict(data)


@pytest.fixture(scope="module")
def peft_run(local_data, tmp_path_factory):  # noqa: F811
    suite = _suite(local_data)
    out = tmp_path_factory.mktemp("peft") / "run"
    return suite, out, run_suite(suite, out, workers=0, progress=False)


def test_peft_method_specs_become_named_methods(peft_run):
    suite, _, outcome = peft_run
    assert suite.methods == ["base", "peft_lora", "pissa_rl", "peft_osf"]
    assert suite.method("peft_osf").peft["peft_type"] == "OSF"
    assert suite.method("pissa_rl").objective == "rl"
    assert {c.key.method for c in outcome.results.cells} == set(suite.methods)
    for c in outcome.results.cells:
        if c.key.method != "base":  # reported like LoRA: weights, adapter and update structure
            assert c.train_config["parameterization"] == "peft"
            assert c.structure is not None and c.structure.rel_frob_norm > 0
            assert set(c.artifacts) == {"adapter", "weights"}


@pytest.mark.parametrize("method", ["peft_lora", "pissa_rl", "peft_osf"])
def test_a_peft_cells_merged_diff_equals_peft_merge_and_unload(peft_run, local_data, method,  # noqa: F811
                                                              tmp_path):
    """Build the PeftModel with PEFT's own get_peft_config / get_peft_model, train it with
    the cell's train config, merge with merge_and_unload(): the same weights and diff."""
    suite, out, outcome = peft_run
    cell = next(c for c in outcome.results.cells if c.key.method == method)
    cfg = TrainConfig.from_dict(cell.train_config)
    base, tok = load_model(local_data / "base")
    torch.manual_seed(derive_seed(cfg.seed, "init"))  # where the trainer seeds init
    model = get_peft_model(base, get_peft_config(suite.method(method).peft))
    env_task = render_task(_env(suite).task("sums"), tok)
    trained = train(model, tok, env_task, cfg, progress=False).model
    merged = trained.merge_and_unload()
    mine = load_safetensors(out / "cells" / cell.cell_id / "weights" / "model.safetensors")
    theirs = merged.state_dict()
    assert set(mine) <= set(theirs)
    for name, t in mine.items():
        assert torch.equal(t, theirs[name]), name
    merged.save_pretrained(tmp_path / "merged")
    fresh, _ = load_model(local_data / "base")
    by_hand = diff_checkpoints(fresh, tmp_path / "merged", rank="full")
    recorded = json.loads((out / "cells" / cell.cell_id / "update_stats.json").read_text())
    assert by_hand.overall.model_dump(mode="json") == recorded["overall"]
    assert by_hand.overall.rel_frob_norm > 0


def _env(suite):
    from routekit.compare.env import resolve_environment

    return resolve_environment(suite)


def test_a_peft_method_in_a_file_is_read_from_the_suite_files_directory(local_data, tmp_path):  # noqa: F811
    (tmp_path / "peft").mkdir()
    (tmp_path / "peft" / "pissa.yaml").write_text(yaml.safe_dump(PISSA))
    data = local_suite(local_data, ["base"])
    data["methods"] = ["base", "peft:peft/pissa.yaml"]
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(data))
    suite = load_suite(tmp_path / "suite.yaml")
    assert suite.methods == ["base", "peft_pissa"]
    assert suite.method("peft_pissa").peft["init_lora_weights"] == "pissa_niter_4"
    assert suite.method_lrs("peft_pissa") == [1e-3, 3e-3]  # LoRA SFT's, unless lrs says
    again = suite_from_dict(suite.model_dump(mode="json"))  # results.json's copy reads back
    assert again.peft_methods == suite.peft_methods
    narrowed = narrow(suite, methods=["peft_pissa"], lrs=[1e-2])
    assert narrowed.methods == ["peft_pissa"] and narrowed.lrs == {"peft_pissa": [1e-2]}


@pytest.mark.parametrize("entry, message", [
    ({"peft": {"r": 2}}, "no peft_type"),
    ({"peft": {"peft_type": "NOPE"}}, "peft_type 'NOPE' is not a method of this PEFT version"),
    ({"peft": {**LORA, "rank": 2}}, "LoraConfig has no field 'rank'"),
    ({"peft": {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4}},
     "PROMPT_TUNING adds virtual tokens or cannot merge"),
    ({"peft": {**LORA, "layers_pattern": "x"}}, "PEFT refuses this LoraConfig: `layers_pattern`"),
    ({"peft": "missing.yaml"}, "PEFT config file .*missing.yaml' does not exist"),
    ("peft:", "names no file"),
    ({"name": "lora_sft", "peft": LORA}, "is a built-in method's"),
    ({"peft": LORA, "objective": "dpo"}, "objective"),
    ({"lr": 1}, "needs key 'peft'"),
    (3, "give a method name, peft:<file.yaml> or a mapping"),
])
def test_bad_peft_specs_are_refused_naming_the_problem(local_data, entry, message):  # noqa: F811
    data = local_suite(local_data, ["base"])
    data["methods"] = ["base", entry]
    with pytest.raises(ConfigError, match=message):
        suite_from_dict(data)


def test_two_peft_methods_of_one_name_and_owned_keys_are_refused(local_data):  # noqa: F811
    data = local_suite(local_data, ["base"])
    data["methods"] = [{"name": "a", "peft": LORA}, {"name": "a", "peft": PISSA}]
    with pytest.raises(ConfigError, match="two PEFT methods are named 'a'"):
        suite_from_dict(data)
    data["methods"] = [{"name": "a", "peft": LORA}]
    data["train"] = {"a": {"peft": OSF}}
    with pytest.raises(ConfigError, match=r"train\.a\.peft.*the harness sets"):
        suite_from_dict(data)


def test_a_peft_config_that_fits_no_module_is_refused_when_the_cell_builds_it(
    local_data, tmp_path  # noqa: F811
):
    data = local_suite(local_data, ["base"])
    data["methods"] = [{"name": "nowhere", "peft": {**LORA, "target_modules": ["no_such"]}}]
    data["lrs"] = {"nowhere": [1e-3]}
    with pytest.raises(Exception, match="PEFT could not apply peft"):
        run_suite(suite_from_dict(data), tmp_path / "run", workers=0, progress=False)


def test_a_finished_cell_of_another_peft_config_is_refused(peft_run, local_data, tmp_path):  # noqa: F811
    suite, out, _ = peft_run
    data = suite.model_dump(mode="json")
    data["methods"] = ["peft_lora"]
    data["peft_methods"]["peft_lora"]["peft"]["r"] = 3
    with pytest.raises(ConfigError, match="trained PEFT method 'peft_lora' with config"):
        run_suite(suite_from_dict(data), out, workers=0, progress=False)


def test_a_killed_peft_cell_resumes_to_the_uninterrupted_figures(local_data, tmp_path,  # noqa: F811
                                                                  monkeypatch):
    suite = narrow(_suite(local_data, steps=4, checkpoints=2), methods=["peft_osf"])
    whole = run_suite(suite, tmp_path / "whole", workers=0, progress=False)
    cell = whole.results.cells[0].cell_id
    real, calls = worker.train, {"n": 0}

    def killed_in_segment_two(model, tok, task, cfg, out_dir, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as a kill would: not caught
        return real(model, tok, task, cfg, out_dir=out_dir, **kw)

    with monkeypatch.context() as m:
        m.setattr(worker, "train", killed_in_segment_two)
        with pytest.raises(KeyboardInterrupt):
            run_suite(suite, tmp_path / "killed", workers=0, progress=False)
    assert not (tmp_path / "killed" / "cells" / cell).exists()
    resumed = run_suite(suite, tmp_path / "killed", workers=0, progress=False)
    assert comparable(resumed.results) == comparable(whole.results)
