"""CachedBackend behaviour with real Local and Dummy backends, over both stores."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

import tether
import tether.cache.store as store_module
from tether import (
    BackendConfig,
    CachedBackend,
    CachedConfig,
    CachedRunHandle,
    ConfigError,
    DirectoryStore,
    DummyConfig,
    Job,
    LocalConfig,
    Resources,
    RunResult,
    RunState,
    SQLiteStore,
    SubmitError,
    load_config,
)
from tether.cache import CacheEntry, CacheStore, StoredFile, store_from_spec

from .conftest import run_python

pytestmark = pytest.mark.anyio

LOAD_AND_WAIT = """
import json, sys, anyio, tether
async def main():
    handle = await tether.load_handle(sys.argv[1])
    first = handle.state.value
    result = await handle.wait(60)
    print(json.dumps({"type": type(handle).__name__, "hit": handle.hit, "first": first,
                      "run_id": handle.run_id, "state": result.state.value,
                      "stdout": await result.read_stdout()}))
anyio.run(main)
"""


@pytest.fixture(params=["sqlite", "directory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> CacheStore:
    """Each store kind, in the test's own folder."""
    if request.param == "sqlite":
        return SQLiteStore(tmp_path / "cache" / "cache.sqlite")
    return DirectoryStore(tmp_path / "cache")


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """Where the inner backends put run folders (hits go there too)."""
    return tmp_path / "runs"


def cached(config: BackendConfig, store: CacheStore, **options: Any) -> CachedBackend:
    return CachedBackend(config.create(), store, **options)


def counted(tmp_path: Path, command: str) -> str:
    """``command``, which also leaves a line in a file each time it really runs."""
    return f"echo ran >> {tmp_path / 'ran.log'}; {command}"


def times_run(tmp_path: Path) -> int:
    log = tmp_path / "ran.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def blob_of(store: CacheStore, key: str, path: str) -> Path:
    """The blob that holds ``path`` (relative to the run folder) of the entry for ``key``."""
    entry = store.get(key, touch=False)
    assert entry is not None
    [stored] = [f for f in entry.files if f.path == path]
    return store.blobs.path(stored.digest)


def relative_files(result: RunResult, run_dir: Path | None) -> dict[str, str]:
    """The result's files, relative to its run folder, with their text."""
    assert run_dir is not None
    paths = [p for p in (result.stdout, result.stderr, *result.outputs) if p is not None]
    return {p.relative_to(run_dir).as_posix(): p.read_text() for p in paths}


# -- hits -----------------------------------------------------------------------------


async def test_hit_restores_the_recorded_result_into_a_new_run_folder(
    tmp_path: Path, runs: Path, store: CacheStore
) -> None:
    data = tmp_path / "in.txt"
    data.write_text("42\n")
    backend = cached(LocalConfig(runs_dir=runs), store)
    job = Job(
        name="io",
        command=counted(
            tmp_path, "cat in.txt; echo warn >&2; mkdir -p res; cp in.txt res/a.txt; exit 0"
        ),
        inputs=[data],
        outputs=["res/*.txt"],
    )
    miss = await backend.submit(job)
    assert isinstance(miss, CachedRunHandle) and not miss.hit and miss.inner is not None
    recorded = await miss.wait()
    assert recorded.ok, recorded.error

    hit = await backend.submit(job)
    assert hit.hit and hit.inner is None
    assert hit.state is RunState.SUCCEEDED and hit.last_result is not None  # before any wait
    restored = await hit.wait()
    assert times_run(tmp_path) == 1
    assert hit.run_id != miss.run_id and restored.run_id == hit.run_id
    assert hit.run_dir is not None and hit.run_dir != miss.run_dir and hit.run_dir.parent == runs
    assert relative_files(restored, hit.run_dir) == relative_files(recorded, miss.run_dir)
    assert relative_files(restored, hit.run_dir) == {
        "stdout": "42\n",
        "stderr": "warn\n",
        "res/a.txt": "42\n",
    }
    same = {"state", "exit_code", "started_at", "ended_at", "error", "value"}
    assert restored.model_dump(include=same) == recorded.model_dump(include=same)


