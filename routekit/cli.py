"""The ``routekit`` command: one subcommand per workflow, each defined in the module it drives.

Each module listed in ``_COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its
subcommand(s) and sets ``func`` (called with the parsed args, returning an exit code).

A refused input (a :class:`RoutekitError`, or a pydantic ``ValidationError`` from a config
object that a command built) ends the command with one line on stderr and exit code 2,
argparse's code for bad usage; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pydantic import ValidationError

from .errors import RoutekitError, format_validation_error

EXIT_REFUSED = 2

_COMMAND_MODULES = [
    "routekit.world.commands",
    "routekit.eval.commands",
    "routekit.analysis.commands",
    "routekit.training.commands",
    "routekit.routing.commands",
    "routekit.adaptive.commands",
    "routekit.compare.commands",
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
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # to say how to rerun
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except RoutekitError as e:
        print(f"routekit: error: {_one_line(str(e))}", file=sys.stderr)
        return EXIT_REFUSED
    except ValidationError as e:
        print(f"routekit: error: invalid {e.title}: {_one_line(format_validation_error(e))}",
              file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        print("routekit: interrupted; nothing half-written was kept.", file=sys.stderr)
        return 130


def _one_line(message: str) -> str:
    return " ".join(message.split())


if __name__ == "__main__":
    sys.exit(main())
