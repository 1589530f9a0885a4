"""The trainer: SFT and RL learn, only trainable numbers move, resume and two processes are exact."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from routekit import scoring
from routekit.errors import ConfigError, ExpertFileError, TrainingError
from routekit.io import load_safetensors, read_json
from routekit.tasks.base import Example, Task
from routekit.training import TrainConfig, retention, rl, sft, train, trainable_parameters
from routekit.training.checkpoint import checkpoint_dir
from routekit.world import WorldConfig
from routekit.world.tokenizer import build_tokenizer as char_tokenizer
from tests.conftest import tiny_causal_lm

torch.set_num_threads(1)  # 2 shared cores: threads only fight each other on these tiny models
# Without OMP_NUM_THREADS, accelerate's multi-CPU setup re-sets the thread count in each
# forked worker, and its gemms then differ from the parent's in the last bit; Adam turns such
# noise on near-zero gradient entries into ~1e-6 steps. With it set (read lazily at the first
# parallel region) the two-process run matches the trainer's own exactness: bit-identical here.
os.environ.setdefault("OMP_NUM_THREADS", "1")

WORDS = ["abc", "dog", "cat", "xyz", "ab", "qrs", "mno", "hello", "tree", "sun", "moon", "fig"]
GOOD_FIRST = "abcdefgh"


def tiny_llama():
    return tiny_causal_lm("llama")


def rev_task() -> Task:
    ex = [Example(f"{w} =", w[::-1]) for w in WORDS]
    return Task("rev", {"train": ex, "test": ex})


def first_letter_task() -> Task:
    """Reward 1 when the completion starts with one of GOOD_FIRST (about 1/6 of the vocabulary)."""
    ex = [Example(f"{w}:", "a") for w in WORDS]
    return Task("first", {"train": ex, "test": ex}, checker=lambda c, r: c[:1] in GOOD_FIRST)


def params_of(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def reference_sft_loss(model, tok, examples) -> float:
    """Independent SFT loss: HF's own labels loss, token-weighted over the examples."""
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:
            p = tok(e.prompt)["input_ids"]
            # the reference as it follows the prompt in text: one space between them
            a = tok(" " + e.reference, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            ids = torch.tensor([p + a])
            labels = torch.tensor([[-100] * len(p) + a])
            out = model(input_ids=ids, labels=labels)
            total += float(out.loss) * len(a)
            count += len(a)
    return total / count


# --------------------------------------------------------------------------- objectives (sft, rl, retention)
def test_sft_loss_equals_hf_labels_loss():
    model, tok = tiny_llama(), char_tokenizer()
    ex = rev_task().examples("train")[:5]
    n = sft.count_answer_tokens(tok, ex)
    loss, _ = sft.sft_loss(model, tok, ex, n, torch.device("cpu"))
    assert float(loss.detach()) == pytest.approx(reference_sft_loss(model, tok, ex), rel=1e-5)


def test_seeded_sampling_is_independent_of_batch_composition():
    model, tok, task = tiny_llama(), char_tokenizer(), rev_task()
    ex = task.examples("train")
    kw = dict(step=3, seed=7, group_size=4, max_new_tokens=6, temperature=1.0)
    together = rl.sample_rollout(model, tok, task, ex[:4], [0, 1, 2, 3], **kw)
    apart = [rl.sample_rollout(model, tok, task, ex[i : i + 1], [i], **kw) for i in range(4)]
    assert together.completion_ids == [c for r in apart for c in r.completion_ids]
    again = rl.sample_rollout(model, tok, task, ex[:4], [0, 1, 2, 3], **{**kw, "step": 4})
    assert again.completion_ids != together.completion_ids  # fresh samples every step


def test_group_normalised_advantages():
    model, tok = tiny_llama(), char_tokenizer()
    task = first_letter_task()
    r = rl.sample_rollout(
        model, tok, task, task.examples("train")[:3], [0, 1, 2],
        step=0, seed=0, group_size=8, max_new_tokens=2, temperature=3.0,
    )
    g = r.rewards.view(3, 8)
    expected = (g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-4)
    assert torch.equal(r.advantages, expected.reshape(-1))
    assert r.rewards.tolist() == [1.0 if c[:1] in GOOD_FIRST else 0.0 for c in r.completions]


@pytest.mark.parametrize("kl_coef", [0.0, 0.3])
def test_rl_loss_equals_a_per_sample_reference(kl_coef):
    """-(1/N) Σ A_i · mean_t log π(y_it) + kl_coef · (1/N) Σ mean_t k3_it, each sample run alone."""
    tok, task = char_tokenizer(), first_letter_task()
    model, base = tiny_llama(), tiny_causal_lm("llama", seed=1)
    r = rl.sample_rollout(
        model, tok, task, task.examples("train")[:4], [0, 1, 2, 3],
        step=0, seed=3, group_size=4, max_new_tokens=4, temperature=2.0,
    )
    assert 0 < float(r.rewards.sum()) < 16 and (r.advantages == 0).any()  # mixed and skipped rows
    n = 32  # global sample count (the rollout is half of a global batch)
    loss, _ = rl.rl_loss(model, tok, r, n, torch.device("cpu"), temperature=2.0,
                                 kl_coef=kl_coef, base_context=lambda: contextlib.nullcontext(base))
    ref = torch.zeros(())
    for p, c, a in zip(r.prompt_ids, r.completion_ids, r.advantages):
        ids = torch.tensor([p + c])
        lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float() / 2.0, -1)
        lp = lp.gather(-1, ids[0, 1:, None])[len(p) - 1 :, 0]
        ref = ref - a * lp.mean() / n
        if kl_coef:
            with torch.no_grad():
                blp = torch.log_softmax(base(input_ids=ids).logits[0, :-1].float() / 2.0, -1)
                blp = blp.gather(-1, ids[0, 1:, None])[len(p) - 1 :, 0]
            d = blp - lp
            ref = ref + kl_coef * (torch.exp(d) - d - 1).mean() / n
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5, abs=1e-7)
    g = torch.autograd.grad(loss, model.model.layers[0].mlp.up_proj.weight)[0]
    g_ref = torch.autograd.grad(ref, model.model.layers[0].mlp.up_proj.weight)[0]
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------- learning
def test_sft_lowers_the_loss():
    model, tok, task = tiny_llama(), char_tokenizer(), rev_task()
    before = reference_sft_loss(model, tok, task.examples("train"))
    res = train(model, tok, task, objective="sft", parameterization="full", steps=25,
                batch_size=6, lr=1e-2, progress=False)
    after = reference_sft_loss(res.model, tok, task.examples("train"))
    assert after < 0.5 * before, (before, after)
    assert res.history[-1]["loss"] < res.history[0]["loss"]