async def test_restored_files_are_hard_links_to_the_blobs(runs: Path, store: CacheStore) -> None:
    config = DummyConfig(runs_dir=runs, stdout="out\n", stderr="err\n", outputs={"r/a.txt": "A"})
    backend = cached(config, store)
    recorded = await (await backend.submit(Job(outputs=["r/*"]))).wait()
    hit = await backend.submit(Job(outputs=["r/*"]))
    restored = await hit.wait()
    assert hit.hit and hit.run_dir is not None
    assert relative_files(restored, hit.run_dir) == {
        "stdout": "out\n",
        "stderr": "err\n",
        "r/a.txt": "A",
    }
    for name in ("stdout", "stderr", "r/a.txt"):
        file = hit.run_dir / name
        assert file.stat().st_ino == blob_of(store, hit.key, name).stat().st_ino, name
        assert file.stat().st_nlink >= 2
    assert recorded.outputs[0].stat().st_ino != restored.outputs[0].stat().st_ino


async def test_renamed_job_is_a_hit_with_its_own_run_id(runs: Path, store: CacheStore) -> None:
    backend = cached(DummyConfig(runs_dir=runs, stdout="same\n"), store)
    await (await backend.submit(Job(name="first"))).wait()
    hit = await backend.submit(Job(name="second"))
    assert hit.hit and hit.run_id.startswith("second-") and hit.job.name == "second"
    assert await (await hit.wait()).read_stdout() == "same\n"


async def test_hit_cancel_does_nothing(runs: Path, store: CacheStore) -> None:
    backend = cached(DummyConfig(runs_dir=runs, stdout="kept\n"), store)
    await (await backend.submit(Job())).wait()
    hit = await backend.submit(Job())
    before = await hit.wait()
    await hit.cancel()
    await hit.cancel()
    assert hit.state is RunState.SUCCEEDED
    assert await hit.refresh() is RunState.SUCCEEDED
    assert await hit.wait() == before and await hit.result() == before
    assert await before.read_stdout() == "kept\n"
    assert store.get(hit.key, touch=False) is not None


async def test_hit_logs_are_the_restored_lines(runs: Path, store: CacheStore) -> None:
    backend = cached(DummyConfig(runs_dir=runs, stdout="a\nb\n", stderr="oops\n"), store)
    await (await backend.submit(Job())).wait()
    hit = await backend.submit(Job())
    assert hit.hit
    assert [line async for line in hit.logs()] == ["a", "b"]
    assert [line async for line in hit.logs("stderr", follow=True)] == ["oops"]


async def test_hit_runs_dir_option_places_hit_folders(
    tmp_path: Path, runs: Path, store: CacheStore
) -> None:
    backend = cached(DummyConfig(runs_dir=runs), store, runs_dir=tmp_path / "hits")
    miss = await backend.submit(Job())
    await miss.wait()
    hit = await backend.submit(Job())
    assert miss.run_dir is not None and miss.run_dir.parent == runs
    assert hit.hit and hit.run_dir is not None and hit.run_dir.parent == tmp_path / "hits"


# -- saving and loading, across processes ----------------------------------------------------


async def test_hit_handle_reloads_in_a_fresh_process(
    tmp_path: Path, runs: Path, store: CacheStore
) -> None:
    backend = cached(DummyConfig(runs_dir=runs, stdout="from the cache\n"), store)
    await (await backend.submit(Job())).wait()
    hit = await backend.submit(Job())
    path = await hit.save(tmp_path / "hit.json")
    seen = await anyio.to_thread.run_sync(run_python, LOAD_AND_WAIT, str(path))
    assert seen == {
        "type": "CachedRunHandle",
        "hit": True,
        "first": "SUCCEEDED",
        "run_id": hit.run_id,
        "state": "SUCCEEDED",
        "stdout": "from the cache\n",
    }
    assert hit.run_dir is not None
    again = await tether.load_handle(hit.run_dir / "handle.json")  # the hit's own record
    assert isinstance(again, CachedRunHandle) and again.hit and again.run_id == hit.run_id


