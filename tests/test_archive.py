"""ArchivePostprocessor: what goes into the archive, what stays out, and where it lands."""

from __future__ import annotations

import os
import re
import socket
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tether import Job, LocalConfig, RunState
from tether.postprocess import ArchivePostprocessor, get_postprocessor, run_postprocessor
from tether.result import RunResult

FORMATS = {"zip": ".zip", "tar.gz": ".tar.gz", "tgz": ".tar.gz"}


@pytest.fixture
def run(tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    return folder


def finished(run_dir: Path | None, outputs: Sequence[Path | str] = ()) -> RunResult:
    return RunResult(
        run_id="r", state=RunState.SUCCEEDED, run_dir=run_dir, outputs=[Path(p) for p in outputs]
    )


def archive(result: RunResult, **options: Any) -> dict[str, Any]:
    return ArchivePostprocessor().process(result, **options)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def contents(path: Path) -> dict[str, bytes]:
    """Member name → bytes, in archive order, checking every member is a plain file."""
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path) as packed:
            assert packed.testzip() is None
            return {info.filename: packed.read(info) for info in packed.infolist()}
    found: dict[str, bytes] = {}
    with tarfile.open(path, "r:gz") as packed:
        for info in packed.getmembers():
            assert info.isfile(), info.name
            extracted = packed.extractfile(info)
            assert extracted is not None
            found[info.name] = extracted.read()
    return found


def assert_safe(names: Sequence[str]) -> None:
    for name in names:
        assert name and not name.startswith("/"), name
        assert ".." not in name.split("/") and "\\" not in name, name
    assert list(names) == sorted(names)


def skipped_reasons(report: dict[str, Any]) -> dict[str, str]:
    return {entry["path"]: entry["reason"] for entry in report["skipped"]}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".zip", ".gz")))


# -- the ordinary cases ------------------------------------------------------------------


@pytest.mark.parametrize("archive_format", sorted(FORMATS))
def test_outputs_archived_at_the_default_destination(run: Path, archive_format: str) -> None:
    out = write(run / "out.txt", "hello\n")
    deep = write(run / "sub" / "deep.csv", "a,b\n")
    write(run / "not-an-output.txt", "ignored")
    report = archive(finished(run, [out, deep]), archive_format=archive_format)

    target = run / f"archive{FORMATS[archive_format]}"
    assert report["success"] is True, report
    assert report["archive"] == str(target) and Path(report["archive"]).is_absolute()
    assert report["archive_path"] == report["archive"]  # rompy's key
    assert report["files"] == ["out.txt", "sub/deep.csv"]
    assert report["skipped"] == []
    assert report["message"].startswith("Archived 2 files (")
    assert report["message"].endswith(f") to {target}")
    assert contents(target) == {"out.txt": b"hello\n", "sub/deep.csv": b"a,b\n"}
    assert leftovers(run) == [target.name]


def test_relative_outputs_are_taken_from_the_run_folder(run: Path) -> None:
    write(run / "a b.txt", "spaced")
    report = archive(finished(run, ["a b.txt", Path("a b.txt")]))
    assert report["files"] == ["a b.txt"]  # listed twice, archived once
    target = re.escape(str(run / "archive.zip"))
    assert re.fullmatch(rf"Archived 1 file \(\d+ B\) to {target}", report["message"])
    assert contents(run / "archive.zip") == {"a b.txt": b"spaced"}


def test_message_gives_a_readable_size(run: Path) -> None:
    out = write(run / "noise.bin", "")
    out.write_bytes(os.urandom(5000))  # incompressible: the archive passes 1 kB
    report = archive(finished(run, [out]))
    assert "kB) to " in report["message"]
    assert report["message"].startswith("Archived 1 file (")


@pytest.mark.parametrize("archive_format", ["zip", "tar.gz"])
def test_archives_are_deterministic(run: Path, tmp_path: Path, archive_format: str) -> None:
    files = [write(run / name, name * 50) for name in ("b.txt", "a.txt", "c/d.txt")]
    suffix = FORMATS[archive_format]
    first = archive(finished(run, files), archive_format=archive_format, destination="one" + suffix)
    second = archive(
        finished(run, files[::-1]), archive_format=archive_format, destination="two" + suffix
    )
    assert first["files"] == second["files"] == ["a.txt", "b.txt", "c/d.txt"]
    assert list(contents(run / f"one{suffix}")) == ["a.txt", "b.txt", "c/d.txt"]
    assert (run / f"one{suffix}").read_bytes() == (run / f"two{suffix}").read_bytes()


