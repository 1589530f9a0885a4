"""routekit diff: update statistics on small checkpoints with planted, hand-computable updates."""

from __future__ import annotations

import json
import math
import pickle
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from routekit.analysis import (
    UpdateStats,
    diff_checkpoints,
    layer_index,
    matrix_type,
    overlap,
    overlap_checkpoints,
)
from routekit.analysis import checkpoint as ckpt_mod
from routekit.cli import main as cli_main
from routekit.errors import CheckpointError

Q = "model.layers.0.self_attn.q_proj.weight"
K = "model.layers.0.self_attn.k_proj.weight"
UP = "model.layers.1.mlp.up_proj.weight"
NORM = "model.layers.0.input_layernorm.weight"
EMB = "model.embed_tokens.weight"
HEAD = "lm_head.weight"

LLAMA_CFG = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "tie_word_embeddings": False,
}


def diff_main(argv: list[str]) -> int:
    """``routekit diff ARGV`` through the dispatcher, as the console script runs it."""
    return cli_main(["diff", *argv])


def write_ckpt(
    path: Path,
    tensors: dict[str, torch.Tensor],
    config: dict | None = None,
    shards: int = 1,
) -> Path:
    """A checkpoint directory: model.safetensors, or `shards` files plus an index."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config if config is not None else LLAMA_CFG))
    names = list(tensors)
    if shards == 1:
        save_file({n: tensors[n].contiguous() for n in names}, str(path / "model.safetensors"))
        return path
    weight_map = {}
    for i in range(shards):
        part = names[i::shards]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n].contiguous() for n in part}, str(path / fname))
        weight_map.update({n: fname for n in part})
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    return path


def base_tensors(dtype=torch.float32, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        EMB: torch.randn(50, 16, generator=g).to(dtype),
        Q: (0.02 * torch.randn(64, 48, generator=g)).to(dtype),
        K: torch.randn(32, 48, generator=g).to(dtype),
        NORM: (1 + 0.1 * torch.randn(48, generator=g)).to(dtype),
        UP: (torch.rand(128, 80, generator=g) * 0.01 + 0.01).to(dtype),
        HEAD: torch.randn(50, 16, generator=g).to(dtype),
    }


def exact_mask(shape, k: int, seed: int) -> torch.Tensor:
    """A boolean mask with exactly k True entries."""
    n = math.prod(shape)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]
    m = torch.zeros(n, dtype=torch.bool)
    m[idx] = True
    return m.reshape(shape)


# --------------------------------------------------------------------------------------------
# names


def test_matrix_types_and_layers():
    assert matrix_type(Q) == "q" and layer_index(Q) == 0
    assert matrix_type("model.layers.12.mlp.down_proj.weight") == "down"
    assert layer_index("model.layers.12.mlp.down_proj.weight") == 12
    assert matrix_type("model.layers.3.self_attn.q_proj.bias") == "q"  # Qwen2 biases
    assert matrix_type("model.layers.3.post_attention_layernorm.weight") == "norm"
    assert matrix_type("model.norm.weight") == "norm" and layer_index("model.norm.weight") is None
    assert matrix_type(EMB) == "embed" and matrix_type(HEAD) == "head"
    # GPT-2
    assert matrix_type("transformer.h.2.attn.c_attn.weight") == "qkv"
    assert matrix_type("transformer.h.2.attn.c_proj.weight") == "o"
    assert matrix_type("transformer.h.2.mlp.c_proj.bias") == "down"
    assert matrix_type("transformer.h.2.mlp.c_fc.weight") == "up"
    assert matrix_type("transformer.h.2.ln_1.weight") == "norm"
    assert matrix_type("transformer.ln_f.bias") == "norm"
    assert matrix_type("transformer.wte.weight") == "embed"
    assert matrix_type("transformer.wpe.weight") == "embed"
    assert layer_index("transformer.h.11.ln_2.weight") == 11
    assert matrix_type("model.rotary_emb.inv_freq") == "other"


# --------------------------------------------------------------------------------------------
# statistics on planted updates


def test_dense_rank2_update_changes_every_entry_and_has_rank_2(tmp_path):
    base = base_tensors()
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(64, 2, generator=g), torch.randn(48, 2, generator=g)
    tuned = dict(base)
    tuned[Q] = base[Q] + 0.1 * (u @ v.T)
    s = diff_checkpoints(write_ckpt(tmp_path / "b", base), write_ckpt(tmp_path / "t", tuned))
    t = s.tensor(Q)
    assert t.n_bitwise_unchanged == 0 and t.density == 1.0
    delta = tuned[Q] - base[Q]
    assert t.rank == 2 == int(torch.linalg.matrix_rank(delta))
    assert t.rank_fraction == 2 / 48
    sv = torch.linalg.svdvals(delta).double()
    p = sv / sv.sum()
    p = p[p > 0]
    assert t.effective_rank == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-6)
    assert 1.0 < t.effective_rank < 2.0 + 1e-6
    want = float(delta.double().norm() / base[Q].double().norm())
    assert t.rel_frob_norm == pytest.approx(want, rel=1e-6)  # float32 sums
    # every other tensor untouched: rank 0, fully unchanged
    for other in s.tensors:
        if other.name != Q:
            assert other.n_bitwise_unchanged == other.numel
            assert other.rank in (0, None)
    assert s.group("q").n_bitwise_unchanged == 0
    assert s.overall.numel - s.overall.n_bitwise_unchanged == 64 * 48


def test_random_10pct_mask_changes_10pct_and_is_near_full_rank(tmp_path):
    base = base_tensors()
    mask = exact_mask((128, 80), 1024, seed=2)  # 1024 / 10240 = exactly 10%
    g = torch.Generator().manual_seed(3)
    bump = (0.5 + torch.rand(128, 80, generator=g)) * torch.sign(torch.randn(128, 80, generator=g))
    tuned = dict(base)
    tuned[UP] = torch.where(mask, base[UP] + bump, base[UP])
    s = diff_checkpoints(write_ckpt(tmp_path / "b", base), write_ckpt(tmp_path / "t", tuned))
    t = s.tensor(UP)
    assert t.numel - t.n_bitwise_unchanged == 1024
    assert t.density == pytest.approx(0.1, rel=1e-12)
    assert t.rank == int(torch.linalg.matrix_rank(tuned[UP] - base[UP]))
    assert t.rank_fraction >= 0.9
    g_up = s.group("up", layer=1)
    assert g_up.numel - g_up.n_bitwise_unchanged == 1024
    assert s.group(layer=1).n_bitwise_unchanged == 10240 - 1024


def test_1e7_change_is_changed_bitwise_and_unchanged_at_1e6(tmp_path):
    base = base_tensors()
    tuned = dict(base)
    tuned[UP] = base[UP] + 1e-7  # entries in [0.01, 0.02): fp32 spacing ~1.9e-9
    s = diff_checkpoints(
        write_ckpt(tmp_path / "b", base), write_ckpt(tmp_path / "t", tuned), rank="skip"
    )
    t = s.tensor(UP)
    n = 128 * 80
    assert s.atols == [1e-8, 1e-7, 1e-6, 1e-5]
    assert t.n_bitwise_unchanged == 0
    d = (tuned[UP] - base[UP]).abs()
    assert t.n_unchanged_atol == [int((d <= a).sum()) for a in s.atols]
    assert t.n_unchanged_atol[0] == 0  # changed at 1e-8
    assert t.n_unchanged_atol[2] == n and t.n_unchanged_atol[3] == n  # unchanged at 1e-6, 1e-5
    rel = d <= 1e-3 * torch.maximum(base[UP].abs(), tuned[UP].abs())
    assert t.n_unchanged_rtol == int(rel.sum()) == n
    assert t.rank is None and s.run.rank_device is None


def test_small_update_partly_invisible_in_bf16_fully_visible_in_fp32(tmp_path):
    base32 = base_tensors(torch.float32)
    tuned32 = dict(base32)
    tuned32[K] = base32[K] * (1 + 2e-3)  # planted in fp32
    s32 = diff_checkpoints(
        write_ckpt(tmp_path / "b32", base32), write_ckpt(tmp_path / "t32", tuned32), rank="skip"
    )
    assert s32.tensor(K).n_bitwise_unchanged == 0  # every entry visibly changed in fp32

    base16 = {n: t.to(torch.bfloat16) for n, t in base32.items()}
    tuned16 = {n: t.to(torch.bfloat16) for n, t in tuned32.items()}
    s16 = diff_checkpoints(
        write_ckpt(tmp_path / "b16", base16), write_ckpt(tmp_path / "t16", tuned16), rank="skip"
    )
    t = s16.tensor(K)
    visible = int((base16[K].view(torch.int16) != tuned16[K].view(torch.int16)).sum())
    assert 0 < visible < t.numel  # partly invisible
    assert t.numel - t.n_bitwise_unchanged == visible
    assert t.base_dtype == "bfloat16" and s16.storage_dtypes == {
        "base": ["bfloat16"],
        "tuned": ["bfloat16"],
    }
    # the tolerance counts use float32 of the stored bf16 values
    d = (tuned16[K].float() - base16[K].float()).abs()
    assert t.n_unchanged_atol == [int((d <= a).sum()) for a in s16.atols]


def test_bitwise_is_in_storage_dtype_not_after_upcast(tmp_path):
    # -0.0 and +0.0 are equal as floats but differ in their stored bits
    base = base_tensors()
    tuned = dict(base)
    z = base[NORM].clone()
    z[0] = 0.0
    b2 = dict(base)
    b2[NORM] = z
    z2 = z.clone()
    z2[0] = -0.0
    tuned[NORM] = z2
    s = diff_checkpoints(
        write_ckpt(tmp_path / "b", b2), write_ckpt(tmp_path / "t", tuned), rank="skip"
    )
    t = s.tensor(NORM)
    assert t.numel - t.n_bitwise_unchanged == 1
    assert t.n_unchanged_atol[0] == t.numel  # |dw| = 0


def test_chunked_statistics_equal_unchunked(tmp_path):
    base = base_tensors()
    tuned = {n: t + 1e-6 * torch.randn_like(t) for n, t in base.items()}
    b, t = write_ckpt(tmp_path / "b", base), write_ckpt(tmp_path / "t", tuned)
    s1 = diff_checkpoints(b, t, rank="skip")
    s2 = diff_checkpoints(b, t, rank="skip", chunk_elements=333)
    d1, d2 = s1.comparable_dump(), s2.comparable_dump()
    floats = ("sum_sq_delta", "sum_sq_base", "rel_frob_norm")
    for x, y in zip(
        [d1["overall"], *d1["tensors"], *d1["by_layer_type"]],
        [d2["overall"], *d2["tensors"], *d2["by_layer_type"]],
    ):
        for key in floats:  # chunked float32 sums may differ in the last bits
            assert x.pop(key) == pytest.approx(y.pop(key), rel=1e-6)
        assert x == y  # every count is identical


# --------------------------------------------------------------------------------------------
# overlap


def _planted_pair(tmp_path, na: int, nb: int, nboth: int):
    """Two updates of one tensor with exactly na, nb changed entries sharing nboth."""
    base = base_tensors()
    n = 128 * 80
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(5))
    both, only_a, only_b = perm[:nboth], perm[nboth:na], perm[na : na + nb - nboth]
    ma = torch.zeros(n, dtype=torch.bool)
    mb = torch.zeros(n, dtype=torch.bool)
    ma[torch.cat([both, only_a])] = True
    mb[torch.cat([both, only_b])] = True
    ta, tb = dict(base), dict(base)
    ta[UP] = torch.where(ma.reshape(128, 80), base[UP] + 0.5, base[UP])
    tb[UP] = torch.where(mb.reshape(128, 80), base[UP] - 0.25, base[UP])
    # a second, fully changed tensor in A only and a half-changed one in both
    ta[NORM] = base[NORM] + 1.0
    half = torch.arange(48) < 24
    ta[K] = torch.where(half, base[K] + 1, base[K])
    tb[K] = torch.where(half, base[K] + 2, base[K])
    return (
        write_ckpt(tmp_path / "base", base),
        write_ckpt(tmp_path / "a", ta),
        write_ckpt(tmp_path / "b", tb),
    )


def test_overlap_of_planted_masks_and_random_baselines_equal_formulas(tmp_path):
    base, a, b = _planted_pair(tmp_path, na=3072, nb=2048, nboth=1024)
    sa = diff_checkpoints(base, a, rank="skip")
    sb = diff_checkpoints(base, b, rank="skip")
    ov = overlap(sa, sb)
    n_up = 128 * 80
    up = next(r for r in ov.tensors if r.name == UP)
    assert (up.n_changed_a, up.n_changed_b, up.n_changed_both) == (3072, 2048, 1024)
    p1, p2 = 3072 / n_up, 2048 / n_up
    assert up.o1 == 1024 / 3072 and up.o2 == 1024 / 2048
    assert up.jaccard == 1024 / (3072 + 2048 - 1024)
    assert up.expected_o1 == p2 and up.expected_o2 == p1
    assert up.expected_jaccard == pytest.approx(p1 * p2 / (p1 + p2 - p1 * p2), rel=1e-12)
    # overall: K half changed in both (same half), NORM all changed in A only
    nk, nn = 32 * 48, 48
    total = sum(t.numel for t in sa.tensors)
    o = ov.overall
    assert o.numel == total
    assert o.n_changed_a == 3072 + nk // 2 + nn
    assert o.n_changed_b == 2048 + nk // 2
    assert o.n_changed_both == 1024 + nk // 2
    P1, P2 = o.n_changed_a / total, o.n_changed_b / total
    assert o.expected_o1 == P2 and o.expected_o2 == P1
    assert o.expected_jaccard == pytest.approx(P1 * P2 / (P1 + P2 - P1 * P2), rel=1e-12)
    strat = 3072 * 2048 / n_up + (nk // 2) * (nk // 2) / nk
    assert o.expected_both_stratified == pytest.approx(strat, rel=1e-12)
    assert o.expected_o1_stratified == pytest.approx(strat / o.n_changed_a, rel=1e-12)
    # the same from the checkpoints directly, and JSON round trip
    ov2 = overlap_checkpoints(base, a, b)
    assert ov2.overall == ov.overall
    assert type(ov).model_validate_json(ov.model_dump_json()).overall == ov.overall
    # a tolerance-based changed set: |dw| > 0.3 drops B's -0.25 changes
    ov3 = overlap_checkpoints(base, a, b, tolerance=0.3)
    up3 = next(r for r in ov3.tensors if r.name == UP)
    assert (up3.n_changed_a, up3.n_changed_b) == (3072, 0) and up3.o1 == 0.0 and up3.o2 is None


def test_overlap_of_independent_random_masks_is_near_its_expectation(tmp_path):
    n = 200_000
    g = torch.Generator().manual_seed(7)
    w = torch.randn(n, generator=g)
    ma = torch.rand(n, generator=g) < 0.3
    mb = torch.rand(n, generator=g) < 0.1
    ov = overlap_checkpoints(
        {"w": w}, {"w": torch.where(ma, w + 1, w)}, {"w": torch.where(mb, w + 1, w)}
    )
    o = ov.overall
    assert o.o1 == pytest.approx(o.expected_o1, abs=0.01)
    assert o.o2 == pytest.approx(o.expected_o2, abs=0.01)
    assert o.jaccard == pytest.approx(o.expected_jaccard, abs=0.01)


def test_overlap_refuses_different_bases(tmp_path):
    base, a, b = _planted_pair(tmp_path, na=100, nb=100, nboth=10)
    other = write_ckpt(tmp_path / "other", base_tensors(seed=9))
    sa = diff_checkpoints(base, a, rank="skip")
    sb = diff_checkpoints(other, b, rank="skip")
    with pytest.raises(CheckpointError, match="different bases"):
        overlap(sa, sb)


def test_overlap_with_in_memory_stats(tmp_path):
    base = base_tensors()
    ta = {n: (t + 1 if n == K else t) for n, t in base.items()}
    tb = {n: (t + 1 if n in (K, NORM) else t) for n, t in base.items()}
    ov = overlap(diff_checkpoints(base, ta, rank="skip"), diff_checkpoints(base, tb, rank="skip"))
    assert ov.overall.n_changed_both == 32 * 48 and ov.overall.o1 == 1.0
    loaded = UpdateStats.model_validate_json(
        diff_checkpoints(base, ta, rank="skip").model_dump_json()
    )
    with pytest.raises(CheckpointError, match="overlap_checkpoints"):
        overlap(loaded, loaded)


# --------------------------------------------------------------------------------------------
# formats: sharded / single / in memory / tied


def test_sharded_and_single_file_give_identical_results(tmp_path):
    base = base_tensors(torch.bfloat16)
    tuned = {
        n: (t.float() + 0.01 * torch.randn(t.shape)).to(torch.bfloat16) for n, t in base.items()
    }
    single = diff_checkpoints(write_ckpt(tmp_path / "b1", base), write_ckpt(tmp_path / "t1", tuned))
    sharded = diff_checkpoints(
        write_ckpt(tmp_path / "b3", base, shards=3), write_ckpt(tmp_path / "t2", tuned, shards=2)
    )
    mixed = diff_checkpoints(write_ckpt(tmp_path / "b4", base, shards=4), tuned)  # dir vs dict
    file_only = diff_checkpoints(
        tmp_path / "b1" / "model.safetensors", tmp_path / "t1" / "model.safetensors"
    )
    assert single.comparable_dump() == sharded.comparable_dump()
    assert single.comparable_dump() == mixed.comparable_dump()
    assert single.comparable_dump() == file_only.comparable_dump()
    assert single.base_fingerprint == sharded.base_fingerprint


def test_save_pretrained_sharded_matches_in_memory_model(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        tie_word_embeddings=True,
    )
    m = LlamaForCausalLM(cfg)
    m.save_pretrained(tmp_path / "base")
    with torch.no_grad():
        m.model.layers[1].mlp.down_proj.weight.mul_(1.5)
        m.model.embed_tokens.weight[3].add_(1.0)  # tied: the head changes with it
    m.save_pretrained(tmp_path / "tuned", max_shard_size="20KB")
    assert (tmp_path / "tuned" / "model.safetensors.index.json").is_file()
    on_disk = diff_checkpoints(tmp_path / "base", tmp_path / "tuned")
    in_mem = diff_checkpoints(tmp_path / "base", m)
    assert on_disk.comparable_dump() == in_mem.comparable_dump()
    names = {t.name for t in on_disk.tensors}
    assert HEAD not in names and EMB in names  # tied, compared once
    assert on_disk.tensor(EMB).numel - on_disk.tensor(EMB).n_bitwise_unchanged == 32
    dp = on_disk.tensor("model.layers.1.mlp.down_proj.weight")
    assert dp.n_bitwise_unchanged < dp.numel and dp.rank == 32


def test_tied_embeddings_against_untied_checkpoint_are_not_an_error(tmp_path):
    base = base_tensors()
    tied_base = {n: t for n, t in base.items() if n != HEAD}
    b = write_ckpt(tmp_path / "b", tied_base, {**LLAMA_CFG, "tie_word_embeddings": True})
    tuned = dict(base)
    tuned[HEAD] = base[EMB].clone()
    tuned[HEAD][0, 0] += 1.0
    t = write_ckpt(tmp_path / "t", tuned)
    s = diff_checkpoints(b, t)
    head = s.tensor(HEAD)
    assert head.base_name == EMB and head.numel - head.n_bitwise_unchanged == 1
    assert any("ties" in note for note in s.tied)
    # GPT-2: the model's state dict has lm_head tied to wte, the saved file has no lm_head
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    g = GPT2LMHeadModel(
        GPT2Config(
            n_embd=32,
            n_layer=2,
            n_head=4,
            vocab_size=64,
            n_positions=16,
            bos_token_id=0,
            eos_token_id=0,
        )
    )
    g.save_pretrained(tmp_path / "gpt2")
    s2 = diff_checkpoints(tmp_path / "gpt2", g)
    assert s2.overall.n_bitwise_unchanged == s2.overall.numel
    types = {x.matrix_type for x in s2.by_matrix_type}
    assert {"qkv", "o", "up", "down", "norm", "embed"} <= types and "other" not in types


def test_json_round_trip(tmp_path):
    base, a, _ = _planted_pair(tmp_path, na=100, nb=100, nboth=10)
    s = diff_checkpoints(base, a)
    again = UpdateStats.model_validate_json(s.model_dump_json())
    assert again == s
    assert again.overall.share_bitwise_unchanged == s.overall.share_bitwise_unchanged


# --------------------------------------------------------------------------------------------
# streaming


def test_one_tensor_pair_in_memory_at_a_time(tmp_path, monkeypatch):
    base, a, _ = _planted_pair(tmp_path, na=100, nb=100, nboth=10)
    alive: list[weakref.ref] = []
    most = 0
    real_get = ckpt_mod.SafetensorsCheckpoint.get

    def counting_get(self, name):
        nonlocal most
        t = real_get(self, name)
        live = sum(r() is not None for r in alive)
        most = max(most, live)
        alive.append(weakref.ref(t))
        return t

    monkeypatch.setattr(ckpt_mod.SafetensorsCheckpoint, "get", counting_get)
    s = diff_checkpoints(base, a)
    assert len(alive) == 2 * s.n_tensors  # each tensor read once per checkpoint
    assert most <= 1  # when a tensor is read, at most the other half of its pair is held


def test_reader_lists_from_headers_without_loading(tmp_path, monkeypatch):
    path = write_ckpt(tmp_path / "b", base_tensors(torch.bfloat16), shards=2)
    r = ckpt_mod.open_checkpoint(path)
    assert r.shapes[Q] == (64, 48) and r.dtypes[Q] == torch.bfloat16
    assert sorted(r.names) == sorted(base_tensors())


# --------------------------------------------------------------------------------------------
# bad input


def test_different_architectures_are_refused(tmp_path):
    b = write_ckpt(tmp_path / "b", base_tensors())
    gpt = write_ckpt(
        tmp_path / "g",
        {"transformer.wte.weight": torch.zeros(4, 4)},
        {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]},
    )
    with pytest.raises(CheckpointError, match="different architectures"):
        diff_checkpoints(b, gpt)


def test_different_shapes_name_first_differing_tensor(tmp_path):
    base = base_tensors()
    tuned = dict(base)
    tuned[K] = torch.zeros(32, 40)
    tuned[UP] = torch.zeros(1, 1)
    b, t = write_ckpt(tmp_path / "b", base), write_ckpt(tmp_path / "t", tuned)
    with pytest.raises(
        CheckpointError,
        match=r"first differing tensor is 'model\.layers\.0\.self_attn\.k_proj\.weight', \[32, 48\]",
    ):
        diff_checkpoints(b, t)


def test_missing_tensors_are_listed(tmp_path):
    base = base_tensors()
    tuned = {n: t for n, t in base.items() if n not in (K, NORM)}
    tuned["model.layers.0.extra.weight"] = torch.zeros(2)
    b, t = write_ckpt(tmp_path / "b", base), write_ckpt(tmp_path / "t", tuned)
    with pytest.raises(CheckpointError) as e:
        diff_checkpoints(b, t)
    msg = str(e.value)
    assert "2 tensor(s) of base are missing from tuned" in msg
    assert K in msg and NORM in msg
    assert "model.layers.0.extra.weight" in msg
    # an untied lm_head missing is an error, not a tie
    untied = {n: t for n, t in base.items() if n != HEAD}
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        diff_checkpoints(b, write_ckpt(tmp_path / "u", untied))


def test_index_naming_a_missing_shard_is_refused(tmp_path):
    b = write_ckpt(tmp_path / "b", base_tensors(), shards=3)
    (b / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(
        CheckpointError, match=r"'model-00002-of-00003\.safetensors' that do not exist"
    ):
        diff_checkpoints(b, b)
    (b / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid safetensors index"):
        diff_checkpoints(b, b)


class _Trap:
    """Unpickling this object creates a marker file: proof that a pickle was loaded."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_files_are_refused_and_never_loaded(tmp_path, monkeypatch):
    marker = tmp_path / "UNPICKLED"
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(LLAMA_CFG))
    for name in ("pytorch_model.bin", "weights.pt"):
        (d / name).write_bytes(pickle.dumps(_Trap(str(marker))))

    def boom(*a, **k):
        raise AssertionError("a pickle loader was called")

    monkeypatch.setattr(torch, "load", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)
    good = write_ckpt(tmp_path / "good", base_tensors())
    for bad in (d, d / "pytorch_model.bin", d / "weights.pt"):
        for args in ((bad, good), (good, bad)):
            with pytest.raises(CheckpointError, match="safe_serialization=True") as e:
                diff_checkpoints(*args)
            assert "refuses" in str(e.value) and "arbitrary code" in str(e.value)
    assert not marker.exists()
    # a sharded pickle checkpoint (index of .bin shards) likewise
    d2 = tmp_path / "pickled2"
    d2.mkdir()
    (d2 / "pytorch_model-00001-of-00001.bin").write_bytes(pickle.dumps(_Trap(str(marker))))
    (d2 / "pytorch_model.bin.index.json").write_text('{"weight_map": {}}')
    with pytest.raises(CheckpointError, match="pickle-based"):
        diff_checkpoints(d2, good)
    assert not marker.exists()


