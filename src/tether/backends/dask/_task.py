"""The Dask task of every run: what executes on a worker, and watches itself.

A worker's thread runs :func:`run_task`. A command job (or a ``Call`` in
``call_mode="process"``, by tether's worker module) runs under tether's run
supervisor (the local backend's pure-Python one) in a session of its own, writing
``stdout``/``stderr`` into the run folder; the supervisor enforces the run's
timeout. The task polls, about every 0.1 s, for the supervisor's end, the run's
cancel event (``tether-cancel-<run id>``, which any client can set) and for the
scheduler having released the task; on either of the last two it TERMs the
supervisor, which stops every descendant of the run (TERM, then KILL after the
grace), daemonised ones included.

The task returns the run's outcome (reason, exit code, times and a Call's
outcome pickle), which the scheduler keeps for re-attaching clients; the same
outcome without the pickle goes to ``exit.json`` in the run folder.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from ... import _worker as worker

#: Seconds between the task's looks at its subprocess and its cancel event.
POLL = 0.1
#: What the task writes into the run folder when the run starts: its pid.
STARTED_FILE = "started.json"


def cancel_event_name(run_id: str) -> str:
    """The name of the ``distributed.Event`` that cancels the run."""
    return f"tether-cancel-{run_id}"


class _Watch:
    """What may end a run early: its cancel event and the scheduler's release."""

    def __init__(self, run_id: str) -> None:
        dask: Any = importlib.import_module("distributed")
        self._event = dask.Event(cancel_event_name(run_id))
        self._worker: Any = None
        self._key: Any = None
        with contextlib.suppress(Exception):  # outside a worker (tests): no release
            self._worker = dask.get_worker()
            self._key = self._worker.get_current_task()

    def cancelled(self, wait: float = 0.0) -> bool:
        """Whether the run's cancel event is set (waiting up to ``wait`` for it)."""
        try:
            return bool(self._event.wait(timeout=wait) if wait else self._event.is_set())
        except Exception:  # the scheduler is briefly unreachable: look again soon
            time.sleep(wait)
            return False

    def released(self) -> bool:
        """Whether the scheduler no longer wants this task (cancelled, forgotten)."""
        if self._worker is None:
            return False
        try:
            task = self._worker.state.tasks.get(self._key)
        except Exception:
            return False
        return task is None or task.state in ("cancelled", "released", "forgotten")