async def test_miss_waited_in_a_fresh_process_records_the_entry(
    tmp_path: Path, runs: Path, store: CacheStore
) -> None:
    # Long enough for a fresh Python to start and load it on a busy machine.
    backend = cached(DummyConfig(runs_dir=runs, duration=6.0, stdout="slow\n"), store)
    miss = await backend.submit(Job())
    path = await miss.save(tmp_path / "miss.json")
    seen = await anyio.to_thread.run_sync(run_python, LOAD_AND_WAIT, str(path))
    assert (seen["hit"], seen["first"]) == (False, "RUNNING")
    assert (seen["run_id"], seen["state"]) == (miss.run_id, "SUCCEEDED")
    assert store.get(miss.key, touch=False) is not None
    assert store.claims() == 0
    hit = await backend.submit(Job())
    assert hit.hit and await (await hit.wait()).read_stdout() == "slow\n"


# -- what is recorded ---------------------------------------------------------------------


async def test_failures_are_not_cached_by_default(
    tmp_path: Path, runs: Path, store: CacheStore
) -> None:
    backend = cached(LocalConfig(runs_dir=runs), store)
    job = Job(command=counted(tmp_path, "echo broken; exit 3"))
    first = await (await backend.submit(job)).wait()
    assert (first.state, first.exit_code) == (RunState.FAILED, 3)
    again = await backend.submit(job)
    assert not again.hit
    assert (await again.wait()).state is RunState.FAILED
    assert times_run(tmp_path) == 2
    assert store.stats().entries == 0 and store.claims() == 0


async def end_badly(backend: CachedBackend, outcome: str) -> CachedRunHandle:
    """Submit a dummy job that ends ``outcome`` (failed, timed_out, cancelled)."""
    job = Job(resources=Resources(walltime=0.2)) if outcome == "timed_out" else Job()
    handle = await backend.submit(job)
    if outcome == "cancelled":
        await handle.cancel()
    await handle.wait()
    return handle


BAD_ENDS = {
    "failed": (DummyConfig(outcome="failed", exit_code=3, stdout="bad\n"), RunState.FAILED),
    "timed_out": (DummyConfig(duration=30, stdout="slow\n"), RunState.TIMED_OUT),
    "cancelled": (DummyConfig(duration=30, stdout="never\n"), RunState.CANCELLED),
}


@pytest.mark.parametrize("outcome", BAD_ENDS)
async def test_bad_ends_cached_only_with_cache_failures(
    runs: Path, store: CacheStore, outcome: str
) -> None:
    config, state = BAD_ENDS[outcome]
    inner = config.model_copy(update={"runs_dir": runs})
    plain = await end_badly(cached(inner, store), outcome)
    assert plain.state is state
    assert store.stats().entries == 0

    keeping = cached(inner, store, cache_failures=True)
    recorded = await (await end_badly(keeping, outcome)).wait()
    assert recorded.state is state and store.stats().entries == 1
    job = Job(resources=Resources(walltime=0.2)) if outcome == "timed_out" else Job()
    hit = await keeping.submit(job)
    assert hit.hit and hit.state is state
    restored = await hit.wait()
    assert (restored.exit_code, restored.error) == (recorded.exit_code, recorded.error)
    assert await restored.read_stdout() == await recorded.read_stdout()


async def test_lost_runs_are_never_cached(runs: Path, store: CacheStore) -> None:
    backend = cached(DummyConfig(runs_dir=runs, outcome="lost"), store, cache_failures=True)
    first = await backend.submit(Job())
    assert (await first.wait()).state is RunState.LOST
    again = await backend.submit(Job())
    assert not again.hit and again.run_id != first.run_id
    assert (await again.wait()).state is RunState.LOST
    assert store.stats().entries == 0 and store.claims() == 0


async def test_input_content_decides_hits_not_its_mtime(
    tmp_path: Path, runs: Path, store: CacheStore
) -> None:
    data = tmp_path / "in.txt"
    data.write_text("alpha\n")
    backend = cached(LocalConfig(runs_dir=runs), store)
    job = Job(command=counted(tmp_path, "cat in.txt"), inputs=[data])
    await (await backend.submit(job)).wait()
    os.utime(data, (1_000_000_000, 1_000_000_000))
    touched = await backend.submit(job)
    assert touched.hit and await (await touched.wait()).read_stdout() == "alpha\n"
    data.write_text("alphA\n")
    changed = await backend.submit(job)
    assert not changed.hit and await (await changed.wait()).read_stdout() == "alphA\n"
    assert times_run(tmp_path) == 2


