"""Every fenced Python, shell and YAML block of README.md and docs/*.md runs (issue 15).

How the blocks run (the collector and driver are in ``tests/docs_support.py``):

- One test per block, with the id ``file:line`` of its opening fence.
- The blocks of one document run **in order, in one fresh interpreter and one
  folder**, as a reader pastes them into a notebook and a terminal: a later block
  may use the names, files and runs of earlier ones. The first test of a document
  starts that session (every block of the document runs, whichever were selected)
  and each test then reports its own block's outcome. Blocks that need a service
  (the Docker engine, the Slurm cluster) form a session of their own per document
  and service.
- The folder is a fresh temporary one; ``TETHER_HOME`` and ``TETHER_CACHE_STORE``
  point into the session's temporary folder too, so no block touches the user's
  runs or cache.
- Python blocks are compiled with top-level ``await`` allowed and awaited on the
  session's one asyncio loop. Shell blocks run whole with ``bash -e -o pipefail``
  (the ``tether`` CLI is the installed one). YAML blocks are parsed, written to the
  file their first line names (``# backend.yml``) or one of our own, and loaded: a
  mapping whose ``type`` is a backend with ``tether.load_config``, one with ``steps``
  with ``tether pipeline validate``, one with a ``command`` with ``tether.load_job``.
- Directives in HTML comments just above a fence: ``<!-- fragment: why -->`` (not
  run: signature listings, transcripts; keep them few), ``<!-- needs: docker -->``
  and ``<!-- needs: slurm -->`` (a skip without the service, a failure in CI),
  ``<!-- in: examples/NAME -->`` (copy that example's files into the folder first)
  and ``<!-- env: NAME=value -->``. The README's ``<!-- test-command -->`` block is a
  fragment: it would run this suite from inside itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .docs_support import BLOCK_TIMEOUT, ROOT, SERVICES, Block, collect, parse, plan_for
from .services import IMPORTED_IMAGE

BLOCKS = collect()


def _group(block: Block) -> tuple[str, str]:
    """The session a block runs in: its document's, or the one of the service it needs."""
    return block.path, ",".join(sorted(block.needs))


def _runnable(group: tuple[str, str]) -> list[Block]:
    return [b for b in BLOCKS if not b.fragment and _group(b) == group]


def _param(block: Block) -> object:
    marks: list[pytest.MarkDecorator] = []
    if block.fragment:
        marks.append(pytest.mark.skip(reason=f"fragment: {block.fragment}"))
    else:
        budget = BLOCK_TIMEOUT * len(_runnable(_group(block))) + 30
        marks.append(pytest.mark.timeout(budget))
    marks += [getattr(pytest.mark, service) for service in block.needs]
    return pytest.param(block, id=block.id, marks=marks)


_SESSIONS: dict[tuple[str, str], tuple[dict[str, dict[str, object]], str]] = {}


def _run_session(
    blocks: list[Block], base: Path, *, docker: bool = False
) -> tuple[dict[str, dict[str, object]], str]:
    """Run ``blocks`` in order in one fresh interpreter; each block's outcome by id."""
    base.mkdir(parents=True)
    work = base / "work"
    work.mkdir()
    plan = base / "plan.json"
    report = base / "report.jsonl"
    plan.write_text(json.dumps(plan_for(blocks, work, report)))
    env = os.environ.copy()
    env["TETHER_HOME"] = str(base / "tether-home")
    env["TETHER_CACHE_STORE"] = str(base / "tether-cache.sqlite")
    env["PYTHONUNBUFFERED"] = "1"
    # The installed `tether` CLI, beside this interpreter, even when the venv is not active.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if docker:
        env["TETHER_DOCKER_IMAGE"] = IMPORTED_IMAGE
    log = base / "session.log"
    with log.open("w") as out:
        try:
            subprocess.run(
                [sys.executable, str(ROOT / "tests" / "docs_support.py"), str(plan)],
                cwd=work,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=BLOCK_TIMEOUT * len(blocks),
                check=False,
            )
        except subprocess.TimeoutExpired:
            out.write("\n(the session ran out of time)\n")
    outcomes = {}
    if report.exists():
        for line in report.read_text().splitlines():
            outcome = json.loads(line)
            outcomes[outcome["id"]] = outcome
    return outcomes, log.read_text()


