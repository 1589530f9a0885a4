"""Loading and batched evaluation are architecture-generic (tiny Llama, Qwen2, GPT-2), and
loading refuses bad paths and mismatched tokenizers."""

import pytest
import torch
from transformers import ViTConfig

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


def test_eval_cli_json_equals_api(tmp_path, char_tokenizer, capsys):
    import json

    from routekit.cli import main

    model = tiny_causal_lm("qwen2")
    model.save_pretrained(tmp_path / "m")
    char_tokenizer.save_pretrained(tmp_path / "m")
    data = tmp_path / "t.jsonl"
    expected = [reference_greedy(model, char_tokenizer, p, 4) for p in PROMPTS[:2]]
    data.write_text("\n".join(json.dumps({"question": p, "answer": a or "x"})
                              for p, a in zip(PROMPTS[:2], [expected[0], "nope"])) + "\n")
    rc = main(["eval", "--model", str(tmp_path / "m"), "--task", f"jsonl:{data}", "--json",
               "--max-new-tokens", "4"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    task_obj = __import__("routekit").get_task(f"jsonl:{data}")
    api = evaluate(model, char_tokenizer, task_obj, "test", max_new_tokens=4)
    assert out["accuracy"] == api.accuracy and out["n"] == 2


def test_cli_reports_errors_without_traceback(capsys):
    from routekit.cli import main

    assert main(["eval", "--model", "/nonexistent/model", "--task", "rev"]) == 1
    assert "does not exist" in capsys.readouterr().err
