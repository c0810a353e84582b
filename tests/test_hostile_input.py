"""Hostile handle, job and config files give one RecordError/ConfigError, never a traceback."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

import tether
import tether.records
from tether import RunState
from tether._files import MAX_FILE_SIZE, make_private_dir
from tether.backends.dummy import DummyConfig
from tether.errors import TetherError
from tether.pipelines.journal import Journal
from tether.postprocess.archive import ArchivePostprocessor
from tether.records import read_record
from tether.registry import handle_from_record

from .cli_support import CLI, one_error_line

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


# -- files that grow past the limit after their size was looked at ----------------------


@pytest.mark.asyncio
async def test_handle_read_stops_at_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.json"
    with path.open("wb") as handle:
        handle.truncate(MAX_FILE_SIZE + 1)
    # As if it grew after the size check (or were a device such as /dev/zero).
    monkeypatch.setattr(tether.records, "oversize", lambda path, what: None)
    with pytest.raises(tether.RecordError, match="limit"):
        await tether.load_handle(path)


def test_config_read_stops_at_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tether._loading

    path = tmp_path / "big.yaml"
    with path.open("wb") as handle:
        handle.truncate(MAX_FILE_SIZE + 1)
    monkeypatch.setattr(tether._loading, "oversize", lambda path, what: None)
    with pytest.raises(tether.ConfigError, match="limit"):
        tether.load_config(path)


# -- the CLI: one line on stderr, exit 2 --------------------------------------------------

HANDLES = {
    "deep": ("[" * 200_000, "nested too deeply"),
    "job-str": (json.dumps({**_record(), "job": "x"}), "'job' must be a dict"),
    "job-null": (json.dumps({**_record(), "job": None}), "'job' must be a dict"),
    "config-list": (json.dumps({**_record(), "config": []}), "'config' must be a dict"),
    "oversize": (None, "limit"),
}


def _hostile_file(cli: CLI, name: str, text: str | None, suffix: str = ".json") -> Path:
    path = cli.tmp / f"{name}{suffix}"
    if text is None:
        with path.open("wb") as handle:  # sparse: instant
            handle.truncate(MAX_FILE_SIZE + 1)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("verb", ["status", "cancel", "wait", "logs"])
@pytest.mark.parametrize("name", sorted(HANDLES))
def test_cli_refuses_a_crafted_handle_in_one_line(cli: CLI, name: str, verb: str) -> None:
    text, why = HANDLES[name]
    path = _hostile_file(cli, name, text)
    line = one_error_line(cli(verb, path))
    assert str(path) in line and why in line


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
@pytest.mark.parametrize(
    "args",
    [
        ("status", "/dev/zero"),
        ("cancel", "/dev/zero"),
        ("run", "/dev/zero"),
        ("run", "--backend-config", "/dev/zero", "job.yaml"),
    ],
    ids=["status", "cancel", "run-job", "run-backend-config"],
)
def test_cli_refuses_an_endless_file_in_one_line(cli: CLI, args: tuple[str, ...]) -> None:
    cli.write("job.yaml", "name: j\ncommand: ['true']\n")
    line = one_error_line(cli(*args))
    assert "/dev/zero" in line and "limit" in line
    assert cli.run_dirs() == []


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("abs.yaml", "name: j\ncommand: ['true']\noutputs: ['/etc/host*']\n"),
        ("up.json", json.dumps({"name": "j", "command": ["true"], "outputs": ["../x"]})),
        ("deep-up.yaml", "name: j\ncommand: ['true']\noutputs: ['a/../../b']\n"),
    ],
)
def test_cli_run_refuses_an_escaping_output_glob(cli: CLI, name: str, text: str) -> None:
    line = one_error_line(cli("run", cli.write(name, text)))
    assert "outputs" in line and "output glob" in line
    assert cli.run_dirs() == []  # refused before anything ran


@pytest.mark.parametrize("option", ["job", "--backend-config"])
def test_cli_run_refuses_an_oversized_file(cli: CLI, option: str) -> None:
    big = _hostile_file(cli, "big", None, ".yaml")
    job = cli.write("job.yaml", "name: j\ncommand: ['true']\n")
    args = ("run", big) if option == "job" else ("run", "--backend-config", big, job)
    line = one_error_line(cli(*args))
    assert str(big) in line and "limit" in line
    assert cli.run_dirs() == []


# -- the archive postprocessor stays in its runs folder ----------------------------------


def _elsewhere(tmp_path: Path) -> Path:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "secret.txt").write_text("keep")
    return folder


def _untouched(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == ["secret.txt"]
    assert (folder / "secret.txt").read_text() == "keep"


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlinked-parent", "runs-itself"])
@pytest.mark.parametrize("where", ["constructor", "option"])
def test_archive_refuses_a_run_folder_outside_its_runs_folder(
    tmp_path: Path, how: str, where: str
) -> None:
    elsewhere = _elsewhere(tmp_path)
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "link").symlink_to(tmp_path)
    named = {
        "absolute": elsewhere,
        "dotdot": runs / ".." / "elsewhere",
        "symlinked-parent": runs / "link" / "elsewhere",
        "runs-itself": runs,
    }[how]
    result = tether.RunResult(run_id="r1", state=tether.RunState.SUCCEEDED, run_dir=named)
    if where == "constructor":
        report = ArchivePostprocessor(runs_dir=runs).process(result, source="folder")
    else:
        report = ArchivePostprocessor().process(result, source="folder", runs_dir=runs)
    assert report["success"] is False
    assert "not inside the runs folder" in report["message"]
    _untouched(elsewhere)
    assert sorted(p.name for p in runs.iterdir()) == ["link"]


@pytest.mark.asyncio
async def test_archive_refuses_the_folder_a_crafted_handle_names(tmp_path: Path) -> None:
    elsewhere = _elsewhere(tmp_path)
    config = DummyConfig(runs_dir=tmp_path / "runs")
    handle = await config.create().submit(tether.Job(name="j", command=["true"]))
    result = await handle.wait()
    saved = await handle.save(tmp_path / "h.json")
    record = json.loads(saved.read_text())
    record["data"]["run_dir"] = str(elsewhere)
    saved.write_text(json.dumps(record))

    # Rebuilt without refresh(): the dummy backend's refresh writes into the folder
    # its record names, which is the backend's to fix, not the archiver's.
    crafted = handle_from_record(read_record(saved), source=saved)
    assert crafted.run_dir == elsewhere
    archiver = ArchivePostprocessor(runs_dir=config.runs_dir)
    forged = result.model_copy(update={"run_dir": crafted.run_dir})
    report = archiver.process(forged, source="folder")
    assert report["success"] is False and "not inside the runs folder" in report["message"]
    _untouched(elsewhere)
    # The real run, inside the runs folder, is archived as before.
    assert archiver.process(result, source="folder")["success"] is True


@pytest.mark.asyncio
async def test_crafted_dummy_record_writes_nothing_into_the_folder_it_names(
    tmp_path: Path,
) -> None:
    """A dummy handle whose run folder is someone else's is LOST; the folder is untouched."""
    elsewhere = _elsewhere(tmp_path)
    config = DummyConfig(runs_dir=tmp_path / "runs", outputs={"result.txt": "42\n"})
    handle = await config.create().submit(tether.Job(name="j", command=["true"]))
    saved = await handle.save(tmp_path / "h.json")
    record = json.loads(saved.read_text())
    record["data"]["run_dir"] = str(elsewhere)
    saved.write_text(json.dumps(record))
    crafted = await tether.load_handle(saved)
    result = await crafted.wait()
    assert result.state is RunState.LOST and "not touching it" in (result.error or "")
    await crafted.cancel()
    _untouched(elsewhere)
    assert (await handle.wait()).state is RunState.SUCCEEDED  # the real run is unaffected


