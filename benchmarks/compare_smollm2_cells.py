"""Per-cell times of the ``smollm2`` compare suite.

``python benchmarks/compare_smollm2_cells.py base,svf_sft,full_rl_bf16 RUN_DIR [SUITE]`` runs
each listed method at its first learning rate (one process, one thread, ``workers=0``; on the
suite's device, so ``smollm2_gpu`` on a GPU) and prints each cell's train and eval seconds
beside its figures; rerunning resumes in RUN_DIR. SUITE defaults to ``smollm2``.
"""

from __future__ import annotations

import sys
import time

import torch

from routekit.compare.runner import run_suite
from routekit.compare.suite import load_suite, narrow


def main(methods: list[str], out: str, suite_name: str = "smollm2") -> None:
    torch.set_num_threads(1)
    suite = load_suite(suite_name)
    suite = narrow(
        suite, methods=methods, lrs={m: suite.method_lrs(m)[:1] for m in methods if m != "base"}
    )
    t0 = time.perf_counter()
    done = run_suite(suite, out, workers=0, progress=False, report=False)
    print(f"total {time.perf_counter() - t0:.0f} s")
    for c in done.results.cells:
        b = c.best()
        print(
            f"{c.cell_id} on {c.device}: train {c.train_seconds:.0f} s, eval {c.eval_seconds:.0f} s, test "
            f"{b.test_accuracy:.3f}, ood {b.ood_accuracy}, probes {b.probe_accuracy}, probe "
            f"loglik {b.probe_loglik:.3f}, forgetting {b.forgetting:.4f}, KL prompts "
            f"{b.kl_prompts:.4f}"
        )


if __name__ == "__main__":
    main(sys.argv[1].split(","), sys.argv[2], *sys.argv[3:4])
