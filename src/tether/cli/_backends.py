"""``tether backends list|create|validate|schema``: rompy's backend verbs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .._files import write_atomic
from .._loading import read_mapping
from .._template import config_template, dump_yaml
from ..discovery import list_backends
from ..errors import ConfigError
from ..postprocess.base import check_options
from ..registry import config_class, load_config
from ._render import table, write_lines

EXIT_OK = 0
EXIT_INVALID = 2  # as for every config error


async def list_(args: argparse.Namespace) -> int:
    """Every backend with its capabilities and whether it is usable here."""
    infos = list_backends(available_only=args.available, check=True)
    if args.json:
        write_lines(sys.stdout, [json.dumps([info.to_json() for info in infos], indent=2)])
        return EXIT_OK
    rows = [["NAME", "USABLE", "CAPABILITIES", "SOURCE / REASON"]]
    for info in infos:
        rows.append(
            [
                info.name,
                "yes" if info.usable else "no",
                ",".join(sorted(info.capabilities)) or "-",
                info.reason or info.source,
            ]
        )
    write_lines(sys.stdout, table(rows))
    return EXIT_OK


async def create(args: argparse.Namespace) -> int:
    """A commented template config that validates as written."""
    cls = config_class(args.backend_type)
    text = config_template(cls, args.backend_type, with_examples=args.with_examples)
    if args.output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return EXIT_OK
    if args.output.exists() and not args.force:
        raise ConfigError(f"'{args.output}' already exists: choose another --output or add --force")
    write_atomic(args.output, text.encode(), mode=0o644)
    write_lines(sys.stderr, [f"tether: wrote {args.backend_type} config template to {args.output}"])
    return EXIT_OK


def _invalid(args: argparse.Namespace, exc: ConfigError) -> int:
    """Report an invalid file: one line per problem, or a JSON report with ``--json``."""
    if not args.json:
        raise exc
    report = {"file": str(args.file), "valid": False, "errors": str(exc).splitlines()}
    write_lines(sys.stdout, [json.dumps(report, indent=2)])
    return EXIT_INVALID


def _processor_options(path: Path, processor: str) -> dict[str, Any]:
    """A postprocessor config file (rompy's ``--processor-type``): its options, checked."""
    data, _ = read_mapping(path, "Postprocessor config")
    kind = data.pop("type", processor)
    if kind != processor:
        raise ConfigError(
            f"{path}: type {kind!r} does not match --processor-type {processor!r}: fix one of them"
        )
    try:
        check_options(processor, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return data


async def validate(args: argparse.Namespace) -> int:
    """Load the file as ``load_config`` would; report it valid or every problem.

    With ``--processor-type`` the file holds a postprocessor's options instead.
    """
    if args.processor_type is not None:
        if args.backend_type is not None:
            raise ConfigError("give --backend-type or --processor-type, not both")
        try:
            options = _processor_options(args.file, args.processor_type)
        except ConfigError as exc:
            return _invalid(args, exc)
        if args.json:
            report = {"file": str(args.file), "valid": True, "processor": args.processor_type}
            write_lines(sys.stdout, [json.dumps({**report, "options": options}, indent=2)])
        else:
            write_lines(
                sys.stdout, [f"{args.file}: valid {args.processor_type} postprocessor config"]
            )
        return EXIT_OK
    try:
        config = load_config(args.file, backend_type=args.backend_type)
    except ConfigError as exc:
        return _invalid(args, exc)
    if args.json:
        # to_record: secret values (resolved ${VAR}s under env_vars) are left out.
        report = {"file": str(args.file), "valid": True, "config": config.to_record()}
        write_lines(sys.stdout, [json.dumps(report, indent=2)])
    else:
        write_lines(sys.stdout, [f"{args.file}: valid {config.type} config"])
    return EXIT_OK


async def schema(args: argparse.Namespace) -> int:
    """The JSON schema of a backend's config (field types, rules, descriptions, examples)."""
    document = config_class(args.backend_type).model_json_schema()
    text = dump_yaml(document) if args.format == "yaml" else json.dumps(document, indent=2)
    write_lines(sys.stdout, [text.rstrip("\n")])
    return EXIT_OK
