"""Real services the tests need, and what to do when one is missing.

On a laptop without the service, its tests skip with a one-line reason. In CI
(``CI`` set, as ``.ci/run`` and the ``ci`` nox session do) a missing service
fails the run instead: CI must never pass by skipping.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

DOCKER_SOCKET = "/var/run/docker.sock"
IMPORTED_IMAGE = "tether-test/busybox:import"
BUILT_IMAGE = "tether-test/busybox:build"
START = "bash scripts/docker-engine.sh"


def in_ci() -> bool:
    """True when a missing service must fail the run rather than skip."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def missing(reason: str) -> None:
    """Skip the test (laptop) or fail it (CI) because a service is missing."""
    if in_ci():
        pytest.fail(f"{reason} (CI must not skip service tests)", pytrace=False)
    pytest.skip(reason)


@pytest_asyncio.fixture
async def docker_engine() -> AsyncIterator[object]:
    """An aiodocker client of the real engine that has tether's test images.

    asyncio only: aiodocker (like aiohttp under it) does not run on trio.
    """
    try:
        import aiodocker
    except ImportError:
        missing("aiodocker is not installed: pip install 'tether[docker]'")
    client = aiodocker.Docker()
    try:
        try:
            await client.version()
        except Exception as exc:  # any failure to answer: socket missing, refused, engine down
            where = os.environ.get("DOCKER_HOST", f"unix://{DOCKER_SOCKET}")
            missing(f"Docker engine not reachable at {where} ({exc}); run {START}")
        for image in (IMPORTED_IMAGE, BUILT_IMAGE):
            try:
                await client.images.inspect(image)
            except aiodocker.DockerError:
                missing(f"test image {image} is not built; run {START}")
        yield client
    finally:
        await client.close()
