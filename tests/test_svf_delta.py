"""The exact SVF update (svf_delta), the adapted checkpoint, z != 1 against a fresh float64
SVD, the measured z = 1 tolerance, and the warning for a corrupt SVD cache."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from routekit.analysis import diff_checkpoints
from routekit.errors import ConfigError, ExpertFileError, FingerprintMismatchError, RoutekitWarning
from routekit.svf import SVFConfig, SVFExpert, get_svf_model, merge, svf_layers, unmerge
from routekit.svf.delta import save_adapted_checkpoint, svf_delta
from routekit.svf.factors import linear_weight

from .conftest import ARCHS, tiny_causal_lm

EPS32 = torch.finfo(torch.float32).eps


def wrapped(arch: str, tmp_path, dtype: torch.dtype = torch.float32, target: str = "mlp"):
    """(base saved to tmp_path/base, its original (out, in) weights by layer, SVF model)."""
    base = tiny_causal_lm(arch).to(dtype)
    base.save_pretrained(tmp_path / "base")
    model = get_svf_model(base, SVFConfig(target_modules=target, cache_dir=str(tmp_path / "c")))
    originals = {n: linear_weight(m.base_layer).detach().clone() for n, m in svf_layers(model).items()}
    return originals, model


def plant_z(model, seed: int = 1) -> tuple[list[str], list[str]]:
    """z = 1 + 0.3 N(0, 1) in every other layer (z stays exactly 1 in the rest)."""
    layers = svf_layers(model)
    names = list(layers)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n in names[::2]:
            layers[n].svf_z.add_(0.3 * torch.randn(layers[n].rank, generator=g))
    return names[::2], names[1::2]


def reference_adapted(w: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """W' = U diag(S ⊙ z) Vh from a fresh float64 SVD of the original (out, in) weight."""
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    return (u * (s * z.double())) @ vh


