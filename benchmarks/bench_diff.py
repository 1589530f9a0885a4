"""Benchmark ``routekit diff`` on two locally made ~1B-parameter checkpoints.

    pip install -e ".[bench]"                         # the bench extra: psutil
    python benchmarks/bench_diff.py --json            # the 1B pair (about 4.2 GB of disk, bf16)
    python benchmarks/bench_diff.py --small --json    # a ~20M pair, for a quick check
    python benchmarks/bench_diff.py --keep --dir D    # keep (and later reuse) the checkpoints

What it does:

1. Builds, once (cached under ``--dir``, default a folder in the system temp dir), a base
   checkpoint from a random LlamaConfig (1B: hidden 2048, intermediate 5632, 18 layers, 32 heads,
   vocab 32000, untied head = 1.06B parameters) and a tuned copy with planted changes. Tensors
   are generated and written shard by shard with ``safetensors`` directly; no model object and
   no 1B-parameter fp32 copy is ever materialised. Storage dtype: bfloat16 (``--dtype``).
2. Runs ``routekit diff BASE TUNED --rank skip --json`` in a subprocess (``routekit.cli.main``, the
   dispatcher the ``routekit`` console script runs) and takes its
   peak resident memory (VmHWM in /proc/self/status at exit) minus its own resident memory
   after importing the command's modules, torch and safetensors. Cross-checks: the peak of a
   child that only imports them, and the child's RSS polled with psutil.
3. Runs it again with ``--rank full`` (or, with ``--rank-sample REGEX``, ranks only the matching
   tensors and extrapolates the full time from the per-shape SVD times; the JSON says which).
4. Deletes the checkpoints unless ``--keep``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

CONFIGS = {
    "1b": dict(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=18,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
    ),
    "small": dict(
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=8,
        vocab_size=32000,
    ),
    # For bench_gpu.py --small's test (a few seconds on CPU).
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=256,
    ),
}
SHARD_BYTES = {"1b": 1_000_000_000, "small": 10_000_000, "tiny": 1_000_000}

PLANTED = (
    "q_proj of every layer: a random 10% mask of entries changed by N(0, 2e-3); "
    "down_proj of every layer: a dense rank-8 update of entry scale ~1e-3; "
    "every matrix of even layers: a dense relative update w * (1 + 1e-3 * N(0, 1)) "
    "(partly invisible after the bf16 cast); every layer norm: + 1e-2; "
    "lm_head: 5% of rows changed by N(0, 2e-3); embed_tokens unchanged"
)


def tensor_specs(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """The names and shapes of a LlamaForCausalLM's state dict (built on the meta device)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**cfg, tie_word_embeddings=False))
    return [(n, tuple(t.shape)) for n, t in model.state_dict().items()]


def _seed(name: str, salt: str = "") -> int:
    return int.from_bytes(hashlib.sha256((salt + name).encode()).digest()[:8], "little") >> 1


