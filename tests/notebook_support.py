"""Run notebooks on a real Jupyter kernel (ipykernel through nbclient) and read their outputs.

:func:`run_notebook` builds a notebook from cell sources, executes it on a fresh
kernel of *this* interpreter (a kernel spec written into a temporary folder, so no
user-installed ``python3`` spec can take its place), with ``TETHER_HOME`` and the
default cache store in a temporary folder, and returns each cell's outputs and
every iopub message the cell received, ``update_display_data`` included (a
notebook file keeps only the final state of an updated display).

:func:`check_html` is a small well-formedness check over ``html.parser``: every
tag closed, properly nested, no stray end tags.
"""

from __future__ import annotations

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


def run_notebook(cells: list[str], folder: Path) -> list[Cell]:
    """Execute ``cells`` in order on a fresh kernel running in ``folder``; their outputs.

    A cell that raises fails the run (nbclient's ``CellExecutionError`` with the
    traceback). The kernel's ``TETHER_HOME`` is ``folder/tether-home``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in cells]
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
    # We made the kernel manager, so nbclient would leave the kernel running: ask it
    # to shut the kernel down and close its channels when the notebook is done.
    client.execute(env=env, cleanup_kc=True)
    return [
        Cell(cell.source, [dict(o) for o in cell.outputs], client.messages.get(index, []))
        for index, cell in enumerate(notebook.cells)
    ]


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
