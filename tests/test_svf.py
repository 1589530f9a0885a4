"""SVF layers, experts and mixing on tiny random Llama, Qwen2 and GPT-2 models."""

from __future__ import annotations

import pydantic
import pytest
import torch
from transformers.pytorch_utils import Conv1D

import routekit.svf.factors as factors_mod
from routekit.errors import ConfigError, ExpertFileError, FingerprintMismatchError, RoutekitWarning
from routekit.experts.mixture import mixture
from routekit.io import model_fingerprint
from routekit.svf import (
    SVFConfig,
    SVFExpert,
    SVFLinear,
    export_expert,
    get_svf_model,
    merge,
    mix_experts,
    svf_layers,
    unmerge,
    unwrap_svf_model,
)
from routekit.svf.layer import SVFCallState, call_state, current_state
from routekit.svf.model import _set_expert as set_expert

from .conftest import tiny_causal_lm

VOCAB = 40


def tiny(arch: str, seed: int = 0):
    return tiny_causal_lm(arch, vocab_size=VOCAB, seed=seed)


def ids(rows: int = 3, length: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


def logits(model, x):
    with torch.no_grad():
        return model(x).logits


def random_expert(model, name: str, seed: int, scale: float = 0.3) -> SVFExpert:
    g = torch.Generator().manual_seed(seed)
    z = {n: 1 + scale * torch.randn(layer.rank, generator=g) for n, layer in svf_layers(model).items()}
    return SVFExpert(z, name=name, target_modules=model.svf_config.target_modules,
                     base_fingerprint=model.svf_base_fingerprint)


def use_row_z(model, z):
    """Per-row z on the named layers only (the others keep svf_z), as the mixture applies it."""
    layers, outer = svf_layers(model), current_state()
    scales = {id(layers[n]): layers[n].row_scales(t) for n, t in z.items()}
    return call_state(SVFCallState(scales={**(outer.scales if outer else {}), **scales}))


@pytest.fixture
def cfg(tmp_path):
    return lambda **kw: SVFConfig(cache_dir=str(tmp_path / "cache"), **kw)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_z_one_reproduces_base_and_only_z_trains(arch, cfg):
    model = tiny(arch)
    x = ids()
    ref = logits(model, x)
    fp = model_fingerprint(model)
    get_svf_model(model, cfg(target_modules="all-linear"))
    layers = svf_layers(model)
    n_linear = {"llama": 7, "qwen2": 7, "gpt2": 4}[arch] * 2
    assert len(layers) == n_linear and not any("lm_head" in n for n in layers)
    if arch == "gpt2":
        assert all(isinstance(layer.base_layer, Conv1D) for layer in layers.values())
    torch.testing.assert_close(logits(model, x), ref, atol=1e-5, rtol=0)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.endswith("svf_z") for n in trainable)
    assert sum(trainable.values()) == sum(layer.rank for layer in layers.values())
    # The wrapped model keeps its base's fingerprint (adapter parameters are not part of it).
    assert model_fingerprint(model) == fp == model.svf_base_fingerprint


@pytest.mark.parametrize("target,expected", [
    ("mlp", {"gate_proj", "up_proj", "down_proj"}),
    ("attention", {"q_proj", "k_proj", "v_proj", "o_proj"}),
    (["q_proj", "down_proj"], {"q_proj", "down_proj"}),
    (r"re:model\.layers\.0\.mlp\.(up|down)_proj", {"up_proj", "down_proj"}),
])
def test_target_modules_select_the_named_layers(target, expected, cfg):
    model = get_svf_model(tiny("llama"), cfg(target_modules=target))
    assert {n.rsplit(".", 1)[1] for n in svf_layers(model)} == expected