def _good_first_mass(model, tok, task) -> float:
    """Probability that the first completion token is one of GOOD_FIRST, averaged over prompts."""
    good = [tok.convert_tokens_to_ids(c) for c in GOOD_FIRST]
    with torch.no_grad():
        total = 0.0
        for e in task.examples("train"):
            ids = torch.tensor([tok(e.prompt)["input_ids"]])
            probs = F.softmax(model(input_ids=ids).logits[0, -1].float(), -1)
            total += float(probs[good].sum())
    return total / len(task.examples("train"))


def test_rl_increases_reward():
    model, tok, task = tiny_llama(), char_tokenizer(), first_letter_task()
    before = _good_first_mass(model, tok, task)
    res = train(model, tok, task, objective="rl", parameterization="full", steps=15,
                batch_size=4, group_size=8, max_new_tokens=2, lr=1e-2, progress=False)
    after = _good_first_mass(res.model, tok, task)
    assert after > before + 0.3, (before, after)
    rewards = [r["reward"] for r in res.history]
    assert sum(rewards[-3:]) > sum(rewards[:3])


@pytest.mark.parametrize("kind", ["lora", "full", "svf"])
def test_rl_kl_penalty_is_zero_at_the_base_and_positive_after_moving(kind, tmp_path):
    model, tok, task = tiny_llama(), char_tokenizer(), first_letter_task()
    res = train(model, tok, task, objective="rl", parameterization=kind, steps=4, batch_size=4,
                group_size=4, max_new_tokens=3, lr=5e-2, kl_coef=0.1,
                svf={"cache_dir": str(tmp_path)}, progress=False)
    # Step 1 samples from the base itself (LoRA B = 0, z = 1, the copy of full): k3 is 0 there.
    assert res.history[0]["kl"] == pytest.approx(0.0, abs=1e-7)
    assert res.history[-1]["kl"] > 0


def test_eval_every_records_the_greedy_accuracy_of_the_model_at_that_step():
    from routekit.eval import evaluate

    model, tok, task = tiny_llama(), char_tokenizer(), rev_task()
    res = train(model, tok, task, parameterization="full", steps=4, batch_size=6, lr=1e-2,
                eval_every=4, max_new_tokens=6, progress=False)
    expected = evaluate(res.model, tok, task, "test", max_new_tokens=6).accuracy
    assert res.history[-1]["eval_accuracy"] == expected
    assert all("eval_accuracy" not in r for r in res.history[:-1])


# --------------------------------------------------------------------------- what moves
@pytest.mark.parametrize("kind", ["lora", "mask", "svf"])
def test_only_trainable_parameters_change(kind, tmp_path):
    model, tok, task = tiny_llama(), char_tokenizer(), rev_task()
    base = params_of(model)
    res = train(model, tok, task, objective="sft", parameterization=kind, steps=3, batch_size=4,
                lr=1e-2, mask=0.3 if kind == "mask" else None, svf={"cache_dir": str(tmp_path)},
                progress=False)
    after = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
             for n, p in res.model.named_parameters()}
    trainable = {n.replace("base_model.model.", "").replace(".base_layer", "")
                 for n in trainable_parameters(res.model)}
    changed_trainable = 0
    for name, p in after.items():
        if name in base and name not in trainable:
            assert torch.equal(p, base[name]), f"frozen {name} changed"
        elif name in trainable and (name not in base or not torch.equal(p, base[name])):
            changed_trainable += 1
    assert changed_trainable > 0
    if kind == "mask":
        masks = res.model._routekit_masks
        for name, p in res.model.named_parameters():
            moved = p.detach() != base[name]
            assert not (moved & ~masks[name]).any(), f"{name} moved outside its mask"
        assert sum(int((p.detach() != base[n]).sum()) for n, p in res.model.named_parameters()) > 0
        assert res.trainable_parameters == sum(int(m.sum()) for m in masks.values())


def test_a_wrapped_model_trains_its_own_parameterization(tmp_path):
    from routekit.svf import SVFConfig, get_svf_model

    tok, task = char_tokenizer(), rev_task()
    model = get_svf_model(tiny_llama(), SVFConfig(cache_dir=str(tmp_path)))
    res = train(model, tok, task, objective="sft", parameterization="svf", steps=1, batch_size=2,
                progress=False)  # explicit
    res2 = train(get_svf_model(tiny_llama(), SVFConfig(cache_dir=str(tmp_path))), tok, task,
                 objective="sft", steps=1, batch_size=2, progress=False)  # inferred
    assert res2.config.parameterization == "svf"
    assert res.trainable_parameters == res2.trainable_parameters == sum(
        p.numel() for n, p in model.named_parameters() if "svf_z" in n
    )
    with pytest.raises(ConfigError, match=r"already prepared for parameterization 'svf'"):
        train(res.model, tok, task, parameterization="lora", steps=1, batch_size=2, progress=False)


def test_bf16_storage_keeps_trainable_numbers_in_bfloat16():
    model, tok, task = tiny_llama(), char_tokenizer(), rev_task()
    res = train(model, tok, task, parameterization="lora", bf16_storage=True, steps=1,
                batch_size=2, progress=False)
    assert {p.dtype for p in trainable_parameters(res.model).values()} == {torch.bfloat16}
    res = train(tiny_llama(), tok, task, parameterization="lora", steps=1, batch_size=2, progress=False)
    assert {p.dtype for p in trainable_parameters(res.model).values()} == {torch.float32}


# --------------------------------------------------------------------------- resume, NaN
class _Killed(Exception):
    pass


def _fail_on_call(monkeypatch, name: str, call: int, action: str):
    """Make the loss ``name`` (``sft_loss`` or ``rl_loss``) die (or return NaN) on its
    ``call``-th call."""
    module = {"sft_loss": sft, "rl_loss": rl}[name]
    real = getattr(module, name)
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            if action == "kill":
                raise _Killed()
            loss, stats = real(*args, **kwargs)
            return loss * float("nan"), {**stats, "loss_sum": float("nan")}
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