# -- refresh ------------------------------------------------------------------------------


async def test_refresh_per_call_runs_again_and_replaces_the_entry(
    runs: Path, store: CacheStore
) -> None:
    backend = cached(LocalConfig(runs_dir=runs), store)
    job = Job(command="date +%s%N")
    old = await (await (await backend.submit(job)).wait()).read_stdout()
    assert (await backend.submit(job)).hit
    fresh = await backend.submit(job, refresh=True)
    assert not fresh.hit
    new = await (await fresh.wait()).read_stdout()
    assert new != old
    after = await backend.submit(job)
    assert after.hit and await (await after.wait()).read_stdout() == new
    assert store.stats().entries == 1


async def test_refresh_in_the_config_always_runs(runs: Path, store: CacheStore) -> None:
    job = Job(command="date +%s%N")
    refreshing = cached(LocalConfig(runs_dir=runs), store, refresh=True)
    outputs = []
    for _ in range(2):
        handle = await refreshing.submit(job)
        assert not handle.hit
        outputs.append(await (await handle.wait()).read_stdout())
    assert outputs[0] != outputs[1]
    hit = await cached(LocalConfig(runs_dir=runs), store).submit(job)
    assert hit.hit and await (await hit.wait()).read_stdout() == outputs[1]


# -- runs in flight --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["local", "dummy"])
async def test_concurrent_submits_share_one_run(
    tmp_path: Path, runs: Path, store: CacheStore, kind: str
) -> None:
    if kind == "local":
        config: BackendConfig = LocalConfig(runs_dir=runs)
        job = Job(command=counted(tmp_path, "sleep 0.5; echo shared"))
    else:
        config, job = DummyConfig(runs_dir=runs, duration=0.5, stdout="shared\n"), Job()
    backend = cached(config, store)
    handles: list[CachedRunHandle] = []

    async def submit() -> None:
        handles.append(await backend.submit(job))

    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(submit)
    assert len({h.run_id for h in handles}) == 1
    assert not any(h.hit for h in handles)
    assert len(list(runs.iterdir())) == 1  # one run folder: the inner backend ran once
    assert store.claims() == 1
    results = [await h.wait() for h in handles]
    assert {r.state for r in results} == {RunState.SUCCEEDED}
    assert {await r.read_stdout() for r in results} == {"shared\n"}
    assert store.stats().entries == 1 and store.claims() == 0
    if kind == "local":
        assert times_run(tmp_path) == 1


async def test_cancelling_a_shared_run_ends_it_for_every_sharer(
    runs: Path, store: CacheStore
) -> None:
    backend = cached(DummyConfig(runs_dir=runs, duration=30), store)
    first = await backend.submit(Job())
    second = await backend.submit(Job())
    assert second.run_id == first.run_id
    await second.cancel()
    assert (await first.wait(10)).state is RunState.CANCELLED
    assert store.stats().entries == 0 and store.claims() == 0
    third = await backend.submit(Job())
    assert not third.hit and third.run_id != first.run_id
    await third.cancel()


async def test_submit_errors_leave_no_claim(tmp_path: Path, runs: Path, store: CacheStore) -> None:
    backend = cached(LocalConfig(runs_dir=runs), store)
    with pytest.raises(SubmitError, match=r"missing\.dat"):
        await backend.submit(Job(command="cat missing.dat", inputs=[tmp_path / "missing.dat"]))
    with pytest.raises(ConfigError, match="has no command"):
        await backend.submit(Job())  # the inner backend refuses it after the claim was made
    assert store.claims() == 0 and store.stats().entries == 0
    assert not runs.exists() or list(runs.iterdir()) == []


