"""routekit's RL loop against TRL's GRPOTrainer on the same model, task and work per step.

Both train an SVF model (MLP z vectors) of the world base's size by GRPO: 16 prompts x 8
sampled completions of up to 12 tokens per step (reward: the parity of the completion's character codes),
lr 3e-3, no KL, weight decay 0, one CPU thread; TRL with use_cpu, bf16 off, beta 0. Per-step wall times exclude the first (warm-up) step; medians are quoted.

- routekit_vs_trl_step: routekit's step time (micro_batch_size = the whole batch, as TRL's
  one forward over 128 completions) over TRL's.
- routekit_mb4_vs_trl_step: the same with routekit's default micro_batch_size 4.
- rl_step_over_floor: routekit's RL step (default micro_batch_size) over the floor, the least
  the same work needs (``floors.rl_floor_step``): sampling on the plain model (same weights,
  no wrapper, one prefill per distinct prompt), then one forward and backward over the
  completions that carry a gradient, on the factored SVF path the loss uses. Medians of
  interleaved rounds (floor step, routekit step), after one warm-up round, so both see the
  same machine load. Target <= 1.3, and >= 0.9 (a step that beats its floor means the
  floor does other work).
  ``--skip-trl`` measures only this.

    pip install -e ".[bench]"; PYTHONPATH=. python benchmarks/bench_trainer.py --json  # bench extra: trl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

from routekit.svf import SVFConfig, get_svf_model
from routekit.tasks.base import Example, Task
from routekit.training import TrainConfig, train
from routekit.world.config import WorldConfig
from routekit.world.tokenizer import build_tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from floors import rl_floor_step  # noqa: E402 - a sibling script

PROMPTS, GROUP, NEW_TOKENS, LR = 16, 8, 12, 3e-3


def base_model() -> tuple[torch.nn.Module, str]:
    """The world base if it is built (never builds it here), else a random model of its size."""
    try:
        from routekit import world

        model, _ = world.load(build_if_missing=False)
        return model.float().eval(), "world base"
    except Exception:  # noqa: BLE001 - no world here: a random model of the same shape
        torch.manual_seed(0)
        size = WorldConfig().base
        cfg = LlamaConfig(
            vocab_size=len(build_tokenizer()), hidden_size=size.hidden_size,
            intermediate_size=size.intermediate_size, num_hidden_layers=size.num_hidden_layers,
            num_attention_heads=size.num_attention_heads,
            num_key_value_heads=size.num_attention_heads, max_position_embeddings=256,
            bos_token_id=1, eos_token_id=2, pad_token_id=0,
        )
        return LlamaForCausalLM(cfg).eval(), "random Llama of the world-base size"


def task() -> Task:
    words = ["abc", "dog", "cat", "xyz", "qrs", "mno", "hello", "tree", "sun", "moon", "fig", "kiwi",
             "lime", "pear", "plum", "yam"]
    ex = [Example(f"backwards {w}:", w[::-1]) for w in words]
    # A reward about half of any model's sampled completions earn (the parity of their
    # characters' codes), so advantages are not all zero and every step does its backward
    # pass; the world base, once built, never starts a completion with a-h (the reward
    # before), so its steps only sampled.
    return Task("parity", {"train": ex, "test": ex},
                checker=lambda c, r: sum(map(ord, c)) % 2 == 0)


def svf_model(cache: str) -> torch.nn.Module:
    model, _ = base_model()
    return get_svf_model(model, SVFConfig(target_modules="mlp", cache_dir=cache))


def time_routekit(steps: int, micro: int, cache: str) -> list[float]:
    tok = build_tokenizer()
    res = train(
        svf_model(cache), tok, task(), objective="rl", parameterization="svf", steps=steps,
        batch_size=PROMPTS, group_size=GROUP, micro_batch_size=micro, max_new_tokens=NEW_TOKENS,
        lr=LR, grad_clip=None, checkpoint_every=0, progress=False,
    )
    return [r["seconds"] for r in res.history[1:]]


class _StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._t = 0.0

    def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
        self.times.append(time.perf_counter() - self._t)


def time_trl(steps: int, cache: str) -> list[float]:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    tok = build_tokenizer()
    t = task()
    data = Dataset.from_list([{"prompt": e.prompt, "reference": e.reference} for e in t.examples("train")])

    def reward(completions, reference, **kw):  # noqa: ANN001
        return t.reward(completions, reference)

    timer = _StepTimer()
    with tempfile.TemporaryDirectory() as out:
        cfg = GRPOConfig(
            output_dir=out, per_device_train_batch_size=PROMPTS * GROUP, num_generations=GROUP,
            max_completion_length=NEW_TOKENS, max_steps=steps, learning_rate=LR,
            weight_decay=0.0, beta=0.0, use_cpu=True, bf16=False, report_to=[],
            logging_steps=1, save_strategy="no", gradient_checkpointing=False, seed=0,
            temperature=1.0, max_grad_norm=1e9, lr_scheduler_type="constant",
        )
        trainer = GRPOTrainer(
            model=svf_model(cache), reward_funcs=reward, args=cfg, train_dataset=data,
            processing_class=tok, callbacks=[timer],
        )
        trainer.train()
        trainer.remove_callback(timer)
    return timer.times[1:]


def time_against_floor(rounds: int, micro: int, cache: str) -> tuple[list[float], list[float]]:
    """Interleaved rounds of (floor step, routekit RL step) on the same SVF model, so both
    see the same machine load; the first round is a warm-up and is dropped."""
    tok, t = build_tokenizer(), task()
    plain, _ = base_model()  # the same weights as the SVF model's at z = 1, no wrapper
    model = svf_model(cache)
    examples = list(t.examples("train"))[:PROMPTS]
    floor, routekit = [], []
    for r in range(rounds + 1):
        f = rl_floor_step(plain, model, tok, t, examples, GROUP, NEW_TOKENS)
        res = train(
            model, tok, t, objective="rl", parameterization="svf", steps=1, seed=r,
            batch_size=PROMPTS, group_size=GROUP, micro_batch_size=micro,
            max_new_tokens=NEW_TOKENS, lr=LR, grad_clip=None, checkpoint_every=0,
            progress=False,
        )
        if r:
            floor.append(f)
            routekit.append(res.history[0]["seconds"])
    return floor, routekit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds against the floor")
    parser.add_argument("--skip-trl", action="store_true", help="only the floor comparison")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as cache:
        _, what = base_model()
        result["model"] = what
        result["work_per_step"] = (
            f"{PROMPTS} prompts x {GROUP} completions, <= {NEW_TOKENS} new tokens, SVF on MLP"
        )
        if not args.skip_trl:
            trl = statistics.median(time_trl(args.steps, cache))
            rk = statistics.median(time_routekit(args.steps, PROMPTS, cache))
            rk4 = statistics.median(time_routekit(args.steps, 4, cache))
            result.update({
                "trl_step_s": round(trl, 4),
                "routekit_step_s": round(rk, 4),
                "routekit_mb4_step_s": round(rk4, 4),
                "routekit_vs_trl_step": round(rk / trl, 3),
                "routekit_mb4_vs_trl_step": round(rk4 / trl, 3),
                "steps_timed": args.steps - 1,
            })
        floor, step = time_against_floor(args.rounds, TrainConfig().micro_batch_size, cache)
        result.update({
            "floor_step_s": round(statistics.median(floor), 4),
            "rl_step_s": round(statistics.median(step), 4),
            "rl_step_over_floor": round(statistics.median(step) / statistics.median(floor), 3),
            "rl_step_over_floor_per_round": round(
                statistics.median(s / f for s, f in zip(step, floor)), 3),
            "rl_step_over_floor_target": "<= 1.3 and >= 0.9",
            "floor_rounds": args.rounds,
        })
    result["torch_threads"] = 1
    result["load_avg_1min_after"] = round(os.getloadavg()[0], 2)
    out = Path(__file__).parent / "results" / "bench_trainer.json"
    out.parent.mkdir(exist_ok=True)
    from routekit.io import atomic_write_bytes  # a killed run leaves the old file
    atomic_write_bytes(out, (json.dumps(result, indent=2) + "\n").encode())
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:28s} {v}")


if __name__ == "__main__":
    sys.exit(main())
