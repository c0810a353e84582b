"""A griffe extension for the API reference: Sphinx roles in docstrings read as code.

tether's docstrings name other objects the Sphinx way (``:class:`~tether.call.Call```,
``:meth:`to_record```); mkdocstrings renders Markdown, where those would show as
raw text. This turns each into inline code of the name a reader knows (``Call``,
``to_record``), so the docstrings stay as they are for ``help()`` and IDEs.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

# :role:`target`, :role:`~pkg.mod.Name` and :role:`title <target>`.
ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|exc|data|mod|obj|const):`([^`]+)`")


def _name(match: re.Match[str]) -> str:
    target = match.group(1).strip()
    if target.endswith(">") and "<" in target:  # `title <target>`
        return f"`{target.split('<', 1)[0].strip()}`"
    target = target.lstrip("!")
    if target.startswith("~"):
        target = target[1:].rsplit(".", 1)[-1]
    return f"`{target}`"


def plain(text: str) -> str:
    """``text`` with every Sphinx role written as inline code."""
    return ROLE.sub(_name, text)


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain(obj.docstring.value)