def test_gpt2_mlp_and_attention_presets(cfg):
    mlp = svf_layers(get_svf_model(tiny("gpt2"), cfg(target_modules="mlp")))
    attn = svf_layers(get_svf_model(tiny("gpt2"), cfg(target_modules="attention")))
    assert {n.split(".", 3)[3] for n in mlp} == {"mlp.c_fc", "mlp.c_proj"}
    assert {n.split(".", 3)[3] for n in attn} == {"attn.c_attn", "attn.c_proj"}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_per_row_mixture_equals_each_row_alone_merged(arch, cfg):
    model = get_svf_model(tiny(arch), cfg(target_modules="all-linear"))
    experts = [random_expert(model, f"e{k}", seed=10 + k) for k in range(3)]
    alpha = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.5, 0.3], [0.0, -0.4, 1.4], [0.6, 0.6, -0.2]])
    x = ids(rows=4)
    with mixture(model, experts, alpha):
        mixed = logits(model, x)
    for b in range(4):
        merge(model, mix_experts(experts, alpha[b]))
        alone = logits(model, x[b : b + 1])
        unmerge(model)
        torch.testing.assert_close(mixed[b : b + 1], alone, atol=1e-5, rtol=0)
    # Rows really differ: the mixtures are not all the same function.
    assert (mixed[1] - mixed[2]).abs().max() > 1e-3


