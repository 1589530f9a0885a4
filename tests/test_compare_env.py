"""The harness's environment layer: a suite's ``model:`` block runs ``routekit compare`` on a
local model with JSONL tasks, probes and texts (tiny random Llamas on the world's character
tokenizer, data written in tmp_path); its figures equal an independent computation and a
hand-made environment's, bad model blocks are refused, and claims it cannot support say
"not applicable"."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from routekit.compare.claims import NOT_APPLICABLE, all_claims
from routekit.compare.env import Environment, resolve_environment
from routekit.compare.env.local import LocalEnvironment, ModelBlock
from routekit.compare.results import WorldStamp
from routekit.compare.runner import run_suite
from routekit.compare.suite import load_suite, suite_from_dict
from routekit.errors import ConfigError, ModelLoadError, UnknownTaskError
from routekit.eval import evaluate
from routekit.models import load_model
from routekit.tasks.jsonl import jsonl_task
from routekit.world.tokenizer import build_tokenizer
from tests.conftest import tiny_causal_lm

torch.set_num_threads(1)

LIMITS = dict(test=4, ood=4, probes=4, heldout_text=5, kl_prompts=3, activations=4, behaviour=4)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def local_data(tmp_path_factory) -> Path:
    """Two tiny random Llamas sharing the char tokenizer, a sums task with a paired ood split,
    probes, held-out and retention text, all under one directory."""
    root = tmp_path_factory.mktemp("local")
    tok = build_tokenizer()
    for which, seed in (("base", 3), ("small", 4)):
        m = tiny_causal_lm("llama", vocab_size=len(tok), seed=seed)
        m.save_pretrained(root / which)
        tok.save_pretrained(root / which)
    rows = [
        {"question": f"{i}+{i + 1}", "answer": str(2 * i + 1), "split": s}
        for s, rng in (("train", range(8)), ("test", range(8, 12)))
        for i in rng
    ]
    rows += [
        {"question": f"{i} plus {i + 1}", "answer": str(2 * i + 1), "split": "ood"}
        for i in range(8, 12)
    ]
    _write_jsonl(root / "sums.jsonl", rows)
    _write_jsonl(
        root / "facts.jsonl",
        [
            {"question": f"colour of item {i}?", "answer": c}
            for i, c in enumerate(["red", "blue", "green", "red"])
        ],
    )
    (root / "heldout.txt").write_text("\n".join(f"the sky at hour {i} is grey" for i in range(7)))
    (root / "retain.txt").write_text("\n".join(f"a cat sat on mat {i}" for i in range(6)))
    return root


def local_suite(root: Path, methods: list[str], **over) -> dict:
    model = {
        "path": "base",
        "tasks": {
            "sums": {
                "path": "sums.jsonl",
                "template": "{question}=",
                "checker": "answer",
                "paired_ood": True,
            }
        },
        "probes": {"path": "facts.jsonl", "template": "{question} "},
        "heldout_text": "text:heldout.txt",
        "retain_text": "text:retain.txt",
        "root": str(root),
    }
    model.update(over.pop("model", {}))
    data = dict(
        name="local",
        model=model,
        tasks=["sums"],
        seeds=[0],
        methods=methods,
        steps=2,
        batch_size=2,
        checkpoints=1,
        lora_rank=2,
        eval=LIMITS,
        lrs={m: [1e-3] for m in methods if m != "base"},
        max_new_tokens=3,
    )
    data.update(over)
    return data


@pytest.fixture(scope="module")
def local_run(local_data, tmp_path_factory):
    suite = suite_from_dict(local_suite(local_data, ["base", "svf_sft", "full_sft"]))
    out = tmp_path_factory.mktemp("run") / "local"
    return suite, run_suite(suite, out, workers=0, progress=False)


def _heldout_ce_by_hand(model, tok, texts: list[str]) -> float:
    """Mean next-token NLL of each text read as a document (BOS, text, EOS), by hand."""
    nll, n = 0.0, 0
    for t in texts:
        ids = tok(t, add_special_tokens=True)["input_ids"]
        if tok.eos_token_id is not None and ids[-1] != tok.eos_token_id:
            ids = ids + [tok.eos_token_id]
        x = torch.tensor([ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(x).logits[0, :-1].double(), -1)
        nll -= logp.gather(1, x[0, 1:, None]).sum().item()
        n += len(ids) - 1
    return nll / n


def test_local_cells_equal_an_independent_computation(local_run, local_data):
    suite, run = local_run
    cells = {c.key.method: c for c in run.results.cells}
    base, tok = load_model(local_data / "base")
    task = jsonl_task(local_data / "sums.jsonl", template="{question}=", checker="answer")
    b = cells["base"].best()
    want = evaluate(base, tok, task, "test", limit=4, max_new_tokens=3)
    assert b.per_prompt["test"] == [float(c) for c in want.correct]
    assert b.test_accuracy == want.accuracy
    assert b.ood_accuracy == evaluate(base, tok, task, "ood", limit=4, max_new_tokens=3).accuracy
    assert len(b.per_prompt["probes"]) == 4 and b.statement_accuracy is None  # no statements
    texts = [f"the sky at hour {i} is grey" for i in range(5)]
    assert b.heldout_ce == pytest.approx(_heldout_ce_by_hand(base, tok, texts), rel=1e-5)
    # full SFT's forgetting, recomputed from its saved weights
    tuned, _ = load_model(run.run_dir / "cells" / cells["full_sft"].cell_id / "weights")
    f = cells["full_sft"].best()
    assert f.forgetting == pytest.approx(
        _heldout_ce_by_hand(tuned, tok, texts) - b.heldout_ce, rel=1e-4, abs=1e-6
    )
    assert f.forgetting != 0.0
    # the retention KL read the block's retain_text (resolved against the block's root)
    assert cells["full_sft"].train_config["retain_text"] == f"text:{local_data / 'retain.txt'}"
    assert cells["full_sft"].train_config["model"] == "base"
    assert cells["full_sft"].train_config["world"] is None


def test_results_record_the_environment_and_claims_it_cannot_support(local_run, local_data):
    _, run = local_run
    env = run.results.environment
    assert env["kind"] == "local" and env["paired_ood"] == ["sums"] and env["behaviour"] is False
    assert set(env["data_hashes"]) == {"task:sums", "probes", "heldout_text", "retain_text"}
    assert run.results.manifest.world.proxy_fingerprint == ""
    claims = {c.letter: c for _, cs in all_claims(run.results) for c in cs}
    assert claims["e"].verdict == NOT_APPLICABLE and "behaviour labels" in claims["e"].reason
    assert claims["d"].verdict == NOT_APPLICABLE  # no svf_rl cells in this run
    # the same results from an environment without ood splits or probes
    bare = run.results.model_copy(deep=True)
    bare.environment.update(ood=[], probes=False)
    claims = {c.letter: c for _, cs in all_claims(bare) for c in cs}
    assert claims["f"].verdict == NOT_APPLICABLE and "no ood split" in claims["f"].reason
    assert claims["g"].verdict == NOT_APPLICABLE and "no knowledge probes" in claims["g"].reason
    assert claims["a"].verdict == NOT_APPLICABLE  # no full_rl_bf16 cells


@dataclass
class HandEnvironment:
    """The same model and data as the local suite, wrapped by hand (no model block)."""

    root: Path
    kind: str = "hand"
    stamp: WorldStamp = field(
        default_factory=lambda: WorldStamp(
            config_hash="h", base_fingerprint="b", proxy_fingerprint="", tokenizer_fingerprint="t"
        )
    )
    metrics: dict = field(default_factory=dict)
    has_proxy: bool = False

    def load_base(self):
        return load_model(self.root / "base")

    def load_proxy(self):
        raise AssertionError("no proxy")

    def check_task(self, name: str) -> None:
        assert name == "sums"

    def task(self, name: str):
        return jsonl_task(
            self.root / "sums.jsonl", name="sums", template="{question}=", checker="answer"
        )

    def paired_ood(self, name: str) -> bool:
        return True

    def probes(self):
        return jsonl_task(self.root / "facts.jsonl", template="{question} ")

    def heldout_text(self, n: int, task) -> list[str]:
        return (self.root / "heldout.txt").read_text().splitlines()[:n]

    def retain_text(self) -> str:
        return f"text:{self.root / 'retain.txt'}"

    def train_fields(self, steered: bool) -> dict:
        return {"world": None, "model": "base"}

    def has_behaviour(self, task) -> bool:
        return False

    def behaviour_labels(self, task, examples: Sequence, completions: Sequence[str]) -> list[str]:
        raise AssertionError("no labels")

    def describe(self, tasks) -> dict:
        return {"kind": "hand"}


def test_a_hand_made_environment_gives_the_same_cells(local_run, local_data, tmp_path):
    suite, run = local_run
    env = HandEnvironment(local_data)
    assert isinstance(env, Environment)
    hand = run_suite(suite, tmp_path / "hand", workers=0, progress=False, env=env, report=False)

    def figures(results):
        return [
            (c.cell_id, [v.model_dump(mode="json") for v in c.variants], c.structure)
            for c in results.cells
        ]

    assert figures(hand.results) == figures(run.results)


def test_other_data_is_refused_in_one_run_directory(local_run, local_data, tmp_path):
    import shutil

    suite, run = local_run
    copy = tmp_path / "data"
    shutil.copytree(local_data, copy)
    changed = suite_from_dict(local_suite(copy, ["base"]))
    same = LocalEnvironment.from_block(changed.model)
    assert same.stamp == resolve_environment(suite).stamp  # same content elsewhere: same stamp
    (copy / "heldout.txt").write_text("other text\n" * 7)
    with pytest.raises(ConfigError, match=r"another environment .*--force"):
        run_suite(changed, run.run_dir, workers=0, progress=False, report=False)


def test_bad_model_blocks_are_refused(local_data, tmp_path):
    with pytest.raises(ConfigError, match="both a world and a model block"):
        suite_from_dict({**local_suite(local_data, ["base"]), "world": "tiny"})
    with pytest.raises(UnknownTaskError, match="'hop' is the world's"):
        suite_from_dict(local_suite(local_data, ["base"], tasks=["hop"]))
    with pytest.raises(ConfigError, match=r"\['proxy_sft'\] steer .* add model.proxy"):
        suite_from_dict(local_suite(local_data, ["base", "proxy_sft"]))
    with pytest.raises(ConfigError, match=r"full_sft keeps a retention KL .* model.retain_text"):
        suite_from_dict(local_suite(local_data, ["base", "full_sft"], model={"retain_text": None}))
    kept = local_suite(
        local_data,
        ["base", "full_sft"],
        model={"retain_text": None},
        train={"full_sft": {"retain_kl_coef": 0.0}},
    )
    assert suite_from_dict(kept).model.retain_text is None
    with pytest.raises(ConfigError, match="unknown key 'model.colour'"):
        suite_from_dict(local_suite(local_data, ["base"], model={"colour": 1}))
    with pytest.raises(ConfigError, match="embedded world's model"):
        suite_from_dict(local_suite(local_data, ["base"], model={"path": "world"}))
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_environment(
            suite_from_dict(local_suite(local_data, ["base"], model={"path": "no-such-model"}))
        )
    other = tmp_path / "other_vocab"
    m = tiny_causal_lm("gpt2", vocab_size=60)
    m.save_pretrained(other)
    tok = build_tokenizer()
    tok.add_tokens(["<extra>"])  # one token more: another vocabulary
    tok.save_pretrained(other)
    with pytest.raises(ConfigError, match="does not share the base's vocabulary"):
        LocalEnvironment.from_block(
            ModelBlock(**{**local_suite(local_data, ["base"])["model"], "proxy": str(other)})
        )
    bad = _write_jsonl(
        tmp_path / "unpaired.jsonl",
        [
            {"question": "1+1", "answer": "2", "split": "test"},
            {"question": "1 plus 1", "answer": "2", "split": "ood"},
            {"question": "2 plus 2", "answer": "4", "split": "ood"},
        ],
    )
    with pytest.raises(ConfigError, match="1 test and 2 ood records"):
        LocalEnvironment.from_block(
            ModelBlock(
                **{
                    **local_suite(local_data, ["base"])["model"],
                    "tasks": {"sums": {"path": str(bad), "paired_ood": True}},
                }
            )
        )


def test_a_suite_file_reads_its_model_block_paths_from_its_directory(local_data):
    import yaml

    data = local_suite(local_data, ["base"])
    del data["model"]["root"]
    path = local_data / "suite.yaml"
    path.write_text(yaml.safe_dump(data))
    suite = load_suite(path)
    assert suite.model.root == str(local_data.resolve())
    env = resolve_environment(suite)
    assert env.heldout_text(2, env.task("sums")) == [
        "the sky at hour 0 is grey",
        "the sky at hour 1 is grey",
    ]
    assert [e.prompt for e in env.task("sums").examples("ood")][:1] == ["8 plus 9="]


def test_the_smollm2_suite_reads_routekits_real_data():
    from routekit.real.tasks import DATA_DIR
    from routekit.tasks import get_task

    suite = load_suite("smollm2")
    assert suite.model.path == "smollm2" and suite.model.proxy is None
    assert suite.methods == [
        "base",
        "svf_rl",
        "svf_sft",
        "lora_rl",
        "lora_sft",
        "full_sft",
        "full_rl",
        "full_rl_bf16",
        "subnet_rl",
    ]
    assert all(len(suite.method_lrs(m)) == 2 for m in suite.methods if m != "base")
    stamp = WorldStamp(
        config_hash="", base_fingerprint="", proxy_fingerprint="", tokenizer_fingerprint=""
    )
    env = LocalEnvironment(suite.model, stamp, {})  # the data only: no model is loaded
    ours, shipped = env.task("real:add"), get_task("real:add")
    assert ours.chat and ours.checker is shipped.checker and env.paired_ood("real:add")
    for split in shipped.splits:
        assert [(e.prompt, e.reference) for e in ours.examples(split)] == [
            (e.prompt, e.reference) for e in shipped.examples(split)
        ]
    questions = [
        json.loads(x)["question"]
        for x in (DATA_DIR / "heldout_prompts.jsonl").read_text().splitlines()
    ]
    assert env.heldout_text(1000, ours) == questions
    assert len(env.probes().examples("test")) == 453 and env.retain_text() == "real:multiply"


def test_worker_processes_get_the_local_environment_whole(local_run, tmp_path):
    suite, run = local_run
    spawned = run_suite(suite, tmp_path / "spawned", workers=2, progress=False, report=False)

    def figures(results):
        return [(c.cell_id, [v.model_dump(mode="json") for v in c.variants]) for c in results.cells]

    assert figures(spawned.results) == figures(run.results)
