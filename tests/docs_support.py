"""Find the fenced blocks of the docs, and run one document's blocks in order.

Imported by ``tests/test_docs.py`` for :func:`collect`; run as a script
(``python tests/docs_support.py PLAN.json``) it is the *session driver*: one fresh
interpreter per document that executes the document's blocks in order, in one
folder, like a reader pasting them into a notebook and a terminal.

Directives are HTML comments on the lines just before a fence:

- ``<!-- fragment: why -->``: not executed (signature listings, transcripts);
- ``<!-- needs: docker -->``: needs the Docker engine (``pytest.mark.docker``);
- ``<!-- needs: slurm -->``: needs the Slurm cluster (``pytest.mark.slurm``;
  ``scripts/slurm-cluster.sh`` starts one);
- ``<!-- in: examples/quickstart -->``: copy that folder's files into the folder
  the block runs in, first (``<!-- in: examples/hello -> examples/hello -->``: into
  that subfolder, for a block that names the path);
- ``<!-- env: NAME=value -->``: set an environment variable for this block and the
  ones after it (a value the reader is told to export);
- the README's ``<!-- test-command -->`` block is a fragment (it would run the test
  suite from inside the test suite), and shell lines that ``pip install`` are not run
  (tether is installed; they would need the network).
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

PYTHON = {"python", "py", "pycon"}
SHELL = {"bash", "sh", "console", "shell"}
YAML = {"yaml", "yml"}
EXECUTED = PYTHON | SHELL | YAML

#: What ``<!-- needs: NAME -->`` may name: the fixture that requires the service (a
#: skip on a laptop without it, a failure in CI) and the marker of its tests.
SERVICES = {"docker": "docker_service", "slurm": "slurm_service"}

# A block's budget, in seconds; a document's session gets the sum.
BLOCK_TIMEOUT = 120

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")
_DIRECTIVE = re.compile(r"^\s*<!--\s*(?P<key>[\w-]+)\s*(?::\s*(?P<value>.*?))?\s*-->\s*$")


@dataclass
class Block:
    """One fenced block of a document."""

    path: str  # relative to the repository
    line: int  # the fence's line, 1-based
    lang: str
    source: str
    fragment: str | None = None  # why it is not executed
    needs: list[str] = field(default_factory=list)
    copy_in: list[str] = field(default_factory=list)  # folders relative to the repository
    env: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def kind(self) -> str:
        if self.lang in PYTHON:
            return "python"
        if self.lang in SHELL:
            return "shell"
        return "yaml"


def parse(path: Path, root: Path = ROOT) -> list[Block]:
    """Every fenced block of ``path`` (named relative to ``root``) with the directives
    written above it."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    in_test_command = False
    while i < len(lines):
        line = lines[i]
        if line.strip() == "<!-- test-command -->":
            in_test_command = True
        elif line.strip() == "<!-- /test-command -->":
            in_test_command = False
        match = _FENCE.match(line)
        if not match:
            i += 1
            continue
        start, fence = i, match.group("fence")
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        block = Block(
            path=str(path.relative_to(root)),
            line=start + 1,
            lang=match.group("lang").lower(),
            source="\n".join(body) + "\n",
        )
        if in_test_command:
            block.fragment = "the test command: it would run the suite from inside the suite"
        j = start - 1
        while j >= 0 and (directive := _DIRECTIVE.match(lines[j])):
            key, value = directive.group("key"), directive.group("value") or ""
            if key == "fragment":
                block.fragment = value or "fragment"
            elif key == "needs":
                for need in (v.strip() for v in value.split(",")):
                    if need not in SERVICES:
                        raise ValueError(
                            f"{path}:{j + 1}: unknown service {need!r} in a needs directive "
                            f"(known: {', '.join(sorted(SERVICES))})"
                        )
                    block.needs.append(need)
            elif key == "in":
                block.copy_in.append(value)
            elif key == "env":
                name, _, val = value.partition("=")
                block.env[name.strip()] = val.strip()
            j -= 1
        blocks.append(block)
    return blocks


def collect() -> list[Block]:
    """The blocks of README.md and docs/**/*.md in a language the suite executes."""
    return [b for path in DOCS for b in parse(path) if b.lang in EXECUTED]


# -- the session driver ---------------------------------------------------------------


