"""Run notebooks on a real Jupyter kernel (ipykernel through nbclient) and read their outputs.

:func:`run_notebook` builds a notebook from cell sources, executes it on a fresh
kernel of *this* interpreter (a kernel spec written into a temporary folder, so no
user-installed ``python3`` spec can take its place), with ``TETHER_HOME`` and the
default cache store in a temporary folder, and returns each cell's outputs and
every iopub message the cell received, ``update_display_data`` included (a
notebook file keeps only the final state of an updated display).

:func:`run_notebook_file` does the same for a notebook file, cell by cell, and
restarts the kernel where a markdown cell tagged ``restart-kernel`` tells the
reader to: the cells after it run in a new kernel process, as they would for a
reader who follows the notebook.

:func:`check_html` is a small well-formedness check over ``html.parser``: every
tag closed, properly nested, no stray end tags.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

#: Seconds a cell may take (a busy machine, a first local run compiling its supervisor).
CELL_TIMEOUT = 180
#: Seconds the kernel may take to start.
STARTUP_TIMEOUT = 120

_KERNEL = "tether-test"


@dataclass
class Cell:
    """One executed cell: its outputs as the notebook keeps them, and its messages."""

    source: str
    outputs: list[dict[str, Any]]
    messages: list[dict[str, Any]] = field(default_factory=list)
    #: The cell's ``metadata.tags``.
    tags: list[str] = field(default_factory=list)
    #: The process id of the kernel that ran the cell (only from run_notebook_file).
    kernel_pid: int | None = None

    def stderr(self) -> str:
        """Everything the cell wrote to stderr."""
        return "".join(
            o.get("text", "")
            for o in self.outputs
            if o.get("output_type") == "stream" and o.get("name") == "stderr"
        )

    def errors(self) -> list[dict[str, Any]]:
        """The cell's error outputs (an exception the cell raised)."""
        return [o for o in self.outputs if o.get("output_type") == "error"]

    def stdout(self) -> str:
        """Everything the cell printed."""
        return "".join(
            o.get("text", "")
            for o in self.outputs
            if o.get("output_type") == "stream" and o.get("name") == "stdout"
        )

    def html(self) -> list[str]:
        """The text/html of every rich output, in order."""
        found = []
        for output in self.outputs:
            data = output.get("data", {})
            if "text/html" in data:
                html = data["text/html"]
                found.append(html if isinstance(html, str) else "".join(html))
        return found

    def displays(self) -> dict[str, list[dict[str, Any]]]:
        """Display id → the display_data and update_display_data contents sent for it."""
        shown: dict[str, list[dict[str, Any]]] = {}
        for message in self.messages:
            if message["msg_type"] not in ("display_data", "update_display_data"):
                continue
            transient = message["content"].get("transient") or {}
            display_id = transient.get("display_id")
            if display_id:
                shown.setdefault(display_id, []).append(
                    {"msg_type": message["msg_type"], **message["content"]}
                )
        return shown