@pytest.mark.parametrize("objective", ["sft", "rl"])
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, objective):
    tok = char_tokenizer()
    task = rev_task() if objective == "sft" else first_letter_task()
    cfg = dict(objective=objective, parameterization="lora", steps=6, batch_size=4, group_size=4,
               max_new_tokens=3, lr=2e-2, checkpoint_every=1, kl_coef=0.05 if objective == "rl" else 0,
               max_rows_per_pass=16)  # one loss call per step: call 4 is step 4's
    full = train(tiny_llama(), tok, task, cfg, out_dir=tmp_path / "a", progress=False)

    loss_fn = "sft_loss" if objective == "sft" else "rl_loss"
    with monkeypatch.context() as m:
        _fail_on_call(m, loss_fn, call=4, action="kill")
        with pytest.raises(_Killed):
            train(tiny_llama(), tok, task, cfg, out_dir=tmp_path / "b", progress=False)
    assert read_json(checkpoint_dir(tmp_path / "b") / "state.json")["step"] == 3
    resumed = train(tiny_llama(), tok, task, cfg, out_dir=tmp_path / "b", resume=True, progress=False)
    assert resumed.resumed_from == 3
    a, b = trainable_parameters(full.model), trainable_parameters(resumed.model)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]


def test_resume_refuses_a_changed_config(tmp_path):
    tok, task = char_tokenizer(), rev_task()
    train(tiny_llama(), tok, task, parameterization="full", steps=1, batch_size=2,
          out_dir=tmp_path, progress=False)
    with pytest.raises(TrainingError, match=r"lr: 0.001 -> 0.5"):
        train(tiny_llama(), tok, task, parameterization="full", steps=2, batch_size=2, lr=0.5,
              out_dir=tmp_path, resume=True, progress=False)


def test_nan_loss_stops_with_the_last_checkpoint_intact(tmp_path, monkeypatch):
    tok, task = char_tokenizer(), rev_task()
    cfg = dict(parameterization="full", steps=5, batch_size=4, lr=1e-2, checkpoint_every=1)
    clean = train(tiny_llama(), tok, task, {**cfg, "steps": 2}, progress=False)
    _fail_on_call(monkeypatch, "sft_loss", call=3, action="nan")
    with pytest.raises(TrainingError, match=r"step 3: loss is nan.*checkpoint.*intact"):
        train(tiny_llama(), tok, task, cfg, out_dir=tmp_path, progress=False)
    ckpt = checkpoint_dir(tmp_path)
    assert read_json(ckpt / "state.json")["step"] == 2
    saved = load_safetensors(ckpt / "trainable.safetensors")
    for name, p in trainable_parameters(clean.model).items():
        assert torch.equal(saved[name], p.detach()), name


def test_nan_in_parameters_is_a_training_error():
    tok, task = char_tokenizer(), rev_task()
    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("inf")
    with pytest.raises(TrainingError, match=r"step 1: "):
        train(model, tok, task, parameterization="full", steps=2, batch_size=2, progress=False)


# --------------------------------------------------------------------------- two processes
def _free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_process_worker(out_dir: str, cfg: dict) -> None:
    from accelerate.state import AcceleratorState

    torch.set_num_threads(1)
    AcceleratorState._reset_state(reset_partial_state=True)  # forked from a 1-process parent
    task = rev_task() if cfg["objective"] == "sft" else first_letter_task()
    train(tiny_llama(), char_tokenizer(), task, cfg, out_dir=out_dir, progress=False)


