"""map_calls and Ensemble: order, failures, concurrency, and seeds that give the same
numbers on every backend."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

import tether
from tether import (
    CachedBackend,
    Call,
    ConfigError,
    DummyConfig,
    Ensemble,
    InlineBackend,
    InlineConfig,
    Job,
    LocalConfig,
    MapError,
    RunFailedError,
    RunState,
    SQLiteStore,
    map_calls,
)

from . import calls_support as cs

pytestmark = pytest.mark.anyio

ROOT_SEED = 20260101
SHIFT = 0.5
_graces = itertools.count()


def fresh_grace() -> float:
    """A cancel_grace no other test uses: an inline pool of this test's own."""
    return 0.7 + next(_graces) / 1000


def expected(n: int, seed: int = ROOT_SEED) -> list[list[float]]:
    """Member i's values, worked out here from numpy's SeedSequence rule."""
    children = np.random.SeedSequence(seed).spawn(n)
    return [cs.mc_worker(child, SHIFT) for child in children]


class RecordingInline(InlineBackend):
    """An inline backend that keeps every handle it gives out."""

    def __init__(self, config: InlineConfig) -> None:
        super().__init__(config)
        self.handles: list[tether.RunHandle] = []

    async def submit(self, job: Job) -> Any:
        handle = await super().submit(job)
        self.handles.append(handle)
        return handle


# -- determinism --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        InlineConfig(mode="sequential"),
        InlineConfig(mode="threads", n_jobs=1),
        InlineConfig(mode="threads", n_jobs=3),
        InlineConfig(mode="processes", n_jobs=1),
        InlineConfig(mode="processes", n_jobs=2),
    ],
    ids=["sequential", "threads-1", "threads-3", "processes-1", "processes-2"],
)
async def test_same_values_on_every_inline_mode(config: InlineConfig) -> None:
    values = await Ensemble(cs.mc_worker, 50, seed=ROOT_SEED, args=(SHIFT,)).run(config)
    assert values == expected(50)  # bit-identical floats
    assert len({tuple(v) for v in values}) == 50


async def test_same_values_on_the_local_backend(tmp_path: Path) -> None:
    ensemble = Ensemble("tests.calls_support:mc_worker", 6, seed=ROOT_SEED, args=(SHIFT,))
    values = await ensemble.run(LocalConfig(runs_dir=tmp_path / "runs"))
    assert values == expected(6)


def test_run_sync_gives_the_same_values() -> None:
    ensemble = Ensemble(cs.mc_worker, 8, seed=ROOT_SEED, kwargs={"x": SHIFT})
    assert ensemble.run_sync(InlineConfig(mode="threads", n_jobs=2)) == expected(8)
    assert ensemble.run_sync() == expected(8)  # default: sequential inline


async def test_different_root_seeds_differ() -> None:
    config = InlineConfig(mode="threads", n_jobs=2)
    one = await Ensemble(cs.mc_worker, 10, seed=1, args=(SHIFT,)).run(config)
    two = await Ensemble(cs.mc_worker, 10, seed=2, args=(SHIFT,)).run(config)
    assert all(a != b for a, b in zip(one, two, strict=True))
    assert not set(map(tuple, one)) & set(map(tuple, two))


async def test_member_i_does_not_depend_on_the_ensemble_size() -> None:
    config = InlineConfig(mode="threads", n_jobs=2)
    small = await Ensemble(cs.mc_worker, 10, seed=ROOT_SEED, args=(SHIFT,)).run(config)
    large = await Ensemble(cs.mc_worker, 20, seed=ROOT_SEED, args=(SHIFT,)).run(config)
    assert large[:10] == small
    ints_small = Ensemble(cs.mc_worker, 10, seed=5, seed_as="int").seeds()
    assert Ensemble(cs.mc_worker, 20, seed=5, seed_as="int").seeds()[:10] == ints_small


async def test_seed_as_int() -> None:
    ensemble = Ensemble(cs.seed_type, 12, seed=ROOT_SEED, seed_as="int")
    seeds = ensemble.seeds()
    assert all(type(s) is int and 0 <= s < 2**64 for s in seeds)
    assert len(set(seeds)) == 12
    assert seeds == ensemble.seeds()  # reproducible
    assert await ensemble.run(InlineConfig(mode="processes", n_jobs=2)) == ["int"] * 12
    default = Ensemble(cs.seed_type, 3, seed=ROOT_SEED)
    assert await default.run() == ["SeedSequence"] * 3
    # Int seeds give the same numbers wherever the member runs.
    by_int = Ensemble(cs.mc_worker, 6, seed=ROOT_SEED, args=(SHIFT,), seed_as="int")
    here = [cs.mc_worker(seed, SHIFT) for seed in by_int.seeds()]
    assert await by_int.run(InlineConfig(mode="processes", n_jobs=2)) == here
    assert here != expected(6)


