"""Hostile handle, job and config files give one RecordError/ConfigError, never a traceback."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

import tether
from tether._files import MAX_FILE_SIZE, make_private_dir
from tether.errors import TetherError
from tether.postprocess.archive import ArchivePostprocessor

pytestmark = pytest.mark.filterwarnings("error")


def _record() -> dict[str, object]:
    return {
        "format": "tether.handle",
        "version": 1,
        "backend": "dummy",
        "run_id": "r1",
        "job": {"name": "j", "command": ["true"]},
        "config": {"type": "dummy"},
        "data": {},
    }


@pytest.mark.parametrize(
    "text",
    [
        "[" * 200_000,
        json.dumps({**_record(), "job": "x"}),
        json.dumps({**_record(), "job": None}),
        json.dumps({**_record(), "config": []}),
        json.dumps({**_record(), "data": 3}),
        json.dumps({**_record(), "run_id": 7}),
        json.dumps({**_record(), "backend": ["dummy"]}),
    ],
    ids=["deep", "job-str", "job-null", "config-list", "data-int", "runid-int", "backend-list"],
)
@pytest.mark.asyncio
async def test_crafted_handle_is_a_record_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "h.json"
    path.write_text(text)
    with pytest.raises(tether.RecordError):
        await tether.load_handle(path)


@pytest.mark.asyncio
async def test_oversized_handle_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    with path.open("wb") as handle:  # sparse: fast to make
        handle.truncate(MAX_FILE_SIZE + 1)
    with pytest.raises(tether.RecordError, match="limit"):
        await tether.load_handle(path)


def test_oversized_config_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with path.open("wb") as handle:
        handle.truncate(MAX_FILE_SIZE + 1)
    with pytest.raises(TetherError, match="limit"):
        tether.load_config(path)


@pytest.mark.parametrize("glob", ["/etc/host*", "../x", "a/../../b"])
def test_escaping_output_glob_is_refused(glob: str) -> None:
    with pytest.raises(ValidationError, match="outputs"):
        tether.Job(name="j", command=["true"], outputs=[glob])


def test_archive_refuses_symlinked_run_folder(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "f.txt").write_text("keep")
    link = tmp_path / "runs" / "r1"
    link.parent.mkdir()
    link.symlink_to(mine)
    result = tether.RunResult(run_id="r1", state=tether.RunState.SUCCEEDED, run_dir=link)
    report = ArchivePostprocessor().process(result, source="folder")
    assert report["success"] is False
    assert "symlink" in str(report)
    assert sorted(p.name for p in mine.iterdir()) == ["f.txt"]


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_private_dirs_are_owner_only(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        made = make_private_dir(tmp_path / "a" / "b")
    finally:
        os.umask(old)
    for folder in (made, made.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
