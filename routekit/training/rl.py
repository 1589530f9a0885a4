"""The RL objective (GRPO-style): seeded sampling, shared-prefix rollouts and the loss.

RL loss    = -(1/N) Σ_i A_i · (Σ_t log π(y_it) / n_i)          (N = samples in the global batch)
             + kl_coef · (1/N) Σ_i (Σ_t k3_it / n_i)
where A_i = (r_i − mean_group) / (std_group + 1e-4) (unbiased std over the group_size samples
of the same prompt), n_i = completion tokens of sample i (up to and including the first stop
token), log π = log_softmax(logits / temperature) (the distribution sampled from), and
k3 = exp(log π_base − log π) − (log π_base − log π) − 1 on the sampled tokens. One optimiser
step per sampled batch, so the policy ratio is 1 and no PPO clipping applies. As SFT's, the
loss of one micro-batch is divided by the *global* count, so gradients sum to the global one.

Sampling is Gumbel-max under greedy ``generate`` with one seeded generator per (step, prompt,
sample) (:class:`SeededSampling`). A step's rollouts are one ``generate`` call: each distinct
prompt is prefilled once and its key/value cache shared by its group, and an SVF model
samples with z merged into its weights (``benchmarks/bench_trainer.py`` times the whole step
against one plain sampling ``generate`` plus one forward and backward over the same
completions: ``rl_step_over_floor``).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedTokenizerBase,
)

from ..errors import ConfigError
from ..eval import stop_ids
from ..models import left_pad, pad_token_id
from ..scoring import right_padded, token_logprobs
from ..tasks.base import Example, Task
from .parameterizations import derive_seed

ADV_EPS = 1e-4


class SeededSampling(LogitsProcessor):
    """Sampling from softmax(scores / T) with one private RNG per row (Gumbel-max).

    Run under greedy ``generate``: the processor returns 0 for the sampled token and -inf
    elsewhere. Each row's noise comes from its own generator, seeded by (seed, step, prompt
    index, sample index), so a row's completion does not depend on which other rows share
    its batch or process: two processes sample exactly what one would.
    """

    def __init__(self, generators: list[torch.Generator], temperature: float) -> None:
        self.generators = generators
        self.temperature = temperature

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        vocab = scores.shape[-1]
        u = torch.stack(
            [torch.rand(vocab, generator=g, device=g.device) for g in self.generators]
        ).to(scores.device)
        gumbel = -torch.log(-torch.log(u.clamp(min=1e-20, max=1.0 - 1e-7)))
        choice = (scores.float() / self.temperature + gumbel).argmax(-1, keepdim=True)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, choice, 0.0)


@dataclass
class Rollout:
    """group_size sampled completions for each local prompt, with rewards and advantages."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    completions: list[str]
    rewards: torch.Tensor  # (n_prompts * group_size,)
    advantages: torch.Tensor

    def prompts_slice(self, start: int, stop: int, group_size: int) -> Rollout:
        """The rollout of prompts [start, stop) (each with its group_size samples)."""
        return self.rows_slice(start * group_size, stop * group_size)

    def rows_slice(self, start: int, stop: int) -> Rollout:
        """Samples [start, stop) (advantages already normalised over their whole group)."""
        a, b = start, stop
        return Rollout(
            self.prompt_ids[a:b], self.completion_ids[a:b], self.completions[a:b],
            self.rewards[a:b], self.advantages[a:b],
        )


