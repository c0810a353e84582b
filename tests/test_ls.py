"""``tether ls`` reads each run's files its own quick way: it must say what the handles say.

Every kind of local run (and a few records that only a real handle can judge) is
listed both ways: by the listing's summary (``tether.backends.local._listing``) and
by loading and refreshing the real handle, as ``tether status`` does. The rows must
be the same, word for word.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from tether import Call, DummyConfig, Job, LocalConfig, RunHandle
from tether._proc import start_ticks
from tether.cli import _ls

from .calls_support import square

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _edit(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _copy(runs: Path, source: RunHandle, run_id: str) -> Path:
    """A copy of a finished run's folder under a new id, its record naming the copy."""
    assert source.run_dir is not None
    folder = runs / run_id
    shutil.copytree(source.run_dir, folder)
    text = (folder / "handle.json").read_text().replace(source.run_id, run_id)
    (folder / "handle.json").write_text(text)
    return folder


def _record(folder: Path) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((folder / "handle.json").read_text())
    return record


def _save_record(folder: Path, record: dict[str, Any]) -> None:
    (folder / "handle.json").write_text(json.dumps(record))


async def _make_runs(runs: Path) -> RunHandle:
    """Runs of every kind in ``runs``; returns the one left running."""
    backend = LocalConfig(runs_dir=runs, timeout=600, cancel_grace=1).create()
    ok = await backend.submit(Job(name="ok", command="echo out; echo 'last words' >&2"))
    bad = await backend.submit(Job(name="bad", command="echo 'no such input' >&2; exit 3"))
    silent = await backend.submit(Job(name="silent", command="exit 127"))
    for handle in (ok, bad, silent):
        await handle.wait(60)
    slow = await backend.submit(Job(name="slow", command="sleep 60"))
    await slow.cancel()
    quiet = LocalConfig(runs_dir=runs, capture_output=False).create()
    await (await quiet.submit(Job(name="uncaptured", command="exit 4"))).wait(60)
    await (await backend.submit(Call(square, 4))).wait(60)
    await (await backend.submit(Job(name="slots", command="exit 2", resources={"cpus": 1}))).wait(
        60
    )
    dummy = DummyConfig(runs_dir=runs, stdout="hi\n").create()
    await (await dummy.submit(Job(name="dummy"))).wait(60)

    # What a supervisor may record, and records a listing must not trust blindly.
    timed = _copy(runs, ok, "timed-out")
    _edit(timed / "exit.json", reason="timeout", exit_code=None)
    killed = _copy(runs, bad, "killed")
    _edit(killed / "exit.json", exit_code=-9)
    unknown_signal = _copy(runs, bad, "signal-99")
    _edit(unknown_signal / "exit.json", exit_code=-99)
    full = _copy(runs, bad, "disk-full")
    _edit(full / "exit.json", disk_full=True)
    worded = _copy(runs, bad, "worded")
    _edit(worded / "exit.json", error="the supervisor's own words")
    odd_code = _copy(runs, bad, "odd-code")
    _edit(odd_code / "exit.json", exit_code=True)
    corrupt_exit = _copy(runs, ok, "corrupt-exit")
    (corrupt_exit / "exit.json").write_text("{not json")
    lost = _copy(runs, ok, "lost")
    (lost / "exit.json").unlink()
    moved = _copy(runs, ok, "moved")  # its record names a folder that is gone
    record = _record(moved)
    record["data"]["run_dir"] = str(runs / "gone")
    _save_record(moved, record)
    rebooted = _copy(runs, ok, "rebooted")
    (rebooted / "exit.json").unlink()
    record = _record(rebooted)
    record["data"].update(pid=os.getpid(), start_ticks=start_ticks(os.getpid()), boot_id="old")
    _save_record(rebooted, record)
    impostor = _copy(runs, ok, "impostor")  # names a live process that is not its supervisor
    (impostor / "exit.json").unlink()
    record = _record(impostor)
    record["data"].update(pid=os.getpid(), start_ticks=start_ticks(os.getpid()))
    _save_record(impostor, record)
    no_ticks = _copy(runs, ok, "no-ticks")
    (no_ticks / "exit.json").unlink()
    record = _record(no_ticks)
    record["data"].update(pid=os.getpid(), start_ticks=None)
    _save_record(no_ticks, record)
    stringly = _copy(runs, ok, "stringly")  # field types only a validated handle judges
    record = _record(stringly)
    record["data"]["pid"] = str(record["data"]["pid"])
    record["config"]["capture_output"] = "yes"
    _save_record(stringly, record)
    invalid = _copy(runs, ok, "invalid-config")  # valid JSON types, refused by the model
    record = _record(invalid)
    record["config"]["shell"] = "maybe"
    _save_record(invalid, record)
    nameless = _copy(runs, ok, "nameless")
    record = _record(nameless)
    del record["job"]["name"]
    _save_record(nameless, record)
    (runs / "broken").mkdir()
    (runs / "broken" / "handle.json").write_text("{not json")
    (runs / "newer").mkdir()
    (runs / "newer" / "handle.json").write_text(
        json.dumps({"format": "tether.handle", "version": 99})
    )
    (runs / "not-a-run").mkdir()
    (runs / "stray-file").write_text("")

    running = await backend.submit(Job(name="running", command="sleep 600"))
    await running.save(runs / running.run_id / "handle.json")
    return running