def _copy_in(spec: str) -> None:
    """``examples/x``: its files into this folder; ``examples/x -> dest``: into ``dest``."""
    folder, _, dest = (part.strip() for part in spec.partition("->"))
    target = Path(dest or ".")
    target.mkdir(parents=True, exist_ok=True)
    for item in (ROOT / folder).iterdir():
        if item.name in ("__pycache__", ".ruff_cache") or item.name.endswith(".state.jsonl"):
            continue
        if item.is_dir():
            shutil.copytree(item, target / item.name, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target / item.name)


def _run_python(block: Block, namespace: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
    code = compile(block.source, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)  # the repository's own docs
    if asyncio.iscoroutine(result):
        loop.run_until_complete(asyncio.wait_for(result, BLOCK_TIMEOUT))


#: A ``pip install …`` line, or the ``pip install … &&`` that starts one (the rest runs).
_PIP_INSTALL = re.compile(r"^\s*(python3? -m )?pip install [^&\n]*(&&\s*|$)", re.MULTILINE)


def _skip_pip(match: re.Match[str]) -> str:
    """Keep what follows ``&&`` on a pip line; the install itself is done already."""
    return ": pip install skipped by the docs test && " if "&&" in match.group(0) else ":"


def _run_shell(block: Block) -> None:
    # tether is installed already, and installing would need the network: not run.
    source = _PIP_INSTALL.sub(_skip_pip, block.source)
    proc = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", source],
        timeout=BLOCK_TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise AssertionError(f"the shell block exited {proc.returncode}")


def _yaml_file_name(block: Block) -> str:
    """The file a YAML block names in its first line (``# backend.yml``), else one of ours."""
    first = block.source.lstrip().splitlines()[0] if block.source.strip() else ""
    match = re.match(r"#\s*([\w./-]+\.ya?ml)\b", first)
    return match.group(1) if match else f"block-{block.line}.yml"


def _run_yaml(block: Block) -> None:
    import yaml

    import tether

    data = yaml.safe_load(block.source)
    target = Path(_yaml_file_name(block))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(block.source)
    backends = {info.name for info in tether.list_backends()}
    if not isinstance(data, dict):
        raise AssertionError("a YAML block must be a mapping (or be marked as a fragment)")
    if data.get("type") in backends:
        print(f"{target}: {tether.load_config(target)!r}")
    elif "steps" in data:
        proc = subprocess.run(
            ["tether", "pipeline", "validate", str(target)],
            timeout=BLOCK_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            raise AssertionError(f"tether pipeline validate exited {proc.returncode}")
    elif "command" in data:
        print(f"{target}: {tether.load_job(target)!r}")
    else:
        raise AssertionError("neither a backend config, a job nor a pipeline: mark it a fragment")


def drive(plan_path: Path) -> None:
    """Run a plan's blocks in order; append one JSON line per block to the plan's report."""
    plan = json.loads(plan_path.read_text())
    report = Path(plan["report"])
    os.chdir(plan["cwd"])
    sys.path[0] = os.getcwd()  # as in a notebook or `python -c`: the folder imports, not tests/
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    for raw in plan["blocks"]:
        block = Block(**raw)
        print(f"\n===== {block.id} ({block.kind}) =====", flush=True)
        print(f"===== {block.id} =====", file=sys.stderr, flush=True)
        os.environ.update(block.env)
        outcome: dict[str, Any] = {"id": block.id, "ok": True, "error": ""}
        try:
            for folder in block.copy_in:
                _copy_in(folder)
            if block.kind == "python":
                _run_python(block, namespace, loop)
            elif block.kind == "shell":
                _run_shell(block)
            else:
                _run_yaml(block)
        except BaseException:  # reported per block; the next ones still run
            outcome = {"id": block.id, "ok": False, "error": traceback.format_exc()}
        sys.stdout.flush()
        sys.stderr.flush()
        with report.open("a") as fh:
            fh.write(json.dumps(outcome) + "\n")
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


def plan_for(blocks: list[Block], cwd: Path, report: Path) -> dict[str, Any]:
    return {"cwd": str(cwd), "report": str(report), "blocks": [asdict(b) for b in blocks]}


if __name__ == "__main__":
    drive(Path(sys.argv[1]))
