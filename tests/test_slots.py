"""Resource slots of the local backend (issue 19): admission, GPUs, CPUs, memory.

Every test runs real local runs through the real admission step and supervisors
(both the C and the Python one where it matters), on a GPU list given in the config
(this machine may have no GPU). Jobs that must overlap block on a "release" file,
and the tests wait for conditions with generous deadlines, never for a fixed time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

import tether
from tether import Job, LocalConfig, Resources, RunState, SubmitError
from tether._supervisor import admit
from tether.backends.local import _slots

pytestmark = pytest.mark.anyio

DEADLINE = 60.0


@pytest.fixture(params=["c", "python"])
def supervisor(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both supervisors keep one protocol: the admission step execs either."""
    monkeypatch.setenv("TETHER_SUPERVISOR", str(request.param))
    return str(request.param)


def local(tmp_path: Path, **fields: object) -> tether.LocalBackend:
    return LocalConfig(  # type: ignore[arg-type]
        runs_dir=tmp_path / "runs", slots_dir=tmp_path / "slots", **fields
    ).create()


def blocking(release: Path, show: str = "$CUDA_VISIBLE_DEVICES") -> str:
    """A shell command that prints ``show`` at once, then waits for ``release``."""
    return f'echo "{show}"; while [ ! -e "{release}" ]; do sleep 0.05; done'


async def until(check: Callable[[], object], what: str, deadline: float = DEADLINE) -> None:
    """Wait (generously) until ``check()`` is true."""
    with anyio.fail_after(deadline):
        while not check():  # noqa: ASYNC110 (another process's doing)
            await anyio.sleep(0.05)


async def states(handles: list[tether.RunHandle]) -> list[RunState]:
    return [await handle.refresh() for handle in handles]


def printed(handle: tether.RunHandle) -> str:
    assert handle.run_dir is not None
    path = handle.run_dir / "stdout"
    return path.read_text().strip() if path.exists() else ""


# -- GPUs ------------------------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_four_one_gpu_jobs_on_two_gpus_run_two_at_a_time(
    tmp_path: Path, supervisor: str
) -> None:
    backend = local(tmp_path, gpus=[0, 1])
    first, second = tmp_path / "first", tmp_path / "second"
    jobs = [
        Job(name=f"gpu{i}", command=blocking(first if i < 2 else second), resources={"gpus": 1})
        for i in range(4)
    ]
    handles = [await backend.submit(job) for job in jobs]

    async def two_running() -> bool:
        return (await states(handles))[:2] == [RunState.RUNNING] * 2

    with anyio.fail_after(DEADLINE):
        while not await two_running():  # noqa: ASYNC110 (runs in other processes)
            await anyio.sleep(0.05)
    await until(lambda: all(printed(h) for h in handles[:2]), "the first two print")
    # Both GPUs are held: the next two wait, in submission order.
    assert await states(handles[2:]) == [RunState.PENDING, RunState.PENDING]
    assert sorted(printed(h) for h in handles[:2]) == ["0", "1"]
    first.touch()
    await until(lambda: all(printed(h) for h in handles[2:]), "the last two print")
    assert sorted(printed(h) for h in handles[2:]) == ["0", "1"]
    second.touch()
    results = [await handle.wait() for handle in handles]
    assert all(result.ok for result in results), [r.error for r in results]
    for handle in handles:
        grant = handle.slots  # type: ignore[attr-defined]
        assert grant["gpus"] == [printed(handle)]
    ledger = tmp_path / "slots"
    assert _slots_held(ledger) == [] and list((ledger / "queue").iterdir()) == []


def _slots_held(ledger: Path) -> list[dict[str, object]]:
    return admit.held(str(ledger))


async def test_a_run_sees_all_its_gpus_and_the_hip_variable(tmp_path: Path) -> None:
    backend = local(tmp_path, gpus=["3", "7", "9"])
    show = "$CUDA_VISIBLE_DEVICES $HIP_VISIBLE_DEVICES"
    handle = await backend.submit(Job(command=f'echo "{show}"', resources={"gpus": 2}))
    result = await handle.wait()
    assert result.ok, result.error
    assert printed(handle) == "3,7 3,7"


async def test_more_than_the_whole_offer_is_refused_at_submit(tmp_path: Path) -> None:
    backend = local(tmp_path, gpus=[0, 1], cpus=2, memory="1g")
    for resources, words in [
        ({"gpus": 3}, "3 GPUs but 2 are offered (0, 1)"),
        ({"cpus": 3}, "3 CPUs but at most 2 are offered"),
        ({"memory": "2g"}, "2g of memory but at most 1g is offered"),
    ]:
        with pytest.raises(SubmitError, match=r"asks for .*raise those LocalConfig fields") as info:
            await backend.submit(Job(name="big", command="true", resources=resources))
        assert words in str(info.value)
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []
    no_gpus = local(tmp_path, gpus=[])
    with pytest.raises(SubmitError, match=r"1 GPUs but 0 are offered \(none\)"):
        await no_gpus.submit(Job(command="true", resources={"gpus": 1}))