def test_modes_survive_and_owners_do_not(run: Path) -> None:
    tool = write(run / "tool.sh", "#!/bin/sh\n")
    tool.chmod(0o750)
    archive(finished(run, [tool]), archive_format="tar.gz")
    with tarfile.open(run / "archive.tar.gz") as packed:
        info = packed.getmember("tool.sh")
    assert (info.mode, info.uid, info.gid, info.uname, info.gname) == (0o750, 0, 0, "", "")
    archive(finished(run, [tool]))
    with zipfile.ZipFile(run / "archive.zip") as packed:
        assert packed.getinfo("tool.sh").external_attr >> 16 & 0o777 == 0o750


def test_an_existing_archive_is_replaced(run: Path) -> None:
    out = write(run / "out.txt", "new")
    write(run / "archive.zip", "an old archive")
    assert archive(finished(run, [out]))["success"]
    assert contents(run / "archive.zip") == {"out.txt": b"new"}


def test_archives_extract_safely_to_the_same_tree(run: Path, tmp_path: Path) -> None:
    files = [write(run / "x" / "y" / "z.txt", "z"), write(run / "top.txt", "t")]
    for archive_format, suffix in (("zip", ".zip"), ("tar.gz", ".tar.gz")):
        archive(finished(run, files), archive_format=archive_format)
        into = tmp_path / f"unpacked{suffix}"
        if suffix == ".zip":
            with zipfile.ZipFile(run / "archive.zip") as packed:
                packed.extractall(into)
        else:
            with tarfile.open(run / "archive.tar.gz") as packed:
                packed.extractall(into, filter="data")  # refuses anything unsafe
        assert (into / "x" / "y" / "z.txt").read_text() == "z"
        assert (into / "top.txt").read_text() == "t"


# -- hostile outputs ---------------------------------------------------------------------


def test_outputs_outside_the_run_folder_are_skipped(run: Path, tmp_path: Path) -> None:
    secret = write(tmp_path / "secret", "do not ship")
    inside = write(run / "ok.txt", "fine")
    hostile = [
        secret,
        run / ".." / "secret",
        Path("../secret"),
        Path("/etc/passwd"),
        Path("/"),
        run,
        run / "sub" / ".." / ".." / "secret",
    ]
    report = archive(finished(run, [*hostile, inside]))
    assert report["files"] == ["ok.txt"]
    reasons = skipped_reasons(report)
    assert set(reasons) == {str(p) for p in hostile}
    for path in (secret, run / ".." / "secret", Path("../secret"), Path("/etc/passwd")):
        assert reasons[str(path)] == "outside the run folder"
    assert contents(run / "archive.zip") == {"ok.txt": b"fine"}


def test_dotdot_inside_the_folder_is_folded_to_a_clean_name(run: Path) -> None:
    write(run / "a" / "b.txt", "b")
    (run / "c").mkdir()
    report = archive(finished(run, [run / "c" / ".." / "a" / "b.txt"]))
    assert report["files"] == ["a/b.txt"]
    assert_safe(report["files"])


def test_symlinks_are_archived_only_when_they_stay_inside(run: Path, tmp_path: Path) -> None:
    secret = write(tmp_path / "secret.txt", "outside")
    real = write(run / "data" / "real.txt", "inside")
    links = {
        "inner": "data/real.txt",  # inside: archived as real.txt's bytes
        "relative-out": "../secret.txt",
        "absolute-out": str(secret),
        "etc": "/etc",
        "passwd": "/etc/passwd",
        "dangling": "missing.txt",
        "loop-a": "loop-b",
        "loop-b": "loop-a",
        "self": "self",
        "to-folder": "data",
    }
    for name, target in links.items():
        (run / name).symlink_to(target)
    outputs = [run / name for name in links]
    report = archive(finished(run, [*outputs, real]), archive_format="tar.gz")

    assert report["files"] == ["data/real.txt", "inner"]
    assert contents(run / "archive.tar.gz") == {"data/real.txt": b"inside", "inner": b"inside"}
    reasons = {Path(path).name: why for path, why in skipped_reasons(report).items()}
    assert set(reasons) == set(links) - {"inner"}
    for name in ("relative-out", "absolute-out", "etc", "passwd"):
        assert "outside the run folder" in reasons[name], reasons[name]
    assert reasons["dangling"] == "a dangling symlink"
    assert reasons["loop-a"] == reasons["loop-b"] == reasons["self"] == "a symlink loop"
    assert reasons["to-folder"] == "a symlinked folder (not followed)"