@torch.no_grad()
def sample_rollout(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: Sequence[Example],
    global_indices: Sequence[int],
    *,
    step: int,
    seed: int,
    group_size: int,
    max_new_tokens: int,
    temperature: float,
) -> Rollout:
    """Sample ``group_size`` completions per example and score them with ``task.reward``."""
    device = next(model.parameters()).device
    gen_device = device if device.type == "cuda" else torch.device("cpu")
    generators = [
        torch.Generator(device=gen_device).manual_seed(derive_seed(seed, "sample", step, gi, j))
        for gi in global_indices
        for j in range(group_size)
    ]
    pad = pad_token_id(tokenizer)
    stop = stop_ids(tokenizer, model)
    # Each distinct prompt is encoded and prefilled once; its group shares that prefix.
    enc = left_pad(tokenizer, [e.prompt for e in examples], device)
    was_training = model.training
    model.eval()
    try:
        with _merged_for_decoding(model):
            out = _generate_groups(
                model, enc["input_ids"], enc["attention_mask"], group_size,
                generation_config=rollout_generation_config(model, max_new_tokens, pad,
                                                            stop or None),
                logits_processor=LogitsProcessorList([SeededSampling(generators, temperature)]),
            )
    finally:
        model.train(was_training)
    new = out[:, enc["input_ids"].shape[1] :].tolist()
    completion_ids = [_cut_at_stop(row, set(stop)) for row in new]
    completions = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    references = [e.reference for e in examples for _ in range(group_size)]
    rewards = torch.tensor(task.reward(completions, references), dtype=torch.float32)
    grouped = rewards.view(-1, group_size)
    adv = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + ADV_EPS)
    unique = [row[m.bool()].tolist() for row, m in zip(enc["input_ids"].cpu(), enc["attention_mask"].cpu())]
    prompt_ids = [list(ids) for ids in unique for _ in range(group_size)]
    return Rollout(prompt_ids, completion_ids, completions, rewards, adv.reshape(-1))


# Generation settings whose global default is None and that change which token greedy
# decoding picks. A checkpoint's generation_config fills every setting a GenerationConfig
# leaves at None, so these cannot be neutralised by passing a config: they are refused.
_UNNEUTRAL = ("bad_words_ids", "forced_bos_token_id", "forced_eos_token_id",
              "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
              "sequence_bias", "guidance_scale", "watermarking_config", "stop_strings",
              "constraints", "force_words_ids", "penalty_alpha", "dola_layers")


def rollout_generation_config(model: nn.Module, max_new_tokens: int, pad_token_id: int,
                              eos_token_id: list[int] | None) -> GenerationConfig:
    """The explicit generation settings of RL rollouts: greedy decoding over the scores that
    :class:`SeededSampling` returns, so every sample is softmax(logits / temperature) and
    nothing else (``TrainConfig.temperature`` names all that shapes the distribution).

    A checkpoint's ``generation_config`` (a repetition penalty, top-k, beams, a minimum
    length ...) would otherwise reach ``generate`` and make the sampler differ from the policy
    the loss assumes: every setting with a neutral value is set to it here, and a checkpoint
    that sets one of the others is refused with a ConfigError naming it.
    """
    own = getattr(model, "generation_config", None)
    set_here = sorted(k for k in _UNNEUTRAL if own is not None and getattr(own, k, None) is not None)
    if set_here:
        raise ConfigError(
            f"the model's generation_config sets {set_here}, which change the tokens RL "
            "rollouts sample, so the loss would not be the sampler's log-probability; clear "
            "them (model.generation_config.<name> = None) before RL training."
        )
    neutral = GenerationConfig()._get_default_generation_params()
    neutral.update(do_sample=False, num_beams=1, num_beam_groups=1, max_new_tokens=max_new_tokens,
                   min_new_tokens=0, renormalize_logits=False, token_healing=False,
                   pad_token_id=pad_token_id, eos_token_id=eos_token_id)
    neutral.pop("max_length", None)  # max_new_tokens bounds the completion
    # min_new_tokens=0 overrides any min_length (generate sets min_length from it); setting
    # both only makes transformers warn once per rollout batch.
    neutral.pop("min_length", None)
    return GenerationConfig(**neutral)


