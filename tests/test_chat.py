"""Chat templates and joined SFT tokenisation: one rendering on every path (evaluation, SFT,
RL, router features, prompt router, few-shot router, AdaptiveModel, proxy, compare), the
template's own ids, SFT rows equal to the generation-time tokenisation on a SentencePiece-style
tokenizer built here, world rows unchanged; JSONL task options, ``real:`` tasks, and SVF's
refusal of mixture-of-experts layers."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    MixtralConfig,
    MixtralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
)

import routekit as rk
from routekit.errors import ConfigError, RoutekitError, UnknownTaskError
from routekit.scoring import encode_prompt
from routekit.tasks import Example, Task, TaskSpec, get_task, jsonl_task
from routekit.tasks.chat import render_example, render_prompt, render_task
from routekit.training.sft import sft_row, sft_rows

from .conftest import peaked, tiny_causal_lm

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LLAMA2_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} "
    "[/INST]{% else %} {{ m['content'] }} {{ eos_token }}{% endif %}{% endfor %}"
)
CHAR_TEMPLATE = (
    "{% for m in messages %}<bos>{{ m['role'][0] }}:{{ m['content'] }}<eos>{% endfor %}"
    "{% if add_generation_prompt %}<bos>a:{% endif %}"
)
CORPUS = [
    "sum of 3 and 4 is 7",
    "what is the capital of France? Paris",
    "the cat sat on the mat",
    "Question: what is 12 plus 30?\nAnswer: 42",
    "rev abc = cba",
    "[INST] hello [/INST] hi",
    "seven plus eight is fifteen",
    "Paris Rome Berlin Madrid Lisbon Vienna",
] * 20


def sentencepiece_tokenizer(scheme: str = "llama2") -> PreTrainedTokenizerFast:
    """A Llama-2-style tokenizer: Unigram with SentencePiece's dummy prefix, BOS added by the
    post-processor, and a chat template that writes the BOS string itself.

    ``"llama2"``: the prefix comes from a normalizer, as in Llama-2's and Mistral's
    tokenizer.json (every text segment gets it, also one right after ``<s>``).
    ``"first"``: a ``Metaspace(prepend_scheme="first")`` pre-tokenizer instead, where the
    segment after a special token gets none: its template ids cannot come from any string.
    """
    tk = Tokenizer(models.Unigram())
    if scheme == "llama2":
        tk.normalizer = normalizers.Sequence(
            [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
        )
        tk.pre_tokenizer = pre_tokenizers.Split("▁", "merged_with_next")
    else:
        tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tk.train_from_iterator(
        CORPUS,
        trainers.UnigramTrainer(
            vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"], unk_token="<unk>"
        ),
    )
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
    )
    tok.chat_template = LLAMA2_TEMPLATE
    tok.padding_side = "left"
    return tok


@pytest.fixture(scope="module")
def sp_tok():
    return sentencepiece_tokenizer()


@pytest.fixture(scope="module")
def chat_char_tok(char_tokenizer):
    tok = copy.deepcopy(char_tokenizer)
    tok.chat_template = CHAR_TEMPLATE
    return tok


def template_ids(tok, prompt: str) -> list[int]:
    ids = tok.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=True, add_generation_prompt=True
    )
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    return list(ids)


PROMPTS = ["sum of 3 and 4 is", "what is the capital of France?"]


# ----------------------------------------------------------------------------- the rule
@pytest.mark.parametrize("which", ["sp", "char"])
def test_rendered_prompt_tokenizes_to_the_template_ids(which, sp_tok, chat_char_tok):
    tok = sp_tok if which == "sp" else chat_char_tok
    for p in PROMPTS:
        text = render_prompt(tok, p, True)
        assert tok(text)["input_ids"] == template_ids(tok, p)
        assert render_prompt(tok, p, False) == p
    if which == "sp":  # the template's leading "<s>" is dropped; the tokenizer adds BOS once
        assert not render_prompt(sp_tok, "hi", True).startswith("<s>")
        assert (
            sp_tok(render_prompt(sp_tok, "hi", True))["input_ids"].count(sp_tok.bos_token_id) == 1
        )


def test_a_tokenizer_whose_template_ids_no_string_gives_is_refused():
    tok = sentencepiece_tokenizer("first")
    task = Task("t", {"test": [Example("sum of 3 and 4 is", "7")]}, chat=True)
    with pytest.raises(
        ConfigError,
        match=r"tokenizes differently from its chat template's own ids \(first difference at token 1",
    ):
        render_task(task, tok)


def test_chat_without_a_template_is_refused(char_tokenizer):
    with pytest.raises(ConfigError, match="has no chat template"):
        render_prompt(char_tokenizer, "x", True)
    with pytest.raises(ConfigError, match="no chat template"):
        rk.evaluate(
            tiny_causal_lm("llama", vocab_size=len(char_tokenizer)),
            char_tokenizer,
            Task("t", {"test": [Example("ab", "c")]}, chat=True),
        )


def test_chat_example_target_is_the_assistant_turn(sp_tok):
    e = render_task(Task("t", {"test": [Example("what is 3 plus 4?", "7")]}, chat=True), sp_tok)
    ex = e.examples("test")[0]
    assert ex.prompt == render_prompt(sp_tok, "what is 3 plus 4?", True)
    assert ex.prompt + ex.target == render_example(sp_tok, "what is 3 plus 4?", "7").removeprefix(
        "<s>"
    )
    assert ex.target == " 7 </s>" and ex.meta["raw_prompt"] == "what is 3 plus 4?"
    assert render_task(e, sp_tok) is e  # rendering twice changes nothing


# ----------------------------------------------------------------------------- every path
class Recorder:
    """The real (unpadded) input ids of each forward call of ``model``."""

    def __init__(self, model) -> None:
        self.calls: list[list[list[int]]] = []
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if ids is None:
            return
        rows = (
            ids.tolist()
            if mask is None or mask.shape != ids.shape
            else [r[m.bool()].tolist() for r, m in zip(ids, mask)]
        )
        self.calls.append(rows)

    def first(self) -> list[list[int]]:
        out = self.calls[0]
        self.calls.clear()
        return out

    def close(self) -> None:
        self.handle.remove()


def check_every_path_renders_identically(tok, tmp_path, monkeypatch) -> None:
    """Each path's first forward (or its token rows) holds exactly the template's ids."""
    from routekit.compare.activations import hidden_states
    from routekit.routing.fewshot import fewshot_objective
    from routekit.training.rl import sample_rollout

    monkeypatch.setenv("ROUTEKIT_CACHE", str(tmp_path / "cache"))
    v = len(tok)
    torch.manual_seed(0)
    model = peaked(tiny_causal_lm("llama", vocab_size=v, seed=0))
    want = [template_ids(tok, p) for p in PROMPTS]
    task = Task(
        "t",
        {"train": [Example(p, "7") for p in PROMPTS], "test": [Example(p, "7") for p in PROMPTS]},
        chat=True,
    )
    rec = Recorder(model)
    try:
        rk.evaluate(model, tok, task, "test", max_new_tokens=2)
        assert rec.first() == want, "evaluate"
        rk.generate(model, tok, PROMPTS, chat=True, max_new_tokens=2)
        assert rec.first() == want, "generate"
        rows = sft_rows(tok, render_task(task, tok).examples("train"))
        assert [p for p, _ in rows] == want, "sft rows"
        r = sample_rollout(
            model,
            tok,
            render_task(task, tok),
            render_task(task, tok).examples("train"),
            [0, 1],
            step=0,
            seed=0,
            group_size=2,
            max_new_tokens=2,
            temperature=1.0,
        )
        rec.calls.clear()
        assert r.prompt_ids == [w for w in want for _ in range(2)], "rl rollout"
        from routekit.routing.classifier import hidden_features

        hidden_features(model, tok, PROMPTS, chat=True)
        assert rec.first() == want, "router features"
        pr = rk.PromptRouter(
            model,
            tok,
            ["e1"],
            classes={"x": "e1"},
            template="{prompt}",
            max_new_tokens=1,
            chat=True,
        )
        pr.route(PROMPTS)
        assert rec.first() == want, "prompt router"
        objective = fewshot_objective(
            model,
            tok,
            [],
            render_task(task, tok).examples("test"),
            task.check,
            loglik=False,
            apply_mixture=lambda *a, **k: _null(),
        )
        import numpy as np

        objective(np.zeros((1, 0)))
        assert rec.first() == want, "few-shot router"
        hidden_states(model, tok, render_task(task, tok).prompts("test"))
        assert rec.first() == want, "compare activations"
        # the trainer: its first forward is the SFT batch, the prompt part of each row
        rk.train(
            model,
            tok,
            task,
            steps=1,
            batch_size=2,
            lr=1e-3,
            progress=False,
            parameterization="full",
            eval_every=0,
        )
        trained = {tuple(p + a) for p, a in rows}
        assert {tuple(g) for g in rec.calls[0]} == trained, "trainer"
    finally:
        rec.close()
    # AdaptiveModel and the proxy processor: base and proxy models read the same ids
    base = peaked(tiny_causal_lm("llama", vocab_size=v, seed=0))
    tuned = peaked(tiny_causal_lm("llama", vocab_size=v, seed=2, hidden=16))
    untuned = peaked(tiny_causal_lm("llama", vocab_size=v, seed=1, hidden=16))
    proxy = rk.ProxyExpert(tuned, untuned, "p1", tokenizer=tok)
    recs = [Recorder(m) for m in (base, tuned, untuned)]
    # Sequential: on an idle multi-core CPU the automatic mode forks a worker for the proxy
    # models, whose forwards the parent's hooks cannot see. Every mode reads the same ids
    # (tests/test_proxy.py checks the scores equal bit for bit).
    from routekit.proxy import proxy_concurrency

    try:
        with proxy_concurrency(False):
            rk.proxy_generate(
                base, tok, [proxy], PROMPTS, 1.0, chat=True, max_new_tokens=2, concurrent=False)
            assert [r.first() for r in recs] == [want] * 3, "proxy"
            am = rk.AdaptiveModel(
                base, tok, [proxy], rk.FixedRouter([proxy], {"p1": 1.0}), chat=True)
            am.generate(PROMPTS, max_new_tokens=2)
            assert [r.first() for r in recs] == [want] * 3, "AdaptiveModel"
    finally:
        for r in recs:
            r.close()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


@pytest.mark.parametrize("which", ["sp", "char"])
def test_every_path_renders_a_prompt_identically(
    which, sp_tok, chat_char_tok, tmp_path, monkeypatch
):
    check_every_path_renders_identically(
        sp_tok if which == "sp" else chat_char_tok, tmp_path, monkeypatch
    )


def test_adaptive_model_refuses_a_router_of_another_chat_setting(chat_char_tok):
    v = len(chat_char_tok)
    base = tiny_causal_lm("llama", vocab_size=v)
    proxy = rk.ProxyExpert(
        tiny_causal_lm("llama", vocab_size=v, seed=2, hidden=16),
        tiny_causal_lm("llama", vocab_size=v, seed=1, hidden=16),
        "p1",
        tokenizer=chat_char_tok,
    )
    router = rk.PromptRouter(base, chat_char_tok, [proxy], classes={"x": "p1"}, chat=False)
    with pytest.raises(
        ConfigError, match="chat=True but the PromptRouter reads prompts with chat=False"
    ):
        rk.AdaptiveModel(base, chat_char_tok, [proxy], router, chat=True)


# ----------------------------------------------------------------------------- joined SFT rows
def old_sft_rows(tok, examples):
    """The rows SFT trained on before (prompt and answer tokenised separately), kept here as
    the reference world tasks must still match."""
    rows = []
    for e in examples:
        ans = list(tok(e.continuation, add_special_tokens=False)["input_ids"])
        if tok.eos_token_id is not None:
            ans.append(int(tok.eos_token_id))
        rows.append((list(tok(e.prompt, add_special_tokens=True)["input_ids"]), ans))
    return rows


def test_world_char_rows_are_unchanged(char_tokenizer):
    from routekit.world.tasks import world_task

    for name in ("add", "rev", "hop", "facts"):
        examples = world_task(name).examples("train")[:40]
        assert sft_rows(char_tokenizer, examples) == old_sft_rows(char_tokenizer, examples), name


def test_sentencepiece_rows_equal_the_generation_tokenisation(sp_tok):
    examples = [
        Example("sum of 3 and 4 is ", "7"),
        Example("Answer:", "42", target="42"),
        Example("the cat sat on", "the mat"),
        Example("what is 12 plus 30?", "42"),
    ]
    eos = sp_tok.eos_token_id
    differs = 0
    for e in examples:
        p, a = sft_row(sp_tok, e)
        # the row is the joined text as the tokenizer reads it, then EOS
        assert p + a == sp_tok(e.prompt + e.continuation)["input_ids"] + [eos]
        assert sp_tok.decode(a, skip_special_tokens=True).strip() == e.continuation.strip()
        assert p == encode_prompt(sp_tok, e.prompt)[: len(p)]
        differs += old_sft_rows(sp_tok, [e])[0] != (p, a)
    # the dummy prefix made the separate tokenisation differ somewhere (the reason for this)
    assert differs >= 1
    # chat: the assistant turn, cut after the end-of-turn token (here EOS)
    task = render_task(Task("t", {"train": examples}, chat=True), sp_tok)
    for e in task.examples("train"):
        p, a = sft_row(sp_tok, e)
        assert a[-1] == eos and a.count(eos) == 1
        assert p + a == sp_tok(e.prompt + e.target)["input_ids"]
        assert p == sp_tok(e.prompt)["input_ids"][: len(p)]


# ----------------------------------------------------------------------------- options
def _write(path: Path, recs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def test_task_spec_options_reach_the_task(tmp_path):
    f = _write(
        tmp_path / "d.jsonl",
        [{"q": "2+2", "a": "4", "split": "test"}, {"q": "3+3", "a": "6", "split": "train"}],
    )
    task = get_task(
        {
            "path": f"jsonl:{f}",
            "prompt_key": "q",
            "answer_key": "a",
            "template": "Q: {question} =",
            "checker": "exact",
            "chat": True,
            "name": "sums",
        }
    )
    assert task.name == "sums" and task.chat
    assert task.prompts("test") == ["Q: 2+2 ="] and task.references("train") == ["6"]
    assert task.check("4", "4") and not task.check("it is 4", "4")  # exact, not answer
    assert (
        get_task({"path": str(f), "prompt_key": "q", "answer_key": "a"}, chat=False).chat is False
    )
    with pytest.raises(ConfigError, match="promptkey"):
        get_task({"path": str(f), "promptkey": "q"})
    with pytest.raises(ConfigError, match="unknown checker 'lenient'"):
        get_task({"path": str(f), "checker": "lenient"})
    with pytest.raises(RoutekitError, match=r"lacks \['question', 'answer'\]"):
        TaskSpec(path=str(f)).load()


def test_cli_task_flags_and_chat(tmp_path, capsys, monkeypatch):
    from routekit.cli import main

    tok_dir = tmp_path / "m"
    from routekit.world.tokenizer import build_tokenizer

    tok = build_tokenizer()
    tok.chat_template = CHAR_TEMPLATE
    model = tiny_causal_lm("llama", vocab_size=len(tok))
    model.save_pretrained(tok_dir)
    tok.save_pretrained(tok_dir)
    f = _write(tmp_path / "d.jsonl", [{"q": "ab", "a": "c"}, {"q": "ba", "a": "d"}])
    code = main(
        [
            "eval",
            "--model",
            str(tok_dir),
            "--task",
            f"jsonl:{f}",
            "--prompt-key",
            "q",
            "--answer-key",
            "a",
            "--template",
            "{question}",
            "--checker",
            "exact",
            "--chat",
            "--json",
            "--max-new-tokens",
            "2",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["chat"] is True and out["n"] == 2
    assert out["model_fingerprint"] == rk.io.model_fingerprint(model)
    # the same through the library, as an independent reference
    m, t = rk.load_model(tok_dir)
    ref = rk.evaluate(
        m,
        t,
        jsonl_task(
            f, prompt_key="q", answer_key="a", template="{question}", checker="exact", chat=True
        ),
        max_new_tokens=2,
    )
    assert out["accuracy"] == ref.accuracy
    assert main(["eval", "--model", str(tok_dir), "--task", "add", "--prompt-key", "q"]) == 2
    assert "--prompt-key apply to jsonl:PATH and hf:PATH tasks only" in capsys.readouterr().err


def test_recipe_task_mapping_and_chat(tmp_path):
    from routekit.training import TrainConfig
    from routekit.training.recipe import resolve_task

    f = _write(tmp_path / "d.jsonl", [{"question": "x", "answer": "y"}])
    cfg = TrainConfig(
        model=str(tmp_path), task={"path": f"jsonl:{f}", "template": "{question}"}, chat=True
    )
    task = resolve_task(cfg)
    assert task.chat and task.prompts("test") == ["x"]
    assert TrainConfig.model_validate(cfg.model_dump(mode="json")).task == cfg.task


def test_real_tasks_by_name(tmp_path):
    from routekit.real.tasks import real_task, real_task_names

    data = FIXTURES / "real"
    task = real_task("capitals", data_dir=data, checker="answer")
    assert task.chat and task.name == "capitals"
    records = [json.loads(x) for x in (data / "capitals.jsonl").read_text().splitlines()]
    assert task.prompts("test") == [r["question"] for r in records if r["split"] == "test"]
    assert task.references("train") == [r["answer"] for r in records if r["split"] == "train"]
    assert real_task_names(data) == ["capitals"]
    with pytest.raises(UnknownTaskError, match=r"unknown real task 'nope'.*real:capitals"):
        real_task("nope", data_dir=data)
    with pytest.raises(UnknownTaskError, match="unknown real task 'nope'"):
        get_task("real:nope")


# ----------------------------------------------------------------------------- MoE
def test_svf_refuses_mixture_of_experts_layers(tmp_path):
    mix = MixtralForCausalLM(
        MixtralConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_local_experts=4,
            num_experts_per_tok=2,
        )
    )
    cfg = rk.SVFConfig(cache_dir=str(tmp_path))
    with pytest.raises(
        ConfigError,
        match=r"fused mixture-of-experts weights \(model\.layers\.0\.mlp\.experts\.gate_up_proj",
    ):
        rk.get_svf_model(mix, cfg)
    qwen = Qwen2MoeForCausalLM(
        Qwen2MoeConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_experts=4,
            num_experts_per_tok=2,
        )
    )
    with pytest.raises(ConfigError, match="SVF does not support"):
        rk.get_svf_model(qwen, cfg)
    # dense layers named explicitly are fine: the shared expert sees every row
    from routekit.svf import svf_layers

    rk.get_svf_model(
        qwen, rk.SVFConfig(target_modules=["shared_expert.up_proj"], cache_dir=str(tmp_path))
    )
    assert list(svf_layers(qwen)) == ["model.layers.0.mlp.shared_expert.up_proj"]
    # a per-expert linear (older layouts: experts.N.w1) is refused by path
    from routekit.svf.config import resolve_targets

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.experts = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(2)])

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = Block()

    with pytest.raises(ConfigError, match=r"expert layers \(mlp\.experts\.0.*routed tokens"):
        resolve_targets(M(), "mlp")
