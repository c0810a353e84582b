"""CachedBackend under faults: full disks, folder modes, submitters killed mid-submit.

Trial loops are bounded; ``TETHER_TRIALS`` scales them (default 10).
"""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from tether import (
    CachedBackend,
    CacheStore,
    DirectoryStore,
    Job,
    LocalConfig,
    RunState,
    SQLiteStore,
)

from .services import small_tmpfs

pytestmark = pytest.mark.anyio

TRIALS = int(os.environ.get("TETHER_TRIALS", "10"))
STORES = ["sqlite", "directory"]


def open_store(kind: str, where: Path) -> CacheStore:
    if kind == "sqlite":
        return SQLiteStore(where / "cache.sqlite")
    return DirectoryStore(where / "store")


# -- full disks ---------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB file system (tmpfs), unmounted afterwards."""
    with small_tmpfs(tmp_path / "disk", "2m") as mount:
        yield mount


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last block; return the file that fills it."""
    filler = disk / "filler"
    subprocess.run(["sh", "-c", f"head -c 50000000 /dev/zero > {filler}"], check=False)
    return filler


def assert_disk_full_warning(record: list[warnings.WarningMessage], run_id: str) -> None:
    messages = [str(w.message) for w in record]
    assert any(
        f"could not record run {run_id}" in m and "no space left on device" in m for m in messages
    ), messages
    assert all("corrupt" not in m and "delete it" not in m for m in messages), messages


@pytest.mark.parametrize("kind", STORES)
async def test_blob_that_fills_the_disk_returns_the_result_with_a_warning(
    tmp_path: Path, small_disk: Path, kind: str
) -> None:
    store = open_store(kind, small_disk)
    backend = CachedBackend(LocalConfig(runs_dir=tmp_path / "runs").create(), store)
    job = Job(name="big", command="head -c 3000000 /dev/zero > big; echo done", outputs=["big"])
    handle = await backend.submit(job)
    with pytest.warns(RuntimeWarning) as record:
        result = await handle.wait(60)
    assert result.state is RunState.SUCCEEDED and result.ok
    assert await result.read_stdout() == "done\n"
    assert result.outputs[0].stat().st_size == 3000000  # the run's own file, untouched
    assert_disk_full_warning(record, handle.run_id)
    assert store.claims() == 0 and store.entries() == []
    assert not list(store.blobs.root.glob(".blob.*.tmp"))  # no half blob
    # Nothing stuck: the next submit runs the job (a miss), and is not kept waiting.
    with pytest.warns(RuntimeWarning):
        with anyio.fail_after(30):
            again = await (await backend.submit(job)).wait(30)
    assert again.ok and store.claims() == 0


@pytest.mark.parametrize("kind", STORES)
async def test_store_write_on_a_full_disk_returns_the_result_with_a_warning(
    tmp_path: Path, small_disk: Path, kind: str
) -> None:
    store = open_store(kind, small_disk)
    backend = CachedBackend(LocalConfig(runs_dir=tmp_path / "runs").create(), store)
    # Record "hi" once: the second job's files are blobs already, so only the entry
    # (big: many outputs with long names) needs room.
    assert (await (await backend.submit(Job(command="echo hi"))).wait(30)).ok
    names = [f"out-{i:03d}-" + "x" * 150 for i in range(300)]
    job = Job(name="many", command="echo hi; touch " + " ".join(names), outputs=names)
    handle = await backend.submit(job)
    filler = fill(small_disk)
    with pytest.warns(RuntimeWarning) as record:
        result = await handle.wait(60)
    assert result.state is RunState.SUCCEEDED and len(result.outputs) == 300
    assert_disk_full_warning(record, handle.run_id)
    assert store.claims() == 0
    assert [e.name for e in store.entries()] == ["job"]  # no partial entry
    filler.unlink()
    with anyio.fail_after(30):
        second = await backend.submit(job)
        assert not second.hit  # not cached, and not waiting on a leftover claim
        assert (await second.wait(30)).ok
    assert (await backend.submit(job)).hit  # recorded now that there is room


async def test_sqlite_store_on_a_full_disk_is_not_called_corrupt(
    tmp_path: Path, small_disk: Path
) -> None:
    fill(small_disk)
    store = SQLiteStore(small_disk / "new" / "cache.sqlite")
    backend = CachedBackend(LocalConfig(runs_dir=tmp_path / "runs").create(), store)
    with pytest.raises(OSError, match="no space left on device") as caught:
        await backend.submit(Job(command="echo hi"))
    assert "delete it" not in str(caught.value) and "corrupt" not in str(caught.value)


async def test_hit_that_cannot_be_restored_on_a_full_disk_runs_instead(
    tmp_path: Path, small_disk: Path
) -> None:
    store = SQLiteStore(tmp_path / "cache" / "cache.sqlite")
    inner = LocalConfig(runs_dir=tmp_path / "runs").create()
    job = Job(name="big", command="head -c 1500000 /dev/zero > big", outputs=["big"])
    assert (await (await CachedBackend(inner, store).submit(job)).wait(30)).ok
    fill(small_disk)
    hits = small_disk / "hits"  # another file system: restoring copies the blob
    backend = CachedBackend(inner, store, runs_dir=hits)
    handle = await backend.submit(job)  # a hit: its folder is made when first needed
    with pytest.warns(RuntimeWarning, match="could not restore .*no space left on device"):
        result = await handle.wait(30)
    assert not handle.hit  # it ran the job instead
    assert result.state is RunState.SUCCEEDED
    assert not hits.exists() or list(hits.iterdir()) == []  # no half-restored folder
    assert store.claims() == 0


# -- owner-only folders ---------------------------------------------------------------------


@pytest.fixture
def usual_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("usual_umask")
@pytest.mark.parametrize("kind", STORES)
async def test_cache_folders_and_their_new_parents_are_owner_only(
    tmp_path: Path, kind: str
) -> None:
    base = tmp_path / "a" / "b"
    store = open_store(kind, base)
    backend = CachedBackend(LocalConfig(runs_dir=tmp_path / "runs").create(), store)
    job = Job(command="mkdir -p r; echo x > r/x", outputs=["r/x"])
    handle = await backend.submit(job)
    folders = [tmp_path / "a", base]
    if kind == "directory":
        folders += [base / "store", base / "store" / "inflight"]
    assert (await handle.wait(30)).ok
    folders += [store.blobs.root, *store.blobs.root.glob("??")]
    if kind == "directory":
        folders += [base / "store" / "entries", *(base / "store" / "entries").glob("??")]
    modes = {str(f.relative_to(tmp_path)): oct(stat.S_IMODE(f.stat().st_mode)) for f in folders}
    assert set(modes.values()) == {"0o700"}, modes


# -- no run twice -------------------------------------------------------------------------

SUBMITTER = """
import asyncio, os, signal, sys
from pathlib import Path
from tether import CachedBackend, DirectoryStore, Job, LocalConfig, SQLiteStore