def test_outputs_under_a_symlinked_folder_pointing_out_are_skipped(
    run: Path, tmp_path: Path
) -> None:
    write(tmp_path / "elsewhere" / "secret.txt", "outside")
    (run / "door").symlink_to(tmp_path / "elsewhere")
    report = archive(finished(run, [run / "door" / "secret.txt"]))
    assert report["files"] == [] and report["archive"] is None
    assert skipped_reasons(report) == {str(run / "door" / "secret.txt"): "outside the run folder"}
    assert leftovers(run) == []


def test_a_fifo_output_is_skipped_without_being_opened(run: Path) -> None:
    os.mkfifo(run / "pipe")
    out = write(run / "out.txt", "x")
    report = archive(finished(run, [run / "pipe", out]))  # opening the FIFO would hang
    assert report["files"] == ["out.txt"]
    assert skipped_reasons(report) == {str(run / "pipe"): "not a regular file (a FIFO)"}


def test_missing_outputs_and_folders_are_skipped(run: Path) -> None:
    (run / "folder").mkdir()
    report = archive(finished(run, [run / "gone.txt", run / "folder"]))
    assert report["success"] and report["archive"] is None
    assert skipped_reasons(report) == {
        str(run / "gone.txt"): "does not exist",
        str(run / "folder"): "a folder, not a file",
    }


def test_unusual_names(run: Path) -> None:
    names = ["with space.txt", "ünïcödé ✓.txt", "-dash", "..dots", "new\nline", "tab\there"]
    outputs = [write(run / "odd dir" / name, name) for name in names]
    slash = write(run / "back\\slash", "b")
    not_utf8 = run / os.fsdecode(b"latin-\xe9.txt")
    not_utf8.write_text("l")
    for archive_format in ("zip", "tar.gz"):
        report = archive(finished(run, [*outputs, slash, not_utf8]), archive_format=archive_format)
        expected = sorted(f"odd dir/{name}" for name in names)
        assert report["success"] and report["files"] == expected
        assert_safe(report["files"])
        stored = contents(Path(report["archive"]))
        assert stored == {f"odd dir/{name}": name.encode() for name in names}
        reasons = skipped_reasons(report)
        assert "backslash" in reasons[str(slash)]
        assert reasons[str(not_utf8)] == "its name is not valid UTF-8"


# -- the whole folder --------------------------------------------------------------------


def test_folder_source_takes_every_plain_file(run: Path, tmp_path: Path) -> None:
    write(run / "stdout", "log")
    write(run / "outputs" / "a.txt", "a")
    write(run / "outputs" / "deeper" / "b.txt", "b")
    write(run / ".hidden", "h")
    write(run / ".handle.json.abc123.tmp", "half-written")  # tether's temp files stay out
    write(run / "sub" / ".x.tmp", "half-written")
    write(run / "archive.zip", "the previous archive")  # replaced, not packed into itself
    report = archive(finished(run), source="folder")
    assert report["files"] == [".hidden", "outputs/a.txt", "outputs/deeper/b.txt", "stdout"]
    assert report["skipped"] == []
    assert list(contents(run / "archive.zip")) == report["files"]
    assert leftovers(run) == [".handle.json.abc123.tmp", "archive.zip"]  # no new temp file
    assert leftovers(run / "sub") == [".x.tmp"]


