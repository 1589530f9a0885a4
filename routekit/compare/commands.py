"""``routekit compare``: run a comparison suite and write its report.

With no arguments it runs the ``default`` suite on the embedded world (building the world
into its cache first if needed), shows progress, prints the headline table and where the
report is. ``--suite default|science|smollm2|FILE`` picks another suite; ``--methods``, ``--tasks``,
``--seeds`` and ``--lrs`` narrow or widen it (on every world of a suite with ``worlds:``,
whose verdicts across worlds are printed at the end) (``--methods`` may add ``peft:<file.yaml>``
methods); ``--device`` says where the cells' models live; ``--list`` prints the known methods.
Ctrl-C stops the workers at once, prints the command that resumes and exits with 130.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="compare adaptation methods (SVF, proxy, LoRA, full FT/RL, subnetwork RL)",
        description="Train every method of a suite on its tasks, learning rates and seeds, "
        "measure task gain, retention, forgetting and update structure, and write "
        "results.json, report.md and plots/ into the run directory. A killed run resumes.",
    )
    p.add_argument("--suite", default="default",
                   help="'default' (every method on hop, one seed), 'science' (hop and rev, "
                   "3 worlds of 5 seeds), 'smollm2' (SmolLM2-135M-Instruct on real:add), "
                   "'smollm2_gpu' (the same, sized for GPUs) or a suite YAML file, with a "
                   "world, worlds or a model block (default: default)")
    p.add_argument("--methods", type=_csv, default=None, help="comma-separated methods to run")
    p.add_argument("--tasks", type=_csv, default=None, help="comma-separated tasks to run")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in _csv(s)], default=None,
                   help="comma-separated seeds (the first is the sweep seed)")
    p.add_argument("--lrs", action="append", default=None, metavar="[METHOD=]LR,LR",
                   help="learning rates of every selected method, or of one (repeatable)")
    p.add_argument("--out", default=None, help="run directory (default runs/compare/<suite name>)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: one per GPU where cells run on GPUs, else "
                   "one per core; 0 runs cells in this process)")
    p.add_argument("--device", default=None,
                   help="where every cell's base, proxies and trained models live: auto, cpu, "
                   "cuda (cells spread over every GPU) or cuda:N (default: the suite's "
                   "device, else auto: cuda when a GPU exists, else cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local processes, or Ray tasks (pip install 'routekit[ray]')")
    p.add_argument("--force", action="store_true",
                   help="reuse a run directory made with other settings, deleting its cells")
    p.add_argument("--list", action="store_true", help="list the methods and suites, then exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from .methods import METHODS
    from .suite import BUILTIN_SUITES, load_suite, narrow, parse_lrs

    if args.list:
        for m in METHODS.values():
            print(f"{m.name:14s} {m.description}")
        print("peft:FILE      any weight-space PEFT method (a YAML file of its PEFT config; "
              "or {peft: {peft_type: ...}} in a suite's methods)")
        print(f"suites: {', '.join(BUILTIN_SUITES)} (or a YAML file)")
        return 0
    suite = load_suite(args.suite)
    suite = narrow(suite, methods=args.methods, tasks=args.tasks, seeds=args.seeds,
                   device=args.device)
    if args.lrs:  # after --methods, which may add PEFT methods that --lrs names
        suite = narrow(suite, lrs=parse_lrs(args.lrs, suite))
    out = Path(args.out) if args.out else Path("runs") / "compare" / suite.name
    from transformers.utils import logging as hf_logging

    from .report import headline_text

    hf_logging.disable_progress_bar()  # one bar per model loaded would bury the cells' bar
    from .runner import run_suite
    from .worlds import run_worlds

    run = run_worlds if suite.worlds else run_suite  # one sub-run per world, or one run
    try:
        outcome = run(suite, out, executor=args.executor, workers=args.workers,
                      force=args.force, progress=not args.no_progress, threads=args.threads)
    except KeyboardInterrupt:
        argv = getattr(args, "argv", None)
        again = "routekit " + shlex.join(argv) if argv is not None else "the same command"
        print(f"\nroutekit: interrupted; the workers are stopped, finished cells are kept and "
              f"a cell stopped halfway resumes from its last training segment. Resume with: "
              f"{again}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if suite.worlds:  # one sub-run per world: the verdicts across worlds
        from .worlds import verdict_text

        print(verdict_text(outcome.results))
        print(f"\n{len(outcome.results.worlds)} worlds, {len(outcome.ran)} cell(s) run, "
              f"{len(outcome.reused)} reused. Report: {out / 'report.md'} (results: "
              f"{out / 'results.json'}; each world's run: "
              + ", ".join(str(out / w.dir) for w in outcome.results.worlds) + ")")
        return 0
    print(headline_text(outcome.results))
    print(f"\n{len(outcome.ran)} cell(s) run, {len(outcome.reused)} reused. Report: "
          f"{out / 'report.md'} (results: {out / 'results.json'}, plots: {out / 'plots'})")
    return 0