def test_seeds_follow_numpy_spawn() -> None:
    seeds = Ensemble(cs.mc_worker, 4, seed=99).seeds()
    children = np.random.SeedSequence(99).spawn(4)
    assert [s.entropy for s in seeds] == [c.entropy for c in children] == [99] * 4
    assert [s.spawn_key for s in seeds] == [(0,), (1,), (2,), (3,)]
    assert [s.generate_state(2).tolist() for s in seeds] == [
        c.generate_state(2).tolist() for c in children
    ]


def test_no_seed_picks_one_and_keeps_it() -> None:
    ensemble = Ensemble(cs.mc_worker, 3)
    assert isinstance(ensemble.seed, int) and ensemble.seed >= 0
    again = Ensemble(cs.mc_worker, 3, seed=ensemble.seed)
    assert [s.generate_state(4).tolist() for s in ensemble.seeds()] == [
        s.generate_state(4).tolist() for s in again.seeds()
    ]
    assert Ensemble(cs.mc_worker, 3).seed != ensemble.seed


# -- member identity: handles and cache keys ---------------------------------------------


def test_calls_carry_the_member_seed() -> None:
    calls = Ensemble(cs.mc_worker, 4, seed=7, args=(SHIFT,)).calls()
    assert [c.seed for c in calls] == [{"root": 7, "member": i} for i in range(4)]
    assert all(c.target == "tests.calls_support:mc_worker" for c in calls)
    assert [c.args[1:] for c in calls] == [(SHIFT,)] * 4
    assert len({c.payload_digest() for c in calls}) == 4
    assert [c.payload_digest() for c in calls] == [
        c.payload_digest() for c in Ensemble(cs.mc_worker, 4, seed=7, args=(SHIFT,)).calls()
    ]
    assert calls[2].to_record()["seed"] == {"root": 7, "member": 2}
    assert repr(Ensemble(cs.mc_worker, 4, seed=7)) == "Ensemble(mc_worker, n=4, seed=7)"


async def test_member_seed_is_in_the_saved_handle(tmp_path: Path) -> None:
    call = Ensemble(cs.mc_worker, 5, seed=7, args=(SHIFT,)).calls()[3]
    inline = await InlineConfig(mode="threads", n_jobs=2).create().submit(call)
    path = await inline.save(tmp_path / "member.json")
    assert json.loads(path.read_text())["job"]["seed"] == {"root": 7, "member": 3}
    again = await tether.load_handle(path)
    assert isinstance(again.job, Call) and again.job.seed == {"root": 7, "member": 3}
    assert (await again.wait(10)).value == expected(5, 7)[3]

    local = await LocalConfig(runs_dir=tmp_path / "runs").create().submit(call)
    assert local.run_dir is not None
    record = json.loads((local.run_dir / "handle.json").read_text())
    assert record["job"]["seed"] == {"root": 7, "member": 3}
    reloaded = await tether.load_handle(local.run_dir / "handle.json")
    assert reloaded.job.seed == {"root": 7, "member": 3}  # type: ignore[attr-defined]
    assert (await reloaded.wait(30)).value == expected(5, 7)[3]


@pytest.mark.parametrize("seed_as", ["sequence", "int"])
async def test_members_never_share_a_cache_entry(tmp_path: Path, seed_as: str) -> None:
    store = SQLiteStore(tmp_path / "cache.sqlite")
    backend = CachedBackend(InlineConfig(mode="threads", n_jobs=2).create(), store)
    ensemble = Ensemble(cs.mc_worker, 8, seed=11, args=(SHIFT,), seed_as=seed_as)  # type: ignore[arg-type]
    first = [await backend.submit(c) for c in ensemble.calls()]
    assert not any(h.hit for h in first)
    assert len({h.key for h in first}) == 8
    values = [(await h.wait(10)).value for h in first]
    assert len({tuple(v) for v in values}) == 8

    second = [await backend.submit(c) for c in ensemble.calls()]
    assert all(h.hit for h in second)
    assert [h.key for h in second] == [h.key for h in first]
    assert [(await h.wait()).value for h in second] == values

    other_root = Ensemble(cs.mc_worker, 8, seed=12, args=(SHIFT,), seed_as=seed_as)  # type: ignore[arg-type]
    third = [await backend.submit(c) for c in other_root.calls()]
    assert not any(h.hit for h in third)
    assert not {h.key for h in third} & {h.key for h in first}
    for handle in third:
        await handle.wait(10)


