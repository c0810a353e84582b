"""Runs a pickled Python call and pickles its outcome: the far side of ``Call`` jobs.

``python -P …/tether/_worker.py RUN_DIR`` (or ``python -m tether.worker RUN_DIR``)
reads ``RUN_DIR/call.pkl``, calls the function and writes ``RUN_DIR/outcome.pkl``
(atomically, then exits 0 on success, 1 when the call raised, or the code the
call passed to ``sys.exit``). The local backend runs it as the run's command, so a
``Call`` there is detached and resumable like any command. ``--pool`` makes it a
pool worker for the inline backend's processes mode: length-prefixed call frames
in, outcome frames out, over two pipes.

This module uses the standard library only and is run by its file path, so that
starting a worker does not import tether (nor pydantic).
Unpickling runs code: a payload is trusted exactly as much as its writer.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import struct
import sys
import tempfile
import traceback
from typing import Any, BinaryIO

PROTOCOL = 5
FRAME_HEADER = struct.Struct("<Q")

#: Files of a Call run in its run folder.
PAYLOAD_FILE = "call.pkl"
OUTCOME_FILE = "outcome.pkl"


def resolve(target: str) -> Any:
    """The object a ``"pkg.mod:qualname"`` string names (imports the module)."""
    import importlib

    module_name, _, qualname = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def type_name(exc: BaseException) -> str:
    """``ValueError`` for builtins, ``pkg.mod.Error`` for the rest."""
    kind = type(exc)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def _failure(exc: BaseException, where: str, *, skip_frame: bool = False) -> dict[str, Any]:
    """A failed outcome; the exception travels pickled on its own, so a type the
    parent cannot unpickle still leaves its name, message and traceback."""
    try:
        pickled: bytes | None = pickle.dumps(exc, protocol=PROTOCOL)
    except Exception:
        pickled = None
    tb = exc.__traceback__
    if skip_frame and tb is not None:
        tb = tb.tb_next  # the worker's own frame says nothing about the call
    return {
        "ok": False,
        "type": type_name(exc),
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, tb)),
        "exception": pickled,
        "where": where,
        "exit_code": None,
    }


def _exit_outcome(exc: SystemExit) -> dict[str, Any]:
    code = exc.code
    if code is None or isinstance(code, int):
        exit_code = code or 0
        message = ""
    else:
        exit_code, message = 1, str(code)
    if exit_code == 0:
        return {"ok": True, "value": None}
    return {
        "ok": False,
        "type": "SystemExit",
        "message": message or f"exit code {exit_code}",
        "traceback": "",
        "exception": None,
        "where": "call",
        "exit_code": exit_code,
    }


_known_paths: set[str] = set()


def _extend_path(entries: Any) -> None:
    """Put the submitter's sys.path entries that this process lacks in front."""
    missing = [entry for entry in entries if entry not in _known_paths]
    if missing:
        present = set(sys.path)
        sys.path[:0] = [entry for entry in missing if entry not in present]
        _known_paths.update(missing)


def execute(payload: bytes) -> dict[str, Any]:
    """Unpickle a payload, call it, and return the outcome (never raises Exception)."""
    try:
        data = pickle.loads(payload)
        _extend_path(data.get("sys_path", ()))
        call = pickle.loads(data["call"])
        fn = pickle.loads(call["fn"]) if call["fn"] is not None else resolve(call["target"])
    except Exception as exc:
        return _failure(exc, "load")
    try:
        value = fn(*call["args"], **call["kwargs"])
    except SystemExit as exc:
        return _exit_outcome(exc)
    except Exception as exc:
        return _failure(exc, "call", skip_frame=True)
    return {"ok": True, "value": value}


def dump_outcome(outcome: dict[str, Any]) -> bytes:
    """Pickle an outcome; a return value that cannot be pickled fails the call."""
    try:
        return pickle.dumps(outcome, protocol=PROTOCOL)
    except Exception as exc:
        text = f"the call's return value cannot be pickled: {type(exc).__name__}: {exc}"
        return pickle.dumps(_failure(TypeError(text), "result"), protocol=PROTOCOL)


