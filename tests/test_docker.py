"""The Docker backend on the real engine: what the contract suite does not cover.

Container settings (labels, limits, network, user, mounts), records kept before
removal, prune, the errors users meet (missing image, no engine, trio), and the
CLI. The contract suite (tests/contract) runs the shared behaviour.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import SecretStr

import tether
from tether import (
    BackendUnavailableError,
    DockerBackend,
    DockerConfig,
    DockerRunHandle,
    Job,
    RunState,
    SubmitError,
)

from .cli_support import CLI
from .services import BUILT_IMAGE, IMPORTED_IMAGE, docker_api

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_service")]


def config(tmp_path: Path, **fields: Any) -> DockerConfig:
    return DockerConfig(image=IMPORTED_IMAGE, runs_dir=tmp_path / "runs", cancel_grace=2, **fields)


def inspect(container_id: str) -> dict[str, Any] | None:
    status, info = docker_api("GET", f"/containers/{container_id}/json")
    return info if status == 200 else None


async def run(cfg: DockerConfig, command: str | list[str], **job: Any) -> DockerRunHandle:
    handle = await cfg.create().submit(Job(name="t", command=command, **job))
    assert isinstance(handle, DockerRunHandle)
    await handle.wait(60)
    return handle


@pytest.mark.asyncio
async def test_container_settings_labels_limits_and_env(tmp_path: Path) -> None:
    secret = "s3cr3t-value-77"
    cfg = config(
        tmp_path,
        cpu=1,
        memory="64m",
        labels={"project": "swan"},
        env_vars={"FROM_CONFIG": "c", "TOKEN": SecretStr(secret)},
        remove_container=False,
    )
    handle = await run(cfg, "env | sort", env={"FROM_JOB": "j"})
    info = inspect(handle.container_id)
    assert info is not None, "remove_container=False keeps the container"
    labels = info["Config"]["Labels"]
    assert labels["tether.run_id"] == handle.run_id
    assert labels["tether.version"] == tether.__version__
    assert labels["tether.run_dir"] == str(handle.run_dir)
    assert labels["project"] == "swan"
    assert secret not in json.dumps(labels)
    host = info["HostConfig"]
    assert host["NanoCpus"] == 1_000_000_000
    assert host["Memory"] == host["MemorySwap"] == 64 * 1024**2
    assert host["NetworkMode"] == "none" and host["Init"] is True
    assert host["AutoRemove"] is False
    assert f"{handle.run_dir}:/tether/run:rw" in host["Binds"]
    out = (await handle.result()).stdout
    assert out is not None
    env = out.read_text().splitlines()
    assert {"FROM_CONFIG=c", "FROM_JOB=j", f"TOKEN={secret}"} <= set(env)
    assert f"TETHER_RUN_ID={handle.run_id}" in env and "TETHER_RUN_DIR=/tether/run" in env
    saved = (handle.run_dir / "handle.json").read_text()  # type: ignore[operator]
    assert secret not in saved and "TOKEN" in saved
    docker_api("DELETE", f"/containers/{handle.container_id}?force=1")


@pytest.mark.asyncio
async def test_job_resources_override_config_limits(tmp_path: Path) -> None:
    cfg = config(tmp_path, cpu=2, memory="1g", remove_container=False)
    handle = await run(cfg, "true", resources={"cpus": 1, "memory": "32m"})
    info = inspect(handle.container_id)
    assert info is not None
    assert info["HostConfig"]["NanoCpus"] == 1_000_000_000
    assert info["HostConfig"]["Memory"] == 32 * 1024**2
    docker_api("DELETE", f"/containers/{handle.container_id}?force=1")


@pytest.mark.asyncio
async def test_container_is_removed_only_after_its_result_is_recorded(tmp_path: Path) -> None:
    handle = await run(config(tmp_path), "echo kept; echo err >&2; exit 5")
    assert inspect(handle.container_id) is None, "remove_container=True removes it"
    assert handle.run_dir is not None
    recorded = json.loads((handle.run_dir / "exit.json").read_text())
    assert recorded["exit_code"] == 5 and recorded["reason"] == "exited"
    assert (handle.run_dir / "stdout").read_text() == "kept\n"
    assert (handle.run_dir / "stderr").read_text() == "err\n"
    result = await handle.wait()
    assert result.state is RunState.FAILED and "exit code 5: err" in (result.error or "")


@pytest.mark.asyncio
async def test_network_none_has_only_loopback(tmp_path: Path) -> None:
    handle = await run(config(tmp_path), "ls /sys/class/net")
    assert (await (await handle.result()).read_stdout()).split() == ["lo"]


@pytest.mark.asyncio
async def test_non_root_user(tmp_path: Path) -> None:
    handle = await run(config(tmp_path, user="1234:2345"), "id -u; id -g")
    assert (await (await handle.result()).read_stdout()).split() == ["1234", "2345"]


@pytest.mark.asyncio
async def test_inputs_staged_and_outputs_collected(tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("42\n")
    handle = await run(
        config(tmp_path),
        "cat in.txt > out.txt; mkdir sub; echo deep > sub/more.txt",
        inputs=[source],
        outputs=["out.txt", "sub/*.txt"],
    )
    result = await handle.result()
    assert handle.run_dir is not None
    assert result.outputs == [handle.run_dir / "out.txt", handle.run_dir / "sub" / "more.txt"]
    assert (handle.run_dir / "out.txt").read_text() == "42\n"


@pytest.mark.asyncio
async def test_volumes_read_only_and_read_write(tmp_path: Path) -> None:
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "data.txt").write_text("input\n")
    cfg = config(tmp_path, volumes=[f"{ro}:/data:ro", f"{rw}:/out"])
    handle = await run(cfg, "cat /data/data.txt > /out/copy.txt; echo x > /data/nope")
    result = await handle.wait()
    assert result.state is RunState.FAILED
    assert "Read-only file system" in await result.read_stderr()
    assert (rw / "copy.txt").read_text() == "input\n"
    assert not (ro / "nope").exists()


@pytest.mark.asyncio
async def test_selinux_label_options_reach_the_engine(tmp_path: Path) -> None:
    """``:ro,Z`` and ``:z`` (rompy's mounts) are accepted by the real engine as well."""
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "data.txt").write_text("input\n")
    cfg = config(tmp_path, volumes=[f"{ro}:/data:ro,Z", f"{rw}:/out:z"])
    result = await (await run(cfg, "cat /data/data.txt > /out/copy.txt")).wait()
    assert result.state is RunState.SUCCEEDED, result.error
    assert (rw / "copy.txt").read_text() == "input\n"


