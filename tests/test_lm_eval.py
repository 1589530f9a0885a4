"""routekit as an lm-evaluation-harness model: lm-eval's numbers equal routekit's own.

- generate_until: lm-eval's exact_match (with the shipped filter settings) equals
  routekit.evaluate's answer checker per prompt, and the extraction differences are the
  documented ones;
- loglikelihood equals routekit.compare's answer_loglik (and a plain forward) within 1e-5,
  for the base, an SVF mixture and a proxy expert;
- a batch routed to two experts gives each request what it gives alone, in one forward /
  one generate per batch;
- bad model_args, experts of another base and a router for other experts are refused
  before any request; everything offline, from local files.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("lm_eval")

import routekit as rk  # noqa: E402
from routekit import cli  # noqa: E402
from routekit.compare.metrics import answer_loglik  # noqa: E402
from routekit.errors import ConfigError, FingerprintMismatchError  # noqa: E402
from routekit.lm_eval import RoutekitLM, export_jsonl, run_tasks  # noqa: E402
from routekit.lm_eval import model as lm_model  # noqa: E402
from routekit.models import load_model  # noqa: E402
from routekit.routing import FixedRouter, Mixture, Router  # noqa: E402
from routekit.tasks.base import Example, Task  # noqa: E402
from routekit.tasks.checkers import answer_match, extract_answer  # noqa: E402
from routekit.world.config import WorldConfig  # noqa: E402
from routekit.world.tasks import world_task  # noqa: E402

from .conftest import peaked, tiny_causal_lm, two_kinds_of_experts  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes" / "lm_eval"


class _Request:
    """What lm-eval hands a model: an Instance's ``args``."""

    def __init__(self, *args):
        self.args = args


@pytest.fixture(scope="module")
def tiny(char_tokenizer):
    return load_model(
        peaked(tiny_causal_lm("llama", vocab_size=len(char_tokenizer))), char_tokenizer
    )


@pytest.fixture(scope="module")
def kinds(tmp_path_factory, char_tokenizer):
    return two_kinds_of_experts(char_tokenizer, tmp_path_factory.mktemp("svf"))


def _samples(results, task):
    return sorted(results["samples"][task], key=lambda s: s["doc_id"])


def _local_task(tmp_path, name, template, examples):
    """A dataset_path: json task over ``examples`` with the shipped template's settings."""
    export_jsonl(Task(name, {"test": examples}), tmp_path / f"{name}.jsonl")
    (tmp_path / f"{name}.yaml").write_text(
        f"include: {RECIPES / template}\ntask: {name}\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files: {tmp_path / f'{name}.jsonl'}\ntest_split: train\n"
    )


# ----- generate_until: exact_match equals routekit.evaluate ---------------------------------
def _last_number(text):
    nums = re.findall(r"-?\d+(?:\.\d+)?", extract_answer(text).replace(",", ""))
    return nums[-1] if nums else None


@pytest.mark.parametrize(
    "skill,template", [("rev", "_routekit_text.yaml"), ("add", "_routekit_number.yaml")]
)
def test_exact_match_equals_routekit_evaluate_per_prompt(tiny, tmp_path, skill, template):
    """On a tiny random Llama, references are half the model's own answers (so some prompts
    are right) and half the world's: lm-eval's exact_match agrees with routekit's answer
    checker on every prompt, and their accuracies are equal."""
    model, tok = tiny
    source = world_task(skill, WorldConfig.tiny()).examples("test")
    base = rk.evaluate(model, tok, Task("probe", {"test": source}), max_new_tokens=16)
    examples = []
    for i, (e, c) in enumerate(zip(source, base.completions)):
        own = _last_number(c) if skill == "add" else extract_answer(c)
        ref = own if i % 2 == 0 and own else e.reference
        examples.append(Example(e.prompt, ref.upper() if i % 4 == 0 else ref))
    task = Task(f"t_{skill}", {"test": examples}, answer_match)
    ours = rk.evaluate(model, tok, task, max_new_tokens=16, batch_size=64)
    assert 0 < sum(ours.correct) < len(ours.correct)  # a comparison with both outcomes
    _local_task(tmp_path, f"t_{skill}", template, examples)
    lm = RoutekitLM(model=model, tokenizer=tok, batch_size=7)  # ragged batches
    results = run_tasks(
        [f"t_{skill}"], lm, include_path=[tmp_path], include_defaults=False, log_samples=True
    )
    samples = _samples(results, f"t_{skill}")
    assert [s["resps"][0][0] for s in samples] == ours.completions
    assert [bool(s["exact_match"]) for s in samples] == ours.correct
    assert results["results"][f"t_{skill}"]["exact_match,answer"] == pytest.approx(ours.accuracy)


