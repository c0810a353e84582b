"""Saved records under random input: secrets never leak, garbage is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from tether import Job, RecordError
from tether.records import read_record

names = st.text(
    alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters="_"),
    min_size=1,
    max_size=12,
)
# Secret values carry a marker that names and plain values cannot contain.
values = st.text(max_size=30).map(lambda v: f"\u00a7secret\u00a7{v}")
plain_values = st.text(max_size=20).filter(lambda v: "\u00a7" not in v)


@given(
    plain=st.dictionaries(names, st.text(max_size=20), max_size=5),
    secret=st.dictionaries(names, values, min_size=1, max_size=5),
)
def test_job_records_never_hold_secret_values(
    plain: dict[str, str], secret: dict[str, str]
) -> None:
    env: dict[str, str | SecretStr] = {**plain, **{k: SecretStr(v) for k, v in secret.items()}}
    job = Job(name="prop", command="true", env=env)
    text = json.dumps(job.to_record())
    assert "secret\\u00a7" not in text and "secret\u00a7" not in text
    again = Job.from_record(json.loads(text))
    assert again.env == {k: v for k, v in env.items() if not isinstance(v, SecretStr)}
    assert again.command == job.command


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=200)
@given(data=st.binary(max_size=300))
def test_any_garbage_handle_file_is_a_record_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "h.json"
    path.write_bytes(data)
    with pytest.raises(RecordError):
        read_record(path)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=200)
@given(cut=st.integers(min_value=0, max_value=10_000))
def test_every_truncation_of_a_record_is_a_record_error(tmp_path: Path, cut: int) -> None:
    record = {
        "format": "tether.handle",
        "version": 1,
        "backend": "local",
        "run_id": "r",
        "job": {"name": "j"},
        "config": {"type": "local"},
        "data": {"pid": 1},
    }
    text = json.dumps(record)
    cut = cut % len(text)
    path = tmp_path / "h.json"
    path.write_text(text[:cut])
    with pytest.raises(RecordError):
        read_record(path)
