"""The ``routekit`` command: one subcommand per workflow, each defined in the module it drives.

Each module listed in ``_COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its
subcommand(s) and sets ``func`` (called with the parsed args, returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import RoutekitError

_COMMAND_MODULES = [
    "routekit.world.commands",
    "routekit.eval_commands",
    "routekit.analysis.commands",
    "routekit.training.commands",
    "routekit.routing.commands",
    "routekit.adaptive_commands",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="routekit",
        description="Composable routing adapters for Hugging Face causal LMs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except RoutekitError as e:
        print(f"routekit: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("routekit: interrupted; nothing half-written was kept.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
