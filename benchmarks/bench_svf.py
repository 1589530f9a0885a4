"""Speed of SVF experts against the baselines they replace, each measured in the same run.

- merged_vs_base_decode: greedy decode tokens/s of a merged SVF model over the plain base.
- mixed_vs_uniform_batch: time of a factored forward whose 16 rows carry 16 distinct expert
  mixtures over the same batch served with one mixture merged into the weights.
- floor_vs_uniform_batch (context, no target): the same batch through a plain model whose
  targeted layers are replaced by the two dense matmuls an exact per-row forward cannot
  avoid (x Vhᵀ, then Uᵀ) and nothing else: no scaling, no fusion, no mixture set-up. It is
  measured in the same rounds, so it shows how much of mixed_vs_uniform_batch is the
  factored shapes themselves and how much is routekit's per-row machinery.
- svf_vs_lora_step: time of one SVF training step (forward, backward, AdamW) over a PEFT
  LoRA r=16 step on the same modules and batch; trainable-parameter counts of both.

Baseline and candidate runs alternate (order flipped every round) and medians are quoted;
one CPU thread keeps the ratios stable on a shared machine.

    PYTHONPATH=. python benchmarks/bench_svf.py --json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from routekit import mixture
from routekit.svf import (
    SVFConfig,
    SVFExpert,
    get_svf_model,
    merge,
    svf_layers,
    unmerge,
)

TARGETS = {
    "merged_vs_base_decode": (">=", 0.97),
    "mixed_vs_uniform_batch": ("<=", 1.15),
    "svf_vs_lora_step": ("<=", 1.5),
}


def load_base() -> tuple[torch.nn.Module, str]:
    """The world base if it is built (never builds it here), else a random model of its size."""
    try:
        from routekit import world

        model, _ = world.load(build_if_missing=False)
        return model.float().eval(), "world base (routekit.world.load)"
    except Exception:  # noqa: BLE001 - any failure means "no world here": fall back
        torch.manual_seed(0)
        cfg = LlamaConfig(
            vocab_size=48, hidden_size=224, intermediate_size=576, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        )
        return LlamaForCausalLM(cfg).eval(), "random Llama of the world-base size (world not built)"


def rounds_of(fns: dict[str, Callable[[], None]], rounds: int,
              clock: Callable[[], float] = time.thread_time,
              sync: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Seconds of every function in every round; the order rotates each round.

    Time is this thread's CPU time by default: with one torch thread all work runs on it, and
    CPU time does not count the slices other processes take on a shared machine. A GPU bench
    passes ``clock=time.perf_counter`` and a ``sync`` that waits for the device.
    """
    for fn in fns.values():
        fn()  # warm-up
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(rounds):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            if sync is not None:
                sync()
            t0 = clock()
            fns[name]()
            if sync is not None:
                sync()
            times[name].append(clock() - t0)
    return times


def ratio_stats(tb: list[float], tc: list[float]) -> dict:
    """Median seconds of each, median of the per-round ratios, and the ratio of the medians."""
    mb, mc = statistics.median(tb), statistics.median(tc)
    per_round = statistics.median(c / b for b, c in zip(tb, tc))
    return {"baseline_s": mb, "candidate_s": mc, "ratio": per_round, "ratio_of_medians": mc / mb,
            "rounds": len(tb)}


def paired(baseline: Callable[[], None], candidate: Callable[[], None], rounds: int) -> dict:
    """``ratio_stats`` of a candidate against a baseline, alternating which runs first."""
    t = rounds_of({"baseline": baseline, "candidate": candidate}, rounds)
    return ratio_stats(t["baseline"], t["candidate"])


class _TwoMatmuls(torch.nn.Module):
    """x Vhᵀ then Uᵀ as two plain linear layers: the matmul shapes of the factored path."""

    def __init__(self, layer: torch.nn.Module) -> None:
        super().__init__()
        out_f, r = layer.svf_U.shape
        self.vh = torch.nn.Linear(layer.svf_Vh.shape[1], r, bias=False)
        self.u = torch.nn.Linear(r, out_f, bias=False)
        with torch.no_grad():
            self.vh.weight.copy_(layer.svf_Vh)
            self.u.weight.copy_(layer.svf_U * layer.svf_S)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.u(self.vh(x))


