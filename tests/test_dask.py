"""The Dask backend on a real scheduler and worker processes (tests/dask_support.py),
and on an embedded LocalCluster; the contract suite runs on it too (harness.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest
from pydantic import ValidationError

import tether
from tether import BackendUnavailableError, Call, DaskConfig, DaskRunHandle, Job, RunState
from tether._proc import is_running, session_members
from tether.backends.dask import close_embedded
from tether.backends.dask.handle import read_started

from .calls_support import fail, square
from .conftest import run_python

pytestmark = pytest.mark.dask

#: Starts a grandchild that ignores TERM, in the run's process group: only KILL ends it.
STUBBORN = "sh -c 'trap \"\" TERM; echo started; sleep 60' & wait"


def _config(address: str, tmp_path: Path, **extra: object) -> DaskConfig:
    return DaskConfig(address=address, runs_dir=tmp_path / "runs", cancel_grace=1, **extra)


# -- config -------------------------------------------------------------------------


def test_config_fields_and_refusals() -> None:
    config = DaskConfig(address="127.0.0.1:8786", resources={"GPU": 1})
    assert config.address == "tcp://127.0.0.1:8786"
    assert config.call_mode == "process"
    with pytest.raises(ValidationError, match="embedded cluster"):
        DaskConfig(address="tcp://127.0.0.1:8786", n_workers=2)
    with pytest.raises(ValidationError, match="scheduler address"):
        DaskConfig(address="tcp://a b")
    with pytest.raises(ValidationError, match="positive"):
        DaskConfig(resources={"GPU": 0})
    assert "address" not in config.cache_fields()  # where it ran never changes a result


def test_missing_extra_names_the_pip_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "distributed" else real(name, *a),
    )
    found = DaskConfig.availability()
    assert not found and "pip install 'tether[dask]'" in found.reason


def test_import_tether_does_not_import_distributed() -> None:
    seen = run_python(
        "import json, sys, tether\n"
        "print(json.dumps({'loaded': sorted(m for m in sys.modules if m.startswith("
        "('distributed', 'dask.')))}))"
    )
    assert seen["loaded"] == []


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_trio_is_refused_clearly(anyio_backend: str, tmp_path: Path) -> None:
    backend = _config("tcp://127.0.0.1:1", tmp_path).create()
    with pytest.raises(BackendUnavailableError, match="asyncio only"):
        await backend.submit(Job(name="x", command="true"))


# -- the external scheduler ---------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_check_says_why_a_scheduler_is_unusable(
    anyio_backend: str, dask_service: str, tmp_path: Path
) -> None:
    assert await _config(dask_service, tmp_path).create().check()
    dead = DaskConfig(address="tcp://127.0.0.1:9", connect_timeout=1).create()
    found = await dead.check()
    assert not found and "tcp://127.0.0.1:9" in found.reason and "did not answer" in found.reason


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_cancel_kills_the_whole_process_group(
    anyio_backend: str, dask_service: str, tmp_path: Path
) -> None:
    backend = _config(dask_service, tmp_path).create()
    handle = await backend.submit(Job(name="stubborn", command=STUBBORN))
    lines = handle.logs(follow=True)
    assert await anext(lines) == "started"  # streamed while the run goes on
    await lines.aclose()
    started = read_started(handle.run_dir)  # type: ignore[arg-type]
    assert started is not None
    members = list(session_members(started["pid"]))
    assert len(members) >= 2  # the shell and its stubborn child
    began = time.monotonic()
    await handle.cancel()
    assert handle.state is RunState.CANCELLED, handle.last_result
    assert time.monotonic() - began < 8  # TERM, one second of grace, KILL
    assert list(session_members(started["pid"])) == []
    assert not any(is_running(pid, None) for pid in members)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_cancel_stops_a_daemonised_descendant_too(
    anyio_backend: str, dask_service: str, tmp_path: Path
) -> None:
    # A child in a session of its own escapes a process-group kill; the supervisor,
    # its subreaper, still stops it.
    command = "setsid sleep 300 & echo $! > daemon.pid; echo started; sleep 300"
    handle = await _config(dask_service, tmp_path).create().submit(Job(name="d", command=command))
    lines = handle.logs(follow=True)
    assert await anext(lines) == "started"
    await lines.aclose()
    daemon = int((handle.run_dir / "daemon.pid").read_text())  # type: ignore[operator]
    assert is_running(daemon, None)
    await handle.cancel()
    assert handle.state is RunState.CANCELLED
    assert not is_running(daemon, None), "the daemonised sleep escaped the cancel"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_calls_return_values_and_exceptions(
    anyio_backend: str, dask_service: str, tmp_path: Path
) -> None:
    for mode in ("process", "thread"):
        backend = _config(dask_service, tmp_path, call_mode=mode).create()
        handle = await backend.submit(Call(square, 7))
        result = await handle.wait(60)
        assert result.ok and result.value == 49, (mode, result)
        failed = await backend.submit(Call(fail, "kaput"))
        with pytest.raises(ValueError, match="kaput"):
            await failed.result()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_thread_call_timeout_abandons_the_call(
    anyio_backend: str, dask_service: str, tmp_path: Path
) -> None:
    from .contract.call_target import contract_call

    backend = _config(dask_service, tmp_path, call_mode="thread").create()
    call = Call(contract_call, [], 3.0, 0).options(resources={"walltime": 0.5})
    result = await (await backend.submit(call)).wait(30)
    assert result.state is RunState.TIMED_OUT
    assert "abandoned" in (result.error or "")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_forget_releases_the_run(
    anyio_backend: str, dask_service: str, tmp_path: Path
) -> None:
    backend = _config(dask_service, tmp_path).create()
    handle = await backend.submit(Job(name="kept", command="echo kept"))
    await handle.wait(60)
    path = await handle.save(tmp_path / "h.json")
    again = await tether.load_handle(path)
    assert (await again.refresh()) is RunState.SUCCEEDED  # kept by the scheduler
    await handle.forget()
    gone = await tether.load_handle(path)
    assert (await gone.refresh()) is RunState.LOST
    result = await gone.wait()
    assert "does not know" in (result.error or "")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_cancel_of_a_run_no_worker_can_take(
    anyio_backend: str, dask_service: str, tmp_path: Path
) -> None:
    backend = _config(dask_service, tmp_path, resources={"NO-SUCH-THING": 1}).create()
    handle = await backend.submit(Job(name="waits", command="echo never"))
    await anyio.sleep(0.3)
    assert (await handle.refresh()) is RunState.PENDING  # no worker has that resource
    began = time.monotonic()
    await handle.cancel()
    assert handle.state is RunState.CANCELLED and time.monotonic() - began < 3
    path = await handle.save(tmp_path / "h.json")
    assert (await (await tether.load_handle(path)).refresh()) is RunState.CANCELLED
    assert read_started(handle.run_dir) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_missing_command_fails_the_run(
    anyio_backend: str, dask_service: str, tmp_path: Path
) -> None:
    backend = _config(dask_service, tmp_path).create()
    result = await (await backend.submit(Job(name="nope", command=["no-such-cmd-xyz"]))).wait(60)
    assert result.state is RunState.FAILED and result.exit_code == 127


# -- the embedded cluster -------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_embedded_cluster_runs_and_ends_with_its_process(
    anyio_backend: str, tmp_path: Path
) -> None:
    config = DaskConfig(n_workers=1, threads_per_worker=2, runs_dir=tmp_path / "runs")
    backend = config.create()
    try:
        handle = await backend.submit(Job(name="here", command="echo embedded"))
        result = await handle.wait(60)
        assert result.ok and await result.read_stdout() == "embedded\n"
        call = await backend.submit(Call(square, 5))
        assert (await call.result()).value == 25
        path = await handle.save(tmp_path / "h.json")
        same = await tether.load_handle(path)  # this process re-attaches
        assert isinstance(same, DaskRunHandle)
        assert (await same.refresh()) is RunState.SUCCEEDED
        seen = await anyio.to_thread.run_sync(
            run_python,
            "import json, sys, anyio, tether\n"
            "async def main():\n"
            "    h = await tether.load_handle(sys.argv[1])\n"
            "    r = await h.wait(30)\n"
            "    print(json.dumps({'state': r.state.value, 'error': r.error}))\n"
            "anyio.run(main)\n",
            str(path),
        )
        assert seen["state"] == "LOST" and "embedded" in seen["error"]
    finally:
        await close_embedded()
    assert os.getpid()  # the cluster is closed; nothing of it outlives the test


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_ensemble_on_dask_matches_inline(
    anyio_backend: str, dask_service: str, tmp_path: Path
) -> None:
    pytest.importorskip("numpy")
    from tether import Ensemble, InlineConfig, map_calls

    from . import calls_support as cs

    dask = _config(dask_service, tmp_path)
    ensemble = Ensemble(cs.mc_worker, 6, seed=1234, args=(0.5,))
    assert await ensemble.run(dask) == await ensemble.run(InlineConfig())
    assert await map_calls(cs.square, range(5), backend=dask) == [0, 1, 4, 9, 16]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_find_by_chosen_run_id(anyio_backend: str, dask_service: str, tmp_path: Path) -> None:
    backend = _config(dask_service, tmp_path).create()
    job = Job(name="found", command="echo found")
    assert await backend.find(job, "step-1-abc") is None
    handle = await backend.submit(job, run_id="step-1-abc")
    assert handle.run_id == "step-1-abc"
    with pytest.raises(tether.SubmitError, match="taken"):
        await backend.submit(job, run_id="step-1-abc")
    assert handle.run_dir is not None
    (handle.run_dir / "handle.json").unlink()  # the submitter died before its record
    found = await backend.find(job, "step-1-abc")
    assert found is not None and found.run_id == "step-1-abc"
    assert (await found.wait(60)).ok
    assert (handle.run_dir / "handle.json").is_file()
    again = await backend.find(job, "step-1-abc")  # from the record now
    assert again is not None and (await again.wait(60)).ok


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_pipeline_and_cache_over_dask(
    anyio_backend: str, dask_service: str, tmp_path: Path
) -> None:
    from tether import CachedBackend, Pipeline, SQLiteStore, Step

    from . import pipeline_support as ps

    config = _config(dask_service, tmp_path)
    a = Step("a", Call(ps.add, 2, 3))
    b = Step("b", Call(ps.add, a.value, 1))
    result = await Pipeline([a, b], backend=config).run(state=tmp_path / "state.json")
    assert result.success, result.failed()
    assert result.value("b") == 6

    cached = CachedBackend(config.create(), SQLiteStore(tmp_path / "cache.sqlite"))
    first = await (await cached.submit(Call(square, 9))).wait(60)
    hit = await cached.submit(Call(square, 9))
    assert first.value == (await hit.wait(60)).value == 81


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_dead_worker_loses_the_run_and_leaves_nothing(
    anyio_backend: str, dask_service: str, tmp_path: Path
) -> None:
    """A worker SIGKILLed mid-run: Dask runs the task again elsewhere, which ends what
    the first attempt left and reports LOST instead of running the job twice."""
    import signal

    from .dask_support import start_worker, stop_processes

    first = start_worker(dask_service, tmp_path / "w1.log", resources="SACRIFICE=1")
    workers = [first]
    try:
        await anyio.to_thread.run_sync(wait_for_resource, dask_service, 1)
        config = _config(dask_service, tmp_path, resources={"SACRIFICE": 1})
        handle = await config.create().submit(Job(name="doomed", command="sleep 60"))
        assert handle.run_dir is not None
        while (started := read_started(handle.run_dir)) is None:  # noqa: ASYNC110
            await anyio.sleep(0.05)
        os.kill(first.pid, signal.SIGKILL)
        workers.append(start_worker(dask_service, tmp_path / "w2.log", resources="SACRIFICE=1"))
        result = await handle.wait(60)
        assert result.state is RunState.LOST and "worker" in (result.error or "")
        assert list(session_members(started["pid"])) == []
    finally:
        stop_processes(workers)


def wait_for_resource(address: str, count: int) -> None:
    from distributed import Client

    with Client(address, timeout=30) as client:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            info = client.scheduler_info()["workers"].values()
            if sum(1 for w in info if "SACRIFICE" in w.get("resources", {})) >= count:
                return
            time.sleep(0.1)
    raise AssertionError("the sacrificial worker did not join")


def _self_signed(where: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA) and its key."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        from .services import missing

        missing("openssl is needed to make a test certificate (apt-get install openssl)")
    cert, key = where / "cert.pem", where / "key.pem"
    request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    names = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        [*request, "-keyout", str(key), "-out", str(cert), *names],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_tls_scheduler(anyio_backend: str, tmp_path: Path) -> None:
    import json

    from .dask_support import start_process, stop_processes

    cert, key = _self_signed(tmp_path)
    tls = ["--tls-ca-file", str(cert), "--tls-cert", str(cert), "--tls-key", str(key)]
    scheduler_file = tmp_path / "scheduler.json"
    scheduler = ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0"]
    options = ["--protocol", "tls", "--no-dashboard", "--scheduler-file", str(scheduler_file)]
    procs = [start_process([*scheduler, *options, *tls], tmp_path / "scheduler.log")]
    try:
        with anyio.fail_after(30):
            while not scheduler_file.exists():  # noqa: ASYNC110
                await anyio.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tls://")
        worker = ["distributed.cli.dask_worker", address, "--host", "127.0.0.1", "--no-nanny"]
        procs.append(start_process([*worker, "--no-dashboard", *tls], tmp_path / "worker.log"))
        config = DaskConfig(
            address=address,
            runs_dir=tmp_path / "runs",
            tls_ca_file=cert,
            tls_cert=cert,
            tls_key=key,
        )
        result = await (await config.create().submit(Job(name="tls", command="echo safe"))).wait(60)
        assert result.ok and await result.read_stdout() == "safe\n"
        plain = DaskConfig(address=address.replace("tls://", "tcp://"), connect_timeout=2)
        assert not await plain.create().check()
        with pytest.raises(ValidationError, match="tls_cert, tls_key"):
            DaskConfig(address=address, tls_ca_file=cert)
    finally:
        stop_processes(procs)


# -- a scheduler or an owner that dies --------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_dead_scheduler_is_no_answer(anyio_backend: str, tmp_path: Path) -> None:
    """The scheduler SIGKILLed mid-run: refresh() keeps the last state, and wait() gives
    the run's end from its folder (the worker's supervisor records it there)."""
    pytest.importorskip("distributed")
    import signal

    from .dask_support import await_workers, start_scheduler, start_worker, stop_processes

    scheduler, address = await anyio.to_thread.run_sync(start_scheduler, tmp_path)
    procs = [scheduler, start_worker(address, tmp_path / "w.log", resources="ANY=1", threads=3)]
    try:
        await anyio.to_thread.run_sync(await_workers, address, 1)
        config = _config(address, tmp_path, connect_timeout=2)
        job = Job(name="outlives", command=["sh", "-c", "sleep 3; echo done"])
        backend = config.create()
        handle, waited = await backend.submit(job), await backend.submit(job)
        stopped = await backend.submit(Job(name="stopped", command=STUBBORN))
        results: list[tether.RunResult] = []

        async def wait_through() -> None:  # already awaiting the task when it dies
            results.append(await waited.wait(120))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(wait_through)
            for run in (handle, waited, stopped):
                assert run.run_dir is not None
                while read_started(run.run_dir) is None:  # noqa: ASYNC110 (the worker writes it)
                    await anyio.sleep(0.05)
            os.kill(scheduler.pid, signal.SIGKILL)
            await anyio.to_thread.run_sync(scheduler.wait)
            assert (await handle.refresh()) in (RunState.PENDING, RunState.RUNNING)
            results.append(await handle.wait(120))
            # Cancel without a scheduler: the run's supervisor, on this machine, is stopped.
            supervisor = read_started(stopped.run_dir)  # type: ignore[arg-type]
            assert supervisor is not None
            await stopped.cancel()
        for result in results:
            assert result.state is RunState.SUCCEEDED, result.error
            assert await result.read_stdout() == "done\n"
        assert stopped.state is RunState.CANCELLED
        assert list(session_members(supervisor["pid"])) == []
    finally:
        stop_processes(procs)


EMBEDDED_OWNER = """
import json, sys, anyio, tether
async def main():
    config = tether.DaskConfig(n_workers=1, processes=False, runs_dir=sys.argv[1], cancel_grace=1)
    handle = await config.create().submit(tether.Job(name="owned", command=sys.argv[2]))
    print(json.dumps({"run_dir": str(handle.run_dir)}), flush=True)
    await anyio.sleep(600)
