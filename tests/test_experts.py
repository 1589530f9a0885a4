"""The one expert surface: load_expert, the mixture context for both kinds, alpha shapes,
threads, num_return_sequences, chunked batches, mixed kinds in one generate call, and experts
that do not alias the model they came from."""

from __future__ import annotations

import json
import threading

import pytest
import torch

import routekit as rk
from routekit.errors import ConfigError, ExpertFileError, FingerprintMismatchError
from routekit.experts import load_expert
from routekit.experts.mixture import mixture
from routekit.svf import SVFConfig, SVFExpert, get_svf_model, svf_layers
from routekit.svf.model import _set_expert

from .conftest import tiny_causal_lm, two_kinds_of_experts

PROMPTS = ["rev abc =", "backwards xy:", "17+8=", "sum of 3 and 4 is", "kulo lives in"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, char_tokenizer):
    return two_kinds_of_experts(char_tokenizer, tmp_path_factory.mktemp("svf"))


def gen(s, prompts, **kw):
    kw.setdefault("max_new_tokens", 6)
    return rk.generate(s["base"], s["tok"], prompts, **kw)


def gen_with(s, experts, alpha, prompts, **kw):
    with mixture(s["base"], experts, alpha, tokenizer=s["tok"]):
        return gen(s, prompts, **kw)


# ----- load_expert --------------------------------------------------------------------------


def test_load_expert_returns_the_right_kind_and_round_trips(setup, tmp_path):
    s = setup
    s["s1"].save_pretrained(tmp_path / "svf")
    s["p1"].save_pretrained(tmp_path / "proxy")
    assert json.loads((tmp_path / "svf" / "expert_config.json").read_text())["kind"] == "svf"
    assert json.loads((tmp_path / "proxy" / "expert_config.json").read_text())["kind"] == "proxy"
    svf, proxy = load_expert(tmp_path / "svf"), load_expert(tmp_path / "proxy")
    assert isinstance(svf, SVFExpert) and isinstance(proxy, rk.ProxyExpert)
    assert all(torch.equal(svf.z[n], s["s1"].z[n]) for n in s["s1"].z)
    # Loaded experts mix exactly as the originals do.
    alpha = [[1.0, 0.5], [0.0, 1.0]]
    assert gen_with(s, [svf, proxy], alpha, PROMPTS[:2]) == gen_with(
        s, [s["s1"], s["p1"]], alpha, PROMPTS[:2])


