"""``tether run --cache`` and ``tether cache …`` through the real console script."""

from __future__ import annotations

import json
from pathlib import Path

from .cli_support import CLI

JOB = "name: stamp\ncommand: 'date +%s%N; date +%s%N > stamp.txt'\noutputs: [stamp.txt]\n"


def _store(cli: CLI) -> Path:
    return cli.tmp / "cache.sqlite"


def test_run_with_cache_runs_once_then_hits(cli: CLI) -> None:
    job = cli.write("job.yml", JOB)
    store = _store(cli)
    first = cli("run", job, "--cache-store", store, "--json")
    assert first.returncode == 0, first.stderr
    second = cli("run", job, "--cache-store", store)
    assert second.returncode == 0, second.stderr
    assert "from the cache" in second.stderr and "nothing ran" in second.stderr
    recorded = json.loads(first.stdout)
    assert second.stdout == Path(recorded["stdout"]).read_text()
    third = cli("run", job, "--cache-store", store, "--refresh", "--json")
    assert third.returncode == 0, third.stderr
    assert Path(json.loads(third.stdout)["stdout"]).read_text() != second.stdout
    fourth = cli("run", job, "--cache-store", store)
    assert fourth.stdout == Path(json.loads(third.stdout)["stdout"]).read_text()
    plain = cli("run", job)  # without --cache nothing is looked up
    assert plain.stdout != fourth.stdout and "from the cache" not in plain.stderr


def test_cache_commands(cli: CLI) -> None:
    store = _store(cli)
    for n in range(3):
        job = cli.write(f"job{n}.yml", f"name: job{n}\ncommand: echo {n}\n")
        assert cli("run", job, "--cache-store", store).returncode == 0
    stats = cli("cache", "stats", "--store", store, "--json")
    assert stats.returncode == 0, stats.stderr
    figures = json.loads(stats.stdout)
    assert figures["entries"] == 3 and figures["in_flight"] == 0 and figures["size"] > 0

    listing = json.loads(cli("cache", "ls", "--store", store, "--json").stdout)
    assert sorted(e["name"] for e in listing) == ["job0", "job1", "job2"]
    table = cli("cache", "ls", "--store", store).stdout.splitlines()
    assert table[0].split()[:3] == ["KEY", "NAME", "BACKEND"] and len(table) == 4

    key = listing[0]["key"]
    shown = cli("cache", "show", key[:10], "--store", store)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["key"] == key
    missing = cli("cache", "show", "ffffffffff", "--store", store)
    assert missing.returncode == 2 and missing.stderr.startswith("tether: error: No cache entry")

    bad = cli("cache", "prune", "--max-size", "lots", "--store", store)
    assert bad.returncode == 2 and "--max-size" in bad.stderr and "Traceback" not in bad.stderr
    pruned = cli("cache", "prune", "--max-size", "1", "--store", store)
    assert pruned.returncode == 0, pruned.stderr
    assert json.loads(cli("cache", "stats", "--store", store, "--json").stdout)["entries"] <= 1

    cleared = cli("cache", "clear", "--store", store)
    assert cleared.returncode == 0 and "removed" in cleared.stderr
    assert json.loads(cli("cache", "stats", "--store", store, "--json").stdout)["entries"] == 0


def test_cache_store_path_that_cannot_exist(cli: CLI) -> None:
    proc = cli("cache", "stats", "--store", cli.tmp / "no" / "such" / "cache.sqlite")
    assert proc.returncode == 2
    assert proc.stderr.startswith("tether: error: Cache store") and "Traceback" not in proc.stderr


def test_prune_says_which_unused_blobs_it_keeps_and_why(cli: CLI) -> None:
    """Unused blobs younger than the grace period stay (a run may be recording them):
    ``tether cache prune`` says so, with their number, size and when to come back."""
    from tether import SQLiteStore

    store = _store(cli)
    job = cli.write("job.yml", JOB)
    assert cli("run", job, "--cache-store", store).returncode == 0
    opened = SQLiteStore(store)
    [entry] = opened.entries()
    opened.delete(entry.key)  # its blobs are unused now, and young
    pruned = cli("cache", "prune", "--store", store)
    assert pruned.returncode == 0, pruned.stderr
    lines = pruned.stderr.splitlines()
    assert lines[0] == "tether: freed 0 B of unused blobs"
    assert "unused blob" in lines[1] and "younger than 10 minutes" in lines[1]
    assert "prune again later" in lines[1]
