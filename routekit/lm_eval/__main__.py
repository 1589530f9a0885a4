"""``python -m routekit.lm_eval ARGS``: lm-eval's own command line with ``--model routekit``
registered. A refused input ends it with routekit's one-line error and exit code 2."""

from __future__ import annotations

import sys

from ..errors import RoutekitError
from . import RoutekitLM  # noqa: F401  (registers the model)


def main() -> int:
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError as e:
        print(f"routekit: error: {e}", file=sys.stderr)
        return 2
    try:
        cli_evaluate()
    except RoutekitError as e:
        print(f"routekit: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