def test_folder_source_refuses_everything_hostile(run: Path, tmp_path: Path) -> None:
    write(tmp_path / "outside" / "secret.txt", "outside")
    write(run / "real" / "inner.txt", "inner")
    write(run / "keep.txt", "keep")
    (run / "door").symlink_to(tmp_path / "outside")  # a folder pointing out
    (run / "etc").symlink_to("/etc")
    (run / "mirror").symlink_to("real")  # a folder pointing in: still not entered
    (run / "leak").symlink_to(tmp_path / "outside" / "secret.txt")
    (run / "dangling").symlink_to(run / "nowhere")
    (run / "loop").symlink_to("loop")
    (run / "alias.txt").symlink_to("keep.txt")
    os.mkfifo(run / "pipe")
    sock_path = run / "sock"
    sock: socket.socket | None = None
    if len(os.fsencode(sock_path)) < 100:  # AF_UNIX paths are short
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(sock_path))
    try:
        for archive_format in ("zip", "tar.gz"):
            report = archive(
                finished(run),
                source="folder",
                archive_format=archive_format,
                destination=tmp_path / f"run.{archive_format}",
            )
            assert report["success"], report
            assert report["files"] == ["alias.txt", "keep.txt", "real/inner.txt"]
            assert contents(Path(report["archive"])) == {
                "alias.txt": b"keep",
                "keep.txt": b"keep",
                "real/inner.txt": b"inner",
            }
            reasons = {Path(p).name: why for p, why in skipped_reasons(report).items()}
            expected = {"door", "etc", "mirror", "leak", "dangling", "loop", "pipe"}
            assert set(reasons) == expected | ({"sock"} if sock else set())
            assert "outside the run folder" in reasons["door"]
            assert "outside the run folder" in reasons["etc"]
            assert "outside the run folder" in reasons["leak"]
            assert reasons["mirror"] == "a symlinked folder (not followed)"
            assert reasons["dangling"] == "a dangling symlink"
            assert reasons["loop"] == "a symlink loop"
            assert reasons["pipe"] == "not a regular file (a FIFO)"
            if sock:
                assert reasons["sock"] == "not a regular file (a socket)"
    finally:
        if sock:
            sock.close()


def test_an_empty_folder_has_nothing_to_archive(run: Path) -> None:
    report = archive(finished(run), source="folder")
    assert report == {
        "success": True,
        "message": "Nothing to archive: the run folder holds no files",
        "archive": None,
        "archive_path": None,
        "files": [],
        "skipped": [],
    }


# -- destinations ------------------------------------------------------------------------


def test_relative_destination_inside_the_run_folder(run: Path) -> None:
    out = write(run / "out.txt", "x")
    (run / "packed").mkdir()
    report = archive(finished(run, [out]), archive_format="tgz", destination="packed/r.tgz")
    assert report["archive"] == str(run / "packed" / "r.tgz")
    assert contents(run / "packed" / "r.tgz") == {"out.txt": b"x"}


def test_absolute_destination_anywhere(run: Path, tmp_path: Path) -> None:
    out = write(run / "out.txt", "x")
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    report = archive(finished(run, [out]), destination=shelf / "run.zip")
    assert report["archive"] == str(shelf / "run.zip")
    assert contents(shelf / "run.zip") == {"out.txt": b"x"}
    assert leftovers(run) == [] and leftovers(shelf) == ["run.zip"]


@pytest.mark.parametrize("destination", ["../x.zip", "sub/../../x.zip", "..", ".", "door/x.zip"])
def test_relative_destination_may_not_leave_the_run_folder(
    run: Path, tmp_path: Path, destination: str
) -> None:
    out = write(run / "out.txt", "x")
    (run / "sub").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (run / "door").symlink_to(tmp_path / "elsewhere")
    report = archive(finished(run, [out]), destination=destination)
    assert report["success"] is False
    assert "run folder" in report["message"] or "is a folder" in report["message"]
    assert leftovers(tmp_path) == [] and leftovers(run) == []
    assert leftovers(tmp_path / "elsewhere") == []


def test_missing_destination_folder_leaves_nothing_behind(run: Path, tmp_path: Path) -> None:
    out = write(run / "out.txt", "x")
    for destination in (tmp_path / "nope" / "x.zip", "nope/x.zip"):
        report = archive(finished(run, [out]), destination=destination)
        assert report["success"] is False
        assert "does not exist: create it" in report["message"]
    assert not (tmp_path / "nope").exists() and not (run / "nope").exists()
    assert leftovers(tmp_path) == [] and leftovers(run) == []