def _shipped_check(template, completion, reference):
    """The shipped template's filter and exact_match settings, applied by lm-eval's code."""
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    cfg = yaml.safe_load((RECIPES / template).read_text())
    regex = cfg["filter_list"][0]["filter"][0]
    filtered = RegexFilter(regex["regex_pattern"], fallback=regex["fallback"]).apply(
        [[completion]], [{}]
    )[0][0]
    options = {
        k: v
        for k, v in cfg["metric_list"][0].items()
        if k not in ("metric", "aggregation", "higher_is_better")
    }
    return bool(exact_match_hf_evaluate([filtered], [reference], **options)["exact_match"])


@pytest.mark.parametrize(
    "template,completion,reference",
    [
        ("_routekit_text.yaml", "= Pako.\nmore", "pako"),
        ("_routekit_text.yaml", "  \nthe answer is Ruto", "ruto"),
        ("_routekit_text.yaml", "A: new  york", "new york"),
        ("_routekit_text.yaml", "=\nruto", "ruto"),  # the first line is empty after '='
        ("_routekit_text.yaml", "ruto lasa", "ruto"),
        ("_routekit_number.yaml", "= 15", "15"),
        ("_routekit_number.yaml", "so it is 55 apples\n12", "55"),
        ("_routekit_number.yaml", "055", "55"),
        ("_routekit_number.yaml", "1,000", "1000"),
        ("_routekit_number.yaml", "no number here", "3"),
        ("_routekit_number.yaml", "-7", "7"),
    ],
)
def test_shipped_extraction_agrees_with_routekit_answer_checker(template, completion, reference):
    assert _shipped_check(template, completion, reference) == answer_match(completion, reference)


@pytest.mark.parametrize(
    "template,completion,reference,lm_eval_says,routekit_says",
    [
        # lm-eval ignores every punctuation mark; routekit keeps '-' and '.' inside answers
        ("_routekit_text.yaml", "a-b", "ab", True, False),
        # routekit compares numbers by value, lm-eval as text
        ("_routekit_number.yaml", "15.0", "15", False, True),
        # routekit answers GSM8K-style text with what follows the last '####'
        ("_routekit_text.yaml", "so\n#### ruto", "ruto", False, True),
    ],
)
def test_extraction_differences_are_the_documented_ones(
    template, completion, reference, lm_eval_says, routekit_says
):
    assert _shipped_check(template, completion, reference) is lm_eval_says
    assert answer_match(completion, reference) is routekit_says


