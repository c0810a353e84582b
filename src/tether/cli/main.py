"""``tether``: run jobs and manage saved run handles from the shell.

The parser and the edge where errors become exit codes and one-line messages;
the commands themselves are in ``_commands``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import anyio
import anyio.abc

from .. import __version__
from ..errors import TetherError
from . import _commands
from ._commands import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from ._render import describe_os_error, error_lines

Command = Callable[[argparse.Namespace], Awaitable[int]]

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of our output went away (`| head`)

EPILOG = """\
exit status:
  0    the run SUCCEEDED (run, wait), or the command did its job
       (submit, cancel, logs; status while the run goes on or once it succeeded)
  1    the run ended in another state: FAILED, CANCELLED, TIMED_OUT or LOST
  2    usage, job file, backend config or handle file error (one line on stderr;
       --debug shows the traceback)
  3    wait --timeout ran out; the run keeps going
  130  interrupted (Ctrl-C): `tether run` cancels its run first; `tether wait`
       and the other commands leave the run going
  141  the output pipe was closed (e.g. `tether logs H | head`)

Run folders go to $TETHER_HOME/runs (default ~/.local/state/tether/runs).
"""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"{text!r} must be zero or more seconds")
    return value


def _add_debug(parser: argparse.ArgumentParser, default: object) -> None:
    # Not shared through `parents=`: argparse shares the action objects, and so
    # their defaults, between a parent and its children.
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="show the traceback of an error instead of one line",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tether`` command."""
    parser = argparse.ArgumentParser(
        prog="tether",
        description="Run jobs on tether backends and keep a handle on them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_debug(parser, default=False)
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, command: Command, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help,
            description=help[0].upper() + help[1:] + ".",
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        # SUPPRESS: a subcommand without --debug keeps a --debug given before it.
        _add_debug(sub, default=argparse.SUPPRESS)
        sub.set_defaults(func=command)
        return sub

    job_help = "job file (YAML or JSON); an optional 'backend:' mapping in it picks the backend"
    config_help = "backend config file (YAML or JSON, with a 'type'); overrides the job file's"

    sub = add("run", _commands.run, "submit a job and wait for it, showing its state")
    sub.add_argument("job", type=Path, metavar="JOB", help=job_help)
    sub.add_argument("--backend-config", type=Path, metavar="CFG", help=config_help)
    sub.add_argument("--handle", type=Path, metavar="H", help="also save the run's handle here")
    sub.add_argument(
        "--json", action="store_true", help="print the result as JSON (nothing else on stdout)"
    )

    sub = add("submit", _commands.submit, "submit a job, save its handle, print the run id")
    sub.add_argument("job", type=Path, metavar="JOB", help=job_help)
    sub.add_argument(
        "--handle", type=Path, metavar="H", required=True, help="file to save the handle to"
    )
    sub.add_argument("--backend-config", type=Path, metavar="CFG", help=config_help)

    sub = add("status", _commands.status, "print the current state of a saved run")
    sub.add_argument("handle", type=Path, metavar="HANDLE", help="saved handle file")
    sub.add_argument(
        "--json",
        action="store_true",
        help="print JSON: the result once ended, else run_id and state",
    )

    sub = add("wait", _commands.wait, "wait for a saved run to end and print its result")
    sub.add_argument("handle", type=Path, metavar="HANDLE", help="saved handle file")
    sub.add_argument(
        "--timeout",
        type=_seconds,
        metavar="S",
        help="give up after S seconds with exit status 3; the run keeps going",
    )
    sub.add_argument("--json", action="store_true", help="print the result as JSON")

    sub = add("cancel", _commands.cancel, "cancel a saved run and print its final state")
    sub.add_argument("handle", type=Path, metavar="HANDLE", help="saved handle file")

    sub = add("logs", _commands.logs, "print a saved run's output lines")
    sub.add_argument("handle", type=Path, metavar="HANDLE", help="saved handle file")
    sub.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new lines until the run ends"
    )
    sub.add_argument("--stderr", action="store_true", help="print stderr instead of stdout")
    return parser


async def _until_interrupted(command: Command, args: argparse.Namespace) -> int:
    """Run ``command``; on SIGINT cancel it (letting it clean up) and raise KeyboardInterrupt.

    Catching the signal ourselves, rather than letting KeyboardInterrupt fly
    anywhere, turns Ctrl-C into ordinary cancellation: ``tether run`` can then
    cancel its run in a shielded scope before the process exits.
    """
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
    try:
        return anyio.run(_until_interrupted, args.func, args)
    except BaseException as exc:
        return _report(exc, debug=args.debug)