@pytest.mark.parametrize("objective", ["rl", "sft"])
def test_two_processes_equal_one(tmp_path, monkeypatch, objective):
    import accelerate.launchers as launchers
    from accelerate.state import AcceleratorState

    real_patch = launchers.patch_environment
    port = str(_free_port())  # debug_launcher pins 29500; other test runs may hold it
    monkeypatch.setattr(
        launchers, "patch_environment", lambda **kw: real_patch(**{**kw, "master_port": port})
    )
    cfg = dict(objective=objective, parameterization="lora", steps=3, batch_size=8, group_size=4,
               micro_batch_size=3, max_new_tokens=4, lr=2e-2, checkpoint_every=0)
    if objective == "sft":  # with a retention term: its micro-batches are dealt out too
        (tmp_path / "general.txt").write_text("\n".join(RETAIN_TEXTS))
        cfg.update(retain_kl_coef=0.5, retain_text=f"text:{tmp_path / 'general.txt'}",
                   retain_batch_size=5)
    launchers.debug_launcher(_two_process_worker, args=(str(tmp_path / "two"), cfg), num_processes=2)
    AcceleratorState._reset_state(reset_partial_state=True)
    task = rev_task() if objective == "sft" else first_letter_task()
    one = train(tiny_llama(), char_tokenizer(), task, cfg, out_dir=tmp_path / "one", progress=False)
    two = load_safetensors(checkpoint_dir(tmp_path / "two") / "trainable.safetensors")
    state_two = read_json(checkpoint_dir(tmp_path / "two") / "state.json")
    assert state_two["num_processes"] == 2
    hist_two = state_two["history"]
    assert len(hist_two) == len(one.history) == cfg["steps"]  # zip below must not hide a gap
    assert [r["step"] for r in hist_two] == [r["step"] for r in one.history]
    for name, p in trainable_parameters(one.model).items():
        torch.testing.assert_close(two[name], p.detach(), rtol=1e-6, atol=1e-6)
    for r1, r2 in zip(one.history, hist_two):
        assert r1["loss"] == pytest.approx(r2["loss"], rel=1e-5, abs=1e-6)
        assert r1.get("reward") == r2.get("reward")
        if "retain_kl" in r1:
            assert r1["retain_kl"] == pytest.approx(r2["retain_kl"], rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("objective,param", [("rl", "svf"), ("rl", "lora"), ("sft", "svf")])
def test_passes_of_fewer_rows_give_the_same_training(tmp_path, objective, param):
    """max_rows_per_pass bounds activation memory only: one pass per micro-batch and passes of
    1-3 rows give the same losses (1e-6), rewards, KL and parameters."""
    cfg = dict(objective=objective, parameterization=param, steps=2, batch_size=6, group_size=4,
               micro_batch_size=3, max_new_tokens=4, lr=2e-2, checkpoint_every=0, kl_coef=0.1)
    if objective == "sft":
        (tmp_path / "general.txt").write_text("\n".join(RETAIN_TEXTS))
        cfg.update(retain_kl_coef=0.5, retain_text=f"text:{tmp_path / 'general.txt'}",
                   retain_batch_size=5, kl_coef=0.0)
    task = rev_task() if objective == "sft" else first_letter_task()
    runs = []
    for per_pass in (1000, 3, 1):
        cfg["max_rows_per_pass"] = per_pass
        runs.append(train(tiny_llama(), char_tokenizer(), task, cfg, progress=False))
    one = runs[0]
    for other in runs[1:]:
        for r1, r2 in zip(one.history, other.history, strict=True):
            assert r1["loss"] == pytest.approx(r2["loss"], abs=1e-6)
            assert r1.get("reward") == r2.get("reward")
            for k in ("kl", "retain_kl"):
                if k in r1:
                    assert r1[k] == pytest.approx(r2[k], abs=1e-6)
        # Passes pad to their own longest row, so gradients differ in float32 rounding, which
        # Adam (lr 2e-2, near-zero entries) turns into parameter differences of up to ~1e-5.
        mine = trainable_parameters(other.model)
        for name, p in trainable_parameters(one.model).items():
            torch.testing.assert_close(mine[name], p, rtol=1e-4, atol=5e-5)


# --------------------------------------------------------------------------- retention
RETAIN_TEXTS = ["the cat sat.", "a dog ran home", "xyz", "moon and sun rise", "fig tree"]


def test_retain_kl_loss_equals_a_per_text_reference():
    torch.manual_seed(0)
    model, ref, tok = tiny_llama(), tiny_llama(), char_tokenizer()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    coef, total, n_tokens = 0.7, 0.0, 0
    with torch.no_grad():
        for text in RETAIN_TEXTS:  # one text at a time, no padding
            ids = torch.tensor([tok(text)["input_ids"] + [tok.eos_token_id]])
            p_ref = torch.log_softmax(ref(input_ids=ids).logits.float(), -1)
            p_mod = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
            total += float(F.kl_div(p_mod, p_ref, log_target=True, reduction="sum"))
            n_tokens += ids.shape[1]
    rows = scoring.document_rows(tok, RETAIN_TEXTS)
    assert sum(len(ids) for ids, _ in rows) == n_tokens
    loss, stats = retention.retain_kl_loss(
        model, tok, rows, n_tokens, coef, torch.device("cpu"),
        lambda: contextlib.nullcontext(ref),
    )
    assert float(loss.detach()) == pytest.approx(coef * total / n_tokens, rel=1e-5)
    assert stats["retain_kl_sum"] == pytest.approx(total, rel=1e-5)


def _kl_on(model, ref, tok, texts) -> float:
    rows = scoring.document_rows(tok, texts)
    loss, _ = retention.retain_kl_loss(
        model, tok, rows, sum(len(ids) for ids, _ in rows), 1.0, torch.device("cpu"),
        lambda: contextlib.nullcontext(ref),
    )
    return float(loss.detach())


def test_retention_kl_keeps_the_model_close_to_its_start_on_the_retention_text(tmp_path):
    texts = tmp_path / "general.txt"
    texts.write_text("\n".join(RETAIN_TEXTS) + "\n")
    tok, task = char_tokenizer(), rev_task()
    start = tiny_llama()
    common = dict(objective="sft", parameterization="full", steps=15, batch_size=4, lr=1e-2,
                  progress=False)
    free = train(tiny_llama(), tok, task, **common)
    kept = train(tiny_llama(), tok, task, retain_kl_coef=5.0, retain_text=f"text:{texts}",
                 retain_batch_size=3, **common)
    assert kept.history[0]["retain_kl"] == pytest.approx(0.0, abs=1e-7)  # starts at the reference
    assert kept.history[-1]["retain_kl"] > 0
    drift_free = _kl_on(free.model, start, tok, RETAIN_TEXTS)
    drift_kept = _kl_on(kept.model, start, tok, RETAIN_TEXTS)
    assert drift_kept < 0.5 * drift_free, (drift_kept, drift_free)
    # ... while the task is still learned
    assert reference_sft_loss(kept.model, tok, task.examples("train")) < reference_sft_loss(
        start, tok, task.examples("train"))


def test_retention_text_sources(tmp_path):
    from routekit.training.retention import retention_texts

    jl = tmp_path / "t.jsonl"
    jl.write_text('{"text": "one"}\n\n{"text": "two words"}\n')
    assert retention_texts(f"text:{jl}") == ["one", "two words"]
    (tmp_path / "bad.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(ConfigError, match="line 1: expected a JSON object with a 'text' field"):
        retention_texts(f"text:{tmp_path / 'bad.jsonl'}")
    with pytest.raises(ConfigError, match="does not exist"):
        retention_texts(f"text:{tmp_path / 'missing.txt'}")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ConfigError, match="holds no text"):
        retention_texts(f"text:{tmp_path / 'empty.txt'}")
    add = retention_texts("add")
    assert add[0].startswith("sum of ") and add[0].split(" is ")[1].isdigit()


def test_retain_kl_coef_needs_retain_text():
    with pytest.raises(ConfigError, match="retain_kl_coef=0.5 needs retain_text"):
        TrainConfig.from_dict({"retain_kl_coef": 0.5})
    with pytest.raises(ConfigError, match="retain_kl_coef"):
        TrainConfig.from_dict({"retain_kl_coef": -1.0})


# --------------------------------------------------------------------------- configs
CONFIGS = sorted(Path(__file__).resolve().parents[1].glob("recipes/configs/**/*.yaml"))


def test_configs_are_shipped():
    names = {p.relative_to(p.parents[1]).as_posix() for p in CONFIGS}
    for task in ("add", "rev", "hop"):
        for method in ("svf_rl", "svf_sft", "proxy_sft", "proxy_rl", "full_sft"):
            assert f"world/{task}_{method}.yaml" in names
    assert "qwen2.5-0.5b/gsm8k_svf_rl.yaml" in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates_and_names_its_launch_line(path):
    cfg = TrainConfig.from_yaml(path)
    text = path.read_text()
    rel = path.relative_to(path.parents[3]).as_posix()
    assert f"routekit train {rel}" in text
    assert f"accelerate launch -m routekit.cli train {rel}" in text
    assert f"torchrun --nproc_per_node 2 -m routekit.cli train {rel}" in text
    assert cfg.task is not None
    for line in text.splitlines():  # every key carries a comment
        if line and not line.startswith("#") and ":" in line and not line.startswith(" "):
            assert "#" in line, f"{path.name}: key without a comment: {line!r}"


def test_unknown_key_and_wrong_type_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("objective: rl\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'learning_rate'"):
        TrainConfig.from_yaml(bad)
    bad.write_text("steps: many\n")
    with pytest.raises(ConfigError, match=r"key 'steps'.*'many'"):
        TrainConfig.from_yaml(bad)
    bad.write_text("lora:\n  rank: 4\n")
    with pytest.raises(ConfigError, match=r"unknown key 'lora.rank'"):
        TrainConfig.from_yaml(bad)
    with pytest.raises(ConfigError, match=r"parameterization"):
        TrainConfig.from_dict({"parameterization": "dora"})
    with pytest.raises(ConfigError, match=r"weight_decay"):
        TrainConfig.from_dict({"parameterization": "mask", "mask": 0.1, "weight_decay": 0.01})


@pytest.mark.parametrize("text, message", [
    ("lora:\n  r: many\n", r"^.*: key 'lora\.r': Input should be a valid integer.*\(got 'many'\)$"),
    ("lora: 5\n", r"key 'lora': .*\(got 5\)"),
    # a union's alternatives: one entry for the key, not 'mask.float' and 'mask.str'
    ("mask: [1]\n", r"key 'mask': Input should be a valid number or Input should be a valid string \(got \[1\]\)$"),
    ("svf:\n  target_modules: 5\n", r"key 'svf\.target_modules': .* \(got 5\)$"),
    ("world: [tiny]\n", r"key 'world': Input should be a valid string"),
    ("- steps: 3\n", r"expected a mapping of keys, got list"),
])
def test_pydantic_errors_of_a_recipe_name_the_key(tmp_path, text, message):
    from routekit.training.recipe import run_recipe

    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        run_recipe(bad, tmp_path / "out")
    assert str(bad) in str(info.value)
    assert ".float" not in str(info.value) and ".str'" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_train_keyword_overrides_are_validated():
    with pytest.raises(ConfigError, match=r"unknown key 'lrate'"):
        train(tiny_llama(), char_tokenizer(), rev_task(), lrate=1.0, progress=False)


def test_svf_fields_are_checked_against_svfconfig():
    with pytest.raises(ConfigError, match=r"unknown key 'svf.rank'"):
        TrainConfig.from_dict({"svf": {"rank": 4}})


# --------------------------------------------------------------------------- CLI recipe
def test_routekit_train_writes_an_svf_expert_equal_to_the_trained_z(tmp_path):
    from routekit.cli import main
    from routekit.svf import SVFExpert

    tiny_llama().save_pretrained(tmp_path / "model")
    char_tokenizer().save_pretrained(tmp_path / "model")
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "test"):
        data.joinpath(f"{split}.jsonl").write_text(
            "".join(f'{{"question": "{w} =", "answer": "{w[::-1]}"}}\n' for w in WORDS)
        )
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"model: {tmp_path / 'model'}\ntask: jsonl:{data}\nobjective: sft\nparameterization: svf\n"
        f"svf:\n  cache_dir: {tmp_path / 'cache'}\nsteps: 2\nbatch_size: 2\ngroup_size: 2\n"
        "max_new_tokens: 4\nlr: 0.05\n"
    )
    out, run = tmp_path / "experts" / "rev_svf", tmp_path / "runs" / "rev_svf"
    assert main(["train", str(cfg), "--out", str(out), "--run-dir", str(run), "--no-progress"]) == 0
    expert = SVFExpert.from_pretrained(out)
    saved = load_safetensors(checkpoint_dir(run) / "trainable.safetensors")
    assert expert.name == "rev_svf"
    assert len(expert.z) == len(saved) > 0
    for layer, z in expert.z.items():
        (ckpt_name,) = [n for n in saved if n.startswith(layer + ".svf_z") or n == f"{layer}.svf_z"]
        assert torch.equal(z, saved[ckpt_name])
    assert any(not torch.equal(z, torch.ones_like(z)) for z in expert.z.values())
    assert read_json(run / "train_result.json")["config"]["objective"] == "sft"
    assert expert.training_config["objective"] == "sft"


