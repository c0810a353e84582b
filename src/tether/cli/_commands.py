"""The CLI's commands: async functions of the parsed arguments that return an exit code."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import anyio

from ..backends.local import LocalConfig
from ..cache.backend import CachedConfig, CachedRunHandle
from ..config import BackendConfig
from ..errors import ConfigError, RecordError, WaitTimeout
from ..handle import RunHandle, Stream
from ..job import Job
from ..registry import load_config, load_handle, load_job
from ..result import RunResult, RunState
from ._exits import EXIT_OK, EXIT_RUN_FAILED, EXIT_WAIT_TIMEOUT
from ._render import (
    StatusDisplay,
    result_json,
    state_json,
    state_line,
    summary,
    write_lines,
)

#: Seconds between redraws of the status line, and between asking the backend for
#: news: the wait itself is event-driven; this only keeps the display current,
#: without querying a scheduler twice a second.
REDRAW_EVERY = 0.5
REFRESH_EVERY = 2.0


def exit_code(state: RunState) -> int:
    """0 while a run goes on or once it succeeded; 1 once it ended otherwise."""
    return EXIT_RUN_FAILED if state.is_terminal and state is not RunState.SUCCEEDED else EXIT_OK


def _stderr(*lines: str) -> None:
    write_lines(sys.stderr, list(lines))


def _stdout(*lines: str) -> None:
    write_lines(sys.stdout, list(lines))


def _job_and_config(args: argparse.Namespace) -> tuple[Job, BackendConfig]:
    """The job, and its config: --backend-config > the job file's ``backend:`` > local;
    wrapped in the cache with ``--cache`` (or ``--cache-store``, ``--refresh``)."""
    job, config = load_job(args.job)
    if args.backend_config is not None:
        config = load_config(args.backend_config)
    config = config if config is not None else LocalConfig()
    if args.cache or args.cache_store is not None or args.refresh:
        config = CachedConfig(backend=config, store_path=args.cache_store, refresh=args.refresh)
    return job, config


async def _submit(job: Job, config: BackendConfig, handle_path: Path | None) -> RunHandle:
    """Submit and save the handle; a run whose handle cannot be saved is cancelled."""
    backend = config.create()
    # Shielded: once the backend has started the run, a Ctrl-C must not lose its handle.
    with anyio.CancelScope(shield=True):
        handle = await backend.submit(job)
    if handle_path is None:
        return handle
    try:
        await handle.save(handle_path)
    except BaseException as exc:
        # Nobody could find the run again to wait for it or end it: don't leave it going.
        with anyio.CancelScope(shield=True):
            await handle.cancel()
        if isinstance(exc, RecordError):
            raise ConfigError(
                f"{exc}; run {handle.run_id} was cancelled: pass a writable --handle path."
            ) from exc
        raise
    return handle


async def _show_progress(handle: RunHandle, display: StatusDisplay) -> None:
    while True:
        # Refreshing brings news like PENDING -> RUNNING (and makes a reloaded
        # handle's first line right); the end itself comes through wait().
        await handle.refresh()
        for _ in range(round(REFRESH_EVERY / REDRAW_EVERY)):
            display.update(handle.state)
            await anyio.sleep(REDRAW_EVERY)


async def _watch(handle: RunHandle, timeout: float | None = None) -> RunResult:
    """``handle.wait(timeout)`` with a status display on stderr while it waits."""
    display = StatusDisplay(sys.stderr, handle.run_id, live=sys.stderr.isatty())
    result: RunResult | None = None
    error: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(_show_progress, handle, display)
        try:
            result = await handle.wait(timeout)
        except Exception as exc:  # re-raised below, not wrapped in an ExceptionGroup
            error = exc
        finally:
            tg.cancel_scope.cancel()
            display.clear()
    if error is not None:
        raise error
    assert result is not None
    return result


async def _detach(handle: RunHandle, handle_path: Path | None, *, as_json: bool) -> int:
    """Report a run left going: its id, and the handle file that finds it again."""
    if handle_path is None:
        if handle.run_dir is None:
            with anyio.CancelScope(shield=True):
                await handle.cancel()
            raise ConfigError(
                f"run {handle.run_id} was cancelled: this backend's runs have no folder to "
                "keep their handle in; pass --handle H.json with --detach"
            )
        handle_path = await handle.save(handle.run_dir / "handle.json")
    if as_json:
        info = {"run_id": handle.run_id, "state": handle.state.value, "handle": str(handle_path)}
        _stdout(json.dumps(info, indent=2))
    else:
        _stdout(handle.run_id)
        _stderr(
            f"tether: run {handle.run_id} goes on; handle saved to {handle_path} "
            f"(`tether wait {handle_path}`, `tether logs -f {handle_path}`)"
        )
    return EXIT_OK


async def run(args: argparse.Namespace) -> int:
    """``tether run``: submit, wait with a status line, print stdout and a summary.

    With ``--detach``: submit, save the handle and return at once.
    """
    job, config = _job_and_config(args)
    handle = await _submit(job, config, args.handle)
    if args.detach:
        return await _detach(handle, args.handle, as_json=args.json)
    try:
        result = await _watch(handle)
    except anyio.get_cancelled_exc_class():
        # Interrupted: `tether run` owns the run it started, so it ends it too.
        with anyio.CancelScope(shield=True):
            _stderr(f"tether: interrupted: cancelling run {handle.run_id}")
            await handle.cancel()
            _stderr(state_line(handle.run_id, handle.state))
        raise
    if args.json:
        _stdout(result_json(result))
    else:
        output = await result.read_stdout()
        if output:
            sys.stdout.write(output if output.endswith("\n") else output + "\n")
            sys.stdout.flush()
        line = summary(result, handle.run_dir)
        if isinstance(handle, CachedRunHandle) and handle.hit:
            line += f"; from the cache (key {handle.key[:12]}), nothing ran"
        _stderr(line)
    return exit_code(result.state)


async def submit(args: argparse.Namespace) -> int:
    """``tether submit``: submit, save the handle, print the run id."""
    job, config = _job_and_config(args)
    handle = await _submit(job, config, args.handle)
    _stdout(handle.run_id)
    return EXIT_OK


async def status(args: argparse.Namespace) -> int:
    """``tether status``: ask the backend for news and print the state."""
    handle = await load_handle(args.handle)
    state = await handle.refresh()
    result = handle.last_result
    if args.json:
        _stdout(result_json(result) if result else state_json(handle.run_id, state))
    else:
        _stdout(summary(result, handle.run_dir) if result else state_line(handle.run_id, state))
    return exit_code(state)


async def wait(args: argparse.Namespace) -> int:
    """``tether wait``: wait for the run (or ``--timeout`` seconds) and print its result."""
    handle = await load_handle(args.handle)
    try:
        result = await _watch(handle, args.timeout)
    except WaitTimeout as exc:
        _stderr(f"tether: {exc}")
        return EXIT_WAIT_TIMEOUT
    except anyio.get_cancelled_exc_class():
        _stderr(
            f"tether: interrupted; run {handle.run_id} keeps going "
            f"(`tether cancel {args.handle}` ends it)"
        )
        raise
    _stdout(result_json(result) if args.json else summary(result, handle.run_dir))
    return exit_code(result.state)


async def cancel(args: argparse.Namespace) -> int:
    """``tether cancel``: end the run (a no-op on an ended one) and print its state."""
    handle = await load_handle(args.handle)
    await handle.cancel()
    result = handle.last_result
    if args.json:
        _stdout(result_json(result) if result else state_json(handle.run_id, handle.state))
    else:
        _stdout(
            summary(result, handle.run_dir) if result else state_line(handle.run_id, handle.state)
        )
    return EXIT_OK


async def logs(args: argparse.Namespace) -> int:
    """``tether logs``: print the run's stdout (or stderr) lines; ``-f`` follows them."""
    handle = await load_handle(args.handle)
    stream: Stream = "stderr" if args.stderr else "stdout"
    async for line in handle.logs(stream, follow=args.follow):
        if args.json:  # JSON Lines: one object per output line, safe for any text
            line = json.dumps({"run_id": handle.run_id, "stream": stream, "line": line})
        sys.stdout.write(line + "\n")
        if args.follow:
            sys.stdout.flush()
    sys.stdout.flush()
    return EXIT_OK
