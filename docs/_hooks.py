"""MkDocs build hooks: the CLI reference, rendered from the real ``tether`` parser.

``docs/cli-reference.md`` holds the marker ``<!-- cli-reference -->``; at build time it
is replaced by one section per command (usage, arguments and their help) taken from
``tether.cli._parser.build_parser()``, so the page cannot drift from the CLI. The
same rendering is what ``tests/test_docs_site.py`` checks against ``tether … --help``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

MARKER = "<!-- cli-reference -->"
PAGE = "cli-reference.md"

# Help is wrapped at this width on the page, whatever terminal runs the build.
WIDTH = 76

# Options every command takes: described once, not in every table.
_COMMON = {"help", "debug"}


@contextmanager
def _columns(width: int) -> Iterator[None]:
    """argparse wraps usage to ``$COLUMNS``; pin it for a reproducible page."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width + 2)  # argparse takes two off
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices.items())
    return []


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command and verb under ``parser``, depth first: ``(("backends", "list"), p)``."""
    for name, sub in _subcommands(parser):
        yield (*path, name), sub
        yield from commands(sub, (*path, name))


def usage(parser: argparse.ArgumentParser) -> str:
    """The parser's usage text, as ``--help`` prints it at the page's width."""
    with _columns(WIDTH):
        return parser.format_usage().strip()


def _invocation(action: argparse.Action) -> str:
    if isinstance(action.metavar, str):
        metavar = action.metavar
    elif action.choices is not None:
        metavar = "{" + ",".join(map(str, action.choices)) + "}"
    else:
        metavar = action.dest.upper()
    if not action.option_strings:
        return metavar
    names = ", ".join(action.option_strings)
    return names if action.nargs == 0 else f"{names} {metavar}"


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%" in text:
        text = text % {**vars(action), "prog": prog}
    if action.required and action.option_strings:
        text += " (required)"
    return text.replace("|", "\\|")


def _table(parser: argparse.ArgumentParser) -> list[str]:
    rows = [
        f"| `{_invocation(action)}` | {_help(action, parser.prog)} |"
        for action in parser._actions
        if action.dest not in _COMMON
        and action.help != argparse.SUPPRESS
        and not isinstance(action, argparse._SubParsersAction)
    ]
    if not rows:
        return []
    return ["| argument | what it does |", "| --- | --- |", *rows, ""]


def _verbs(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                anchor = "-".join(("tether", *path, choice.dest))
                rows.append(f"| [`{choice.dest}`](#{anchor}) | {_help(choice, parser.prog)} |")
    if not rows:
        return []
    return ["| command | what it does |", "| --- | --- |", *rows, ""]


def cli_reference() -> str:
    """The Markdown of the whole reference: the top-level command, then each command."""
    from tether.cli._parser import EPILOG, build_parser

    parser = build_parser()
    lines = [
        "## tether",
        "",
        parser.description or "",
        "",
        "```text",
        usage(parser),
        "```",
        "",
        "Every command also takes `-h`/`--help` (print its help and exit) and "
        "`--debug` (show the traceback of an error instead of one line).",
        "",
        *_table(parser),
        *_verbs(parser, ()),
    ]
    for path, sub in commands(parser):
        level = "#" * min(2 + len(path) - 1, 4)
        lines += [
            f"{level} tether {' '.join(path)}",
            "",
            sub.description or "",
            "",
            "```text",
            usage(sub),
            "```",
            "",
            *_table(sub),
            *_verbs(sub, path),
        ]
    lines += ["## Exit status and environment", "", "```text", EPILOG.strip(), "```", ""]
    return "\n".join(lines)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """Fill the CLI reference page; every other page is left as written."""
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        from mkdocs.exceptions import PluginError

        raise PluginError(
            f"docs/{PAGE} lost its {MARKER} marker: put it back where the generated reference goes"
        )
    return markdown.replace(MARKER, cli_reference())