def test_destination_that_is_a_folder_is_refused(run: Path) -> None:
    out = write(run / "out.txt", "x")
    (run / "box").mkdir()
    report = archive(finished(run, [out]), destination="box")
    assert report["success"] is False and "is a folder" in report["message"]
    assert list((run / "box").iterdir()) == []


def test_unwritable_destination_reports_failure_and_leaves_nothing(run: Path) -> None:
    out = write(run / "out.txt", "x")
    # /proc takes no new files, even from root (tether needs Linux and /proc anyway).
    report = archive(finished(run, [out]), destination="/proc/run.zip")
    assert report["success"] is False
    assert report["message"].startswith("Could not write the archive '/proc/run.zip'")
    assert leftovers(run) == []


def test_an_output_that_is_the_destination_is_not_packed_into_itself(run: Path) -> None:
    out = write(run / "out.txt", "x")
    old = write(run / "archive.zip", "old")
    report = archive(finished(run, [out, old]))
    assert report["files"] == ["out.txt"]
    assert skipped_reasons(report) == {str(old): "it is the archive being written"}


# -- refusals ----------------------------------------------------------------------------


def test_unsupported_format(run: Path) -> None:
    report = archive(finished(run, [write(run / "a", "a")]), archive_format="rar")
    assert report == {
        "success": False,
        "message": "Unsupported archive_format 'rar': use 'zip' or 'tar.gz'",
    }
    assert leftovers(run) == []


def test_unknown_options_are_named(run: Path) -> None:
    report = archive(finished(run), fromat="zip", level=9)
    assert report["success"] is False
    message = report["message"]
    assert "'fromat'" in message and "'level'" in message
    assert all(option in message for option in ("archive_format", "source", "destination"))


def test_unsupported_source(run: Path) -> None:
    report = archive(finished(run), source="everything")
    assert report["success"] is False
    assert "'everything'" in report["message"] and "'folder'" in report["message"]


def test_a_run_without_a_folder(tmp_path: Path) -> None:
    report = archive(finished(None, [tmp_path / "x"]))
    assert report["success"] is False and "no folder to archive" in report["message"]
    gone = archive(finished(tmp_path / "gone"))
    assert gone["success"] is False and "does not exist" in gone["message"]


def test_nothing_to_archive(run: Path, tmp_path: Path) -> None:
    report = archive(finished(run))
    assert report == {
        "success": True,
        "message": "Nothing to archive: the run lists no outputs",
        "archive": None,
        "archive_path": None,
        "files": [],
        "skipped": [],
    }
    outside = archive(finished(run, [write(tmp_path / "s", "s")]), archive_format="tar.gz")
    assert outside["success"] and outside["archive"] is None
    assert outside["message"].startswith("Nothing to archive: ")
    assert outside["skipped"] == [{"path": str(tmp_path / "s"), "reason": "outside the run folder"}]
    assert list(run.iterdir()) == []


# -- through the registry and a real run -------------------------------------------------


@pytest.mark.anyio
async def test_archive_after_a_real_local_run(tmp_path: Path) -> None:
    backend = LocalConfig(runs_dir=tmp_path / "runs").create()
    job = Job(command=["sh", "-c", "echo hi > out.txt"], outputs=["out.txt"])
    handle = await backend.submit(job)
    result = await handle.wait()
    assert result.ok, result.error
    assert result.run_dir is not None and result.run_dir == handle.run_dir

    report = ArchivePostprocessor().process(result)
    assert report["success"], report
    assert report["files"] == ["out.txt"]  # the job worked in its run folder
    assert contents(result.run_dir / "archive.zip") == {"out.txt": b"hi\n"}

    assert isinstance(get_postprocessor("archive"), ArchivePostprocessor)
    through = await run_postprocessor(
        "archive", result, {"archive_format": "tar.gz", "source": "folder"}
    )
    assert through["success"] and through["processor"] == "archive"
    assert {"out.txt", "stdout", "archive.zip"} <= set(through["files"])
    assert_safe(through["files"])
