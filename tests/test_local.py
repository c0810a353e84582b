"""Local-backend behaviour beyond the shared contract."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import anyio
import pytest

import tether
from tether import ConfigError, Job, LocalConfig, RunState, SubmitError
from tether._proc import session_members

from .conftest import run_python

pytestmark = pytest.mark.anyio


def local(tmp_path: Path, **fields: object) -> tether.LocalBackend:
    return LocalConfig(runs_dir=tmp_path / "runs", **fields).create()  # type: ignore[arg-type]


async def test_inputs_staged_outputs_collected(tmp_path: Path) -> None:
    data = tmp_path / "in.txt"
    data.write_text("42\n")
    job = Job(
        name="io",
        command="cat in.txt > out.txt && mkdir -p sub && echo deep > sub/deep.txt",
        inputs=[data],
        outputs=["out.txt", "sub/*.txt", "*.none"],
    )
    handle = await local(tmp_path).submit(job)
    result = await handle.wait()
    assert result.ok, result.error
    assert [p.name for p in result.outputs] == ["out.txt", "deep.txt"]
    assert result.outputs[0].read_text() == "42\n"
    assert result.outputs[0].parent == handle.run_dir


@pytest.mark.parametrize("where", ["job", "config"])
async def test_inputs_a_workdir_command_cannot_read_are_refused_up_front(
    tmp_path: Path, where: str
) -> None:
    """With workdir (job) or working_dir (config) the command runs there: an input
    that is not there by its name is refused before anything starts."""
    work = tmp_path / "work"
    work.mkdir()
    data = tmp_path / "in.txt"
    data.write_text("42\n")
    job = Job(name="io", command="cat in.txt", inputs=[data])
    if where == "job":
        backend, job = local(tmp_path), job.model_copy(update={"workdir": work})
    else:
        backend = local(tmp_path, working_dir=work)
    with pytest.raises(SubmitError, match=r"input '.*in.txt' is copied into the run folder, but"):
        await backend.submit(job)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())
    (work / "in.txt").write_text("43\n")  # there by its name: the command reads it
    moved = Job(name="io", command="cat in.txt", inputs=[work / "in.txt"])
    if where == "job":
        moved = moved.model_copy(update={"workdir": work})
    result = await (await backend.submit(moved)).wait()
    assert result.ok, result.error
    assert await result.read_stdout() == "43\n"


async def test_outputs_copied_from_a_separate_workdir(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    job = Job(command="echo made > result.csv", workdir=work, outputs=["*.csv"])
    handle = await local(tmp_path).submit(job)
    result = await handle.wait()
    assert result.outputs == [handle.run_dir / "outputs" / "result.csv"]
    assert result.outputs[0].read_text() == "made\n"


async def test_shell_false_and_argv(tmp_path: Path) -> None:
    plain = await local(tmp_path, shell=False).submit(Job(command="echo 'a b' $HOME"))
    assert await (await plain.wait()).read_stdout() == "a b $HOME\n"
    argv = await local(tmp_path).submit(Job(command=["printf", "%s|", "x y", "z"]))
    assert await (await argv.wait()).read_stdout() == "x y|z|"


async def test_default_command_env_and_working_dir(tmp_path: Path) -> None:
    backend = local(
        tmp_path,
        command='echo "$GREETING $WHO from $(basename "$PWD") $TETHER_RUN_ID"',
        env_vars={"GREETING": "hi", "WHO": "config"},
        working_dir=tmp_path,
    )
    handle = await backend.submit(Job(env={"WHO": "job"}))
    out = await (await handle.wait()).read_stdout()
    assert out == f"hi job from {tmp_path.name} {handle.run_id}\n"


async def test_unknown_command_ends_failed_with_reason(tmp_path: Path) -> None:
    argv = await (await local(tmp_path).submit(Job(command=["no-such-tool-xyz"]))).wait()
    assert argv.state is RunState.FAILED and argv.exit_code == 127
    assert argv.error == "cannot execute 'no-such-tool-xyz': No such file or directory"
    shell = await (await local(tmp_path).submit(Job(command="no-such-tool-xyz --v"))).wait()
    assert shell.state is RunState.FAILED and shell.exit_code == 127
    assert "not found" in (shell.error or "")


async def test_bad_jobs_are_clear_errors_and_leave_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="has no command"):
        await local(tmp_path).submit(Job(name="empty"))
    with pytest.raises(SubmitError, match="does not exist"):
        await local(tmp_path).submit(Job(command="true", inputs=[tmp_path / "missing"]))
    runs = tmp_path / "runs"
    assert not runs.exists() or list(runs.iterdir()) == []


async def test_capture_output_false_writes_no_logs(tmp_path: Path) -> None:
    handle = await local(tmp_path, capture_output=False).submit(Job(command="true"))
    result = await handle.wait()
    assert result.ok and result.stdout is None
    assert [line async for line in handle.logs()] == []
    assert not (handle.run_dir / "stdout").exists()


async def test_cancel_kills_whole_tree_even_ignoring_term(tmp_path: Path) -> None:
    script = "trap '' TERM; (sleep 60 & sleep 60) & sleep 60"
    handle = await local(tmp_path, cancel_grace=0.5).submit(Job(command=script))
    await anyio.sleep(0.3)
    assert len(list(session_members(handle.pid))) >= 3
    began = time.monotonic()
    await handle.cancel()
    assert handle.state is RunState.CANCELLED
    assert time.monotonic() - began < 4
    assert list(session_members(handle.pid)) == []


async def test_cancel_sweeps_processes_that_left_the_group(tmp_path: Path) -> None:
    # setsid -f starts a process in a new group inside... a new session; a plain
    # 'set -m' job gets its own process group but stays in the run's session.
    handle = await local(tmp_path).submit(Job(command="set -m; sleep 60 & wait"))
    await anyio.sleep(0.3)
    await handle.cancel()
    assert list(session_members(handle.pid)) == []


async def test_leftover_background_processes_are_stopped_at_exit(tmp_path: Path) -> None:
    handle = await local(tmp_path).submit(Job(command="sleep 60 & echo started"))
    result = await handle.wait()
    assert result.ok
    await anyio.sleep(0.2)
    assert list(session_members(handle.pid)) == []


async def test_run_folder_holds_a_record(tmp_path: Path) -> None:
    handle = await local(tmp_path).submit(Job(command="true"))
    await handle.wait()
    again = await tether.load_handle(handle.run_dir / "handle.json")
    assert again.run_id == handle.run_id
    assert (await again.refresh()) is RunState.SUCCEEDED
    assert (handle.run_dir / "handle.json").stat().st_mode & 0o777 == 0o600
    assert handle.run_dir.stat().st_mode & 0o777 == 0o700


async def test_lost_when_run_folder_deleted(tmp_path: Path) -> None:
    import shutil

    handle = await local(tmp_path).submit(Job(command="true"))
    await anyio.sleep(0.3)
    shutil.rmtree(handle.run_dir)
    assert (await handle.refresh()) is RunState.LOST


async def test_killed_by_signal_reports_it(tmp_path: Path) -> None:
    handle = await local(tmp_path).submit(Job(command=["sh", "-c", "kill -KILL $$"]))
    result = await handle.wait()
    assert result.state is RunState.FAILED and result.exit_code == -signal.SIGKILL
    assert "SIGKILL" in (result.error or "")


async def test_supervisor_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tether._supervisor import python_supervisor, supervisor_argv

    monkeypatch.setenv("TETHER_SUPERVISOR", "python")
    assert supervisor_argv() == python_supervisor()
    handle = await local(tmp_path).submit(Job(command="echo py"))
    assert (await handle.wait()).ok
    assert '"supervisor": "python"' in (handle.run_dir / "exit.json").read_text()

    monkeypatch.setenv("TETHER_SUPERVISOR", "c")
    handle = await local(tmp_path).submit(Job(command="true"))
    await handle.wait()
    assert '"supervisor": "c"' in (handle.run_dir / "exit.json").read_text()

    monkeypatch.setenv("TETHER_SUPERVISOR", "fortran")
    with pytest.raises(tether.BackendUnavailableError, match="not one of auto, c, python"):
        supervisor_argv()


async def test_native_supervisor_without_compiler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tether import _supervisor

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(tmp_path / "no-compiler"))
    with pytest.raises(tether.BackendUnavailableError, match="Cannot run the C compiler"):
        _supervisor.native_supervisor()
    monkeypatch.setattr(_supervisor, "_cached", {})
    assert _supervisor.supervisor_argv() == _supervisor.python_supervisor()
    assert await LocalConfig().create().check()


def test_native_supervisor_rebuilds_when_musl_arrives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A supervisor built before musl-tools was installed is not reused after it is."""
    from tether import _supervisor

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CC", raising=False)
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc is not None
    system = tmp_path / "system"  # /usr/bin without musl-gcc: the glibc build
    system.mkdir()
    for entry in os.scandir("/usr/bin"):
        if entry.name != "musl-gcc":
            (system / entry.name).symlink_to(entry.path)
    monkeypatch.setenv("PATH", str(system))
    first = _supervisor.native_supervisor()

    musl = tmp_path / "musl"  # a musl-gcc appears on PATH (a wrapper of cc suffices)
    musl.mkdir()
    (musl / "musl-gcc").write_text(f'#!/bin/sh\nexec {cc} "$@"\n')
    (musl / "musl-gcc").chmod(0o755)
    monkeypatch.setenv("PATH", f"{musl}:{system}")
    second = _supervisor.native_supervisor()
    assert first != second
    assert all(os.access(argv[0], os.X_OK) for argv in (first, second))
    assert _supervisor.native_supervisor() == second  # cached from now on


