"""AdaptiveModel: route then generate, against each expert alone, groups run separately,
threads, bundles on disk, the merged export, and refused input."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
import torch
from transformers import AutoModelForCausalLM

import routekit as rk
from routekit.adaptive import AdaptiveModel
from routekit.errors import (
    ConfigError,
    FingerprintMismatchError,
    MixtureError,
    TokenizerMismatchError,
)
from routekit.routing import FixedRouter, Mixture, Router
from routekit.svf import SVFConfig, get_svf_model, svf_layers
from routekit.svf.model import merged

from .conftest import peaked, tiny_causal_lm, two_kinds_of_experts

PROMPTS = ["rev abc =", "backwards xy:", "17+8=", "sum of 3 and 4 is", "kulo lives in",
           "rev dog =", "5+5="]


class ByPrefixRouter(Router):
    """Oracle-style routing for tests: the mixture of the first prefix a prompt starts with."""

    kind = "test-prefix"

    def __init__(self, experts: Sequence, table: dict[str, dict[str, float]]) -> None:
        super().__init__(experts)
        self.table = table

    def route(self, prompts: Sequence[str]) -> list[Mixture]:
        out = []
        for p in prompts:
            weights = next((w for k, w in self.table.items() if p.startswith(k)), {})
            out.append(Mixture(weights=weights))
        return out


TABLE = {"rev": {"s1": 1.0}, "backwards": {"p1": 1.0}, "sum": {"s2": 0.5, "p2": 1.0},
         "kulo": {"s1": 0.3, "s2": 0.3}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, char_tokenizer):
    return two_kinds_of_experts(char_tokenizer, tmp_path_factory.mktemp("svf"))


def experts_of(s):
    return [s["s1"], s["s2"], s["p1"], s["p2"]]


def test_fixed_svf_expert_equals_the_merged_model(setup):
    s = setup
    am = AdaptiveModel(s["base"], s["tok"], [s["s1"]], FixedRouter([s["s1"]], {"s1": 1.0}))
    out = am.generate_with_details(PROMPTS, max_new_tokens=6)
    assert out.merged  # one shared mixture: the merged path
    # Nothing stays merged, and svf_z is as it was.
    assert not any(layer.merged for layer in svf_layers(s["base"]).values())
    assert all(torch.equal(layer.svf_z, torch.ones_like(layer.svf_z))
               for layer in svf_layers(s["base"]).values())
    with merged(s["base"], s["s1"]):
        want = rk.generate(s["base"], s["tok"], PROMPTS, max_new_tokens=6)
        x = torch.tensor([s["tok"]("rev abc =")["input_ids"]])
        merged_logits = s["base"](x).logits
    assert out.texts == want
    # The factored path (a per-row mixture) gives the same logits within SVD rounding.
    with rk.mixture(s["base"], [s["s1"]], [[1.0]]):
        factored = s["base"](x).logits
    torch.testing.assert_close(factored, merged_logits, atol=1e-4, rtol=1e-4)


def test_fixed_proxy_expert_equals_proxy_generate(setup):
    s = setup
    am = AdaptiveModel(s["base"], s["tok"], [s["p1"]], FixedRouter([s["p1"]], {"p1": 1.0}))
    assert am.generate(PROMPTS, max_new_tokens=6) == rk.proxy_generate(
        s["base"], s["tok"], [s["p1"]], PROMPTS, alpha=1.0, max_new_tokens=6)


def test_routed_batch_equals_each_group_run_separately(setup):
    s = setup
    experts = experts_of(s)
    am = AdaptiveModel(s["base"], s["tok"], experts, ByPrefixRouter(experts, TABLE))
    out = am.generate_with_details(PROMPTS, max_new_tokens=6)
    assert not out.merged
    groups: dict[str, list[int]] = {}
    for i, m in enumerate(out.mixtures):
        groups.setdefault(str(m), []).append(i)
    assert len(groups) == 5  # four prefixes and the base
    for key, rows in groups.items():
        weights = out.mixtures[rows[0]].weights
        group = [PROMPTS[i] for i in rows]
        alone = AdaptiveModel(s["base"], s["tok"], experts, FixedRouter(experts, weights)).generate(
            group, max_new_tokens=6) if weights else rk.generate(
            s["base"], s["tok"], group, max_new_tokens=6)
        assert [out.texts[i] for i in rows] == alone, key


def test_sampling_with_several_sequences_keeps_each_prompts_mixture(setup):
    s = setup
    experts = experts_of(s)
    am = AdaptiveModel(s["base"], s["tok"], experts, ByPrefixRouter(experts, TABLE))
    prompts = PROMPTS[:4]
    greedy = am.generate(prompts, max_new_tokens=5)
    for i, p in enumerate(prompts):  # greedy under the router = each prompt alone
        assert am.generate([p], max_new_tokens=5) == [greedy[i]]
    # At a tiny temperature sampling is argmax, so each prompt's 3 sequences equal its greedy
    # completion: they ran with its mixture, not a neighbour's.
    torch.manual_seed(0)
    sampled = am.generate(prompts, max_new_tokens=5, do_sample=True, temperature=1e-4,
                          num_return_sequences=3)
    assert sampled == [g for g in greedy for _ in range(3)]


def test_threads_get_their_own_mixtures_and_batch_together(setup):
    s = setup
    experts = experts_of(s)
    am = AdaptiveModel(s["base"], s["tok"], experts, ByPrefixRouter(experts, TABLE))
    requests = [PROMPTS[i:i + 3] for i in range(5)]
    want = [am.generate(r, max_new_tokens=6) for r in requests]
    served = []
    real = am._serve
    am._serve = lambda batch: served.append(len(batch)) or real(batch)
    got: dict[int, list] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(requests))

    def work(i):
        try:
            barrier.wait()
            for _ in range(3):
                got.setdefault(i, []).append(am.generate(requests[i], max_new_tokens=6))
        except BaseException as e:  # noqa: BLE001 - checked in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(len(requests)):
        assert got[i] == [want[i]] * 3
    assert sum(served) == 3 * len(requests)


def test_bundle_round_trips_and_refuses_another_base(setup, tmp_path):
    s = setup
    experts = experts_of(s)
    am = AdaptiveModel(s["base"], s["tok"], experts,
                       FixedRouter(experts, {"s1": 0.7, "p2": 0.4}))
    want = am.generate(PROMPTS, max_new_tokens=6)
    am.save_pretrained(tmp_path / "bundle")
    back = AdaptiveModel.from_pretrained(tmp_path / "bundle", s["base"], s["tok"])
    assert [e.name for e in back.experts] == ["s1", "s2", "p1", "p2"]
    assert back.generate(PROMPTS, max_new_tokens=6) == want
    other = get_svf_model(tiny_causal_lm("llama", vocab_size=len(s["tok"]), seed=8),
                          SVFConfig(target_modules="all-linear", cache_dir=str(tmp_path / "c")))
    with pytest.raises(FingerprintMismatchError, match=s["base"].svf_base_fingerprint):
        AdaptiveModel.from_pretrained(tmp_path / "bundle", other, s["tok"])


def test_export_merged_loads_with_plain_transformers(setup, tmp_path):
    s = setup
    experts = experts_of(s)
    am = AdaptiveModel(s["base"], s["tok"], experts, ByPrefixRouter(experts, TABLE))
    am.export_merged({"s1": 0.6, "s2": 0.4}, tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", local_files_only=True)
    x = torch.tensor([s["tok"]("rev abc =")["input_ids"]])
    with rk.mixture(s["base"], [s["s1"], s["s2"]], [0.6, 0.4]):
        want = s["base"](x).logits
    torch.testing.assert_close(plain(x).logits, want, atol=1e-4, rtol=1e-4)
    assert (tmp_path / "merged" / "tokenizer.json").is_file()
    with pytest.raises(ConfigError, match="proxy expert.*p1.*cannot be merged"):
        am.export_merged({"s1": 1.0, "p1": 0.5}, tmp_path / "no")
    assert not (tmp_path / "no").exists()


def test_bad_input_is_refused_and_changes_nothing(setup, tmp_path):
    s = setup
    experts = experts_of(s)
    z_before = {n: m.svf_z.clone() for n, m in svf_layers(s["base"]).items()}
    with pytest.raises(ConfigError, match="at least one expert"):
        AdaptiveModel(s["base"], s["tok"], [], FixedRouter(["x"], {}))
    with pytest.raises(MixtureError, match="unknown expert"):
        FixedRouter(experts, {"nobody": 1.0})
    with pytest.raises(MixtureError, match="nan"):
        Mixture(weights={"s1": float("nan")})
    with pytest.raises(MixtureError, match="inf"):
        Mixture(weights={"s1": float("inf")})
    with pytest.raises(MixtureError, match="negative"):
        Mixture(weights={"s1": -0.5})
    # A router that returns a name the model lacks.
    rogue = ByPrefixRouter(experts, {"rev": {"ghost": 1.0}})
    am = AdaptiveModel(s["base"], s["tok"], experts, rogue)
    with pytest.raises(MixtureError, match="ghost"):
        am.generate(["rev abc ="])
    # Experts from another base.
    other = get_svf_model(tiny_causal_lm("llama", vocab_size=len(s["tok"]), seed=8),
                          SVFConfig(target_modules="all-linear", cache_dir=str(tmp_path)))
    foreign = other.export_expert("foreign")
    with pytest.raises(FingerprintMismatchError):
        AdaptiveModel(s["base"], s["tok"], [s["s1"], foreign],
                      FixedRouter(["s1", "foreign"], {}))
    # A router made for other experts.
    with pytest.raises(FingerprintMismatchError, match="router was made for"):
        AdaptiveModel(s["base"], s["tok"], experts, FixedRouter(["s1", "p1"], {}))
    fixed = FixedRouter(["s1", "p1"], {"s1": 1.0})
    fixed.save_pretrained(tmp_path / "router")
    with pytest.raises(FingerprintMismatchError, match="was made for experts"):
        rk.routing.load_router(tmp_path / "router", experts=experts)
    # A proxy whose vocabulary does not match the base's tokenizer.
    from transformers import PreTrainedTokenizerFast

    from routekit.world.tokenizer import build_tokenizer

    shuffled = build_tokenizer()
    vocab = shuffled.get_vocab()
    a, b = sorted(vocab, key=vocab.get)[10:12]
    raw = shuffled.backend_tokenizer.to_str().replace(f'"{a}":{vocab[a]}', '"@A@":0').replace(
        f'"{b}":{vocab[b]}', f'"{a}":{vocab[b]}').replace('"@A@":0', f'"{b}":{vocab[a]}')
    from tokenizers import Tokenizer

    other_tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(raw),
                                        pad_token="<pad>", eos_token="<eos>")
    mismatched = rk.ProxyExpert(s["p1"].tuned, s["p1"].untuned, "px", tokenizer=other_tok)
    with pytest.raises(TokenizerMismatchError):
        AdaptiveModel(s["base"], s["tok"], [mismatched], FixedRouter([mismatched], {"px": 1.0}))
    # A prompt longer than a proxy's context (128 positions).
    am = AdaptiveModel(s["base"], s["tok"], experts, FixedRouter(experts, {"p1": 1.0}))
    with pytest.raises(ConfigError, match="context"):
        am.generate(["rev " + "a" * 130 + " ="], max_new_tokens=4)
    assert all(torch.equal(m.svf_z, z_before[n]) for n, m in svf_layers(s["base"]).items())
    assert not any(m.merged for m in svf_layers(s["base"]).values())


def test_wraps_a_plain_base_for_svf_experts(setup, tmp_path):
    s = setup
    plain = peaked(tiny_causal_lm("llama", vocab_size=len(s["tok"]), seed=0))
    am = AdaptiveModel(plain, s["tok"], [s["s1"]], FixedRouter([s["s1"]], {"s1": 1.0}),
                       svf_config=SVFConfig(target_modules="all-linear", cache_dir=str(tmp_path)))
    assert svf_layers(plain)
    ref = AdaptiveModel(s["base"], s["tok"], [s["s1"]], FixedRouter([s["s1"]], {"s1": 1.0}))
    assert am.generate(PROMPTS, max_new_tokens=6) == ref.generate(PROMPTS, max_new_tokens=6)


def test_cli_generate_routes_then_generates_as_the_adaptive_model_does(setup, monkeypatch,
                                                                        capsys):
    """``routekit generate`` (routekit.adaptive.commands, through the dispatcher) builds its
    router with the router commands' options and prints what AdaptiveModel generates."""
    import json

    import routekit.models
    from routekit.adaptive import commands
    from routekit.cli import build_parser, main

    build_parser()  # every command module imported before load_model is patched below
    s = setup
    monkeypatch.setattr(routekit.models, "load_model", lambda spec, **kw: (s["base"], s["tok"]))
    monkeypatch.setattr(commands, "load_experts", lambda paths: [s[p] for p in paths])
    prompts = PROMPTS[:3]
    assert main(["generate", "--experts", "s1", "p1", "--router", "fixed", "--weights",
                 "s1=1.0", "p1=0.5", "--max-new-tokens", "4", "--json", *prompts]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    experts = [s["s1"], s["p1"]]
    want = AdaptiveModel(s["base"], s["tok"], experts,
                         FixedRouter(experts, {"s1": 1.0, "p1": 0.5})).generate(
        prompts, max_new_tokens=4)
    assert [x["prompt"] for x in lines] == prompts
    assert [x["completion"] for x in lines] == want
    assert all(x["mixture"] == {"s1": 1.0, "p1": 0.5} for x in lines)
    # a malformed weight is refused by the shared parser: one line, exit code 2
    assert main(["generate", "x", "--experts", "s1", "--router", "fixed", "--weights",
                 "s1"]) == 2
    assert "NAME=NUMBER" in capsys.readouterr().err
