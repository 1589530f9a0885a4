"""SVF memory: no copy of W (a memory-mapped W goes back to disk), merges that set the original
aside instead of copying it, quantized layers refused, S ⊙ z in float32 with bf16 factors."""

from __future__ import annotations

import mmap
import os
import struct
import sys

import pytest
import torch
from torch import nn

from routekit.errors import ConfigError
from routekit.svf import SVFConfig, get_svf_model, merge, svf_layers, unmerge
from routekit.svf.residency import release_pages

from .conftest import tiny_causal_lm

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux page release")


def resident_bytes(t: torch.Tensor) -> int:
    """Bytes of ``t``'s whole pages that are resident (/proc/self/pagemap present bit)."""
    page = mmap.PAGESIZE
    a, n = t.data_ptr(), t.numel() * t.element_size()
    start, end = -(-a // page) * page, (a + n) // page * page
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        data = os.pread(fd, 8 * ((end - start) // page), (start // page) * 8)
    finally:
        os.close(fd)
    return page * sum(1 for (e,) in struct.iter_unpack("<Q", data) if e >> 63)


@pytest.fixture
def mapped(tmp_path):
    """A tiny Llama saved as safetensors and loaded back: its weights are file mappings."""
    base = tiny_causal_lm("llama", hidden=256)
    base.save_pretrained(tmp_path / "m")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m", local_files_only=True).eval()
    return base, model, tmp_path


def _ids():
    return torch.randint(3, 56, (2, 9), generator=torch.Generator().manual_seed(0))


@linux
def test_wrapping_a_mapped_model_keeps_no_copy_of_w_and_unload_is_bit_exact(mapped):
    base, model, tmp = mapped
    want_sd = {k: v.clone() for k, v in base.state_dict().items()}
    x = _ids()
    with torch.no_grad():
        want = model(x).logits
    get_svf_model(model, SVFConfig(target_modules="mlp", cache_dir=str(tmp / "c")))
    layers = svf_layers(model)
    weights = [m.base_layer.weight for m in layers.values()]
    size = sum(w.numel() * w.element_size() for w in weights)
    assert sum(resident_bytes(w) for w in weights) <= 0.05 * size  # back on disk
    with torch.no_grad():
        got = model(x).logits  # the factored forward does not read W
    assert sum(resident_bytes(w) for w in weights) <= 0.05 * size
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())
    with torch.no_grad(), model.disable_adapter():
        assert torch.equal(model(x).logits, want)  # the base, read again from the file
    model.unload()
    sd = model.state_dict()
    assert all(torch.equal(sd[k], want_sd[k]) for k in want_sd)


@linux
def test_release_pages_leaves_memory_it_does_not_own_alone(mapped):
    _, model, _ = mapped
    anon = torch.randn(1 << 20)
    keep = anon.clone()
    assert release_pages(anon) == 0 and torch.equal(anon, keep)  # not a file mapping
    w = model.model.layers[0].mlp.up_proj.weight
    with torch.no_grad():
        w[w.shape[0] // 2, 0] += 1.0  # a copy-on-write page: the only copy of that value
    changed = w.detach().clone()
    assert release_pages(w) == 0
    assert torch.equal(w, changed)
    w2 = model.model.layers[1].mlp.up_proj.weight
    w2_values = w2.detach().clone()
    assert release_pages(w2) > 0 and torch.equal(w2, w2_values)  # clean: dropped, same values


def test_merge_sets_the_original_aside_without_copying_and_unmerge_puts_it_back(tmp_path):
    model = get_svf_model(tiny_causal_lm("llama"), SVFConfig(cache_dir=str(tmp_path / "c")))
    layers = svf_layers(model)
    before = {n: (m.base_layer.weight, m.base_layer.weight.data_ptr(), m.base_layer.weight.clone())
              for n, m in layers.items()}
    with torch.no_grad():
        for m in layers.values():
            m.svf_z.mul_(1.5)
    merge(model)
    for n, m in layers.items():
        param, ptr, _ = before[n]
        assert m.base_layer.weight is param  # the same Parameter ...
        assert m._kept_weight.data_ptr() == ptr  # ... its original tensor set aside, uncopied
    unmerge(model)
    for n, m in layers.items():
        param, ptr, values = before[n]
        assert m.base_layer.weight is param and param.data_ptr() == ptr
        assert torch.equal(param, values)


class _Int8Linear(nn.Linear):
    """A stand-in for a quantized linear: nn.Linear's interface, int8 weight."""

    def __init__(self, i: int, o: int) -> None:
        super().__init__(i, o, bias=False)
        self.weight = nn.Parameter(torch.zeros(o, i, dtype=torch.int8), requires_grad=False)


class Linear8bitLt(nn.Linear):  # bitsandbytes' class name, float weight
    pass


@pytest.mark.parametrize("kind", ["int8", "named"])
def test_quantized_linear_layers_are_refused_clearly(kind, tmp_path):
    model = tiny_causal_lm("llama")
    mlp = model.model.layers[0].mlp
    old = mlp.up_proj
    if kind == "int8":
        mlp.up_proj = _Int8Linear(old.in_features, old.out_features)
    else:
        mlp.up_proj = Linear8bitLt(old.in_features, old.out_features, bias=False)
    with pytest.raises(ConfigError, match=r"quantized linear.*layers\.0\.mlp\.up_proj"):
        get_svf_model(model, SVFConfig(cache_dir=str(tmp_path / "c")))
    assert not svf_layers(model)


def test_bf16_factors_keep_s_times_z_in_float32(tmp_path):
    base = tiny_causal_lm("llama", hidden=64)
    x = _ids()
    with torch.no_grad():
        want = base(x).logits
    model = get_svf_model(base, SVFConfig(cache_dir=str(tmp_path / "c"), factor_dtype="bfloat16"))
    layer = next(iter(svf_layers(model).values()))
    assert layer.svf_U.dtype == torch.bfloat16 and layer.svf_S.dtype == torch.float32
    z = torch.full((layer.rank,), 1.0 + 2**-12)  # not representable next to 1 in bf16
    assert layer.row_scales(z).dtype == torch.float32
    assert torch.equal(layer.row_scales(z), layer.svf_S * z)
    with torch.no_grad():
        got = model(x).logits
    assert float((got - want).abs().max()) <= 0.05 * float(want.abs().max())
    # gradients reach z through the bf16 path
    model.train()
    model(x).logits.float().pow(2).mean().backward()
    assert all(m.svf_z.grad is not None and m.svf_z.grad.dtype == torch.float32
               for m in svf_layers(model).values())

