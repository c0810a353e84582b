"""``tether docker prune``: remove tether's finished containers, list the orphans."""

from __future__ import annotations

import argparse
import json
import sys

from ..backends.docker import DockerBackend
from ._render import table, write_lines

EXIT_OK = 0


async def prune(args: argparse.Namespace) -> int:
    """Remove containers whose results are recorded; list running ones and orphans."""
    entries = await DockerBackend.prune(
        args.docker_host, dry_run=args.dry_run, orphans=args.orphans
    )
    if args.json:
        write_lines(sys.stdout, [json.dumps([entry.to_json() for entry in entries], indent=2)])
        return EXIT_OK
    if not entries:
        write_lines(sys.stderr, ["tether: no tether containers on the engine"])
        return EXIT_OK
    rows = [["CONTAINER", "RUN ID", "STATUS", "ACTION"]]
    rows += [[e.container_id, e.run_id, e.status, e.action] for e in entries]
    write_lines(sys.stdout, table(rows))
    orphans = [e for e in entries if e.action == "orphan"]
    if orphans:
        write_lines(
            sys.stderr,
            [
                f"tether: {len(orphans)} orphan container(s): their run folders are gone, so "
                "their results cannot be recorded; remove them with --orphans"
            ],
        )
    return EXIT_OK
