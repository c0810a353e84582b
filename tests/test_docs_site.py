"""The docs site (issue 18): what ``mkdocs build --strict`` is built from, and that the
strict build really fails on a broken page.

``nox -s docs`` builds the site itself; these tests keep its parts honest: every page
is in the nav, every public name is in the API reference, the generated CLI
reference is what ``tether … --help`` prints, the "coming from" pages are collected
by ``tests/test_docs.py``, and a broken link, anchor or API name fails the build.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

import tether
from tether.cli._parser import build_parser

from .docs_support import ROOT, collect
from .services import missing

DOCS = ROOT / "docs"
TETHER = Path(sys.executable).with_name("tether")


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tether_docs_hooks", DOCS / "_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nav_pages(nav: Any) -> Iterator[str]:
    """Every page file named in an mkdocs ``nav`` (lists of strings and mappings)."""
    if isinstance(nav, str):
        yield nav
    elif isinstance(nav, list):
        for item in nav:
            yield from _nav_pages(item)
    elif isinstance(nav, dict):
        for value in nav.values():
            yield from _nav_pages(value)


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    """A page left out of ``mkdocs.yml``'s nav would be unreachable; the strict build
    refuses it too, but this says so without mkdocs installed."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    in_nav = set(_nav_pages(config["nav"]))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert sorted(pages - in_nav) == [], "pages missing from mkdocs.yml's nav"
    assert sorted(in_nav - pages) == [], "nav entries without a page"


def test_every_public_name_is_in_the_api_reference() -> None:
    """A name added to ``tether.__all__`` gets a ``::: tether.NAME`` entry on one of the
    docs/reference/ pages."""
    documented: dict[str, str] = {}
    for page in sorted((DOCS / "reference").glob("*.md")):
        for name in re.findall(r"^::: tether\.(\w+)\s*$", page.read_text(), re.MULTILINE):
            assert name not in documented, f"{name} is on {documented[name]} and {page.name}"
            documented[name] = page.name
    public = {name for name in tether.__all__ if not name.startswith("__")}
    assert sorted(public - set(documented)) == [], "public names missing from docs/reference/"
    assert sorted(set(documented) - public - {"errors"}) == [], "documented names not public"


def test_the_coming_from_pages_are_collected_with_runnable_tether_code() -> None:
    """``tests/test_docs.py`` runs the subfolder pages too: each "coming from" page has
    its peer's code as fragments and tether's side as blocks that run."""
    blocks = collect()
    for peer in ("rompy", "submitit", "joblib"):
        path = f"docs/coming-from/{peer}.md"
        page = [b for b in blocks if b.path == path]
        runnable = [b for b in page if b.fragment is None and b.kind == "python"]
        peers = [b for b in page if b.fragment is not None]
        assert len(runnable) >= 4, f"{path}: too few runnable tether blocks"
        assert peers, f"{path}: no fragment block with {peer}'s code"
        assert all(peer in b.fragment for b in peers if b.lang != "toml"), path
        assert not any(f"import {peer}" in b.source for b in runnable), path


def test_the_cli_reference_is_what_tether_help_prints() -> None:
    """The generated reference has a section per command, whose usage block is the
    installed ``tether`` command's own ``--help`` usage, option for option."""
    hooks = _hooks()
    reference = hooks.cli_reference()
    paths = [path for path, _ in hooks.commands(build_parser())]
    assert {("run",), ("wait",), ("backends", "create"), ("docker", "prune")} <= set(paths)
    env = {**os.environ, "COLUMNS": str(hooks.WIDTH + 2)}
    for path, parser in hooks.commands(build_parser()):
        heading = f"tether {' '.join(path)}"
        assert re.search(rf"^#+ {re.escape(heading)}$", reference, re.MULTILINE), heading
        proc = subprocess.run(
            [str(TETHER), *path, "--help"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        printed = proc.stdout.split("\n\n")[0].strip()
        assert printed == hooks.usage(parser), heading
        assert f"```text\n{printed}\n```" in reference, heading
        options = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", printed)) - {"-h", "--help"}
        for option in options:
            assert f"`{option}" in reference or f", {option}" in reference, (heading, option)


# -- the strict build ---------------------------------------------------------------


def _have_mkdocs() -> None:
    for module in ("mkdocs", "material", "mkdocstrings", "griffe_pydantic"):
        if importlib.util.find_spec(module) is None:
            missing(f"{module} is not installed: pip install -e '.[docs]'")


def _site_copy(tmp_path: Path) -> Path:
    """mkdocs.yml and docs/ copied to ``tmp_path``, with ``src`` beside them (the API
    reference reads it)."""
    shutil.copy2(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(DOCS, tmp_path / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "src").symlink_to(ROOT / "src", target_is_directory=True)
    return tmp_path


def _add_page(root: Path, name: str, text: str) -> None:
    (root / "docs" / name).write_text(text)
    config_path = root / "mkdocs.yml"
    config = yaml.safe_load(config_path.read_text())
    config["nav"].append({"Broken": name})
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def _build(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(root / "mkdocs.yml")],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("See [the missing page](missing.md).\n", "missing.md"),
        ("See [a heading](index.md#no-such-heading).\n", "no-such-heading"),
        ("::: tether.NoSuchName\n", "tether.NoSuchName"),
    ],
    ids=["link", "anchor", "api-name"],
)
def test_the_strict_build_fails_on_a_broken_page(tmp_path: Path, text: str, complaint: str) -> None:
    """A page with a broken link, anchor or API reference makes ``mkdocs build
    --strict`` exit non-zero, naming the page and what is broken; and nothing else
    in the copied site is complained about, so the rest of the site builds clean."""
    _have_mkdocs()
    root = _site_copy(tmp_path)
    _add_page(root, "broken.md", f"# Broken\n\n{text}")
    proc = _build(root)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert complaint in output, output
    problems = [line for line in output.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert problems, output
    assert all("broken" in line or complaint in line for line in problems), problems


def test_sphinx_roles_in_docstrings_read_as_code() -> None:
    """The API reference's griffe extension writes ``:class:`~a.b.C``` as ```C```."""
    spec = importlib.util.spec_from_file_location("roles", DOCS / "_griffe_roles.py")
    assert spec is not None and spec.loader is not None
    roles = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(roles)
    text = (
        "Raise :class:`~tether.errors.MapError` (see :meth:`Ensemble.run`, "
        ":func:`the map <tether.map_calls>` and :py:attr:`!RunResult.value`)."
    )
    assert roles.plain(text) == (
        "Raise `MapError` (see `Ensemble.run`, `the map` and `RunResult.value`)."
    )