# -- damaged stores ---------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["deleted", "modified"])
async def test_changed_or_missing_blob_is_a_miss(
    tmp_path: Path, runs: Path, store: CacheStore, damage: str
) -> None:
    backend = cached(LocalConfig(runs_dir=runs), store)
    job = Job(command=counted(tmp_path, "echo original"))
    recorded = await backend.submit(job)
    await recorded.wait()
    blob = blob_of(store, recorded.key, "stdout")
    if damage == "deleted":
        blob.unlink()
    else:
        blob.chmod(0o644)
        blob.write_text("tampered\n")
    again = await backend.submit(job)
    assert not again.hit
    assert await (await again.wait()).read_stdout() == "original\n"
    assert times_run(tmp_path) == 2


async def test_rerun_after_a_changed_blob_restores_the_true_content(
    runs: Path, store: CacheStore
) -> None:
    backend = cached(LocalConfig(runs_dir=runs), store)
    job = Job(command="echo original")
    first = await backend.submit(job)
    await first.wait()
    blob = blob_of(store, first.key, "stdout")
    blob.chmod(0o644)
    blob.write_text("tampered\n")
    await (await backend.submit(job)).wait()  # a miss: runs again and records again
    hit = await backend.submit(job)
    assert hit.hit
    assert await (await hit.wait()).read_stdout() == "original\n"


async def test_unreadable_sqlite_file_is_a_config_error(tmp_path: Path, runs: Path) -> None:
    path = tmp_path / "cache.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    backend = cached(DummyConfig(runs_dir=runs), SQLiteStore(path))
    with pytest.raises(ConfigError, match="cannot be opened") as info:
        await backend.submit(Job())
    assert str(path) in str(info.value) and "\n" not in str(info.value)


async def test_unreadable_directory_entry_is_a_miss_and_gets_replaced(
    tmp_path: Path, runs: Path
) -> None:
    store = DirectoryStore(tmp_path / "cache")
    backend = cached(DummyConfig(runs_dir=runs, stdout="x\n"), store)
    first = await backend.submit(Job())
    await first.wait()
    entry_files = list((tmp_path / "cache" / "entries").rglob("*.json"))
    assert len(entry_files) == 1
    entry_files[0].write_text('{"truncated')
    again = await backend.submit(Job())
    assert not again.hit
    await again.wait()
    assert (await backend.submit(Job())).hit


# -- housekeeping ----------------------------------------------------------------------------


async def test_prune_drops_least_recently_used_first(
    runs: Path, store: CacheStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "BLOB_GRACE", 0.0)
    keys = {}
    for letter in "abc":
        backend = cached(DummyConfig(runs_dir=runs, stdout=letter * 999 + "\n"), store)
        handle = await backend.submit(Job())
        await handle.wait()
        keys[letter] = handle.key
        await anyio.sleep(0.05)  # distinct last-use times, even with coarse file clocks
    blobs = {letter: blob_of(store, key, "stdout") for letter, key in keys.items()}
    empty_stderr = blob_of(store, keys["a"], "stderr")
    assert store.get(keys["a"]) is not None  # now the least recently used is b, then c
    assert [e.key for e in store.entries()] == [keys["b"], keys["c"], keys["a"]]

    assert store.prune(2000) == 1
    assert [e.key for e in store.entries()] == [keys["c"], keys["a"]]
    assert not blobs["b"].exists()
    assert blobs["a"].exists() and blobs["c"].exists() and empty_stderr.exists()
    assert store.prune(2000) == 0

    assert store.prune(0) == 2
    assert store.entries() == [] and store.stats().blobs == 0