def test_gpu_ids_are_checked_in_the_config() -> None:
    with pytest.raises(ValueError, match="lists a device twice"):
        LocalConfig(gpus=[0, 0])
    with pytest.raises(ValueError, match="is not a device index or UUID"):
        LocalConfig(gpus=["0;rm -rf"])
    with pytest.raises(ValueError, match="is not a size"):
        LocalConfig(memory="lots")


# -- waiting, cancelling, re-attaching -----------------------------------------------


async def test_a_pending_run_can_be_cancelled_and_reloaded(tmp_path: Path) -> None:
    backend = local(tmp_path, gpus=[0])
    release = tmp_path / "release"
    holder = await backend.submit(Job(command=blocking(release), resources={"gpus": 1}))
    waiter = await backend.submit(Job(command="echo never", resources={"gpus": 1}))
    await until(lambda: printed(holder), "the holder runs")
    assert await waiter.refresh() is RunState.PENDING
    await waiter.save(tmp_path / "waiter.json")
    again = await tether.load_handle(tmp_path / "waiter.json")
    assert await again.refresh() is RunState.PENDING
    await again.cancel()
    assert again.state is RunState.CANCELLED
    assert (await waiter.wait()).state is RunState.CANCELLED
    assert printed(waiter) == ""
    assert list((tmp_path / "slots" / "queue").iterdir()) == []
    release.touch()
    assert (await holder.wait()).ok


async def test_a_reloaded_handle_moves_from_pending_to_running(tmp_path: Path) -> None:
    backend = local(tmp_path, cpus=1)
    release = tmp_path / "release"
    first = await backend.submit(Job(command=blocking(release, "one"), resources={"cpus": 1}))
    second = await backend.submit(Job(command="echo two", resources={"cpus": 1}))
    await second.save(tmp_path / "second.json")
    await until(lambda: printed(first), "the first runs")
    reloaded = await tether.load_handle(tmp_path / "second.json")
    assert reloaded.state is RunState.PENDING
    release.touch()
    result = await reloaded.wait()
    assert result.ok and printed(reloaded) == "two"


async def test_jobs_without_resources_start_at_once(tmp_path: Path) -> None:
    backend = local(tmp_path, cpus=1, gpus=[0])
    release = tmp_path / "release"
    holder = await backend.submit(Job(command=blocking(release), resources={"cpus": 1, "gpus": 1}))
    free = await backend.submit(Job(command="echo free"))
    assert free.state is RunState.RUNNING  # never PENDING: it asks for no slot
    assert (await free.wait()).ok
    assert holder.state in (RunState.PENDING, RunState.RUNNING)
    release.touch()
    assert (await holder.wait()).ok


# -- CPUs and memory -------------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_pinned_runs_get_their_own_cores(tmp_path: Path, supervisor: str) -> None:
    cores = _slots.usable_cpus()
    if len(cores) < 2:
        pytest.skip("needs two cores to give two runs one each")
    backend = local(tmp_path, cpus=2, pin_cpus=True)
    release = tmp_path / "release"
    show = "$(python3 -c 'import os; print(sorted(os.sched_getaffinity(0)))')"
    handles = [
        await backend.submit(Job(command=blocking(release, show), resources={"cpus": 1}))
        for _ in range(2)
    ]
    await until(lambda: all(printed(h) for h in handles), "both print their cores")
    seen = sorted(json.loads(printed(h)) for h in handles)
    assert seen == [[cores[0]], [cores[1]]]
    release.touch()
    for handle in handles:
        assert (await handle.wait()).ok
        assert handle.slots["cpus"] == json.loads(printed(handle))  # type: ignore[attr-defined]


async def test_unpinned_runs_keep_every_core(tmp_path: Path) -> None:
    backend = local(tmp_path, cpus=1)
    show = "python3 -c 'import os; print(len(os.sched_getaffinity(0)))'"
    handle = await backend.submit(Job(command=show, resources={"cpus": 1}))
    assert (await handle.wait()).ok
    assert int(printed(handle)) == len(_slots.usable_cpus())


def test_pinning_beyond_the_real_cores_is_refused() -> None:
    config = LocalConfig(cpus=len(_slots.usable_cpus()) + 1, pin_cpus=True)
    with pytest.raises(SubmitError, match="lower cpus or set pin_cpus=False"):
        _slots.admission_request(Job(command="true", resources={"cpus": 1}), config, "r", ["x"])


