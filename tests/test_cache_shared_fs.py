"""DirectoryStore on a shared filesystem (NFS): no locks, first-writer-wins by hard links.

On NFSv2/v3 ``link()`` is not idempotent: a retransmitted request whose first copy
succeeded reports EEXIST. ``_files.link_once`` recognises that case by the unique
temporary file's link count (open(2), the O_EXCL notes). The retransmission is
simulated exactly as the client sees it: the hard link exists already (made by the
"first copy") when the call reports EEXIST.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tether import CachedBackend, DirectoryStore, Job, LocalConfig, RunState
from tether._files import link_once, write_json_once
from tether.cache import CacheEntry, StoredFile

REAL_LINK = os.link


def retransmitted_link(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
    """``os.link`` as a retransmitted NFS request: the link is made, then EEXIST."""
    REAL_LINK(src, dst, *args, **kwargs)
    raise FileExistsError(17, "File exists (a retransmitted link)", str(dst))


def finished_file(folder: Path, text: str) -> Path:
    tmp = folder / f".{text}.tmp"
    tmp.write_text(text)
    return tmp


# -- the helper ------------------------------------------------------------------------


def test_link_once_creates_the_target(tmp_path: Path) -> None:
    tmp = finished_file(tmp_path, "mine")
    target = tmp_path / "target"
    assert link_once(tmp, target)
    assert target.read_text() == "mine"
    assert os.path.samefile(tmp, target)


def test_link_once_loses_to_an_existing_target(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("theirs")
    tmp = finished_file(tmp_path, "mine")
    assert not link_once(tmp, target)
    assert target.read_text() == "theirs"
    assert os.stat(tmp).st_nlink == 1


def test_link_once_sees_that_a_retransmitted_link_succeeded(tmp_path: Path) -> None:
    """EEXIST with the temp file linked twice: the target is ours (the first copy made it)."""
    tmp = finished_file(tmp_path, "mine")
    target = tmp_path / "target"
    os.link(tmp, target)  # the first transmission, whose answer was lost
    assert link_once(tmp, target)
    assert target.read_text() == "mine"


def test_link_once_under_a_retransmitting_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "link", retransmitted_link)
    tmp = finished_file(tmp_path, "mine")
    assert link_once(tmp, tmp_path / "target")


def test_link_once_other_errors_propagate(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        link_once(tmp_path / "missing.tmp", tmp_path / "target")


def test_write_json_once_wins_through_a_retransmitted_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "exit.json"
    monkeypatch.setattr(os, "link", retransmitted_link)
    assert write_json_once(target, {"reason": "exited"})
    monkeypatch.setattr(os, "link", REAL_LINK)
    assert not write_json_once(target, {"reason": "cancelled"})
    assert json.loads(target.read_text()) == {"reason": "exited"}
    assert [p.name for p in tmp_path.iterdir()] == ["exit.json"]  # no temp file left


# -- the store under a retransmitting link, and without locks ---------------------------


def entry_for(store: DirectoryStore, tmp_path: Path, key: str, text: str) -> CacheEntry:
    source = tmp_path / f"{key}-{text}.out"
    source.write_text(text)
    digest, size, mtime_ns = store.blobs.put(source)
    result = {"run_id": "r", "state": "SUCCEEDED", "stdout": "stdout", "outputs": []}
    return CacheEntry(key, "dummy", key, result, [StoredFile("stdout", digest, size, mtime_ns)])


def test_directory_store_wins_through_retransmitted_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DirectoryStore(tmp_path / "cache")
    key = "ab" + "4" * 62
    monkeypatch.setattr(os, "link", retransmitted_link)
    entry = entry_for(store, tmp_path, key, "first")  # the blob is published by a link too
    assert store.put(entry)  # recorded, not "someone else was first"
    assert store.claim(key, "me") is None  # the claim is ours
    monkeypatch.setattr(os, "link", REAL_LINK)
    assert not store.put(entry_for(store, tmp_path, key, "second"))
    held = store.claim(key, "you")
    assert held is not None and held.owner == "me"
    kept = store.get(key, touch=False)
    assert kept is not None and kept.size == len("first")
    assert store.blobs.intact(entry.files[0].digest, entry.files[0].size, entry.files[0].mtime_ns)
    assert [p.name for p in (tmp_path / "cache").rglob(".*")] == []  # no temp files


def test_restoring_a_blob_through_a_retransmitted_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DirectoryStore(tmp_path / "cache")
    entry = entry_for(store, tmp_path, "cd" + "5" * 62, "blob")
    digest = entry.files[0].digest
    monkeypatch.setattr(os, "link", retransmitted_link)
    store.blobs.restore(digest, tmp_path / "run" / "stdout")
    assert os.path.samefile(store.blobs.path(digest), tmp_path / "run" / "stdout")


def test_directory_store_takes_no_locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """POSIX advisory locks are unreliable over NFS: the store must never take one."""

    def refuse(name: str) -> Callable[..., Any]:
        def locked(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"DirectoryStore took a lock (fcntl.{name})")

        return locked

    for name in ("flock", "lockf", "fcntl"):
        monkeypatch.setattr(fcntl, name, refuse(name))
    store = DirectoryStore(tmp_path / "cache")
    key = "ef" + "6" * 62
    assert store.put(entry_for(store, tmp_path, key, "one"))
    assert not store.put(entry_for(store, tmp_path, key, "two"))
    assert store.put(entry_for(store, tmp_path, key, "three"), replace=True)
    assert store.get(key) is not None
    assert store.claim(key, "me") is None
    store.set_record(key, "me", {"run_id": "r"})
    current = store.claim(key, "you")
    assert current is not None
    assert store.steal(key, current, "you")
    store.release(key)
    assert store.stats().entries == 1
    store.prune(0)
    store.collect_blobs()
    store.clear()
    assert store.entries() == []


# -- two processes at once on one folder ---------------------------------------------------

# Each process records its own keys and the shared ones, claims the shared ones, and
# reports what it won and which entries it sees at the end.
RACER = r"""
import json, os, sys, time
from pathlib import Path
from tether.cache import CacheEntry, DirectoryStore, StoredFile

