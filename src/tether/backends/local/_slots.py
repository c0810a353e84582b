"""Resource slots of the local backend: what this machine offers and what a run asks.

A job whose ``resources`` ask for CPUs, memory or GPUs is started through the
admission step (``tether._supervisor.admit``): it waits in PENDING until its slots
are free in the per-user ledger shared by every process of the user on the
machine, and holds them by a kernel lock that its supervisor and command inherit,
so nothing can leak them. This module is the submitter's side: the offer (from
``LocalConfig`` or the machine), the request written into the run folder, the refusal
of a job bigger than the whole offer, and, afterwards, reading the grant back and
explaining a run that died of its memory limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..._files import make_private_dir, write_json_atomic
from ..._gpus import detect_gpus
from ..._supervisor.admit import GRANT, REQUEST, take_ticket
from ...errors import SubmitError
from ...job import Job, parse_memory

if TYPE_CHECKING:
    from .config import LocalConfig

#: Last lines of stderr that show an allocation refused under RLIMIT_DATA.
_OUT_OF_MEMORY = re.compile(
    r"MemoryError|Cannot allocate memory|bad_alloc|out of memory|memory exhausted|"
    r"failed to allocate|Unable to allocate",
    re.IGNORECASE,
)


def usable_cpus() -> list[int]:
    """The cores this process may run on (its affinity), sorted."""
    return sorted(os.sched_getaffinity(0))


def machine_memory() -> int:
    """This machine's RAM in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_slots_dir() -> Path:
    """The per-user, machine-local slots folder: ``$TETHER_SLOTS_DIR``, else
    ``$XDG_RUNTIME_DIR/tether-slots``, else ``/tmp/tether-slots-<uid>``.

    Never under the home folder: a home shared by several machines (a cluster's login
    nodes) must not share one machine's slots.
    """
    explicit = os.environ.get("TETHER_SLOTS_DIR")
    if explicit:
        return Path(explicit).expanduser()
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "tether-slots"
    return Path("/tmp") / f"tether-slots-{os.getuid()}"


def _private(folder: Path) -> Path:
    """``folder``, created mode 0700, refused unless it is ours alone (a /tmp squatter)."""
    try:
        make_private_dir(folder)
        info = folder.lstat()
    except OSError as exc:
        raise SubmitError(
            f"Cannot create the resource slots folder '{folder}': {exc.strerror}; "
            "set LocalConfig.slots_dir (or TETHER_SLOTS_DIR) to a writable local folder."
        ) from exc
    if not folder.is_dir() or folder.is_symlink() or info.st_uid != os.getuid():
        raise SubmitError(
            f"The resource slots folder '{folder}' is not a folder of your own: remove it, "
            "or set LocalConfig.slots_dir (or TETHER_SLOTS_DIR) to another one."
        )
    if info.st_mode & 0o077:
        os.chmod(folder, 0o700)
    return folder


def offer(config: LocalConfig) -> dict[str, Any]:
    """The CPU ids, memory (bytes) and GPU ids that ``config`` lets its runs share."""
    cores = usable_cpus()
    count = config.cpus if config.cpus is not None else len(cores)
    # More CPUs than cores is oversubscription: the extra slots get ids past the last core.
    cpus = cores[:count] + [max(cores) + 1 + extra for extra in range(count - len(cores))]
    memory = parse_memory(config.memory) if config.memory is not None else machine_memory()
    gpus = [str(gpu) for gpu in config.gpus] if config.gpus is not None else list(detect_gpus())
    return {"cpus": cpus, "memory": memory, "gpus": gpus}


def wants_slots(job: Job) -> bool:
    """Whether ``job`` asks for any CPUs, memory or GPUs (else it starts at once)."""
    resources = job.resources
    return bool(resources.cpus or resources.memory or resources.gpus)


def _size(count: int) -> str:
    for unit, scale in (("g", 1024**3), ("m", 1024**2), ("k", 1024)):
        if count >= scale:
            return f"{count / scale:.3g}{unit}"
    return f"{count} bytes"


def refusal(job: Job, config: LocalConfig, offered: dict[str, Any]) -> str | None:
    """Why ``job`` could never be admitted under ``config`` (it asks more than all), or None."""
    resources = job.resources
    asks = []
    if resources.cpus and resources.cpus > len(offered["cpus"]):
        asks.append(f"{resources.cpus} CPUs but at most {len(offered['cpus'])} are offered")
    if resources.memory and parse_memory(resources.memory) > offered["memory"]:
        asks.append(
            f"{resources.memory} of memory but at most {_size(offered['memory'])} is offered"
        )
    if resources.gpus and resources.gpus > len(offered["gpus"]):
        found = ", ".join(offered["gpus"]) or "none"
        asks.append(f"{resources.gpus} GPUs but {len(offered['gpus'])} are offered ({found})")
    if not asks:
        return None
    return (
        f"Job {job.name!r} asks for {'; and '.join(asks)} by this machine and LocalConfig "
        "(cpus, memory, gpus): ask for less, or raise those LocalConfig fields."
    )


