"""Benchmark floors: the least the *same* work needs, so that a step over its floor says how
much routekit adds (issue 20, item 7). A step that beats its floor by more than noise
(ratio < 0.9) means the floor does other work, and the floor is what must be fixed.

The RL floor (``rl_floor_step``), used by bench_trainer.py, bench_real.py and bench_gpu.py:

1. sampling on the *plain* model (the base's weights, no SVF wrapper: what merged weights
   compute), one ``generate`` call for all completions, each distinct prompt prefilled once
   and its key/value cache shared by its group (as the RL step samples);
2. the rewards, and one forward and backward over the prompts + completions that carry a
   gradient (a group whose rewards are all equal has advantage 0 and is left out, as the
   loss leaves it out) on the path the loss uses (the factored SVF model), the completion
   tokens' log-probs gathered chunk by chunk (``routekit.logprobs.gather_logprobs``, as the
   loss does).

Nothing else: no per-row seeded sampler, no micro-batching, no optimizer step.
"""

from __future__ import annotations

import time

import torch

from routekit.logprobs import gather_logprobs
from routekit.tasks.base import Example, Task
from routekit.training.rl import _generate_groups


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rl_floor_step(plain: torch.nn.Module, svf: torch.nn.Module, tok, task: Task,
                  examples: list[Example], group: int, new_tokens: int) -> float:
    """Seconds of the RL floor for ``len(examples) x group`` completions of up to
    ``new_tokens`` tokens: sampling on ``plain``, then one forward and backward on ``svf``."""
    prompts = [e.prompt for e in examples]
    device = next(svf.parameters()).device
    _sync(device)
    t0 = time.perf_counter()
    side = tok.padding_side
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True).to(device)
    tok.padding_side = side
    plain.eval()
    with torch.no_grad():
        out = _generate_groups(
            plain, enc["input_ids"], enc["attention_mask"], group, do_sample=True,
            temperature=1.0, top_k=None, top_p=None, max_new_tokens=new_tokens,
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        )
    n_prompt = enc["input_ids"].shape[1]
    texts = tok.batch_decode(out[:, n_prompt:], skip_special_tokens=True)
    rewards = torch.tensor(task.reward(texts, [e.reference for e in examples for _ in range(group)]),
                           dtype=torch.float32).view(-1, group)
    keep = (rewards != rewards[:, :1]).any(1).repeat_interleave(group).to(device)
    if not bool(keep.any()):  # no gradient anywhere: the step samples only, and so does this
        _sync(device)
        return time.perf_counter() - t0
    out = out[keep]
    was_training = svf.training
    svf.train()
    attn = torch.cat([enc["attention_mask"].repeat_interleave(group, 0)[keep],
                      torch.ones_like(out[:, n_prompt:])], 1)
    logits = svf(input_ids=out, attention_mask=attn, use_cache=False).logits[:, n_prompt - 1 : -1]
    logp = gather_logprobs(logits, out[:, n_prompt:])
    (-logp.mean()).backward()
    _sync(device)
    seconds = time.perf_counter() - t0
    svf.zero_grad(set_to_none=True)
    svf.train(was_training)
    return seconds
