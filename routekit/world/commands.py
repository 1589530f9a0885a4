"""``routekit world build``: build (or find cached) the world and print its figures."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .build import build
from .config import WorldConfig
from .entry import WorldInfo


def format_table(info: WorldInfo) -> str:
    """A plain-text table of base and proxy accuracy on each task's test and ood split."""
    rows = [("split", "base", "proxy")]
    for skill in info.task_accuracy:
        rows.append((f"{skill} test", f"{info.task_accuracy[skill]:.3f}",
                     f"{info.proxy_task_accuracy[skill]:.3f}"))
        rows.append((f"{skill} ood", f"{info.ood_accuracy[skill]:.3f}",
                     f"{info.proxy_ood_accuracy[skill]:.3f}"))
    rows.append(("knowledge probes", f"{info.knowledge_accuracy:.3f}",
                 f"{info.proxy_knowledge_accuracy:.3f}"))
    rows.append(("statement recall", f"{info.statement_accuracy:.3f}", "-"))
    rows.append(("routing prompts", f"{info.routing_accuracy:.3f}", "-"))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [" | ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
    lines.insert(1, "-+-".join("-" * x for x in w))
    head = (f"world {info.path}\nbase {info.base_params:,} params, proxy {info.proxy_params:,} "
            f"params; built in {info.build_seconds:.0f} s"
            + (" (cached)" if info.cached else "")
            + f"\nfingerprints: base {info.base_fingerprint}, proxy {info.proxy_fingerprint}, "
            f"tokenizer {info.tokenizer_fingerprint} (equal fingerprints = the same world)")
    return head + "\n\n" + "\n".join(lines)


def load_config(args: argparse.Namespace) -> WorldConfig:
    if args.config:
        try:
            config = WorldConfig.model_validate_json(Path(args.config).read_text())
        except Exception as e:
            raise ConfigError(f"world config {args.config!r} is invalid: {e}") from e
    else:
        config = WorldConfig.tiny() if args.tiny else WorldConfig()
    if args.seed is not None:
        config = config.model_copy(update={"seed": args.seed})
    return config


def _build(args: argparse.Namespace) -> int:
    info = build(load_config(args), force=args.force, progress=not args.json)
    print(info.model_dump_json(indent=2) if args.json else format_table(info))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    world = sub.add_parser("world", help="the embedded synthetic world")
    wsub = world.add_subparsers(dest="world_command", metavar="ACTION")
    b = wsub.add_parser("build", help="pretrain (or find cached) the base and proxy models")
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    b.add_argument("--tiny", action="store_true", help="the reduced CI world")
    b.add_argument("--seed", type=int, default=None, help="world seed (default 0)")
    b.add_argument("--config", default=None, help="a WorldConfig JSON file")
    b.set_defaults(func=_build)
