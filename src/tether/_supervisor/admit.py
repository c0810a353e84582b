"""Admission to resource slots: the step a local run takes before its supervisor starts.

Run as a script in place of the supervisor, with the supervisor's own arguments
(``python -I -S admit.py RUN_DIR CWD TIMEOUT GRACE CAPTURE ARGV...``), so it needs
nothing but the standard library. It reads the run's request (RUN_DIR/slots-request.json,
written by the submitter), waits its turn for the CPUs, memory and GPUs it asks for,
and then *becomes* the supervisor (``exec``: same pid, same session), handing it:

- the slots, as an open, ``flock()``-ed lease file (fd >= 10, inherited through exec by
  the supervisor and the command). The kernel drops the lock when the last process
  holding it ends, so a crashed submitter, a killed supervisor or a killed admission
  can never leak a slot: a lease whose lock can be taken is a dead one and is removed;
- ``CUDA_VISIBLE_DEVICES`` (and HIP's equivalent) naming its own GPUs, the CPU affinity
  of its own cores when pinning is asked, and the memory limit for the supervisor to
  apply to the command (``TETHER_RUN_CGROUP``, ``TETHER_RUN_RLIMIT_DATA``);
- a gate on fd 3 already open, as the supervisor's protocol expects;
- RUN_DIR/slots.json, the grant, written just before the exec: the mark that the run
  was admitted (its handle reports RUNNING from then on, PENDING before).

The ledger lives in one per-user folder shared by every process of the user on the
machine (``SLOTS_DIR``): ``leases/<run id>.lease`` (held slots), ``queue/<submit time>-
<run id>.ticket`` (runs waiting: the submitter makes and locks the ticket and hands the
locked fd over as fd 4, see ``take_ticket``) and ``admit.lock``, taken for the short
moment of looking at the ledger and changing it. Runs are admitted first come, first
served, in submission order: a run waits while an older live ticket waits, even if
it would fit (no overtaking).

A cancel while waiting (SIGTERM, SIGINT or SIGHUP, which tether's submitter starts
blocked) records a "cancelled" outcome in RUN_DIR/exit.json and leaves.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from typing import Any

GATE_FD = 3
#: The run's queue ticket, locked, from the submitter (see take_ticket).
TICKET_FD = 4
REQUEST = "slots-request.json"
GRANT = "slots.json"
_CANCEL = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
#: Seconds between two looks at the ledger while waiting.
_POLL = 0.2
#: Lowest fd for the lease, above the supervisor's gate (3) and what it opens early.
_LEASE_FD_MIN = 10


def _gate_open(run_dir: str) -> bool:
    """The supervisor's gate (see supervise.c): False if the submitter died first."""
    try:
        go = os.read(GATE_FD, 1)
    except OSError:
        return True  # started by hand, without a gate
    finally:
        with contextlib.suppress(OSError):
            os.close(GATE_FD)
    if go == b"g":
        return True
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(run_dir, "handle.json"))
    return False