def run_task(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the job ``spec`` describes on this worker; return its outcome."""
    started = time.time()
    watch = _Watch(spec["run_id"])
    if watch.cancelled():
        return _outcome(spec, "cancelled", None, None, started)
    if spec.get("thread_call"):
        return _run_in_thread(spec, watch, started)
    return _run_process(spec, watch, started)


def _supervisor() -> list[str]:
    """tether's pure-Python run supervisor, run by this worker's Python (stdlib only)."""
    script = os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "_supervisor", "fallback.py"
    )
    return [sys.executable, "-I", "-S", script]


def _run_process(spec: dict[str, Any], watch: _Watch, started: float) -> dict[str, Any]:
    """The run under tether's supervisor (the local backend's): it runs the command in
    the run folder's terms, enforces the timeout, turns a TERM into TERM-then-KILL of
    every descendant (it is their subreaper, so a daemonising child cannot escape) and
    records ``exit.json`` once nothing of the run is left."""
    run_dir = spec["run_dir"]
    if spec.get("payload") is not None:
        worker._write_atomic(os.path.join(run_dir, worker.PAYLOAD_FILE), spec["payload"])
    started_file = os.path.join(run_dir, STARTED_FILE)
    if os.path.exists(started_file):
        # An earlier attempt started the run, and its worker died (Dask runs the task
        # again elsewhere): end what is left of that attempt, and never run it twice.
        stop_supervisor(started_file, spec["run_id"], spec["grace"])
        return _outcome(spec, "worker-lost", None, None, started)
    env = {**os.environ, **spec["env"], "TETHER_RUN_ID": spec["run_id"], "TETHER_RUN_DIR": run_dir}
    if spec.get("owner_pid"):  # an embedded cluster's run ends with its process
        env["TETHER_SUPERVISOR_OWNER"] = str(spec["owner_pid"])
    argv = spec["argv"] or [sys.executable, "-P", worker.__file__, run_dir]
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(run_dir, "exit.json"))
    proc = subprocess.Popen(
        [
            *_supervisor(),
            run_dir,
            spec["cwd"],
            repr(float(spec["timeout"])),
            repr(float(spec["grace"])),
            "1",
            *argv,
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # the worker's own signals never reach the run
    )
    _write_json(started_file, {"pid": proc.pid, "started": started})
    released = False
    stopping = False
    while proc.poll() is None:
        if not stopping and (watch.cancelled(POLL) or (released := watch.released())):
            stopping = True  # the supervisor stops the whole tree and records it
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        elif stopping:
            time.sleep(POLL)
    try:
        with open(os.path.join(run_dir, "exit.json")) as handle:
            recorded = json.load(handle)
    except (OSError, ValueError):
        if stopping:
            # Our TERM reached the supervisor before its handlers (it was starting up):
            # it died, and it had not started the command yet.
            recorded = {"reason": "cancelled", "exit_code": None, "error": None}
        else:
            recorded = {"reason": "exited", "exit_code": None, "error": "the run's supervisor died"}
    reason = "released" if released else str(recorded.get("reason", "exited"))
    if reason == "exec_failed":
        reason = "exited"  # a command that does not exist fails the run, like any exit code
    code = recorded.get("exit_code")
    sig = recorded.get("signal")
    outcome_path = os.path.join(run_dir, worker.OUTCOME_FILE)
    pickled = None
    if spec.get("payload") is not None and reason == "exited" and os.path.exists(outcome_path):
        with open(outcome_path, "rb") as handle_bin:
            pickled = handle_bin.read()
    exit_code = code if isinstance(code, int) and code >= 0 else None
    return _outcome(
        spec,
        reason,
        exit_code,
        sig if isinstance(sig, int) else None,
        float(recorded.get("started", started)),
        outcome=pickled,
        error=recorded.get("error"),
    )


def _run_in_thread(spec: dict[str, Any], watch: _Watch, started: float) -> dict[str, Any]:
    """A Call in a thread of this worker: cancel and timeout can only abandon it."""
    started_file = os.path.join(spec["run_dir"], STARTED_FILE)
    if os.path.exists(started_file):  # its worker died: never run the call twice
        return _outcome(spec, "worker-lost", None, None, started)
    box: dict[str, bytes] = {}

    def call() -> None:
        box["outcome"] = worker.dump_outcome(worker.execute(spec["payload"]))

    thread = threading.Thread(target=call, name=f"tether-{spec['run_id']}", daemon=True)
    _write_json(started_file, {"pid": None, "started": started})
    thread.start()
    deadline = started + spec["timeout"]
    while thread.is_alive():
        thread.join(POLL / 2)
        if not thread.is_alive():
            break
        if time.time() >= deadline:
            return _outcome(spec, "timeout", None, None, started, abandoned=True)
        if watch.cancelled(POLL / 2):
            return _outcome(spec, "cancelled", None, None, started, abandoned=True)
        if watch.released():
            return _outcome(spec, "released", None, None, started, abandoned=True)
    pickled = box.get("outcome")
    code = 0 if pickled is None else worker.exit_status(pickle.loads(pickled))
    return _outcome(spec, "exited", code, None, started, outcome=pickled)


def stop_supervisor(started_file: str, run_id: str, grace: float) -> bool:
    """Stop the supervisor ``started_file`` names (it ends the run's whole tree) and
    wait for it to end, once proven to be the run's own (its environment names the
    run): a record is input, not authority. False when there was none to stop here
    (gone, on another machine, or not the run's)."""
    try:
        with open(started_file) as handle:
            pid = int(json.load(handle).get("pid"))
        with open(f"/proc/{pid}/environ", "rb") as environ:
            ours = f"TETHER_RUN_ID={run_id}".encode() in environ.read().split(b"\0")
    except (OSError, ValueError, TypeError, AttributeError):
        return False  # gone already, or nothing to prove it by
    if not ours:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.time() + grace + 10
    while os.path.exists(f"/proc/{pid}") and time.time() < deadline:
        time.sleep(POLL)
    return True


def _outcome(
    spec: dict[str, Any],
    reason: str,
    exit_code: int | None,
    sig: int | None,
    started: float,
    *,
    outcome: bytes | None = None,
    error: str | None = None,
    abandoned: bool = False,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "reason": reason,
        "exit_code": exit_code,
        "signal": sig,
        "started": started,
        "ended": time.time(),
        "error": error,
        "abandoned": abandoned,
    }
    with contextlib.suppress(OSError):
        _write_json(os.path.join(spec["run_dir"], "exit.json"), data)
    return {**data, "outcome": outcome}


def _write_json(path: str, data: dict[str, Any]) -> None:
    worker._write_atomic(path, json.dumps(data).encode())