def test_load_expert_refuses_other_kinds_naming_what_it_found(setup, tmp_path):
    s = setup
    s["s1"].save_pretrained(tmp_path / "svf")
    s["p1"].save_pretrained(tmp_path / "proxy")
    with pytest.raises(ExpertFileError, match="'svf' expert, not a 'proxy'"):
        rk.ProxyExpert.from_pretrained(tmp_path / "svf")
    with pytest.raises(ExpertFileError, match="'proxy' expert, not a 'svf'"):
        SVFExpert.from_pretrained(tmp_path / "proxy")
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "expert_config.json").write_text(json.dumps({"kind": "lora", "r": 8}))
    with pytest.raises(ExpertFileError, match="kind 'lora'"):
        load_expert(tmp_path / "lora")
    (tmp_path / "nokind").mkdir()
    (tmp_path / "nokind" / "expert_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(ExpertFileError, match=r"no kind \(keys \['peft_type'\]\)"):
        load_expert(tmp_path / "nokind")
    s["base"].config.save_pretrained(tmp_path / "ckpt")  # a plain checkpoint: no expert config
    with pytest.raises(ExpertFileError, match="expert_config.json.*does not exist"):
        load_expert(tmp_path / "ckpt")


# ----- alpha: one meaning, one validation -----------------------------------------------------


@pytest.mark.parametrize("kind", ["svf", "proxy"])
def test_every_alpha_shape_means_the_same_for_both_kinds(setup, kind):
    s = setup
    experts = [s[kind[0] + "1"], s[kind[0] + "2"]]
    prompts = PROMPTS[:3]
    flat = gen_with(s, experts, [0.7, 0.4], prompts)
    rows = gen_with(s, experts, [[0.7, 0.4]] * 3, prompts)
    assert flat == rows
    if kind == "svf":
        n_layers = len(svf_layers(s["base"]))
        assert gen_with(s, experts, torch.tensor([0.7, 0.4])[None, :, None].expand(3, 2, n_layers),
                        prompts) == flat
    # Weight 0 is the base; a single number is that weight for every expert.
    assert gen_with(s, experts, 0.0, prompts) == gen(s, prompts)
    assert gen_with(s, experts, 0.5, prompts) == gen_with(s, experts, [0.5, 0.5], prompts)
    # The mixture changes something (the experts are not no-ops).
    assert flat != gen(s, prompts)


@pytest.mark.parametrize("kind", ["svf", "proxy"])
@pytest.mark.parametrize("alpha, match", [
    ([1.0], r"\[1.0\] has shape \(1,\) but 2 experts"),
    ([[1.0, 2.0, 3.0]], r"shape \(1, 3\) but 2 experts"),
    ([1.0, float("nan")], "NaN or inf"),
    (float("inf"), "NaN or inf"),
    ([[1.0, 1.0]] * 2, "2 row"),  # 2 rows for 3 prompts
])
def test_bad_alpha_is_refused_alike_for_both_kinds(setup, kind, alpha, match):
    s = setup
    experts = [s[kind[0] + "1"], s[kind[0] + "2"]]
    with pytest.raises(ConfigError, match=match):
        gen_with(s, experts, alpha, PROMPTS[:3])


def test_per_layer_alpha_is_for_svf_experts_only(setup):
    s = setup
    with pytest.raises(ConfigError, match="per-layer alpha needs SVF experts"):
        gen_with(s, [s["p1"], s["p2"]], torch.ones(1, 2, 3), PROMPTS[:1])
    n = len(svf_layers(s["base"]))
    varying = torch.ones(1, 2, n)
    varying[0, 1, 0] = 0.5
    with pytest.raises(ConfigError, match="proxy expert's but varies"):
        gen_with(s, [s["s1"], s["p1"]], varying, PROMPTS[:1])


def test_mixture_refuses_bad_experts_and_changes_nothing(setup, tmp_path):
    s = setup
    other = get_svf_model(tiny_causal_lm("llama", vocab_size=len(s["tok"]), seed=9),
                          SVFConfig(cache_dir=str(tmp_path)))
    foreign = other.export_expert("foreign")
    z_before = {n: m.svf_z.clone() for n, m in svf_layers(s["base"]).items()}
    with pytest.raises(FingerprintMismatchError, match=foreign.base_fingerprint):
        gen_with(s, [s["s1"], foreign], [0.5, 0.5], PROMPTS[:1])
    # Given the base, loading refuses an expert of another base already (naming both).
    foreign.save_pretrained(tmp_path / "foreign")
    with pytest.raises(FingerprintMismatchError, match=f"{foreign.base_fingerprint}.*"
                       f"{s['base'].svf_base_fingerprint}"):
        load_expert(tmp_path / "foreign", base_model=s["base"])
    assert load_expert(tmp_path / "foreign", base_model=other).name == "foreign"
    with pytest.raises(ConfigError, match="at least one expert"):
        gen_with(s, [], [], PROMPTS[:1])
    with pytest.raises(ConfigError, match="unique"):
        gen_with(s, [s["s1"], s["s1"]], [0.5, 0.5], PROMPTS[:1])
    with pytest.raises(ConfigError, match="tokenizer"), mixture(s["base"], [s["p1"]], 1.0):
        pass
    plain = tiny_causal_lm("llama", vocab_size=len(s["tok"]))
    with pytest.raises(ConfigError, match="no SVF layers"), mixture(plain, [s["s1"]], 1.0):
        pass
    assert all(torch.equal(m.svf_z, z_before[n]) for n, m in svf_layers(s["base"]).items())
    # Nothing is left behind: outside any block the base is the base again.
    assert gen(s, PROMPTS[:2]) == gen_with(s, [s["s1"]], 0.0, PROMPTS[:2])


# ----- rows: chunks, num_return_sequences, mixed kinds -----------------------------------------


def test_rows_keep_their_mixture_across_generate_chunks(setup):
    s = setup
    experts = [s["s1"], s["p1"], s["s2"]]
    alpha = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0],
                          [0.5, 0.5, 0.5], [0.0, 0.0, 0.0]])
    batched = gen_with(s, experts, alpha, PROMPTS, batch_size=2)  # chunks of 2, 2, 1
    alone = [gen_with(s, experts, alpha[b], [p])[0] for b, p in enumerate(PROMPTS)]
    assert batched == alone
    assert len(set(batched)) > 2  # the rows really differ


