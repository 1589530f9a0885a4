"""Loading and batched evaluation are architecture-generic (tiny Llama, Qwen2, GPT-2), and
loading refuses bad paths and mismatched tokenizers."""

import json
import pickle

import pytest
import torch
from transformers import ViTConfig

from routekit.cli import main
from routekit.errors import ModelLoadError, TokenizerMismatchError
from routekit.eval import evaluate, generate
from routekit.models import load_model
from routekit.tasks import Example, Task, exact_match

from .conftest import ARCHS, tiny_causal_lm

PROMPTS = ["rev abc =", "12+3=", "q: where does kulo live? a:", "x"]


def reference_greedy(model, tok, prompt: str, n: int) -> str:
    """Greedy decoding one prompt at a time, no padding, no generate(): full forward each step."""
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return tok.decode(out, skip_special_tokens=True)


@pytest.mark.parametrize("arch", ARCHS)
def test_left_padded_batch_generation_equals_one_by_one(arch, char_tokenizer, tmp_path):
    model = tiny_causal_lm(arch)
    model.save_pretrained(tmp_path / arch)
    char_tokenizer.save_pretrained(tmp_path / arch)
    loaded, tok = load_model(tmp_path / arch)
    assert type(loaded) is type(model) and tok.padding_side == "left"
    batched = generate(loaded, tok, PROMPTS, max_new_tokens=6, batch_size=4)
    expected = [reference_greedy(loaded, tok, p, 6) for p in PROMPTS]
    assert batched == expected
    # evaluate() scores exactly those completions against the references.
    task = Task("t", {"test": [Example(p, expected[i] if i % 2 else "nope")
                               for i, p in enumerate(PROMPTS)]}, exact_match)
    res = evaluate(loaded, tok, task, "test", max_new_tokens=6, batch_size=3)
    assert res.correct == [exact_match(c, e.reference) for c, e in zip(expected, task.examples())]
    assert res.accuracy == sum(res.correct) / 4


def test_loaded_model_object_passes_through(char_tokenizer):
    model = tiny_causal_lm("llama")
    m, t = load_model(model, char_tokenizer)
    assert m is model and t is char_tokenizer
    with pytest.raises(ModelLoadError, match="needs its tokenizer"):
        load_model(model)


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path)


def test_non_causal_lm_is_refused(tmp_path, char_tokenizer):
    ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
              intermediate_size=16).save_pretrained(tmp_path)
    char_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="not a causal language model"):
        load_model(tmp_path)


def test_tokenizer_larger_than_embeddings_is_refused(char_tokenizer):
    small = tiny_causal_lm("llama", vocab_size=16)
    with pytest.raises(TokenizerMismatchError, match=r"50 tokens but .* 16 rows"):
        load_model(small, char_tokenizer)


def _saved(tmp_path, char_tokenizer, arch: str = "qwen2"):
    model = tiny_causal_lm(arch)
    model.save_pretrained(tmp_path / "m")
    char_tokenizer.save_pretrained(tmp_path / "m")
    return model, tmp_path / "m"


def test_eval_cli_accuracy_equals_independent_greedy_reference(tmp_path, char_tokenizer, capsys):
    model, path = _saved(tmp_path, char_tokenizer, "llama")
    # The jsonl task's default template, written out here; the reference decodes each
    # templated prompt alone with a plain argmax loop (no generate(), no padding).
    templated = [f"Question: {p}\nAnswer:" for p in PROMPTS]
    greedy = [reference_greedy(model, char_tokenizer, t, 6) for t in templated]
    # Rows 1 and 3 complete differently, so a row given another row's completion fails.
    assert all(g.strip() for g in greedy) and greedy[1] != greedy[3], greedy
    # Record 2's answer cannot be a completion of at most 6 characters: 3 of 4 are right.
    answers = [*greedy[:2], "zzzzzzzzzzzz", greedy[3]]
    data = tmp_path / "t.jsonl"
    data.write_text("".join(json.dumps({"question": p, "answer": a}) + "\n"
                            for p, a in zip(PROMPTS, answers)))
    assert main(["eval", "--model", str(path), "--task", f"jsonl:{data}", "--json",
                 "--max-new-tokens", "6", "--batch-size", "3"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["n"] == 4 and out["accuracy"] == 0.75


def test_cli_reports_errors_without_traceback(capsys):
    assert main(["eval", "--model", "/nonexistent/model", "--task", "rev"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("routekit: error: ") and err.count("\n") == 1
    assert "does not exist" in err


def test_cli_turns_a_config_validation_error_into_a_message(monkeypatch, capsys):
    """A pydantic ValidationError raised inside a command (here SVFConfig's) ends as one line
    naming the key and the bad value, exit code 2."""
    from routekit.eval import commands as eval_commands
    from routekit.svf import SVFConfig

    def bad_command(args):
        SVFConfig(target_modules="mlp", z_init="lots")

    monkeypatch.setattr(eval_commands, "_eval", bad_command)
    assert main(["eval", "--model", "m", "--task", "rev"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "SVFConfig" in err and "z_init" in err and "'lots'" in err


@pytest.mark.parametrize("damage", ["truncated", "header"])
def test_corrupt_safetensors_is_refused_naming_the_file(tmp_path, char_tokenizer, capsys, damage):
    _, path = _saved(tmp_path, char_tokenizer, "llama")
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:100] if damage == "truncated" else b"\xff" * 8 + data[8:])
    with pytest.raises(ModelLoadError, match=r"model\.safetensors.*truncated or corrupt"):
        load_model(path)
    assert main(["eval", "--model", str(path), "--task", "rev"]) == 2
    assert "model.safetensors" in capsys.readouterr().err


def test_pickle_only_checkpoint_is_refused_never_unpickled(tmp_path, char_tokenizer):
    _, path = _saved(tmp_path, char_tokenizer, "llama")
    (path / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"

    class Payload:  # unpickling it creates `marker`
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (path / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ModelLoadError, match=r"only as pickle files \(pytorch_model\.bin\).*never unpickles"):
        load_model(path)
    assert not marker.exists()
