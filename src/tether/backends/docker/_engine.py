"""Talking to a Docker engine through aiodocker, with engine errors made tether's.

Every call to the engine goes through :func:`engine`: it opens a client for one
piece of work, reuses the API version learned earlier for the same address (one
round trip fewer per client) and turns aiodocker's exceptions into tether errors
at this edge, so no aiodocker type ever reaches a caller.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import AsyncIterator
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio

from ...capabilities import Availability, missing_extra
from ...errors import BackendError, BackendUnavailableError, SubmitError

if TYPE_CHECKING:
    import aiodocker

DEFAULT_SOCKET = "/var/run/docker.sock"
START_HINT = (
    "start the engine (systemctl start docker, or scripts/docker-engine.sh) or set docker_host"
)

#: API versions already negotiated, by engine address.
_api_versions: dict[str, str] = {}


def engine_url(docker_host: str | None = None) -> str:
    """The engine address: ``docker_host``, else ``$DOCKER_HOST``, else the local socket."""
    return docker_host or os.environ.get("DOCKER_HOST") or f"unix://{DEFAULT_SOCKET}"


def _require_asyncio() -> None:
    import asyncio  # here, not at import time: `import tether` stays light

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise BackendUnavailableError(
            "The docker backend needs an asyncio event loop (aiodocker does not run on "
            "trio): run it under asyncio, e.g. anyio.run(main, backend='asyncio')."
        ) from None


def is_not_found(exc: BaseException) -> bool:
    """True for the engine's 404 (no such container or image)."""
    return getattr(exc, "status", None) == 404


@contextlib.asynccontextmanager
async def engine(
    docker_host: str | None, *, submitting: bool = False
) -> AsyncIterator[aiodocker.Docker]:
    """An aiodocker client of the engine for one piece of work, closed afterwards.

    aiodocker errors raised inside the block come out as tether errors: an engine
    that does not answer is :class:`BackendUnavailableError`; any other engine
    error is :class:`SubmitError` while ``submitting``, else :class:`BackendError`.
    Callers that expect a 404 catch it inside the block (see :func:`is_not_found`).
    """
    _require_asyncio()
    try:
        import aiodocker
    except ImportError:
        raise BackendUnavailableError(
            "The docker backend needs aiodocker: pip install 'tether[docker]'"
        ) from None
    url = engine_url(docker_host)
    client = aiodocker.Docker(url=url, api_version=_api_versions.get(url, "auto"))
    try:
        yield client
        if client.api_version != "auto":
            _api_versions[url] = client.api_version
    except aiodocker.DockerError as exc:
        raise translate(exc, url, submitting=submitting) from exc
    except OSError as exc:
        raise BackendUnavailableError(
            f"Docker engine not reachable at {url} ({exc.strerror or exc}): {START_HINT}."
        ) from exc
    finally:
        with anyio.CancelScope(shield=True):  # also when the caller was cancelled
            await client.close()


def translate(exc: Any, url: str, *, submitting: bool) -> Exception:
    """A tether error for an aiodocker ``DockerError`` (status 900: no connection)."""
    status = getattr(exc, "status", 0)
    message = str(getattr(exc, "message", exc)).strip().splitlines()
    text = message[0] if message else f"status {status}"
    if status == 900:
        return BackendUnavailableError(f"Docker engine not reachable at {url}: {START_HINT}.")
    error = SubmitError if submitting else BackendError
    return error(f"Docker engine at {url} refused: {text}")


def ping(docker_host: str | None = None, timeout: float = 2.0) -> Availability:
    """Whether the engine answers ``GET /_ping``; synchronous, for availability checks."""
    found = missing_extra("docker", ["aiodocker"], "docker")
    if not found:
        return found
    url = engine_url(docker_host)
    parts = urlsplit(url)
    try:
        if parts.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = parts.path
        elif parts.scheme in ("tcp", "http"):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (parts.hostname or "localhost", parts.port or 2375)
        else:  # https, ssh: a handshake we do not repeat here; submit will tell
            return Availability(True)
    except OSError as exc:
        return Availability(False, f"Docker engine not reachable at {url}: {exc}")
    with sock:
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = sock.recv(64)
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            return Availability(False, f"Docker engine not reachable at {url} ({reason})")
    if b" 200 " not in reply.split(b"\r\n", 1)[0] + b" ":
        return Availability(False, f"Docker engine at {url} did not answer its ping")
    return Availability(True)


_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$")