async def test_many_runs_at_once_no_zombies(tmp_path: Path) -> None:
    backend = local(tmp_path)
    handles = [await backend.submit(Job(command=f"exit {i % 3}")) for i in range(30)]
    results = []
    async with anyio.create_task_group() as tg:
        for handle in handles:

            async def wait(h: tether.RunHandle = handle) -> None:
                results.append(await h.wait())

            tg.start_soon(wait)
    assert sorted(r.exit_code or 0 for r in results) == sorted(i % 3 for i in range(30))
    from tether.backends import local as local_module

    local_module._reap_finished()
    zombies = [pid for pid in local_module._children if os.path.exists(f"/proc/{pid}")]
    assert zombies == []


# -- what a run inherits ------------------------------------------------------------

SIGNALS_OF_A_RUN = r"""
import asyncio, json, sys
from pathlib import Path
from tether import Job, LocalConfig

async def main():
    backend = LocalConfig(runs_dir=Path(sys.argv[1])).create()
    handle = await backend.submit(Job(command="grep SigIgn /proc/self/status"))
    result = await handle.wait(30)
    print(json.dumps({"stdout": await result.read_stdout()}))

asyncio.run(main())
"""


@pytest.mark.parametrize("supervisor", ["c", "python"])
def test_local_runs_start_with_default_sigpipe_and_sigxfsz(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, supervisor: str
) -> None:
    """Python ignores SIGPIPE and SIGXFSZ, and exec keeps ignored signals: the
    supervisors reset them, so `producer | head` ends the producer as in a shell."""
    monkeypatch.setenv("TETHER_SUPERVISOR", supervisor)
    out = run_python(SIGNALS_OF_A_RUN, str(tmp_path / "runs"))
    ignored = int(out["stdout"].split()[1], 16)  # "SigIgn: <mask>", bit n-1 is signal n
    assert not ignored & (1 << (signal.SIGPIPE - 1))
    assert not ignored & (1 << (signal.SIGXFSZ - 1))


async def test_the_record_written_at_submit_is_the_one_save_writes(tmp_path: Path) -> None:
    """``handle.json`` is composed with the config encoded once per backend: same bytes."""
    backend = LocalConfig(runs_dir=tmp_path / "runs", env_vars={"A": "b"}).create()
    for job in (Job(command="true"), Job(command=["echo", 'é "x"'], env={"K": "v"})):
        handle = await backend.submit(job)
        await handle.wait()
        saved = await handle.save(tmp_path / "saved.json")
        assert (handle.run_dir / "handle.json").read_bytes() == saved.read_bytes()  # type: ignore[operator]


async def test_a_chosen_run_id_in_use_is_refused_with_its_folder(tmp_path: Path) -> None:
    backend = LocalConfig(runs_dir=tmp_path / "runs").create()
    handle = await backend.submit(Job(command="true"), run_id="taken")
    await handle.wait()
    with pytest.raises(SubmitError, match=r"Run folder '.*taken' already exists: submit with"):
        await backend.submit(Job(command="true"), run_id="taken")
