"""Dynamic logit fusion: per-step weights against an independent no-cache computation of the
rule (with and without a KL budget), one expert = proxy_generate at alpha 1, per-row weights,
the AdaptiveModel path against an independent greedy decode, determinism, router files, and
refused input (SVF experts, bad settings)."""

from __future__ import annotations

import json

import pytest
import torch
from scipy.optimize import brentq
from transformers import LogitsProcessorList

import routekit as rk
from routekit.adaptive import AdaptiveModel
from routekit.errors import ConfigError, ExpertFileError
from routekit.eval import stop_ids
from routekit.proxy import ProxyLogitsProcessor
from routekit.proxy.fusion import FusionRule
from routekit.routing import LogitFusionRouter, Mixture, load_router

from .conftest import two_kinds_of_experts

PROMPTS = ["rev abc =", "backwards xy:", "17+8=", "sum of 3 and 4 is"]
TEMPERATURE = 0.05  # the tiny proxies' shifts differ by ~0.1 nat: sharp enough to matter


@pytest.fixture(scope="module")
def setup(tmp_path_factory, char_tokenizer):
    return two_kinds_of_experts(char_tokenizer, tmp_path_factory.mktemp("svf"))


def logprobs(model, seq, mask):
    """Full-sequence forward (no cache) at the last position, as float64 log-probs."""
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        lg = model(input_ids=seq, attention_mask=mask, position_ids=pos, use_cache=False).logits
    return torch.log_softmax(lg[:, -1].double(), dim=-1)


def kl(logq, logp):
    return (logq.exp() * (logq - logp)).sum(-1)


def reference_step(s, experts, seq, mask, temperature, budget):
    """The rule recomputed from scratch: weights (B, K) and the steered log-probs (B, V)."""
    base = logprobs(s["base"], seq, mask)
    tuned = torch.stack([logprobs(e.tuned, seq, mask) for e in experts], 1)
    untuned = torch.stack([logprobs(e.untuned, seq, mask) for e in experts], 1)
    shifts = torch.stack([kl(tuned[:, k], untuned[:, k]) for k in range(len(experts))], 1)
    e = torch.exp((shifts - shifts.max(1, keepdim=True).values) / temperature)
    w = e / e.sum(1, keepdim=True)
    offset = ((tuned - untuned) * w[:, :, None]).sum(1)
    if budget is not None:
        for b in range(seq.shape[0]):
            cap = float((w[b] * shifts[b]).sum()) if budget == "matched" else budget

            def excess(x, b=b, cap=cap):
                return float(kl(torch.log_softmax(base[b] + x * offset[b], -1), base[b])) - cap

            scale = 1.0 if excess(1.0) <= 0 else brentq(excess, 0.0, 1.0, xtol=1e-12)
            w[b] *= scale
            offset[b] *= scale
    return w, base + offset


def run_processor(s, prompts, rule, alpha=1.0, max_new_tokens=6):
    proc = ProxyLogitsProcessor([s["p1"], s["p2"]], alpha, tokenizer=s["tok"], fusion=rule)
    enc = s["tok"](prompts, return_tensors="pt", padding=True)
    out = s["base"].generate(
        **enc, logits_processor=LogitsProcessorList([proc]), max_new_tokens=max_new_tokens,
        do_sample=False, pad_token_id=s["tok"].pad_token_id, eos_token_id=None,
        return_dict_in_generate=True, output_scores=True)
    return enc, out, proc


@pytest.mark.parametrize("budget", [None, 0.02, "matched"])
def test_step_weights_equal_an_independent_computation_of_the_rule(setup, budget):
    s = setup
    enc, out, proc = run_processor(s, PROMPTS, FusionRule(TEMPERATURE, budget), max_new_tokens=8)
    p = enc["input_ids"].shape[1]
    assert len(proc.weights_trace) == len(out.scores) == 8
    capped = 0
    for t, (got_w, got_scores) in enumerate(zip(proc.weights_trace, out.scores)):
        seq = out.sequences[:, : p + t]
        mask = torch.cat([enc["attention_mask"], torch.ones(len(PROMPTS), t, dtype=torch.long)], 1)
        want_w, want_scores = reference_step(s, [s["p1"], s["p2"]], seq, mask, TEMPERATURE, budget)
        torch.testing.assert_close(got_w.double(), want_w, atol=2e-5, rtol=0)
        torch.testing.assert_close(got_scores.double(), want_scores, atol=2e-4, rtol=0)
        capped += int((want_w.sum(1) < 1 - 1e-6).sum())
    weights = torch.stack(proc.weights_trace)  # (steps, rows, K)
    shares = weights[..., 0] / weights.sum(-1)
    assert float(shares.amax() - shares.amin()) > 0.3  # the weights really move per step/row
    if budget is None:
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2]))
    else:
        assert capped > 0  # the budget was binding somewhere: the cap is exercised


