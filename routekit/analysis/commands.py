"""``routekit diff``: how a fine-tuned checkpoint differs from its base, and update overlaps.

routekit diff BASE TUNED [--json] [--out DIR] [--tolerances T ...] [--rtol R]
                         [--rank full|skip] [--rank-only REGEX] [--device cpu|cuda]
routekit diff --overlap TUNED_A TUNED_B --base BASE [--overlap-atol T] [--json] [--out DIR]

Only ``register`` is exported: the ``routekit`` dispatcher (:func:`routekit.cli.main`) builds
the parser and turns refused input into exit code 2, so ``routekit diff`` from Python is
``routekit.cli.main(["diff", ...])``. (This module once had its own ``main`` calling the
dispatcher back, an import circle between the two.)
"""

from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError
from .update_stats import DEFAULT_ATOLS, DEFAULT_RTOL


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "diff",
        help="measure how a fine-tuned checkpoint differs from its base (streaming)",
        description=(
            "Compare two safetensors checkpoints tensor by tensor (one pair in memory at a time): "
            "share bitwise unchanged in the storage dtype, unchanged within absolute and relative "
            "tolerances, ||dW||/||W||, and the rank of each 2-D update. With --overlap, compare "
            "where two updates of the same base changed it."
        ),
    )
    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="BASE TUNED, or with --overlap: TUNED_A TUNED_B"
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the result as JSON on stdout instead of the table",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="write diff.json, diff.md and plots/*.png (overlap.json/.md with --overlap)",
    )
    p.add_argument(
        "--tolerances",
        nargs="+",
        type=float,
        default=list(DEFAULT_ATOLS),
        metavar="ATOL",
        help="absolute tolerances (default: %(default)s)",
    )
    p.add_argument(
        "--rtol",
        type=float,
        default=DEFAULT_RTOL,
        help="relative tolerance: |dw| <= rtol * max(|w|, |w'|) (default: %(default)s)",
    )
    p.add_argument(
        "--rank",
        choices=["full", "skip"],
        default="full",
        help="compute the rank of every 2-D update (full, default) or skip it",
    )
    p.add_argument(
        "--rank-only",
        metavar="REGEX",
        default=None,
        help="with --rank full: rank only the 2-D tensors whose names match REGEX "
        "(e.g. 'layers\\.(0|15)\\.' to rank a sample of a large model on CPU)",
    )
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="where to compute ranks (cuda falls back to cpu when unavailable)",
    )
    p.add_argument(
        "--overlap",
        action="store_true",
        help="report the overlap of two updates TUNED_A TUNED_B of --base",
    )
    p.add_argument("--base", metavar="BASE", help="the common base, with --overlap")
    p.add_argument(
        "--overlap-atol",
        type=float,
        default=None,
        metavar="T",
        help="with --overlap: an entry counts as changed when |dw| > T "
        "(default: when its stored bits differ)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .diff_report import (
        overlap_text,
        summary_text,
        write_diff_outputs,
        write_overlap_outputs,
    )
    from .overlap import overlap_checkpoints
    from .update_stats import diff_checkpoints

    progress = not args.no_progress
    if args.overlap:
        if len(args.paths) != 2 or not args.base:
            raise ConfigError(
                "usage: routekit diff --overlap TUNED_A TUNED_B --base BASE (two tuned "
                f"checkpoints and their base; got {len(args.paths)} path(s)"
                + ("" if args.base else " and no --base")
                + ")."
            )
        ov = overlap_checkpoints(
            args.base,
            args.paths[0],
            args.paths[1],
            tolerance=args.overlap_atol,
            progress=progress,
        )
        return _report(ov, args, overlap_text, write_overlap_outputs)

    if args.base:
        raise ConfigError("--base is only used with --overlap; give BASE TUNED as paths.")
    if len(args.paths) != 2:
        raise ConfigError(f"usage: routekit diff BASE TUNED (got {len(args.paths)} path(s)).")
    stats = diff_checkpoints(
        args.paths[0],
        args.paths[1],
        atols=args.tolerances,
        rtol=args.rtol,
        rank=args.rank,
        device=args.device,
        rank_only=args.rank_only,
        progress=progress,
    )
    return _report(stats, args, summary_text, write_diff_outputs)


def _report(result, args: argparse.Namespace, as_text, write_outputs) -> int:
    """Print ``result`` as JSON or text; with --out, also write its files."""
    print(result.model_dump_json(indent=2) if args.json else as_text(result))
    if args.out:
        for path in write_outputs(result, args.out):
            print(f"wrote {path}", file=sys.stderr)
    return 0
