"""``WrapperConfig``: what the configs of the wrapping backends (cache, retry) share.

A wrapper runs nothing itself: its ``backend`` field holds the inner backend's
config (any backend's, told apart by its ``type``), which does the running. So the
settings of a run (``timeout``, ``env_vars``, ``working_dir``) belong inside
``backend`` and are refused on the wrapper; its record carries the inner config's
record; and its results, so its cache fields, are the inner backend's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Self

from pydantic import (
    Field,
    SecretStr,
    SerializeAsAny,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from .config import FROM_RECORD, BackendConfig

#: The inner config in the schema: any backend's config, told apart by its ``type``
#: (its own fields are checked by that backend's schema: tether backends schema T).
_INNER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"type": "string", "description": "The inner backend's type."}},
    "additionalProperties": True,
}

#: A wrapper's ``backend`` field: ``Annotated[SerializeAsAny[BackendConfig], INNER_SCHEMA]``
#: (spelled out in each wrapper, for the API reference).
INNER_SCHEMA = WithJsonSchema(_INNER_SCHEMA)

#: Settings of a run that a wrapper refuses (they go inside ``backend``).
_INSIDE = ("timeout", "env_vars", "working_dir")


class WrapperConfig(BackendConfig):
    """Settings of a backend that wraps another: ``backend`` is the inner one's config."""

    #: How error messages name this wrapper ("a cached backend").
    wrapper_name: ClassVar[str] = "wrapping backend"

    backend: Annotated[SerializeAsAny[BackendConfig], INNER_SCHEMA]
    timeout: int = Field(
        3600,
        ge=60,
        le=86400,
        description="Not used by the wrapper: set the timeout in 'backend'.",
        examples=[3600],
    )
    env_vars: dict[str, str | SecretStr] = Field(
        default_factory=dict,
        description="Not used by the wrapper: set environment variables in 'backend'.",
        examples=[{}],
    )
    working_dir: Path | None = Field(
        None,
        description="Not used by the wrapper: set working_dir in 'backend'.",
        examples=[None],
    )

    preference: ClassVar[int] = 900  # a wrapper: never recommended on its own

    @classmethod
    def _refused_inner(cls, inner: BackendConfig) -> str | None:
        """Why ``inner`` cannot be this wrapper's inner backend, or None (any can)."""
        return None

    @model_validator(mode="after")
    def _settings_belong_inside(self) -> Self:
        defaults = type(self).model_fields
        moved = [
            f
            for f in _INSIDE
            if f in self.model_fields_set
            and getattr(self, f) != defaults[f].get_default(call_default_factory=True)
        ]
        if moved:
            raise ValueError(
                f"{', '.join(moved)} of a {self.wrapper_name} go inside 'backend' (the wrapper "
                "runs nothing itself)"
            )
        return self

    @field_validator("backend", mode="before")
    @classmethod
    def _inner(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, BackendConfig):
            if not isinstance(value, dict) or "type" not in value:
                raise ValueError("backend must be a mapping with the inner backend's 'type'")
            from .registry import config_class

            inner = config_class(str(value["type"]))
            if (info.context or {}).get(FROM_RECORD):
                value = inner.from_record(value)
            else:
                value = inner.model_validate(value)
        refusal = cls._refused_inner(value)
        if refusal:
            raise ValueError(refusal)
        return value

    def to_record(self) -> dict[str, Any]:
        """The record, with the inner config's own record (no secret values)."""
        data = super().to_record()
        data["backend"] = self.backend.to_record()
        return data

    def cache_fields(self) -> dict[str, Any]:
        """A wrapper's results are its inner backend's (its own settings change none)."""
        return self.backend.cache_fields()