def _write_atomic(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as handle:
        json.dump(data, handle)
        handle.write("\n")
    os.replace(tmp, path)


def _locked(path: str) -> bool:
    """Whether a live process holds the lock of ``path``; a dead holder's file is removed.

    Called with ``admit.lock`` held, so no lease or ticket is being created meanwhile.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the lock we may have just taken
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # its holder is gone: the kernel released its slots
    return False


def held(slots_dir: str) -> list[dict[str, Any]]:
    """The grants of the live leases (dead ones are removed on the way)."""
    folder = os.path.join(slots_dir, "leases")
    grants = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not name.endswith(".lease") or not _locked(path):
            continue
        try:
            with open(path) as handle:
                grants.append(json.load(handle))
        except (OSError, ValueError):
            continue  # being written right now cannot happen (admit.lock); unreadable: skip
    return grants


def _waiting_before(slots_dir: str, mine: str) -> bool:
    """Whether a live ticket older than ``mine`` waits (first come, first served)."""
    folder = os.path.join(slots_dir, "queue")
    for name in sorted(os.listdir(folder)):
        if name >= mine:
            return False
        if name.endswith(".ticket") and _locked(os.path.join(folder, name)):
            return True
    return False


def choose(request: dict[str, Any], grants: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The CPUs, GPUs and memory to give ``request`` beside ``grants``; None if they do not fit.

    The lowest free ids of what the request's config offers are taken.
    """
    want, offer = request["want"], request["offer"]
    busy_cpus = {cpu for grant in grants for cpu in grant["cpus"]}
    busy_gpus = {gpu for grant in grants for gpu in grant["gpus"]}
    used_memory = sum(int(grant["memory"]) for grant in grants)
    cpus = [cpu for cpu in offer["cpus"] if cpu not in busy_cpus][: want["cpus"]]
    gpus = [gpu for gpu in offer["gpus"] if gpu not in busy_gpus][: want["gpus"]]
    if len(cpus) < want["cpus"] or len(gpus) < want["gpus"]:
        return None
    if want["memory"] and used_memory + want["memory"] > offer["memory"]:
        return None
    return {"run_id": request["run_id"], "cpus": cpus, "gpus": gpus, "memory": want["memory"]}


def take_ticket(slots_dir: str, submitted_ns: int, run_id: str) -> tuple[str, int]:
    """Queue a run: its ticket's name and an fd holding the ticket's lock.

    Called by the submitter, which hands the fd to the admission step as TICKET_FD:
    the run's place in the queue is its submission, not the moment its admission
    step happens to start. Made under ``admit.lock``, so that no one sees the ticket
    unlocked (and removes it as dead).
    """
    for sub in ("leases", "queue"):
        os.makedirs(os.path.join(slots_dir, sub), mode=0o700, exist_ok=True)
    name = f"{submitted_ns:020d}-{run_id}.ticket"
    lock = os.open(os.path.join(slots_dir, "admit.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        fd = os.open(os.path.join(slots_dir, "queue", name), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
    finally:
        os.close(lock)
    return name, fd


def _high_fd(fd: int) -> int:
    """Move ``fd`` to a number >= _LEASE_FD_MIN, clear of the fds the supervisor uses."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, _LEASE_FD_MIN)
    os.close(fd)
    return high


def _try_admit(
    slots_dir: str, request: dict[str, Any], ticket: str
) -> tuple[int, dict[str, Any]] | None:
    """One look at the ledger: the lease fd and grant if admitted now, else None."""
    lock = os.open(os.path.join(slots_dir, "admit.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _waiting_before(slots_dir, ticket):
            return None
        grant = choose(request, held(slots_dir))
        if grant is None:
            return None
        path = os.path.join(slots_dir, "leases", f"{request['run_id']}.lease")
        fd = _high_fd(os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600))
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, (json.dumps(grant) + "\n").encode())
        return fd, grant
    finally:
        os.close(lock)


def _cancelled(run_dir: str, since: float) -> int:
    """Record that the run was cancelled before it was admitted."""
    outcome = {
        "reason": "cancelled",
        "started": since,
        "ended": time.time(),
        "exit_code": None,
        "signal": None,
        "error": None,
        "supervisor": "admission",
    }
    _write_atomic(os.path.join(run_dir, "exit.json"), outcome)
    return 0


def _environment(request: dict[str, Any], grant: dict[str, Any], run_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    if grant["gpus"]:
        devices = ",".join(str(gpu) for gpu in grant["gpus"])
        env["CUDA_VISIBLE_DEVICES"] = env["HIP_VISIBLE_DEVICES"] = devices
    if grant["memory"]:
        env["TETHER_RUN_RLIMIT_DATA"] = str(grant["memory"])
        cgroup = _make_cgroup(request, grant, run_dir)
        if cgroup is not None:
            env["TETHER_RUN_CGROUP"] = cgroup
            grant["enforced_by"] = f"cgroup {cgroup}"
        else:
            grant["enforced_by"] = "RLIMIT_DATA"
    return env


def _make_cgroup(request: dict[str, Any], grant: dict[str, Any], run_dir: str) -> str | None:
    """A child cgroup with memory.max for the command, under the request's cgroup parent."""
    parent = request.get("cgroup_parent")
    if not parent:
        return None
    path = os.path.join(parent, f"tether-{request['run_id']}")
    try:
        os.mkdir(path)
        with open(os.path.join(path, "memory.max"), "w") as handle:
            handle.write(str(grant["memory"]))
        # The limit is the memory: no swap on top (where swap is accounted at all).
        with contextlib.suppress(OSError), open(os.path.join(path, "memory.swap.max"), "w") as swap:
            swap.write("0")
    except OSError:
        with contextlib.suppress(OSError):
            os.rmdir(path)
        return None
    return path


def main(argv: list[str]) -> int:
    """Wait for the slots of the run in ``argv[0]``, then exec its supervisor."""
    if len(argv) < 6:
        print("usage: admit.py RUN_DIR CWD TIMEOUT GRACE CAPTURE ARGV...", file=sys.stderr)
        return 2
    run_dir = argv[0]
    signal.pthread_sigmask(signal.SIG_BLOCK, _CANCEL)
    if not _gate_open(run_dir):
        return 4
    since = time.time()
    try:
        return _admit_and_exec(run_dir, argv, since)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # Recorded, so the run ends FAILED with the reason rather than LOST.
        outcome = {
            "reason": "admission_failed",
            "started": since,
            "ended": time.time(),
            "exit_code": None,
            "signal": None,
            "error": f"admission to resource slots failed: {type(exc).__name__}: {exc}",
            "supervisor": "admission",
        }
        _write_atomic(os.path.join(run_dir, "exit.json"), outcome)
        return 3


def _admit_and_exec(run_dir: str, argv: list[str], since: float) -> int:
    with open(os.path.join(run_dir, REQUEST)) as handle:
        request = json.load(handle)
    slots_dir = request["slots_dir"]
    ticket = request["ticket"]
    ticket_path = os.path.join(slots_dir, "queue", ticket)
    ticket_fd = TICKET_FD  # made and locked by the submitter, in submission order
    while True:
        admitted = _try_admit(slots_dir, request, ticket)
        if admitted is not None:
            break
        if signal.sigtimedwait(_CANCEL, _POLL) is not None:
            with contextlib.suppress(OSError):
                os.unlink(ticket_path)
            return _cancelled(run_dir, since)
    lease, grant = admitted
    with contextlib.suppress(OSError):
        os.unlink(ticket_path)
    os.close(ticket_fd)
    os.set_inheritable(lease, True)
    env = _environment(request, grant, run_dir)
    if request.get("pin_cpus") and grant["cpus"]:
        os.sched_setaffinity(0, grant["cpus"])
    grant["waited"] = time.time() - since
    _write_atomic(os.path.join(run_dir, GRANT), grant)
    # The supervisor's gate, open already: it reads "g" and goes on.
    gate_read, gate_write = os.pipe()
    os.write(gate_write, b"g")
    os.close(gate_write)
    os.dup2(gate_read, GATE_FD)
    os.close(gate_read)
    supervisor = request["supervisor"]
    # The cancel signals stay blocked through exec: one that came late is delivered to
    # the supervisor once its handlers are in place, as for any run.
    os.execve(supervisor[0], [*supervisor, *argv], env)
    return 3  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