def test_routekit_train_refuses_a_bad_config(tmp_path, capsys):
    from routekit.cli import main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("objective: rl\nstep: 3\n")
    assert main(["train", str(cfg)]) == 2
    assert "unknown key 'step'" in capsys.readouterr().err


# --------------------------------------------------------------------------- bad input, no change
def _assert_untouched(model, before: dict[str, torch.Tensor]) -> None:
    """The model was neither wrapped nor changed: same parameter names and values."""
    now = params_of(model)
    assert now.keys() == before.keys()
    assert all(torch.equal(now[n], before[n]) for n in before)
    assert not hasattr(model, "_routekit_parameterization")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_resume_without_a_checkpoint_is_refused_and_changes_nothing(tmp_path):
    model, tok, task = tiny_llama(), char_tokenizer(), rev_task()
    before = params_of(model)
    with pytest.raises(TrainingError, match=r"no checkpoint to resume.*state\.json"):
        train(model, tok, task, parameterization="lora", steps=2, batch_size=2,
              out_dir=tmp_path / "run", resume=True, progress=False)
    _assert_untouched(model, before)
    assert not (tmp_path / "run").exists()


STATE_DAMAGE = {
    "not JSON": lambda s: "{not json",
    "wrong type": lambda s: json.dumps({**json.loads(s), "step": "one"}),
    "missing key": lambda s: json.dumps({k: v for k, v in json.loads(s).items() if k != "history"}),
    "unknown key": lambda s: json.dumps({**json.loads(s), "stepz": 1}),
    "history of another length": lambda s: json.dumps({**json.loads(s), "history": []}),
    "bad config": lambda s: json.dumps({**json.loads(s), "config": {"lr": "fast"}}),
}


@pytest.mark.parametrize("damage", list(STATE_DAMAGE))
def test_a_damaged_checkpoint_state_is_refused_naming_the_file(tmp_path, damage):
    from routekit.errors import CheckpointError

    tok, task = char_tokenizer(), rev_task()
    cfg = dict(parameterization="lora", steps=2, batch_size=2, checkpoint_every=1)
    train(tiny_llama(), tok, task, {**cfg, "steps": 1}, out_dir=tmp_path, progress=False)
    state = checkpoint_dir(tmp_path) / "state.json"
    state.write_text(STATE_DAMAGE[damage](state.read_text()))
    files = _files(tmp_path)
    model = tiny_llama()
    before = params_of(model)
    with pytest.raises(CheckpointError, match=re.escape(repr(str(state)))) as info:
        train(model, tok, task, cfg, out_dir=tmp_path, resume=True, progress=False)
    expected = {"not JSON": "not valid JSON", "wrong type": "key 'step'", "missing key":
                "key 'history': this key is required", "unknown key": "unknown key 'stepz'",
                "history of another length": "step 1 but 0 history records",
                "bad config": "key 'lr'"}[damage]
    assert expected in str(info.value)
    _assert_untouched(model, before)
    assert _files(tmp_path) == files