async def test_members_hit_across_ensemble_sizes_and_inline_modes(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "cache.sqlite")
    sequential = CachedBackend(InlineConfig(mode="sequential").create(), store)
    recorded = await Ensemble(cs.mc_worker, 8, seed=21, args=(SHIFT,)).run(sequential)
    processes = CachedBackend(InlineConfig(mode="processes", n_jobs=2).create(), store)
    smaller = Ensemble(cs.mc_worker, 3, seed=21, args=(SHIFT,)).calls()
    handles = [await processes.submit(c) for c in smaller]
    assert [h.hit for h in handles] == [True, True, True]
    assert [(await h.wait()).value for h in handles] == recorded[:3]
    changed = await processes.submit(Ensemble(cs.mc_worker, 3, seed=21, args=(1.0,)).calls()[0])
    assert not changed.hit
    await changed.wait(10)


async def test_ensemble_through_a_cache_runs_each_member_once(tmp_path: Path) -> None:
    backend = CachedBackend(
        InlineConfig(mode="threads", n_jobs=2).create(), SQLiteStore(tmp_path / "c.sqlite")
    )
    ensemble = Ensemble(cs.mc_worker, 6, seed=3, args=(SHIFT,))
    assert await ensemble.run(backend) == expected(6, 3)
    assert await ensemble.run(backend) == expected(6, 3)
    results = await ensemble.run_results(backend)
    assert all(r.ok for r in results)


# -- map_calls ------------------------------------------------------------------------------


async def test_map_calls_keeps_input_order() -> None:
    # Later items finish first; the values still come back in input order.
    backend = InlineConfig(mode="threads", n_jobs=5)
    began = time.monotonic()
    assert await map_calls(cs.later, range(6), backend=backend) == list(range(6))
    assert time.monotonic() - began < 3
    assert await map_calls(cs.square, [3, 1, 2], backend=InlineConfig(mode="processes")) == [
        9,
        1,
        4,
    ]


async def test_map_calls_arguments_and_defaults() -> None:
    assert await map_calls(cs.add, [1, 2, 3], args=(10,), kwargs={"c": 100}) == [111, 112, 113]
    assert await map_calls("tests.calls_support:square", (i for i in range(4))) == [0, 1, 4, 9]
    assert await map_calls(cs.square, []) == []
    assert await map_calls(lambda x: -x, [1, 2], backend=InlineConfig(mode="processes")) == [
        -1,
        -2,
    ]


async def test_map_calls_on_the_local_backend(tmp_path: Path) -> None:
    backend = LocalConfig(runs_dir=tmp_path / "runs").create()
    assert await map_calls(cs.square, [4, 5, 6], backend=backend) == [16, 25, 36]


async def test_map_calls_fail_fast_raises_the_call_exception() -> None:
    backend = InlineConfig(mode="threads", n_jobs=2)
    with pytest.raises(ValueError, match=r"^bad item 3$"):
        await map_calls(cs.fail_if, range(6), args=(3,), backend=backend)
    with pytest.raises(RunFailedError, match="exited with code 2") as caught:
        await map_calls(cs.exit_with, [0, 2], backend=backend)
    assert caught.value.result.exit_code == 2


async def test_submit_errors_are_raised_as_themselves() -> None:
    with pytest.raises(ConfigError, match="Cannot import call target"):
        await map_calls("tests.no_such_module_xyz:f", [1, 2], backend=InlineConfig(mode="threads"))


async def test_fail_fast_cancels_the_calls_still_running() -> None:
    backend = RecordingInline(InlineConfig(mode="processes", n_jobs=2, cancel_grace=fresh_grace()))
    began = time.monotonic()
    try:
        with pytest.raises(ValueError, match="fast failure"):
            await map_calls(cs.sleep_unless_fail, [0, 1], backend=backend)
        assert time.monotonic() - began < 4
        states = [await h.refresh() for h in backend.handles]
        assert states == [RunState.FAILED, RunState.CANCELLED]
    finally:
        for handle in backend.handles:
            await handle.cancel()


async def test_cancelled_map_calls_cancels_its_calls() -> None:
    backend = RecordingInline(InlineConfig(mode="processes", n_jobs=2, cancel_grace=fresh_grace()))
    try:
        with anyio.move_on_after(0.5):
            await map_calls(cs.sleep_then, [20, 20], backend=backend)
        assert len(backend.handles) == 2
        assert [await h.refresh() for h in backend.handles] == [RunState.CANCELLED] * 2
    finally:
        for handle in backend.handles:
            await handle.cancel()