async def test_prune_keeps_blobs_younger_than_the_grace_time(
    runs: Path, store: CacheStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = await cached(DummyConfig(runs_dir=runs, stdout="young\n"), store).submit(Job())
    await handle.wait()
    blob = blob_of(store, handle.key, "stdout")
    assert store.prune(0) == 1
    assert blob.exists()  # unused, but a writer may be about to record it
    monkeypatch.setattr(store_module, "BLOB_GRACE", 0.0)
    assert store.collect_blobs() == len("young\n")
    assert not blob.exists()


async def test_stats_count_entries_blobs_and_runs_in_flight(runs: Path, store: CacheStore) -> None:
    config = DummyConfig(runs_dir=runs, duration=0.3, stdout="hello\n", outputs={"a.txt": "A" * 10})
    backend = cached(config, store)
    assert store.stats().to_json() == {
        "path": str(store.location),
        "entries": 0,
        "size": 0,
        "blobs": 0,
        "blob_size": 0,
        "in_flight": 0,
    }
    handle = await backend.submit(Job())
    assert store.stats().in_flight == 1
    await handle.wait()
    stats = store.stats()
    assert (stats.entries, stats.size, stats.in_flight) == (1, 6 + 0 + 10, 0)
    assert (stats.blobs, stats.blob_size) == (3, 16)


async def test_clear_forgets_everything_but_restored_files_survive(
    runs: Path, store: CacheStore
) -> None:
    backend = cached(DummyConfig(runs_dir=runs, stdout="kept\n"), store)
    await (await backend.submit(Job(name="one"))).wait()
    await (await backend.submit(Job(name="two", env={"X": "1"}))).wait()
    hit = await backend.submit(Job(name="three"))
    assert hit.hit and hit.run_dir is not None  # its folder is made on first use: now
    unread = await backend.submit(Job(name="four"))  # a hit whose folder is not made yet
    assert store.clear() == 2
    assert (store.stats().entries, store.stats().blobs) == (0, 0)
    assert await (await hit.wait()).read_stdout() == "kept\n"  # a hard link outlives its blob
    assert not (await backend.submit(Job())).hit
    # Its blobs went before its files were first needed: it runs the job after all.
    with pytest.warns(RuntimeWarning, match="could not restore .*running it instead"):
        result = await unread.wait()
    assert result.ok and await result.read_stdout() == "kept\n"
    assert not unread.hit and unread.run_dir == result.run_dir


async def test_a_hit_makes_its_run_folder_only_when_first_needed(
    runs: Path, store: CacheStore
) -> None:
    backend = cached(DummyConfig(runs_dir=runs, stdout="kept\n"), store)
    await (await backend.submit(Job(name="one"))).wait()
    before = set(runs.iterdir())
    hit = await backend.submit(Job(name="one"))
    assert hit.hit and hit.state is RunState.SUCCEEDED and await hit.is_complete()
    assert set(runs.iterdir()) == before  # nothing on disk yet: the store answered
    result = await hit.wait()
    assert set(runs.iterdir()) == before | {result.run_dir}
    assert result.run_id == hit.run_id and (result.run_dir / "handle.json").is_file()
    assert await result.read_stdout() == "kept\n"
    assert [line async for line in hit.logs()] == ["kept"]
    reloaded = await tether.load_handle(result.run_dir / "handle.json")
    assert (await reloaded.wait()).stdout == result.stdout


async def test_a_hit_is_counted_and_marks_the_entry_used(runs: Path, store: CacheStore) -> None:
    backend = cached(DummyConfig(runs_dir=runs), store)
    miss = await backend.submit(Job())
    await miss.wait()
    recorded = store.get(miss.key, touch=False)
    assert recorded is not None and recorded.hits == 0
    await anyio.sleep(0.05)
    assert (await backend.submit(Job())).hit
    used = store.get(miss.key, touch=False)
    assert used is not None and used.last_used > recorded.last_used
    assert used.hits == 1


# -- the store contract --------------------------------------------------------------------


def entry_for(store: CacheStore, tmp_path: Path, key: str, text: str) -> CacheEntry:
    source = tmp_path / f"{key}.out"
    source.write_text(text)
    digest, size, mtime_ns = store.blobs.put(source)
    result = {"run_id": "r", "state": "SUCCEEDED", "stdout": "stdout", "outputs": []}
    return CacheEntry(key, "dummy", key, result, [StoredFile("stdout", digest, size, mtime_ns)])


def test_first_recording_wins_unless_replaced(tmp_path: Path, store: CacheStore) -> None:
    key = "ab" + "0" * 62
    assert store.put(entry_for(store, tmp_path, key, "first"))
    assert not store.put(entry_for(store, tmp_path, key, "second"))
    kept = store.get(key, touch=False)
    assert kept is not None and kept.size == len("first")
    assert store.put(entry_for(store, tmp_path, key, "replaced!"), replace=True)
    replaced = store.get(key, touch=False)
    assert replaced is not None and replaced.size == len("replaced!")
    assert store.delete(key) and not store.delete(key)
    assert store.get(key) is None


def test_claims_belong_to_one_owner_at_a_time(store: CacheStore) -> None:
    key = "cd" + "1" * 62
    assert store.claim(key, "me") is None
    held = store.claim(key, "you")
    assert held is not None and (held.owner, held.record) == ("me", None)
    store.set_record(key, "you", {"run_id": "theirs"})  # not the owner: ignored
    store.set_record(key, "me", {"run_id": "mine"})
    current = store.claim(key, "you")
    assert current is not None and current.record == {"run_id": "mine"}
    store.release(key, "you")
    assert store.claims() == 1
    assert store.steal(key, current, "you")
    assert not store.steal(key, current, "third")  # the claim changed since
    store.release(key, "you")
    assert store.claims() == 0 and store.claim(key, "third") is None


def test_directory_store_writes_leave_no_temp_files(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "cache")
    key = "ef" + "2" * 62
    store.put(entry_for(store, tmp_path, key, "one"))
    store.put(entry_for(store, tmp_path, key, "two"))
    store.put(entry_for(store, tmp_path, key, "three"), replace=True)
    store.claim(key, "me")
    store.set_record(key, "me", {"run_id": "r"})
    store.release(key, "me")
    left = [p.name for p in (tmp_path / "cache").rglob(".*")]
    assert left == []
    assert store.get(key, touch=False) is not None


def test_concurrent_recordings_of_one_key_in_one_process(tmp_path: Path, store: CacheStore) -> None:
    """Handles sharing one run may record it from several worker threads at once."""
    errors: list[BaseException] = []
    wins = 0
    lock = threading.Lock()
    for round_ in range(30):
        key = f"{round_:02d}" + "3" * 62
        entry = entry_for(store, tmp_path, key, "same")
        barrier = threading.Barrier(8)

        def record(entry: CacheEntry = entry, barrier: threading.Barrier = barrier) -> None:
            nonlocal wins
            barrier.wait()
            try:
                won = store.put(entry)
            except OSError as exc:
                errors.append(exc)
                return
            with lock:
                wins += won

        threads = [threading.Thread(target=record) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert wins == 30 and store.stats().entries == 30


# -- in-process sharing after the run ended -------------------------------------------------


async def test_failed_run_concluded_by_a_reloaded_handle_runs_again(
    tmp_path: Path, runs: Path, store: CacheStore
) -> None:
    backend = cached(LocalConfig(runs_dir=runs), store)
    job = Job(command=counted(tmp_path, "exit 3"))
    first = await backend.submit(job)
    reloaded = await tether.load_handle(await first.save(tmp_path / "first.json"))
    assert (await reloaded.wait()).state is RunState.FAILED
    again = await backend.submit(job)
    await again.wait()
    assert again.run_id != first.run_id
    assert times_run(tmp_path) == 2


async def test_refresh_after_a_reloaded_handle_concluded_runs_again(
    tmp_path: Path, runs: Path, store: CacheStore
) -> None:
    backend = cached(LocalConfig(runs_dir=runs), store)
    job = Job(command=counted(tmp_path, "date +%s%N"))
    first = await backend.submit(job)
    reloaded = await tether.load_handle(await first.save(tmp_path / "first.json"))
    await reloaded.wait()
    fresh = await backend.submit(job, refresh=True)
    await fresh.wait()
    assert fresh.run_id != first.run_id
    assert times_run(tmp_path) == 2


# -- configuration -------------------------------------------------------------------------


async def test_config_file_makes_a_working_cached_backend(tmp_path: Path) -> None:
    path = tmp_path / "cached.yaml"
    path.write_text(
        "type: cached\n"
        "backend:\n"
        "  type: dummy\n"
        '  stdout: "from yaml\\n"\n'
        f"  runs_dir: {tmp_path / 'runs'}\n"
        "store: directory\n"
        f"store_path: {tmp_path / 'cache'}\n"
        "cache_version: v7\n"
    )
    config = load_config(path)
    assert isinstance(config, CachedConfig) and isinstance(config.backend, DummyConfig)
    backend = config.create()
    assert isinstance(backend, CachedBackend)
    assert isinstance(backend.store, DirectoryStore)
    assert backend.store.location == tmp_path / "cache"
    assert backend.config.cache_version == "v7"
    miss = await backend.submit(Job())
    await miss.wait()
    hit = await backend.submit(Job())
    assert hit.hit and await (await hit.wait()).read_stdout() == "from yaml\n"
    assert list((tmp_path / "cache" / "entries").rglob("*.json")) != []


async def test_unknown_store_kind_is_a_one_line_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as direct:
        store_from_spec("nosuch", tmp_path / "x")
    path = tmp_path / "cached.yaml"
    path.write_text("type: cached\nbackend: {type: dummy}\nstore: nosuch\n")
    with pytest.raises(ConfigError) as from_file:
        load_config(path).create()
    for info in (direct, from_file):
        message = str(info.value)
        assert "\n" not in message
        assert "'nosuch'" in message and "directory" in message and "sqlite" in message


async def test_default_stores_are_in_the_xdg_cache_folder(
    tmp_path: Path, runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TETHER_CACHE_STORE")  # set for every test by conftest
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    expected = tmp_path / "xdg" / "tether" / "cache.sqlite"
    assert SQLiteStore.default().location == expected
    assert SQLiteStore().location == expected
    assert store_from_spec("sqlite", None).location == expected
    assert store_from_spec("directory", None).location == tmp_path / "xdg" / "tether" / (
        "store-directory"
    )
    backend = CachedConfig(backend=DummyConfig(runs_dir=runs, stdout="d\n")).create()
    assert backend.store.location == expected
    await (await backend.submit(Job())).wait()
    assert expected.is_file()
    assert (
        await CachedBackend(DummyConfig(runs_dir=runs, stdout="d\n").create()).submit(Job())
    ).hit
    monkeypatch.setenv("TETHER_CACHE_STORE", str(tmp_path / "explicit.sqlite"))
    assert SQLiteStore.default().location == tmp_path / "explicit.sqlite"
    assert store_from_spec("sqlite", None).location == tmp_path / "explicit.sqlite"


STORE_PLUGIN = """
from tether.cache import DirectoryStore


class ScratchStore(DirectoryStore):
    kind = "scratch"


class NotAStore:
    pass
"""


@pytest.fixture
def scratch_plugin(tmp_path: Path) -> Any:
    """A third-party store installed the way pip would: a module and its dist-info."""
    site = tmp_path / "site"
    info = site / "scratch_store-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "scratch_store.py").write_text(STORE_PLUGIN)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: scratch-store\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[tether.stores]\nscratch = scratch_store:ScratchStore\nbroken = scratch_store:NotAStore\n"
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(site))
        tether.registry.reload_plugins()
        yield site
    sys.modules.pop("scratch_store", None)
    tether.registry.reload_plugins()


@pytest.mark.usefixtures("scratch_plugin")
async def test_store_plugins_come_from_entry_points(tmp_path: Path, runs: Path) -> None:
    store = store_from_spec("scratch", tmp_path / "scratch")
    assert type(store).__name__ == "ScratchStore" and store.spec() == {
        "type": "scratch",
        "path": str(tmp_path / "scratch"),
    }
    config = CachedConfig(
        backend=DummyConfig(runs_dir=runs, stdout="plug\n"),
        store="scratch",
        store_path=tmp_path / "scratch",
    )
    backend = config.create()
    await (await backend.submit(Job())).wait()
    hit = await backend.submit(Job())
    assert hit.hit
    reloaded = await tether.load_handle(await hit.save(tmp_path / "hit.json"))
    assert isinstance(reloaded, CachedRunHandle) and reloaded.hit
    with pytest.raises(ConfigError, match=r"'broken' failed to load: .*not a CacheStore"):
        store_from_spec("broken", tmp_path / "x")