def test_a_truncated_checkpoint_tensor_file_is_a_checkpoint_error(tmp_path):
    from routekit.errors import CheckpointError

    tok, task = char_tokenizer(), rev_task()
    cfg = dict(parameterization="full", steps=2, batch_size=2, checkpoint_every=1)
    train(tiny_llama(), tok, task, {**cfg, "steps": 1}, out_dir=tmp_path, progress=False)
    opt = checkpoint_dir(tmp_path) / "optimizer.safetensors"
    opt.write_bytes(opt.read_bytes()[:100])
    model = tiny_llama()
    before = params_of(model)
    with pytest.raises(CheckpointError, match=r"optimizer\.safetensors.*truncated or corrupt"):
        train(model, tok, task, cfg, out_dir=tmp_path, resume=True, progress=False)
    _assert_untouched(model, before)


# --------------------------------------------------------------------------- masks from a file
def test_masks_from_a_safetensors_file_decide_what_moves(tmp_path):
    from safetensors.torch import save_file

    model, tok, task = tiny_llama(), char_tokenizer(), rev_task()
    up = "model.layers.0.mlp.up_proj.weight"
    down = "model.layers.1.mlp.down_proj.weight"
    g = torch.Generator().manual_seed(5)
    shapes = dict(model.named_parameters())
    masks = {
        up: torch.rand(shapes[up].shape, generator=g) < 0.25,  # bool
        down: (torch.rand(shapes[down].shape, generator=g) < 0.5).to(torch.float32),  # 0/1 floats
    }
    save_file(masks, str(tmp_path / "masks.safetensors"))
    base = params_of(model)
    res = train(model, tok, task, parameterization="mask", mask=str(tmp_path / "masks.safetensors"),
                steps=3, batch_size=4, lr=1e-2, progress=False)
    assert set(trainable_parameters(res.model)) == {up, down}
    assert res.trainable_parameters == sum(int(m.sum()) for m in masks.values())
    for name, p in res.model.named_parameters():
        moved = p.detach() != base[name]
        if name in masks:
            keep = masks[name].bool()
            assert not (moved & ~keep).any(), f"{name} moved outside its mask"
            assert moved.any(), name
        else:
            assert not moved.any(), f"{name} is absent from the mask file but moved"


def test_a_non_boolean_mask_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    model, tok, task = tiny_llama(), char_tokenizer(), rev_task()
    up = "model.layers.0.mlp.up_proj.weight"
    m = torch.zeros(dict(model.named_parameters())[up].shape)
    m[0, 0], m[0, 1] = 0.3, 1.0
    save_file({up: m}, str(tmp_path / "scores.safetensors"))
    before = params_of(model)
    with pytest.raises(ConfigError, match=rf"mask for '{re.escape(up)}'.*not boolean.*1 entries.*0\.3"):
        train(model, tok, task, parameterization="mask", mask=str(tmp_path / "scores.safetensors"),
              steps=1, batch_size=2, progress=False)
    _assert_untouched(model, before)
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- outputs of a run
@pytest.mark.parametrize("kind", ["lora", "full", "mask"])
def test_outputs_are_written_whole_and_replace_only_their_own_kind(tmp_path, kind, monkeypatch):
    from routekit.models import load_model
    from routekit.training.recipe import save_trained

    tok, task = char_tokenizer(), rev_task()
    res = train(tiny_llama(), tok, task, parameterization=kind, mask=0.5 if kind == "mask" else None,
                steps=1, batch_size=2, lr=1e-2, progress=False)
    out = tmp_path / "expert"
    save_trained(res, tok, out, name="expert", run_dir=tmp_path / "run")
    names = {p.name for p in out.iterdir()}
    if kind == "lora":
        assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    else:
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
        saved, _ = load_model(out)
        trained = dict(res.model.named_parameters())
        for n, p in saved.named_parameters():
            assert torch.equal(p, trained[n].detach()), n
    written = _files(out)
    save_trained(res, tok, out, name="expert", run_dir=tmp_path / "run")  # its own kind: replaced
    assert _files(out) == written
    # A save that dies half way leaves the previous output whole, and no temporary behind.
    target = type(res.model)
    real = target.save_pretrained

    def dying(self, path, *a, **k):
        real(self, path, *a, **k)
        raise _Killed()

    monkeypatch.setattr(target, "save_pretrained", dying)
    with pytest.raises(_Killed):
        save_trained(res, tok, out, name="expert", run_dir=tmp_path / "run")
    monkeypatch.undo()
    assert _files(out) == written
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # A folder of the user's (a file no training output writes) is never replaced.
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExpertFileError, match=r"is not an expert directory \(holds \['notes.txt'\]\)"):
        save_trained(res, tok, out, name="expert", run_dir=tmp_path / "run")
    assert _files(out) == {**written, "notes.txt": b"mine"}


def test_routekit_train_refuses_a_foreign_out_before_training(tmp_path, capsys):
    from routekit.cli import main

    tiny_llama().save_pretrained(tmp_path / "model")
    char_tokenizer().save_pretrained(tmp_path / "model")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(f'{{"question": "{w} =", "answer": "{w[::-1]}", "split": "train"}}\n'
                            for w in WORDS))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"model: {tmp_path / 'model'}\ntask: jsonl:{data}\nparameterization: full\n"
                   "steps: 1\nbatch_size: 2\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out), "--run-dir", str(run), "--no-progress"]) == 2
    assert "thesis.tex" in capsys.readouterr().err
    assert _files(out) == {"thesis.tex": b"years of work"}
    assert not run.exists()  # refused before any step ran


# --------------------------------------------------------------------------- which world
@pytest.fixture
def micro_world(tmp_path, monkeypatch):
    """A world of seconds in a private cache: (its WorldConfig, its base model, tokenizer)."""
    from routekit import world
    from tests.test_world import MICRO

    monkeypatch.setenv("ROUTEKIT_CACHE", str(tmp_path / "cache"))
    world.build(MICRO, progress=False)
    model, tok = world.load(MICRO, build_if_missing=False)
    return MICRO, model, tok


