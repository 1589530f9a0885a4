"""Claims (a)–(h) on planted results whose right verdict is known: claims that cannot fail
are "not applicable", per-seed figures need five seeds, collapse is of the pretraining mix and
not the accuracy gain renamed, (h) resamples trained models, and (g) has a stated margin."""

from __future__ import annotations

import numpy as np
import pytest

from routekit.compare.claims import (
    KEEP_MARGIN,
    MIN_SEEDS,
    NOT_APPLICABLE,
    all_claims,
    cluster_correlation,
    format_entropy,
)
from routekit.compare.results import Results

from .test_compare_harness import fixture_results


def claim(results: Results, letter: str, scope: str = "hop"):
    return next(c for c in dict(all_claims(results))[scope] if c.letter == letter)


def edit(results: Results, method: str, fn) -> Results:
    out = results.model_copy(deep=True)
    for cell in out.cells:
        if cell.key.method == method:
            fn(cell)
    return out


def test_c_is_not_applicable_when_the_mask_is_the_whole_model():
    dense = edit(fixture_results(), "subnet_rl", lambda c: setattr(c, "mask_density", 1.0))
    c = claim(dense, "c")
    assert c.verdict == NOT_APPLICABLE and "whole model" in c.reason
    kept = claim(fixture_results(), "c")
    assert kept.verdict == "supported"  # density 0.1: it can fail
    # a supported line says what a same-run mask cannot show
    assert "not that a mask found in another run suffices" in kept.line()
    assert "not that a mask" not in c.line()  # n/a: no numbers to qualify
    # without clipping nothing couples the entries: the subnetwork run repeats its source
    unclipped = edit(fixture_results(), "subnet_rl",
                     lambda c: setattr(c, "train_config", {"grad_clip": None}))
    c = claim(unclipped, "c")
    assert c.verdict == NOT_APPLICABLE and "without gradient clipping" in c.reason
    clipped = edit(fixture_results(), "subnet_rl",
                   lambda c: setattr(c, "train_config", {"grad_clip": 1.0}))
    assert "global norm, at 1)" in claim(clipped, "c").line()


def test_a_and_d_do_not_fall_back_to_methods_they_are_not_about():
    no_bf16 = fixture_results().model_copy(deep=True)
    no_bf16.cells = [c for c in no_bf16.cells if c.key.method not in ("full_rl_bf16", "subnet_rl")]
    a = claim(no_bf16, "a")
    assert a.verdict == NOT_APPLICABLE and "bf16" in a.reason  # full_rl is there but does not count
    no_svf = fixture_results().model_copy(deep=True)
    no_svf.cells = [c for c in no_svf.cells if c.key.method != "svf_rl"]
    d = claim(no_svf, "d")
    assert d.verdict == NOT_APPLICABLE and "svf_rl" in d.reason
    assert claim(fixture_results(), "d").numbers[0].startswith("svf_rl: test gain")


def test_per_seed_figures_commit_only_with_five_seeds_and_say_range_below():
    three, five = fixture_results(n_seeds=3), fixture_results(n_seeds=MIN_SEEDS)
    b3, b5 = claim(three, "b"), claim(five, "b")
    assert b3.verdict == "inconclusive"
    assert "range over 3 seeds [" in b3.numbers[0] and "no interval" in b3.numbers[0]
    # bf16 0.90..0.94 unchanged against fp32 0.00..0.04 on five seeds
    assert b5.verdict == "supported" and "(5 seeds)" in b5.numbers[0]
    assert "range" not in b5.numbers[0]


def _behaviours(results: Results, method: str, correct: np.ndarray, systematic: np.ndarray):
    def set_rows(cell):
        pp = cell.variants[0].per_prompt
        pp["test"], pp["systematic"] = correct.tolist(), systematic.tolist()
    return edit(results, method, set_rows)


def _with_rl(results: Results, correct: np.ndarray, systematic: np.ndarray) -> Results:
    for m in ("full_rl", "full_rl_bf16", "svf_rl", "subnet_rl"):
        results = _behaviours(results, m, correct, systematic)
    return results


def test_e_needs_a_collapse_of_the_pretraining_mix_not_an_accuracy_gain():
    n = 40
    i = np.arange(n)
    # base: correct 0.2, systematic 0.2, other 0.6 (an even mix of the two taught behaviours)
    base_c, base_s = (i % 5 == 0).astype(float), (i % 5 == 1).astype(float)
    results = _behaviours(fixture_results(), "base", base_c, base_s)
    # RL doubled accuracy, drawing on "other" answers, and kept the systematic answer in
    # proportion: correct 0.4, systematic 0.4, other 0.2. Its 3-way behaviour distribution
    # did concentrate (entropy over correct / systematic / other falls) ...
    kept_c, kept_s = (i % 5 < 2).astype(float), ((i % 5 >= 2) & (i % 5 < 4)).astype(float)
    e = claim(_with_rl(results, kept_c, kept_s), "e")
    assert kept_c.mean() > base_c.mean()
    assert e.verdict == "inconclusive"  # ... but the pretraining mix is still even: no collapse
    assert "tuned − base +0 [" in e.numbers[1] and "vs base 0.5" in e.numbers[1]
    # RL that raised accuracy and spread towards the systematic answer: the mix grew more even
    base2_c, base2_s = (i % 10 < 4).astype(float), (i % 10 == 4).astype(float)  # 4:1 correct
    spread_c, spread_s = (i % 10 < 5).astype(float), ((i % 10 >= 5) & (i % 10 < 9)).astype(float)
    results2 = _behaviours(fixture_results(), "base", base2_c, base2_s)
    e = claim(_with_rl(results2, spread_c, spread_s), "e")
    assert e.verdict == "contradicted"
    want = format_entropy([5, 4, 1]) - format_entropy([4, 1, 5])
    assert want > 0 and f"tuned − base {want:+.3g} [" in e.numbers[1]
    # RL that drives the systematic answer out collapses the mix onto one behaviour
    collapsed_c = (i % 20 != 0).astype(float)
    assert claim(_with_rl(results, collapsed_c, np.zeros(n)), "e").verdict == "supported"


