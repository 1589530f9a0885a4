"""Proxy-tuning decode speed: the cached processor against its ideal and against no cache.

* ``cached_vs_ideal``: proxy decode tokens/s over 1 / (t_base + t_tuned + t_untuned), each t
  being that model's own cached greedy per-token time from ``generate`` (same batch, same
  length), measured in this run. Target >= 0.90.
* ``concurrent_vs_ideal``: the same, with the proxies' forward beside the base's
  (``concurrent=True``: a forked worker on a CPU with >= 2 cores, a CUDA stream on GPU); the
  ideal is still the one-at-a-time sum. ``auto_mode``: what ``concurrent=None`` picks now. Target >= 1.3. ``thread_vs_ideal``: a worker thread
  on CPU (the GIL bounds it for models this small). ``outputs_identical``: every path's
  tokens and scores equal the sequential path's.
* ``cached_vs_uncached``: the same proxy decode against re-running the full sequence through
  all three models at every step (DExperts' original loop), at 128 new tokens. Target >= 3.

Medians over interleaved repetitions. Models: the world's base and proxy when
``routekit.world`` provides ``load``/``load_proxy`` (``--models auto``/``world``), else random
Llama models of the world's sizes (``--models random``; speed does not depend on the weights).

    python benchmarks/bench_proxy.py --json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, LogitsProcessorList

from routekit.errors import RoutekitError
from routekit.io import atomic_write_json
from routekit.proxy import ProxyExpert, ProxyLogitsProcessor
from routekit.proxy.concurrent import resolve_mode

RESULTS = Path(__file__).parent / "results" / "bench_proxy.json"


def random_models(seed: int = 0) -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    """Random Llama models with the world's default shapes (base 224/576/4/4, proxy 96/256/2/2)."""
    torch.manual_seed(seed)

    def make(hidden: int, inter: int, layers: int, heads: int) -> LlamaForCausalLM:
        cfg = LlamaConfig(vocab_size=48, hidden_size=hidden, intermediate_size=inter,
                          num_hidden_layers=layers, num_attention_heads=heads,
                          num_key_value_heads=heads, max_position_embeddings=512)
        return LlamaForCausalLM(cfg).eval()

    return make(224, 576, 4, 4), make(96, 256, 2, 2)


def load_models(which: str) -> tuple[torch.nn.Module, torch.nn.Module, str]:
    """World models (``auto``: only if already built; ``world``: build if missing), else random."""
    if which in ("auto", "world"):
        try:
            from routekit import world

            build = which == "world"
            base, _tok = world.load(build_if_missing=build)
            proxy = world.load_proxy(build_if_missing=build)
            proxy = proxy[0] if isinstance(proxy, tuple) else proxy
            return base.eval(), proxy.eval(), "world"
        except (ImportError, AttributeError, TypeError, RoutekitError):
            if which == "world":
                raise
    base, proxy = random_models()
    return base, proxy, "random (world sizes)"


def perturbed_copy(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """A 'tuned' twin: same shapes, different weights (speed is all that matters here)."""
    tuned = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return tuned


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def timed_generate(model, ids, mask, gen_cfg, procs=(), concurrent=None) -> float:
    """Seconds for one ``generate``; a ProxyLogitsProcessor (``procs[0]``, if any) runs in
    ``concurrent`` mode, inside ``beside(model)``."""
    _sync(ids.device)
    t0 = time.perf_counter()
    with procs[0].beside(model) if procs else contextlib.nullcontext():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg,
                             logits_processor=LogitsProcessorList(list(procs)))
    _sync(ids.device)
    dt = time.perf_counter() - t0
    assert out.shape[1] == ids.shape[1] + gen_cfg.max_new_tokens, "generation stopped early"
    return dt


@torch.inference_mode()
def proxy_outputs(base, expert, ids, mask, gen_cfg, concurrent) -> tuple[torch.Tensor, list, str]:
    """Tokens, per-step scores and the mode a proxy decode ran in."""
    proc = ProxyLogitsProcessor(expert, alpha=1.0, attention_mask=mask, concurrent=concurrent)
    with proc.beside(base):
        out = base.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg,
                            logits_processor=LogitsProcessorList([proc]),
                            output_scores=True, return_dict_in_generate=True)
    return out.sequences, list(out.scores), str(proc.mode)