@pytest.mark.asyncio
async def test_inputs_a_workdir_command_cannot_read_are_refused(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    data = tmp_path / "in.txt"
    data.write_text("42\n")
    job = Job(name="io", command="cat in.txt", inputs=[data], workdir=work)
    with pytest.raises(SubmitError, match="is copied into the run folder, but the command runs"):
        await config(tmp_path).create().submit(job)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


@pytest.mark.asyncio
async def test_job_workdir_is_mounted_at_the_same_path(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    handle = await run(config(tmp_path), "pwd; echo made > made.txt", workdir=work)
    assert (await (await handle.result()).read_stdout()).strip() == str(work)
    assert (work / "made.txt").read_text() == "made\n"


@pytest.mark.asyncio
async def test_out_of_memory_is_reported(tmp_path: Path) -> None:
    cfg = config(tmp_path, memory="16m")
    handle = await run(cfg, ["busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"])
    result = await handle.wait()
    assert result.state is RunState.FAILED and result.exit_code == 137
    assert "out of memory (limit 16m)" in (result.error or "")


@pytest.mark.asyncio
async def test_missing_command_fails_the_run_not_the_submit(tmp_path: Path) -> None:
    for init in (True, False):
        handle = await run(config(tmp_path, init=init), ["no-such-command"])
        result = await handle.wait()
        assert result.state is RunState.FAILED and result.exit_code == 127
        assert "no-such-command" in (result.error or "") + await result.read_stderr()
        assert inspect(handle.container_id) is None


@pytest.mark.asyncio
async def test_missing_image_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    cfg = DockerConfig(image="tether-test/not-there:1", runs_dir=tmp_path / "runs")
    with pytest.raises(SubmitError) as caught:
        await cfg.create().submit(Job(command="true"))
    message = str(caught.value)
    assert "'tether-test/not-there:1' is not on the Docker engine" in message
    assert "pull: true" in message and "\n" not in message
    assert list((tmp_path / "runs").iterdir()) == []


@pytest.mark.asyncio
async def test_pull_without_a_registry_fails_fast_and_clearly(tmp_path: Path) -> None:
    cfg = DockerConfig(image="tether-test/not-there:1", runs_dir=tmp_path / "runs", pull=True)
    began = time.monotonic()
    with pytest.raises(SubmitError, match="refused"):
        await cfg.create().submit(Job(command="true"))
    assert time.monotonic() - began < 30
    assert list((tmp_path / "runs").iterdir()) == []


@pytest.mark.asyncio
async def test_unreachable_engine(tmp_path: Path) -> None:
    cfg = config(tmp_path, docker_host=f"unix://{tmp_path}/no.sock")
    availability = await cfg.create().check()
    assert not availability and "not reachable" in availability.reason
    with pytest.raises(BackendUnavailableError, match="not reachable at unix://") as caught:
        await cfg.create().submit(Job(command="true"))
    assert "\n" not in str(caught.value)


def test_trio_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    async def submit() -> None:
        await config(tmp_path).create().submit(Job(command="true"))

    with pytest.raises(BackendUnavailableError, match="asyncio"):
        anyio.run(submit, backend="trio")


@pytest.mark.asyncio
async def test_logs_follow_streams_while_the_run_goes_on(tmp_path: Path) -> None:
    handle = await config(tmp_path).create().submit(Job(command="echo first; sleep 2; echo second"))
    began = time.monotonic()
    seen: list[tuple[str, float]] = []
    async for line in handle.logs(follow=True):
        seen.append((line, time.monotonic() - began))
    assert [line for line, _ in seen] == ["first", "second"]
    assert seen[0][1] < 1.5, "the first line arrived only at the end"
    assert (await handle.wait()).ok


@pytest.mark.asyncio
async def test_many_runs_at_once(tmp_path: Path) -> None:
    backend = config(tmp_path).create()
    handles = [await backend.submit(Job(command=f"echo {n}")) for n in range(6)]
    results = [await h.wait(60) for h in handles]
    assert [await r.read_stdout() for r in results] == [f"{n}\n" for n in range(6)]
    assert len({h.container_id for h in handles}) == 6


@pytest.mark.asyncio
async def test_prune_removes_recorded_containers_records_unrecorded_lists_orphans(
    tmp_path: Path,
) -> None:
    backend = config(tmp_path, remove_container=False).create()
    recorded = await run(backend.config, "echo recorded")
    unrecorded = await backend.submit(Job(command="echo late; exit 4"))  # nobody waits
    orphan = await backend.submit(Job(command="true"))
    await anyio.sleep(1.5)  # both end on their own
    assert orphan.run_dir is not None and unrecorded.run_dir is not None
    shutil.rmtree(orphan.run_dir)

    dry = {e.run_id: e for e in await DockerBackend.prune(dry_run=True)}
    assert dry[recorded.run_id].action == "would remove"
    assert dry[orphan.run_id].action == "orphan"
    assert inspect(recorded.container_id) is not None

    done = {e.run_id: e for e in await DockerBackend.prune()}
    assert done[recorded.run_id].action == "removed"
    assert done[unrecorded.run_id].action == "removed"
    assert done[orphan.run_id].action == "orphan"
    assert inspect(recorded.container_id) is None and inspect(unrecorded.container_id) is None
    exit_record = json.loads((unrecorded.run_dir / "exit.json").read_text())
    assert exit_record["exit_code"] == 4
    assert (unrecorded.run_dir / "stdout").read_text() == "late\n"

    gone = {e.run_id: e for e in await DockerBackend.prune(orphans=True)}
    assert gone[orphan.run_id].action == "removed orphan"
    assert inspect(orphan.container_id) is None


def test_cli_runs_a_job_file_on_docker_and_prunes(tmp_path: Path, cli: CLI) -> None:
    (tmp_path / "docker.yml").write_text(
        f"type: docker\nimage: {IMPORTED_IMAGE}\nruns_dir: {tmp_path / 'runs'}\n"
        "cancel_grace: 2\nenv_vars:\n  GREETING: hello\n"
    )
    (tmp_path / "job.yml").write_text("name: greet\ncommand: echo $GREETING from docker\n")
    proc = cli(
        "run",
        str(tmp_path / "job.yml"),
        "--backend-config",
        str(tmp_path / "docker.yml"),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["state"] == "SUCCEEDED"
    assert Path(result["stdout"]).read_text() == "hello from docker\n"

    proc = cli("docker", "prune", "--json")
    assert proc.returncode == 0, proc.stderr
    assert isinstance(json.loads(proc.stdout), list)

    proc = cli("docker", "prune", "--docker-host", f"unix://{tmp_path}/none.sock")
    assert proc.returncode == 2
    assert proc.stderr.startswith("tether: error: Docker engine not reachable")
    assert "Traceback" not in proc.stderr


def test_the_docker_examples_run(cli: CLI) -> None:
    """Out of the box, on the engine (and image) that scripts/docker-engine.sh starts."""
    examples = Path(__file__).resolve().parent.parent / "examples"
    cli.env.pop("TETHER_DOCKER_IMAGE", None)
    proc = cli("run", examples / "docker" / "job.yml", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert [Path(p).name for p in result["outputs"]] == ["greeting.txt"]
    assert Path(result["outputs"][0]).read_text() == "hello from a container\n"
    proc = cli(
        "run",
        examples / "hello" / "job.yml",
        "--backend-config",
        examples / "docker" / "docker.yml",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("hello from tether\n")


@pytest.mark.asyncio
async def test_observers_racing_to_record_the_end_agree(tmp_path: Path) -> None:
    """A waiter and refreshers (as in `tether run`) all see the end; one records it."""
    backend = config(tmp_path).create()
    for _ in range(5):
        handle = await backend.submit(Job(command="echo raced; exit 3"))
        reloaded = await tether.load_handle(await handle.save(tmp_path / "h.json"))

        async def poll(h: tether.RunHandle) -> RunState:
            while not (await h.refresh()).is_terminal:  # noqa: ASYNC110 (polling is the test)
                await anyio.sleep(0.005)
            return h.state

        async with anyio.create_task_group() as tg:
            tg.start_soon(handle.wait)
            tg.start_soon(poll, handle)
            tg.start_soon(poll, reloaded)
        for h in (handle, reloaded):
            result = await h.wait()
            assert result.state is RunState.FAILED and result.exit_code == 3
            assert await result.read_stdout() == "raced\n"
        assert inspect(handle.container_id) is None


@pytest.mark.asyncio
async def test_cache_keys_follow_the_image_id_not_its_tag(tmp_path: Path) -> None:
    """A cached Docker run is keyed by what the tag points at, so a re-tag is a miss."""
    tag = f"tether-test/alias-{tmp_path.name.lower()}:1"
    status, _ = docker_api("POST", f"/images/{IMPORTED_IMAGE}/tag?repo={tag.split(':')[0]}&tag=1")
    assert status == 201
    try:
        store = tether.SQLiteStore(tmp_path / "cache.sqlite")
        by_name = tether.CachedBackend(config(tmp_path).create(), store)
        by_alias = tether.CachedBackend(
            DockerConfig(image=tag, runs_dir=tmp_path / "runs", cancel_grace=2).create(), store
        )
        job = Job(command="echo cached")
        assert await by_name.key(job) == await by_alias.key(job)  # same image, two tags
        first = await by_name.submit(job)
        assert not first.hit and (await first.wait()).ok
        again = await by_alias.submit(job)
        assert again.hit and await (await again.wait()).read_stdout() == "cached\n"

        # Point the alias at another image: its key changes, so the next run is a miss.
        status, _ = docker_api("POST", f"/images/{BUILT_IMAGE}/tag?repo={tag.split(':')[0]}&tag=1")
        assert status == 201
        assert await by_alias.key(job) != await by_name.key(job)
        assert not (await by_alias.submit(job)).hit
    finally:
        docker_api("DELETE", f"/images/{tag}?force=1")
