"""The PEFT-shaped surface: an SVF model's merge_and_unload / unload / disable_adapter /
save_pretrained / print_trainable_parameters, save_pretrained and load_expert alike for both
expert kinds, the kind registry, and the deprecated names (disable_svf, resolve_model)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import PreTrainedModel

import routekit as rk
from routekit.errors import ConfigError, ExpertFileError
from routekit.experts import Expert, ExpertKind, load_expert, register_kind, registry
from routekit.experts.mixture import mixture
from routekit.io import model_fingerprint, tokenizer_fingerprint
from routekit.models import load_model, register_model_name
from routekit.svf import SVFConfig, SVFExpert, SVFLinear, get_svf_model, svf_layers

from .conftest import tiny_causal_lm, two_kinds_of_experts

PROMPTS = ["rev abc =", "backwards xy:", "17+8=", "kulo lives in"]
X = torch.tensor([[1, 5, 6, 7, 8, 9], [1, 9, 8, 7, 6, 5]])


@pytest.fixture
def kinds(tmp_path, char_tokenizer):
    """A fresh SVF-wrapped base with two SVF and two proxy experts (tests change the base)."""
    return two_kinds_of_experts(char_tokenizer, tmp_path / "svf-cache")


def wrapped(arch, tmp_path, seed=7):
    """A tiny ``arch`` model wrapped with ``svf_z`` set to random values, and its state dict
    before wrapping."""
    model = tiny_causal_lm(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    get_svf_model(model, SVFConfig(target_modules="all-linear", cache_dir=str(tmp_path / "c")))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in svf_layers(model).values():
            layer.svf_z.copy_(torch.randn(layer.rank, generator=g).mul(0.5).exp())
    return model, before


def logits(model, x=X):
    with torch.no_grad():
        return model(x).logits


def gen(s, prompts=PROMPTS):
    return rk.generate(s["base"], s["tok"], prompts, max_new_tokens=6)


# ----- merge_and_unload / unload ---------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_merge_and_unload_is_a_plain_model_with_the_svf_models_logits(arch, tmp_path):
    model, before = wrapped(arch, tmp_path)
    untouched = next(iter(svf_layers(model)))
    with torch.no_grad():
        svf_layers(model)[untouched].svf_z.fill_(1.0)
    adapted = logits(model)
    plain = model.merge_and_unload()
    assert plain is model and isinstance(plain, PreTrainedModel)
    assert not [m for m in plain.modules() if isinstance(m, SVFLinear)]
    assert not {"svf_config", "merge_and_unload", "save_pretrained", "disable_adapter"} & set(
        vars(plain))
    assert sorted(plain.state_dict()) == sorted(before)  # the base's names, nothing of SVF
    torch.testing.assert_close(logits(plain), adapted, atol=1e-5, rtol=0)
    assert not torch.allclose(logits(plain), logits(tiny_causal_lm(arch)), atol=1e-3)
    # A layer whose z stayed 1 keeps its weight bit for bit (W + ΔW with ΔW exactly 0).
    key = f"{untouched}.weight"
    assert torch.equal(plain.state_dict()[key], before[key])
    assert all(p.requires_grad for p in plain.parameters())  # as before wrapping


def test_merge_and_unload_with_an_expert_writes_what_save_adapted_checkpoint_writes(
    kinds, tmp_path
):
    s = kinds
    with mixture(s["base"], [s["s1"]], 1.0):
        applied = logits(s["base"])
    rk.save_adapted_checkpoint(s["base"], tmp_path / "full", s["s1"])
    saved, _ = load_model(tmp_path / "full", tokenizer=s["tok"])
    plain = s["base"].merge_and_unload(s["s1"])
    assert all(torch.equal(v, saved.state_dict()[k]) for k, v in plain.state_dict().items())
    # This expert's z reach e^4: float32 rounding of the factored path is then a few 1e-5
    # (rk.merge, the reconstruction, differs from it as much).
    torch.testing.assert_close(logits(plain), applied, atol=1e-4, rtol=0)


def test_merge_and_unload_of_a_copy_leaves_the_svf_model_alone(tmp_path):
    model, _ = wrapped("llama", tmp_path)
    adapted = logits(model)
    plain = copy.deepcopy(model).merge_and_unload()
    assert svf_layers(model) and not svf_layers(plain)
    torch.testing.assert_close(logits(model), adapted, atol=0, rtol=0)
    torch.testing.assert_close(logits(plain), adapted, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_unload_restores_the_base_weights_bit_exactly(arch, tmp_path):
    model, before = wrapped(arch, tmp_path)
    rk.merge(model)  # the weights now hold W'; unload must still give W back
    base = model.unload()
    assert base is model and not svf_layers(base)
    after = base.state_dict()
    assert sorted(after) == sorted(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    with pytest.raises(ConfigError, match="no SVF layers"):
        rk.merge(base)


def test_merge_and_unload_is_refused_inside_a_mixture(kinds):
    s = kinds
    with mixture(s["base"], [s["s1"]], 1.0), pytest.raises(ConfigError, match="mixture block"):
        s["base"].merge_and_unload()
    assert svf_layers(s["base"])


# ----- disable_adapter: SVF and proxy steering off -----------------------------------------------


def test_disable_adapter_gives_the_base_for_svf_and_proxy_experts(kinds):
    s = kinds
    base_logits, base_text = logits(s["base"]), gen(s)
    experts = [s["s1"], s["p1"]]
    with mixture(s["base"], experts, [1.0, 1.0], tokenizer=s["tok"]):
        steered = gen(s)
        with s["base"].disable_adapter():
            off_inside = gen(s)
            off_logits = logits(s["base"])
    with s["base"].disable_adapter(), mixture(s["base"], experts, [1.0, 1.0], tokenizer=s["tok"]):
        off_outside = gen(s)
    assert steered != base_text
    assert off_inside == base_text and off_outside == base_text
    torch.testing.assert_close(off_logits, base_logits, atol=1e-5, rtol=0)
    with mixture(s["base"], experts, [1.0, 1.0], tokenizer=s["tok"]):
        assert gen(s) == steered  # nothing stays off after the block


def test_disable_experts_turns_proxy_steering_off_on_a_plain_base(kinds, char_tokenizer):
    s = kinds
    base = tiny_causal_lm("llama", vocab_size=len(char_tokenizer), seed=0)
    plain = {"base": base, "tok": char_tokenizer}
    reference = gen(plain)
    with mixture(base, [s["p1"], s["p2"]], [2.0, 1.0], tokenizer=char_tokenizer):
        steered = gen(plain)
        with rk.disable_experts():
            off = gen(plain)
    assert steered != reference and off == reference


def test_disable_svf_is_a_deprecated_alias_of_disable_adapter(kinds):
    s = kinds
    base_logits = logits(s["base"])
    with pytest.warns(DeprecationWarning, match="disable_adapter"):
        ctx = rk.disable_svf(s["base"])
    with mixture(s["base"], [s["s1"]], 1.0), ctx:
        torch.testing.assert_close(logits(s["base"]), base_logits, atol=1e-5, rtol=0)


# ----- save_pretrained / export_expert / print_trainable_parameters ------------------------------


def test_svf_model_save_pretrained_writes_its_expert(tmp_path, char_tokenizer):
    model, _ = wrapped("llama", tmp_path)
    path = model.save_pretrained(tmp_path / "rev", metrics={"acc": 0.5})
    expert = load_expert(path)
    assert isinstance(expert, SVFExpert) and expert.name == "rev" and expert.metrics == {"acc": 0.5}
    assert all(torch.equal(expert.z[n], layer.svf_z.detach()) for n, layer in svf_layers(model).items())
    assert model.export_expert("x").z.keys() == expert.z.keys()
    # The whole adapted model still saves as a plain checkpoint (the class's save_pretrained).
    rk.save_adapted_checkpoint(model, tmp_path / "full")
    full, _ = load_model(tmp_path / "full", tokenizer=char_tokenizer)
    torch.testing.assert_close(logits(full), logits(model), atol=1e-5, rtol=0)


def test_print_trainable_parameters_counts_like_peft(tmp_path, capsys):
    model = tiny_causal_lm("llama")
    total = sum(p.numel() for p in model.parameters())
    get_svf_model(model, SVFConfig(target_modules="mlp", cache_dir=str(tmp_path)))
    rank = sum(layer.rank for layer in svf_layers(model).values())
    assert model.get_nb_trainable_parameters() == (rank, total + rank)
    model.print_trainable_parameters()
    assert capsys.readouterr().out.strip() == (
        f"trainable params: {rank:,d} || all params: {total + rank:,d} || "
        f"trainable%: {100 * rank / (total + rank):.4f}")


# ----- both kinds alike: save_pretrained(directory), load_expert(path, dtype=...) ----------------


def test_proxy_save_pretrained_takes_just_the_directory_and_round_trips(kinds, tmp_path):
    s = kinds
    path = s["p1"].save_pretrained(tmp_path / "p1")
    loaded = load_expert(path)
    assert isinstance(loaded, rk.ProxyExpert) and loaded.name == "p1"
    assert model_fingerprint(loaded.tuned) == model_fingerprint(s["p1"].tuned)
    assert loaded.base_id == tokenizer_fingerprint(s["tok"])
    with mixture(s["base"], [s["p1"]], 1.0, tokenizer=s["tok"]):
        want = gen(s)
    with mixture(s["base"], [loaded], 1.0, tokenizer=s["tok"]):
        assert gen(s) == want
    # The old call shapes still work: the base tokenizer by position or by keyword.
    s["p1"].save_pretrained(tmp_path / "pos", s["tok"])
    s["p1"].save_pretrained(tmp_path / "kw", base_tokenizer=s["tok"])
    for d in ("pos", "kw"):
        assert json.loads((tmp_path / d / "expert_config.json").read_text())[
            "base_tokenizer_fingerprint"] == tokenizer_fingerprint(s["tok"])


def test_proxy_save_pretrained_without_any_tokenizer_is_refused(kinds, tmp_path):
    s = kinds
    bare = rk.ProxyExpert(s["p1"].tuned, s["p1"].untuned, "bare")
    with pytest.raises(ConfigError, match="no tokenizer.*base_tokenizer=tok"):
        bare.save_pretrained(tmp_path / "bare")
    assert not (tmp_path / "bare").exists()
    loaded = load_expert(bare.save_pretrained(tmp_path / "bare", base_tokenizer=s["tok"]))
    assert loaded.tokenizer.get_vocab() == s["tok"].get_vocab()


def test_load_expert_dtype_casts_the_vectors_of_an_svf_expert(kinds, tmp_path):
    s = kinds
    path = s["s1"].save_pretrained(tmp_path / "s1")
    half = load_expert(path, dtype=torch.bfloat16)
    assert {v.dtype for v in half.z.values()} == {torch.bfloat16}
    assert all(torch.equal(half.z[n], s["s1"].z[n].bfloat16()) for n in half.z)
    # It applies as the float32 expert holding the same (rounded) values.
    rounded = SVFExpert({n: v.float() for n, v in half.z.items()}, name="r",
                        target_modules="all-linear", base_fingerprint=half.base_fingerprint)
    with mixture(s["base"], [half], 0.7):
        got = logits(s["base"])
    with mixture(s["base"], [rounded], 0.7):
        torch.testing.assert_close(got, logits(s["base"]), atol=0, rtol=0)
    # Files always hold float32.
    again = load_expert(half.save_pretrained(tmp_path / "again"))
    assert {v.dtype for v in again.z.values()} == {torch.float32}
    proxy = load_expert(s["p1"].save_pretrained(tmp_path / "p1"), dtype=torch.bfloat16)
    assert {p.dtype for p in proxy.tuned.parameters()} == {torch.bfloat16}


# ----- the kind registry -------------------------------------------------------------------------


class _Toy(Expert):
    kind = "toy"

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def from_pretrained(cls, directory, **kwargs):
        return cls(json.loads((directory / "expert_config.json").read_text())["name"] + str(kwargs))


def test_load_expert_dispatches_through_the_registry(tmp_path, monkeypatch):
    assert {"svf", "proxy"} <= set(registry.registered_kinds())
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "expert_config.json").write_text(json.dumps({"kind": "toy", "name": "a"}))
    with pytest.raises(ExpertFileError, match=r"kind 'toy'.*\['proxy', 'svf'\]"):
        load_expert(tmp_path / "t")
    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))
    register_kind(ExpertKind("toy", _Toy))
    toy = load_expert(tmp_path / "t", dtype="x")
    assert isinstance(toy, _Toy) and toy.name == "a{'dtype': 'x'}"
    with pytest.raises(ConfigError, match="kind is 'toy' but it is registered as kind 'svf'"):
        register_kind(ExpertKind("svf", _Toy))


def test_an_svf_config_without_kind_is_found_by_its_format(kinds, tmp_path):
    path = kinds["s1"].save_pretrained(tmp_path / "v1")
    cfg = json.loads((path / "expert_config.json").read_text())
    del cfg["kind"]
    (path / "expert_config.json").write_text(json.dumps(cfg))
    assert registry.expert_kind(path) == "svf"


def test_the_experts_base_and_registry_import_no_kind():
    import ast
    import inspect

    from routekit.experts import base

    for mod in (base, registry):
        tree = ast.parse(inspect.getsource(mod))
        names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in names if "svf" in m or "proxy" in m or "mixture" in m], names


# ----- load_model takes what resolve_model took --------------------------------------------------


def test_resolve_model_is_a_deprecated_alias_of_load_model(tmp_path, char_tokenizer, monkeypatch):
    m = tiny_causal_lm("llama", vocab_size=len(char_tokenizer))
    m.save_pretrained(tmp_path / "ckpt")
    char_tokenizer.save_pretrained(tmp_path / "ckpt")
    with pytest.warns(DeprecationWarning, match="load_model"):
        old, _ = rk.resolve_model(tmp_path / "ckpt")
    new, _ = rk.load_model(tmp_path / "ckpt")
    assert model_fingerprint(old) == model_fingerprint(new) == model_fingerprint(m)
    # A registered name, given as a string or a path-like, in any dtype.
    from routekit import models

    monkeypatch.setattr(models, "_NAMED_MODELS", dict(models._NAMED_MODELS))
    register_model_name("toy-model", lambda: (tiny_causal_lm("llama", seed=3), char_tokenizer))
    named, tok = load_model("toy-model", dtype="bfloat16")
    assert tok is char_tokenizer and next(named.parameters()).dtype == torch.bfloat16
    from pathlib import Path

    again, _ = load_model(Path("toy-model"))
    assert model_fingerprint(again) == model_fingerprint(tiny_causal_lm("llama", seed=3))
    with pytest.warns(DeprecationWarning, match="load_model"):
        via_old, _ = rk.resolve_model("toy-model")
    assert model_fingerprint(via_old) == model_fingerprint(again)
