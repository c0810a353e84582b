"""``tether``: run jobs and manage saved run handles from the shell.

The edge where errors become exit codes and one-line messages; the parser is in
``_parser``, the commands in ``_commands``, ``_backends`` and ``_ls``. Nothing here
imports the library itself, so ``tether --help`` and a mistyped option answer at once:
a command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import inspect
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from ._exits import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from ._parser import Command, LazyCommand, SyncCommand, build_parser

if TYPE_CHECKING:
    import anyio.abc


async def _until_interrupted(command: Command, args: argparse.Namespace) -> int:
    """Run ``command``; on SIGINT cancel it (letting it clean up) and raise KeyboardInterrupt.

    Catching the signal ourselves, rather than letting KeyboardInterrupt fly
    anywhere, turns Ctrl-C into ordinary cancellation: ``tether run`` can then
    cancel its run in a shielded scope before the process exits.
    """
    import anyio

    interrupted = False
    code = EXIT_OK
    error: Exception | None = None

    async with anyio.create_task_group() as tg:

        async def watch_sigint(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            nonlocal interrupted
            with anyio.open_signal_receiver(signal.SIGINT) as signals:
                task_status.started()
                async for _ in signals:
                    interrupted = True
                    tg.cancel_scope.cancel()
                    return

        # Like Python itself, leave SIGINT alone when it is ignored (`nohup`-style
        # starts, background jobs of non-interactive shells).
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            await tg.start(watch_sigint)
        try:
            code = await command(args)
        except Exception as exc:  # re-raised below, not wrapped in an ExceptionGroup
            error = exc
        finally:
            tg.cancel_scope.cancel()
    if interrupted:
        raise KeyboardInterrupt
    if error is not None:
        raise error
    return code


def _unwrap(exc: BaseException) -> BaseException:
    """The one error inside (nested) single-member exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _report(exc: BaseException, *, debug: bool) -> int:
    """Turn an error escaping a command into messages on stderr and an exit status."""
    import traceback

    from ..errors import TetherError
    from ._render import describe_os_error, error_lines

    error = _unwrap(exc)
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(error, BrokenPipeError):
        # Point stdout at /dev/null so the interpreter's final flush fails no more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    if isinstance(error, TetherError | OSError):
        if debug:
            traceback.print_exception(exc)
        else:
            message = describe_os_error(error) if isinstance(error, OSError) else str(error)
            for line in error_lines(message):
                print(line, file=sys.stderr)
        return EXIT_USAGE
    if isinstance(error, SystemExit | GeneratorExit) or not isinstance(error, Exception):
        raise exc
    # Anything else is a bug in tether (or a backend): the traceback is the report.
    traceback.print_exception(exc)
    print(
        "tether: error: internal error (please report it with the traceback above)",
        file=sys.stderr,
    )
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tether`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    lazy: LazyCommand = args.func
    try:
        command = lazy.load()
        if not inspect.iscoroutinefunction(command):
            # No event loop (``tether ls``): Ctrl-C is a plain KeyboardInterrupt.
            return cast(SyncCommand, command)(args)
        import anyio  # only now: --help and usage errors exit inside parse_args

        return anyio.run(_until_interrupted, command, args)
    except BaseException as exc:
        return _report(exc, debug=args.debug)