# ----- loglikelihood equals routekit.compare's answer_loglik --------------------------------
def _plain_loglik(model, tok, prompt, continuation):
    """log p(continuation | prompt) and is_greedy from one unpadded forward."""
    p = tok(prompt)["input_ids"]
    c = tok(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)[0, len(p) - 1 : -1]
    target = torch.tensor(c)
    return float(logp.gather(-1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all())


def test_loglikelihood_task_equals_answer_loglik(tiny):
    """The shipped facts log-likelihood task, through lm-eval's request building: each
    answer's log-likelihood equals answer_loglik (1e-5) and a plain forward; acc is greedy."""
    model, tok = tiny
    facts = world_task("facts", WorldConfig()).examples("test")
    lm = RoutekitLM(model=model, tokenizer=tok, batch_size=5)
    results = run_tasks(
        ["routekit_world_facts_loglik"], lm, include_defaults=False, log_samples=True
    )
    samples = _samples(results, "routekit_world_facts_loglik")
    ref = answer_loglik(model, tok, facts, batch_size=64)
    assert len(samples) == len(facts)
    got = [s["resps"][0][0] for s in samples]
    assert [s["arguments"][0][1] for s in samples] == [e.continuation for e in facts]
    assert [g[0] for g in got] == pytest.approx(list(ref.sums), abs=1e-5)
    for e, (ll, greedy) in list(zip(facts, got))[:6]:
        plain_ll, plain_greedy = _plain_loglik(model, tok, e.prompt, e.continuation)
        assert ll == pytest.approx(plain_ll, abs=1e-4) and greedy == plain_greedy


def test_loglikelihood_under_svf_and_proxy_experts(kinds):
    """An SVF expert's log-likelihoods are answer_loglik inside rk.mixture; a proxy expert's
    are proxy-tuning's renormalised distribution, checked against a hand computation."""
    tok, base = kinds["tok"], kinds["base"]
    pairs = [("backwards abc:", " cba"), ("sum of 3 and 4 is", " 7"), ("q: who? a:", " ruto")]
    requests = [_Request(c, x) for c, x in pairs]
    examples = [Example(c, x.strip(), target=x) for c, x in pairs]
    svf = RoutekitLM(model=base, tokenizer=tok, experts=[kinds["s1"]], mixture={"s1": 0.7})
    with rk.mixture(base, [kinds["s1"]], 0.7):
        ref = answer_loglik(base, tok, examples)
    assert [ll for ll, _ in svf.loglikelihood(requests)] == pytest.approx(list(ref.sums), abs=1e-5)

    p1 = kinds["p1"]
    proxy = RoutekitLM(model=base, tokenizer=tok, experts=[p1], mixture=0.5)
    got = [ll for ll, _ in proxy.loglikelihood(requests)]
    for (c, x), ll in zip(pairs, got):
        ids = torch.tensor([tok(c)["input_ids"] + tok(x, add_special_tokens=False)["input_ids"]])
        n = len(tok(c)["input_ids"])
        with torch.no_grad():
            lp = [
                torch.log_softmax(m(input_ids=ids).logits.float(), -1)
                for m in (base, p1.tuned, p1.untuned)
            ]
        steered = torch.log_softmax(lp[0] + 0.5 * (lp[1] - lp[2]), -1)[0, n - 1 : -1]
        want = float(steered.gather(-1, ids[0, n:, None]).sum())
        assert ll == pytest.approx(want, abs=1e-5)
    plain = RoutekitLM(model=base, tokenizer=tok).loglikelihood(requests)
    assert all(abs(a[0] - b[0]) > 1e-3 for a, b in zip(plain, proxy.loglikelihood(requests)))


def test_loglikelihood_rolling_equals_text_scoring(tiny):
    """A text longer than the model's 128 positions is scored in lm-eval's rolling windows;
    a short one equals the sum of its tokens' log-probs after BOS."""
    model, tok = tiny
    lm = RoutekitLM(model=model, tokenizer=tok)
    short, long = "backwards abc: cba", "sum of 12 and 30 is 42. " * 12
    got_short, got_long = lm.loglikelihood_rolling([_Request(short), _Request(long)])
    ids = [tok.bos_token_id] + tok(short, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits.float(), -1)[0, :-1]
    assert got_short == pytest.approx(
        float(lp.gather(-1, torch.tensor(ids[1:])[:, None]).sum()), abs=1e-4
    )
    n = len(tok(long, add_special_tokens=False)["input_ids"])
    assert n > 128 and got_long < 0 and torch.isfinite(torch.tensor(got_long))


# ----- a mixed batch: each request as alone -------------------------------------------------
class _ByPrefix(Router):
    """Routes 'backwards' prompts to one expert and every other prompt to another."""

    kind = "test-by-prefix"

    def __init__(self, experts, first, second):
        super().__init__(experts)
        self.first, self.second = first, second

    def route(self, prompts):
        return [
            Mixture(weights={self.first if p.startswith("backwards") else self.second: 1.0})
            for p in prompts
        ]


@pytest.mark.parametrize("pair", [("s1", "s2"), ("s1", "p1")], ids=["svf+svf", "svf+proxy"])
def test_mixed_batch_gives_each_request_what_it_gives_alone(kinds, pair, monkeypatch):
    tok, base = kinds["tok"], kinds["base"]
    experts = [kinds[n] for n in pair]
    prompts = [
        "backwards abc:",
        "sum of 3 and 4 is",
        "backwards xyz:",
        "country of pako?",
        "backwards lno:",
        "q: where does pako live? a:",
    ]
    gen = [_Request(p, {"until": ["\n"], "max_gen_toks": 8}) for p in prompts]
    ll = [_Request(p, " ab") for p in prompts]
    mixed = RoutekitLM(
        model=base,
        tokenizer=tok,
        experts=experts,
        router=_ByPrefix(experts, *pair),
        batch_size=len(prompts),
    )
    calls = {"generate": 0, "forward": 0}
    real_generate = lm_model.generate

    def counting(*a, **k):
        calls["generate"] += 1
        return real_generate(*a, **k)

    monkeypatch.setattr(lm_model, "generate", counting)
    hook = base.register_forward_hook(lambda *_: calls.__setitem__("forward", calls["forward"] + 1))
    try:
        together_ll = mixed.loglikelihood(ll)
        assert calls["forward"] == 1  # the whole batch in one forward
        together = mixed.generate_until(gen)
        assert calls["generate"] == 1  # and in one generate call
    finally:
        hook.remove()
    alone = []
    alone_ll = []
    for p, g, q in zip(prompts, gen, ll):
        solo = RoutekitLM(
            model=base,
            tokenizer=tok,
            experts=experts,
            mixture={_ByPrefix(experts, *pair).route([p])[0].names[0]: 1.0},
            batch_size=1,
        )
        alone += solo.generate_until([g])
        alone_ll += solo.loglikelihood([q])
    assert together == alone
    assert [x for x, _ in together_ll] == pytest.approx([x for x, _ in alone_ll], abs=1e-5)
    plain = RoutekitLM(model=base, tokenizer=tok).generate_until(gen)
    first = [t for p, t, b in zip(prompts, together, plain) if p.startswith("backwards")]
    assert first != [b for p, b in zip(prompts, plain) if p.startswith("backwards")]


# ----- bad input, before any request ---------------------------------------------------------
def test_unknown_model_arg_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"\['colour'\]"):
        RoutekitLM.create_from_arg_string("model=world,colour=red")