async def test_keep_going_collects_every_result() -> None:
    backend = InlineConfig(mode="threads", n_jobs=2)
    with pytest.raises(MapError) as caught:
        await map_calls(cs.fail_if, range(5), args=(2,), backend=backend, keep_going=True)
    err = caught.value
    assert str(err) == "1 of 5 calls failed; first: ValueError: bad item 2"
    assert [r.value for r in err.results] == [0, 1, None, 3, 4]
    assert [r.state for r in err.results] == [RunState.SUCCEEDED] * 2 + [RunState.FAILED] + [
        RunState.SUCCEEDED
    ] * 2
    assert err.failures == [err.results[2]]
    assert isinstance(err.failures[0].exception, ValueError)
    assert err.failures[0].error == "ValueError: bad item 2"
    assert await map_calls(cs.square, [1, 2], backend=backend, keep_going=True) == [1, 4]


async def test_keep_going_with_an_ensemble() -> None:
    ensemble = Ensemble(cs.seed_type, 3, seed=1, seed_as="int")
    results = await ensemble.run_results(InlineConfig(mode="threads"), keep_going=True)
    assert [(r.ok, r.value) for r in results] == [(True, "int")] * 3


async def test_max_concurrency_is_respected() -> None:
    backend = InlineConfig(mode="threads", n_jobs=4, cancel_grace=fresh_grace())
    cs.reset_concurrency()
    slow = {"seconds": 0.1}
    values = await map_calls(cs.counted_sleep, range(12), backend=backend, kwargs=slow)
    assert values == list(range(12))
    unlimited = cs.peak_concurrency()
    cs.reset_concurrency()
    await map_calls(cs.counted_sleep, range(12), backend=backend, kwargs=slow, max_concurrency=2)
    limited = cs.peak_concurrency()
    assert unlimited >= 3  # the count works: four threads do run at once
    assert 1 <= limited <= 2
    cs.reset_concurrency()
    await map_calls(cs.counted_sleep, range(6), backend=backend, max_concurrency=1)
    assert cs.peak_concurrency() == 1


async def test_bad_max_concurrency() -> None:
    with pytest.raises(ConfigError, match="max_concurrency must be at least 1, not -1"):
        await map_calls(cs.square, [1], max_concurrency=-1)


async def test_zero_max_concurrency_is_refused() -> None:
    with pytest.raises(ConfigError, match="max_concurrency must be at least 1"):
        await map_calls(cs.square, [1], max_concurrency=0)


async def test_backend_that_runs_no_calls_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not run Call jobs"):
        await map_calls(cs.square, [1], backend=DummyConfig(runs_dir=tmp_path))
    with pytest.raises(ConfigError, match="does not run Call jobs"):
        await Ensemble(cs.mc_worker, 2, seed=1).run(DummyConfig(runs_dir=tmp_path))


async def test_progress_true_without_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    values = await map_calls(cs.square, range(5), progress=True)
    assert values == [0, 1, 4, 9, 16]
    assert await Ensemble(cs.seed_type, 3, seed=1).run(progress=True) == ["SeedSequence"] * 3
    out, err = capsys.readouterr()
    assert "5/5" in out + err and "3/3" in out + err
    assert await map_calls(cs.square, [2], progress=False) == [4]
    assert await map_calls(cs.square, [3]) == [9]  # default: no bar (stderr is no terminal)
    assert capsys.readouterr() == ("", "")


async def test_progress_bar_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    await map_calls(cs.square, range(5), progress=True)
    out, err = capsys.readouterr()
    assert "5/5" in err and out == ""


# -- bad ensembles ------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, -1, True, 2.5, "3", None])
def test_bad_member_counts(n: Any) -> None:
    with pytest.raises(ConfigError, match="an ensemble needs n >= 1 members"):
        Ensemble(cs.mc_worker, n, seed=1)


@pytest.mark.parametrize("seed", [-1, True, 1.5, "7", [1]])
def test_bad_root_seeds(seed: Any) -> None:
    with pytest.raises(ConfigError, match="the root seed must be a non-negative int"):
        Ensemble(cs.mc_worker, 2, seed=seed)


def test_bad_seed_as() -> None:
    with pytest.raises(ConfigError, match="seed_as must be 'sequence' or 'int'"):
        Ensemble(cs.mc_worker, 2, seed=1, seed_as="float")  # type: ignore[arg-type]


def test_huge_root_seed_is_fine() -> None:
    seeds = Ensemble(cs.mc_worker, 2, seed=2**100 + 1).seeds()
    assert seeds[0].entropy == 2**100 + 1