def _fields(row: _ls._Row) -> tuple[Any, ...]:
    return (row.run_id, row.backend, row.name, row.state, row.exit_code, row.error)


async def test_the_listing_says_what_each_handle_says(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    running = await _make_runs(runs)
    try:
        quick = await anyio.to_thread.run_sync(_ls._rows, runs)  # it runs its own loop
        full = [_ls._Row(row.run_id, row.handle, row.submitted) for row in quick]
        limiter = anyio.CapacityLimiter(4)
        for row in full:
            await _ls._fill(row, limiter)
    finally:
        await running.cancel()
    # One deliberate difference: a record whose saved settings no longer validate (a
    # newer tether tightened a field, say) is listed with the state its run's files
    # record; loading its handle reports the settings.
    stale = [i for i, row in enumerate(full) if "holds invalid settings" in (row.error or "")]
    assert [full[i].run_id for i in stale] == ["invalid-config"]
    assert _fields(quick[stale[0]])[1:] == ("local", "ok", "SUCCEEDED", 0, None)
    assert [_fields(row) for i, row in enumerate(quick) if i not in stale] == [
        _fields(row) for i, row in enumerate(full) if i not in stale
    ]
    by_id = {row.run_id: row for row in quick}
    assert "not-a-run" not in by_id and "stray-file" not in by_id
    # The summary answered for the local runs it can judge; the rest were loaded.
    summarized = {row.run_id for row in quick if not row.pending}
    assert {"timed-out", "killed", "disk-full", "lost", "moved", "impostor"} <= summarized
    assert running.run_id in summarized and by_id[running.run_id].state == "RUNNING"
    assert {"stringly", "nameless", "odd-code"}.isdisjoint(summarized)
    states = {row.run_id: row.state for row in quick}
    assert states["lost"] == states["moved"] == states["impostor"] == "LOST"
    assert states["timed-out"] == "TIMED_OUT"
    assert {row.state for row in quick if row.backend == "dummy"} == {"SUCCEEDED"}
    assert any(row.name == "square" and row.pending for row in quick)  # a Call: loaded


async def test_ls_of_local_runs_imports_no_backend_models(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    backend = LocalConfig(runs_dir=runs).create()
    for command in ("true", "exit 1"):
        await (await backend.submit(Job(command=command))).wait(60)
    code = (
        "import io, json, sys, contextlib\n"
        "from tether.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    code = main(['ls', '--json', sys.argv[1]])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'yaml')\n"
        "               or m in ('tether.backends.local.handle', 'tether.registry'))\n"
        "print(json.dumps({'code': code, 'rows': json.loads(out.getvalue()), 'heavy': heavy}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(runs)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.splitlines()[-1])
    assert seen["code"] == 0 and seen["heavy"] == []
    assert sorted(row["state"] for row in seen["rows"]) == ["FAILED", "SUCCEEDED"]


def test_a_pid_missing_from_the_snapshot_is_looked_up_for_new_records() -> None:
    processes = _ls._Processes()
    assert processes.pids is not None and os.getpid() in processes.pids
    old = processes.exists_for(processes.since - 60)
    new = processes.exists_for(processes.since + 1)
    child = subprocess.Popen(["sleep", "5"])  # started after the snapshot
    try:
        assert old(os.getpid()) and not old(child.pid)
        assert new(child.pid)  # a record written after the snapshot: checked in full
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
