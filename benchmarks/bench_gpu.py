"""One prepared script for a lent GPU (issue 20, item 5): speed ratios on smollm2 and a 1B
Llama layout with random weights, and ``routekit diff --device cuda``, in under 8 minutes,
written as one JSON file. Every ratio's baseline is measured in the same run.

Rows, for each model (wall time with the device synchronised; medians of per-round ratios,
the order rotating every round):
- ``merged_decode_over_base``: greedy decode tokens/s of the SVF model with an expert merged
  over the plain base (target >= 0.97);
- ``mixed_over_floor``: a factored forward whose rows carry distinct expert mixtures over
  the exact floor, two plain matmuls per targeted layer (x Vhᵀ, then Uᵀ; target <= 1.10);
- ``proxy_decode_over_base``: proxy decode (one tuned/untuned pair of small random models
  with the base's vocabulary, ``concurrent=None``: a CUDA stream on GPU) over the base's own
  decode; ``proxy_sequential_over_base`` the same with ``concurrent=False``;
- ``svf_step_over_lora_step``: one SVF training step (forward, backward, AdamW) over a PEFT
  LoRA r16 step on the same MLP modules and batch (target <= 1.0).
And once: ``diff``: ``routekit diff BASE TUNED --rank full --device DEV`` on bench_diff.py's
planted 1B pair (``--small``: its tiny pair), seconds, against ``--rank skip`` (reading and
comparing only).

A time budget (``--budget-s``, default 420) skips what is left once spent; the JSON says
which rows were skipped and why. Models that cannot load (smollm2 not installed) are
skipped the same way.

    python benchmarks/bench_gpu.py --device cuda --json             # on the GPU machine
    python benchmarks/bench_gpu.py --device cpu --small --json      # tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).parent))
from bench_svf import floor_model, random_experts, rounds_of  # noqa: E402 - sibling scripts

from routekit import mixture  # noqa: E402
from routekit.proxy import ProxyExpert, ProxyLogitsProcessor  # noqa: E402
from routekit.svf import SVFConfig, get_svf_model, merge, unmerge  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "bench_gpu.json"
REPO = Path(__file__).resolve().parents[1]
LAYOUTS = {
    # Llama-3.2-1B's layout (1.24B parameters), random weights.
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
    "tiny-a": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, vocab_size=96),
    "tiny-b": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=4, vocab_size=80),
}
TARGETS = {"merged_decode_over_base": ">= 0.97", "mixed_over_floor": "<= 1.10",
           "svf_step_over_lora_step": "<= 1.0"}


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def timed_rounds(fns: dict[str, Callable[[], None]], rounds: int,
                 device: torch.device) -> dict[str, list[float]]:
    """Wall seconds of every function in every round (device synchronised), order rotating."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return rounds_of(fns, rounds, clock=time.perf_counter, sync=sync)


def ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    return round(statistics.median(a / b for a, b in zip(times[num], times[den])), 4)