def _block_log(log: str, block: Block) -> str:
    """What the session printed while ``block`` ran."""
    marker = f"===== {block.id} "
    start = log.find(marker)
    if start < 0:
        return log[-4000:]
    end = log.find("\n===== ", log.find("\n", start) + 1)
    while end >= 0 and log.startswith(f"\n===== {block.id} =====", end):
        end = log.find("\n===== ", end + 1)
    return log[start : end if end >= 0 else None][-6000:]


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_doc_block(
    block: Block, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    for service in block.needs:
        request.getfixturevalue(SERVICES[service])
    group = _group(block)
    if group not in _SESSIONS:
        name = f"docs-{Path(group[0]).stem}{'-' + group[1].replace(',', '-') if group[1] else ''}"
        base = tmp_path_factory.mktemp(name, numbered=True) / "s"
        _SESSIONS[group] = _run_session(_runnable(group), base, docker="docker" in block.needs)
    outcomes, log = _SESSIONS[group]
    outcome = outcomes.get(block.id)
    output = _block_log(log, block)
    assert outcome is not None, f"{block.id} never ran (the session died or timed out):\n{output}"
    assert outcome["ok"], f"{block.id} failed:\n{outcome['error']}\n--- its output ---\n{output}"


def test_collector_finds_the_docs() -> None:
    """The collector sees README.md and every guide, and fragments say why."""
    paths = {b.path for b in BLOCKS}
    assert "README.md" in paths
    assert {"docs/index.md", "docs/cache.md", "docs/pipelines.md"} <= paths
    assert len({b.id for b in BLOCKS}) == len(BLOCKS)
    assert all(b.fragment.strip() for b in BLOCKS if b.fragment is not None)
    assert any(b.path == "docs/slurm.md" and b.needs == ["slurm"] for b in BLOCKS)


def test_needs_names_a_known_service(tmp_path: Path) -> None:
    """A typo in ``<!-- needs: … -->`` is an error, not a block that silently never skips."""
    page = tmp_path / "page.md"
    page.write_text("<!-- needs: slurm -->\n```bash\nsinfo\n```\n")
    [block] = parse(page, root=tmp_path)
    assert block.needs == ["slurm"]
    page.write_text("<!-- needs: slrum -->\n```bash\nsinfo\n```\n")
    with pytest.raises(ValueError, match="unknown service 'slrum'"):
        parse(page, root=tmp_path)


def test_a_failing_block_fails_alone(tmp_path: Path) -> None:
    """The driver reports each block on its own: a failure does not stop the next block,
    and a later block sees what earlier ones defined (the notebook rule)."""
    blocks = [
        Block("x.md", 1, "python", "import anyio\nvalue = 41\nawait anyio.sleep(0)\n"),
        Block("x.md", 5, "python", "raise RuntimeError('boom')\n"),
        Block("x.md", 9, "python", "assert value + 1 == 42\n"),
        Block("x.md", 13, "bash", "false\necho unreachable\n"),
        Block("x.md", 17, "yaml", "name: j\ncommand: echo hi\n"),
        Block("x.md", 21, "yaml", "just: data\n"),
    ]
    outcomes, log = _run_session(blocks, tmp_path / "s")
    assert {k: v["ok"] for k, v in outcomes.items()} == {
        "x.md:1": True,
        "x.md:5": False,
        "x.md:9": True,
        "x.md:13": False,
        "x.md:17": True,
        "x.md:21": False,
    }
    assert "RuntimeError: boom" in str(outcomes["x.md:5"]["error"])
    assert "unreachable" not in log
