"""benchmarks/bench_gpu.py, the script prepared for a lent GPU, runs on CPU at tiny sizes and
writes every ratio it promises (no GPU is needed to keep it working)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"
RATIOS = ("merged_decode_over_base", "mixed_over_floor", "proxy_decode_over_base",
          "proxy_sequential_over_base", "svf_step_over_lora_step")


def test_bench_gpu_runs_on_cpu_small_and_writes_every_ratio(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench_gpu.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert bench.main(["--device", "cpu", "--small", "--rounds", "1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["small"] is True
    assert set(result["models"]) == {"tiny-a", "tiny-b"}
    for name, row in result["models"].items():
        for key in RATIOS:
            assert isinstance(row[key], float) and row[key] > 0, (name, key, row.get(key))
    diff = result["diff"]
    assert "rank_skip_error" not in diff and "rank_full_error" not in diff, diff
    assert diff["rank_full_s"] > 0 and diff["rank_full_over_skip"] > 0