def test_world_corpus_retention_comes_from_the_world_of_the_model(micro_world, monkeypatch):
    from routekit.world import World
    from routekit.world.tasks import world_of_model

    config, model, tok = micro_world
    assert world_of_model(model).hash() == config.hash()
    seen = []
    real = scoring.document_rows
    monkeypatch.setattr(scoring, "document_rows", lambda t, texts: seen.append(texts) or real(t, texts))
    res = train(model, tok, rev_task(), parameterization="lora", steps=2, batch_size=2,
                retain_kl_coef=1.0, retain_text="world-corpus", retain_batch_size=4, progress=False)
    (texts,) = seen
    assert texts == World(config).corpus_lines  # the micro world's corpus, not the default's
    assert texts[:50] != World(WorldConfig()).corpus_lines[:50]
    assert res.history[0]["retain_kl"] == pytest.approx(0.0, abs=1e-7)  # starts at the reference
    assert res.history[-1]["retain_kl"] > 0


def test_a_world_task_or_named_world_of_another_world_is_refused(micro_world):
    from routekit.tasks import get_task
    from routekit.world import world_dir

    config, model, tok = micro_world
    before = params_of(model)
    hint = re.escape(repr(str(world_dir(config) / "world_config.json")))
    with pytest.raises(ConfigError, match=rf"task 'add' is the default world.*world: {hint}"):
        train(model, tok, get_task("add"), parameterization="lora", steps=1, batch_size=2,
              progress=False)
    with pytest.raises(ConfigError, match=rf"world: 'tiny' is the tiny world.*world: {hint}"):
        train(model, tok, rev_task(), parameterization="lora", world="tiny", steps=1,
              batch_size=2, progress=False)
    _assert_untouched(model, before)
    # The model's own world, named or not, is accepted.
    task = get_task("add", world_config=config)
    res = train(model, tok, task, parameterization="lora", world=str(world_dir(config)), steps=1,
                batch_size=2, progress=False)
    assert res.steps == 1


def test_a_model_of_no_world_needs_the_world_named(micro_world, tmp_path):
    from routekit.world import world_dir

    config, _, tok = micro_world
    model = tiny_llama()  # from no world cache entry
    before = params_of(model)
    with pytest.raises(ConfigError, match=r"retain_text 'world-corpus' refers to the world.*Name it with world: 'default', 'tiny'"):
        train(model, tok, rev_task(), parameterization="lora", retain_kl_coef=1.0,
              retain_text="world-corpus", steps=1, batch_size=2, progress=False)
    _assert_untouched(model, before)
    res = train(model, tok, rev_task(), parameterization="lora", retain_kl_coef=1.0,
                retain_text="world-corpus", world=str(world_dir(config) / "world_config.json"),
                steps=1, batch_size=2, progress=False)
    assert "retain_kl" in res.history[0]
    with pytest.raises(ConfigError, match=r"world 'nowhere' names no world"):
        train(tiny_llama(), tok, rev_task(), world="nowhere", steps=1, progress=False)


def test_recipe_world_tasks_and_models_follow_the_named_world(micro_world, tmp_path):
    from routekit.training.recipe import load_config_model, resolve_task
    from routekit.world import world_dir
    from routekit.world.tasks import world_task

    config, _, _ = micro_world
    cfg = TrainConfig.from_dict({"model": "world", "world": str(world_dir(config)), "task": "hop"})
    model, _ = load_config_model(cfg)
    assert Path(model.config._name_or_path) == world_dir(config) / "base"
    task = resolve_task(cfg, model)
    assert task.world.hash() == config.hash()
    assert task.examples("train") == world_task("hop", config).examples("train")
    # the world comes from the model when the config names none ...
    assert resolve_task(TrainConfig.from_dict({"task": "hop"}), model).world.hash() == config.hash()
    # ... and a model of no world with no world named is refused
    with pytest.raises(ConfigError, match=r"task 'hop' refers to the world"):
        resolve_task(TrainConfig.from_dict({"task": "hop"}), tiny_llama())


def test_retention_anchor_is_the_untrained_model_across_segments_and_a_resume(tmp_path):
    """Training a full-parameter model in segments on the same object (as a compare cell
    does) pays its KL to the untrained weights: 1, 2 and 3 segments, and a resume, all equal
    one uninterrupted run bit for bit. Without the reference made once, they do not."""
    from routekit.training.parameterizations import frozen_reference

    texts = tmp_path / "general.txt"
    texts.write_text("\n".join(RETAIN_TEXTS) + "\n")
    tok, task = char_tokenizer(), rev_task()
    cfg = TrainConfig(objective="sft", parameterization="full", steps=3, batch_size=4, lr=1e-2,
                      retain_kl_coef=2.0, retain_text=f"text:{texts}", retain_batch_size=3,
                      checkpoint_every=1)
    whole = train(tiny_llama(), tok, task, cfg, out_dir=tmp_path / "whole", progress=False)
    assert whole.history[-1]["retain_kl"] > 0

    def segmented(out: Path, anchored: bool):
        model = tiny_llama()
        ref = frozen_reference(model, cfg) if anchored else None
        for end in (1, 2, 3):
            res = train(model, tok, task, cfg.model_copy(update={"steps": end}), out_dir=out,
                        resume=end > 1, progress=False, reference=ref)
            model = res.model
        return res

    seg = segmented(tmp_path / "seg", anchored=True)
    assert [r["retain_kl"] for r in seg.history] == [r["retain_kl"] for r in whole.history]
    for name, p in params_of(whole.model).items():
        assert torch.equal(p, params_of(seg.model)[name]), name
    # a killed cell resumes onto fresh weights: the copy made from them is the base again
    fresh = tiny_llama()
    resumed = train(fresh, tok, task, cfg, out_dir=tmp_path / "seg", resume=True, progress=False,
                    reference=frozen_reference(fresh, cfg))
    assert resumed.resumed_from == 3
    # the old behaviour, a copy of the partly trained object each call, moves the anchor
    drift = segmented(tmp_path / "drift", anchored=False)
    assert drift.history[-1]["retain_kl"] != whole.history[-1]["retain_kl"]
    assert not all(torch.equal(p, params_of(drift.model)[n]) for n, p in params_of(whole.model).items())


