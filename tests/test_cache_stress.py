"""The cache under stress: racing processes, processes killed while recording, dead owners.

Every test drives real processes (``sys.executable -c CHILD``) that submit real local
runs through ``CachedBackend`` to a store in ``tmp_path``. Each job leaves one file in
``ran/`` per real execution (``mktemp``), so the tests count what actually ran.
Jobs print distinct stdout and stderr so no two jobs share a blob: the race on a
blob two writers store at once is the subject of its own test below.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tether import RunState
from tether.cache import CacheStore, DirectoryStore, SQLiteStore
from tether.cache._blobs import BlobDir

STORES = ["sqlite", "directory"]
SUCCEEDED = RunState.SUCCEEDED.value
RUNNING = RunState.RUNNING.value

# One child program for every test; what it does comes from the JSON spec in argv[1]:
# dir, store, jobs, tag, and optionally barrier (wait for the file "go"), parallel
# (runs at a time), hold (submit, then never wait) and kill_at (SIGKILL itself there).
CHILD = r"""
import asyncio, contextlib, json, os, random, signal, sys
from pathlib import Path

import tether.cache.sqlite_store as sqlite_store
from tether import CachedBackend, DirectoryStore, Job, LocalConfig, SQLiteStore

spec = json.loads(sys.argv[1])
base = Path(spec["dir"])
tag = spec["tag"]


def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def dying_transaction(connection):
    connection.execute("BEGIN IMMEDIATE")
    yield
    die()  # the entry's rows are written; COMMIT is never sent


def arm(cls, kill_at):
    if kill_at == "set-record":  # the run started; its claim is still pending
        cls.set_record = die
    elif kill_at == "blob-write":  # a blob's temporary file is full, not yet renamed
        os.fsync = die
    elif kill_at == "before-put":  # every blob stored, the entry not written
        cls.put = die
    elif kill_at == "in-put":  # in the middle of writing the entry
        put = cls.put

        def dying_put(self, entry, **options):
            sqlite_store._transaction = dying_transaction
            os.link = die  # DirectoryStore: the entry's full temporary file is not linked
            return put(self, entry, **options)

        cls.put = dying_put
    elif kill_at == "before-release":  # the entry is recorded, the process dies next
        put = cls.put

        def put_then_die(self, entry, **options):
            put(self, entry, **options)  # SQLite drops the claim in the same transaction;
            die()  # DirectoryStore drops it right after writing the entry (release: die)

        cls.put = put_then_die
        cls.release = die
    elif kill_at is not None:
        raise ValueError(kill_at)


def write_json(path, data):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


async def main():
    if spec["store"] == "sqlite":
        store = SQLiteStore(base / "cache.sqlite")
    else:
        store = DirectoryStore(base / "store")
    backend = CachedBackend(LocalConfig(runs_dir=base / "runs").create(), store)
    arm(type(store), spec.get("kill_at"))
    jobs = [
        (j["index"], Job(name=j["name"], command=j["command"], outputs=j["outputs"]))
        for j in spec["jobs"]
    ]
    random.shuffle(jobs)
    limit = asyncio.Semaphore(spec.get("parallel") or len(jobs))
    submitted = {}
    (base / f"ready-{tag}").touch()
    while spec.get("barrier") and not (base / "go").exists():
        await asyncio.sleep(0.005)

    async def one(index, job):
        async with limit:
            handle = await backend.submit(job)
            submitted[index] = {
                "run_id": handle.run_id, "hit": handle.hit, "state": handle.state.value
            }
            if len(submitted) == len(jobs):
                write_json(base / f"submitted-{tag}.json", submitted)
            if spec.get("hold"):
                await asyncio.Event().wait()
            result = await handle.wait(90)
        return index, {
            "run_id": handle.run_id,
            "hit": handle.hit,
            "state": result.state.value,
            "stdout": await result.read_stdout(),
            "stderr": await result.read_stderr(),
            "outputs": [str(p) for p in result.outputs],
        }

    results = dict(await asyncio.gather(*(one(i, j) for i, j in jobs)))
    print(json.dumps(results))


