"""The Docker engine that scripts/docker-engine.sh provides, seen through aiodocker.

These check the test infrastructure the Docker backend builds on: the engine
answers, both busybox test images run with network mode none, and a container's
exit code and output can be read back after it ended.
"""

from __future__ import annotations

from typing import Any

import pytest

from .services import BUILT_IMAGE, IMPORTED_IMAGE

pytestmark = [pytest.mark.docker, pytest.mark.asyncio]


@pytest.mark.parametrize("image", [IMPORTED_IMAGE, BUILT_IMAGE])
async def test_test_images_run_without_network(docker_engine: Any, image: str) -> None:
    container = await docker_engine.containers.create(
        {
            "Image": image,
            "Cmd": ["/bin/sh", "-c", "echo out; echo err >&2; ls /sys/class/net; exit 3"],
            "HostConfig": {"NetworkMode": "none"},
            "Labels": {"tether.test": "1"},
        }
    )
    try:
        await container.start()
        status = await container.wait(timeout=30)
        assert status["StatusCode"] == 3
        out = "".join(await container.log(stdout=True))
        err = "".join(await container.log(stderr=True))
        assert out.splitlines()[0] == "out" and err == "err\n"
        assert out.split()[1:] == ["lo"]  # network mode none: loopback only
    finally:
        await container.delete(force=True)


async def test_the_engine_takes_the_gpu_device_requests(docker_engine: Any, tmp_path: Any) -> None:
    """The engine stores what tether asks for GPUs (starting needs a GPU driver, which
    this engine may lack: only the created container's HostConfig is checked)."""
    from tether import DockerConfig, Job

    backend = DockerConfig(image=IMPORTED_IMAGE).create()
    job = Job(command="true", resources={"gpus": 1})
    spec = backend._spec(
        job, image=IMPORTED_IMAGE, command=["true"], run_id="r", run_dir=tmp_path, workdir=None
    )
    spec["Labels"] = {"tether.test": "1"}
    container = await docker_engine.containers.create(spec)
    try:
        info = await container.show()
        requests = info["HostConfig"]["DeviceRequests"]
        assert [(r["Count"], r["Capabilities"]) for r in requests] == [(1, [["gpu"]])]
    finally:
        await container.delete(force=True)