def delta_tolerance(w: torch.Tensor, z: torch.Tensor) -> float:
    """Bound on |ΔW_float32 − ΔW_float64| entry-wise.

    The float32 SVD is backward stable: its factors are an exact SVD of W + E with
    ||E||_2 <= c·eps32·||W||_2 for a modest c (LAPACK's bound grows like min(m, n)), so
    ΔW = U diag(S ⊙ (z − 1)) Vh carries an error of about eps32·||W||_2·max|z − 1| per
    singular direction, times up to min(m, n) directions; singular values of these random
    matrices are well separated, so the singular vectors inherit no gap amplification.
    The bound 4·min(m, n)·eps32·||W||_2·max|z − 1| holds with a margin: the errors measured
    on the tiny models are 2-17 % of it.
    """
    return 4 * min(w.shape) * EPS32 * float(torch.linalg.matrix_norm(w.double(), 2)) * float(
        (z - 1).abs().max()
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_delta_equals_a_fresh_float64_svd_and_is_exactly_zero_where_z_is_1(arch, tmp_path):
    originals, model = wrapped(arch, tmp_path)
    changed, untouched = plant_z(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deltas = svf_delta(model)
    layers = svf_layers(model)
    assert list(deltas) == list(layers)
    for n, d in deltas.items():
        w = originals[n]
        z = layers[n].svf_z.detach()
        want = reference_adapted(w, z) - w.double()
        if layers[n].is_conv1d:
            want = want.t()
        assert d.dtype == torch.float32 and d.shape == layers[n].base_layer.weight.shape
        if n in untouched:
            assert torch.equal(d, torch.zeros_like(d)) and not torch.signbit(d).any()
        else:
            err = float((d.double() - want).abs().max())
            tol = delta_tolerance(w, z)
            assert err <= tol, (n, err, tol)
            assert float(want.abs().max()) > 1e3 * tol  # the check is not vacuous
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("arch", ARCHS)
def test_factored_forward_with_z_not_1_matches_x_times_fresh_w_prime(arch, tmp_path):
    """Not factored-vs-merged (both use the cached factors): an independent float64 SVD."""
    originals, model = wrapped(arch, tmp_path)
    plant_z(model, seed=3)
    g = torch.Generator().manual_seed(4)
    for n, layer in svf_layers(model).items():
        w = originals[n]
        z = layer.svf_z.detach()
        x = torch.randn(3, 5, w.shape[1], generator=g)
        bias = layer.base_layer.bias
        want = x.double() @ reference_adapted(w, z).t()
        if bias is not None:
            want = want + bias.double()
        with torch.no_grad():
            got = layer(x)
        # float32 matmuls over `in` terms plus the factors' float32 error (see delta_tolerance)
        scale = float(x.abs().max()) * float(w.abs().sum(1).max()) * float(z.abs().max())
        tol = 4 * min(w.shape) * EPS32 * scale
        assert float((got.double() - want).abs().max()) <= tol


@pytest.mark.parametrize("arch", ARCHS)
def test_adapted_checkpoint_loads_plainly_and_diff_shows_only_touched_layers(arch, tmp_path):
    originals, model = wrapped(arch, tmp_path)
    changed, untouched = plant_z(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = save_adapted_checkpoint(model, tmp_path / "adapted")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # model unchanged

    saved = load_file(str(out / "model.safetensors"))
    base = load_file(str(tmp_path / "base" / "model.safetensors"))
    assert set(saved) == set(base) and json.loads((out / "config.json").read_text())
    deltas = svf_delta(model)
    for n in untouched:
        assert torch.equal(saved[f"{n}.weight"], base[f"{n}.weight"])
    for n in changed:
        want = (base[f"{n}.weight"].float() + deltas[n]).to(base[f"{n}.weight"].dtype)
        assert torch.equal(saved[f"{n}.weight"], want)
    for k in base:  # everything outside the SVF layers is the base's, bit for bit
        if not any(k == f"{n}.weight" for n in changed):
            assert torch.equal(saved[k], base[k]), k

    s = diff_checkpoints(tmp_path / "base", out, rank="skip")
    moved = {t.name for t in s.tensors if t.n_bitwise_unchanged < t.numel}
    assert moved == {f"{n}.weight" for n in changed}

    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not svf_layers(plain)
    x = torch.randint(3, 56, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = model(x).logits, plain(x).logits
    # W + ΔW vs U diag(S ⊙ z) Vh: they differ by the reconstruction error W − U diag(S) Vh,
    # measured at <= 3e-6 of max|logits| on these models (routekit/svf/factors.py).
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())


def test_expert_z_is_used_and_checked_before_anything_is_written(tmp_path):
    _, model = wrapped("llama", tmp_path)
    layers = svf_layers(model)
    g = torch.Generator().manual_seed(5)
    z = {n: 1 + 0.2 * torch.randn(layer.rank, generator=g) for n, layer in layers.items()}
    expert = SVFExpert(z, name="e", target_modules="mlp",
                       base_fingerprint=model.svf_base_fingerprint)
    from_expert = svf_delta(model, expert)
    assert all(torch.equal(layer.svf_z, torch.ones_like(layer.svf_z)) for layer in layers.values())
    assert not any(d.any() for d in svf_delta(model).values())  # svf_z untouched: z = 1
    with torch.no_grad():
        for n, layer in layers.items():
            layer.svf_z.copy_(z[n])
    from_svf_z = svf_delta(model)
    assert all(torch.equal(from_expert[n], from_svf_z[n]) for n in layers)

    other = SVFExpert(z, name="o", target_modules="mlp", base_fingerprint="0123456789abcdef")
    with pytest.raises(FingerprintMismatchError, match="0123456789abcdef"):
        save_adapted_checkpoint(model, tmp_path / "x", other)
    short = SVFExpert(dict(list(z.items())[1:]), name="s", target_modules="mlp",
                      base_fingerprint=model.svf_base_fingerprint)
    with pytest.raises(ConfigError, match="missing"):
        save_adapted_checkpoint(model, tmp_path / "x", short)
    wrong = SVFExpert({**z, next(iter(z)): torch.ones(3)}, name="w", target_modules="mlp",
                      base_fingerprint=model.svf_base_fingerprint)
    with pytest.raises(ExpertFileError, match=r"shape \(3,\)"):
        svf_delta(model, wrong)
    assert not (tmp_path / "x").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_merged_model_gives_the_same_checkpoint_and_stays_merged(tmp_path):
    _, model = wrapped("qwen2", tmp_path)
    plant_z(model)
    save_adapted_checkpoint(model, tmp_path / "unmerged")
    merge(model)
    merged_weights = {n: m.base_layer.weight.clone() for n, m in svf_layers(model).items()}
    save_adapted_checkpoint(model, tmp_path / "merged")
    a = load_file(str(tmp_path / "unmerged" / "model.safetensors"))
    b = load_file(str(tmp_path / "merged" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for n, m in svf_layers(model).items():
        assert m.merged and torch.equal(m.base_layer.weight, merged_weights[n])
    unmerge(model)


def test_bf16_base_keeps_untouched_layers_bitwise(tmp_path):
    _, model = wrapped("llama", tmp_path, dtype=torch.bfloat16)
    changed, untouched = plant_z(model)
    out = save_adapted_checkpoint(model, tmp_path / "adapted")
    saved = load_file(str(out / "model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}
    s = diff_checkpoints(tmp_path / "base", out, rank="skip")
    for n in untouched:
        assert s.tensor(f"{n}.weight").n_bitwise_unchanged == s.tensor(f"{n}.weight").numel
    for n in changed:
        assert s.tensor(f"{n}.weight").density > 0.5


def test_existing_directory_is_refused_unless_overwrite(tmp_path):
    _, model = wrapped("gpt2", tmp_path)
    plant_z(model)
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        save_adapted_checkpoint(model, target)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    save_adapted_checkpoint(model, target, overwrite=True)
    assert (target / "model.safetensors").is_file() and not (target / "notes.txt").exists()


def test_unwrapped_model_is_refused():
    with pytest.raises(ConfigError, match="get_svf_model"):
        svf_delta(tiny_causal_lm("llama"))


@pytest.mark.parametrize("arch", ARCHS)
def test_z_1_reproduces_the_base_within_the_measured_tolerance_not_exactly(arch, tmp_path):
    """The documented figure: U diag(S) Vh is W to about 1e-6 of max|W| (float32 SVD), and the
    z = 1 factored forward gives the base's logits to about 1e-6 relative, not bit for bit."""
    base = tiny_causal_lm(arch)
    x = torch.randint(3, 56, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = base(x).logits
    model = get_svf_model(base, SVFConfig(target_modules="all-linear",
                                          cache_dir=str(tmp_path / "c")))
    worst = 0.0
    for layer in svf_layers(model).values():
        w = linear_weight(layer.base_layer).float()
        r = (layer.svf_U * layer.svf_S) @ layer.svf_Vh
        worst = max(worst, float((r - w).abs().max() / w.abs().max()))
    assert 0 < worst <= 1e-5
    with torch.no_grad():
        got = model(x).logits
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())


def test_corrupt_svd_cache_warns_naming_the_file_and_is_recomputed(tmp_path):
    cfg = SVFConfig(target_modules="mlp", cache_dir=str(tmp_path / "c"))
    model = get_svf_model(tiny_causal_lm("llama"), cfg)
    good = {n: (m.svf_U.clone(), m.svf_S.clone()) for n, m in svf_layers(model).items()}
    entries = sorted((tmp_path / "c").glob("*.safetensors"))
    assert len(entries) == len(good)  # one entry per weight matrix
    entry = entries[0]
    intact = entry.read_bytes()
    for damage in (intact[:100], b"not a safetensors file"):
        entry.write_bytes(damage)
        with pytest.warns(RoutekitWarning, match=rf"{entry.name}.*corrupt.*recomputed"):
            again = get_svf_model(tiny_causal_lm("llama"), cfg)
        for n, m in svf_layers(again).items():
            assert torch.equal(m.svf_U, good[n][0]) and torch.equal(m.svf_S, good[n][1])
        assert entry.read_bytes() == intact  # rebuilt and cached again
    # a readable entry that does not fit (NaN factors) is reported with the reason
    from safetensors.torch import save_file

    tensors = load_file(str(entry))
    tensors["S"] = torch.full_like(tensors["S"], float("nan"))
    save_file(tensors, str(entry))
    with pytest.warns(RoutekitWarning, match=r"'S' holds NaN"):
        get_svf_model(tiny_causal_lm("llama"), cfg)
    assert entry.read_bytes() == intact
