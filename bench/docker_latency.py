"""Per-container latency of the Docker backend against raw aiodocker and the docker CLI.

Runs ``true`` in ``tether-test/busybox:import`` (no registry needed) three ways, in
the same process:

* **raw**: one reused ``aiodocker.Docker`` client does create + start + wait +
  delete, with the container options of tether's that matter (``NetworkMode: none``,
  ``Init: true``, no auto-remove). tether also bind-mounts the run folder; raw does
  not, unless ``--raw-bind`` gives it a fresh folder of its own too;
* **tether**: ``await DockerConfig(image=..., runs_dir=...).create().submit(job)``,
  then ``await handle.wait()``, which records the logs and ``exit.json`` and removes
  the container;
* **cli**: ``docker run --rm --network none IMAGE true`` through
  ``asyncio.create_subprocess_exec`` (plus a label, so that leftovers can be found).

Each path runs once to warm up. Then for each of R repeats (``--repeats``, default
5) and each of two modes, every path runs a batch of N containers (default 10),
the order of the paths rotating from repeat to repeat so that drifts in machine load
hit all alike:

* **sequential**: one container after another; the figure is the median of the N
  latencies (from the start of create / submit / exec until the container is
  removed / the result recorded / the CLI exits);
* **concurrent**: all N at once (``asyncio.gather``); the figures are the batch's
  wall time / N and the median of the N latencies.

The medians over the repeats are printed and written to
``bench/results/docker_latency.json``. The bar is on sequential latency: tether /
raw must be at most ``--max-ratio`` (1.2); the aim is 1.1. The exit status is 1 when
the bar is missed, a run fails, or a container is left behind.

Usage::

    python bench/docker_latency.py [--containers 10] [--repeats 5] [--max-ratio 1.2]
                                   [--image IMAGE] [--raw-bind] [--scratch DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _machine import finish, scratch_folder  # bench/ is the script's folder, first on sys.path

if TYPE_CHECKING:
    import aiodocker

RESULTS = Path(__file__).resolve().parent / "results" / "docker_latency.json"
IMAGE = "tether-test/busybox:import"
AIM_RATIO = 1.1
PATHS = ("raw", "tether", "cli")
MODES = ("sequential", "concurrent")
#: Label on the containers of the raw and cli paths (value: the path), for the leak check.
BENCH_LABEL = "tether.bench"

One = Callable[[], Awaitable[float]]


@dataclass
class Report:
    """Everything the bench measured, as written to the JSON results file.

    Latencies are in milliseconds. ``per_repeat[metric][path]`` has one figure per
    repeat, ``medians[metric][path]`` their median; the metrics are ``sequential``
    (median latency), ``concurrent_wall`` (batch wall time / N) and
    ``concurrent_median`` (median latency within the concurrent batch).
    """

    image: str
    containers: int
    repeats: int
    max_ratio: float
    aim_ratio: float
    raw_bind: bool
    scratch: str
    engine: dict[str, str] = field(default_factory=dict)
    docker_cli: str = ""
    aiodocker: str = ""
    per_repeat: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    medians: dict[str, dict[str, float]] = field(default_factory=dict)
    ratios: dict[str, dict[str, float]] = field(default_factory=dict)
    samples: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)
    ratio: float = 0.0
    meets_aim: bool = False
    leftover_containers: list[str] = field(default_factory=list)
    passed: bool = False
    python: str = platform.python_version()
    machine: str = f"{platform.system()} {platform.release()} {platform.machine()}"
    cpus: int = os.cpu_count() or 0


def ms_since(began: float) -> float:
    """Milliseconds elapsed since ``began`` (a ``time.perf_counter()`` reading)."""
    return (time.perf_counter() - began) * 1000


def make_raw_once(client: aiodocker.Docker, image: str, bind_root: Path | None) -> One:
    """One container through the reused aiodocker client: create, start, wait, delete."""
    host: dict[str, Any] = {"NetworkMode": "none", "Init": True, "AutoRemove": False}
    spec: dict[str, Any] = {
        "Image": image,
        "Cmd": ["true"],
        "Labels": {BENCH_LABEL: "raw"},
        "AttachStdout": False,
        "AttachStderr": False,
        "HostConfig": host,
    }

    async def once() -> float:
        began = time.perf_counter()
        body = spec
        if bind_root is not None:  # like tether's run folder: a fresh one, mounted rw
            folder = Path(tempfile.mkdtemp(dir=bind_root))
            body = {
                **spec,
                "WorkingDir": "/tether/run",
                "HostConfig": {**host, "Binds": [f"{folder}:/tether/run:rw"]},
            }
        container = await client.containers.create(body)
        await container.start()
        status = (await container.wait()).get("StatusCode")
        await container.delete(v=True)
        if status != 0:
            raise RuntimeError(f"raw container {container.id[:12]} exited with {status}")
        return ms_since(began)

    return once


def make_tether_once(image: str, runs_dir: Path) -> One:
    """One run through tether's Docker backend: submit, then wait for the result."""
    import tether

    backend = tether.DockerConfig(image=image, runs_dir=runs_dir).create()
    job = tether.Job(name="bench", command=["true"])

    async def once() -> float:
        began = time.perf_counter()
        handle = await backend.submit(job)
        result = await handle.wait()
        if result.state is not tether.RunState.SUCCEEDED:
            raise RuntimeError(f"tether run {result.run_id} ended {result.state.value}: {result}")
        return ms_since(began)

    return once


