"""Per-call overhead of the Dask backend against raw ``client.submit`` on the same cluster.

Starts one ``LocalCluster`` (``--workers`` worker processes, default 2, 4 threads
each, on 127.0.0.1) and runs ``operator.neg(i)`` for i in 0..N-1 (default
N = 1,000) one call at a time, two ways, in the same process:

* **raw**: ``await client.submit(operator.neg, i, pure=False)``;
* **tether**: ``await (await backend.submit(Call(operator.neg, i))).wait()`` through
  ``DaskConfig(address=..., call_mode="thread")``, which makes a run folder per call,
  publishes each run on the scheduler and reads its outcome back.

``call_mode="process"`` (the default, where cancel and timeouts are hard) starts a
Python process per call on the worker; it is timed too with ``--process-calls``
calls (default 20), as information only. Each repeat (``--repeats``, default 3)
times both, in rotating order; the figure is ms per call, the bar is on the ratio
of the medians (tether / raw) ≤ ``--max-ratio`` (default 1.2).
Results go to ``bench/results/dask_bench.json``.

    python bench/dask_bench.py [--calls 1000] [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import operator
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _machine import finish  # bench/ is the script's folder, first on sys.path

import tether
from tether.backends.dask import close_clients, close_embedded

RESULTS = Path(__file__).resolve().parent / "results" / "dask_bench.json"


async def _raw(client: Any, calls: int) -> float:
    began = time.perf_counter()
    for i in range(calls):
        assert await client.submit(operator.neg, i, pure=False) == -i
    return (time.perf_counter() - began) / calls


async def _tether(config: tether.DaskConfig, calls: int) -> float:
    backend = config.create()
    began = time.perf_counter()
    for i in range(calls):
        result = await (await backend.submit(tether.Call(operator.neg, i))).wait()
        assert result.value == -i, result
    return (time.perf_counter() - began) / calls


async def main(args: argparse.Namespace) -> int:
    from distributed import Client, LocalCluster

    cluster = await LocalCluster(
        n_workers=args.workers,
        threads_per_worker=4,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        asynchronous=True,
    )
    with tempfile.TemporaryDirectory(prefix="tether-dask-bench-") as scratch:
        address = cluster.scheduler_address
        thread = tether.DaskConfig(address=address, runs_dir=Path(scratch), call_mode="thread")
        process = tether.DaskConfig(address=address, runs_dir=Path(scratch))
        raw_times: list[float] = []
        tether_times: list[float] = []
        async with Client(address, asynchronous=True) as client:
            await _raw(client, 20)  # warm-up: imports, connections
            await _tether(thread, 20)
            for repeat in range(args.repeats):
                pair = [("raw", _raw(client, args.calls)), ("tether", _tether(thread, args.calls))]
                for name, run in pair if repeat % 2 == 0 else pair[::-1]:
                    (raw_times if name == "raw" else tether_times).append(await run)
            process_time = await _tether(process, args.process_calls)
        await close_embedded()
        await close_clients()
        await cluster.close()
    raw, ours = statistics.median(raw_times), statistics.median(tether_times)
    ratio = ours / raw
    summary = {
        "calls": args.calls,
        "workers": args.workers,
        "raw_ms_per_call": [t * 1000 for t in raw_times],
        "tether_ms_per_call": [t * 1000 for t in tether_times],
        "ratio_of_medians": ratio,
        "process_mode_ms_per_call": process_time * 1000,
        "max_ratio": args.max_ratio,
    }
    print(
        f"raw {raw * 1000:.2f} ms/call, tether (thread calls) {ours * 1000:.2f} ms/call, "
        f"ratio {ratio:.2f} (bar {args.max_ratio}); process calls "
        f"{process_time * 1000:.1f} ms/call"
    )
    missed = [] if ratio <= args.max_ratio else [f"ratio {ratio:.2f} > {args.max_ratio}"]
    return finish(summary, RESULTS, missed)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--process-calls", type=int, default=20)
    parser.add_argument("--max-ratio", type=float, default=1.2)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse(sys.argv[1:]))))