def test_bad_arguments_are_refused(tiny, kinds):
    model, tok = tiny
    with pytest.raises(ConfigError, match="batch_size"):
        RoutekitLM(model=model, tokenizer=tok, batch_size="auto")
    with pytest.raises(ConfigError, match="need a router= directory or a fixed mixture="):
        RoutekitLM(model=kinds["base"], tokenizer=kinds["tok"], experts=[kinds["s1"]])
    with pytest.raises(ConfigError, match="NAME=WEIGHT"):
        RoutekitLM(
            model=kinds["base"], tokenizer=kinds["tok"], experts=[kinds["s1"]], mixture="s1:0.5"
        )
    lm = RoutekitLM(model=model, tokenizer=tok)
    with pytest.raises(ConfigError, match="top_k"):
        lm.generate_until([_Request("abc", {"until": [], "top_k": 5})])


def test_experts_of_another_base_are_refused(kinds):
    tok = kinds["tok"]
    other = peaked(tiny_causal_lm("llama", vocab_size=len(tok), seed=5))  # not s1's base
    with pytest.raises(FingerprintMismatchError, match="expert 's1' was trained on base"):
        RoutekitLM(model=other, tokenizer=tok, experts=[kinds["s1"]], mixture=1.0)


def test_router_made_for_other_experts_is_refused(kinds, tmp_path):
    tok, base = kinds["tok"], kinds["base"]
    FixedRouter([kinds["s1"], kinds["s2"]], {"s1": 1.0}).save_pretrained(tmp_path / "router")
    kinds["s1"].save_pretrained(tmp_path / "s1")
    with pytest.raises(FingerprintMismatchError, match=r"\['s1', 's2'\]"):
        RoutekitLM(
            model=base, tokenizer=tok, experts=str(tmp_path / "s1"), router=str(tmp_path / "router")
        )


def test_expert_directories_and_mixture_string_round_trip(kinds, tmp_path):
    """experts= as ':'-separated directories and mixture= as NAME=W items give what the
    loaded experts give."""
    tok, base = kinds["tok"], kinds["base"]
    kinds["s1"].save_pretrained(tmp_path / "s1")
    kinds["p1"].save_pretrained(tmp_path / "p1", base_tokenizer=tok)
    from_dirs = RoutekitLM(
        model=base,
        tokenizer=tok,
        experts=f"{tmp_path / 's1'}:{tmp_path / 'p1'}",
        mixture="s1=1.0:p1=0.5",
    )
    loaded = RoutekitLM(
        model=base,
        tokenizer=tok,
        experts=[kinds["s1"], kinds["p1"]],
        mixture={"s1": 1.0, "p1": 0.5},
    )
    reqs = [_Request("backwards abc:", {"until": [], "max_gen_toks": 8})]
    assert from_dirs.generate_until(reqs) == loaded.generate_until(reqs)


