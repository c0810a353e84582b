"""The postprocessor contract: the no-op one, lookup by name, and run_postprocessor."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from tether import ConfigError, RunState
from tether.postprocess import (
    ArchivePostprocessor,
    NoopPostprocessor,
    Postprocessor,
    get_postprocessor,
    postprocessors,
    processor_name,
    run_postprocessor,
)
from tether.result import RunResult


@pytest.fixture
def result(tmp_path: Path) -> RunResult:
    return RunResult(run_id="r", state=RunState.SUCCEEDED, run_dir=tmp_path)


class Recording:
    """A sync postprocessor that notes the thread it ran in and what it was given."""

    def __init__(self) -> None:
        self.thread: int | None = None
        self.seen: tuple[RunResult, dict[str, Any]] | None = None

    def process(self, result: RunResult, **kwargs: Any) -> dict[str, Any]:
        self.thread = threading.get_ident()
        self.seen = (result, kwargs)
        return {"success": True, "message": "recorded"}


class Async:
    async def process(self, result: RunResult, **kwargs: Any) -> dict[str, Any]:
        return {"success": True, "message": f"async saw {result.run_id}", **kwargs}


class Raising:
    def process(self, result: RunResult, **kwargs: Any) -> dict[str, Any]:
        raise ValueError("disk on fire\nsecond line of the story")


class Returning:
    def __init__(self, value: object) -> None:
        self.value = value

    def process(self, result: RunResult, **kwargs: Any) -> object:
        return self.value


# -- the no-op postprocessor and lookup --------------------------------------------------


def test_noop_reports_exactly_success(result: RunResult) -> None:
    report = NoopPostprocessor().process(result, anything="ignored")
    assert report == {"success": True, "message": "No postprocessing requested"}


def test_builtins_are_found_through_entry_points() -> None:
    found = postprocessors()
    assert found["noop"] is NoopPostprocessor
    assert found["archive"] is ArchivePostprocessor


def test_get_postprocessor_by_name_gives_an_instance() -> None:
    assert isinstance(get_postprocessor("noop"), NoopPostprocessor)
    assert isinstance(get_postprocessor("archive"), ArchivePostprocessor)
    assert isinstance(get_postprocessor("noop"), Postprocessor)


def test_get_postprocessor_passes_objects_through() -> None:
    mine = Recording()
    assert get_postprocessor(mine) is mine


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        get_postprocessor("zipper")
    message = str(caught.value)
    assert "\n" not in message
    assert "'zipper'" in message and "archive" in message and "noop" in message


def test_an_object_without_process_is_refused() -> None:
    class Nothing:
        process = "not callable"

    for thing in (object(), Nothing()):
        with pytest.raises(ConfigError, match="is not a postprocessor"):
            get_postprocessor(thing)  # type: ignore[arg-type]


def test_processor_names() -> None:
    assert processor_name("archive") == "archive"
    assert processor_name(Recording()) == "Recording"


# -- run_postprocessor -------------------------------------------------------------------


@pytest.mark.anyio
async def test_sync_process_runs_in_a_worker_thread(result: RunResult) -> None:
    recording = Recording()
    report = await run_postprocessor(recording, result, {"level": 9, "dest": "x"})
    assert report == {"success": True, "message": "recorded", "processor": "Recording"}
    assert recording.thread is not None and recording.thread != threading.get_ident()
    assert recording.seen == (result, {"level": 9, "dest": "x"})


@pytest.mark.anyio
async def test_async_process_is_awaited(result: RunResult) -> None:
    report = await run_postprocessor(Async(), result, {"extra": 1})
    assert report == {
        "success": True,
        "message": "async saw r",
        "extra": 1,
        "processor": "Async",
    }


@pytest.mark.anyio
async def test_by_name_and_without_kwargs(result: RunResult) -> None:
    report = await run_postprocessor("noop", result)
    assert report == {
        "success": True,
        "message": "No postprocessing requested",
        "processor": "noop",
    }


@pytest.mark.anyio
async def test_an_exception_becomes_a_failed_report(result: RunResult) -> None:
    report = await run_postprocessor(Raising(), result)
    assert report["success"] is False and report["processor"] == "Raising"
    assert report["message"] == "postprocessor 'Raising' raised ValueError: disk on fire"


@pytest.mark.anyio
async def test_unknown_names_and_non_postprocessors_fail_without_raising(
    result: RunResult,
) -> None:
    unknown = await run_postprocessor("zipper", result)
    assert unknown["success"] is False and unknown["processor"] == "zipper"
    assert "ConfigError" in unknown["message"] and "noop" in unknown["message"]
    nothing = await run_postprocessor(object(), result)  # type: ignore[arg-type]
    assert nothing["success"] is False and "is not a postprocessor" in nothing["message"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "value",
    [None, "ok", ["success", True], {"message": "no verdict"}, {"success": "yes"}, {"success": 1}],
)
async def test_reports_without_a_boolean_success_fail(result: RunResult, value: object) -> None:
    report = await run_postprocessor(Returning(value), result)
    assert report["success"] is False and report["processor"] == "Returning"
    assert "'Returning' returned" in report["message"]
    assert "boolean 'success'" in report["message"]


@pytest.mark.anyio
@pytest.mark.parametrize(("success", "message"), [(True, "succeeded"), (False, "failed")])
async def test_a_missing_message_is_filled_in(
    result: RunResult, success: bool, message: str
) -> None:
    report = await run_postprocessor(Returning({"success": success, "n": 3}), result)
    assert report == {"success": success, "message": message, "n": 3, "processor": "Returning"}


@pytest.mark.anyio
async def test_kwargs_reach_the_archive_postprocessor(tmp_path: Path) -> None:
    (tmp_path / "out.txt").write_text("x")
    finished = RunResult(
        run_id="r", state=RunState.SUCCEEDED, run_dir=tmp_path, outputs=[tmp_path / "out.txt"]
    )
    report = await run_postprocessor("archive", finished, {"archive_format": "tar.gz"})
    assert report["success"] and report["processor"] == "archive"
    assert report["archive"] == str(tmp_path / "archive.tar.gz")
    refused = await run_postprocessor("archive", finished, {"archive_format": "rar"})
    assert refused == {
        "success": False,
        "message": "Unsupported archive_format 'rar': use 'zip' or 'tar.gz'",
        "processor": "archive",
    }


# -- classes and odd exception texts ---------------------------------------------------------------


@pytest.mark.anyio
async def test_a_postprocessor_class_works_like_an_instance(result: RunResult) -> None:
    report = await run_postprocessor(NoopPostprocessor, result)
    assert report == {
        "success": True,
        "message": "No postprocessing requested",
        "processor": "NoopPostprocessor",
    }


@pytest.mark.anyio
async def test_an_exception_text_starting_with_a_newline_keeps_its_reason(
    result: RunResult,
) -> None:
    class Blank:
        def process(self, result: RunResult, **kwargs: Any) -> dict[str, Any]:
            raise ValueError("\nthe real reason")

    report = await run_postprocessor(Blank(), result)
    assert report["message"] == "postprocessor 'Blank' raised ValueError: the real reason"