def base_tensor(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The base value of a tensor, in fp32, regenerated identically from its name."""
    if "norm" in name:
        return torch.ones(shape)
    g = torch.Generator().manual_seed(_seed(name))
    return torch.randn(shape, generator=g).mul_(0.02)


def planted(name: str, w: torch.Tensor) -> torch.Tensor:
    """The tuned value (fp32) of a base tensor ``w``, per PLANTED."""
    g = torch.Generator().manual_seed(_seed(name, "plant"))
    m = re.search(r"layers\.(\d+)\.", name)
    layer = int(m.group(1)) if m else None
    if "norm" in name and layer is not None:
        return w + 1e-2
    if layer is not None and layer % 2 == 0 and w.dim() == 2:
        w = w * (1 + 1e-3 * torch.randn(w.shape, generator=g))
    if "q_proj" in name:
        mask = torch.rand(w.shape, generator=g) < 0.10
        w = torch.where(mask, w + 2e-3 * torch.randn(w.shape, generator=g), w)
    if "down_proj" in name:
        u = torch.randn(w.shape[0], 8, generator=g)
        v = torch.randn(8, w.shape[1], generator=g)
        w = w + (u @ v).mul_(1e-3 / 8**0.5)
    if name == "lm_head.weight":
        rows = torch.rand(w.shape[0], generator=g) < 0.05
        w = w.clone()
        w[rows] += 2e-3 * torch.randn(int(rows.sum()), w.shape[1], generator=g)
    return w


def write_checkpoint(
    path: Path, cfg: dict, specs, dtype: torch.dtype, tuned: bool, shard_bytes: int
) -> None:
    """Write a sharded safetensors checkpoint tensor by tensor: one shard in memory at a time."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    LlamaConfig(
        **cfg, tie_word_embeddings=False, dtype=str(dtype).removeprefix("torch.")
    ).to_json_file(tmp / "config.json")
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in specs:
        nbytes = dtype.itemsize * int(torch.tensor(shape).prod())
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    weight_map = {}
    total = 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name, shape in shard:
            w = base_tensor(name, shape)
            if tuned:
                w = planted(name, w)
            tensors[name] = w.to(dtype)
            del w
            weight_map[name] = fname
            total += tensors[name].numel() * dtype.itemsize
        save_file(tensors, str(tmp / fname), metadata={"format": "pt"})
        del tensors
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def build_pair(root: Path, size: str, dtype: torch.dtype) -> tuple[Path, Path, int, float]:
    cfg = CONFIGS[size]
    specs = tensor_specs(cfg)
    n_params = sum(int(torch.tensor(s).prod()) for _, s in specs)
    key = hashlib.sha256(
        json.dumps([cfg, str(dtype), PLANTED, SHARD_BYTES[size]]).encode()
    ).hexdigest()[:12]
    base, tuned = root / "base", root / "tuned"
    stamp = root / "complete.json"
    t0 = time.perf_counter()
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
        return base, tuned, n_params, 0.0
    root.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    torch.manual_seed(0)
    write_checkpoint(base, cfg, specs, dtype, tuned=False, shard_bytes=SHARD_BYTES[size])
    write_checkpoint(tuned, cfg, specs, dtype, tuned=True, shard_bytes=SHARD_BYTES[size])
    stamp.write_text(json.dumps({"key": key}))
    return base, tuned, n_params, time.perf_counter() - t0


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    return env


# Runs in the child: imports what `routekit diff` imports, records its own resident memory,
# runs the command, and at exit writes VmHWM (the kernel's peak-RSS high-water mark of this
# process image) and VmRSS from /proc/self/status. (ru_maxrss from wait4 cannot be used: it
# also counts the parent's pages, which a forked child holds until exec.)
_CHILD = r"""
import atexit, json, os, sys
def status():
    t = os.times()
    out = {"cpu_s": t.user + t.system}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) * 1024
    return out
import routekit.analysis, routekit.analysis.diff_report, routekit.cli
import safetensors, tqdm.auto
routekit.cli.build_parser()  # imports every command module, as the dispatcher does
after_imports = status()
def write():
    with open(sys.argv[1], "w") as f:
        json.dump({"after_imports": after_imports, "at_exit": status()}, f)
atexit.register(write)
if len(sys.argv) > 2:
    sys.exit(routekit.cli.main(["diff", *sys.argv[2:]]))
"""


def run_child(cli_args: list[str] | None, poll_s: float = 0.05) -> dict:
    """Run ``routekit diff CLI_ARGS`` (or, with None, only its imports) in a child process.

    Returns its wall time, its own memory figures (/proc/self/status) and a psutil-polled
    peak RSS as a cross-check."""
    import psutil

    fd, report = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    args = [sys.executable, "-c", _CHILD, report, *(cli_args or [])]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), cwd=REPO
    )
    polled = 0
    stop = threading.Event()

    def poll() -> None:
        nonlocal polled
        try:
            p = psutil.Process(proc.pid)
            while not stop.is_set():
                polled = max(polled, p.memory_info().rss)
                time.sleep(poll_s)
        except psutil.Error:
            pass

    poller = threading.Thread(target=poll)
    poller.start()
    stdout, stderr = proc.communicate()
    stop.set()
    poller.join()
    wall = time.perf_counter() - t0
    try:
        mem = json.loads(Path(report).read_text())
    except (OSError, json.JSONDecodeError):
        mem = None
    finally:
        Path(report).unlink(missing_ok=True)
    return {
        "returncode": proc.returncode,
        "stdout": stdout.decode(),
        "stderr": stderr.decode(),
        "wall_s": wall,
        "own_baseline_rss": mem["after_imports"]["VmRSS"] if mem else None,
        "cpu_s": mem["at_exit"]["cpu_s"] - mem["after_imports"]["cpu_s"] if mem else None,
        "peak_rss": mem["at_exit"]["VmHWM"] if mem else None,
        "polled_peak_rss": polled,
    }


