"""Every name the README's tour uses still exists: ``rk.<name>`` chains in its text and code
blocks resolve on the installed package, and every ``routekit <command> [<sub>]`` in its shell
blocks is a command (and subcommand) the dispatcher knows, with every ``--flag`` it gives.

Moving a module or renaming a function must keep the tour true, or change the tour with it.
"""

from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path

import pytest

import routekit
from routekit.cli import build_parser

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
# named in the README as deprecated old names -> the name each warning must point to
DEPRECATED = {"disable_svf": "disable_adapter", "resolve_model": "load_model"}


def _names() -> list[str]:
    return sorted(set(re.findall(r"\brk\.([A-Za-z_][A-Za-z_0-9]*(?:\.[A-Za-z_][A-Za-z_0-9]*)*)",
                                 README)))


def _commands() -> list[list[str]]:
    """Each ``routekit ...`` line of a bash block, split into words (comments dropped)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            for part in re.split(r"&&|\|", line):
                words = part.split()
                if words[:1] == ["routekit"] and len(words) > 1:
                    out.append(words[1:])
    return out


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


@pytest.mark.parametrize("name", _names())
def test_every_rk_name_in_the_readme_resolves(name):
    obj = routekit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for part in name.split("."):
            assert hasattr(obj, part), f"rk.{name}: {part!r} is gone"
            obj = getattr(obj, part)


@pytest.mark.parametrize("name", sorted(DEPRECATED))
def test_the_deprecated_old_names_warn_and_name_the_new_one(name):
    with pytest.warns(DeprecationWarning) as record:
        fn = getattr(routekit, name)
        try:
            fn(None)
        except Exception:  # the call itself may refuse None; the warning comes first
            pass
    assert any(DEPRECATED[name] in str(w.message) for w in record)


def test_the_readme_names_commands():
    assert len(_commands()) >= 10 and len(_names()) >= 15


@pytest.mark.parametrize("words", _commands(), ids=lambda w: " ".join(w[:2]))
def test_every_cli_line_in_the_readme_is_a_known_command_with_known_flags(words):
    parser = build_parser()
    commands = _subparsers(parser)
    assert words[0] in commands, f"routekit {words[0]}: no such command"
    cmd = commands[words[0]]
    subs = _subparsers(cmd)
    if subs and len(words) > 1 and not words[1].startswith("-"):
        assert words[1] in subs, f"routekit {words[0]} {words[1]}: no such subcommand"
        cmd = subs[words[1]]
    flags = {w.strip("[]").split("=", 1)[0] for w in words if w.strip("[]").startswith("--")}
    unknown = flags - _flags(cmd)
    assert not unknown, f"routekit {' '.join(words)}: unknown flags {sorted(unknown)}"