def test_fusion_adds_no_forward_each_distinct_proxy_runs_once_per_step(setup):
    s = setup
    models = {"untuned": s["p1"].untuned, "t1": s["p1"].tuned, "t2": s["p2"].tuned}
    calls = dict.fromkeys(models, 0)
    seen = dict.fromkeys(models, 0)

    def counter(key):
        def hook(_module, args, kwargs, _out):
            calls[key] += 1
            seen[key] += kwargs["input_ids"].shape[1]
        return hook

    handles = [m.register_forward_hook(counter(k), with_kwargs=True) for k, m in models.items()]
    try:
        enc, _, _ = run_processor(s, PROMPTS, FusionRule(TEMPERATURE, "matched"), max_new_tokens=7)
    finally:
        for h in handles:
            h.remove()
    # One prefill of the prompt, then one new token per step, from the KV cache.
    assert calls == dict.fromkeys(models, 7)
    assert seen == dict.fromkeys(models, enc["input_ids"].shape[1] + 6)


def test_weights_are_per_row_and_a_row_does_not_see_its_batch(setup):
    s = setup
    rule = FusionRule(TEMPERATURE)
    _, _, batch = run_processor(s, PROMPTS[:2], rule)
    first = torch.stack(batch.weights_trace)[:, 0]
    second = torch.stack(batch.weights_trace)[:, 1]
    assert float((first - second).abs().max()) > 0.1  # two prefixes, two weightings
    for i, prompt in enumerate(PROMPTS[:2]):
        _, _, alone = run_processor(s, [prompt], rule)
        torch.testing.assert_close(torch.stack(alone.weights_trace)[:, 0],
                                   torch.stack(batch.weights_trace)[:, i], atol=1e-5, rtol=0)


def test_prior_zero_leaves_an_expert_out_and_all_zero_is_the_base(setup):
    s = setup
    _, out, proc = run_processor(s, PROMPTS, FusionRule(TEMPERATURE), alpha=[[1.0, 0.0]] * 4)
    weights = torch.stack(proc.weights_trace)
    assert torch.equal(weights[..., 0], torch.ones_like(weights[..., 0]))
    assert torch.equal(weights[..., 1], torch.zeros_like(weights[..., 1]))
    alone = rk.proxy_generate(s["base"], s["tok"], [s["p1"]], PROMPTS, max_new_tokens=6)
    with rk.mixture(s["base"], [s["p1"], s["p2"]], [1.0, 0.0], tokenizer=s["tok"],
                    fusion=FusionRule(TEMPERATURE)):
        assert rk.generate(s["base"], s["tok"], PROMPTS, max_new_tokens=6) == alone
    with rk.mixture(s["base"], [s["p1"], s["p2"]], 0.0, tokenizer=s["tok"],
                    fusion=FusionRule(TEMPERATURE)):
        steered = rk.generate(s["base"], s["tok"], PROMPTS, max_new_tokens=6)
    assert steered == rk.generate(s["base"], s["tok"], PROMPTS, max_new_tokens=6)


@pytest.mark.parametrize("temperature", [1.0, 0.01])
def test_one_expert_router_equals_proxy_generate_at_alpha_one(setup, temperature):
    s = setup
    am = AdaptiveModel(s["base"], s["tok"], [s["p1"]],
                       LogitFusionRouter([s["p1"]], temperature=temperature))
    assert am.generate(PROMPTS, max_new_tokens=6) == rk.proxy_generate(
        s["base"], s["tok"], [s["p1"]], PROMPTS, alpha=1.0, max_new_tokens=6)


def reference_greedy(s, experts, prompt, temperature, max_new_tokens):
    """Greedy decoding of one prompt from reference_step, recomputing everything each step."""
    seq = torch.tensor([s["tok"](prompt)["input_ids"]])
    stop = set(stop_ids(s["tok"], s["base"]))
    new: list[int] = []
    for _ in range(max_new_tokens):
        _, scores = reference_step(s, experts, seq, torch.ones_like(seq), temperature, None)
        nxt = int(scores[0].argmax())
        new.append(nxt)
        if nxt in stop:
            break
        seq = torch.cat([seq, torch.tensor([[nxt]])], 1)
    return s["tok"].decode(new, skip_special_tokens=True)


def test_adaptive_model_with_the_router_equals_an_independent_greedy_decode(setup):
    s = setup
    experts = [s["p1"], s["p2"]]
    am = AdaptiveModel(s["base"], s["tok"], experts,
                       LogitFusionRouter(experts, temperature=TEMPERATURE))
    out = am.generate_with_details(PROMPTS, max_new_tokens=6)
    assert out.mixtures == [Mixture(weights={"p1": 1.0, "p2": 1.0})] * len(PROMPTS)
    assert out.texts == [reference_greedy(s, experts, p, TEMPERATURE, 6) for p in PROMPTS]
    # Fusion is not a fixed mixture: it differs from the static uniform ones.
    for alpha in ([1.0, 1.0], [0.5, 0.5]):
        assert out.texts != rk.proxy_generate(s["base"], s["tok"], experts, PROMPTS, alpha=alpha,
                                              max_new_tokens=6)