def floor_model(base: torch.nn.Module, svf: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``base`` whose SVF-targeted layers are ``_TwoMatmuls`` (same function at z=1)."""
    floor = copy.deepcopy(base)
    for name, layer in svf_layers(svf).items():
        parent, _, child = name.rpartition(".")
        setattr(floor.get_submodule(parent), child, _TwoMatmuls(layer))
    return floor.eval()


def random_experts(model: torch.nn.Module, k: int) -> list[SVFExpert]:
    g = torch.Generator().manual_seed(1)
    return [
        SVFExpert(
            {n: 1 + 0.2 * torch.randn(m.rank, generator=g) for n, m in svf_layers(model).items()},
            name=f"e{i}", target_modules=model.svf_config.target_modules,
            base_fingerprint=model.svf_base_fingerprint,
        )
        for i in range(k)
    ]


def bench_decode(base, svf, experts, batch, prompt_len, new_tokens, rounds) -> dict:
    ids = torch.randint(0, base.config.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(2))
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    merge(svf, experts[0])

    def run(model):
        def f():
            with torch.no_grad():
                model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
        return f

    r = paired(run(base), run(svf), rounds)
    unmerge(svf)
    tokens = batch * new_tokens
    # Tokens/s over tokens/s is the inverse of the time ratio.
    return {"base_tokens_per_s": tokens / r["baseline_s"], "merged_tokens_per_s": tokens / r["candidate_s"],
            "ratio": 1 / r["ratio"], "ratio_of_medians": 1 / r["ratio_of_medians"], "rounds": rounds}


def bench_mixed(base, svf, experts, batch, seq, rounds) -> dict:
    ids = torch.randint(0, svf.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(3))
    alpha = torch.softmax(torch.randn(batch, len(experts), generator=torch.Generator().manual_seed(4)), -1)
    assert len({tuple(a.tolist()) for a in alpha}) == batch  # 16 distinct mixtures
    # One mixture is served fastest merged; merging happens once per mixture, not per batch.
    merged = get_svf_model(copy.deepcopy(base), svf.svf_config)
    merge(merged, experts[0])

    def uniform():
        with torch.no_grad():
            merged(ids)

    def mixed():
        # Setting the per-row z is part of serving a mixed batch, so it is timed too.
        with torch.no_grad(), mixture(svf, experts, alpha):
            svf(ids)

    floor = floor_model(base, svf)

    def two_matmuls():
        with torch.no_grad():
            floor(ids)

    t = rounds_of({"uniform": uniform, "mixed": mixed, "floor": two_matmuls}, rounds)
    r, f = ratio_stats(t["uniform"], t["mixed"]), ratio_stats(t["uniform"], t["floor"])
    return {"uniform_merged_s": r["baseline_s"], "mixed_factored_s": r["candidate_s"],
            "floor_two_matmuls_s": f["candidate_s"], "ratio": r["ratio"],
            "ratio_of_medians": r["ratio_of_medians"], "floor_ratio": f["ratio"],
            "mixed_over_floor": statistics.median(m / fl for m, fl in zip(t["mixed"], t["floor"])),
            "rounds": rounds}


def linear_flop_ratio(svf) -> float:
    """Multiply-adds per token of all linear layers, factored over merged: the floor a
    factored forward cannot beat, since exact per-row z needs x Vhᵀ and then Uᵀ."""
    merged = factored = 0
    for name, m in svf.named_modules():
        if isinstance(m, torch.nn.Linear) and ".base_layer" not in name:
            merged += m.in_features * m.out_features
            factored += m.in_features * m.out_features
    for m in svf_layers(svf).values():
        out_f, r = m.svf_U.shape
        in_f = m.svf_Vh.shape[1]
        merged += in_f * out_f
        factored += r * (in_f + out_f)
    return factored / merged


def bench_step(base, svf, batch, seq, rounds) -> dict:
    lora = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["gate_proj", "up_proj", "down_proj"]),
    )
    ids = torch.randint(0, base.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(5))

    def stepper(model):
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)

        def step():
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    r = paired(stepper(lora), stepper(svf), rounds)
    svf.eval()
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    return {"lora_step_s": r["baseline_s"], "svf_step_s": r["candidate_s"], "ratio": r["ratio"],
            "ratio_of_medians": r["ratio_of_medians"],
            "rounds": rounds, "svf_trainable_params": count(svf), "lora_trainable_params": count(lora)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print only the JSON object")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_svf.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    base, source = load_base()
    svf = get_svf_model(copy.deepcopy(base), SVFConfig(target_modules="mlp"))
    experts = random_experts(svf, 4)
    decode = bench_decode(base, svf, experts, batch=16, prompt_len=16, new_tokens=32, rounds=args.rounds)
    mixed = bench_mixed(base, svf, experts, batch=16, seq=64, rounds=args.rounds)
    step = bench_step(base, svf, batch=16, seq=64, rounds=max(10, args.rounds // 2))
    result = {
        "merged_vs_base_decode": round(decode["ratio"], 4),
        "mixed_vs_uniform_batch": round(mixed["ratio"], 4),
        "svf_vs_lora_step": round(step["ratio"], 4),
        "svf_trainable_params": step["svf_trainable_params"],
        "lora_trainable_params": step["lora_trainable_params"],
        "floor_vs_uniform_batch": round(mixed["floor_ratio"], 4),
        "mixed_over_floor": round(mixed["mixed_over_floor"], 4),
        "mixed_linear_flop_ratio": round(linear_flop_ratio(svf), 4),
        "params_ratio": round(step["lora_trainable_params"] / step["svf_trainable_params"], 1),
        "model": source,
        "target_modules": "mlp",
        "torch_threads": args.threads,
        "timer": "time.thread_time (CPU time of the one compute thread); ratio = median of per-round ratios",
        "details": {"decode": decode, "mixed": mixed, "step": step},
        "targets": {k: f"{op} {v}" for k, (op, v) in TARGETS.items()},
        "met": {k: (result_v >= v if op == ">=" else result_v <= v)
                for k, (op, v) in TARGETS.items()
                for result_v in [{"merged_vs_base_decode": decode["ratio"],
                                  "mixed_vs_uniform_batch": mixed["ratio"],
                                  "svf_vs_lora_step": step["ratio"]}[k]]},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    from routekit.io import atomic_write_bytes  # a killed run leaves the old file
    atomic_write_bytes(args.out, (json.dumps(result, indent=2) + "\n").encode())
    if args.json:
        print(json.dumps(result))
    else:
        for k in TARGETS:
            print(f"{k:26s} {result[k]:.3f}   (target {result['targets'][k]}, met={result['met'][k]})")
        print(f"{'floor_vs_uniform_batch':26s} {result['floor_vs_uniform_batch']:.3f}   "
              f"(two dense matmuls per targeted layer; mixed/floor {result['mixed_over_floor']:.3f})")
        print(f"trainable params: svf {result['svf_trainable_params']}, lora {result['lora_trainable_params']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
