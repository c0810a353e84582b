"""The ``tether`` argument parser: every command, option and the exit-status epilog."""

from __future__ import annotations

import argparse
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .._version import __version__

Command = Callable[[argparse.Namespace], Awaitable[int]]
SyncCommand = Callable[[argparse.Namespace], int]

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

EPILOG = """\
exit status:
  0    the run SUCCEEDED (run, wait), or the command did its job
       (run --detach, submit, cancel, logs, ls, backends; status while the run
       goes on or once it succeeded)
  1    the run ended in another state: FAILED, CANCELLED, TIMED_OUT or LOST
  2    usage, job file, backend config or handle file error (one line per
       problem on stderr; --debug shows the traceback)
  3    wait --timeout ran out; the run keeps going
  130  interrupted (Ctrl-C): `tether run` cancels its run first; `tether wait`
       and the other commands leave the run going
  141  the output pipe was closed (e.g. `tether logs H | head`)

Run folders go to $TETHER_HOME/runs (default ~/.local/state/tether/runs).
Config and job files may use ${VAR} and ${VAR:-default}, read from the environment.
"""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"{text!r} must be zero or more seconds")
    return value


_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``2h`` or ``7d`` (an argparse type)."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text.lower())
    if found is None:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (give seconds, or a number with s, m, h or d: 2h, 7d)"
        )
    return float(found.group(1)) * _UNITS[found.group(2)]


def _add_debug(parser: argparse.ArgumentParser, default: object) -> None:
    # Not shared through `parents=`: argparse shares the action objects, and so
    # their defaults, between a parent and its children.
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="show the traceback of an error instead of one line",
    )


class LazyCommand:
    """The command ``"module:function"`` of this package, imported only when it runs.

    Building the parser then imports none of the library: ``tether --help`` stays
    quick, and ``tether ls`` loads no backend it does not list. The function is an
    async :data:`Command`, or a plain one (:data:`SyncCommand`) that needs no event
    loop.
    """

    def __init__(self, target: str | Command | SyncCommand) -> None:
        self.target = target

    def load(self) -> Command | SyncCommand:
        """Import the command's module; return the function."""
        if not isinstance(self.target, str):
            return self.target  # given as a function: already imported
        module, _, name = self.target.partition(":")
        # __import__, not importlib.import_module: -X importtime then shows the cost.
        command: Command | SyncCommand = getattr(
            __import__(f"{__package__}.{module}", fromlist=[name]), name
        )
        return command

    def __repr__(self) -> str:
        return f"LazyCommand({self.target!r})"