def test_e_is_not_applicable_when_the_base_shows_one_behaviour():
    # rev on the world: the base never copies the word unreversed, so an accuracy gain
    # is all that could move; that cannot test a collapse of two behaviours onto one
    n = 40
    i = np.arange(n)
    results = _behaviours(fixture_results(), "base", (i % 4 == 0).astype(float), np.zeros(n))
    e = claim(_with_rl(results, (i % 4 < 3).astype(float), np.zeros(n)), "e")
    assert e.verdict == NOT_APPLICABLE and "never show the systematic" in e.reason
    assert "vs base correct 0.25 / systematic 0.00 / other 0.75" in e.numbers[0]


def test_e_does_not_commit_on_one_base_answer():
    # the base shows the systematic behaviour on one prompt of 30 and RL never does: the
    # mix "collapsed", but on one item; prompts are drawn once for every seed, so the draws
    # that miss that item (about a third) leave nothing to collapse
    n = 30
    i = np.arange(n)
    results = _behaviours(fixture_results(), "base", (i < 11).astype(float), (i == 11).astype(float))
    e = claim(_with_rl(results, (i < 12).astype(float), np.zeros(n)), "e")
    assert e.verdict == "inconclusive" and "vs base 0.917" in e.numbers[1]


def test_format_entropy_against_its_definition():
    assert format_entropy([1, 0, 0]) == 0.0
    assert format_entropy([0, 5, 9]) == 0.0  # "other" is no behaviour of the mix
    assert format_entropy([3, 3, 100]) == pytest.approx(1.0)
    assert format_entropy([0, 0, 1]) == 0.0
    p = np.array([0.6, 0.2]) / 0.8
    assert format_entropy([0.6, 0.2, 0.2]) == pytest.approx(-(p * np.log(p)).sum() / np.log(2))


def test_h_resamples_trained_models_not_their_alpha_variants():
    rng = np.random.default_rng(1)
    points = [(float(x), float(x + rng.normal(0, 0.5)), f"m{k}") for k, x in
              enumerate(rng.normal(size=12))]
    # three α variants of each model, all at the model's own point: the same information
    tripled = [p for p in points for _ in range(3)]
    one, three = cluster_correlation(points), cluster_correlation(tripled)
    assert (one.estimate, one.low, one.high) == pytest.approx((three.estimate, three.low, three.high))
    assert three.n_seeds == 12 and three.n_prompts == 36
    # against an independent point-level bootstrap, which narrows on the copies
    x, y = np.array([p[0] for p in tripled]), np.array([p[1] for p in tripled])
    r = np.random.default_rng(0)
    reps = [np.corrcoef(x[j], y[j])[0, 1] for j in r.integers(0, 36, size=(2000, 36))]
    naive_width = np.subtract(*np.quantile(reps, [0.975, 0.025]))
    assert three.high - three.low > naive_width
    assert one.estimate == pytest.approx(np.corrcoef([p[0] for p in points], [p[1] for p in points])[0, 1])


def test_h_reports_each_task_and_counts_models():
    h = claim(fixture_results(), "h", scope="all tasks")
    assert h.verdict == "supported"  # forgetting = 2 × KL exactly; 7 trained methods × 2 seeds
    assert "from 14 trained models (cluster bootstrap over models)" in h.numbers[0]


def test_g_commits_only_beyond_its_margin():
    results = fixture_results()
    assert claim(results, "g").verdict == "supported"  # full −1.0, lora −0.4, svf −0.01 nats

    def shift(delta: float):
        def f(cell):
            pp = cell.variants[0].per_prompt
            pp["probe_loglik"] = [-2.0 + delta] * len(pp["probe_loglik"])
        return f

    # full SFT lost 0.03 nats per probe: within the margin, so "loses it" is contradicted
    small = edit(results, "full_sft", shift(-0.03))
    small = edit(small, "base", shift(0.0))
    g = claim(small, "g")
    assert g.verdict == "contradicted" and f"loses: below −{KEEP_MARGIN:g}" in g.numbers[0]
    # SVF 0.02 nats below full SFT: inside the margin, an ordering that is not contradicted
    close = edit(small, "svf_sft", shift(-0.05))
    line = next(n for n in claim(close, "g").numbers if n.startswith("svf_sft − full_sft"))
    assert line.startswith("svf_sft − full_sft -0.02 [")
    from routekit.compare.claims import _ordering
    from routekit.compare.stats import bootstrap_interval
    assert _ordering(bootstrap_interval(np.full((1, 10), -0.02)), KEEP_MARGIN) == "inconclusive"
    assert _ordering(bootstrap_interval(np.full((1, 10), -0.2)), KEEP_MARGIN) == "contradicted"