asyncio.run(main())
"""


# -- helpers -------------------------------------------------------------------------


def make_job(
    base: Path, index: int, *, seconds: float = 0.0, size: int = 0, gate: Path | None = None
) -> dict[str, Any]:
    """Job ``index``: records its execution, waits for ``gate`` to exist and ``seconds``,
    writes out.txt (its name, ``size`` zero bytes), then its own stdout and stderr."""
    ran = base / "ran"
    ran.mkdir(exist_ok=True)
    steps = [f"mktemp {shlex.quote(str(ran))}/{index}.XXXXXX >/dev/null"]
    if gate:
        steps.append(f"while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.1; done")
    if seconds:
        steps.append(f"sleep {seconds}")
    if size:
        steps.append(f"{{ echo job-{index}; head -c {size} /dev/zero; }} > out.txt")
    steps += [f"echo job-{index}", f"echo err-{index} >&2"]
    return {
        "index": index,
        "name": f"job-{index}",
        "command": " && ".join(steps),
        "outputs": ["out.txt"] if size else [],
    }


def expected_output(index: int, size: int) -> bytes:
    """What job ``index`` writes to out.txt."""
    return f"job-{index}\n".encode() + bytes(size)


def spawn(
    base: Path, store: str, jobs: list[dict[str, Any]], tag: str, **spec: Any
) -> subprocess.Popen[str]:
    """Start the child program on ``jobs``; see CHILD for the options."""
    spec = {"dir": str(base), "store": store, "jobs": jobs, "tag": tag, **spec}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )


def finish(child: subprocess.Popen[str], timeout: float = 90) -> dict[str, Any]:
    """The results the child printed, by job index (as a string)."""
    out, err = child.communicate(timeout=timeout)
    assert child.returncode == 0, f"child failed ({child.returncode}):\n{err}"
    return dict(json.loads(out.strip().splitlines()[-1]))


def kill(child: subprocess.Popen[str]) -> None:
    """SIGKILL the child (if it is still there) and reap it."""
    if child.poll() is None:
        child.kill()
    child.communicate(timeout=30)  # also closes its pipes


def wait_for(path: Path, children: list[subprocess.Popen[str]], timeout: float = 60) -> Path:
    """Return once ``path`` exists; fail early if a child died meanwhile."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        for child in children:
            if child.poll() is not None:
                _, err = child.communicate()
                pytest.fail(f"child ended ({child.returncode}) before {path.name}:\n{err}")
        assert time.monotonic() < deadline, f"{path.name} did not appear in {timeout}s"
        time.sleep(0.01)
    return path


def open_store(base: Path, kind: str) -> CacheStore:
    """The store the children use."""
    if kind == "sqlite":
        return SQLiteStore(base / "cache.sqlite")
    return DirectoryStore(base / "store")


def executions(base: Path) -> dict[int, int]:
    """How many times each job really ran, by job index."""
    counts: dict[int, int] = {}
    for mark in (base / "ran").iterdir():
        index = int(mark.name.split(".")[0])
        counts[index] = counts.get(index, 0) + 1
    return counts


def claimed_keys(store: CacheStore) -> set[str]:
    """Keys with a claim in the store, read straight from its files."""
    if isinstance(store, SQLiteStore):
        with sqlite3.connect(store.path) as db:
            return {row[0] for row in db.execute("SELECT key FROM inflight")}
    assert isinstance(store, DirectoryStore)
    return {p.stem for p in (store.root / "inflight").glob("*.json")}


