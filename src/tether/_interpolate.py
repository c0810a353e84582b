"""``${VAR}`` and ``${VAR:-default}`` references in config and job files.

Resolved from the environment when a file is loaded, i.e. at run time, so a
config file can be shared without the values it needs. ``$$`` writes a literal
``$``. A value under an environment mapping (``env_vars`` of a backend config,
``env`` of a job) that uses a reference becomes a secret (:class:`SecretStr`):
its resolved value reaches the run's environment but never a saved handle, a log
line or printed output.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from ._loading import Loc, quote

# $$ | ${NAME} | ${NAME:-default} | anything else starting with ${ (malformed)
_TOKEN = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")


class UnresolvedReference(ValueError):
    """A reference that cannot be resolved; carries the field path it was found at."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc = loc


def resolve_string(text: str, env: Mapping[str, str], loc: Loc = ()) -> tuple[str, bool]:
    """``text`` with its references replaced, and whether it had any."""
    used = False

    def replace(match: re.Match[str]) -> str:
        nonlocal used
        token = match.group(0)
        if token == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name is None:
            raise UnresolvedReference(
                loc,
                f"malformed reference in {quote(text)}: write ${{NAME}} or ${{NAME:-default}} "
                "(and $$ for a literal $)",
            )
        used = True
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise UnresolvedReference(
                    loc,
                    f"environment variable '{name}' is not set: export it, or give a "
                    f"default with ${{{name}:-value}}",
                )
            return default
        return value

    return _TOKEN.sub(replace, text), used


def resolve(
    data: Any,
    *,
    secret_maps: tuple[Loc, ...] = (),
    env: Mapping[str, str] | None = None,
    loc: Loc = (),
) -> Any:
    """A copy of ``data`` with references in every string value resolved.

    Keys are left alone. Strings that used a reference and sit directly under one
    of ``secret_maps`` (field paths of environment mappings) come back as SecretStr.
    """
    env = os.environ if env is None else env
    if isinstance(data, str):
        value, used = resolve_string(data, env, loc)
        if used and loc[:-1] in secret_maps:
            return SecretStr(value)
        return value
    if isinstance(data, dict):
        return {
            key: resolve(value, secret_maps=secret_maps, env=env, loc=(*loc, str(key)))
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [
            resolve(value, secret_maps=secret_maps, env=env, loc=(*loc, index))
            for index, value in enumerate(data)
        ]
    return data
