"""Routing: Mixture validation and alpha tables, the routers, their files, and the searches."""

from __future__ import annotations

import contextlib
import json
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from routekit.errors import ConfigError, ExpertFileError, FingerprintMismatchError, MixtureError
from routekit.io import model_fingerprint
from routekit.routing import (
    ClassifierRouter,
    FixedRouter,
    Mixture,
    PromptRouter,
    alpha_table,
    hidden_features,
    load_router,
)
from routekit.routing import prompt as prompt_module
from routekit.routing.classifier import CENTROID_SCALE
from routekit.routing.fewshot import FewShotRouter, fewshot_objective
from routekit.routing.search import cem_search, cmaes_search
from routekit.tasks.base import Example, Task
from tests.conftest import tiny_causal_lm

NAMES = ["add", "rev", "hop"]


def fake_experts(names=NAMES, fp=None):
    """Stand-ins for experts: a router only needs their names (and base fingerprint)."""
    return [SimpleNamespace(name=n, base_fingerprint=fp) for n in names]


# ----------------------------------------------------------------------------- Mixture
@pytest.mark.parametrize("bad,shown", [
    (float("nan"), "nan"), (float("inf"), "inf"), (-float("inf"), "-inf"), (-0.5, "-0.5"),
    ("0.3", "'0.3'"), (True, "True"), ([0.1, float("nan")], "nan"),
])
def test_mixture_refuses_bad_weights_naming_the_value(bad, shown):
    with pytest.raises(MixtureError) as e:
        Mixture(weights={"rev": bad})
    assert shown in str(e.value) and "'rev'" in str(e.value)


def test_mixture_negative_weights_only_when_allowed():
    m = Mixture(weights={"rev": -0.5, "add": 1.0}, allow_negative=True)
    assert m.weights == {"rev": -0.5, "add": 1.0}
    with pytest.raises(MixtureError, match="-0.5"):
        Mixture(weights={"rev": -0.5, "add": 1.0})


def test_mixture_unknown_names_refused():
    m = Mixture(weights={"rev": 1.0, "sing": 0.5})
    with pytest.raises(MixtureError) as e:
        m.check(NAMES)
    assert "'sing'" in str(e.value) and "rev" in str(e.value)
    with pytest.raises(MixtureError, match="sing"):
        alpha_table([m], NAMES)


def test_empty_and_zero_mixtures_are_the_base():
    assert Mixture().is_base and Mixture.base().is_base
    assert Mixture(weights={"rev": 0.0, "add": (0.0, 0.0)}).is_base
    assert not Mixture(weights={"rev": 0.25}).is_base
    assert torch.equal(alpha_table([Mixture()], NAMES), torch.zeros(1, 3))


def test_alpha_table_matches_a_hand_built_table():
    ms = [Mixture(weights={"rev": 1.0}), Mixture(), Mixture(weights={"hop": 0.25, "add": 0.75})]
    want = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.75, 0.0, 0.25]])
    assert torch.equal(alpha_table(ms, NAMES), want)
    # per-layer weights: the table gains a layer axis; scalar weights repeat over layers
    ms.append(Mixture(weights={"add": (0.1, 0.2), "rev": 0.5}))
    t = alpha_table(ms, NAMES)
    assert t.shape == (4, 3, 2)
    assert torch.equal(t[:3], want[:, :, None].expand(3, 3, 2))
    assert torch.equal(t[3], torch.tensor([[0.1, 0.2], [0.5, 0.5], [0.0, 0.0]]))
    with pytest.raises(MixtureError, match="different layer counts"):
        alpha_table([*ms, Mixture(weights={"add": (0.1, 0.2, 0.3)})], NAMES)


def test_mixture_round_trips_through_json():
    m = Mixture(weights={"add": (0.1, 0.2), "rev": 0.5}, allow_negative=False)
    again = Mixture.model_validate(json.loads(m.model_dump_json()))
    assert again == m


# ----------------------------------------------------------------------------- FixedRouter
def test_fixed_router_routes_every_prompt_and_round_trips(tmp_path):
    r = FixedRouter(fake_experts(fp="base-fp-1"), {"rev": 1.0, "hop": 0.5})
    out = r.route(["a", "b"])
    assert out == [Mixture(weights={"rev": 1.0, "hop": 0.5})] * 2
    r.save_pretrained(tmp_path / "r")
    again = load_router(tmp_path / "r", experts=fake_experts(fp="base-fp-1"))
    assert isinstance(again, FixedRouter) and again.route(["x"]) == out[:1]
    assert again.base_fingerprint == "base-fp-1"


