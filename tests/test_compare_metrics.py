"""routekit.compare metrics equal independent computations on tiny models and planted data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from routekit.compare import activations, behaviour, metrics, stats
from routekit.errors import ConfigError
from routekit.tasks.base import Example
from tests.conftest import tiny_causal_lm

EXAMPLES = [
    Example("backwards abc:", "cba"),
    Example("sum of 3 and 4 is", "7"),
    Example("q: where does kalo live? a:", "mirabu"),
    Example("x", "yz"),
    Example("country of vana?", "belkin"),
]
TEXTS = ["the cat sat.", "a dog ran home", "xyz", "moon and sun rise over the sea", "fig"]


def plain_logprobs(model, ids: list[int]) -> torch.Tensor:
    """One unpadded row: log p(ids[t+1] | ids[:t+1]) by softmax written out, float64."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
    z = logits - logits.max(-1, keepdim=True).values
    logp = z - z.exp().sum(-1, keepdim=True).log()
    return logp.gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)


# --------------------------------------------------------------------------- likelihood
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_answer_loglik_equals_a_plain_forward_per_example(arch, char_tokenizer):
    model, tok = tiny_causal_lm(arch), char_tokenizer
    got = metrics.answer_loglik(model, tok, EXAMPLES, batch_size=2)  # ragged, left-padded batches
    for e, s, n in zip(EXAMPLES, got.sums, got.tokens):
        prompt = tok(e.prompt)["input_ids"]
        answer = tok(" " + e.reference, add_special_tokens=False)["input_ids"]
        lp = plain_logprobs(model, prompt + answer)[len(prompt) - 1 :]
        assert n == len(answer)
        assert s == pytest.approx(float(lp.sum()), rel=1e-5, abs=1e-5)
    assert got.per_text() == pytest.approx(sum(got.sums) / len(EXAMPLES))
    assert got.per_token() == pytest.approx(sum(got.sums) / sum(got.tokens))


def hand_cross_entropy(model, tok, texts) -> tuple[float, int]:
    total, count = 0.0, 0
    for t in texts:
        ids = tok(t)["input_ids"] + [tok.eos_token_id]
        total -= float(plain_logprobs(model, ids).sum())
        count += len(ids) - 1
    return total, count


def test_text_cross_entropy_and_forgetting_equal_hand_formulas(char_tokenizer):
    tok = char_tokenizer
    base, tuned = tiny_causal_lm("llama", seed=0), tiny_causal_lm("llama", seed=1)
    ce = metrics.text_cross_entropy(base, tok, TEXTS, batch_size=3)
    total, count = hand_cross_entropy(base, tok, TEXTS)
    assert sum(ce.tokens) == count
    assert ce.per_token() == pytest.approx(total / count, rel=1e-5)
    after, _ = hand_cross_entropy(tuned, tok, TEXTS)
    expected = after / count - total / count
    assert expected != pytest.approx(0.0, abs=1e-3)  # the two models really differ
    assert metrics.forgetting(base, tuned, tok, TEXTS) == pytest.approx(expected, rel=1e-5)
    assert metrics.forgetting(base, tuned, tok, TEXTS, before=ce) == pytest.approx(expected, rel=1e-5)
    assert metrics.forgetting(base, base, tok, TEXTS) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ConfigError, match="other texts"):
        metrics.forgetting(base, tuned, tok, TEXTS[:2], before=ce)


def test_kl_divergence_equals_the_hand_formula(char_tokenizer):
    tok = char_tokenizer
    base, tuned = tiny_causal_lm("llama", seed=0), tiny_causal_lm("llama", seed=2)
    got = metrics.kl_divergence(base, tuned, tok, TEXTS, batch_size=2)
    total, count = 0.0, 0
    for t, s in zip(TEXTS, got.sums):
        ids = torch.tensor([tok(t)["input_ids"]])  # every prefix, from BOS to the whole text
        with torch.no_grad():
            p = torch.softmax(base(input_ids=ids).logits[0].double(), -1)
            q = torch.softmax(tuned(input_ids=ids).logits[0].double(), -1)
        per_text = float((p * (p.log() - q.log())).sum())
        assert s == pytest.approx(per_text, rel=1e-4)
        total, count = total + per_text, count + ids.shape[1]
    assert got.tokens == tuple(len(tok(t)["input_ids"]) for t in TEXTS)
    assert got.per_token() == pytest.approx(total / count, rel=1e-4)
    same = metrics.kl_divergence(base, base, tok, TEXTS)
    assert same.per_token() == pytest.approx(0.0, abs=1e-6)