def assert_sound(store: CacheStore, *, mtimes: bool = True) -> None:
    """No corrupt store, no half entry: every entry is whole and its blobs hold their
    recorded content (and, with ``mtimes``, are the very files recorded)."""
    if isinstance(store, SQLiteStore):
        assert store.integrity() == "ok"
    else:
        assert isinstance(store, DirectoryStore)
        files = list((store.root / "entries").glob("??/*.json"))
        assert len(store.entries()) == len(files)  # entries() skips unreadable files
    for entry in store.entries():
        index = int(entry.name.removeprefix("job-"))
        assert entry.result["state"] == SUCCEEDED
        assert {f.path for f in entry.files} >= {"stdout", "stderr"}
        for stored in entry.files:
            if mtimes:
                assert store.blobs.intact(stored.digest, stored.size, stored.mtime_ns), stored
            data = store.blobs.path(stored.digest).read_bytes()
            assert hashlib.sha256(data).hexdigest() == stored.digest
            if stored.path == "stdout":
                assert data == f"job-{index}\n".encode()


def assert_results(results: dict[str, Any], jobs: list[dict[str, Any]], size: int = 0) -> None:
    """Every job succeeded with its own stdout, stderr and out.txt."""
    assert sorted(results) == sorted(str(j["index"]) for j in jobs)
    for key, result in results.items():
        index = int(key)
        assert result["state"] == SUCCEEDED, result
        assert result["stdout"] == f"job-{index}\n"
        assert result["stderr"] == f"err-{index}\n"
        if size:
            [output] = result["outputs"]
            assert Path(output).read_bytes() == expected_output(index, size)


# -- 1. many processes submitting the same jobs at once ------------------------------


Seen = dict[str, Any]  # what a child saw, by job index


def race(
    base: Path, kind: str, jobs: list[dict[str, Any]], gate: Path | None = None
) -> tuple[list[Seen], list[Seen]]:
    """Eight processes submit ``jobs`` together, each in its own order; return what each
    saw once submitted (only with ``gate``, opened once all have submitted) and at the end."""
    children = [spawn(base, kind, jobs, str(n), barrier=True) for n in range(8)]
    try:
        for n in range(8):
            wait_for(base / f"ready-{n}", children)
        (base / "go").touch()  # all eight start submitting at once
        submitted = []
        if gate is not None:
            for n in range(8):
                path = wait_for(base / f"submitted-{n}.json", children)
                submitted.append(json.loads(path.read_text()))
            gate.touch()
        return submitted, [finish(child) for child in children]
    finally:
        if gate is not None:
            gate.touch()  # no run waits forever, whatever happened
        for child in children:
            kill(child)


@pytest.mark.slow
@pytest.mark.parametrize("kind", STORES)
def test_eight_racing_processes_share_one_run_of_each_of_twenty_jobs(
    tmp_path: Path, kind: str
) -> None:
    gate = tmp_path / "gate"  # no run ends before every process has submitted every job
    jobs = [make_job(tmp_path, i, gate=gate) for i in range(20)]
    submitted, ended = race(tmp_path, kind, jobs, gate)

    assert executions(tmp_path) == {i: 1 for i in range(20)}
    for i in range(20):
        views = [seen[str(i)] for seen in submitted]
        assert {v["hit"] for v in views} == {False}
        assert {v["state"] for v in views} == {RUNNING}
        run_ids = {v["run_id"] for v in views}
        assert len(run_ids) == 1, views  # every process shares the one run
        assert {seen[str(i)]["run_id"] for seen in ended} == run_ids
    for results in ended:
        assert_results(results, jobs)
    store = open_store(tmp_path, kind)
    assert sorted(e.name for e in store.entries()) == sorted(j["name"] for j in jobs)
    # Each run was recorded by eight processes at once: the first blob stays, intact.
    assert_sound(store)
    assert store.claims() == 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", STORES)