def test_fixed_router_refuses_unknown_expert_and_bad_weight():
    with pytest.raises(MixtureError, match="sing"):
        FixedRouter(fake_experts(fp="base-fp-1"), {"sing": 1.0})
    with pytest.raises(MixtureError, match="nan"):
        FixedRouter(fake_experts(fp="base-fp-1"), {"rev": float("nan")})
    with pytest.raises(ConfigError, match="at least one expert"):
        FixedRouter([], {})


def test_router_file_for_other_experts_or_base_is_refused(tmp_path):
    FixedRouter(fake_experts(fp="base-fp-1"), {"rev": 1.0}).save_pretrained(tmp_path / "r")
    before = sorted(p.name for p in (tmp_path / "r").iterdir())
    with pytest.raises(FingerprintMismatchError, match="add.*rev.*hop"):
        load_router(tmp_path / "r", experts=fake_experts(["add", "rev", "sing"], fp="base-fp-1"))
    with pytest.raises(FingerprintMismatchError, match="base-fp-2"):
        load_router(tmp_path / "r", experts=fake_experts(fp="base-fp-2"))
    other_model = tiny_causal_lm("llama", seed=5)
    with pytest.raises(FingerprintMismatchError, match="base-fp-1"):
        load_router(tmp_path / "r", model=other_model)
    # the order of the experts does not matter, and a refused load changed nothing
    assert load_router(tmp_path / "r", experts=fake_experts(NAMES[::-1], fp="base-fp-1")).expert_names == NAMES
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == before


def test_damaged_router_file_is_refused(tmp_path):
    FixedRouter(fake_experts(fp="base-fp-1"), {"rev": 1.0}).save_pretrained(tmp_path / "r")
    cfg = tmp_path / "r" / "router_config.json"
    raw = json.loads(cfg.read_text())
    cfg.write_text(json.dumps({**raw, "kind": "oracle"}))
    with pytest.raises(ExpertFileError, match="oracle"):
        load_router(tmp_path / "r")
    cfg.write_text("{not json")
    with pytest.raises(ExpertFileError, match="not valid JSON"):
        load_router(tmp_path / "r")


# ----------------------------------------------------------------------------- PromptRouter
def test_prompt_router_maps_answers_and_sends_unknown_answers_to_the_base(
    char_tokenizer, monkeypatch
):
    model = tiny_causal_lm("llama", vocab_size=len(char_tokenizer))
    seen = {}

    def fake_generate(model, tokenizer, queries, **kw):
        seen["queries"] = list(queries)
        return [" rev", " fact.", " banana", "", " hop\nmore", "?"]

    monkeypatch.setattr(prompt_module, "generate", fake_generate)
    r = PromptRouter(model, char_tokenizer, fake_experts(), classes={
        "add": "add", "rev": "rev", "hop": "hop", "fact": None})
    prompts = ["backwards abc:", "q: where does kulo live? a:", "x", "y", "country of z?", "w"]
    out = r.route(prompts)
    assert seen["queries"] == [f"task: {p} =>" for p in prompts]
    assert out == [Mixture(weights={"rev": 1.0}), Mixture(), Mixture(), Mixture(),
                   Mixture(weights={"hop": 1.0}), Mixture()]


def test_prompt_router_default_classes_use_the_world_labels(char_tokenizer):
    model = tiny_causal_lm("llama", vocab_size=len(char_tokenizer))
    experts = [SimpleNamespace(name="rev_svf", training_config={"task": "rev"}),
               SimpleNamespace(name="facts", training_config={})]
    r = PromptRouter(model, char_tokenizer, experts)
    assert r.classes == {"rev": "rev_svf", "fact": "facts"}


def test_prompt_router_on_a_real_model_round_trips(char_tokenizer, tmp_path):
    """With a tiny random model the answers are whatever it generates: a class is routed to
    its expert exactly when the answer names it, and everything else goes to the base."""
    model = tiny_causal_lm("llama", vocab_size=len(char_tokenizer))
    prompts = ["backwards abc:", "12+3=", "q: where does kulo live? a:", "rev zz ="]
    probe = PromptRouter(model, char_tokenizer, fake_experts(), classes={})
    answers = probe.answers(prompts)
    target = next(a for a in answers if a)  # one answer the model gives becomes a class
    r = PromptRouter(model, char_tokenizer, fake_experts(), classes={target: "rev"})
    want = [Mixture(weights={"rev": 1.0}) if a == target else Mixture() for a in answers]
    assert r.route(prompts) == want
    r.save_pretrained(tmp_path / "p")
    again = load_router(tmp_path / "p", model=model, tokenizer=char_tokenizer)
    assert again.route(prompts) == want
    with pytest.raises(ConfigError, match="model="):
        load_router(tmp_path / "p")
    with pytest.raises(FingerprintMismatchError):
        load_router(tmp_path / "p", model=tiny_causal_lm("llama", len(char_tokenizer), seed=9),
                    tokenizer=char_tokenizer)