def test_num_return_sequences_repeat_each_prompts_mixture(setup):
    s = setup
    experts = [s["s1"], s["p1"]]
    alpha = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    prompts = PROMPTS[:3]
    enc = s["tok"](prompts, return_tensors="pt", padding=True, padding_side="left")
    with mixture(s["base"], experts, alpha, tokenizer=s["tok"]):
        # top_k=1 sampling is greedy, and greedy generate refuses num_return_sequences > 1.
        out = s["base"].generate(**enc, max_new_tokens=5, do_sample=True, top_k=1,
                                 num_return_sequences=3, pad_token_id=s["tok"].pad_token_id)
    texts = s["tok"].batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    for b, p in enumerate(prompts):
        want = gen_with(s, experts, alpha[b], [p], max_new_tokens=5)[0]
        assert texts[3 * b: 3 * b + 3] == [want] * 3


def test_svf_and_proxy_rows_in_one_generate_call(setup, monkeypatch):
    s = setup
    experts = [s["s1"], s["s2"], s["p1"], s["p2"]]
    alpha = torch.tensor([[1.0, 0.0, 0.0, 0.0],   # SVF only
                          [0.0, 0.0, 1.0, 0.0],   # proxy only
                          [0.6, 0.0, 0.0, 0.8],   # both kinds in one row
                          [0.0, 0.0, 0.0, 0.0],   # the base
                          [0.3, 0.7, 0.5, 0.5]])
    calls = []
    real = type(s["base"]).generate
    monkeypatch.setattr(type(s["base"]), "generate",
                        lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    together = gen_with(s, experts, alpha, PROMPTS, batch_size=len(PROMPTS))
    assert len(calls) == 1
    for b, p in enumerate(PROMPTS):
        assert gen_with(s, experts, alpha[b], [p])[0] == together[b]
    assert together[3] == gen(s, PROMPTS[3:4])[0]


# ----- threads -------------------------------------------------------------------------------


def test_threads_with_different_mixtures_get_their_single_threaded_outputs(setup):
    s = setup
    experts = [s["s1"], s["s2"], s["p1"]]
    jobs = {
        "svf rows": torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0],
                                  [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]),
        "mixed rows": torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.5],
                                    [0.2, 0.2, 0.2], [0.0, 0.0, 0.0]]),
        "one for all": torch.tensor([0.0, 1.0, 0.0]),
    }
    want = {k: gen_with(s, experts, a, PROMPTS) for k, a in jobs.items()}
    want["plain"] = gen(s, PROMPTS)
    assert len(set(map(tuple, want.values()))) == len(want)  # distinct, so cross-talk shows
    got: dict[str, list] = {k: [] for k in want}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(want))

    def work(key):
        try:
            barrier.wait()
            for _ in range(4):
                if key == "plain":
                    got[key].append(gen(s, PROMPTS))
                else:
                    got[key].append(gen_with(s, experts, jobs[key], PROMPTS))
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in want]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k in want:
        assert got[k] == [want[k]] * 4, k


def test_disable_adapter_is_per_thread(setup):
    s = setup
    x = torch.tensor([[1, 5, 6, 7, 8]])
    with mixture(s["base"], [s["s1"]], 1.0):
        adapted = s["base"](x).logits
    base = s["base"](x).logits
    seen = {}
    inside, done = threading.Event(), threading.Event()

    def other():
        inside.wait()
        with mixture(s["base"], [s["s1"]], 1.0):
            seen["other"] = s["base"](x).logits
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with s["base"].disable_adapter(), mixture(s["base"], [s["s1"]], 0.0):
        inside.set()
        done.wait()
        seen["here"] = s["base"](x).logits
    t.join()
    assert torch.equal(seen["other"], adapted)
    torch.testing.assert_close(seen["here"], base, atol=1e-5, rtol=0)


# ----- experts own their numbers -------------------------------------------------------------


def test_exported_expert_does_not_follow_the_model(setup, tmp_path):
    base = get_svf_model(tiny_causal_lm("llama", seed=5), SVFConfig(cache_dir=str(tmp_path)))
    layers = svf_layers(base)
    with torch.no_grad():
        for m in layers.values():
            m.svf_z.fill_(2.0)
    first = base.export_expert("first")
    snapshot = {n: t.clone() for n, t in first.z.items()}
    with torch.no_grad():
        for m in layers.values():
            m.svf_z.fill_(3.0)
    second = base.export_expert("second")
    _set_expert(base, None)  # reset the model, as training a new expert would
    assert all(torch.equal(first.z[n], snapshot[n]) for n in snapshot)
    assert all(torch.equal(v, torch.full_like(v, 3.0)) for v in second.z.values())
    # And an expert built from tensors does not alias them either.
    src = {n: torch.ones(m.rank) for n, m in layers.items()}
    e = SVFExpert(src, name="e", target_modules="mlp", base_fingerprint=base.svf_base_fingerprint)
    next(iter(src.values())).fill_(7.0)
    assert all(torch.equal(v, torch.ones_like(v)) for v in e.z.values())
