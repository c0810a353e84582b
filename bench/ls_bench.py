"""``tether ls`` over a runs folder of 10,000 runs (and of 1,000, for flatness).

The runs folders are made quickly but realistically: a handful of real runs are made
through the library (local: succeeded, failed with a line on stderr, ``/bin/true``,
cancelled; one dummy-backend run) and their folders copied, each copy under a new
unique run id with its ``handle.json`` rewritten to name its own folder and its
mtime spread over the last week (mostly successes, 15 % failures, 8 % cancels, 2 %
dummy runs, which a listing loads in full). One local copy in 50 lacks its
``exit.json`` (a supervisor killed before it could record a status: LOST), and one
real local run (``sleep 600``) is left going, so that liveness is checked too.

Each repeat runs, in a shuffled order, ``python -c pass`` and the real ``tether ls
RUNS_DIR`` console script (a fresh process, stdout to a file) over an empty folder,
1,000 runs and 10,000 runs. The figures are medians over ``--repeats`` (at least 3);
the per-run cost is (time - empty-folder time) / runs.

**Bar:** the median at 10,000 runs ≤ ``--max-seconds`` (2 s). The flatness ratio,
time per run at 10,000 over time per run at 1,000, is reported (1.0: the cost per run
stays the same as the folder grows; below 1, fixed costs such as start-up and the
first full handle load weigh less), and so is what each run past 1,000 adds. The
listing is checked first (one row per run; the mix of states is printed). The
folders go in a temporary folder in ``--scratch`` (default: tether's state folder,
where runs go) and are removed at the end, the live run cancelled. Results go to
``bench/results/ls_bench.json``; the exit status is 1 when the bar is missed.

Usage::

    python bench/ls_bench.py [--runs 10000] [--small 1000] [--repeats 5]
                             [--max-seconds 2.0] [--scratch DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import finish, print_machine, scratch_folder

RESULTS = Path(__file__).resolve().parent / "results" / "ls_bench.json"
SEED = 20261204
#: How often each template (by job name) is copied, relative to the others.
WEIGHTS = {"sim": 60.0, "sim-bad": 15.0, "train": 15.0, "cancelled": 8.0, "dummy": 2.0}


async def _templates(runs: Path) -> list[Path]:
    """Real run folders, one per kind of run; the running one is left going."""
    from tether import DummyConfig, Job, LocalConfig

    backend = LocalConfig(runs_dir=runs, timeout=60).create()
    folders: list[Path] = []
    jobs = [
        Job(name="sim", command="echo hello; echo progress >&2"),
        Job(name="sim-bad", command="echo 'boom: no such input' >&2; exit 3"),
        Job(name="train", command=["/bin/true"]),
    ]
    for job in jobs:
        handle = await backend.submit(job)
        await handle.wait()
        folders.append(runs / handle.run_id)
    slow = await backend.submit(Job(name="cancelled", command="sleep 60"))
    await slow.cancel()
    folders.append(runs / slow.run_id)
    dummy = await DummyConfig(runs_dir=runs, stdout="ok\n").create().submit(Job(name="dummy"))
    await dummy.wait()
    folders.append(runs / dummy.run_id)
    long = LocalConfig(runs_dir=runs, timeout=3600).create()
    running = await long.submit(Job(name="live", command="sleep 600"))
    await running.save(runs / running.run_id / "handle.json")
    return folders


def _rewrite(record: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    text = json.dumps(record).replace(old, new)
    copy: dict[str, Any] = json.loads(text)
    return copy


def populate(runs: Path, count: int, templates: list[Path]) -> None:
    """Fill ``runs`` with ``count`` run folders copied from ``templates``."""
    rng = random.Random(SEED)
    now = time.time()
    present = {p.name for p in runs.iterdir()}
    made = len(present)
    sources = [(t, json.loads((t / "handle.json").read_text())) for t in templates]
    # Mostly successes, some failures and cancels, a few runs of another backend.
    weights = [WEIGHTS.get(record["job"]["name"], 1.0) for _, record in sources]
    index = 0
    while made < count:
        template, record = rng.choices(sources, weights)[0]
        index += 1
        run_id = f"{record['job']['name']}-{index:08d}-{rng.getrandbits(32):08x}"
        if run_id in present:
            continue
        lost = record["backend"] == "local" and index % 50 == 0
        folder = runs / run_id
        folder.mkdir(mode=0o700)
        for item in template.iterdir():
            if item.name == "handle.json" or item.is_dir():
                continue
            if item.name == "exit.json" and lost:
                continue  # the supervisor died before recording: LOST
            shutil.copy2(item, folder / item.name)
        copy = _rewrite(record, str(template), str(folder))
        copy = _rewrite(copy, template.name, run_id)
        (folder / "handle.json").write_text(json.dumps(copy))
        stamp = now - rng.uniform(0, 7 * 86400)
        os.utime(folder / "handle.json", (stamp, stamp))
        present.add(run_id)
        made += 1


def _ls(argv: list[str], out: Path) -> float:
    start = time.perf_counter()
    with out.open("w") as stdout:
        proc = subprocess.run(argv, stdout=stdout, stderr=subprocess.PIPE, env=_env())
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode()}")
    return elapsed


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed tether has its .pyc files
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=2.0)
    parser.add_argument("--scratch", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    repeats = max(args.repeats, 3)

    scratch = scratch_folder(args.scratch)
    machine = print_machine(scratch)
    script = Path(sys.executable).parent / "tether"
    tether = str(script) if script.exists() else (shutil.which("tether") or "tether")

    root = args.keep or Path(tempfile.mkdtemp(prefix="ls-bench-", dir=scratch))
    root.mkdir(parents=True, exist_ok=True)
    folders = {"empty": root / "empty", "small": root / "small", "big": root / "big"}
    try:
        for folder in folders.values():
            folder.mkdir(exist_ok=True)
        made = time.perf_counter()
        templates = asyncio.run(_templates(folders["big"]))
        for template in templates:
            if not (folders["small"] / template.name).exists():
                shutil.copytree(template, folders["small"] / template.name, symlinks=True)
        populate(folders["big"], args.runs, templates)
        populate(folders["small"], args.small, [folders["small"] / t.name for t in templates])
        took = time.perf_counter() - made
        print(f"made {args.runs:,} + {args.small:,} run folders in {took:.1f} s")

        out = root / "ls.out"
        _ls([tether, "ls", "--json", str(folders["big"])], out)  # also warms the page cache
        listed = json.loads(out.read_text())
        mix = Counter(f"{row['backend']} {row['state']}" for row in listed)
        print("the runs:", ", ".join(f"{n:,} {kind}" for kind, n in sorted(mix.items())))
        if len(listed) != args.runs:
            print(f"tether ls listed {len(listed)} runs, not {args.runs}", file=sys.stderr)
            return 1
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            **{name: [tether, "ls", str(folder)] for name, folder in folders.items()},
        }
        for argv in commands.values():
            _ls(argv, out)
        times: dict[str, list[float]] = {name: [] for name in commands}
        rng = random.Random(SEED)
        for _ in range(repeats):
            order = list(commands)
            rng.shuffle(order)
            for name in order:
                times[name].append(_ls(commands[name], out))
    finally:
        if args.keep is None:
            _stop_live(root)
            shutil.rmtree(root, ignore_errors=True)

    median = {name: statistics.median(values) for name, values in times.items()}
    sizes = {"empty": 0, "small": args.small, "big": args.runs}
    # Per run over the empty folder's start-up; and each run beyond the small folder's.
    per_run = {name: (median[name] - median["empty"]) / sizes[name] for name in ("small", "big")}
    marginal = (median["big"] - median["small"]) / (args.runs - args.small)
    flatness = (median["big"] / args.runs) / (median["small"] / args.small)
    ok = median["big"] <= args.max_seconds
    print(f"\nmedians of {repeats} fresh processes each:")
    print(f"  python -c pass              {median['python -c pass'] * 1000:8.1f} ms")
    for name in folders:
        extra = f"  {per_run[name] * 1e6:5.1f} us per run" if name in per_run else ""
        print(f"  tether ls {sizes[name]:>6,} runs      {median[name] * 1000:8.1f} ms{extra}")
    print(
        f"flatness: (time per run at {args.runs:,}) / (time per run at {args.small:,}) = "
        f"{flatness:.2f} (<= 1: flat); each run past {args.small:,} costs {marginal * 1e6:.1f} us"
    )
    print(
        f"bar: tether ls of {args.runs:,} runs median {median['big']:.2f} s "
        f"<= {args.max_seconds:g} s: {'met' if ok else 'MISSED'}"
    )
    data = {
        "machine": machine,
        "runs": sizes,
        "mix": mix,
        "seconds": times,
        "median_s": median,
        "per_run_us": {name: value * 1e6 for name, value in per_run.items()},
        "marginal_us": marginal * 1e6,
        "flatness": flatness,
        "bar_s": args.max_seconds,
        "ok": ok,
    }
    why = f"tether ls of {args.runs:,} runs {median['big']:.2f} s > {args.max_seconds:g} s"
    return finish(data, RESULTS, [] if ok else [why])


def _stop_live(root: Path) -> None:
    """Cancel the runs left going (the ``live`` template in each folder)."""

    async def stop() -> None:
        import tether

        for record in root.glob("*/live-*/handle.json"):
            try:
                handle = await tether.load_handle(record)
                await handle.cancel()
            except tether.TetherError:
                pass

    asyncio.run(stop())


if __name__ == "__main__":
    sys.exit(main())