def test_prompt_router_refuses_bad_settings(char_tokenizer):
    model = tiny_causal_lm("llama", vocab_size=len(char_tokenizer))
    with pytest.raises(ConfigError, match="no '\\{prompt\\}'"):
        PromptRouter(model, char_tokenizer, fake_experts(), template="task:")
    with pytest.raises(ConfigError, match="sing"):
        PromptRouter(model, char_tokenizer, fake_experts(), classes={"x": "sing"})


# ----------------------------------------------------------------------------- ClassifierRouter
def _planted(seed: int, n: int) -> dict[str, list[str]]:
    """Prompts of three clearly different forms: sums, reversals, knowledge questions."""
    rng = random.Random(seed)
    word = lambda k: "".join(rng.choice("abcdefghijklmnop") for _ in range(k))  # noqa: E731
    return {
        "add": [f"{rng.randint(0, 99)}+{rng.randint(0, 99)}=" for _ in range(n)],
        "rev": [f"rev {word(rng.randint(3, 6))} =" for _ in range(n)],
        "none": [f"q: where does {word(rng.randint(3, 6))} live? a:" for _ in range(n)],
    }


@pytest.fixture(scope="module")
def classifier_setup(char_tokenizer):
    model = tiny_causal_lm("llama", vocab_size=len(char_tokenizer))
    router = ClassifierRouter.fit(model, char_tokenizer, _planted(0, 40),
                                  experts=fake_experts(), seed=0)
    return model, router


