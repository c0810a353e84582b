"""The cache layer: hit latency, input hashing speed, and what a miss adds.

Three measurements, in the same process:

1. **hits**: a :class:`tether.cache.SQLiteStore` holds ``--entries`` entries
   (default 100,000), all copies of one real run's entry (a dummy run's stdout and
   stderr, so every entry's blobs exist). ``--hit-jobs`` of them (default 2,000)
   belong to jobs: their keys come from ``await backend.key(job)`` and they are
   recorded with ``store.put``; the rest are filled in one transaction through the
   store's own connection, with the rows ``put`` would write (``--fill put`` uses
   ``put`` for every entry: slower, same rows). Each repeat then times, one call at
   a time, on random keys and jobs:

   * ``store.get(key)`` alone (it also marks the entry used, as a hit does);
   * ``await backend.key(job)`` (the worker-thread hop and the hashing);
   * ``backend._restore(key, job)`` in the calling thread (the look-up, the blob
     checks, the new run folder, its links to the blobs and ``handle.json``);
   * the whole hit: ``await CachedBackend(DummyConfig(...).create(), store)
     .submit(job)``.

   The bar: p50 of the whole hit ≤ ``--max-hit-ms`` (1 ms); p99 is reported.
2. **hashing**: ``--hash-files`` files of ``--hash-mib`` MiB (default 16 x 64 MiB,
   1 GiB) in ``--hash-dir`` (default ``/dev/shm`` when it has room, else the temp
   folder). Each repeat times, in alternating order, plain ``hashlib.sha256`` over
   the files (1 MiB reads) and tether's key of a job with the folder as its input
   (``default_key``). The bar: tether's median GB/s ≥ ``--min-hash-ratio`` (0.8) x
   plain's.
3. **misses**: ``--misses`` runs (default 200), one after another, each submitted
   and awaited, through a bare ``DummyBackend`` (zero duration) and through a
   ``CachedBackend`` over the same config with the store of part 1, every job a
   new command (a miss). Each repeat times both, in alternating order; the figures
   are ms per run, their medians and the difference. No bar: it is reported.

The store, its blobs and the run folders of parts 1 and 3 go in a temporary folder
in ``--scratch`` (default: tether's state folder, where users' runs go). A hit
creates a run folder and writes ``handle.json`` there, so the time this filesystem
takes to make a folder and rename a file into it is measured first and printed as
context. The figures are written to ``bench/results/cache_bench.json``; the exit
status is 1 when a bar is missed.

Usage::

    python bench/cache_bench.py [--entries 100000] [--hit-jobs 2000] [--hits 1000]
                                [--hash-files 16] [--hash-mib 64] [--misses 200]
                                [--repeats 5] [--max-hit-ms 1.0] [--min-hash-ratio 0.8]
                                [--fill bulk|put] [--hash-dir DIR] [--scratch DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _machine import (  # bench/ is the script's folder, first on sys.path
    finish,
    print_machine,
    scratch_folder,
)

if TYPE_CHECKING:
    from tether import Job
    from tether.cache import CachedBackend, CacheEntry, SQLiteStore

RESULTS = Path(__file__).resolve().parent / "results" / "cache_bench.json"
MIB = 1 << 20
SEED = 20240601


@dataclass
class Report:
    """Everything the bench measured, as written to the JSON results file."""

    entries: int
    hit_jobs: int
    hits: int
    hash_files: int
    hash_mib: int
    misses: int
    repeats: int
    fill: str
    scratch: str
    hash_dir: str
    max_hit_ms: float
    min_hash_ratio: float
    # part 1: hits
    fs_folder_ms: float = 0.0
    fill_seconds: float = 0.0
    put_us_median: float = 0.0
    get_ms_p50: list[float] = field(default_factory=list)
    key_ms_p50: list[float] = field(default_factory=list)
    restore_ms_p50: list[float] = field(default_factory=list)
    folder_ms_p50: list[float] = field(default_factory=list)
    hit_ms_p50: list[float] = field(default_factory=list)
    hit_result_ms_p50: list[float] = field(default_factory=list)
    get: dict[str, float] = field(default_factory=dict)
    key: dict[str, float] = field(default_factory=dict)
    restore: dict[str, float] = field(default_factory=dict)
    folder: dict[str, float] = field(default_factory=dict)
    hit: dict[str, float] = field(default_factory=dict)
    hit_result: dict[str, float] = field(default_factory=dict)
    # part 1b: the same hits with --scale-entries entries
    scale_entries: int = 0
    max_scale_ratio: float = 1.5
    scale_fill_seconds: float = 0.0
    scale_get: dict[str, float] = field(default_factory=dict)
    scale_hit: dict[str, float] = field(default_factory=dict)
    scale_ratio: float = 0.0
    machine_facts: dict[str, float] = field(default_factory=dict)
    # part 2: hashing
    hash_bytes: int = 0
    plain_gb_per_s: list[float] = field(default_factory=list)
    tether_gb_per_s: list[float] = field(default_factory=list)
    plain_median: float = 0.0
    tether_median: float = 0.0
    hash_ratio: float = 0.0
    # part 3: misses
    bare_ms_per_run: list[float] = field(default_factory=list)
    cached_ms_per_run: list[float] = field(default_factory=list)
    bare_median: float = 0.0
    cached_median: float = 0.0
    miss_overhead_ms: float = 0.0
    load_before: list[float] = field(default_factory=list)
    load_after: list[float] = field(default_factory=list)
    passed: bool = False
    missed_bars: list[str] = field(default_factory=list)
    python: str = platform.python_version()
    machine: str = f"{platform.system()} {platform.release()} {platform.machine()}"
    cpus: int = os.cpu_count() or 0


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    """p50, p90, p99 and max of a list of milliseconds."""
    cuts = statistics.quantiles(samples_ms, n=100, method="inclusive")
    return {
        "p50": statistics.median(samples_ms),
        "p90": cuts[89],
        "p99": cuts[98],
        "max": max(samples_ms),
        "samples": float(len(samples_ms)),
    }


# -- part 1: hits -------------------------------------------------------------------


def folder_ms(scratch: Path, count: int = 300) -> float:
    """Median ms to make what a hit makes on disk: a folder, a file renamed into it.

    Printed as context: a hit creates a run folder and writes ``handle.json`` (a
    temporary file, then a rename), and on a disk in a slow state (ext4 without a
    journal after mass deletion, other processes' churn) that alone can take 1 ms.
    """
    probe = scratch / "fs-probe"
    probe.mkdir()
    times = []
    for i in range(count):
        t0 = time.perf_counter_ns()
        folder = probe / str(i)
        folder.mkdir(mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".handle.json.", suffix=".tmp")
        os.write(fd, b"{}\n")
        os.close(fd)
        os.replace(tmp, folder / "handle.json")
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return statistics.median(times)


def put_row(entry: CacheEntry) -> tuple[Any, ...]:
    """The ``entries`` row that ``SQLiteStore.put`` writes for ``entry``."""
    data = json.dumps({"result": entry.result, "files": [vars(f) for f in entry.files]})
    return (
        entry.key,
        entry.backend,
        entry.name,
        entry.created,
        entry.last_used,
        entry.hits,
        entry.size,
        data,
    )


def fill_bulk(store: SQLiteStore, entries: list[CacheEntry]) -> None:
    """Insert ``entries`` in one transaction, with ``put``'s statements and rows."""
    with store._write() as db:
        db.executemany(
            "INSERT OR REPLACE INTO entries (key, backend, name, created, last_used, hits, "
            "size, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [put_row(entry) for entry in entries],
        )
        db.executemany(
            "INSERT OR IGNORE INTO refs (key, digest) VALUES (?, ?)",
            [(entry.key, f.digest) for entry in entries for f in entry.files],
        )


def copy_entry(template: CacheEntry, key: str) -> CacheEntry:
    """The template entry under another key (same result, same blobs)."""
    from tether.cache import CacheEntry

    return CacheEntry(
        key=key,
        backend=template.backend,
        name=template.name,
        result=dict(template.result),
        files=list(template.files),
    )


async def prepare_store(
    report: Report, backend: CachedBackend, store: SQLiteStore
) -> tuple[list[Job], list[str], list[str]]:
    """Fill the store; return the hit jobs, their keys, and every key in the store."""
    from tether import Job, RunState

    # One real miss: its entry (and its stdout/stderr blobs) is the template.
    handle = await backend.submit(Job(command=["echo", "template"]))
    result = await handle.wait()
    if result.state is not RunState.SUCCEEDED or handle.hit:
        raise RuntimeError(f"the template run did not succeed as a miss: {result}")
    template = store.get(handle.key, touch=False)
    if template is None or not template.files:
        raise RuntimeError("the template run was not recorded with its files")

    jobs = [Job(command=["echo", f"hit-{i}"]) for i in range(report.hit_jobs)]
    keys = [await backend.key(job) for job in jobs]
    if len(set(keys)) != len(keys):
        raise RuntimeError("hit jobs share keys")
    fillers = [
        hashlib.sha256(f"filler-{i}".encode()).hexdigest()
        for i in range(report.entries - report.hit_jobs - 1)
    ]

    began = time.perf_counter()
    put_us = []
    for key in keys if report.fill == "bulk" else keys + fillers:
        entry = copy_entry(template, key)
        t0 = time.perf_counter_ns()
        if not store.put(entry):
            raise RuntimeError(f"entry {key} was already recorded")
        put_us.append((time.perf_counter_ns() - t0) / 1e3)
    if report.fill == "bulk":
        fill_bulk(store, [copy_entry(template, key) for key in fillers])
    report.fill_seconds = time.perf_counter() - began
    report.put_us_median = statistics.median(put_us)

    every = [template.key, *keys, *fillers]
    count = store._connection().execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    if count != report.entries:
        raise RuntimeError(f"the store holds {count} entries, not {report.entries}")
    for key in random.Random(SEED).sample(fillers, min(len(fillers), 20)):
        stored = store.get(key, touch=False)
        if stored is None or stored.files != template.files or stored.result != template.result:
            raise RuntimeError(f"filler entry {key} does not read back as written")
    return jobs, keys, every


async def bench_hits(report: Report, backend: CachedBackend, store: SQLiteStore) -> None:
    """Fill the store, warm up, then time gets, keys, restores and whole hits."""
    jobs, keys, every = await prepare_store(report, backend, store)
    print(
        f"  store: {report.entries:,} entries in {report.fill_seconds:.1f} s "
        f"({report.fill}; put: {report.put_us_median:.0f} us median)"
    )
    pick = random.Random(SEED)
    for _ in range(50):  # warm-up: worker threads (one connection each), imports, caches
        index = pick.randrange(len(jobs))
        handle = await backend.submit(jobs[index])
        if not handle.hit:
            raise RuntimeError("a warm-up submit was not a hit")

    samples = await time_hits(report, backend, store, jobs, keys, every, pick, "hits")
    for name, values in samples.items():
        setattr(report, name, percentiles(values))
    if report.scale_entries > report.entries:
        await scale_store(report, store, every)
        scaled = await time_hits(report, backend, store, jobs, keys, every, pick, "1M hits")
        report.scale_get = percentiles(scaled["get"])
        report.scale_hit = percentiles(scaled["hit"])
        report.scale_ratio = report.scale_hit["p50"] / report.hit["p50"]


async def time_hits(
    report: Report,
    backend: CachedBackend,
    store: SQLiteStore,
    jobs: list[Job],
    keys: list[str],
    every: list[str],
    pick: random.Random,
    label: str,
) -> dict[str, list[float]]:
    """Time gets, keys, look-ups, run folders, whole hits and hits with their result."""
    samples: dict[str, list[float]] = {
        "get": [],
        "key": [],
        "restore": [],
        "folder": [],
        "hit": [],
        "hit_result": [],
    }
    scaled = label != "hits"
    for repeat in range(report.repeats):
        gc.collect()
        per: dict[str, list[float]] = {name: [] for name in samples}
        for key in pick.sample(every, report.hits):
            t0 = time.perf_counter_ns()
            entry = store.get(key)
            per["get"].append((time.perf_counter_ns() - t0) / 1e6)
            if entry is None:
                raise RuntimeError(f"no entry for {key}")
        for index in pick.sample(range(len(jobs)), report.hits):
            t0 = time.perf_counter_ns()
            key = await backend.key(jobs[index])
            per["key"].append((time.perf_counter_ns() - t0) / 1e6)
            if key != keys[index]:
                raise RuntimeError("a job's key changed")
        for index in pick.sample(range(len(jobs)), report.hits):
            t0 = time.perf_counter_ns()
            restored = backend._restore(keys[index], jobs[index])
            t1 = time.perf_counter_ns()
            if restored is None:
                raise RuntimeError("a restore found no entry")
            made = restored._materialize_now()  # the run folder a hit's result needs
            per["restore"].append((t1 - t0) / 1e6)
            per["folder"].append((time.perf_counter_ns() - t1) / 1e6)
            if made is None or made.run_dir is None or not made.run_dir.is_dir():
                raise RuntimeError("a hit's run folder was not made")
        for index in pick.sample(range(len(jobs)), report.hits):
            t0 = time.perf_counter_ns()
            handle = await backend.submit(jobs[index])
            per["hit"].append((time.perf_counter_ns() - t0) / 1e6)
            if not handle.hit:
                raise RuntimeError("a submit of a recorded job was not a hit")
        for index in pick.sample(range(len(jobs)), report.hits):
            t0 = time.perf_counter_ns()
            handle = await backend.submit(jobs[index])
            result = await handle.wait()
            per["hit_result"].append((time.perf_counter_ns() - t0) / 1e6)
            if not handle.hit or result.stdout is None or not result.stdout.is_file():
                raise RuntimeError("a hit's result has no stdout file")
        for name, values in per.items():
            samples[name].extend(values)
            if not scaled:
                getattr(report, f"{name}_ms_p50").append(statistics.median(values))
        p50 = {name: statistics.median(values) for name, values in per.items()}
        print(
            f"  {label} {repeat + 1}/{report.repeats}: p50 get {p50['get']:.3f} ms   "
            f"key {p50['key']:.3f}   look-up {p50['restore']:.3f}   run folder "
            f"{p50['folder']:.3f}   submit {p50['hit']:.3f}   submit+wait "
            f"{p50['hit_result']:.3f}"
        )
    return samples


async def scale_store(report: Report, store: SQLiteStore, every: list[str]) -> None:
    """Grow the store to ``report.scale_entries`` entries with copies of one entry."""
    template = store.get(every[0], touch=False)
    assert template is not None
    began = time.perf_counter()
    more = report.scale_entries - report.entries
    batch = 100_000
    for start in range(0, more, batch):
        keys = [
            hashlib.sha256(f"scale-{i}".encode()).hexdigest()
            for i in range(start, min(more, start + batch))
        ]
        fill_bulk(store, [copy_entry(template, key) for key in keys])
        every.extend(keys)
    report.scale_fill_seconds = time.perf_counter() - began
    count = store._connection().execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    if count != report.scale_entries:
        raise RuntimeError(f"the store holds {count} entries, not {report.scale_entries}")
    print(f"  store: grown to {count:,} entries in {report.scale_fill_seconds:.1f} s")


# -- part 2: hashing ----------------------------------------------------------------


def pick_hash_dir(needed: int) -> Path:
    """``/dev/shm`` when it has room for ``needed`` bytes (and some), else the temp folder."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2 * needed:
        return shm
    return Path(tempfile.gettempdir())


def make_files(folder: Path, count: int, mib: int) -> list[Path]:
    """``count`` files of ``mib`` MiB: one random block, each file with its own prefix."""
    block = bytearray(os.urandom(mib * MIB))
    paths = []
    for i in range(count):
        block[:16] = f"{i:016d}".encode()
        path = folder / f"input-{i:03d}.bin"
        path.write_bytes(block)
        paths.append(path)
    return paths


def plain_digests(paths: list[Path]) -> list[str]:
    """SHA-256 of each file with plain hashlib, read in 1 MiB chunks."""
    digests = []
    for path in paths:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(MIB):
                digest.update(chunk)
        digests.append(digest.hexdigest())
    return digests


def bench_hashing(report: Report, folder: Path) -> None:
    """Time plain hashlib and tether's key over the same files, interleaved."""
    from tether import Job
    from tether.cache import default_key
    from tether.cache.key import job_fields

    paths = make_files(folder, report.hash_files, report.hash_mib)
    report.hash_bytes = sum(p.stat().st_size for p in paths)
    job = Job(command=["true"], inputs=[folder])
    # Both read every byte, and agree on every digest.
    listed = job_fields(job)["inputs"][0][1]
    if listed != ["dir", [[p.name, d] for p, d in zip(paths, plain_digests(paths), strict=True)]]:
        raise RuntimeError("tether's input digests differ from plain hashlib's")

    def plain() -> None:
        plain_digests(paths)

    def tether() -> None:
        default_key(job, {}, "")

    for repeat in range(report.repeats):
        order = [("plain", plain), ("tether", tether)]
        if repeat % 2:
            order.reverse()
        speeds = {}
        for name, fn in order:
            t0 = time.perf_counter()
            fn()
            speeds[name] = report.hash_bytes / (time.perf_counter() - t0) / 1e9
        report.plain_gb_per_s.append(speeds["plain"])
        report.tether_gb_per_s.append(speeds["tether"])
        print(
            f"  hashing {repeat + 1}/{report.repeats}: plain {speeds['plain']:.3f} GB/s   "
            f"tether {speeds['tether']:.3f} GB/s"
        )
    report.plain_median = statistics.median(report.plain_gb_per_s)
    report.tether_median = statistics.median(report.tether_gb_per_s)
    report.hash_ratio = report.tether_median / report.plain_median


# -- part 3: misses -----------------------------------------------------------------


async def bench_misses(report: Report, runs_dir: Path, store: SQLiteStore) -> None:
    """Time submit + wait of new jobs: bare dummy backend vs cached (every one a miss)."""
    from tether import Job, RunState
    from tether.backends.dummy import DummyConfig
    from tether.cache import CachedBackend

    config = DummyConfig(runs_dir=runs_dir, stdout="hello\n")
    bare = config.create()
    cached = CachedBackend(config.create(), store)
    batch = 0

    async def one_batch(backend: Any, runs: int, *, cached_side: bool) -> float:
        nonlocal batch
        batch += 1
        jobs = [Job(command=["echo", f"miss-{batch}-{i}"]) for i in range(runs)]
        gc.collect()
        began = time.perf_counter()
        for job in jobs:
            handle = await backend.submit(job)
            result = await handle.wait()
            if result.state is not RunState.SUCCEEDED:
                raise RuntimeError(f"run {result.run_id} ended {result.state.value}")
            if cached_side and handle.hit:
                raise RuntimeError("a new job was a hit")
        return (time.perf_counter() - began) / runs * 1e3

    await one_batch(bare, 20, cached_side=False)  # warm-up
    await one_batch(cached, 20, cached_side=True)
    for repeat in range(report.repeats):
        order = [("bare", bare), ("cached", cached)]
        if repeat % 2:
            order.reverse()
        ms = {}
        for name, backend in order:
            ms[name] = await one_batch(backend, report.misses, cached_side=name == "cached")
        report.bare_ms_per_run.append(ms["bare"])
        report.cached_ms_per_run.append(ms["cached"])
        print(
            f"  misses {repeat + 1}/{report.repeats}: bare {ms['bare']:.3f} ms/run   "
            f"cached {ms['cached']:.3f} ms/run"
        )
    report.bare_median = statistics.median(report.bare_ms_per_run)
    report.cached_median = statistics.median(report.cached_ms_per_run)
    report.miss_overhead_ms = report.cached_median - report.bare_median


# -- driver -------------------------------------------------------------------------


async def bench_store(report: Report, scratch: Path) -> None:
    """Parts 1 and 3, which share the filled store."""
    from tether.backends.dummy import DummyConfig
    from tether.cache import CachedBackend, SQLiteStore

    store = SQLiteStore(scratch / "cache.sqlite")
    backend = CachedBackend(
        DummyConfig(runs_dir=scratch / "hits", stdout="hello\n").create(), store
    )
    report.fs_folder_ms = folder_ms(scratch)
    print(f"  filesystem: {report.fs_folder_ms:.3f} ms per folder + renamed file in {scratch}")
    print("hits:")
    await bench_hits(report, backend, store)
    print("misses:")
    await bench_misses(report, scratch / "misses", store)


def print_summary(report: Report) -> None:
    """The summary: hit percentiles, hashing speeds and miss overhead."""
    print()
    print(f"{'hit (ms)':34}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}")
    for label, figures in (
        ("store.get(key)", report.get),
        ("await backend.key(job)", report.key),
        ("backend._restore(key, job): look-up", report.restore),
        ("a hit's run folder, when needed", report.folder),
        ("await backend.submit(job): a hit", report.hit),
        ("submit + wait (run folder made)", report.hit_result),
        *(
            (
                (f"store.get, {report.scale_entries:,}", report.scale_get),
                (f"submit, {report.scale_entries:,}", report.scale_hit),
            )
            if report.scale_hit
            else ()
        ),
    ):
        print(f"{label:34}" + "".join(f"{figures[p]:9.3f}" for p in ("p50", "p90", "p99", "max")))
    print(
        f"hit: p50 {report.hit['p50']:.3f} ms (bar: <= {report.max_hit_ms} ms), "
        f"p99 {report.hit['p99']:.3f} ms; the filesystem alone: "
        f"{report.fs_folder_ms:.3f} ms per folder + renamed file"
    )
    print(f"hit with its result (run folder made): p50 {report.hit_result['p50']:.3f} ms  (no bar)")
    if report.scale_hit:
        print(
            f"hit with {report.scale_entries:,} entries: p50 {report.scale_hit['p50']:.3f} ms, "
            f"{report.scale_ratio:.2f} x the {report.entries:,}-entry figure "
            f"(bar: <= {report.max_scale_ratio})"
        )
    print(
        f"\nhashing {report.hash_bytes / 1e9:.2f} GB in {report.hash_dir}: plain "
        f"{report.plain_median:.3f} GB/s, tether {report.tether_median:.3f} GB/s, ratio "
        f"{report.hash_ratio:.3f}  (bar: >= {report.min_hash_ratio})"
    )
    print(
        f"\nmiss: bare {report.bare_median:.3f} ms/run, cached {report.cached_median:.3f} "
        f"ms/run, overhead {report.miss_overhead_ms:.3f} ms/run  (no bar)"
    )
    before, after = report.load_before, report.load_after
    print(f"\nload average (1, 5, 15 min): {before} before, {after} after")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000, help="store entries (100000)")
    parser.add_argument("--hit-jobs", type=int, default=2000, help="entries of jobs (2000)")
    parser.add_argument("--hits", type=int, default=1000, help="timed calls per repeat (1000)")
    parser.add_argument("--hash-files", type=int, default=16, help="input files (16)")
    parser.add_argument("--hash-mib", type=int, default=64, help="MiB per input file (64)")
    parser.add_argument("--misses", type=int, default=200, help="runs per miss batch (200)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of each part (5)")
    parser.add_argument(
        "--max-hit-ms", type=float, default=1.0, help="fail when hit p50 is above (1.0)"
    )
    parser.add_argument(
        "--min-hash-ratio",
        type=float,
        default=0.8,
        help="fail when tether's hashing GB/s / plain hashlib's is below (0.8)",
    )
    parser.add_argument(
        "--fill",
        choices=("bulk", "put"),
        default="bulk",
        help="fill entries with no job in one transaction (bulk) or one put each",
    )
    parser.add_argument(
        "--hash-dir",
        type=Path,
        default=None,
        help="folder for the input files (default: /dev/shm if it has room, else temp)",
    )
    parser.add_argument(
        "--scratch",
        type=Path,
        default=None,
        help="folder for the store and run folders (default: tether's state folder)",
    )
    parser.add_argument(
        "--scale-entries",
        type=int,
        default=1_000_000,
        help="grow the store to this many entries and time the hits again (1000000; 0: no)",
    )
    parser.add_argument(
        "--max-scale-ratio",
        type=float,
        default=1.5,
        help="fail when the hit p50 at --scale-entries / at --entries is above (1.5)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    if min(args.hit_jobs, args.hits, args.hash_files, args.hash_mib, args.misses) < 1:
        parser.error("counts and sizes must be at least 1")
    if args.repeats < 1 or args.hits > args.hit_jobs or args.entries <= args.hit_jobs:
        parser.error("need --repeats >= 1, --hits <= --hit-jobs < --entries")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the bench; return the process exit status."""
    args = parse_args(argv)
    args.scratch = scratch_folder(args.scratch)
    if args.hash_dir is None:
        args.hash_dir = pick_hash_dir(args.hash_files * args.hash_mib * MIB)
    report = Report(
        entries=args.entries,
        hit_jobs=args.hit_jobs,
        hits=args.hits,
        hash_files=args.hash_files,
        hash_mib=args.hash_mib,
        misses=args.misses,
        repeats=args.repeats,
        fill=args.fill,
        scratch=str(args.scratch),
        hash_dir=str(args.hash_dir),
        max_hit_ms=args.max_hit_ms,
        min_hash_ratio=args.min_hash_ratio,
        scale_entries=args.scale_entries,
        max_scale_ratio=args.max_scale_ratio,
    )
    report.machine_facts = print_machine(args.scratch)
    print(
        f"cache bench: {args.entries:,} entries, {args.hits} timed hits x {args.repeats}, "
        f"{args.hash_files} x {args.hash_mib} MiB hashed, {args.misses} misses x "
        f"{args.repeats}; store and run folders in {args.scratch}, inputs in {args.hash_dir}"
    )
    report.load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="tether-bench-", dir=args.scratch) as scratch:
        asyncio.run(bench_store(report, Path(scratch)))
    print("hashing:")
    with tempfile.TemporaryDirectory(prefix="tether-bench-", dir=args.hash_dir) as folder:
        bench_hashing(report, Path(folder))
    report.load_after = [round(x, 2) for x in os.getloadavg()]
    print_summary(report)

    if report.hit["p50"] > report.max_hit_ms:
        report.missed_bars.append(f"hit p50 {report.hit['p50']:.3f} ms > {report.max_hit_ms} ms")
    if report.scale_hit and report.scale_ratio > report.max_scale_ratio:
        report.missed_bars.append(
            f"hit p50 at {report.scale_entries:,} entries is {report.scale_ratio:.2f} x "
            f"the {report.entries:,}-entry one (> {report.max_scale_ratio})"
        )
    if report.hash_ratio < report.min_hash_ratio:
        report.missed_bars.append(
            f"hashing ratio {report.hash_ratio:.3f} < {report.min_hash_ratio}"
        )
    report.passed = not report.missed_bars
    return finish(asdict(report), args.output, report.missed_bars)


if __name__ == "__main__":
    sys.exit(main())