def test_archive_refuses_a_missing_runs_folder(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    result = tether.RunResult(run_id="r1", state=tether.RunState.SUCCEEDED, run_dir=run)
    report = ArchivePostprocessor(runs_dir=tmp_path / "nope").process(result)
    assert report["success"] is False and "does not exist" in report["message"]


# -- folders tether creates are owner-only ------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_pipeline_state_folders_are_owner_only(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    os.chmod(mine, 0o755)
    old = os.umask(0o022)
    try:
        journal = Journal(mine / "a" / "b" / "state.jsonl", "p")
        journal.open()
        journal.close()
    finally:
        os.umask(old)
    assert _mode(mine / "a") == _mode(mine / "a" / "b") == 0o700
    assert _mode(mine) == 0o755  # the user's own folder is left as it was


@pytest.mark.asyncio
async def test_state_home_and_runs_folder_are_owner_only(tether_home: Path) -> None:
    assert not tether_home.exists()
    old = os.umask(0o022)
    try:
        handle = await DummyConfig().create().submit(tether.Job(name="j", command=["true"]))
        await handle.wait()
    finally:
        os.umask(old)
    assert _mode(tether_home) == _mode(tether_home / "runs") == 0o700
    assert handle.run_dir is not None and _mode(handle.run_dir) == 0o700


def test_supervisor_binary_folder_is_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder holding the supervisor binary (what runs every job) is owner-only, so
    nobody else can swap the binary."""
    from tether._supervisor import native_supervisor

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    old = os.umask(0o022)
    try:
        (binary,) = native_supervisor()
    finally:
        os.umask(old)
    assert Path(binary).is_file()
    assert _mode(tmp_path / "cache") == _mode(tmp_path / "cache" / "tether") == 0o700
    assert _mode(Path(binary).parent) == 0o700