def test_after_eight_racing_processes_every_job_is_a_hit(tmp_path: Path, kind: str) -> None:
    # No gate: late submissions meet runs that ended, and get hits or share the run.
    jobs = [make_job(tmp_path, i, seconds=0.5) for i in range(20)]
    _, ended = race(tmp_path, kind, jobs)

    assert executions(tmp_path) == {i: 1 for i in range(20)}
    for results in ended:
        assert_results(results, jobs)
    for i in range(20):
        views = [results[str(i)] for results in ended]
        # Whoever did not get a hit (the run was still going) shared the one run.
        assert len({v["run_id"] for v in views if not v["hit"]}) == 1, views
    store = open_store(tmp_path, kind)
    assert len(store.entries()) == 20
    assert_sound(store)
    assert store.claims() == 0

    late = finish(spawn(tmp_path, kind, jobs, "late"))
    assert_results(late, jobs)
    assert all(result["hit"] for result in late.values())
    assert executions(tmp_path) == {i: 1 for i in range(20)}


def test_two_writers_storing_the_same_blob_both_get_records_that_stay_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What racing recorders of one run do (the test above shows it between processes):
    # both have their copy ready, the other one publishes first and records the blob's
    # (size, mtime), then this one publishes its copy.
    blobs = BlobDir(tmp_path / "blobs")
    source = tmp_path / "stdout"
    source.write_text("the same output\n")
    records = []
    raced = False

    def other_writer_first(publish: Any) -> Any:
        def publish_second(*args: Any, **kwargs: Any) -> Any:
            nonlocal raced
            if not raced:
                raced = True
                time.sleep(0.02)  # a little later: a later mtime on its copy
                records.append(blobs.put(source))
            return publish(*args, **kwargs)

        return publish_second

    for name in ("replace", "rename", "link"):  # however put publishes its copy
        monkeypatch.setattr(os, name, other_writer_first(getattr(os, name)))
    records.append(blobs.put(source))

    assert len(records) == 2, "put published its copy in a way this test does not hook"
    assert len({digest for digest, _, _ in records}) == 1
    assert [blobs.intact(*record) for record in records] == [True, True]


# -- 2. processes killed while recording ---------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", STORES)
def test_processes_killed_at_random_moments_leave_clean_hits_and_misses(
    tmp_path: Path, kind: str
) -> None:
    size, batch, rounds = 1_000_000, 4, 16  # a few blobs of 1 MB: a few ms each to store
    jobs = [make_job(tmp_path, i, size=size) for i in range(batch * rounds)]
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    store = open_store(tmp_path, kind)
    killed = 0
    for round_ in range(rounds):
        # New jobs, and the previous round's, whose claims a killed process left.
        new = jobs[batch * round_ : batch * (round_ + 1)]
        child = spawn(
            tmp_path, kind, jobs[batch * max(round_ - 1, 0) : batch * (round_ + 1)], f"r{round_}"
        )
        try:
            wait_for(tmp_path / f"ready-r{round_}", [child])
            # Kill soon after a new run ends: while its blobs and entry are being stored.
            first = f"{new[0]['name']}-*/exit.json"
            while not any((tmp_path / "runs").glob(first)) and child.poll() is None:
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.02))
            killed += child.poll() is None
        finally:
            kill(child)
        assert_sound(store)
    assert killed >= rounds // 2, f"only {killed} of {rounds} were killed (seed {seed})"

    # Stale claims (pending, or holding the record of a run that went on) do not block:
    # a later process gets every job, hit or miss, with the right content.
    assert_results(finish(spawn(tmp_path, kind, jobs, "after", parallel=8)), jobs, size)
    assert_sound(store)
    assert len(store.entries()) == len(jobs)
    # Every claim was released, except (DirectoryStore only) one whose owner was killed
    # between writing the entry and dropping the claim: that key is a hit.
    assert claimed_keys(store) <= {e.key for e in store.entries()}, f"seed {seed}"

    # Now everything is recorded: all hits, nothing runs again.
    before = executions(tmp_path)
    again = finish(spawn(tmp_path, kind, jobs, "again", parallel=8))
    assert_results(again, jobs, size)
    assert all(result["hit"] for result in again.values())
    assert executions(tmp_path) == before