def test_resume_refuses_another_base_or_edited_task_data(tmp_path):
    """state.json records the base's fingerprint and the data's hash: a resume onto a base
    of the same shapes but other weights, or onto edited data, is refused naming what differs."""
    tok, task = char_tokenizer(), rev_task()
    cfg = dict(parameterization="svf", steps=2, batch_size=2, checkpoint_every=1, progress=False)
    train(tiny_llama(), tok, task, out_dir=tmp_path, **cfg)
    state = read_json(checkpoint_dir(tmp_path) / "state.json")
    assert set(state["identity"]) == {"base_fingerprint", "weights_fingerprint", "task_data"}
    other = tiny_causal_lm("llama", seed=1)
    with pytest.raises(TrainingError, match=r"belongs to another run \(base model weights"):
        train(other, tok, task, out_dir=tmp_path, resume=True, **{**cfg, "steps": 3})
    edited = Task("rev", {"train": [Example("zzz =", "zzz")] + task.examples("train")[1:]})
    with pytest.raises(TrainingError, match=r"training data \(hash"):
        train(tiny_llama(), tok, edited, out_dir=tmp_path, resume=True, **{**cfg, "steps": 3})
    assert read_json(checkpoint_dir(tmp_path) / "state.json")["step"] == 2  # nothing changed
    # the same base and data resume, whether fresh or the trained object itself
    res = train(tiny_llama(), tok, task, out_dir=tmp_path, resume=True, **{**cfg, "steps": 3})
    again = train(res.model, tok, task, out_dir=tmp_path, resume=True, **{**cfg, "steps": 4})
    assert again.resumed_from == 3


def test_rl_rollouts_ignore_the_checkpoints_generation_config():
    """A checkpoint whose generation_config sets a repetition penalty (and top-k, a minimum
    length, n-gram blocking) samples exactly what a plain one samples: rollouts draw from
    softmax(logits / T) alone. A setting with no neutral value is refused by name."""
    from transformers import GenerationConfig

    tok, task = char_tokenizer(), first_letter_task()
    ex = task.examples("train")[:3]
    kw = dict(step=0, seed=0, group_size=4, max_new_tokens=6, temperature=1.0)
    plain = tiny_llama()
    want = rl.sample_rollout(plain, tok, task, ex, [0, 1, 2], **kw).completion_ids
    fussy = tiny_llama()
    fussy.generation_config = GenerationConfig(repetition_penalty=5.0, top_k=2, min_new_tokens=4,
                                               min_length=12,
                                               no_repeat_ngram_size=1)
    got = rl.sample_rollout(fussy, tok, task, ex, [0, 1, 2], **kw).completion_ids
    assert got == want
    # the same settings, left to generate itself, do change greedy decoding here
    enc = tok([e.prompt for e in ex], return_tensors="pt", padding=True)
    plain_out = plain.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=0)
    fussy_out = fussy.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert not torch.equal(plain_out, fussy_out)
    fussy.generation_config.suppress_tokens = [5]
    with pytest.raises(ConfigError, match=r"generation_config sets \['suppress_tokens'\]"):
        rl.sample_rollout(fussy, tok, task, ex, [0, 1, 2], **kw)


def test_rl_loss_runs_in_eval_mode_like_the_sampler(monkeypatch):
    modes = []
    real = rl.rl_loss

    def spy(model, *a, **k):
        modes.append(model.training)
        return real(model, *a, **k)

    monkeypatch.setattr(rl, "rl_loss", spy)
    train(tiny_llama(), char_tokenizer(), first_letter_task(), objective="rl",
          parameterization="full", steps=1, batch_size=2, group_size=2, max_new_tokens=2,
          progress=False)
    assert modes and not any(modes)


# --------------------------------------------------------------------------- chunked log-probs
@pytest.mark.parametrize("chunk", [1 << 22, 7 * 50])  # one chunk per row; 7 positions a chunk
def test_chunked_logprobs_and_kl_equal_the_full_log_softmax(chunk, monkeypatch):
    """gather_logprobs and full_kl (values and gradients) equal today's full-vocabulary
    float32 log_softmax within 1e-6, whatever the chunking (logits of a sliced, non-contiguous
    view as the objectives pass them)."""
    from routekit import logprobs

    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", chunk)
    g = torch.Generator().manual_seed(0)
    raw = (4 * torch.randn(3, 21, 50, generator=g)).requires_grad_(True)
    ref_raw = 4 * torch.randn(3, 21, 50, generator=g)
    targets = torch.randint(0, 50, (3, 20), generator=g)
    weights = torch.randn(3, 20, generator=g)

    got = logprobs.gather_logprobs(raw[:, :-1], targets, temperature=2.0)
    want = torch.log_softmax(raw[:, :-1].float() / 2.0, -1).gather(-1, targets[..., None])[..., 0]
    assert (got - want).abs().max() <= 1e-6
    (g_got,) = torch.autograd.grad((got * weights).sum(), raw)
    (g_want,) = torch.autograd.grad((want * weights).sum(), raw)
    assert (g_got - g_want).abs().max() <= 1e-6

    kl = logprobs.full_kl(ref_raw[:, :-1], raw[:, :-1])
    ref_lp = torch.log_softmax(ref_raw[:, :-1], -1)
    kl_want = (ref_lp.exp() * (ref_lp - torch.log_softmax(raw[:, :-1], -1))).sum(-1)
    assert (kl - kl_want).abs().max() <= 1e-6
    (g_got,) = torch.autograd.grad((kl * weights).sum(), raw)
    (g_want,) = torch.autograd.grad((kl_want * weights).sum(), raw)
    assert (g_got - g_want).abs().max() <= 1e-6
    with torch.no_grad():  # no autograd: no checkpointing, the same numbers
        assert torch.equal(logprobs.gather_logprobs(raw[:, :-1], targets, 2.0), got.detach())


def test_chunked_logprobs_refuse_mismatched_shapes():
    from routekit import logprobs

    with pytest.raises(ConfigError, match="disagree"):
        logprobs.gather_logprobs(torch.zeros(2, 5, 9), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ConfigError, match="disagree"):
        logprobs.full_kl(torch.zeros(2, 5, 9), torch.zeros(2, 5, 8))


def test_sft_loss_equals_full_cross_entropy_within_1e6(monkeypatch):
    """The chunked SFT loss and gradient equal F.cross_entropy over the full logits."""
    from routekit import logprobs

    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", 3 * 64)
    tok, model = char_tokenizer(), tiny_llama()
    examples = rev_task().examples("train")[:5]
    loss, stats = sft.sft_loss(model, tok, examples, 40, torch.device("cpu"))
    ids, attn, comp = scoring.right_padded(
        sft.sft_rows(tok, examples), tok.pad_token_id, torch.device("cpu")
    )
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    labels = ids.masked_fill(~comp, -100)[:, 1:]
    ref = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum")
    ref_sum = float(ref.detach())
    assert abs(stats["loss_sum"] - ref_sum) <= 1e-6 * max(1.0, abs(ref_sum))
    w = model.model.layers[0].mlp.up_proj.weight
    (g,) = torch.autograd.grad(loss, w)
    (g_ref,) = torch.autograd.grad(ref / 40, w)
    assert (g - g_ref).abs().max() <= 1e-6