ALLOCATE = "import sys; b = bytearray(int(sys.argv[1]) * 2**20); print('got', len(b) >> 20)"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_memory_limit_is_enforced_and_named(tmp_path: Path, supervisor: str) -> None:
    backend = local(tmp_path)
    limited = Resources(memory="100m")
    over = await backend.submit(
        Job(command=[sys.executable, "-c", ALLOCATE, "400"], resources=limited)
    )
    within = await backend.submit(
        Job(command=[sys.executable, "-c", ALLOCATE, "20"], resources=limited)
    )
    failed, ok = await over.wait(), await within.wait()
    assert failed.state is RunState.FAILED
    assert failed.error is not None and failed.error.startswith("memory limit exceeded (100m")
    assert "MemoryError" in failed.error
    assert ok.ok and printed(within) == "got 20"
    enforced = over.slots["enforced_by"]  # type: ignore[attr-defined]
    assert enforced == "RLIMIT_DATA" or enforced.startswith("cgroup ")
    # The supervisor itself is not limited, only the command: it recorded the outcome.
    outcome = json.loads((over.run_dir / "exit.json").read_text())  # type: ignore[operator]
    assert outcome["supervisor"] == supervisor


async def test_a_failure_that_is_not_memory_is_not_called_one(tmp_path: Path) -> None:
    handle = await local(tmp_path).submit(Job(command="exit 3", resources={"memory": "100m"}))
    result = await handle.wait()
    assert result.state is RunState.FAILED and "memory" not in (result.error or "")


async def test_memory_is_shared_out_and_waits(tmp_path: Path) -> None:
    backend = local(tmp_path, memory="1g")
    release = tmp_path / "release"
    big = await backend.submit(Job(command=blocking(release, "big"), resources={"memory": "700m"}))
    other = await backend.submit(Job(command="echo other", resources={"memory": "700m"}))
    await until(lambda: printed(big), "the first runs")
    assert await other.refresh() is RunState.PENDING
    release.touch()
    assert (await other.wait()).ok and (await big.wait()).ok


# -- first come, first served ------------------------------------------------------------


def test_choose_takes_the_lowest_free_ids_and_refuses_what_does_not_fit() -> None:
    request = {
        "run_id": "r",
        "want": {"cpus": 2, "memory": 300, "gpus": 1},
        "offer": {"cpus": [0, 1, 2, 3], "memory": 1000, "gpus": ["0", "1"]},
    }
    held = [{"cpus": [0], "gpus": ["0"], "memory": 500}]
    assert admit.choose(request, held) == {
        "run_id": "r",
        "cpus": [1, 2],
        "gpus": ["1"],
        "memory": 300,
    }
    held.append({"cpus": [], "gpus": [], "memory": 400})
    assert admit.choose(request, held) is None  # 500 + 400 + 300 > 1000


async def test_a_small_job_does_not_overtake_a_waiting_big_one(tmp_path: Path) -> None:
    backend = local(tmp_path, cpus=2)
    release = tmp_path / "release"
    holder = await backend.submit(Job(command=blocking(release, "h"), resources={"cpus": 1}))
    big = await backend.submit(Job(command="echo big", resources={"cpus": 2}))
    small = await backend.submit(Job(command="echo small", resources={"cpus": 1}))
    await until(lambda: printed(holder), "the holder runs")
    await until(lambda: len(list((tmp_path / "slots" / "queue").iterdir())) == 2, "two wait")
    # One core is free and the small job would fit, but the big one came first.
    assert await states([big, small]) == [RunState.PENDING, RunState.PENDING]
    release.touch()
    results = [await h.wait() for h in (holder, big, small)]
    assert all(r.ok for r in results)
    assert results[1].started_at is not None and results[2].started_at is not None
    assert results[1].started_at <= results[2].started_at


# -- slots shared across processes, a killed orchestrator cannot leak them --------------

ORCHESTRATOR = r"""
import asyncio, sys
from pathlib import Path
from tether import Job, LocalConfig

async def main():
    root = Path(sys.argv[1])
    backend = LocalConfig(runs_dir=root / "runs", slots_dir=root / "slots", gpus=[0]).create()
    release = root / "release"
    command = f'echo "$CUDA_VISIBLE_DEVICES"; while [ ! -e "{release}" ]; do sleep 0.05; done'
    handle = await backend.submit(Job(name="orphan", command=command, resources={"gpus": 1}))
    await handle.save(root / "orphan.json")
    await asyncio.sleep(3600)  # killed here

asyncio.run(main())
"""