def parse_time(text: Any) -> float | None:
    """Seconds since the epoch from the engine's RFC 3339 times (nanoseconds cut).

    The engine's "zero time" (year 1: never started or never finished) is None.
    """
    if not isinstance(text, str) or text.startswith("0001-"):
        return None
    match = _RFC3339.match(text.strip())
    if match is None:
        return None
    base, fraction, zone = match.groups()
    stamp = f"{base}.{(fraction or '0')[:6]}{'+00:00' if zone in (None, 'Z') else zone}"
    moment = datetime.fromisoformat(stamp)
    return moment.timestamp()


# -- container calls that treat "no such container" as an answer, not an error ----------


async def inspect(client: aiodocker.Docker, container_id: str) -> dict[str, Any] | None:
    """The container's inspect data, or None when the engine has no such container."""
    import aiodocker

    try:
        data: dict[str, Any] = await client.containers.container(container_id).show()
    except aiodocker.DockerError as exc:
        if is_not_found(exc):
            return None
        raise
    return data


async def wait_exit(client: aiodocker.Docker, container_id: str) -> None:
    """Return when the container is not running (at once if it is gone already)."""
    import aiodocker

    try:
        await client.containers.container(container_id).wait()
    except aiodocker.DockerError as exc:
        if not is_not_found(exc):
            raise


async def stop(client: aiodocker.Docker, container_id: str, grace: int) -> None:
    """TERM, then KILL after ``grace`` seconds; returns once the container stopped."""
    import aiodocker

    try:
        await client.containers.container(container_id).stop(t=grace)
    except aiodocker.DockerError as exc:
        if not is_not_found(exc):
            raise


async def remove(client: aiodocker.Docker, container_id: str, *, force: bool = False) -> None:
    """Delete the container (and its anonymous volumes); gone or going already is fine."""
    import aiodocker

    try:
        await client.containers.container(container_id).delete(force=force, v=True)
    except aiodocker.DockerError as exc:
        # 409: a removal is already in progress (another process got there first).
        if not (is_not_found(exc) or getattr(exc, "status", 0) == 409):
            raise


async def read_logs(client: aiodocker.Docker, container_id: str, stream: str) -> str | None:
    """The whole stdout or stderr the engine kept, or None when the container is gone
    (or going)."""
    import aiodocker

    container = client.containers.container(container_id)
    try:
        chunks = await container.log(stdout=stream == "stdout", stderr=stream == "stderr")
    except aiodocker.DockerError as exc:
        # 409: being removed, by whoever recorded the end first; it is theirs to keep.
        if is_not_found(exc) or exc.status == 409:
            return None
        raise
    return "".join(chunks)


async def follow_logs(
    client: aiodocker.Docker, container_id: str, stream: str
) -> AsyncIterator[str]:
    """Chunks of stdout or stderr as the engine streams them, until the container ends.

    Ends quietly when the container is (or becomes) gone.
    """
    import aiodocker

    container = client.containers.container(container_id)
    try:
        async for chunk in container.log(
            stdout=stream == "stdout", stderr=stream == "stderr", follow=True
        ):
            yield chunk
    except aiodocker.DockerError as exc:
        if not is_not_found(exc):
            raise


async def create(client: aiodocker.Docker, spec: dict[str, Any], name: str) -> str | None:
    """Create a container; its id, or None when the engine does not have the image."""
    import aiodocker

    try:
        container = await client.containers.create(spec, name=name)
    except aiodocker.DockerError as exc:
        if is_not_found(exc) and "image" in str(exc.message).lower():
            return None
        raise
    return str(container.id)


async def start(client: aiodocker.Docker, container_id: str) -> str | None:
    """Start a created container; None, or the engine's reason when it could not.

    A command missing from the image fails here ("executable file not found"):
    that is the run's failure, not an error of the call.
    """
    import aiodocker

    try:
        await client.containers.container(container_id).start()
    except aiodocker.DockerError as exc:
        if exc.status == 900:
            raise
        lines = str(exc.message).strip().splitlines()
        return lines[0] if lines else f"the engine refused to start it ({exc.status})"
    return None


async def pull(client: aiodocker.Docker, image: str) -> None:
    """Pull ``image`` from its registry (``pull: true``)."""
    await client.images.pull(image)


async def tether_containers(client: aiodocker.Docker) -> list[dict[str, Any]]:
    """Every container (running or not) that carries tether's run label."""
    containers = await client.containers.list(all=True, filters='{"label": ["tether.run_id"]}')
    keys = ("Id", "Names", "Labels", "State", "Status")
    return [{key: container[key] for key in keys} for container in containers]