def exit_status(outcome: dict[str, Any]) -> int:
    """The worker's exit code for an outcome."""
    if outcome["ok"]:
        return 0
    code = outcome.get("exit_code")
    return code if isinstance(code, int) else 1


def _write_atomic(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".outcome.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def run_folder(run_dir: str) -> int:
    """Run the call staged in ``run_dir``; write its outcome there; return the exit code."""
    with open(os.path.join(run_dir, PAYLOAD_FILE), "rb") as handle:
        payload = handle.read()
    outcome = execute(payload)
    if not outcome["ok"] and outcome.get("traceback"):
        sys.stderr.write(outcome["traceback"])
    data = dump_outcome(outcome)
    _write_atomic(os.path.join(run_dir, OUTCOME_FILE), data)
    _seal(os.path.join(run_dir, OUTCOME_FILE), data)
    return exit_status(pickle.loads(data))


def _seal(path: str, data: bytes) -> None:
    """Sign the outcome with this user's key (tether._integrity's format), so that
    tether unpickles it; the submitter made the key, and without it nothing is signed."""
    import hashlib
    import hmac

    home = os.environ.get("TETHER_HOME") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "tether"
    )
    try:
        with open(os.path.join(os.path.expanduser(home), "secret.key"), "rb") as handle:
            key = handle.read()
    except OSError:
        return
    _write_atomic(path + ".sig", hmac.new(key, data, hashlib.sha256).hexdigest().encode())


def _read_exact(stream: BinaryIO, size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = stream.read(size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_frame(stream: BinaryIO) -> bytes | None:
    """One length-prefixed frame, or None at the end of the stream."""
    header = _read_exact(stream, FRAME_HEADER.size)
    if header is None:
        return None
    return _read_exact(stream, FRAME_HEADER.unpack(header)[0])


def frame(data: bytes) -> bytes:
    """``data`` with its length prefix."""
    return FRAME_HEADER.pack(len(data)) + data


class _Capture(io.TextIOBase):
    """A text stream that keeps what the call writes, for the outcome frame."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)


def _die_with(parent: int) -> None:
    """Get SIGKILL when the pool's process dies, so no worker outlives it (Linux)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def serve(in_fd: int, out_fd: int, parent: int | None = None) -> int:
    """Pool worker loop: a call frame in, an outcome frame out, until ``in_fd`` closes.

    A frame holds ``(env, cwd, payload)``; the environment and folder are set for
    the call and restored after it. The call's stdout and stderr (Python-level
    writes) come back in the outcome as ``stdout``/``stderr``. The channel has its
    own pipes, so nothing a call prints at the file-descriptor level can corrupt it.
    """
    if parent is not None:
        _die_with(parent)
    inbox = os.fdopen(in_fd, "rb", buffering=1 << 16)
    outbox = os.fdopen(out_fd, "wb", buffering=0)
    while True:
        data = read_frame(inbox)
        if data is None:
            return 0
        env, cwd, payload = pickle.loads(data)
        saved_env = {key: os.environ.get(key) for key in env}
        saved_cwd = os.getcwd() if cwd else None
        out, err = _Capture(), _Capture()
        try:
            os.environ.update(env)
            if cwd:
                os.chdir(cwd)
            sys.stdout, sys.stderr = out, err
            outcome = execute(payload)
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            if saved_cwd is not None:
                os.chdir(saved_cwd)
        outcome["stdout"] = "".join(out.parts)
        outcome["stderr"] = "".join(err.parts)
        outbox.write(frame(dump_outcome(outcome)))


def main(argv: list[str] | None = None) -> int:
    """``worker.py RUN_DIR`` or ``worker.py --pool IN_FD OUT_FD [PARENT_PID]``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) in (3, 4) and args[0] == "--pool":
        return serve(int(args[1]), int(args[2]), int(args[3]) if len(args) == 4 else None)
    if len(args) != 1:
        sys.stderr.write("usage: python -m tether.worker RUN_DIR | --pool IN_FD OUT_FD\n")
        return 2
    return run_folder(args[0])


if __name__ == "__main__":
    sys.exit(main())