def test_fusion_is_deterministic(setup):
    s = setup
    rule = FusionRule(TEMPERATURE, "matched")
    _, a, pa = run_processor(s, PROMPTS, rule)
    _, b, pb = run_processor(s, PROMPTS, rule)
    assert torch.equal(a.sequences, b.sequences)
    assert all(torch.equal(x, y) for x, y in zip(pa.weights_trace, pb.weights_trace))


def test_router_files_round_trip(setup, tmp_path):
    s = setup
    experts = [s["p1"], s["p2"]]
    for i, budget in enumerate([None, 0.25, "matched"]):
        router = LogitFusionRouter(experts, temperature=0.3, budget=budget)
        router.save_pretrained(tmp_path / str(i))
        loaded = load_router(tmp_path / str(i), experts=experts)
        assert isinstance(loaded, LogitFusionRouter)
        assert loaded.fusion_rule == FusionRule(0.3, budget)
        assert loaded.expert_names == ["p1", "p2"]
        assert loaded.route(PROMPTS) == router.route(PROMPTS)
    # The whole bundle: experts, router, config; generation is unchanged after loading.
    am = AdaptiveModel(s["base"], s["tok"], experts, LogitFusionRouter(experts, temperature=0.05))
    am.save_pretrained(tmp_path / "bundle")
    again = AdaptiveModel.from_pretrained(tmp_path / "bundle", s["base"], s["tok"])
    assert again.router.fusion_rule == am.router.fusion_rule
    assert again.generate(PROMPTS, max_new_tokens=6) == am.generate(PROMPTS, max_new_tokens=6)


def test_svf_experts_are_refused(setup):
    s = setup
    with pytest.raises(ConfigError, match=r"\['s1'\] are SVF experts"):
        LogitFusionRouter([s["s1"], s["p1"]])
    # A router made from names alone meets the SVF expert at the AdaptiveModel.
    with pytest.raises(ConfigError, match="SVF experts"):
        AdaptiveModel(s["base"], s["tok"], [s["s1"], s["p1"]], LogitFusionRouter(["s1", "p1"]))
    with pytest.raises(ConfigError, match="all SVF experts"):
        with rk.mixture(s["base"], [s["s1"]], 1.0, fusion=FusionRule()):
            pass


@pytest.mark.parametrize("kw", [
    {"temperature": 0.0}, {"temperature": -1.0}, {"temperature": float("nan")},
    {"temperature": True}, {"budget": -0.1}, {"budget": float("inf")}, {"budget": "wide"},
])
def test_bad_settings_are_refused(setup, kw):
    with pytest.raises(ConfigError, match="temperature" if "temperature" in kw else "budget"):
        LogitFusionRouter([setup["p1"]], **kw)


def test_negative_prior_and_damaged_file_are_refused(setup, tmp_path):
    s = setup
    with pytest.raises(ConfigError, match="non-negative"):
        with rk.mixture(s["base"], [s["p1"], s["p2"]], [1.0, -0.5], tokenizer=s["tok"],
                        fusion=FusionRule()):
            pass
    with pytest.raises(ConfigError, match="non-negative"):
        ProxyLogitsProcessor([s["p1"]], -1.0, tokenizer=s["tok"], fusion=FusionRule())
    LogitFusionRouter([s["p1"]]).save_pretrained(tmp_path / "r")
    cfg = json.loads((tmp_path / "r" / "router_config.json").read_text())
    cfg["config"]["window"] = 3
    (tmp_path / "r" / "router_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExpertFileError, match="window"):
        load_router(tmp_path / "r")


def test_cli_fits_a_logit_fusion_router(setup, monkeypatch, tmp_path, capsys):
    import argparse

    import routekit.models
    from routekit.routing import commands

    s = setup
    monkeypatch.setattr(routekit.models, "load_model", lambda spec: (s["base"], s["tok"]))
    monkeypatch.setattr(commands, "load_experts", lambda paths: [s[p] for p in paths])
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["router", "fit", "logit-fusion", "--experts", "p1", "p2",
                              "--temperature", "0.2", "--budget", "matched",
                              "--out", str(tmp_path / "lf")])
    assert args.func(args) == 0
    capsys.readouterr()
    loaded = load_router(tmp_path / "lf", experts=[s["p1"], s["p2"]])
    assert loaded.fusion_rule == FusionRule(0.2, "matched")
    args = parser.parse_args(["route", "--experts", "p1", "p2", "--router", str(tmp_path / "lf"),
                              "--json", "abc", "xyz"])
    assert args.func(args) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines == [{"prompt": p, "mixture": {"p1": 1.0, "p2": 1.0},
                      "fusion": {"temperature": 0.2, "budget": "matched"}} for p in ("abc", "xyz")]
    args = parser.parse_args(["router", "fit", "logit-fusion", "--experts", "p1",
                              "--budget", "lots", "--out", str(tmp_path / "bad")])
    with pytest.raises(ConfigError, match="--budget"):
        args.func(args)
    assert not (tmp_path / "bad").exists()