anyio.run(main)
"""


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_embedded_runs_end_with_their_process_even_when_killed(
    anyio_backend: str, tmp_path: Path
) -> None:
    """The owner of an embedded cluster SIGKILLed: its runs' supervisors, in sessions of
    their own, see it go and stop their runs (a daemonised grandchild too)."""
    pytest.importorskip("distributed")
    import json
    import signal
    import subprocess
    import sys

    owner = subprocess.Popen(  # noqa: ASYNC220 (started once, waited for in a thread)
        [sys.executable, "-c", EMBEDDED_OWNER, str(tmp_path / "runs"), STUBBORN],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        line = await anyio.to_thread.run_sync(owner.stdout.readline)
        run_dir = Path(json.loads(line)["run_dir"])
        while (started := read_started(run_dir)) is None:  # noqa: ASYNC110 (the worker writes it)
            await anyio.sleep(0.05)
        stdout = run_dir / "stdout"
        while not stdout.exists() or "started" not in stdout.read_text():  # noqa: ASYNC110
            await anyio.sleep(0.05)
        assert list(session_members(started["pid"]))
    finally:
        owner.send_signal(signal.SIGKILL)
        await anyio.to_thread.run_sync(owner.wait)
        if owner.stdout is not None:
            owner.stdout.close()
    deadline = time.monotonic() + 30  # the run itself would sleep 60 s
    while list(session_members(started["pid"])) and time.monotonic() < deadline:  # noqa: ASYNC110
        await anyio.sleep(0.1)
    assert list(session_members(started["pid"])) == []
    # The supervisor (the session's leader, not counted above) records the end last.
    while not (run_dir / "exit.json").exists() and time.monotonic() < deadline:  # noqa: ASYNC110
        await anyio.sleep(0.05)
    assert json.loads((run_dir / "exit.json").read_text())["reason"] == "cancelled"


def test_a_pipeline_killed_inside_a_dask_submit_finds_its_run(
    dask_service: str, tmp_path: Path
) -> None:
    """The pipeline SIGKILLed after the scheduler took the run but before its record was
    written: the resumed pipeline finds the run on the scheduler, and every step ran once."""
    from . import pipeline_crash_support as support

    support.kill_inside_submit_and_resume(tmp_path, "dask")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_prune_releases_ended_runs_only(
    anyio_backend: str, dask_service: str, tmp_path: Path
) -> None:
    """``tether dask prune`` releases ended runs (as forget() does), keeps younger ones with
    --older-than, leaves running runs and other users' datasets alone."""
    import json
    import subprocess
    import sys

    from distributed import Client

    backend = _config(dask_service, tmp_path).create()
    ended = await backend.submit(Job(name="ended", command="echo over"))
    await ended.wait(60)
    going = await backend.submit(Job(name="going", command="sleep 30"))
    async with Client(dask_service, asynchronous=True) as client:
        await client.publish_dataset(not_tethers=[1, 2, 3])
        try:

            def prune(*options: str) -> dict[str, str]:
                argv = [sys.executable, "-m", "tether", "dask", "prune", dask_service, "--json"]
                done = subprocess.run(
                    [*argv, *options], capture_output=True, text=True, timeout=120, check=False
                )
                assert done.returncode == 0, done.stderr
                return {e["run_id"]: e["action"] for e in json.loads(done.stdout)}

            assert (await anyio.to_thread.run_sync(prune, "--dry-run")).items() >= {
                ended.run_id: "would release",
                going.run_id: "running",
            }.items()
            kept = await anyio.to_thread.run_sync(prune, "--older-than", "1h")
            assert kept[ended.run_id] == "kept"
            released = await anyio.to_thread.run_sync(prune)
            assert (released[ended.run_id], released[going.run_id]) == ("released", "running")
            assert "not_tethers" not in released
            assert "not_tethers" in await client.list_datasets()
            assert await client.get_dataset("not_tethers") == [1, 2, 3]
        finally:
            await client.unpublish_dataset("not_tethers")
    path = await ended.save(tmp_path / "ended.json")
    assert (await (await tether.load_handle(path)).refresh()) is RunState.LOST
    assert (await going.refresh()) is RunState.RUNNING
    await going.cancel()
    assert going.state is RunState.CANCELLED
