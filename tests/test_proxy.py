"""Proxy-tuning: the processor's scores against a no-cache reference, batching, per-row alpha,
deduplicated proxy runs, refused bad input, and save/load of a proxy expert."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LogitsProcessorList,
    PreTrainedTokenizerFast,
)

from routekit.errors import ConfigError, ExpertFileError, TokenizerMismatchError
from routekit.eval import proxy_generate
from routekit.io import tokenizer_fingerprint
from routekit.proxy import (
    ProxyExpert,
    ProxyLogitsProcessor,
    check_vocab_compatible,
)

CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789 +=?:")
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


def char_tokenizer(chars: list[str] = CHARS, extra: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate([*SPECIALS, *chars, *extra])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(pattern=Regex(""), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
        unk_token="<unk>",
    )
    tok.padding_side = "left"
    return tok


def llama(vocab: int, hidden: int, layers: int, seed: int, max_pos: int = 128) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
        max_position_embeddings=max_pos, pad_token_id=0, bos_token_id=1, eos_token_id=None,
    )
    m = LlamaForCausalLM(cfg).eval()
    # Larger random weights than the default init give peaked, tie-free distributions.
    with torch.no_grad():
        m.lm_head.weight.mul_(8.0)
    m.generation_config.eos_token_id = None
    m.generation_config.pad_token_id = 0
    return m


@pytest.fixture(scope="module")
def world():
    # Tiny models: threads only add contention on a shared machine (20x slower measured).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield build_world()
    torch.set_num_threads(threads)


def build_world():
    tok = char_tokenizer()
    v = len(tok)
    base = llama(v, 32, 2, seed=0)
    untuned = llama(v, 16, 2, seed=1, max_pos=48)
    tuned = llama(v, 16, 2, seed=2, max_pos=48)
    tuned2 = llama(v, 16, 2, seed=3, max_pos=48)
    return {
        "tok": tok, "base": base, "untuned": untuned,
        "e1": ProxyExpert(tuned, untuned, "one", tokenizer=tok),
        "e2": ProxyExpert(tuned2, untuned, "two", tokenizer=tok),
    }


PROMPTS = ["ab+cd=", "rev xyz =", "q?", "hello world:"]


def run(base, tok, prompts, procs=(), **kw):
    enc = tok(prompts, return_tensors="pt", padding=True)
    kw.setdefault("max_new_tokens", 8)
    kw.setdefault("do_sample", False)
    out = base.generate(
        **enc, logits_processor=LogitsProcessorList(list(procs)), pad_token_id=tok.pad_token_id,
        return_dict_in_generate=True, output_scores=True, **kw,
    )
    return enc, out


def reference_scores(base, experts, alpha, seq, prompt_mask, vocab):
    """No cache: run every model on the whole sequence so far and combine at the last position."""
    mask = torch.cat([prompt_mask, torch.ones(seq.shape[0], seq.shape[1] - prompt_mask.shape[1],
                                              dtype=prompt_mask.dtype)], dim=1)
    pos = (mask.cumsum(1) - 1).clamp(min=0)

    def logp(m):
        lg = m(input_ids=seq, attention_mask=mask, position_ids=pos, use_cache=False).logits
        return F.log_softmax(lg[:, -1, :vocab].float(), dim=-1)

    with torch.no_grad():
        out = logp(base)
        for k, e in enumerate(experts):
            a = alpha[:, k : k + 1] if alpha.ndim == 2 else alpha[k]
            out = out + a * (logp(e.tuned) - logp(e.untuned))
    return out


def new_tokens(enc, out):
    return out.sequences[:, enc["input_ids"].shape[1] :]


def test_alpha_zero_reproduces_base_greedy(world):
    base, tok = world["base"], world["tok"]
    _, plain = run(base, tok, PROMPTS, max_new_tokens=12)
    proc = ProxyLogitsProcessor([world["e1"], world["e2"]], alpha=0.0, tokenizer=tok)
    _, steered = run(base, tok, PROMPTS, [proc], max_new_tokens=12)
    assert torch.equal(plain.sequences, steered.sequences)


def test_scores_equal_no_cache_reference_every_step(world):
    base, tok = world["base"], world["tok"]
    experts = [world["e1"], world["e2"]]
    alpha = torch.tensor([1.0, 0.5])
    proc = ProxyLogitsProcessor(experts, alpha=alpha, tokenizer=tok)
    enc, out = run(base, tok, PROMPTS, [proc], max_new_tokens=10)
    p = enc["input_ids"].shape[1]
    assert len(out.scores) == 10
    for t, got in enumerate(out.scores):
        ref = reference_scores(base, experts, alpha, out.sequences[:, : p + t],
                               enc["attention_mask"], len(tok))
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    # The steering changed what was generated (otherwise the test above proves little).
    _, plain = run(base, tok, PROMPTS, max_new_tokens=10)
    assert not torch.equal(plain.sequences, out.sequences)


def test_sampled_scores_are_steered_then_tempered_with_stop_tokens(world):
    base, tok = world["base"], world["tok"]
    experts = [world["e1"]]
    alpha = torch.tensor([1.5])
    proc = ProxyLogitsProcessor(experts, alpha=alpha, tokenizer=tok)
    sample = dict(max_new_tokens=12, do_sample=True, temperature=0.7, top_k=0, top_p=1.0)
    torch.manual_seed(0)
    enc, free = run(base, tok, PROMPTS * 2, [proc], **sample)
    # Stop on a token that row 0 samples at step 3: the same seed makes it stop there.
    stop = int(free.sequences[0, enc["input_ids"].shape[1] + 3])
    torch.manual_seed(0)
    enc, out = run(base, tok, PROMPTS * 2, [proc], eos_token_id=stop, **sample)
    p = enc["input_ids"].shape[1]
    seqs = out.sequences
    finished = torch.zeros(seqs.shape[0], dtype=torch.bool)
    for t, got in enumerate(out.scores):
        ref = reference_scores(base, experts, alpha, seqs[:, : p + t], enc["attention_mask"], len(tok))
        live = ~finished
        torch.testing.assert_close(got[live], ref[live] / 0.7, atol=1e-5, rtol=0)
        finished |= seqs[:, p + t] == stop
    assert finished.any(), "some row should stop early so that padding is exercised"


def test_proxy_generate_at_its_old_place_warns_and_is_the_same_function():
    """``routekit.proxy.proxy_generate`` (deprecated) is ``routekit.eval``'s, with a
    DeprecationWarning naming where it went; other missing names still raise AttributeError."""
    import routekit
    import routekit.proxy

    with pytest.warns(DeprecationWarning, match=r"routekit\.proxy_generate.*routekit\.eval"):
        old = routekit.proxy.proxy_generate
    assert old is proxy_generate is routekit.proxy_generate
    assert "proxy_generate" not in routekit.proxy.__all__
    with pytest.raises(AttributeError, match="no_such_name"):
        routekit.proxy.no_such_name  # noqa: B018


def test_left_padded_batch_equals_each_prompt_alone(world):
    base, tok = world["base"], world["tok"]
    experts = [world["e1"], world["e2"]]

    def steered(prompts, **kw):
        proc = ProxyLogitsProcessor(experts, alpha=[1.0, 0.7], tokenizer=tok)
        enc, out = run(base, tok, prompts, [proc], max_new_tokens=12, **kw)
        return [tok.decode(r, skip_special_tokens=True) for r in new_tokens(enc, out)]

    free = steered(PROMPTS[:1])
    stop = tok.convert_tokens_to_ids(free[0][4])  # row 0 stops at step 4 at the latest
    batch = steered(PROMPTS, eos_token_id=stop)
    alone = [steered([p], eos_token_id=stop)[0] for p in PROMPTS]
    assert batch == alone
    assert len({len(s) for s in batch}) > 1  # rows really finished at different steps
    # The convenience function batches the same way.
    assert proxy_generate(base, tok, experts, PROMPTS, alpha=[1.0, 0.7], max_new_tokens=12,
                          batch_size=3) == steered(PROMPTS)


def test_per_row_alpha(world):
    base, tok = world["base"], world["tok"]
    e1 = world["e1"]
    plain = proxy_generate(base, tok, e1, PROMPTS, alpha=0.0, max_new_tokens=10)
    steered = proxy_generate(base, tok, e1, PROMPTS, alpha=1.0, max_new_tokens=10)
    mixed = proxy_generate(base, tok, e1, PROMPTS, alpha=[[0.0], [1.0], [0.0], [1.0]],
                           max_new_tokens=10)
    assert mixed == [plain[0], steered[1], plain[2], steered[3]]
    assert plain[1] != steered[1] or plain[3] != steered[3]


def test_shared_untuned_model_runs_once_per_step(world):
    base, tok = world["base"], world["tok"]
    e1, e2 = world["e1"], world["e2"]
    calls = {"untuned": 0, "t1": 0, "t2": 0}

    def counter(key):
        def hook(*_):
            calls[key] += 1
        return hook

    handles = [e1.untuned.register_forward_hook(counter("untuned")),
               e1.tuned.register_forward_hook(counter("t1")),
               e2.tuned.register_forward_hook(counter("t2"))]
    try:
        proc = ProxyLogitsProcessor([e1, e2], alpha=[1.0, 1.0], tokenizer=tok)
        run(base, tok, PROMPTS, [proc], max_new_tokens=9)
    finally:
        for h in handles:
            h.remove()
    assert calls == {"untuned": 9, "t1": 9, "t2": 9}


def test_processor_reused_across_generate_calls(world):
    base, tok = world["base"], world["tok"]
    proc = ProxyLogitsProcessor(world["e1"], alpha=1.0, tokenizer=tok)
    _, first = run(base, tok, PROMPTS[:2], [proc])
    _, other = run(base, tok, PROMPTS[2:], [proc])
    _, again = run(base, tok, PROMPTS[:2], [proc])
    fresh = ProxyLogitsProcessor(world["e1"], alpha=1.0, tokenizer=tok)
    _, other_fresh = run(base, tok, PROMPTS[2:], [fresh])
    assert torch.equal(first.sequences, again.sequences)
    assert torch.equal(other.sequences, other_fresh.sequences)


def test_extra_tail_tokens_are_allowed_and_sliced(world):
    base, tok = world["base"], world["tok"]
    ptok = char_tokenizer(extra=("<|im_start|>", "<|im_end|>"))
    check_vocab_compatible(tok, ptok)  # no error
    v = len(ptok)
    untuned, tuned = llama(v, 16, 2, seed=1), llama(v, 16, 2, seed=2)
    e = ProxyExpert(tuned, untuned, "chat", tokenizer=ptok)
    alpha = torch.tensor([1.0])
    proc = ProxyLogitsProcessor(e, alpha=alpha, tokenizer=tok)
    enc, out = run(base, tok, PROMPTS, [proc], max_new_tokens=4)
    p = enc["input_ids"].shape[1]
    for t, got in enumerate(out.scores):
        ref = reference_scores(base, [e], alpha, out.sequences[:, : p + t], enc["attention_mask"],
                               len(tok))
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_beam_search_equals_rerunning_from_scratch(world):
    """Beams reorder rows; the processor then restarts its caches from the full sequences."""
    base, tok = world["base"], world["tok"]

    class FromScratch(ProxyLogitsProcessor):
        def __call__(self, input_ids, scores):
            self.reset()
            return super().__call__(input_ids, scores)

    outs = []
    for cls in (ProxyLogitsProcessor, FromScratch):
        proc = cls(world["e1"], alpha=1.0, tokenizer=tok)
        outs.append(run(base, tok, PROMPTS, [proc], num_beams=3)[1].sequences)
    assert torch.equal(outs[0], outs[1])


def test_base_with_padded_vocabulary(world):
    """A base whose logits are wider than the tokenizer (padded embeddings) and a proxy that is not."""
    tok, e1 = world["tok"], world["e1"]
    wide = llama(len(tok) + 5, 32, 2, seed=0)
    with pytest.raises(ConfigError, match=f"scores {len(tok)} tokens but the base scores {len(tok) + 5}"):
        run(wide, tok, PROMPTS, [ProxyLogitsProcessor(e1, tokenizer=tok)])
    proc = ProxyLogitsProcessor(e1, tokenizer=tok, base_vocab_size=len(tok))
    enc, out = run(wide, tok, PROMPTS, [proc], max_new_tokens=4)
    for t, got in enumerate(out.scores):
        assert torch.isinf(got[:, len(tok):]).all()  # padding ids are never produced
        ref = reference_scores(wide, [e1], torch.tensor([1.0]),
                               out.sequences[:, : enc["input_ids"].shape[1] + t],
                               enc["attention_mask"], len(tok))
        torch.testing.assert_close(got[:, : len(tok)], ref, atol=1e-5, rtol=0)
    # proxy_generate slices to the tokenizer by itself.
    assert len(proxy_generate(wide, tok, e1, PROMPTS, max_new_tokens=4)) == len(PROMPTS)


# -- bad input ----------------------------------------------------------------------------
def test_different_tokenizer_is_refused_naming_token_and_ids(world):
    base, tok = world["base"], world["tok"]
    swapped = CHARS.copy()
    swapped[2], swapped[3] = swapped[3], swapped[2]  # 'c' and 'd' trade ids
    other = char_tokenizer(swapped)
    c_base, c_proxy = tok.convert_tokens_to_ids("c"), other.convert_tokens_to_ids("c")
    with pytest.raises(TokenizerMismatchError, match=rf"'c' has id {c_base} .* id {c_proxy}"):
        check_vocab_compatible(tok, other)
    e = ProxyExpert(world["e1"].tuned, world["untuned"], "x", tokenizer=other)
    with pytest.raises(TokenizerMismatchError, match="'c'"):
        proxy_generate(base, tok, e, PROMPTS)
    with pytest.raises(TokenizerMismatchError, match="'c'"):
        ProxyLogitsProcessor(e, tokenizer=tok)
    short = char_tokenizer(CHARS[:-3])
    with pytest.raises(TokenizerMismatchError, match="missing from the proxy"):
        check_vocab_compatible(tok, short)


@pytest.mark.parametrize(
    "alpha, match",
    [([1.0], r"\[1.0\].*2 experts"), ([1.0, 2.0, 3.0], r"\[1.0, 2.0, 3.0\]"),
     ([1.0, float("nan")], "nan"), (float("inf"), "inf")],
)
def test_bad_alpha_is_refused(world, alpha, match):
    with pytest.raises(ConfigError, match=match):
        ProxyLogitsProcessor([world["e1"], world["e2"]], alpha=alpha)


def test_alpha_rows_must_match_prompts(world):
    with pytest.raises(ConfigError, match=r"3 row\(s\) but there are 4 prompt"):
        proxy_generate(world["base"], world["tok"], world["e1"], PROMPTS, alpha=[[1.0]] * 3)
    proc = ProxyLogitsProcessor(world["e1"], alpha=[[1.0]] * 3)
    with pytest.raises(ConfigError, match="alpha has 3 rows but generate runs a batch of 4"):
        run(world["base"], world["tok"], PROMPTS, [proc])


def test_untuned_of_another_architecture_is_refused(world):
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(world["tok"]), n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(ConfigError, match="'gpt2'.*'llama'"):
        ProxyExpert(world["e1"].tuned, gpt2, "bad")


def test_prompt_longer_than_proxy_context_is_refused(world):
    base, tok = world["base"], world["tok"]
    long_prompt = "ab" * 30  # 61 tokens with <bos>; the proxies' context is 48
    with pytest.raises(ConfigError, match="61 tokens.*context is 48"):
        proxy_generate(base, tok, world["e1"], [long_prompt], max_new_tokens=4)
    # Fits as a prompt, but prompt + new tokens would not: refused before generating.
    with pytest.raises(ConfigError, match=r"max_new_tokens=20.*would see 60 tokens"):
        proxy_generate(base, tok, world["e1"], ["ab" * 20], max_new_tokens=20)
    # Inside a plain generate call the processor refuses when the sequence outgrows it.
    proc = ProxyLogitsProcessor(world["e1"], tokenizer=tok)
    with pytest.raises(ConfigError, match="reached 49 tokens.*context is 48"):
        run(base, tok, ["ab" * 20], [proc], max_new_tokens=20)


# -- files --------------------------------------------------------------------------------
def test_save_load_round_trip_gives_identical_generations(world, tmp_path):
    base, tok = world["base"], world["tok"]
    e1 = world["e1"]
    before = proxy_generate(base, tok, e1, PROMPTS, alpha=1.5, max_new_tokens=10)
    e1.save_pretrained(tmp_path / "exp")
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == [
        "expert_config.json", "tuned", "untuned"]
    assert (tmp_path / "exp" / "tuned" / "model.safetensors").is_file()
    loaded = ProxyExpert.from_pretrained(tmp_path / "exp")
    assert loaded.name == "one"
    after = proxy_generate(base, tok, loaded, PROMPTS, alpha=1.5, max_new_tokens=10)
    assert before == after


def test_load_refuses_missing_or_altered_files(world, tmp_path):
    e1 = world["e1"]
    e1.save_pretrained(tmp_path / "exp")
    (tmp_path / "exp" / "expert_config.json").write_text("{not json")
    with pytest.raises(ExpertFileError, match="not valid JSON"):
        ProxyExpert.from_pretrained(tmp_path / "exp")
    with pytest.raises(ExpertFileError, match="does not exist"):
        ProxyExpert.from_pretrained(tmp_path / "nowhere")
    e1.save_pretrained(tmp_path / "exp")
    cfg_path = tmp_path / "exp" / "expert_config.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg["base_tokenizer_fingerprint"] == tokenizer_fingerprint(world["tok"])
    cfg_path.write_text(json.dumps({**cfg, "colour": "red"}))
    with pytest.raises(ExpertFileError, match="colour"):
        ProxyExpert.from_pretrained(tmp_path / "exp")
    cfg_path.write_text(json.dumps({**cfg, "kind": "svf"}))
    with pytest.raises(ExpertFileError, match="'svf' expert, not a 'proxy' expert"):
        ProxyExpert.from_pretrained(tmp_path / "exp")
    # Weights swapped behind the config's back: the recorded fingerprint catches it.
    e1.save_pretrained(tmp_path / "exp")
    world["e2"].tuned.save_pretrained(tmp_path / "exp" / "tuned")
    with pytest.raises(ExpertFileError, match="tuned weights have fingerprint"):
        ProxyExpert.from_pretrained(tmp_path / "exp")
    # ... also when a dtype is asked for: the check runs on the saved weights, before the cast.
    with pytest.raises(ExpertFileError, match="tuned weights have fingerprint"):
        ProxyExpert.from_pretrained(tmp_path / "exp", dtype=torch.bfloat16)
    e1.save_pretrained(tmp_path / "exp")
    cast = ProxyExpert.from_pretrained(tmp_path / "exp", dtype=torch.bfloat16)
    assert cast.tuned.dtype == torch.bfloat16
    assert torch.equal(cast.tuned.lm_head.weight, e1.tuned.lm_head.weight.to(torch.bfloat16))


def test_save_refuses_a_foreign_directory(world, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(ExpertFileError, match="notes.txt"):
        world["e1"].save_pretrained(tmp_path / "d")
    assert (tmp_path / "d" / "notes.txt").read_text() == "mine"


def test_padding_cannot_be_guessed_without_pad_id_or_mask(world):
    tok = world["tok"]
    proc = ProxyLogitsProcessor([world["e1"]], alpha=1.0)  # no tokenizer, pad id or mask
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    with pytest.raises(ConfigError, match="cannot tell left padding"):
        world["base"].generate(**enc, logits_processor=LogitsProcessorList([proc]),
                               max_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id)
    # With the prompts' attention mask the processor gives what the pad id gives.
    _, by_mask = run(world["base"], tok, PROMPTS, [ProxyLogitsProcessor(
        [world["e1"]], alpha=1.0, attention_mask=enc["attention_mask"])])
    _, by_pad = run(world["base"], tok, PROMPTS, [ProxyLogitsProcessor(
        [world["e1"]], alpha=1.0, pad_token_id=tok.pad_token_id)])
    assert torch.equal(by_mask.sequences, by_pad.sequences)


def test_save_needs_a_tokenizer(world, tmp_path):
    e = ProxyExpert(world["e1"].tuned, world["untuned"], "notok")
    with pytest.raises(ConfigError, match="'notok' has no tokenizer"):
        e.save_pretrained(tmp_path / "x")
    assert not (tmp_path / "x").exists()


# -- proxies beside the base (routekit.proxy.concurrent) ------------------------------------
CONCURRENT_MODES = ["thread", "process"]


def run_beside(world, concurrent, prompts=PROMPTS, alpha=(0.7, -0.4), **kw):
    """Tokens, scores and the processor of one steered decode, inside ``beside``."""
    base, tok = world["base"], world["tok"]
    proc = ProxyLogitsProcessor([world["e1"], world["e2"]], alpha=list(alpha), tokenizer=tok,
                                concurrent=concurrent)
    with proc.beside(base):
        enc, out = run(base, tok, prompts, [proc], **kw)
    return enc, out, proc


@pytest.mark.parametrize("concurrent", CONCURRENT_MODES)
def test_concurrent_paths_equal_the_sequential_one_token_for_token(world, concurrent):
    _, ref, seq = run_beside(world, False, max_new_tokens=12)
    _, got, proc = run_beside(world, concurrent, max_new_tokens=12)
    assert seq.mode == "sequential" and seq.concurrent_steps == 0
    # Every step took its proxy logits from the launch beside the base's forward.
    assert proc.mode == concurrent and proc.concurrent_steps == 12
    assert torch.equal(got.sequences, ref.sequences)
    assert all(torch.equal(a, b) for a, b in zip(got.scores, ref.scores, strict=True))


@pytest.mark.parametrize("concurrent", CONCURRENT_MODES)
def test_concurrent_sampling_with_stop_tokens_equals_sequential(world, concurrent):
    kw = dict(max_new_tokens=10, do_sample=True, temperature=0.8, top_k=12,
              eos_token_id=world["tok"].convert_tokens_to_ids("="))
    torch.manual_seed(5)
    _, ref, _ = run_beside(world, False, **kw)
    torch.manual_seed(5)
    _, got, _ = run_beside(world, concurrent, **kw)
    assert torch.equal(got.sequences, ref.sequences)
    assert all(torch.equal(a, b) for a, b in zip(got.scores, ref.scores, strict=True))


@pytest.mark.parametrize("concurrent", CONCURRENT_MODES)
def test_proxy_generate_concurrent_gives_the_same_text(world, concurrent):
    base, tok = world["base"], world["tok"]
    alpha = [[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [1.0, -1.0]]
    kw = dict(alpha=alpha, max_new_tokens=10, batch_size=3)
    ref = proxy_generate(base, tok, [world["e1"], world["e2"]], PROMPTS, concurrent=False, **kw)
    got = proxy_generate(base, tok, [world["e1"], world["e2"]], PROMPTS, concurrent=concurrent, **kw)
    assert got == ref


def test_a_stray_forward_inside_beside_only_costs_a_restart(world):
    """A base forward that is not the decode's launches for other ids; the processor sees
    the mismatch, starts over, and its scores are still the sequential ones."""
    base, tok = world["base"], world["tok"]
    _, ref, _ = run_beside(world, False)
    proc = ProxyLogitsProcessor([world["e1"], world["e2"]], alpha=[0.7, -0.4], tokenizer=tok,
                                concurrent="thread")
    with proc.beside(base):
        with torch.no_grad():
            base(input_ids=torch.tensor([[5, 6, 7]]))  # launches a prefill for these ids
        _, got = run(base, tok, PROMPTS, [proc])
    assert torch.equal(got.sequences, ref.sequences)
    assert all(torch.equal(a, b) for a, b in zip(got.scores, ref.scores, strict=True))
    assert proc.concurrent_steps == len(got.scores) - 1  # all but the restarted first step


def test_threads_sharing_a_base_keep_their_own_concurrent_calls(world):
    """Per-call state: two threads steer one base with different experts at once."""
    import threading

    base, tok = world["base"], world["tok"]
    refs = {k: proxy_generate(base, tok, world[k], PROMPTS, alpha=1.0, max_new_tokens=10,
                              concurrent=False) for k in ("e1", "e2")}
    got: dict[str, list[list[str]]] = {"e1": [], "e2": []}

    def work(k):
        for _ in range(3):
            got[k].append(proxy_generate(base, tok, world[k], PROMPTS, alpha=1.0,
                                         max_new_tokens=10, concurrent="thread"))

    threads = [threading.Thread(target=work, args=(k,)) for k in ("e1", "e2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == {k: [refs[k]] * 3 for k in ("e1", "e2")}


def test_outside_beside_the_proxies_run_sequentially(world):
    _, out, proc = run_beside(world, "thread")
    assert proc.concurrent_steps > 0
    proc2 = ProxyLogitsProcessor([world["e1"], world["e2"]], alpha=[0.7, -0.4],
                                 tokenizer=world["tok"], concurrent="thread")
    _, plain = run(world["base"], world["tok"], PROMPTS, [proc2])
    assert proc2.concurrent_steps == 0 and proc2.mode is None
    assert torch.equal(plain.sequences, out.sequences)


def test_bad_concurrent_value_is_refused(world):
    with pytest.raises(ConfigError, match="concurrent must be"):
        ProxyLogitsProcessor(world["e1"], alpha=1.0, tokenizer=world["tok"], concurrent="gpu")
    with pytest.raises(ConfigError, match="concurrent must be"):
        proxy_generate(world["base"], world["tok"], world["e1"], PROMPTS, concurrent=2)


def test_auto_mode_is_sequential_without_a_spare_core(world, monkeypatch):
    from routekit.proxy import concurrent as conc

    cpu = [torch.device("cpu")]
    monkeypatch.setattr(conc, "usable_cores", lambda: 1)
    assert conc.resolve_mode(None, cpu) == "sequential"
    with pytest.raises(ConfigError, match="no concurrent path"):
        conc.resolve_mode(True, cpu)
    monkeypatch.setattr(conc, "usable_cores", lambda: 4)
    monkeypatch.setattr(conc, "spare_cores", lambda: 0.5)  # a busy machine
    assert conc.resolve_mode(None, cpu) == "sequential"
    assert conc.resolve_mode(True, cpu) == "process"
    monkeypatch.setattr(conc, "spare_cores", lambda: 2.0)
    assert conc.resolve_mode(None, cpu) == "process"
    assert conc.resolve_mode(None, [torch.device("cuda", 0)]) == "thread"
    assert conc.resolve_mode(False, [torch.device("cuda", 0)]) == "sequential"