def check_pinning(config: LocalConfig, offered: dict[str, Any]) -> None:
    """Pinning needs real cores: refuse a CPU count beyond this machine's with pin_cpus."""
    if config.pin_cpus and len(offered["cpus"]) > len(usable_cpus()):
        raise SubmitError(
            f"LocalConfig has pin_cpus=True and cpus={config.cpus}, more than the "
            f"{len(usable_cpus())} cores this process may use: lower cpus or set pin_cpus=False."
        )


def cgroup_parent() -> str | None:
    """A cgroup v2 folder where runs' memory cgroups can be made, or None.

    The parent of this process's own cgroup, when it has the memory controller
    enabled for its children and is writable by us (a systemd user slice such as
    ``…/user@1000.service/app.slice``); a process cannot make memory-limited children
    of its own cgroup unless it is the root, by cgroup v2's no-internal-process rule.
    """
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    own = next((line[3:] for line in lines if line.startswith("0::")), None)
    root = next((m.split()[4] for m in mounts if " - cgroup2 " in m), None)
    if own is None or root is None:
        return None
    here = Path(root) / own.lstrip("/")
    for folder in (here.parent, here) if here != Path(root) else (here,):
        try:
            controllers = (folder / "cgroup.subtree_control").read_text().split()
        except OSError:
            continue
        if "memory" in controllers and os.access(folder, os.W_OK):
            return str(folder)
    return None


def admission_request(
    job: Job, config: LocalConfig, run_id: str, supervisor: list[str]
) -> dict[str, Any]:
    """What the admission step needs (written into the run folder before it starts).

    Raises:
        SubmitError: the job asks for more than the whole offer (it would wait
            forever), pinning is asked beyond the real cores, or the slots folder
            cannot be used.
    """
    offered = offer(config)
    if (why := refusal(job, config, offered)) is not None:
        raise SubmitError(why)
    check_pinning(config, offered)
    slots_dir = _private((config.slots_dir or default_slots_dir()).expanduser().absolute())
    resources = job.resources
    return {
        "version": 1,
        "run_id": run_id,
        "ticket": None,  # set by queue()
        "slots_dir": str(slots_dir),
        "supervisor": supervisor,
        "want": {
            "cpus": resources.cpus or 0,
            "memory": parse_memory(resources.memory) if resources.memory else 0,
            "gpus": resources.gpus or 0,
        },
        "offer": offered,
        "pin_cpus": config.pin_cpus,
        "cgroup_parent": cgroup_parent() if resources.memory else None,
    }


def queue(request: dict[str, Any]) -> int:
    """Take the run's place in the queue now; the returned fd holds it (TICKET_FD)."""
    name, fd = take_ticket(request["slots_dir"], time.time_ns(), request["run_id"])
    request["ticket"] = name
    return fd


def unqueue(request: dict[str, Any], fd: int | None) -> None:
    """Give the place back (the run never started); ``fd``: ours, if still open."""
    with contextlib.suppress(OSError):
        os.unlink(Path(request["slots_dir"]) / "queue" / request["ticket"])
    if fd is not None:
        os.close(fd)


def write_request(run_dir: Path, request: dict[str, Any]) -> None:
    """Put ``request`` where the admission step reads it."""
    write_json_atomic(run_dir / REQUEST, request)


def read_grant(run_dir: Path) -> dict[str, Any] | None:
    """The slots a run was given (``slots.json``), once admitted; else None."""
    try:
        data = json.loads((run_dir / GRANT).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def memory_failure(grant: dict[str, Any] | None, stderr: Path | None) -> str | None:
    """Why a failed run died of its memory limit, or None when nothing says it did.

    Under a cgroup the kernel counts its OOM kills (``memory.events``); under
    RLIMIT_DATA an allocation is refused and the program reports it on stderr.
    The run's cgroup, now empty, is removed on the way.
    """
    if not grant or not grant.get("memory"):
        return None
    enforced = str(grant.get("enforced_by", "RLIMIT_DATA"))
    limit = f"{_size(int(grant['memory']))} asked in resources.memory, enforced by {enforced}"
    if enforced.startswith("cgroup "):
        folder = Path(enforced.removeprefix("cgroup "))
        try:
            events = dict(
                line.split() for line in (folder / "memory.events").read_text().splitlines()
            )
        except (OSError, ValueError):
            events = {}
        with contextlib.suppress(OSError):
            folder.rmdir()
        if int(events.get("oom_kill", 0)) > 0:
            return f"memory limit exceeded ({limit}; the kernel killed it)"
        return None
    try:
        tail = stderr.read_bytes()[-4096:].decode(errors="replace") if stderr else ""
    except OSError:
        tail = ""
    if _OUT_OF_MEMORY.search(tail):
        return f"memory limit exceeded ({limit}; an allocation was refused)"
    return None