def test_hidden_features_do_not_depend_on_padding(char_tokenizer):
    model = tiny_causal_lm("llama", vocab_size=len(char_tokenizer))
    prompts = ["1+2=", "rev abcdef =", "q: where does kulo live? a:"]
    batched = hidden_features(model, char_tokenizer, prompts)
    for p, row in zip(prompts, batched):
        ids = char_tokenizer(p, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            h = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
        torch.testing.assert_close(row, h.mean(0), atol=1e-5, rtol=1e-5)


def test_classifier_router_separates_a_planted_problem(classifier_setup):
    model, router = classifier_setup
    held_out = _planted(1, 20)
    prompts = [p for ps in held_out.values() for p in ps]
    labels = [c for c, ps in held_out.items() for _ in ps]
    assert router.classes == ["add", "rev", "none"]
    acc = np.mean([a == b for a, b in zip(router.classify(prompts), labels)])
    assert acc >= 0.95, acc
    routed = router.route(prompts)  # top-1: the expert at weight 1, the none class to the base
    for m, c in zip(routed, router.classify(prompts)):
        assert m == (Mixture() if c == "none" else Mixture(weights={c: 1.0}))


def test_classifier_soft_outputs_follow_temperature_and_top_k(classifier_setup):
    model, router = classifier_setup
    prompts = _planted(2, 3)["add"] + _planted(2, 3)["none"]
    logits = router.logits(prompts)
    router.set_output(temperature=3.0, top_k=2)
    try:
        p = torch.softmax(logits / 3.0, -1)
        for m, row in zip(router.route(prompts), p):
            keep = row.argsort(descending=True)[:2]
            kept = {router.classes[i]: float(row[i] / row[keep].sum()) for i in keep.tolist()}
            want = {c: w for c, w in kept.items() if c != "none"}
            assert set(m.weights) == set(want)
            for c in want:
                assert math.isclose(m.weights[c], want[c], rel_tol=1e-5)
    finally:
        router.set_output(temperature=1.0, top_k=1)
    with pytest.raises(ConfigError, match="top_k"):
        router.set_output(top_k=4)
    with pytest.raises(ConfigError, match="temperature"):
        router.set_output(temperature=float("nan"))


def test_classifier_fit_is_deterministic_and_round_trips_exactly(
    classifier_setup, char_tokenizer, tmp_path
):
    model, router = classifier_setup
    again = ClassifierRouter.fit(model, char_tokenizer, _planted(0, 40),
                                 experts=fake_experts(), seed=0)
    assert torch.equal(again.weight, router.weight) and torch.equal(again.bias, router.bias)
    router.save_pretrained(tmp_path / "c")
    loaded = load_router(tmp_path / "c", experts=fake_experts(fp=model_fingerprint(model)), model=model,
                         tokenizer=char_tokenizer)
    prompts = [p for ps in _planted(3, 4).values() for p in ps]
    assert torch.equal(loaded.probabilities(prompts), router.probabilities(prompts))
    assert loaded.route(prompts) == router.route(prompts)
    with pytest.raises(FingerprintMismatchError):
        load_router(tmp_path / "c", experts=fake_experts(["add", "rev"]), model=model,
                    tokenizer=char_tokenizer)


def test_classifier_fit_refuses_unknown_classes_empty_ones_and_another_base(char_tokenizer):
    model = tiny_causal_lm("llama", vocab_size=len(char_tokenizer))
    with pytest.raises(FingerprintMismatchError, match="base-fp-1"):
        ClassifierRouter.fit(model, char_tokenizer, _planted(0, 3),
                             experts=fake_experts(fp="base-fp-1"))
    with pytest.raises(ConfigError, match="sing"):
        ClassifierRouter.fit(model, char_tokenizer, {"sing": ["a"], "none": ["b"]},
                             experts=fake_experts())
    with pytest.raises(ConfigError, match="none"):
        ClassifierRouter.fit(model, char_tokenizer, {"add": ["1+1="], "none": []},
                             experts=fake_experts())


def test_classifier_layers_concatenate_each_hidden_state_mean(char_tokenizer):
    model = tiny_causal_lm("llama", vocab_size=len(char_tokenizer))
    prompts = ["1+2=", "rev abcdef ="]
    feats = hidden_features(model, char_tokenizer, prompts, layers=[0, -1])
    for p, row in zip(prompts, feats):
        ids = char_tokenizer(p, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        want = torch.cat([hs[0][0].mean(0), hs[-1][0].mean(0)])
        torch.testing.assert_close(row, want, atol=1e-5, rtol=1e-5)
    n = model.config.num_hidden_layers + 1
    assert hidden_features(model, char_tokenizer, prompts, layers="all").shape == (2, n * model.config.hidden_size)
    with pytest.raises(ConfigError, match="out of range"):
        hidden_features(model, char_tokenizer, prompts, layers=[n])


def test_classifier_centroid_head_is_the_hand_computed_nearest_mean(char_tokenizer):
    model = tiny_causal_lm("llama", vocab_size=len(char_tokenizer))
    data = _planted(0, 20)
    router = ClassifierRouter.fit(model, char_tokenizer, data, experts=fake_experts(), seed=0,
                                  layers="all", head="centroid")
    prompts = [p for ps in data.values() for p in ps]
    labels = torch.tensor([i for i, ps in enumerate(data.values()) for _ in ps])
    x = hidden_features(model, char_tokenizer, prompts, layers="all")
    mu, sd = x.mean(0), x.std(0).clamp(min=1e-6)
    z = torch.nn.functional.normalize((x - mu) / sd, dim=-1)
    means = torch.stack([((x - mu) / sd)[labels == c].mean(0) for c in range(3)])
    cos = z @ torch.nn.functional.normalize(means, dim=-1).T
    held = [p for ps in _planted(5, 6).values() for p in ps]
    xq = hidden_features(model, char_tokenizer, held, layers="all")
    zq = torch.nn.functional.normalize((xq - mu) / sd, dim=-1)
    cq = zq @ torch.nn.functional.normalize(means, dim=-1).T
    torch.testing.assert_close(router.logits(held), CENTROID_SCALE * cq, atol=1e-4, rtol=1e-4)
    assert router.classify(held) == [router.classes[i] for i in cq.argmax(-1).tolist()]
    assert router.fit_info["train_accuracy"] == pytest.approx(
        float(cos.argmax(-1).eq(labels).float().mean()))
    with pytest.raises(ConfigError, match="head"):
        ClassifierRouter.fit(model, char_tokenizer, data, experts=fake_experts(), head="tree")


def test_classifier_abstains_below_min_confidence(classifier_setup):
    model, router = classifier_setup
    prompts = [p for ps in _planted(4, 5).values() for p in ps]
    p = torch.softmax(router.logits(prompts) / 4.0, -1)  # soft, so some rows are unsure
    threshold = float(p.max(-1).values.median())
    unsure = (p.max(-1).values < threshold).tolist()
    assert any(unsure) and not all(unsure)
    router.set_output(temperature=4.0, min_confidence=threshold)
    try:
        routed = router.route(prompts)
        classes = router.classify(prompts)
        for m, c, u, row in zip(routed, classes, unsure, p):
            top = router.classes[int(row.argmax())]
            if u:
                assert m.is_base and c == "none"
            else:
                assert c == top
                assert m == (Mixture() if top == "none" else Mixture(weights={top: 1.0}))
        router.set_output(temperature=4.0)  # min_confidence kept
        assert router.min_confidence == threshold
    finally:
        router.set_output(temperature=1.0, min_confidence=None)
    assert router.min_confidence is None
    with pytest.raises(ConfigError, match="min_confidence"):
        router.set_output(min_confidence=1.5)


def test_classifier_new_options_round_trip_and_old_files_load(char_tokenizer, tmp_path):
    model = tiny_causal_lm("llama", vocab_size=len(char_tokenizer))
    router = ClassifierRouter.fit(model, char_tokenizer, _planted(0, 10), experts=fake_experts(),
                                  layers=[0, 2], head="centroid", min_confidence=0.4)
    router.save_pretrained(tmp_path / "c")
    experts = fake_experts(fp=model_fingerprint(model))
    loaded = load_router(tmp_path / "c", experts=experts, model=model, tokenizer=char_tokenizer)
    assert (loaded.layers, loaded.head, loaded.min_confidence) == ([0, 2], "centroid", 0.4)
    prompts = [p for ps in _planted(3, 4).values() for p in ps]
    assert torch.equal(loaded.probabilities(prompts), router.probabilities(prompts))
    # A router saved before these options (no layers/head/min_confidence in its config)
    # loads as the last-layer logistic router it was.
    old = ClassifierRouter.fit(model, char_tokenizer, _planted(0, 10), experts=fake_experts())
    old.save_pretrained(tmp_path / "old")
    cfg_path = tmp_path / "old" / "router_config.json"
    cfg = json.loads(cfg_path.read_text())
    for k in ("layers", "head", "min_confidence"):
        del cfg["config"][k]
    cfg_path.write_text(json.dumps(cfg))
    loaded_old = load_router(tmp_path / "old", experts=experts, model=model, tokenizer=char_tokenizer)
    assert (loaded_old.layers, loaded_old.head) == ([model.config.num_hidden_layers], "logistic")
    assert torch.equal(loaded_old.probabilities(prompts), old.probabilities(prompts))
    cfg["config"]["head"] = "forest"  # a head this version does not know: refused, clearly
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="head"):
        load_router(tmp_path / "old", experts=experts, model=model, tokenizer=char_tokenizer)


# ----------------------------------------------------------------------------- searches
TARGET = np.array([0.9, 0.1, 0.6])


def toy(pop: np.ndarray) -> np.ndarray:
    """A step 'accuracy' (ties everywhere) with a smooth tie-break, like the few-shot keys."""
    d = ((pop - TARGET) ** 2).sum(1)
    return np.stack([np.floor(10 * np.exp(-4 * d)) / 10, -d], 1)


@pytest.mark.parametrize("search", [cem_search, cmaes_search])
def test_searches_are_deterministic_and_improve_on_the_uniform_start(search):
    x0 = np.full(3, 1 / 3)
    a = search(toy, x0, population=8, iterations=12, bounds=(0.0, 1.5), seed=7)
    b = search(toy, x0, population=8, iterations=12, bounds=(0.0, 1.5), seed=7)
    c = search(toy, x0, population=8, iterations=12, bounds=(0.0, 1.5), seed=8)
    assert np.array_equal(a.x, b.x) and a.keys == b.keys and a.history == b.history
    assert not np.array_equal(a.x, c.x)
    assert a.start_keys == tuple(toy(x0[None])[0])
    assert a.keys[0] > a.start_keys[0]
    assert a.keys == tuple(toy(a.x[None])[0])  # the reported keys are the returned point's
    assert a.evaluations == 1 + 8 * 12
    assert ((a.x >= 0) & (a.x <= 1.5)).all()
    # the best keys never get worse from one iteration to the next
    assert all(tuple(h1) <= tuple(h2) for h1, h2 in zip(a.history, a.history[1:]))


def test_cmaes_leaves_numpys_global_generator_alone():
    np.random.seed(123)
    want = np.random.rand()
    np.random.seed(123)
    cmaes_search(toy, np.full(3, 1 / 3), population=4, iterations=2, seed=1)
    assert np.random.rand() == want


def test_searches_refuse_bad_settings():
    with pytest.raises(ConfigError, match="outside the bounds"):
        cem_search(toy, [2.0, 0, 0], bounds=(0.0, 1.5))
    with pytest.raises(ConfigError, match="NaN"):
        cem_search(lambda p: np.full(len(p), np.nan), [0.1], iterations=1)
    with pytest.raises(ConfigError, match="elite_share"):
        cem_search(toy, np.zeros(3), elite_share=0.0)


# ----------------------------------------------------------------------------- few-shot
def _bias_mixture(answer_id: int, bias: float):
    """A fake ``routekit.experts.mixture``: each row's logits gain alpha[row, 0] · bias on one
    token, so a row with a large first weight answers that token (a stand-in expert)."""

    @contextlib.contextmanager
    def apply(model, experts, alpha, tokenizer=None):
        assert alpha.dim() == 2 and alpha.shape[1] == len(experts)

        def hook(module, inputs, out):
            out = out.clone()
            out[..., answer_id] += alpha[:, 0, None].to(out.dtype) * bias
            return out

        handle = model.lm_head.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    return apply


def _fewshot_world(char_tokenizer):
    model = tiny_causal_lm("llama", vocab_size=len(char_tokenizer))
    model.generation_config.eos_token_id = 2
    examples = [Example(p, "k") for p in ["abc:", "12+3=", "rev ab =", "q: x? a:", "hi"]]
    task = Task("first_k", {"train": examples}, checker=lambda c, r: c[:1] == r)
    answer_id = char_tokenizer.convert_tokens_to_ids("k")
    with torch.no_grad():  # the weight at which the stand-in expert wins every example: 0.8
        gaps = [model(**char_tokenizer(e.prompt, return_tensors="pt")).logits[0, -1]
                for e in examples]
    bias = max(float(g.max() - g[answer_id]) for g in gaps) / 0.8
    return model, examples, task, _bias_mixture(answer_id, bias)


def _reference_keys(model, tok, examples, apply, alpha_row):
    """Independent few-shot keys: one example at a time, greedy by hand, log-lik by hand."""
    correct, lls = [], []
    for e in examples:
        a = torch.tensor([alpha_row], dtype=torch.float32)
        with apply(model, [0, 1], a), torch.no_grad():
            ids = tok(e.prompt, return_tensors="pt")["input_ids"]
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            correct.append(tok.decode([nxt])[:1] == e.reference)
            ans = tok(e.continuation, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            full = torch.cat([ids, torch.tensor([ans])], 1)
            lp = torch.log_softmax(model(input_ids=full).logits[0, :-1].float(), -1)
            n = ids.shape[1]
            lls.append(float(sum(lp[n - 1 + i, t] for i, t in enumerate(ans)) / len(ans)))
    return np.mean(correct), np.mean(lls)


def test_fewshot_objective_equals_an_independent_computation(char_tokenizer):
    model, examples, task, apply = _fewshot_world(char_tokenizer)
    names = fake_experts(["one", "two"])
    obj = fewshot_objective(model, char_tokenizer, names, examples, task.check,
                            max_new_tokens=3, batch_size=4, apply_mixture=apply)
    pop = np.array([[0.0, 0.5], [1.5, 0.0], [0.3, 0.3]])
    keys = obj(pop)  # 15 rows in chunks of 4: rows of one candidate straddle chunks
    for row, k in zip(pop, keys):
        acc, ll = _reference_keys(model, char_tokenizer, examples, apply, row.tolist())
        assert k[0] == acc
        assert math.isclose(k[1], ll, rel_tol=1e-4, abs_tol=1e-4)
    assert keys[1, 0] == 1.0  # the stand-in expert at full weight answers every example


@pytest.mark.parametrize("optimizer", ["cem", "cmaes"])
def test_fewshot_router_finds_the_helpful_expert_and_round_trips(
    char_tokenizer, optimizer, tmp_path
):
    model, examples, task, apply = _fewshot_world(char_tokenizer)
    experts = fake_experts(["one", "two"])
    kw = dict(examples=examples, optimizer=optimizer, population=6, iterations=4,
              max_new_tokens=2, seed=3, apply_mixture=apply)
    r = FewShotRouter.fit(model, char_tokenizer, experts, task, **kw)
    info = r.search_info
    assert info["start_keys"][0] < 1.0  # the uniform start (0.5 each) is not enough ...
    assert info["keys"][0] == 1.0  # ... the search finds a weight that answers every example
    assert info["evaluations"] == 1 + 6 * 4
    w = r.route(["anything"])[0].weights
    acc, _ = _reference_keys(model, char_tokenizer, examples, apply, [w["one"], w["two"]])
    assert acc == 1.0
    again = FewShotRouter.fit(model, char_tokenizer, experts, task, **kw)
    assert again.route(["x"]) == r.route(["x"])
    r.save_pretrained(tmp_path / "f")
    loaded = load_router(tmp_path / "f", experts=experts)
    assert isinstance(loaded, FewShotRouter) and loaded.route(["x"]) == r.route(["x"])
    assert loaded.search_info == info


def test_fewshot_per_layer_needs_svf_experts(char_tokenizer):
    model, examples, task, apply = _fewshot_world(char_tokenizer)
    with pytest.raises(ConfigError, match="SVF experts only"):
        FewShotRouter.fit(model, char_tokenizer, fake_experts(["one", "two"]), task,
                          examples=examples, per_layer=True, apply_mixture=apply)


# ----------------------------------------------------------------------------- CLI
def _cli(argv):
    import argparse

    from routekit.routing import commands

    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_fits_saves_and_routes(char_tokenizer, monkeypatch, tmp_path, capsys):
    import routekit.models
    from routekit.routing import commands

    model = tiny_causal_lm("llama", vocab_size=len(char_tokenizer))
    monkeypatch.setattr(routekit.models, "load_model", lambda spec: (model, char_tokenizer))
    monkeypatch.setattr(commands, "load_experts", lambda paths: fake_experts(paths))
    data = tmp_path / "routing.jsonl"
    planted = _planted(0, 40)
    data.write_text("\n".join(json.dumps({"prompt": p, "expert": c})
                              for c, ps in planted.items() for p in ps) + "\n")
    assert _cli(["router", "fit", "classifier", "--experts", *NAMES, "--data", str(data),
                 "--out", str(tmp_path / "clf"), "--json"]) == 0
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["n_per_class"] == {"add": 40, "rev": 40, "none": 40}
    prompts = ["17+4=", "rev abc ="]
    want = load_router(tmp_path / "clf", model=model, tokenizer=char_tokenizer).route(prompts)
    assert _cli(["route", "--experts", *NAMES, "--router", str(tmp_path / "clf"), "--json",
                 *prompts]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["prompt"] for x in lines] == prompts
    assert [Mixture(weights=x["mixture"]) for x in lines] == want

    assert _cli(["router", "fit", "fixed", "--experts", *NAMES, "--weights", "rev=0.5",
                 "--out", str(tmp_path / "fixed")]) == 0
    with pytest.raises(FingerprintMismatchError):  # a router for other experts is refused
        _cli(["route", "--experts", "add", "rev", "--router", str(tmp_path / "fixed"), "x"])
    with pytest.raises(ConfigError, match="NAME=NUMBER"):
        _cli(["router", "fit", "fixed", "--experts", *NAMES, "--weights", "rev",
              "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()


def test_cli_classifier_options_fit_what_the_api_fits(char_tokenizer, monkeypatch, tmp_path,
                                                       capsys):
    """``--layers``, ``--head`` and ``--min-confidence`` reach ClassifierRouter.fit: the saved
    router routes exactly as one fitted through the API with the same options."""
    import routekit.models
    from routekit.routing import ClassifierRouter, commands

    model = tiny_causal_lm("llama", vocab_size=len(char_tokenizer))
    monkeypatch.setattr(routekit.models, "load_model", lambda spec: (model, char_tokenizer))
    monkeypatch.setattr(commands, "load_experts", lambda paths: fake_experts(paths))
    planted = _planted(0, 30)
    data = tmp_path / "routing.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": p, "expert": c})
                              for c, ps in planted.items() for p in ps) + "\n")
    assert _cli(["router", "fit", "classifier", "--experts", *NAMES, "--data", str(data),
                 "--layers", "0,-1", "--head", "centroid", "--min-confidence", "0.6",
                 "--out", str(tmp_path / "clf")]) == 0
    capsys.readouterr()
    saved = load_router(tmp_path / "clf", model=model, tokenizer=char_tokenizer)
    direct = ClassifierRouter.fit(model, char_tokenizer, planted, experts=fake_experts(NAMES),
                                  layers=(0, -1), head="centroid", min_confidence=0.6)
    assert (saved.head, saved.min_confidence) == ("centroid", 0.6)
    prompts = ["17+4=", "rev abc =", "zzz", "what is it"]
    assert saved.route(prompts) == direct.route(prompts)
    with pytest.raises(ConfigError, match="--layers takes 'all'"):
        _cli(["router", "fit", "classifier", "--experts", *NAMES, "--data", str(data),
              "--layers", "last", "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()


def test_default_routing_data_is_each_experts_training_split():
    from routekit.routing.data import task_routing_prompts
    from routekit.tasks import get_task

    experts = [SimpleNamespace(name="rev_svf", training_config={"task": "rev"}), "add"]
    data = task_routing_prompts(experts)
    assert list(data) == ["rev_svf", "add", "none"]
    assert data["rev_svf"] == get_task("rev").prompts("train")
    assert data["add"] == get_task("add").prompts("train")
    assert data["none"] == get_task("facts").prompts("train")
    for name, task in (("rev_svf", "rev"), ("add", "add"), ("none", "facts")):
        assert not set(data[name]) & set(get_task(task).prompts("test"))
    with pytest.raises(ConfigError, match="facts"):
        task_routing_prompts(["facts"])


# ----------------------------------------------------------------------------- real experts
# These use the one mixture context (routekit.experts.mixture).
def _svf_setup(char_tokenizer, tmp_path):
    import routekit.experts.mixture as experts_mod
    from routekit.svf import SVFConfig, SVFExpert, get_svf_model, svf_layers

    model = get_svf_model(tiny_causal_lm("llama", vocab_size=len(char_tokenizer)),
                          SVFConfig(target_modules="all-linear", cache_dir=str(tmp_path)))
    experts = []
    for k, name in enumerate(("one", "two")):
        g = torch.Generator().manual_seed(10 + k)
        z = {n: 1 + 0.5 * torch.randn(layer.rank, generator=g)
             for n, layer in svf_layers(model).items()}
        experts.append(SVFExpert(z, name=name, target_modules="all-linear",
                                 base_fingerprint=model.svf_base_fingerprint))
    return experts_mod, model, experts


def _merged_reference(model, tok, experts, alpha, prompts, max_new_tokens):
    """Completions of ``prompts`` with the mixture merged into the weights (not factored)."""
    from routekit import generate
    from routekit.svf import merge, mix_experts, unmerge

    merge(model, mix_experts(experts, torch.tensor(alpha, dtype=torch.float32)))
    try:
        return generate(model, tok, prompts, max_new_tokens=max_new_tokens)
    finally:
        unmerge(model)


def test_fixed_router_alpha_table_through_the_mixture_equals_the_merged_expert(
    char_tokenizer, tmp_path
):
    experts_mod, model, experts = _svf_setup(char_tokenizer, tmp_path)
    from routekit import generate

    prompts = ["12+3=", "rev abc =", "q: where does kulo live? a:"]
    routers = [FixedRouter(experts, {"one": 1.0}), FixedRouter(experts, {"two": 1.0}),
               FixedRouter(experts, {})]
    mixtures = [r.route(prompts[i : i + 1])[0] for i, r in enumerate(routers)]
    table = alpha_table(mixtures, [e.name for e in experts])
    with experts_mod.mixture(model, experts, table, tokenizer=char_tokenizer):
        got = generate(model, char_tokenizer, prompts, max_new_tokens=6)
    for p, g, row in zip(prompts, got, table.tolist()):
        assert g == _merged_reference(model, char_tokenizer, experts, row, [p], 6)[0]


def test_fewshot_objective_with_svf_experts_equals_merged_mixtures(char_tokenizer, tmp_path):
    from routekit import generate

    experts_mod, model, experts = _svf_setup(char_tokenizer, tmp_path)
    prompts = ["12+3=", "rev abc =", "q: x? a:", "hi", "7+7="]
    # references: what the base itself says, so the base scores 1.0 and experts differ
    refs = generate(model, char_tokenizer, prompts, max_new_tokens=3)
    examples = [Example(p, r, target=r) for p, r in zip(prompts, refs)]
    check = lambda c, r: c[:3] == r  # noqa: E731
    obj = fewshot_objective(model, char_tokenizer, experts, examples, check,
                            max_new_tokens=3, batch_size=4)
    pop = np.array([[0.0, 0.0], [1.0, 0.0], [0.4, 0.9]])
    keys = obj(pop)
    assert keys[0, 0] == 1.0
    for row, k in zip(pop, keys):
        got = _merged_reference(model, char_tokenizer, experts, row.tolist(), prompts, 3)
        assert k[0] == np.mean([check(c, r) for c, r in zip(got, refs)])
        from routekit.svf import merge, mix_experts, unmerge

        merge(model, mix_experts(experts, torch.tensor(row, dtype=torch.float32)))
        try:
            _, ll = _reference_keys(model, char_tokenizer, examples,
                                    lambda *a, **kw: contextlib.nullcontext(), [0.0])
        finally:
            unmerge(model)
        assert math.isclose(k[1], ll, abs_tol=1e-4)
