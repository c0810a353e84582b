"""``tether dask prune``: release the ended runs a Dask scheduler still keeps."""

from __future__ import annotations

import argparse
import json
import sys

from ..backends.dask import DaskConfig
from ..errors import ConfigError
from ..registry import load_config
from ._render import table, write_lines

EXIT_OK = 0


def _config(args: argparse.Namespace) -> DaskConfig:
    if args.backend_config is not None:
        config = load_config(args.backend_config)
        if not isinstance(config, DaskConfig):
            raise ConfigError(
                f"'{args.backend_config}' is a {config.type!r} config, not a dask one: give "
                "a dask backend config, or the scheduler's address."
            )
        if args.address is None:
            return config
        return DaskConfig.model_validate({**config.model_dump(), "address": args.address})
    if args.address is None:
        raise ConfigError(
            "Which scheduler? Give its address (tether dask prune tcp://HOST:8786) or "
            "--backend-config FILE."
        )
    return DaskConfig(address=args.address)


async def prune(args: argparse.Namespace) -> int:
    """Release ended runs (older than --older-than); list the ones still going."""
    config = _config(args)
    entries = await config.create().prune(older_than=args.older_than, dry_run=args.dry_run)
    if args.json:
        write_lines(sys.stdout, [json.dumps([entry.to_json() for entry in entries], indent=2)])
        return EXIT_OK
    if not entries:
        write_lines(sys.stderr, [f"tether: no tether runs on the scheduler at {config.address}"])
        return EXIT_OK
    rows = [["RUN ID", "STATUS", "ENDED", "ACTION"]]
    for entry in entries:
        age = "-" if entry.age is None else f"{entry.age:.0f}s ago"
        rows.append([entry.run_id, entry.status, age, entry.action])
    write_lines(sys.stdout, table(rows))
    return EXIT_OK