def random_llama(layout: dict, device: torch.device, dtype: torch.dtype, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(**layout, max_position_embeddings=2048, pad_token_id=0, bos_token_id=1,
                      eos_token_id=None, tie_word_embeddings=False)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.eval()


def load_models(args: argparse.Namespace, device: torch.device,
                dtype: torch.dtype) -> list[tuple[str, torch.nn.Module | str]]:
    """(name, model), or (name, why it was skipped)."""
    out: list[tuple[str, torch.nn.Module | str]] = []
    if args.small:
        return [(n, random_llama(LAYOUTS[n], device, dtype)) for n in ("tiny-a", "tiny-b")]
    try:
        import routekit as rk

        base, _tok = rk.load_model("smollm2")
        base.generation_config.eos_token_id = None
        out.append(("smollm2", base.to(device=device, dtype=dtype).eval()))
    except Exception as e:  # noqa: BLE001 - not installed on this machine: say so, go on
        out.append(("smollm2", f"skipped: {type(e).__name__}: {e}"[:300]))
    out.append(("llama-1b", random_llama(LAYOUTS["llama-1b"], device, dtype)))
    return out


def bench_model(base: torch.nn.Module, args: argparse.Namespace, device: torch.device,
                budget: Budget, cache: str) -> dict[str, object]:
    rounds, vocab = args.rounds, base.config.vocab_size
    g = torch.Generator().manual_seed(0)
    row: dict[str, object] = {"params": sum(p.numel() for p in base.parameters())}
    t0 = time.perf_counter()
    svf = get_svf_model(copy.deepcopy(base), SVFConfig(target_modules="mlp", cache_dir=cache))
    row["svf_wrap_s"] = round(time.perf_counter() - t0, 2)
    experts = random_experts(svf, 4)
    b, p, n = args.batch, args.prompt_len, args.new_tokens
    ids = torch.randint(4, vocab, (b, p), generator=g).to(device)
    kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    def decode(model: torch.nn.Module, procs: list | None = None) -> Callable[[], None]:
        def f() -> None:
            with torch.no_grad():
                if procs is None:
                    model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
                    return
                proc = procs[0]()
                with proc.beside(model):
                    model.generate(ids, attention_mask=torch.ones_like(ids),
                                   logits_processor=[proc], **kw)
        return f

    def skip(name: str) -> bool:
        if budget.left() > 0:
            return False
        row[name] = "skipped: time budget spent"
        return True

    if not skip("merged_decode_over_base"):
        merge(svf, experts[0])
        t = timed_rounds({"base": decode(base), "merged": decode(svf)}, rounds, device)
        unmerge(svf)
        # tokens/s over tokens/s is the inverse of the time ratio
        row["merged_decode_over_base"] = round(1 / ratio(t, "merged", "base"), 4)
    if not skip("mixed_over_floor"):
        rows = args.mix_rows
        mix_ids = torch.randint(4, vocab, (rows, args.seq), generator=g).to(device)
        alpha = torch.softmax(torch.randn(rows, len(experts), generator=g), -1)
        floor = floor_model(base, svf)

        def mixed() -> None:
            with torch.no_grad(), mixture(svf, experts, alpha):
                svf(mix_ids)

        def exact_floor() -> None:
            with torch.no_grad():
                floor(mix_ids)

        t = timed_rounds({"mixed": mixed, "floor": exact_floor}, rounds, device)
        row["mixed_over_floor"] = ratio(t, "mixed", "floor")
        row["mixtures"] = rows
        del floor
    if not skip("proxy_decode_over_base"):
        small = dict(hidden_size=max(32, base.config.hidden_size // 8),
                     intermediate_size=max(64, base.config.intermediate_size // 8),
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                     vocab_size=vocab)
        dtype = next(base.parameters()).dtype
        expert = ProxyExpert(random_llama(small, device, dtype, 1), random_llama(small, device, dtype, 2),
                             "bench")

        def proc(mode: object) -> list:
            return [lambda: ProxyLogitsProcessor(expert, alpha=1.0, pad_token_id=0,
                                                 attention_mask=torch.ones_like(ids),
                                                 concurrent=mode)]

        t = timed_rounds({"base": decode(base), "proxy": decode(base, proc(None)),
                          "sequential": decode(base, proc(False))}, rounds, device)
        row["proxy_decode_over_base"] = ratio(t, "proxy", "base")
        row["proxy_sequential_over_base"] = ratio(t, "sequential", "base")
        row["proxy_params"] = sum(q.numel() for q in expert.tuned.parameters())
        del expert
    if not skip("svf_step_over_lora_step"):
        lora = get_peft_model(copy.deepcopy(base), LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["gate_proj", "up_proj", "down_proj"]))
        step_ids = torch.randint(4, vocab, (args.step_batch, args.seq), generator=g).to(device)

        def stepper(model: torch.nn.Module) -> Callable[[], None]:
            model.train()
            opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-3,
                                    weight_decay=0.0)

            def step() -> None:
                model(input_ids=step_ids, labels=step_ids).loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            return step

        t = timed_rounds({"lora": stepper(lora), "svf": stepper(svf)}, rounds, device)
        row["svf_step_over_lora_step"] = ratio(t, "svf", "lora")
        svf.eval()
        del lora
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def bench_diff(args: argparse.Namespace, device: torch.device, budget: Budget) -> dict[str, object]:
    """``routekit diff`` on bench_diff.py's planted pair, in a child process."""
    from bench_diff import build_pair

    size = "tiny" if args.small else "1b"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory() as root:
        base, tuned, n_params, build_s = build_pair(Path(root), size, torch.bfloat16)
        out: dict[str, object] = {"pair": size, "params": n_params, "build_s": round(build_s, 1)}
        for rank in ("skip", "full"):
            if budget.left() <= 0:
                out[f"rank_{rank}_s"] = "skipped: time budget spent"
                continue
            cmd = [sys.executable, "-m", "routekit.cli", "diff", str(base), str(tuned),
                   "--rank", rank, "--device", device.type, "--json", "--no-progress"]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                  timeout=max(30.0, budget.left() + 60))
            out[f"rank_{rank}_s"] = round(time.perf_counter() - t0, 2)
            if proc.returncode:
                out[f"rank_{rank}_error"] = proc.stderr[-500:]
        if isinstance(out.get("rank_full_s"), float) and isinstance(out.get("rank_skip_s"), float):
            out["rank_full_over_skip"] = round(out["rank_full_s"] / out["rank_skip_s"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda or cpu")
    ap.add_argument("--small", action="store_true", help="tiny random models (a quick check)")
    ap.add_argument("--json", action="store_true", help="print the JSON result")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                    help="model dtype (default: bfloat16 on cuda, float32 on cpu)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds per row (5; --small 2)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip what is left after this")
    ap.add_argument("--skip-diff", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    args.rounds = args.rounds or (2 if args.small else 5)
    sizes = (dict(batch=2, prompt_len=4, new_tokens=4, seq=8, mix_rows=4, step_batch=2) if args.small
             else dict(batch=8, prompt_len=32, new_tokens=32, seq=128, mix_rows=16, step_batch=8))
    for k, v in sizes.items():
        setattr(args, k, v)
    budget = Budget(args.budget_s)
    t_start = time.perf_counter()
    result: dict[str, object] = {
        "device": str(device), "dtype": str(dtype).removeprefix("torch."), "small": args.small,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "rounds": args.rounds, "sizes": sizes, "targets": TARGETS,
        "models": {},
    }
    with tempfile.TemporaryDirectory() as cache:
        for name, model in load_models(args, device, dtype):
            if isinstance(model, str):
                result["models"][name] = model
                continue
            if budget.left() <= 0:
                result["models"][name] = "skipped: time budget spent"
                continue
            result["models"][name] = bench_model(model, args, device, budget, cache)
            del model
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
    if not args.skip_diff:
        result["diff"] = bench_diff(args, device, budget)
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    with contextlib.suppress(OSError):
        result["load_avg_1min"] = round(os.getloadavg()[0], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from routekit.io import atomic_write_bytes  # a killed run leaves the old file
    atomic_write_bytes(args.out, (json.dumps(result, indent=2) + "\n").encode())
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
