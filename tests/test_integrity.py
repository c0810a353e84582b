"""A pickle named by a record is unpickled only when it is proven tether's own."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

import tether
from tether import Call, LocalConfig, RunState

from .cli_support import CLI

pytestmark = pytest.mark.anyio


class _Boom:
    """Unpickling this creates a marker file: the proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


def _evil_pickle(marker: Path) -> bytes:
    return pickle.dumps({"ok": True, "value": _Boom(str(marker))})


async def test_calls_still_return_their_value(tmp_path: Path) -> None:
    backend = LocalConfig(runs_dir=tmp_path / "runs").create()
    handle = await backend.submit(Call(sum, [1, 2, 3]))
    result = await handle.wait()
    assert result.ok and result.value == 6
    again = await tether.load_handle(handle.run_dir / "handle.json")  # type: ignore[operator]
    assert (await again.wait()).value == 6


async def test_crafted_local_record_does_not_unpickle(tmp_path: Path) -> None:
    backend = LocalConfig(runs_dir=tmp_path / "runs").create()
    handle = await backend.submit(Call(sum, [1, 2]))
    await handle.wait()
    assert handle.run_dir is not None
    marker = tmp_path / "pwned"
    (handle.run_dir / "outcome.pkl").write_bytes(_evil_pickle(marker))  # signature now stale
    again = await tether.load_handle(handle.run_dir / "handle.json")
    result = await again.wait()
    assert not marker.exists(), "a crafted pickle was unpickled"
    assert result.state is RunState.FAILED
    assert "signature" in (result.error or "")


async def test_crafted_cached_hit_does_not_unpickle(tmp_path: Path) -> None:
    store = tether.DirectoryStore(tmp_path / "store")
    cached = tether.CachedBackend(LocalConfig(runs_dir=tmp_path / "runs").create(), store=store)
    first = await cached.submit(Call(sum, [4, 5]))
    await first.wait()
    hit = await cached.submit(Call(sum, [4, 5]))
    assert (await hit.wait()).value == 9
    assert hit.run_dir is not None
    record = json.loads((hit.run_dir / "handle.json").read_text())
    elsewhere = tmp_path / "attachment"
    elsewhere.mkdir(mode=0o700)
    marker = tmp_path / "pwned"
    (elsewhere / ".tether-outcome.pkl").write_bytes(_evil_pickle(marker))
    record["data"]["run_dir"] = str(elsewhere)
    crafted = tmp_path / "crafted.json"
    crafted.write_text(json.dumps(record))
    done = CLI(tmp_path)("status", crafted)
    assert "Traceback" not in done.stderr
    loaded = await tether.load_handle(crafted)
    await loaded.refresh()
    assert not marker.exists(), "a crafted pickle was unpickled"


def test_racing_key_creators_in_one_process_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Threads of one process creating the key at once (a cache restoring hits from
    worker threads) all get the same key, and no temporary file is left behind."""
    import threading

    from tether import _integrity

    monkeypatch.setenv("TETHER_HOME", str(tmp_path / "home"))
    barrier = threading.Barrier(8)
    keys: list[bytes] = []

    def create() -> None:
        barrier.wait()
        keys.append(_integrity.key())

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8 and len(set(keys)) == 1 and len(keys[0]) == 32
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["secret.key"]