root, tag, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
store = DirectoryStore(root)
while not go.exists():
    time.sleep(0.005)
won_entries, won_claims = [], []
for i in range(40):
    for key in (f"{i:02x}" + "a" * 62, f"{i:02x}" + tag * 62):
        source = root.parent / f"{tag}-{key}.out"
        source.write_text(f"output of {key[:2]}")  # same content from both: a shared blob
        digest, size, mtime_ns = store.blobs.put(source)
        result = {"run_id": tag, "state": "SUCCEEDED", "stdout": "stdout", "outputs": []}
        files = [StoredFile("stdout", digest, size, mtime_ns)]
        entry = CacheEntry(key, "dummy", key, result, files)
        if store.claim(key, tag) is None:
            won_claims.append(key)
        if store.put(entry, owner=tag):
            won_entries.append(key)
done = root.parent / f"{tag}.done"
done.write_text("")
other = root.parent / ("c.done" if tag == "b" else "b.done")
while not other.exists():
    time.sleep(0.005)
seen = {e.key: e.result["run_id"] for e in store.entries()}
files = [f for e in store.entries() for f in e.files]
intact = all(store.blobs.intact(f.digest, f.size, f.mtime_ns) for f in files)
print(json.dumps({"entries": won_entries, "claims": won_claims, "seen": seen, "intact": intact}))
"""


def test_two_processes_share_one_directory_store(tmp_path: Path) -> None:
    root = tmp_path / "shared" / "cache"
    root.parent.mkdir()  # the processes' scratch files go beside the store
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(root), tag, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("b", "c")
    ]
    time.sleep(0.3)  # both interpreters started and waiting
    go.write_text("")
    reports = {}
    for tag, proc in zip(("b", "c"), procs, strict=True):
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        reports[tag] = json.loads(out.strip().splitlines()[-1])
    shared = {f"{i:02x}" + "a" * 62 for i in range(40)}
    own = {tag: {f"{i:02x}" + tag * 62 for i in range(40)} for tag in ("b", "c")}
    b, c = reports["b"], reports["c"]
    # Every shared key was recorded by exactly one of them; each recorded all its own.
    assert set(b["entries"]) & set(c["entries"]) == set()
    assert shared <= set(b["entries"]) | set(c["entries"])
    assert own["b"] <= set(b["entries"]) and own["c"] <= set(c["entries"])
    # Both see every entry, with the winner's result.
    expected = dict.fromkeys(own["b"], "b") | dict.fromkeys(own["c"], "c")
    expected |= {k: ("b" if k in b["entries"] else "c") for k in shared}
    assert b["seen"] == c["seen"] == expected
    assert b["intact"] and c["intact"]
    # A claim on a shared key never went to both at once (each was released after its put).
    store = DirectoryStore(root)
    assert store.claims() == 0
    assert store.stats().entries == 120
    assert [p.name for p in root.rglob(".*")] == []


SUBMIT = r"""
import json, sys, anyio
from tether import CachedBackend, DirectoryStore, Job, LocalConfig

async def main():
    backend = CachedBackend(LocalConfig(runs_dir=sys.argv[2]).create(), DirectoryStore(sys.argv[1]))
    job = Job(name="shared", command=sys.argv[3])
    handle = await backend.submit(job)
    result = await handle.wait(60)
    print(json.dumps({"hit": handle.hit, "state": result.state.value,
                      "stdout": await result.read_stdout()}))

anyio.run(main)
"""


def test_cached_runs_are_shared_by_processes_through_a_directory_store(tmp_path: Path) -> None:
    """Two processes submit the same job at once to one DirectoryStore: it runs once."""
    root, runs, log = tmp_path / "cache", tmp_path / "runs", tmp_path / "ran.log"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SUBMIT, str(root), str(runs), f"echo ran >> {log}; echo result"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["state"] for r in reports] == [RunState.SUCCEEDED.value] * 2
    assert [r["stdout"] for r in reports] == ["result\n"] * 2
    assert log.read_text().splitlines() == ["ran"]  # one real run for both
    assert DirectoryStore(root).stats().entries == 1


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_hit_from_another_process_restores_the_files(tmp_path: Path) -> None:
    """What one process recorded in the shared folder, another one gets as a hit."""
    root, runs = tmp_path / "cache", tmp_path / "runs"
    command = "echo from-the-first-process"
    out = subprocess.run(
        [sys.executable, "-c", SUBMIT, str(root), str(runs), command],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )
    assert json.loads(out.stdout.splitlines()[-1])["hit"] is False
    backend = CachedBackend(LocalConfig(runs_dir=runs).create(), DirectoryStore(root))
    handle = await backend.submit(Job(name="second", command=command))  # the name is not keyed
    assert handle.hit
    result = await handle.wait()
    assert result.state is RunState.SUCCEEDED
    assert await result.read_stdout() == "from-the-first-process\n"