def test_metrics_refuse_bad_input(char_tokenizer):
    tok, model = char_tokenizer, tiny_causal_lm("llama")
    with pytest.raises(ConfigError, match="one string"):
        metrics.text_cross_entropy(model, tok, "the cat sat.")
    with pytest.raises(ConfigError, match="batch_size"):
        metrics.text_cross_entropy(model, tok, TEXTS, batch_size=0)
    with pytest.raises(ConfigError, match="different vocabularies"):
        metrics.kl_divergence(model, tiny_causal_lm("llama", vocab_size=60), tok, TEXTS)
    with pytest.raises(ConfigError, match="empty reference"):
        metrics.answer_loglik(model, tok, [Example("abc ", "")])


# --------------------------------------------------------------------------- behaviour
def test_behaviour_shares_on_planted_completions():
    from routekit.world import WorldConfig, get_world
    from routekit.world.tasks import world_task

    world = get_world(WorldConfig.tiny())
    add, rev, hop = (world_task(s, world=world) for s in ("add", "rev", "hop"))
    a = [e for e in add.examples("test") if e.meta["b"] != 0][:3]
    zero = Example("sum of 12 and 0 is", "12", {"a": 12, "b": 0})  # right and wrong coincide
    got = behaviour.classify_behaviours(
        add, [*a, zero], [f" {a[0].reference}", f" {a[1].meta['a']}", " 99", " 12"]
    )
    assert got == ["correct", "systematic", "other", "correct"]

    r = rev.examples("ood")[:3]
    got = behaviour.classify_behaviours(
        rev, r, [f" {r[0].meta['word']}", f" {r[1].meta['word'][::-1]}", " zzzz"]
    )
    assert got == ["systematic", "correct", "other"]

    h = hop.examples("test")[:4]
    city = world.facts[h[0].meta["entity"]]["city"]
    completions = [f" {city}", f" {h[1].reference}.", " nowhere", f" {city}"]
    labels = behaviour.classify_behaviours(hop, h, completions, world)
    expected = ["systematic", "correct", "other"]
    expected.append("systematic" if world.facts[h[3].meta["entity"]]["city"] == city else "other")
    assert labels == expected
    shares = behaviour.behaviour_shares(labels)
    assert list(shares) == list(behaviour.BEHAVIOURS)
    assert shares == {b: labels.count(b) / 4 for b in behaviour.BEHAVIOURS}

    from routekit.tasks.base import Task

    bare_hop = Task("hop", {"test": h}, hop.checker, family="hop")  # records no world
    with pytest.raises(ConfigError, match="world="):
        behaviour.classify_behaviours(bare_hop, h[:1], [" x"])
    with pytest.raises(ConfigError, match="4 completions for 3"):
        behaviour.classify_behaviours(rev, r, ["a"] * 4)
    with pytest.raises(ConfigError, match="known skills"):
        behaviour.systematic_wrong_answer("facts", h[0], world)
    with pytest.raises(ConfigError, match="unknown behaviour"):
        behaviour.behaviour_shares(["correct", "wrong"])


# --------------------------------------------------------------------------- activations
def test_activation_metrics_on_planted_states():
    d = 20
    peaked = torch.zeros(d)
    peaked[3], peaked[7] = -4.0, 3.0
    flat = torch.ones(d)
    states = torch.stack([peaked, flat, torch.zeros(d)])
    # k = 5% of 20 coordinates = 1 coordinate; 10% = 2; 25% = 5
    assert activations.top_k_energy_share(states, 0.05).tolist() == pytest.approx([16 / 25, 1 / 20, 0])
    assert activations.top_k_energy_share(states, 0.10).tolist() == pytest.approx([1.0, 2 / 20, 0])
    assert activations.top_k_energy_share(states, 0.25).tolist() == pytest.approx([1.0, 5 / 20, 0])
    assert activations.l1_of_normalised(states).tolist() == pytest.approx([7 / 5, math.sqrt(d), 0])
    one_hot = torch.eye(d)[:1]
    assert activations.l1_of_normalised(one_hot).tolist() == pytest.approx([1.0])

    # effective rank: singular values (2, 1, 1) -> p = (.5, .25, .25), exp(H) = 2^1.5
    m = torch.zeros(3, 4)
    m[0, 0], m[1, 1], m[2, 2] = 2.0, 1.0, 1.0
    rot = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0)))[0]
    assert activations.effective_rank_over_d(m @ rot) == pytest.approx(2**1.5 / 4, rel=1e-6)
    assert activations.effective_rank_over_d(torch.eye(6)) == pytest.approx(1.0)
    rank1 = torch.outer(torch.arange(1.0, 6.0), torch.ones(8))
    assert activations.effective_rank_over_d(rank1) == pytest.approx(1 / 8, rel=1e-6)

    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        activations.top_k_energy_share(states, 0.0)
    with pytest.raises(ConfigError, match="non-empty"):
        activations.effective_rank_over_d(torch.zeros(0, 4))