def _generate_groups(
    model: nn.Module, ids: torch.Tensor, attn: torch.Tensor, group_size: int, **generate_kwargs: Any
) -> torch.Tensor:
    """``generate`` for ``group_size`` copies of each left-padded prompt row (grouped by
    prompt), running the prompt's prefill once per distinct prompt instead of once per copy.

    All but each prompt's last token go through one forward pass; its key/value cache is
    repeated for every copy and ``generate`` continues from it, with the position ids
    ``generate`` itself would give (real tokens counted from 0), so each row samples what an
    unshared row would. Returns the prompt and new tokens, as ``generate`` does.
    """
    rep_ids, rep_attn = ids.repeat_interleave(group_size, 0), attn.repeat_interleave(group_size, 0)
    if ids.shape[1] < 2 or group_size < 2:
        return model.generate(input_ids=rep_ids, attention_mask=rep_attn, **generate_kwargs)
    pos = (attn.long().cumsum(-1) - 1).masked_fill(attn == 0, 1)
    kw = _cache_kwarg(model)
    prefix = model(input_ids=ids[:, :-1], attention_mask=attn[:, :-1], position_ids=pos[:, :-1],
                   use_cache=True)
    cache = getattr(prefix, kw)
    if isinstance(cache, tuple):  # older transformers return the legacy tuple format
        from transformers import DynamicCache

        cache = DynamicCache.from_legacy_cache(cache)
    cache.batch_repeat_interleave(group_size)
    return model.generate(input_ids=rep_ids, attention_mask=rep_attn, **{kw: cache},
                          **generate_kwargs)


def _cache_kwarg(model: nn.Module) -> str:
    """``cache`` where transformers names it so (5.x), else ``past_key_values``."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


@contextlib.contextmanager
def _merged_for_decoding(model: nn.Module) -> Iterator[None]:
    """An SVF model samples with its z written into the base weights (one matmul per layer
    and token instead of the factored two), restored bit-exactly afterwards. The merged
    weights compute the same function as the factored path up to float rounding; the
    gradient pass (:func:`rl_loss`) always runs factored. Other models are left as they are.
    """
    from ..svf import merge, svf_layers, unmerge

    layers = svf_layers(model)
    merged_here = False
    if layers and not any(x.merged for x in layers.values()):
        try:
            merge(model)  # checks before changing anything
            merged_here = True
        except ConfigError:  # a per-call expert mixture is in use: sample on the factored path
            pass
    try:
        yield
    finally:
        if merged_here:
            unmerge(model)


def _cut_at_stop(row: list[int], stop: set[int]) -> list[int]:
    """Tokens up to and including the first stop token (generate pads after it)."""
    for i, t in enumerate(row):
        if t in stop:
            return row[: i + 1]
    return row


# ----------------------------------------------------------------------------- RL loss
def rl_loss(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    rollout: Rollout,
    global_samples: int,
    device: torch.device,
    *,
    temperature: float = 1.0,
    kl_coef: float = 0.0,
    base_context=None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Policy-gradient loss with group-normalised advantages and an optional k3 KL term.

    Without a KL term, samples whose advantage is exactly 0 (groups where every sample got
    the same reward) contribute nothing, so they are left out of the forward pass; the
    returned loss then may not require grad (nothing to back-propagate).
    """
    keep = list(range(len(rollout.prompt_ids)))
    if kl_coef == 0:
        keep = [i for i in keep if float(rollout.advantages[i]) != 0.0]
    stats = {"reward_sum": float(rollout.rewards.sum()), "samples": len(rollout.prompt_ids)}
    if not keep:
        return torch.zeros((), device=device), {**stats, "loss_sum": 0.0, "kl_sum": 0.0}
    rows = [(rollout.prompt_ids[i], rollout.completion_ids[i]) for i in keep]
    ids, attn, comp = right_padded(rows, pad_token_id(tokenizer), device)
    mask = comp[:, 1:].float()
    n_tokens = mask.sum(1).clamp(min=1.0)
    logp = token_logprobs(model, ids, attn, temperature)
    seq_logp = (logp * mask).sum(1) / n_tokens
    adv = rollout.advantages[keep].to(device)
    pg_sum = -(adv * seq_logp).sum()
    loss = pg_sum
    kl_sum = torch.zeros((), device=device)
    if kl_coef > 0:
        with torch.no_grad(), base_context() as base:
            base_logp = token_logprobs(base, ids, attn, temperature)
        delta = torch.where(mask.bool(), base_logp - logp, torch.zeros_like(logp))
        k3 = torch.exp(delta) - delta - 1.0
        kl_sum = ((k3 * mask).sum(1) / n_tokens).sum()
        loss = loss + kl_coef * kl_sum
    scaled = loss / global_samples
    return scaled, {**stats, "loss_sum": float(loss.detach()), "kl_sum": float(kl_sum.detach())}