def drop_from_page_cache(*dirs: Path) -> None:
    """Advise the kernel to drop these files' (clean) pages: a cold-cache read follows."""
    for d in dirs:
        for f in d.iterdir():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def diff_child(base: Path, tuned: Path, *extra: str) -> tuple[dict, dict]:
    r = run_child([str(base), str(tuned), "--json", "--no-progress", *extra])
    if r["returncode"] != 0 or r["peak_rss"] is None:
        raise SystemExit(f"routekit diff failed ({r['returncode']}):\n{r['stderr'][-3000:]}")
    return r, json.loads(r["stdout"])


def extra_gb(r: dict) -> float:
    """Peak RSS of a diff child above its own RSS after imports, in GB."""
    return (r["peak_rss"] - r["own_baseline_rss"]) / 1e9


def estimate_full_rank_seconds(sample: dict, all_stats: dict) -> float:
    """Full-rank time extrapolated from a sample: mean SVD seconds per shape, summed over every
    changed 2-D tensor (unchanged ones cost nothing), plus the rank-skip stream time."""
    per_shape: dict[tuple, list[float]] = {}
    for t in sample["tensors"]:
        if t["rank_seconds"] is not None and t["n_bitwise_unchanged"] < t["numel"]:
            per_shape.setdefault(tuple(t["shape"]), []).append(t["rank_seconds"])
    total = 0.0
    for t in all_stats["tensors"]:
        if len(t["shape"]) == 2 and t["n_bitwise_unchanged"] < t["numel"]:
            times = per_shape.get(tuple(t["shape"]))
            if times is None:
                return float("nan")
            total += sum(times) / len(times)
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print only the JSON result")
    ap.add_argument("--small", action="store_true", help="a ~20M-parameter pair (quick check)")
    ap.add_argument("--dir", type=Path, default=None, help="where to build/cache the checkpoints")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints after the run")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument(
        "--rank-sample",
        metavar="REGEX",
        default=None,
        help="rank only tensors matching REGEX in the --rank full run and extrapolate",
    )
    ap.add_argument("--skip-rank-full", action="store_true", help="do not run --rank full")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-page-cache run")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON result here")
    args = ap.parse_args()

    size = "small" if args.small else "1b"
    dtype = getattr(torch, args.dtype)
    root = args.dir or Path(tempfile.gettempdir()) / f"routekit-bench-diff-{size}-{args.dtype}"
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print

    log(f"building {size} pair under {root} ...")
    base, tuned, n_params, build_s = build_pair(root, size, dtype)
    log(f"  {n_params:,} parameters per checkpoint, built in {build_s:.0f} s")

    try:
        baseline = run_child(None)
        if baseline["returncode"] != 0 or baseline["peak_rss"] is None:
            raise SystemExit(f"baseline child failed:\n{baseline['stderr'][-2000:]}")
        log(f"  baseline child (imports only): peak RSS {baseline['peak_rss'] / 1e9:.3f} GB")

        cold = None
        if not args.no_cold:
            drop_from_page_cache(base, tuned)
            cold, cold_stats = diff_child(base, tuned, "--rank", "skip")
            log(f"  --rank skip (cold cache): {cold_stats['run']['seconds_total']:.1f} s")
        skip, stats = diff_child(base, tuned, "--rank", "skip")
        log(
            f"  --rank skip (warm cache): {stats['run']['seconds_total']:.1f} s, peak RSS "
            f"{skip['peak_rss'] / 1e9:.3f} GB ({extra_gb(skip):.3f} GB above its baseline)"
        )

        full = full_stats = None
        if not args.skip_rank_full:
            extra = ["--rank", "full"] + (
                ["--rank-only", args.rank_sample] if args.rank_sample else []
            )
            full, full_stats = diff_child(base, tuned, *extra)
            log(
                f"  --rank full{' (sample)' if args.rank_sample else ''}: "
                f"{full_stats['run']['seconds_total']:.1f} s "
                f"(rank {full_stats['run']['seconds_rank']:.1f} s)"
            )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    gb = 1e9
    result = {
        "command": "python benchmarks/bench_diff.py " + " ".join(sys.argv[1:]),
        "size": size,
        "storage_dtype": args.dtype,
        "config": CONFIGS[size],
        "planted": PLANTED,
        "params_compared": stats["params_compared"],
        "n_tensors": stats["n_tensors"],
        "checkpoint_gb": stats["run"]["bytes_compared"] / 2 / gb,
        "bytes_compared": stats["run"]["bytes_compared"],
        "seconds_rank_skip": stats["run"]["seconds_total"],
        "wall_seconds_rank_skip": skip["wall_s"],
        "cpu_seconds_rank_skip": skip["cpu_s"],
        "gb_per_s": stats["run"]["gb_per_s"],
        "peak_extra_rss_gb": extra_gb(skip),
        "peak_rss_gb": skip["peak_rss"] / gb,
        "own_baseline_rss_gb": skip["own_baseline_rss"] / gb,
        "peak_extra_rss_gb_vs_import_only_child": (skip["peak_rss"] - baseline["peak_rss"]) / gb,
        "import_only_child_peak_rss_gb": baseline["peak_rss"] / gb,
        "polled_peak_extra_rss_gb": (skip["polled_peak_rss"] - skip["own_baseline_rss"]) / gb,
        "rss_method": (
            "peak_extra_rss_gb = the diff process's VmHWM (peak RSS, /proc/self/status at exit) "
            "minus its own VmRSS after importing routekit's diff modules, torch and "
            "safetensors; cross-checks: minus the peak of a child that only imports them, and "
            "the psutil-polled peak (every 50 ms)"
        ),
        "target_peak_extra_rss_gb": 2.0,
        "overall_share_bitwise_unchanged": stats["overall"]["share_bitwise_unchanged"],
        "overall_share_unchanged_atol": dict(
            zip(map(str, stats["atols"]), stats["overall"]["share_unchanged_atol"])
        ),
        "build_seconds": build_s,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "load_avg_at_end": os.getloadavg(),
        },
    }
    if cold is not None:
        result.update(
            {
                "seconds_rank_skip_cold_cache": cold_stats["run"]["seconds_total"],
                "gb_per_s_cold_cache": cold_stats["run"]["gb_per_s"],
                "peak_extra_rss_gb_cold_cache": extra_gb(cold),
            }
        )
    if full_stats is not None:
        ranked = full_stats["overall"]["n_ranked"]
        result.update(
            {
                "rank_full_ranked_tensors": ranked,
                "rank_full_seconds_in_rank": full_stats["run"]["seconds_rank"],
                "rank_full_cpu_seconds": full["cpu_s"],
                "rank_full_device": full_stats["run"]["rank_device"],
                "peak_extra_rss_gb_rank_full": extra_gb(full),
                "mean_rank_fraction": full_stats["overall"]["mean_rank_fraction"],
            }
        )
        if args.rank_sample:
            est = estimate_full_rank_seconds(full_stats, stats)
            result.update(
                {
                    "seconds_rank_full": stats["run"]["seconds_total"] + est,
                    "seconds_rank_full_is": (
                        f"extrapolated: --rank full ranked only tensors matching "
                        f"{args.rank_sample!r} ({ranked} tensors, measured "
                        f"{full_stats['run']['seconds_total']:.1f} s); the SVD time of every changed "
                        "2-D tensor was estimated from the mean time of its shape in that sample"
                    ),
                    "seconds_rank_full_sample_measured": full_stats["run"]["seconds_total"],
                }
            )
        else:
            result.update(
                {
                    "seconds_rank_full": full_stats["run"]["seconds_total"],
                    "seconds_rank_full_is": "measured: every 2-D tensor ranked",
                }
            )
    else:
        result["seconds_rank_full"] = None
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        from routekit.io import atomic_write_bytes  # a killed run leaves the old file
        atomic_write_bytes(args.out, (text + "\n").encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