kind, base, counter, kill_at = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
store = SQLiteStore(base / "cache.sqlite") if kind == "sqlite" else DirectoryStore(base / "store")
if kill_at == "set-record":  # the inner run started; its claim does not name it yet
    type(store).set_record = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)

async def main():
    backend = CachedBackend(LocalConfig(runs_dir=base / "runs").create(), store)
    job = Job(name="k", command=["/bin/sh", "-c", f"echo ran >> {counter}; sleep 1"])
    print("ready", flush=True)
    await backend.submit(job)
    print("submitted", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def kill_then_submit(
    tmp_path: Path, kind: str, trial: int, kill_at: str, delay: float
) -> None:
    """One trial: a submitter killed at ``kill_at`` (or after ``delay``), then ours."""
    counter = tmp_path / f"count-{trial}"
    with subprocess.Popen(  # noqa: ASYNC220 (the submitter the trial kills)
        [sys.executable, "-c", SUBMITTER, kind, str(tmp_path), str(counter), kill_at],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        if kill_at == "set-record":
            proc.wait(30)
        else:
            time.sleep(delay)  # noqa: ASYNC251 (a kill point)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    await anyio.sleep(0.05)  # a supervisor at the gate sees its submitter's end
    store = open_store(kind, tmp_path)
    backend = CachedBackend(LocalConfig(runs_dir=tmp_path / "runs").create(), store)
    job = Job(name="k", command=["/bin/sh", "-c", f"echo ran >> {counter}; sleep 1"])
    with anyio.fail_after(60):
        result = await (await backend.submit(job)).wait(60)
    assert result.ok, result.error
    assert counter.read_text() == "ran\n", f"trial {trial} ran {counter.read_text().count('ran')}x"
    assert store.claims() == 0


def assert_every_run_has_a_record(runs: Path) -> None:
    folders = list(runs.iterdir()) if runs.exists() else []
    assert all((f / "handle.json").is_file() for f in folders), sorted(
        f.name for f in folders if not (f / "handle.json").is_file()
    )


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # subprocess-heavy: one loop is enough
@pytest.mark.parametrize("kind", STORES)
async def test_submitter_killed_before_its_claim_names_its_run_does_not_run_it_twice(
    tmp_path: Path, kind: str
) -> None:
    await kill_then_submit(tmp_path, kind, 0, "set-record", 0.0)
    assert len(list((tmp_path / "runs").iterdir())) == 1  # the orphan was adopted
    assert_every_run_has_a_record(tmp_path / "runs")


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("kind", STORES)
async def test_submitters_killed_at_random_points_never_run_a_job_twice(
    tmp_path: Path, kind: str
) -> None:
    for trial in range(TRIALS):
        delay = random.Random(trial).uniform(0, 0.05)
        await kill_then_submit(tmp_path, kind, trial, "random", delay)
    assert_every_run_has_a_record(tmp_path / "runs")
    assert open_store(kind, tmp_path).stats().entries == TRIALS