async def test_a_killed_orchestrators_run_keeps_its_slot_until_it_ends(tmp_path: Path) -> None:
    orchestrator = await anyio.open_process([sys.executable, "-c", ORCHESTRATOR, str(tmp_path)])
    try:
        saved = tmp_path / "orphan.json"
        await until(saved.exists, "the orchestrator saved its run")
        orphan = await tether.load_handle(saved)
        await until(lambda: printed(orphan), "the orphan runs")
    finally:
        orchestrator.send_signal(signal.SIGKILL)
        await orchestrator.wait()
    # This process shares the slots folder: the one GPU is the orphan's.
    backend = local(tmp_path, gpus=[0])
    mine = await backend.submit(
        Job(name="mine", command='echo "$CUDA_VISIBLE_DEVICES"', resources={"gpus": 1})
    )
    assert await orphan.refresh() is RunState.RUNNING
    assert await mine.refresh() is RunState.PENDING
    with anyio.move_on_after(1.0):  # it stays pending for as long as the orphan runs
        await mine.wait()
    assert await mine.refresh() is RunState.PENDING
    (tmp_path / "release").touch()
    assert (await orphan.wait()).ok
    result = await mine.wait()
    assert result.ok and printed(mine) == "0"


async def test_a_killed_run_frees_its_slot(tmp_path: Path) -> None:
    backend = local(tmp_path, gpus=[0])
    victim = await backend.submit(Job(command="sleep 600", resources={"gpus": 1}))
    waiter = await backend.submit(Job(command="echo next", resources={"gpus": 1}))
    await until(lambda: victim.slots is not None, "the victim is admitted")  # type: ignore[attr-defined]
    # SIGKILL the run's whole session (supervisor and command): nothing records it.
    pid = victim.pid  # type: ignore[attr-defined]
    os.killpg(os.getpgid(pid), signal.SIGKILL)
    # Until none is left: a shell forking as we look would leave its child holding the lease
    # (rightly: a command still running keeps its slots).
    with anyio.fail_after(DEADLINE):
        while members := _session(pid):
            for member in members:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(member, signal.SIGKILL)
            await anyio.sleep(0.05)
    assert (await victim.wait()).state is RunState.LOST
    result = await waiter.wait()
    assert result.ok and printed(waiter) == "next"


def _session(sid: int) -> list[int]:
    from tether._proc import session_members

    return list(session_members(sid))


# -- discovery and Docker ------------------------------------------------------------------


def test_local_claims_gpus_only_where_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    from tether.backends.local import config as config_module

    monkeypatch.setattr(config_module, "detect_gpus", lambda: ())
    assert "gpus" not in LocalConfig.detected_capabilities()
    infos = {info.name: info for info in tether.list_backends(check=True)}
    assert "gpus" not in infos["local"].capabilities
    monkeypatch.setattr(config_module, "detect_gpus", lambda: ("0",))
    assert "gpus" in LocalConfig.detected_capabilities()
    infos = {info.name: info for info in tether.list_backends(check=True)}
    assert "gpus" in infos["local"].capabilities
    job = Job(command="python train.py", resources=Resources(gpus=1))
    assert tether.recommended_backend(job).name == "local"


def test_gpus_detected_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tether import _gpus

    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        "echo 'GPU 0: NVIDIA A100 (UUID: GPU-aaa)'\n"
        "echo 'GPU 1: NVIDIA A100 (UUID: GPU-bbb)'\n"
    )
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(_gpus, "_from_nvml", lambda: None)
    _gpus.detect_gpus.cache_clear()
    try:
        assert _gpus.detect_gpus() == ("0", "1")
    finally:
        _gpus.detect_gpus.cache_clear()


def test_slots_folder_must_be_ours(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "slots-link"
    link.symlink_to(target)
    config = LocalConfig(slots_dir=link)
    with pytest.raises(SubmitError, match="is not a folder of your own"):
        _slots.admission_request(Job(command="true", resources={"cpus": 1}), config, "r", ["x"])


def test_default_slots_folder_is_machine_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TETHER_SLOTS_DIR")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/nonexistent-runtime")
    assert _slots.default_slots_dir() == Path(f"/tmp/tether-slots-{os.getuid()}")
    monkeypatch.setenv("TETHER_SLOTS_DIR", "/run/x")
    assert _slots.default_slots_dir() == Path("/run/x")


def test_cgroup_detection_answers_here() -> None:
    """Whatever this machine offers, the answer is a writable cgroup v2 folder or None."""
    parent = _slots.cgroup_parent()
    if parent is not None:
        assert "memory" in (Path(parent) / "cgroup.subtree_control").read_text().split()
        assert os.access(parent, os.W_OK)