@torch.inference_mode()
def timed_uncached(base, tuned, untuned, ids, mask, new_tokens: int, alpha: float = 1.0) -> float:
    """DExperts' way: every step re-runs the whole sequence through all three models."""
    _sync(ids.device)
    t0 = time.perf_counter()
    for _ in range(new_tokens):
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        lp = [F.log_softmax(m(input_ids=ids, attention_mask=mask, position_ids=pos,
                              use_cache=False).logits[:, -1].float(), dim=-1)
              for m in (base, tuned, untuned)]
        nxt = (lp[0] + alpha * (lp[1] - lp[2])).argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
    _sync(ids.device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    ap.add_argument("--models", choices=["auto", "world", "random"], default="auto")
    ap.add_argument("--batch", type=int, default=8, help="rows per generate call")
    ap.add_argument("--prompt-len", type=int, default=16, help="prompt tokens per row")
    ap.add_argument("--new-tokens", type=int, default=128, help="tokens generated per row")
    ap.add_argument("--reps", type=int, default=7, help="repetitions of the cached runs")
    ap.add_argument("--uncached-reps", type=int, default=3, help="repetitions of the slow loop")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: tiny models gain nothing from more on a shared CPU)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (timings are synchronised)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    base, untuned, source = load_models(args.models)
    tuned = perturbed_copy(untuned)
    device = torch.device(args.device)
    base, tuned, untuned = (m.to(device) for m in (base, tuned, untuned))
    expert = ProxyExpert(tuned, untuned, "bench")
    vocab = base.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (args.batch, args.prompt_len), generator=g).to(device)
    mask = torch.ones_like(ids)
    # No stop token: every run generates exactly --new-tokens tokens.
    gen_cfg = GenerationConfig(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, use_cache=True,
                               eos_token_id=None, pad_token_id=0)

    runs = {
        "base": lambda: timed_generate(base, ids, mask, gen_cfg),
        "tuned": lambda: timed_generate(tuned, ids, mask, gen_cfg),
        "untuned": lambda: timed_generate(untuned, ids, mask, gen_cfg),
        "proxy_cached": lambda: timed_generate(base, ids, mask, gen_cfg, [ProxyLogitsProcessor(
            expert, alpha=1.0, attention_mask=mask, concurrent=False)]),
        "proxy_concurrent": lambda: timed_generate(base, ids, mask, gen_cfg, [ProxyLogitsProcessor(
            expert, alpha=1.0, attention_mask=mask, concurrent=True)]),
        "proxy_thread": lambda: timed_generate(base, ids, mask, gen_cfg, [ProxyLogitsProcessor(
            expert, alpha=1.0, attention_mask=mask, concurrent="thread")]),
    }
    ref_ids, ref_scores, _ = proxy_outputs(base, expert, ids, mask, gen_cfg, False)
    identical, modes = True, {}
    for name, mode in (("concurrent", True), ("thread", "thread")):
        got_ids, got_scores, modes[name] = proxy_outputs(base, expert, ids, mask, gen_cfg, mode)
        identical &= torch.equal(got_ids, ref_ids) and all(
            torch.equal(a, b) for a, b in zip(got_scores, ref_scores))
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in [*runs, "proxy_uncached"]}
    names = list(runs)
    for rep in range(args.reps):
        # Rotate the order each repetition so no run always follows the same neighbour.
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            times[name].append(runs[name]())
        if rep < args.uncached_reps:
            times["proxy_uncached"].append(
                timed_uncached(base, tuned, untuned, ids, mask, args.new_tokens))
    per_token = {k: statistics.median(v) / args.new_tokens for k, v in times.items()}
    ideal = per_token["base"] + per_token["tuned"] + per_token["untuned"]
    # The same ratio within each repetition shows how much the shared machine moved it.
    def per_rep(run: str) -> list[float]:
        return sorted(
            round((times["base"][r] + times["tuned"][r] + times["untuned"][r]) / times[run][r], 3)
            for r in range(args.reps))

    result = {
        "cached_vs_ideal": round(ideal / per_token["proxy_cached"], 3),
        "cached_vs_ideal_per_rep": per_rep("proxy_cached"),
        "concurrent_vs_ideal": round(ideal / per_token["proxy_concurrent"], 3),
        "concurrent_vs_ideal_per_rep": per_rep("proxy_concurrent"),
        "concurrent_mode": modes["concurrent"],
        # What concurrent=None would choose now (sequential when no core is idle).
        "auto_mode": resolve_mode(None, [device]),
        "thread_vs_ideal": round(ideal / per_token["proxy_thread"], 3),
        "concurrent_vs_cached": round(per_token["proxy_cached"] / per_token["proxy_concurrent"], 3),
        "outputs_identical": identical,
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "cores": os.cpu_count(),
        "cached_vs_uncached": round(per_token["proxy_uncached"] / per_token["proxy_cached"], 3),
        "ms_per_token": {k: round(v * 1e3, 4) for k, v in per_token.items()},
        "proxy_tokens_per_s": round(args.batch / per_token["proxy_cached"], 1),
        "ideal_tokens_per_s": round(args.batch / ideal, 1),
        "targets": {"cached_vs_ideal": 0.90, "concurrent_vs_ideal": 1.3,
                    "cached_vs_uncached": 3.0},
        "setup": {
            "models": source,
            "base_params": sum(p.numel() for p in base.parameters()),
            "proxy_params": sum(p.numel() for p in untuned.parameters()),
            "batch": args.batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
            "reps": args.reps, "uncached_reps": args.uncached_reps, "threads": args.threads,
            "device": str(device), "torch": torch.__version__,
        },
    }
    atomic_write_json(args.out, result)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"cached_vs_ideal    {result['cached_vs_ideal']:.3f}  (target >= 0.90)")
        print(f"concurrent_vs_ideal {result['concurrent_vs_ideal']:.3f}  (target >= 1.3; "
              f"{result['concurrent_mode']}; thread {result['thread_vs_ideal']:.3f}; outputs "
              f"identical: {result['outputs_identical']}; load {result['load_avg_1min']})")
        print(f"cached_vs_uncached {result['cached_vs_uncached']:.3f}  (target >= 3)")
        for k, v in result["ms_per_token"].items():
            print(f"  {k:15s} {v:8.3f} ms/token-step")


if __name__ == "__main__":
    main()