def test_per_layer_alpha_and_mix_arithmetic(cfg):
    model = get_svf_model(tiny("llama"), cfg())
    e1, e2 = random_expert(model, "a", 1), random_expert(model, "b", 2)
    names = e1.layer_names
    alpha = torch.rand(1, 2, len(names))  # one row, per expert per layer
    mixed = mix_experts([e1, e2], alpha)
    for i, n in enumerate(names):
        want = 1 + alpha[0, 0, i] * (e1.z[n] - 1) + alpha[0, 1, i] * (e2.z[n] - 1)
        torch.testing.assert_close(mixed.z[n], want)
    flat = mix_experts([e1, e2], [0.25, 0.75])  # weights summing to 1: Transformer²'s Σ α z
    torch.testing.assert_close(flat.z[names[0]], 0.25 * e1.z[names[0]] + 0.75 * e2.z[names[0]])
    zero = mix_experts([e1, e2], [0.0, 0.0])  # no weight: the base
    assert all(torch.equal(v, torch.ones_like(v)) for v in zero.z.values())
    with pytest.raises(ConfigError, match="one row"):
        mix_experts([e1, e2], torch.rand(2, 2))
    # Per-row, per-layer alpha (B, K, L) equals the per-row z it implies.
    row_alpha = torch.rand(2, 2, len(names))
    x = ids(rows=2)
    with mixture(model, [e1, e2], row_alpha):
        got = logits(model, x)
    for b in range(2):
        set_expert(model, mix_experts([e1, e2], row_alpha[b : b + 1]))
        torch.testing.assert_close(got[b : b + 1], logits(model, x[b : b + 1]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_merge_unmerge_bit_exact_and_merged_equals_factored(arch, cfg):
    model = get_svf_model(tiny(arch), cfg(target_modules="all-linear"))
    set_expert(model, random_expert(model, "e", 3))
    before = {n: t.clone() for n, t in model.state_dict().items()}
    x = ids()
    factored = logits(model, x)
    merge(model)
    assert any(not torch.equal(t, before[n]) for n, t in model.state_dict().items())
    torch.testing.assert_close(logits(model, x), factored, atol=1e-5, rtol=0)
    merge(model)  # merging twice must not lose the original
    unmerge(model)
    after = model.state_dict()
    assert all(torch.equal(after[n], before[n]) for n in before)


def test_save_load_round_trip_exact(tmp_path, cfg):
    model = get_svf_model(tiny("llama"), cfg())
    set_expert(model, random_expert(model, "tmp", 4))
    expert = model.export_expert("arith", training_config={"lr": 0.01}, metrics={"acc": 0.5})
    expert.save_pretrained(tmp_path / "arith")
    assert sorted(p.name for p in (tmp_path / "arith").iterdir()) == [
        "expert_config.json", "expert_model.safetensors"]
    loaded = SVFExpert.from_pretrained(tmp_path / "arith")
    assert loaded.layer_names == expert.layer_names
    assert all(torch.equal(loaded.z[n], expert.z[n]) for n in expert.z)
    assert (loaded.name, loaded.target_modules, loaded.base_fingerprint) == (
        "arith", "mlp", model.svf_base_fingerprint)
    assert loaded.training_config == {"lr": 0.01} and loaded.metrics == {"acc": 0.5}
    x = ids()
    want = logits(model, x)
    set_expert(model, None)
    set_expert(model, loaded)
    assert torch.equal(logits(model, x), want)


def test_svd_cache_hit_skips_svd_and_corrupt_cache_is_rebuilt(tmp_path, monkeypatch, cfg):
    calls = []
    real = factors_mod._svd
    monkeypatch.setattr(factors_mod, "_svd", lambda w: calls.append(1) or real(w))
    model = get_svf_model(tiny("llama"), cfg())
    n = len(svf_layers(model))
    assert len(calls) == n
    x = ids()
    set_expert(model, random_expert(model, "e", 5))
    want = logits(model, x)
    unwrap_svf_model(model)
    get_svf_model(model, cfg())
    assert len(calls) == n  # cache hit: no new SVD
    set_expert(model, random_expert(model, "e", 5))
    assert torch.equal(logits(model, x), want)
    # One entry per weight matrix: a damaged entry is deleted and rebuilt (that layer only,
    # the others' entries are used), not trusted.
    entries = sorted((tmp_path / "cache").glob("*.safetensors"))
    assert len(entries) == n
    entry = entries[0]
    entry.write_bytes(entry.read_bytes()[:100])
    unwrap_svf_model(model)
    with pytest.warns(RoutekitWarning, match=entry.name):
        get_svf_model(model, cfg())
    assert len(calls) == n + 1
    set_expert(model, random_expert(model, "e", 5))
    assert torch.equal(logits(model, x), want)
    # A partial cache is used for the layers it has (here: all-linear reuses the MLP's).
    unwrap_svf_model(model)
    calls.clear()
    wide = get_svf_model(model, cfg(target_modules="all-linear"))
    assert len(calls) == len(svf_layers(wide)) - n
    # Another base gets other entries.
    before = len(list((tmp_path / "cache").glob("*.safetensors")))
    get_svf_model(tiny("llama", seed=7), cfg())
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == before + n


def test_unwrap_restores_the_base(cfg):
    model = tiny("gpt2")
    model.transformer.wte.weight.requires_grad_(False)
    x = ids()
    ref = logits(model, x)
    get_svf_model(model, cfg())
    merge(model, random_expert(model, "e", 6))
    unwrap_svf_model(model)
    assert not any(isinstance(m, SVFLinear) for m in model.modules())
    assert torch.equal(logits(model, x), ref)
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    assert grads["transformer.wte.weight"] is False
    assert grads["transformer.h.0.mlp.c_fc.weight"] is True


def test_z_gets_gradients_and_generate_works(cfg):
    model = get_svf_model(tiny("llama"), cfg())
    x = ids()
    model(x, labels=x).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(n.endswith("svf_z") for n in grads)
    assert all(g.abs().sum() > 0 for g in grads.values())
    out = model.generate(x, max_new_tokens=4, do_sample=False)
    assert out.shape == (3, 11)


# ----- bad input -------------------------------------------------------------------------


def test_expert_for_another_base_is_refused_naming_both(cfg):
    a = get_svf_model(tiny("llama", seed=0), cfg())
    b = get_svf_model(tiny("llama", seed=1), cfg())
    expert = random_expert(a, "e", 1)
    z_before = {n: layer.svf_z.clone() for n, layer in svf_layers(b).items()}
    with pytest.raises(FingerprintMismatchError) as err:
        set_expert(b, expert)
    assert a.svf_base_fingerprint in str(err.value) and b.svf_base_fingerprint in str(err.value)
    assert all(torch.equal(layer.svf_z, z_before[n]) for n, layer in svf_layers(b).items())
    with pytest.raises(FingerprintMismatchError):
        mix_experts([expert, random_expert(b, "f", 2)], [0.5, 0.5])


def test_wrong_shape_z_is_refused(tmp_path, cfg):
    model = get_svf_model(tiny("llama"), cfg())
    good = random_expert(model, "e", 1)
    layer = good.layer_names[0]
    bad = SVFExpert({**good.z, layer: torch.ones(5)}, name="bad", target_modules="mlp",
                    base_fingerprint=good.base_fingerprint)
    z_before = {n: m.svf_z.clone() for n, m in svf_layers(model).items()}
    with pytest.raises(ExpertFileError, match=rf"{layer}.*\(5,\).*\({svf_layers(model)[layer].rank},\)"):
        set_expert(model, bad)
    assert all(torch.equal(m.svf_z, z_before[n]) for n, m in svf_layers(model).items())
    with pytest.raises(ExpertFileError, match="shape"):
        SVFExpert({layer: torch.ones(2, 3)}, name="x", target_modules="mlp", base_fingerprint="f")
    # A file whose tensor disagrees with its config's recorded rank.
    good.save_pretrained(tmp_path / "e")
    bad_in_file = SVFExpert({**good.z, layer: torch.ones(5)}, name="e", target_modules="mlp",
                            base_fingerprint=good.base_fingerprint)
    bad_in_file.save_pretrained(tmp_path / "b")
    (tmp_path / "b" / "expert_config.json").write_text(
        (tmp_path / "e" / "expert_config.json").read_text())
    with pytest.raises(ExpertFileError, match=layer):
        SVFExpert.from_pretrained(tmp_path / "b")
    # A mixture whose rows do not match the batch.
    with mixture(model, [good], [[1.0], [0.5]]), pytest.raises(ConfigError, match="2 row"):
        logits(model, ids(rows=3))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_damaged_expert_file_is_refused(tmp_path, damage, cfg):
    model = get_svf_model(tiny("llama"), cfg())
    random_expert(model, "e", 1).save_pretrained(tmp_path / "e")
    f = tmp_path / "e" / "expert_model.safetensors"
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[:-40])
    elif damage == "garbage":
        f.write_bytes(b"\x00" * 8 + b"not a safetensors file" * 10)
    else:
        f.unlink()
    with pytest.raises(ExpertFileError, match="expert_model.safetensors"):
        SVFExpert.from_pretrained(tmp_path / "e")


def test_nan_z_is_refused_on_load_and_on_set(tmp_path, cfg):
    model = get_svf_model(tiny("llama"), cfg())
    good = random_expert(model, "e", 1)
    layer = good.layer_names[1]
    nan_z = good.z[layer].clone()
    nan_z[3] = float("nan")
    with pytest.raises(ExpertFileError, match=f"{layer}.*NaN"):
        SVFExpert({**good.z, layer: nan_z}, name="n", target_modules="mlp", base_fingerprint="f")
    # Write a NaN straight into a saved file: loading refuses it.
    from safetensors.torch import load_file, save_file
    good.save_pretrained(tmp_path / "e")
    f = tmp_path / "e" / "expert_model.safetensors"
    tensors = load_file(str(f))
    tensors[layer + ".svf_z"] = nan_z
    save_file(tensors, str(f))
    with pytest.raises(ExpertFileError, match=f"{layer}.*NaN"):
        SVFExpert.from_pretrained(tmp_path / "e")
    with pytest.raises(ConfigError, match="NaN"), mixture(model, [good], [[float("nan")]]):
        pass


def test_mixing_refuses_other_targets_and_wrong_alpha(cfg):
    mlp_model = get_svf_model(tiny("llama"), cfg())
    attn_model = get_svf_model(tiny("llama"), cfg(target_modules="attention"))
    e_mlp, e_attn = random_expert(mlp_model, "m", 1), random_expert(attn_model, "a", 2)
    with pytest.raises(ConfigError, match="same target_modules"):
        mix_experts([e_mlp, e_attn], [0.5, 0.5])
    e2 = random_expert(mlp_model, "m2", 3)
    with pytest.raises(ConfigError, match=r"\(3,\).*\(2,\)"):
        mix_experts([e_mlp, e2], [0.2, 0.3, 0.5])
    with pytest.raises(ConfigError, match=r"\(4, 3\)"), mixture(mlp_model, [e_mlp, e2], torch.ones(4, 3)):
        pass
    with pytest.raises(ConfigError, match="NaN"):
        mix_experts([e_mlp, e2], [0.5, float("nan")])
    with pytest.raises(ConfigError, match="does not fit"):
        set_expert(mlp_model, e_attn)


def test_bad_config_is_refused(cfg):
    with pytest.raises(pydantic.ValidationError, match="target_module"):
        SVFConfig(target_module="mlp")
    with pytest.raises(pydantic.ValidationError, match="q_proj"):
        SVFConfig(target_modules="q_proj")
    with pytest.raises(pydantic.ValidationError, match="factor_dtype"):
        SVFConfig(factor_dtype="int8")
    with pytest.raises(ConfigError, match="nothing_here"):
        get_svf_model(tiny("llama"), cfg(target_modules=["nothing_here"]))
    model = get_svf_model(tiny("llama"), cfg())
    with pytest.raises(ConfigError, match="already an SVF model"):
        get_svf_model(model, cfg())


def test_save_refuses_a_foreign_directory(tmp_path, cfg):
    model = get_svf_model(tiny("llama"), cfg())
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(ExpertFileError, match="notes.txt"):
        export_expert(model, "e").save_pretrained(tmp_path / "d")
    assert (tmp_path / "d" / "notes.txt").read_text() == "mine"


def test_fused_siblings_equal_separate_layers_in_values_and_gradients(cfg):
    from routekit.svf.fusion import remove_fusion

    fused = get_svf_model(tiny("qwen2"), cfg(target_modules="all-linear"))
    plain = get_svf_model(tiny("qwen2"), cfg(target_modules="all-linear"))
    remove_fusion(plain)
    groups = {id(m._fusion) for m in svf_layers(fused).values() if m._fusion is not None}
    assert len(groups) == 4  # (gate, up) and (q, k, v) in each of 2 blocks
    assert all(m._fusion is None for m in svf_layers(plain).values())
    expert = random_expert(fused, "e", 8)
    set_expert(fused, expert), set_expert(plain, expert)
    x = ids()
    fused(x, labels=x).loss.backward()
    plain(x, labels=x).loss.backward()
    for (n, a), (_, b) in zip(fused.named_parameters(), plain.named_parameters()):
        if a.requires_grad:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=n)
    # Per-row z on one member of a group only (its siblings keep the shared z).
    gate = "model.layers.0.mlp.gate_proj"
    z = {gate: torch.rand(3, svf_layers(fused)[gate].rank) + 0.5}
    with use_row_z(fused, z), use_row_z(plain, z):
        torch.testing.assert_close(logits(fused, x), logits(plain, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_disable_adapter_computes_the_base_merged_or_not(arch, cfg):
    from routekit.svf import disable_adapter

    model = tiny(arch)
    x = ids()
    ref = logits(model, x)
    get_svf_model(model, cfg(target_modules="all-linear"))
    set_expert(model, random_expert(model, "e", 9))
    adapted = logits(model, x)
    with disable_adapter(model):
        torch.testing.assert_close(logits(model, x), ref, atol=1e-5, rtol=0)
    merge(model)
    with disable_adapter(model):
        torch.testing.assert_close(logits(model, x), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits(model, x), adapted, atol=1e-5, rtol=0)