def _add(
    commands: SubParsers,
    name: str,
    help: str,
    command: str | Command | SyncCommand | None = None,
) -> argparse.ArgumentParser:
    """Add the sub-command ``name``; naming ``command`` as ``"module:function"`` keeps its
    module (and what it imports) out of ``tether --help``."""
    sub: argparse.ArgumentParser = commands.add_parser(
        name,
        help=help,
        description=help[0].upper() + help[1:] + ".",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # SUPPRESS: a subcommand without --debug keeps a --debug given before it.
    _add_debug(sub, default=argparse.SUPPRESS)
    if command is not None:
        sub.set_defaults(func=LazyCommand(command))
    return sub


def _json(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--json", action="store_true", help=f"print {what} as JSON (nothing else on stdout)"
    )


def _cache_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache",
        action="store_true",
        help="reuse the recorded result of an identical earlier run (and record this one)",
    )
    parser.add_argument(
        "--cache-store",
        type=Path,
        metavar="DB",
        help="SQLite cache store to use (implies --cache; default $TETHER_CACHE_STORE, "
        "else ~/.cache/tether/cache.sqlite)",
    )
    parser.add_argument(
        "--refresh",
        action="store_true",
        help="run even if recorded, and replace the recorded result (implies --cache)",
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

    job_help = "job file (YAML or JSON); an optional 'backend:' mapping in it picks the backend"
    config_help = "backend config file (YAML or JSON, with a 'type'); overrides the job file's"
    handle_help = "saved handle file"

    sub = _add(commands, "run", "submit a job and wait for it, showing its state", "_commands:run")
    sub.add_argument("job", type=Path, metavar="JOB", help=job_help)
    sub.add_argument("--backend-config", type=Path, metavar="CFG", help=config_help)
    sub.add_argument(
        "--handle",
        type=Path,
        metavar="H",
        help="save the run's handle here (with --detach, default: handle.json in the run folder)",
    )
    sub.add_argument(
        "--detach",
        action="store_true",
        help="return once the run has started: print its id and handle file, leave it going",
    )
    _json(sub, "the result (with --detach: run id, state and handle file)")
    _cache_options(sub)

    sub = _add(
        commands,
        "submit",
        "submit a job, save its handle, print the run id (run --detach --handle H)",
        "_commands:submit",
    )
    sub.add_argument("job", type=Path, metavar="JOB", help=job_help)
    sub.add_argument(
        "--handle", type=Path, metavar="H", required=True, help="file to save the handle to"
    )
    sub.add_argument("--backend-config", type=Path, metavar="CFG", help=config_help)
    _cache_options(sub)

    sub = _add(commands, "status", "print the current state of a saved run", "_commands:status")
    sub.add_argument("handle", type=Path, metavar="HANDLE", help=handle_help)
    _json(sub, "the result once ended, else run_id and state,")

    sub = _add(
        commands, "wait", "wait for a saved run to end and print its result", "_commands:wait"
    )
    sub.add_argument("handle", type=Path, metavar="HANDLE", help=handle_help)
    sub.add_argument(
        "--timeout",
        type=_seconds,
        metavar="S",
        help="give up after S seconds with exit status 3; the run keeps going",
    )
    _json(sub, "the result")

    sub = _add(
        commands, "cancel", "cancel a saved run and print its final state", "_commands:cancel"
    )
    sub.add_argument("handle", type=Path, metavar="HANDLE", help=handle_help)
    _json(sub, "the final result")

    sub = _add(commands, "logs", "print a saved run's output lines", "_commands:logs")
    sub.add_argument("handle", type=Path, metavar="HANDLE", help=handle_help)
    sub.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new lines until the run ends"
    )
    sub.add_argument("--stderr", action="store_true", help="print stderr instead of stdout")
    sub.add_argument(
        "--json", action="store_true", help="print JSON Lines: {run_id, stream, line} per line"
    )

    sub = _add(commands, "ls", "list the runs in a runs folder, with state and age", "_ls:ls")
    sub.add_argument(
        "runs_dir",
        type=Path,
        nargs="?",
        metavar="RUNS_DIR",
        help="folder of run folders (default: $TETHER_HOME/runs)",
    )
    _json(sub, "the runs")

    backends = _add(commands, "backends", "list, create, validate and describe backend configs")
    verbs = backends.add_subparsers(dest="verb", required=True, metavar="VERB")
    type_help = "backend type (see `tether backends list`)"

    sub = _add(
        verbs,
        "list",
        "list every backend, what it can do and whether it works here",
        "_backends:list_",
    )
    sub.add_argument("--available", action="store_true", help="only the backends usable here")
    _json(sub, "the backends")

    sub = _add(
        verbs,
        "create",
        "print a commented config template that validates as written",
        "_backends:create",
    )
    sub.add_argument("--backend-type", required=True, metavar="T", help=type_help)
    sub.add_argument(
        "--with-examples", action="store_true", help="fill in example values, not only defaults"
    )
    sub.add_argument("--output", "-o", type=Path, metavar="F", help="write to F, not stdout")
    sub.add_argument("--force", action="store_true", help="overwrite an existing --output file")

    sub = _add(
        verbs, "validate", "check a backend config file; print every problem", "_backends:validate"
    )
    sub.add_argument("file", type=Path, metavar="FILE", help="backend config file (YAML or JSON)")
    sub.add_argument(
        "--backend-type",
        metavar="T",
        help="the type the file must have (used when the file has no 'type' field)",
    )
    sub.add_argument(
        "--processor-type",
        metavar="P",
        help="FILE holds the options of postprocessor P (rompy's verb), not a backend config",
    )
    _json(sub, "the outcome (secret values left out)")

    sub = _add(verbs, "schema", "print a backend config's JSON schema", "_backends:schema")
    sub.add_argument("--backend-type", required=True, metavar="T", help=type_help)
    sub.add_argument(
        "--format", choices=["json", "yaml"], default="json", help="output format (default json)"
    )

    cache = _add(commands, "cache", "see and trim the cache of recorded runs")
    verbs = cache.add_subparsers(dest="verb", required=True, metavar="VERB")

    def store_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--store",
            type=Path,
            metavar="PATH",
            help="SQLite file or store folder (default $TETHER_CACHE_STORE, else "
            "~/.cache/tether/cache.sqlite)",
        )

    sub = _add(verbs, "stats", "print how many entries and bytes the store holds", "_cache:stats")
    store_option(sub)
    _json(sub, "the figures")
    sub = _add(verbs, "ls", "list the entries, least recently used first", "_cache:ls")
    store_option(sub)
    _json(sub, "the entries")
    sub = _add(verbs, "show", "print one entry as JSON", "_cache:show")
    sub.add_argument("key", metavar="KEY", help="the entry's key, or a unique prefix of it")
    store_option(sub)
    sub = _add(verbs, "clear", "forget every entry and delete every blob", "_cache:clear")
    store_option(sub)
    sub = _add(
        verbs,
        "prune",
        "drop least recently used entries beyond --max-size; delete unused blobs",
        "_cache:prune",
    )
    sub.add_argument(
        "--max-size", metavar="SIZE", help="keep at most this much (e.g. 10G, 500m, bytes)"
    )
    store_option(sub)

    pipeline = _add(commands, "pipeline", "run pipelines of steps from YAML files, resumably")
    verbs = pipeline.add_subparsers(dest="verb", required=True, metavar="VERB")
    sub = _add(
        verbs,
        "run",
        "run a pipeline file; run it again after a crash to resume where it stopped",
        "_pipeline:run",
    )
    sub.add_argument("file", type=Path, metavar="FILE", help="pipeline file (YAML or JSON)")
    sub.add_argument(
        "--state",
        type=Path,
        metavar="S",
        help="state file (default: the file's 'state', else FILE's name with .state.jsonl)",
    )
    sub.add_argument(
        "--max-concurrency",
        type=int,
        metavar="N",
        help="most runs in flight at once (default: the file's, else 64)",
    )
    sub.add_argument(
        "--keep-going",
        action="store_true",
        help="after a failed step, run every step that does not depend on it",
    )
    sub.add_argument(
        "--fresh", action="store_true", help="forget the state file and run every step again"
    )
    _json(sub, "the full result")
    sub = _add(verbs, "status", "print what a pipeline state file records", "_pipeline:status")
    sub.add_argument("state", type=Path, metavar="STATE", help="pipeline state file")
    _json(sub, "the steps")
    sub = _add(verbs, "validate", "check a pipeline file and print its steps", "_pipeline:validate")
    sub.add_argument("file", type=Path, metavar="FILE", help="pipeline file (YAML or JSON)")

    docker = _add(commands, "docker", "manage the Docker backend's containers")
    verbs = docker.add_subparsers(dest="verb", required=True, metavar="VERB")
    sub = _add(
        verbs,
        "prune",
        "remove tether's ended containers whose results are recorded; list orphans",
        "_docker:prune",
    )
    sub.add_argument(
        "--docker-host",
        metavar="URL",
        help="engine address (default: $DOCKER_HOST, else unix:///var/run/docker.sock)",
    )
    sub.add_argument("--dry-run", action="store_true", help="show what would go; remove nothing")
    sub.add_argument(
        "--orphans",
        action="store_true",
        help="also remove ended containers whose run folder is gone (their results are lost)",
    )
    _json(sub, "the containers and what was done")

    dask = _add(commands, "dask", "manage the runs a Dask scheduler keeps")
    verbs = dask.add_subparsers(dest="verb", required=True, metavar="VERB")
    sub = _add(
        verbs,
        "prune",
        "release ended runs the scheduler keeps (as handle.forget() does); list running ones",
        "_dask:prune",
    )
    sub.add_argument(
        "address", nargs="?", metavar="ADDRESS", help="scheduler address (tcp://HOST:8786)"
    )
    sub.add_argument(
        "--backend-config",
        type=Path,
        metavar="CFG",
        help="dask backend config file (address, TLS files)",
    )
    sub.add_argument(
        "--older-than",
        type=_duration,
        metavar="AGE",
        help="only runs that ended at least this long ago (90s, 15m, 2h, 7d)",
    )
    sub.add_argument("--dry-run", action="store_true", help="show what would go; release nothing")
    _json(sub, "the runs and what was done")

    from . import _ui  # argparse wiring only; the dashboard is imported when it runs

    _ui.add_parser(commands, _add)
    return parser