class _RecordingClient(NotebookClient):
    """An nbclient client that also keeps every iopub message, per cell."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.messages: dict[int, list[dict[str, Any]]] = {}

    def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
        self.messages.setdefault(cell_index, []).append(
            {"msg_type": msg["msg_type"], "content": msg["content"]}
        )
        return super().process_message(msg, cell, cell_index)


def _kernel_specs(folder: Path) -> KernelSpecManager:
    spec = folder / "kernels" / _KERNEL
    spec.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "tether tests", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    return KernelSpecManager(kernel_dirs=[str(folder / "kernels")])


def _client(notebook: Any, folder: Path) -> tuple[_RecordingClient, dict[str, str]]:
    """A client for ``notebook`` on a kernel of this interpreter in ``folder``, and its env."""
    folder.mkdir(parents=True, exist_ok=True)
    env = os.environ.copy()
    env["TETHER_HOME"] = str(folder / "tether-home")
    env["TETHER_CACHE_STORE"] = str(folder / "tether-cache.sqlite")
    env.pop("JPY_PARENT_PID", None)
    # IPC sockets in the folder, not TCP ports: nothing listens on the network at all.
    manager = AsyncKernelManager(
        kernel_spec_manager=_kernel_specs(folder),
        kernel_name=_KERNEL,
        transport="ipc",
        ip=str(folder / "kernel-ipc"),
    )
    client = _RecordingClient(
        notebook,
        km=manager,
        timeout=CELL_TIMEOUT,
        startup_timeout=STARTUP_TIMEOUT,
        kernel_name=_KERNEL,
        resources={"metadata": {"path": str(folder)}},
    )
    return client, env


def _cells(client: _RecordingClient, pids: dict[int, int] | None = None) -> list[Cell]:
    return [
        Cell(
            cell.source,
            [dict(o) for o in cell.outputs],
            client.messages.get(index, []),
            list(cell.metadata.get("tags", [])),
            (pids or {}).get(index),
        )
        for index, cell in enumerate(client.nb.cells)
        if cell.cell_type == "code"
    ]


def run_notebook(cells: list[str], folder: Path) -> list[Cell]:
    """Execute ``cells`` in order on a fresh kernel running in ``folder``; their outputs.

    A cell that raises fails the run (nbclient's ``CellExecutionError`` with the
    traceback). The kernel's ``TETHER_HOME`` is ``folder/tether-home``.
    """
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    client, env = _client(notebook, folder)
    # We made the kernel manager, so nbclient would leave the kernel running: ask it
    # to shut the kernel down and close its channels when the notebook is done.
    client.execute(env=env, cleanup_kc=True)
    return _cells(client)


#: The tag of a markdown cell that tells the reader to restart the kernel.
RESTART_TAG = "restart-kernel"


def run_notebook_file(path: Path, folder: Path) -> list[Cell]:
    """Execute the notebook at ``path`` in ``folder``, restarting the kernel where it says.

    Cells run one by one on a fresh kernel whose working directory is ``folder``
    (copy the notebook's folder there first: nothing is written next to ``path``).
    At each markdown cell tagged :data:`RESTART_TAG` the kernel is restarted, as
    Jupyter's *Restart Kernel* does (a new process, the same connection), so the
    cells below it run in a new process. Returns the code cells, each with the pid
    of the kernel that ran it. A cell that raises fails the run.
    """
    notebook = nbformat.read(path, as_version=4)
    client, env = _client(notebook, folder)
    pids = asyncio.run(_execute_with_restarts(client, env))
    return _cells(client, pids)


async def _execute_with_restarts(client: _RecordingClient, env: dict[str, str]) -> dict[int, int]:
    pids: dict[int, int] = {}
    client.reset_execution_trackers()
    async with client.async_setup_kernel(env=env, cleanup_kc=True):
        assert client.km is not None and client.kc is not None
        for index, cell in enumerate(client.nb.cells):
            if cell.cell_type == "markdown" and RESTART_TAG in cell.metadata.get("tags", []):
                await client.km.restart_kernel(now=False)
                await client.kc.wait_for_ready(timeout=STARTUP_TIMEOUT)
            if cell.cell_type != "code":
                continue
            await client.async_execute_cell(
                cell, index, execution_count=client.code_cells_executed + 1
            )
            pids[index] = client.km.provisioner.pid
    return pids


_VOID = {"br", "hr", "img", "input", "meta", "link", "wbr", "col", "area", "source"}


class _Checker(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@dataclass
class ParsedHtml:
    """What :func:`check_html` found: the tags in order and the text without tags."""

    tags: list[str]
    text: str


def check_html(markup: str) -> ParsedHtml:
    """Parse ``markup``; assert every tag is closed in order. Returns tags and text."""
    checker = _Checker()
    checker.feed(markup)
    checker.close()
    assert not checker.problems, f"badly nested HTML: {checker.problems}\n{markup}"
    assert not checker.stack, f"unclosed tags {checker.stack}\n{markup}"
    return ParsedHtml(checker.tags, "".join(checker.text))