def make_cli_once(image: str) -> One:
    """One ``docker run --rm --network none IMAGE true`` through the docker CLI."""
    argv = ["docker", "run", "--rm", "--network", "none", "--label", f"{BENCH_LABEL}=cli"]
    argv += [image, "true"]

    async def once() -> float:
        began = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"docker run exited with {proc.returncode}: {err.decode()}")
        return ms_since(began)

    return once


async def sequential(one: One, count: int) -> list[float]:
    """``count`` containers one after another; their latencies."""
    return [await one() for _ in range(count)]


async def concurrent(one: One, count: int) -> tuple[float, list[float]]:
    """``count`` containers at once; the batch's wall time and their latencies."""
    began = time.perf_counter()
    latencies = await asyncio.gather(*(one() for _ in range(count)))
    return ms_since(began), list(latencies)


async def describe(report: Report, client: aiodocker.Docker) -> None:
    """Record the engine, CLI and aiodocker versions in ``report``."""
    import aiodocker

    version = await client.version()
    keys = ("Version", "ApiVersion", "KernelVersion", "Os", "Arch")
    report.engine = {key: str(version.get(key, "")) for key in keys}
    report.aiodocker = aiodocker.__version__
    proc = await asyncio.create_subprocess_exec(
        "docker", "version", "--format", "{{.Client.Version}}", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    report.docker_cli = out.decode().strip()


async def leftovers(client: aiodocker.Docker, runs_dir: Path) -> list[str]:
    """Remove and name this bench's containers still on the engine.

    Those are the raw and cli paths' (``tether.bench`` label) and tether's whose run
    folder is under ``runs_dir``; other tether containers (a test suite running at
    the same time) are left alone.
    """
    found = []
    for label in (BENCH_LABEL, "tether.run_id"):
        filters = json.dumps({"label": [label]})
        for info in await client.containers.list(all=True, filters=filters):
            labels = info["Labels"] or {}
            run_dir = labels.get("tether.run_dir", "")
            if label == "tether.run_id" and not run_dir.startswith(f"{runs_dir}/"):
                continue
            found.append(f"{info.id[:12]} ({labels.get(BENCH_LABEL) or 'tether'})")
            await info.delete(force=True, v=True)
    return found


async def bench(report: Report, scratch: Path) -> None:
    """Warm up, then time the rotated (raw, tether, cli) batches into ``report``."""
    import aiodocker

    runs_dir = scratch / "runs"
    bind_root = scratch / "raw-binds" if report.raw_bind else None
    for folder in (runs_dir, bind_root):
        if folder is not None:
            folder.mkdir()
    metrics = ("sequential", "concurrent_wall", "concurrent_median")
    report.per_repeat = {m: {p: [] for p in PATHS} for m in metrics}
    report.samples = {m: {p: [] for p in PATHS} for m in MODES}
    n = report.containers
    async with aiodocker.Docker() as client:
        try:
            await describe(report, client)
            ones: dict[str, One] = {
                "raw": make_raw_once(client, report.image, bind_root),
                "tether": make_tether_once(report.image, runs_dir),
                "cli": make_cli_once(report.image),
            }
            for path in PATHS:
                await ones[path]()
            for i in range(report.repeats):
                order = PATHS[i % 3 :] + PATHS[: i % 3]
                for path in order:
                    latencies = await sequential(ones[path], n)
                    report.samples["sequential"][path].append(latencies)
                    report.per_repeat["sequential"][path].append(statistics.median(latencies))
                for path in order:
                    wall, latencies = await concurrent(ones[path], n)
                    report.samples["concurrent"][path].append(latencies)
                    report.per_repeat["concurrent_wall"][path].append(wall / n)
                    report.per_repeat["concurrent_median"][path].append(
                        statistics.median(latencies)
                    )
                figures = "   ".join(
                    f"{path} {report.per_repeat['sequential'][path][-1]:6.1f}"
                    f"/{report.per_repeat['concurrent_wall'][path][-1]:6.1f}"
                    for path in PATHS
                )
                print(f"  repeat {i + 1}/{report.repeats} (seq/conc ms): {figures}", flush=True)
        finally:
            report.leftover_containers = await leftovers(client, runs_dir)

    report.medians = {
        metric: {path: statistics.median(values) for path, values in by_path.items()}
        for metric, by_path in report.per_repeat.items()
    }
    report.ratios = {
        metric: {
            "tether/raw": med["tether"] / med["raw"],
            "tether/cli": med["tether"] / med["cli"],
            "cli/raw": med["cli"] / med["raw"],
        }
        for metric, med in report.medians.items()
    }
    report.ratio = report.ratios["sequential"]["tether/raw"]
    report.meets_aim = report.ratio <= report.aim_ratio
    report.passed = report.ratio <= report.max_ratio and not report.leftover_containers


def print_table(report: Report) -> None:
    """The summary table: per-repeat figures, medians and ratios, in ms per container."""
    header = f"{'':26}" + "".join(f"{f'#{i + 1}':>8}" for i in range(report.repeats))
    print(f"\n{header}{'median':>9}")
    titles = {
        "sequential": "sequential, median",
        "concurrent_wall": f"{report.containers} at once, wall/{report.containers}",
        "concurrent_median": f"{report.containers} at once, median",
    }
    for metric, by_path in report.per_repeat.items():
        for path, values in by_path.items():
            row = "".join(f"{v:8.1f}" for v in values)
            print(f"{titles[metric]:19} {path:6}{row}{report.medians[metric][path]:9.1f}")
    print()
    for metric, ratios in report.ratios.items():
        text = "   ".join(f"{name} {value:.3f}" for name, value in ratios.items())
        print(f"{titles[metric]:26}{text}")
    aim = "meets" if report.meets_aim else "misses"
    print(
        f"\nsequential tether/raw: {report.ratio:.3f}  (bar: <= {report.max_ratio}; "
        f"{aim} the aim of <= {report.aim_ratio})"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=10, help="containers per batch (10)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of all batches (5)")
    parser.add_argument(
        "--max-ratio",
        type=float,
        default=1.2,
        help="fail when tether's sequential median latency / raw's is above this (1.2)",
    )
    parser.add_argument("--image", default=IMAGE, help=f"image to run true in ({IMAGE})")
    parser.add_argument(
        "--raw-bind",
        action="store_true",
        help="give each raw container a fresh bind-mounted folder, like tether's run folder",
    )
    parser.add_argument(
        "--scratch",
        type=Path,
        default=None,
        help="folder for the temporary run folders (default: tether's state folder, "
        "where users' runs go)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    if args.containers < 1 or args.repeats < 1:
        parser.error("--containers and --repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the bench; return the process exit status."""
    args = parse_args(argv)
    if shutil.which("docker") is None:
        print("FAIL: the docker CLI is not on PATH", file=sys.stderr)
        return 1
    args.scratch = scratch_folder(args.scratch)
    report = Report(
        image=args.image,
        containers=args.containers,
        repeats=args.repeats,
        max_ratio=args.max_ratio,
        aim_ratio=AIM_RATIO,
        raw_bind=args.raw_bind,
        scratch=str(args.scratch),
    )
    print(
        f"docker latency: true in {args.image}, batches of {args.containers} (sequential "
        f"and concurrent), {args.repeats} repeats, raw bind mount: {args.raw_bind}, "
        f"run folders in {report.scratch}"
    )
    with tempfile.TemporaryDirectory(prefix="tether-bench-", dir=args.scratch) as scratch:
        asyncio.run(bench(report, Path(scratch)))
    print(
        f"  engine {report.engine.get('Version')} (API {report.engine.get('ApiVersion')}), "
        f"docker CLI {report.docker_cli}, aiodocker {report.aiodocker}"
    )
    print_table(report)

    missed = []
    if report.leftover_containers:
        missed.append(
            f"{len(report.leftover_containers)} container(s) left behind (now removed): "
            + ", ".join(report.leftover_containers)
        )
    if report.ratio > report.max_ratio:
        missed.append(
            f"a container through tether takes {report.ratio:.3f} times as long as "
            f"through raw aiodocker ({report.medians['sequential']['tether']:.1f} vs "
            f"{report.medians['sequential']['raw']:.1f} ms), above the bar of "
            f"{report.max_ratio}"
        )
    return finish(asdict(report), args.output, missed)


if __name__ == "__main__":
    sys.exit(main())