def test_cli_refuses_with_one_line(capsys):
    code = cli.main(
        [
            "eval",
            "--model",
            "world",
            "--lm-eval",
            "routekit_world_rev",
            "--model-args",
            "colour=red",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "colour" in err and err.startswith("routekit: error:")


# ----- the command lines, offline -------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_tiny(tiny, tmp_path_factory):
    model, tok = tiny
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _offline_env():
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
    }


def test_routekit_eval_lm_eval_prints_the_table_routekit_computes(tiny, saved_tiny, capsys):
    """``routekit eval --lm-eval`` on a saved checkpoint prints lm-eval's table, whose
    exact_match equals routekit.evaluate on the same prompts (the world rev test split)."""
    model, tok = tiny
    code = cli.main(
        [
            "eval",
            "--model",
            str(saved_tiny),
            "--lm-eval",
            "routekit_world_rev",
            "--json",
            "--batch-size",
            "16",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ours = rk.evaluate(model, tok, world_task("rev", WorldConfig()), max_new_tokens=16)
    got = out["results"]["routekit_world_rev"]["exact_match,answer"]
    assert got == pytest.approx(ours.accuracy)


@pytest.mark.slow
def test_python_m_routekit_lm_eval_runs_lm_evals_own_cli_offline(
    saved_tiny, tmp_path, monkeypatch, capsys
):
    """lm-eval 0.4 has no plugin entry point for models: ``python -m routekit.lm_eval``
    registers --model routekit and runs lm-eval's own command line, with no hub access, and
    a bad model_arg ends it with routekit's one-line error. (Slow: lm-eval's CLI indexes its
    14,000 task files, about 20 s here.)"""
    args = [
        "run",
        "--model",
        "routekit",
        "--model_args",
        f"model={saved_tiny},batch_size=8",
        "--tasks",
        "routekit_world_facts_loglik",
        "--include_path",
        str(RECIPES),
        "--limit",
        "6",
        "--output_path",
        str(tmp_path / "out"),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "routekit.lm_eval", *args],
        capture_output=True,
        text=True,
        env=_offline_env(),
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"routekit_world_facts_loglik\s*\|.*\|acc\s*\|", done.stdout), done.stdout

    from routekit.lm_eval.__main__ import main

    args[4] = "model=world,colour=red"
    monkeypatch.setattr(sys, "argv", ["routekit.lm_eval", *args])
    assert main() == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("routekit: error: unknown model_args key(s) ['colour']")


# ----- the world's tiny model ------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_world_model(tiny_world_built):
    """The CI-sized world, built once per session (conftest.tiny_world_built)."""
    from routekit import world

    cache, _ = tiny_world_built
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROUTEKIT_CACHE", str(cache))
        yield world.load(WorldConfig.tiny(), build_if_missing=False)


@pytest.mark.slow
def test_world_tiny_model_lm_eval_equals_routekit(tiny_world_model, tmp_path):
    """On the trained tiny world, with the world's own references: lm-eval's exact_match
    equals routekit.evaluate per prompt on every skill, and the probes' log-likelihoods equal
    answer_loglik."""
    model, tok = tiny_world_model
    lm = RoutekitLM(model=model, tokenizer=tok, batch_size=16)
    accuracies = {}
    for skill, template in (
        ("rev", "_routekit_text.yaml"),
        ("hop", "_routekit_text.yaml"),
        ("add", "_routekit_number.yaml"),
    ):
        task = world_task(skill, WorldConfig.tiny())
        ours = rk.evaluate(model, tok, task, max_new_tokens=16)
        _local_task(tmp_path, f"w_{skill}", template, task.examples("test"))
        results = run_tasks(
            [f"w_{skill}"], lm, include_path=[tmp_path], include_defaults=False, log_samples=True
        )
        samples = _samples(results, f"w_{skill}")
        assert [bool(s["exact_match"]) for s in samples] == ours.correct, skill
        accuracies[skill] = ours.accuracy
    assert any(0 < a < 1 for a in accuracies.values()), accuracies
    facts = world_task("facts", WorldConfig.tiny()).examples("test")
    got = lm.loglikelihood([_Request(e.prompt, e.continuation) for e in facts])
    ref = answer_loglik(model, tok, facts)
    assert [ll for ll, _ in got] == pytest.approx(list(ref.sums), abs=1e-5)


def test_chat_renders_every_context_through_the_template(tiny):
    """chat=true: a context is scored and completed as one user turn of the chat template,
    exactly as routekit scores and generates the rendered prompt; no template is refused."""
    import copy

    model, tok = tiny
    with pytest.raises(ConfigError, match="no chat template"):
        RoutekitLM(model=model, tokenizer=tok, chat=True).generate_until(
            [_Request("abc", {"until": []})]
        )
    chat_tok = copy.deepcopy(tok)
    chat_tok.chat_template = (
        "{% for m in messages %}user: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    lm = RoutekitLM(model=model, tokenizer=chat_tok, chat=True)
    context = "backwards abc:"
    rendered = "user: backwards abc:\nassistant:"
    ref = answer_loglik(model, chat_tok, [Example(rendered, "cba", target=" cba")])
    assert lm.loglikelihood([_Request(context, " cba")])[0][0] == pytest.approx(
        ref.sums[0], abs=1e-5
    )
    want = rk.generate(model, chat_tok, [rendered], max_new_tokens=8)
    assert lm.generate_until([_Request(context, {"until": [], "max_gen_toks": 8})]) == want