def test_non_checkpoints_are_refused(tmp_path):
    good = write_ckpt(tmp_path / "good", base_tensors())
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        diff_checkpoints(empty, good)
    with pytest.raises(CheckpointError, match="does not exist"):
        diff_checkpoints(tmp_path / "nope", good)
    with pytest.raises(CheckpointError, match="neither a checkpoint directory"):
        diff_checkpoints(empty / "notes.txt", good)
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    data = (good / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        diff_checkpoints(trunc, good)
    with pytest.raises(CheckpointError, match="expected a checkpoint directory"):
        diff_checkpoints(42, good)


# --------------------------------------------------------------------------------------------
# device and CLI


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU fallback")
def test_cuda_request_falls_back_to_cpu(tmp_path, capsys):
    base, a, _ = _planted_pair(tmp_path, na=100, nb=100, nboth=10)
    s = diff_checkpoints(base, a, device="cuda")
    assert s.run.rank_device == "cpu" and s.run.seconds_rank >= 0
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_rank_on_gpu_equals_cpu(tmp_path):
    base, a, _ = _planted_pair(tmp_path, na=100, nb=100, nboth=10)
    cpu = diff_checkpoints(base, a, device="cpu")
    gpu = diff_checkpoints(base, a, device="cuda")
    assert gpu.run.rank_device.startswith("cuda")
    assert [t.rank for t in cpu.tensors] == [t.rank for t in gpu.tensors]


def test_cli_writes_json_markdown_and_plots(tmp_path, capsys):
    base, a, b = _planted_pair(tmp_path, na=300, nb=200, nboth=100)
    out = tmp_path / "out"
    assert (
        diff_main(
            [
                str(base),
                str(a),
                "--out",
                str(out),
                "--no-progress",
                "--tolerances",
                "1e-6",
                "1e-4",
                "--rtol",
                "1e-2",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "overall" in printed and "unch.@1e-06" in printed and "rank on cpu" in printed
    s = UpdateStats.model_validate_json((out / "diff.json").read_text())
    assert s.atols == [1e-6, 1e-4] and s.rtol == 1e-2
    assert s.tensor(UP).numel - s.tensor(UP).n_bitwise_unchanged == 300
    md = (out / "diff.md").read_text()
    assert "| overall |" in md and "plots/density_heatmap.png" in md
    for png in ("unchanged_vs_tolerance.png", "density_heatmap.png"):
        assert (out / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob("*.tmp"))

    assert diff_main([str(base), str(a), "--json", "--rank", "skip", "--no-progress"]) == 0
    s2 = UpdateStats.model_validate_json(capsys.readouterr().out)
    assert s2.rank_mode == "skip" and s2.tensor(UP).rank is None

    assert diff_main([str(base), str(a), "--json", "--rank-only", r"mlp\.", "--no-progress"]) == 0
    s3 = UpdateStats.model_validate_json(capsys.readouterr().out)
    assert s3.rank_only == r"mlp\." and s3.overall.n_ranked == 1
    assert s3.tensor(UP).rank is not None and s3.tensor(K).rank is None

    assert (
        diff_main(
            ["--overlap", str(a), str(b), "--base", str(base), "--no-progress", "--out", str(out)]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "E[o1]=p2" in text and "Jaccard" in text
    ov = json.loads((out / "overlap.json").read_text())
    up = next(t for t in ov["tensors"] if t["name"] == UP)
    assert (up["n_changed_a"], up["n_changed_b"], up["n_changed_both"]) == (300, 200, 100)


def test_cli_reports_bad_input_clearly(tmp_path, capsys):
    good = write_ckpt(tmp_path / "good", base_tensors())
    assert diff_main([str(good), str(tmp_path / "missing"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert diff_main([str(good)]) == 2
    assert "usage: routekit diff BASE TUNED" in capsys.readouterr().err
    assert diff_main(["--overlap", str(good), str(good)]) == 2
    assert "--base" in capsys.readouterr().err
    assert diff_main([str(good), str(good), "--tolerances", "-1"]) == 2
    assert "tolerances" in capsys.readouterr().err
    assert diff_main([str(good), str(good), "--rank-only", "(", "--no-progress"]) == 2
    assert "not a valid regular expression" in capsys.readouterr().err


def test_diff_is_registered_with_the_routekit_command():
    from routekit import cli

    assert "routekit.analysis.commands" in cli._COMMAND_MODULES


def test_in_memory_inputs_are_not_modified(tmp_path):
    base = base_tensors()
    tuned = {n: t * 1.5 for n, t in base.items()}
    before = {n: t.clone() for n, t in {**base, **{f"t.{k}": v for k, v in tuned.items()}}.items()}
    diff_checkpoints(base, tuned, chunk_elements=500)
    for n, t in base.items():
        assert torch.equal(t, before[n])
    for n, t in tuned.items():
        assert torch.equal(t, before[f"t.{n}"])


def test_different_storage_dtypes_compare_after_exact_widening(tmp_path):
    base = base_tensors(torch.float32)
    tuned = {n: t.to(torch.bfloat16) for n, t in base.items()}
    s = diff_checkpoints(base, tuned, rank="skip")
    t = s.tensor(K)
    assert (t.base_dtype, t.tuned_dtype) == ("float32", "bfloat16")
    want = int((base[K] != tuned[K].float()).sum())
    assert t.numel - t.n_bitwise_unchanged == want > 0


# --------------------------------------------------------------------------------------------
# unknown keys, NaN/inf refusal, one fingerprint scheme


def test_unknown_group_or_tensor_is_a_routekit_error_listing_known_keys():
    from routekit.analysis import UnknownStatsKeyError
    from routekit.errors import RoutekitError

    base = base_tensors()
    s = diff_checkpoints(base, dict(base), rank="skip")
    with pytest.raises(UnknownStatsKeyError) as err:
        s.group("qq")
    assert isinstance(err.value, RoutekitError) and isinstance(err.value, KeyError)
    msg = str(err.value)
    assert "'qq'" in msg and all(repr(g.matrix_type) in msg for g in s.by_matrix_type)
    with pytest.raises(UnknownStatsKeyError, match=r"layer=7; it holds None, 0, 1\."):
        s.group(layer=7)
    with pytest.raises(UnknownStatsKeyError, match=r"'up', layer=0; .*\(layer=1, 'up'\)"):
        s.group("up", layer=0)  # up_proj lives in layer 1 only
    with pytest.raises(UnknownStatsKeyError) as err:
        s.tensor("model.layers.0.self_attn.q_proj.weigth")
    msg = str(err.value)
    assert "'model.layers.0.self_attn.q_proj.weigth'" in msg
    assert f"Closest names: {Q!r}" in msg and f"{len(base)} tensor(s)" in msg


@pytest.mark.parametrize("side", ["base", "tuned"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_in_a_checkpoint_is_refused_naming_tensor_and_file(tmp_path, side, bad, capsys):
    clean = base_tensors(torch.bfloat16)
    broken = dict(clean)
    broken[K] = clean[K].clone()
    broken[K][3, 5] = bad
    broken[K][7, 1] = bad
    paths = {
        "base": write_ckpt(tmp_path / "b", broken if side == "base" else clean, shards=2),
        "tuned": write_ckpt(tmp_path / "t", broken if side == "tuned" else clean, shards=2),
    }
    shard = json.loads((paths[side] / "model.safetensors.index.json").read_text())["weight_map"][K]
    with pytest.raises(CheckpointError) as err:
        diff_checkpoints(paths["base"], paths["tuned"], chunk_elements=100)
    msg = str(err.value)
    assert repr(K) in msg and str(paths[side].resolve() / shard) in msg and side in msg
    counts = "2 NaN and 0 inf" if bad != bad else "0 NaN and 2 inf"
    assert counts in msg
    # the CLI reports it as an error and writes nothing
    out = tmp_path / "report"
    args = [str(paths["base"]), str(paths["tuned"]), "--out", str(out), "--no-progress"]
    assert diff_main(args) == 2
    assert repr(K) in capsys.readouterr().err
    assert not out.exists()


def test_nan_in_memory_and_bitwise_equal_nan_are_refused_too():
    base = base_tensors()
    base[UP] = base[UP].clone()
    base[UP][0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"in-memory state dict \(base\)"):
        diff_checkpoints(base, dict(base))  # unchanged, yet NaN


def test_huge_finite_values_are_not_mistaken_for_inf():
    base = base_tensors()
    base[NORM] = torch.full((48,), 3e30)  # its sum of squares overflows float32
    tuned = dict(base)
    tuned[NORM] = base[NORM] * 2
    t = diff_checkpoints(base, tuned, rank="skip").tensor(NORM)
    assert t.n_bitwise_unchanged == 0 and t.max_abs_delta == pytest.approx(3e30, rel=1e-6)


def test_diff_fingerprints_are_routekit_io_fingerprints(tmp_path):
    from safetensors.torch import load_file

    from routekit.io import fingerprint_tensors

    base = base_tensors(torch.bfloat16)
    tuned = {n: t * 2 for n, t in base.items()}
    s = diff_checkpoints(
        write_ckpt(tmp_path / "b", base, shards=3), write_ckpt(tmp_path / "t", tuned), rank="skip"
    )
    on_disk = load_file(str(tmp_path / "t" / "model.safetensors"))
    assert s.base_fingerprint == fingerprint_tensors(base)
    assert s.tuned_fingerprint == fingerprint_tensors(on_disk) != s.base_fingerprint


def test_overlap_refuses_stats_of_another_schema_version(tmp_path):
    base, a, b = _planted_pair(tmp_path, na=100, nb=100, nboth=10)
    sa = diff_checkpoints(base, a, rank="skip")
    old = UpdateStats.model_validate({**sa.model_dump(), "schema_version": 1})
    with pytest.raises(CheckpointError, match="schema 2 and 1"):
        overlap(sa, old)