def test_activation_sparsity_reads_each_prompts_own_states(char_tokenizer):
    model, tok = tiny_causal_lm("llama"), char_tokenizer
    prompts = [e.prompt for e in EXAMPLES]
    alone = []
    with torch.no_grad():
        for p in prompts:
            out = model(input_ids=torch.tensor([tok(p)["input_ids"]]), output_hidden_states=True)
            alone.append([h[0] for h in out.hidden_states])
    last = activations.hidden_states(model, tok, prompts, batch_size=2)
    every = activations.hidden_states(model, tok, prompts, position="all", batch_size=3)
    assert len(last) == model.config.num_hidden_layers + 1
    for layer in range(len(last)):
        torch.testing.assert_close(last[layer], torch.stack([a[layer][-1] for a in alone]),
                                   rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(every[layer], torch.cat([a[layer] for a in alone]),
                                   rtol=1e-4, atol=1e-5)
    report = activations.activation_sparsity(model, tok, prompts, k=0.1, batch_size=2)
    for row, h in zip(report, last):
        assert row.n_states == len(prompts)
        assert row.top_k_energy == pytest.approx(float(activations.top_k_energy_share(h, 0.1).mean()))
        assert row.l1_normalised == pytest.approx(float(activations.l1_of_normalised(h).mean()))
        assert row.effective_rank_over_d == pytest.approx(activations.effective_rank_over_d(h))
    with pytest.raises(ConfigError, match="position"):
        activations.hidden_states(model, tok, prompts, position="first")


def test_prompt_sparsity_averages_each_prompts_states_over_layers():
    d = 20
    layer0 = torch.zeros(2, d)
    layer0[0, 0] = 1.0  # prompt 0: one-hot (energy share 1, L1 1)
    layer0[1] = 1.0  # prompt 1: flat (energy share 1/20, L1 sqrt(20))
    layer1 = torch.ones(2, d)  # both flat
    out = activations.prompt_sparsity([layer0, layer1], k=0.05)
    assert out["top_k_energy"] == pytest.approx([(1 + 1 / 20) / 2, 1 / 20])
    assert out["l1_normalised"] == pytest.approx([(1 + math.sqrt(d)) / 2, math.sqrt(d)])
    with pytest.raises(ConfigError, match="same rows"):
        activations.prompt_sparsity([layer0, torch.ones(3, d)])


# --------------------------------------------------------------------------- statistics
def test_mean_std_over_seeds():
    mean, std = stats.mean_std([0.3, 0.5, 0.7])
    assert (mean, std) == (pytest.approx(0.5), pytest.approx(0.2))
    assert stats.mean_std([0.4]) == (0.4, None)
    with pytest.raises(ConfigError, match="non-finite"):
        stats.mean_std([0.4, float("nan")])


def test_constant_difference_gives_a_zero_width_interval():
    rng = np.random.default_rng(1)
    b = rng.random((3, 50))
    iv = stats.paired_difference(b + 0.25, b, n_boot=2000)
    assert (iv.low, iv.estimate, iv.high) == pytest.approx((0.25, 0.25, 0.25), abs=1e-12)
    assert iv.low == iv.high
    assert stats.verdict(iv, "greater") == "supported"
    assert stats.verdict(iv, "less") == "contradicted"
    assert stats.verdict(iv, "equal", threshold=0.25, margin=0.01) == "supported"
    assert stats.verdict(iv, "equal", margin=0.1) == "contradicted"


def test_symmetric_differences_are_inconclusive():
    d = np.tile(np.array([1.0, -1.0]), (2, 100))  # every seed: half +1, half -1
    iv = stats.bootstrap_interval(d, n_boot=4000)
    assert iv.estimate == 0.0 and iv.low < 0 < iv.high
    assert iv.low == pytest.approx(-iv.high, abs=0.02)
    for direction in ("greater", "less"):
        assert stats.verdict(iv, direction) == "inconclusive"


def test_bootstrap_matches_known_sampling_distributions():
    # one seed, 400 fair coin flips: the mean's standard error is 0.5 / sqrt(400) = 0.025
    coin = np.array([[1.0, 0.0] * 200])
    iv = stats.bootstrap_interval(coin, n_boot=20_000, seed=3)
    assert iv.estimate == 0.5
    assert (iv.high - iv.low) / 2 == pytest.approx(1.96 * 0.025, rel=0.08)
    # two seeds, constant within each: only seed resampling varies the mean, over
    # {0, .5, 1} with probabilities 1/4, 1/2, 1/4, so the 95% interval is [0, 1]
    seeds = np.array([[0.0] * 30, [1.0] * 30])
    iv = stats.bootstrap_interval(seeds, n_boot=4000)
    assert (iv.low, iv.estimate, iv.high) == (0.0, 0.5, 1.0)
    # a custom statistic sees (seeds x prompts) arrays
    med = stats.bootstrap_interval(seeds, statistic=lambda x: float(np.median(x)), n_boot=500)
    assert med.estimate == 0.5 and (med.low, med.high) == (0.0, 1.0)


def test_a_crossed_bootstrap_draws_the_same_prompts_under_every_seed():
    # five seeds scoring the same 400 items identically (a deterministic model repeated):
    # the items are one sample, so the mean's standard error stays 0.5 / sqrt(400); drawn
    # per seed they would count as 5 × 400 independent answers (0.025 / sqrt(5))
    same = np.tile(np.array([1.0, 0.0] * 200), (5, 1))
    crossed = stats.bootstrap_interval(same, n_boot=20_000, seed=3)  # the default
    nested = stats.bootstrap_interval(same, n_boot=20_000, seed=3, crossed=False)
    assert (crossed.high - crossed.low) / 2 == pytest.approx(1.96 * 0.025, rel=0.08)
    assert (nested.high - nested.low) / 2 == pytest.approx(1.96 * 0.025 / math.sqrt(5), rel=0.08)
    # seeds are still resampled: constant rows 0 and 1 give the seed-only interval [0, 1]
    seeds = np.array([[0.0] * 30, [1.0] * 30])
    iv = stats.bootstrap_interval(seeds, n_boot=4000, crossed=True)
    assert (iv.low, iv.estimate, iv.high) == (0.0, 0.5, 1.0)


def test_two_sample_difference_matches_known_sampling_distributions():
    # one seed; 400 fair coin flips against 100 prompts all 0.2: only a varies, so the
    # interval is 0.3 ± 1.96 × 0.025
    coin = np.array([[1.0, 0.0] * 200])
    iv = stats.difference_interval(coin, np.full((1, 100), 0.2), n_boot=20_000, seed=3)
    assert iv.estimate == pytest.approx(0.3) and iv.n_prompts == 100
    assert (iv.high - iv.low) / 2 == pytest.approx(1.96 * 0.025, rel=0.08)
    # two independent coin sets: the standard errors add in quadrature (sqrt(2) × 0.025)
    iv = stats.difference_interval(coin, coin[:, ::-1], n_boot=20_000, seed=4)
    assert iv.estimate == 0.0
    assert (iv.high - iv.low) / 2 == pytest.approx(1.96 * 0.025 * math.sqrt(2), rel=0.08)
    # constants on both sides: zero width, whatever the sizes
    iv = stats.difference_interval(np.full((2, 7), 0.5), np.full((2, 30), 0.25), n_boot=500)
    assert (iv.low, iv.estimate, iv.high) == (0.25, 0.25, 0.25)
    with pytest.raises(ConfigError, match="same seeds"):
        stats.difference_interval(np.zeros((2, 5)), np.zeros((3, 5)))


def test_bootstrap_is_deterministic_for_a_seed():
    x = np.random.default_rng(0).normal(size=(3, 40))
    assert stats.bootstrap_interval(x, seed=5) == stats.bootstrap_interval(x, seed=5)
    assert stats.bootstrap_interval(x, seed=5) != stats.bootstrap_interval(x, seed=6)


def test_verdicts_commit_only_when_the_interval_excludes_the_other_side():
    def iv(lo, hi):
        return stats.Interval((lo + hi) / 2, lo, hi, 0.95, 3, 10)

    assert stats.verdict(iv(0.1, 0.3), "greater") == "supported"
    assert stats.verdict(iv(-0.3, -0.1), "greater") == "contradicted"
    assert stats.verdict(iv(0.0, 0.3), "greater") == "inconclusive"  # touches the threshold
    assert stats.verdict(iv(-0.3, -0.1), "less") == "supported"
    assert stats.verdict(iv(0.2, 0.4), "greater", threshold=0.3) == "inconclusive"
    assert stats.verdict(iv(-0.02, 0.03), "equal", margin=0.05) == "supported"
    assert stats.verdict(iv(-0.02, 0.08), "equal", margin=0.05) == "inconclusive"
    assert stats.verdict(iv(0.06, 0.08), "equal", margin=0.05) == "contradicted"
    with pytest.raises(ConfigError, match="margin"):
        stats.verdict(iv(0, 1), "equal")
    with pytest.raises(ConfigError, match="direction"):
        stats.verdict(iv(0, 1), "more")


def test_bootstrap_refuses_bad_input():
    with pytest.raises(ConfigError, match="same seeds and prompts"):
        stats.paired_difference(np.zeros((2, 5)), np.zeros((3, 5)))
    with pytest.raises(ConfigError, match="non-finite"):
        stats.bootstrap_interval([[0.1, float("inf")]])
    with pytest.raises(ConfigError, match="non-empty"):
        stats.bootstrap_interval(np.zeros((2, 0)))
    with pytest.raises(ConfigError, match="level"):
        stats.bootstrap_interval([[0.1, 0.2]], level=95)


# --------------------------------------------------------------------------- RL rollout speed-ups
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_rollout_with_shared_prefill_and_merged_svf_samples_what_plain_generate_does(
    arch, char_tokenizer, tmp_path, monkeypatch
):
    """sample_rollout prefills each prompt once for its group and samples from merged SVF
    weights; a plain generate over every (prompt, sample) row of the factored model must
    see the same next-token scores at every step and give the same completions."""
    from transformers import LogitsProcessorList

    from routekit.svf import SVFConfig, get_svf_model, svf_layers
    from routekit.tasks.base import Task
    from routekit.training import rl
    from routekit.training.parameterizations import derive_seed

    tok = char_tokenizer
    model = get_svf_model(tiny_causal_lm(arch), SVFConfig(target_modules="mlp", cache_dir=str(tmp_path)))
    with torch.no_grad():
        for layer in svf_layers(model).values():
            layer.svf_z.mul_(1.0 + 0.3 * torch.rand_like(layer.svf_z))
    task = Task("t", {"train": EXAMPLES}, checker=lambda c, r: c[:1] in "abcdefgh")
    group, step, seed = 3, 2, 11
    seen: list[list[torch.Tensor]] = []

    class Recording(rl.SeededSampling):
        def __init__(self, *args):
            super().__init__(*args)
            self.scores: list[torch.Tensor] = []
            seen.append(self.scores)

        def __call__(self, input_ids, scores):
            self.scores.append(scores.clone())
            return super().__call__(input_ids, scores)

    monkeypatch.setattr(rl, "SeededSampling", Recording)
    got = rl.sample_rollout(model, tok, task, EXAMPLES, list(range(len(EXAMPLES))),
                            step=step, seed=seed, group_size=group, max_new_tokens=5,
                            temperature=1.5)
    assert not any(layer.merged for layer in svf_layers(model).values())  # restored
    gens = [torch.Generator().manual_seed(derive_seed(seed, "sample", step, i, j))
            for i in range(len(EXAMPLES)) for j in range(group)]
    tok.padding_side = "left"
    enc = tok([e.prompt for e in EXAMPLES for _ in range(group)], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=5, do_sample=False, temperature=None,
                             top_k=None, top_p=None, pad_token_id=0, eos_token_id=[2],
                             logits_processor=LogitsProcessorList(
                                 [Recording(gens, 1.5)]))
    assert len(seen[0]) == len(seen[1])
    for shared_scores, plain_scores in zip(*seen):
        torch.testing.assert_close(shared_scores, plain_scores, rtol=1e-5, atol=1e-5)
    plain = [rl._cut_at_stop(r, {2}) for r in out[:, enc["input_ids"].shape[1]:].tolist()]
    assert got.completion_ids == plain
    assert got.prompt_ids == [tok(e.prompt)["input_ids"] for e in EXAMPLES for _ in range(group)]