KILL_POINTS = ["set-record", "blob-write", "before-put", "in-put", "before-release"]


@pytest.mark.parametrize("kind", STORES)
@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_a_process_killed_while_recording_leaves_a_clean_miss_or_hit(
    tmp_path: Path, kind: str, kill_at: str
) -> None:
    size = 1_000_000
    jobs = [make_job(tmp_path, 0, size=size)]
    child = spawn(tmp_path, kind, jobs, "killed", kill_at=kill_at)
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    [orphan] = [p.name for p in (tmp_path / "runs").iterdir()]  # its run goes on

    store = open_store(tmp_path, kind)
    assert_sound(store)
    recorded = kill_at == "before-release"
    assert len(store.entries()) == (1 if recorded else 0)
    if not recorded:
        assert store.referenced() == set()  # no half entry pointing at blobs
    # SQLite drops the claim in the transaction that records the entry.
    assert store.claims() == (0 if recorded and kind == "sqlite" else 1)

    [result] = finish(spawn(tmp_path, kind, jobs, "next")).values()
    assert_results({"0": result}, jobs, size)
    assert executions(tmp_path) == {0: 1}  # never twice, wherever the owner died
    if kill_at == "set-record":
        # The claim named its run before the run started: the next process found it
        # through the inner backend and shared it instead of running the job again.
        assert result["run_id"] == orphan
    else:
        if recorded:
            assert result["hit"]
        else:
            # The claim held the record of a run that had ended: the next process
            # re-attached to it, recorded it, and got it back as a hit.
            assert result["hit"]
            entry = store.entries()[0]
            assert entry.result["run_id"] == orphan
    assert_sound(store)
    assert len(store.entries()) == 1
    assert claimed_keys(store) <= {e.key for e in store.entries()}


@pytest.mark.parametrize("kind", ["sqlite"])  # DirectoryStore: two file operations
def test_a_claim_left_by_an_owner_killed_after_recording_is_cleared(
    tmp_path: Path, kind: str
) -> None:
    """SQLite records the entry and drops the claim in one transaction."""
    jobs = [make_job(tmp_path, 0)]
    child = spawn(tmp_path, kind, jobs, "killed", kill_at="before-release")
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL

    [result] = finish(spawn(tmp_path, kind, jobs, "next")).values()
    assert result["hit"]
    store = open_store(tmp_path, kind)
    assert store.claims() == 0


# -- 3. an owner killed while its run goes on ----------------------------------------


@pytest.mark.parametrize("kind", STORES)
def test_a_second_process_shares_and_records_the_run_of_a_killed_owner(
    tmp_path: Path, kind: str
) -> None:
    gate = tmp_path / "gate"  # the run goes on until the test opens it
    job = make_job(tmp_path, 0, gate=gate)
    store = open_store(tmp_path, kind)

    owner = spawn(tmp_path, kind, [job], "owner", hold=True)
    try:
        first = json.loads(wait_for(tmp_path / "submitted-owner.json", [owner]).read_text())
        assert first["0"]["hit"] is False
        assert store.claims() == 1
        kill(owner)

        waiter = spawn(tmp_path, kind, [job], "waiter")
        try:
            path = wait_for(tmp_path / "submitted-waiter.json", [waiter])
            shared = json.loads(path.read_text())
            assert shared["0"] == {"run_id": first["0"]["run_id"], "hit": False, "state": RUNNING}
            assert store.entries() == []
            gate.touch()
            [result] = finish(waiter).values()
        finally:
            kill(waiter)
    finally:
        gate.touch()  # no run waits forever, whatever happened
        kill(owner)

    assert_results({"0": result}, [job])
    assert result["run_id"] == first["0"]["run_id"]
    assert result["hit"] is False
    assert executions(tmp_path) == {0: 1}
    [entry] = store.entries()  # recorded by the waiter: the owner was dead
    assert entry.name == "job-0"
    assert_sound(store)
    assert store.claims() == 0
