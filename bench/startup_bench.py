"""Start-up: ``import tether`` and ``tether --help``, each beside its baseline.

Every figure is a fresh process, timed from spawn to exit (wall clock), and its CPU
time (user + system, from ``wait4``). The commands, run round-robin in a shuffled
order each round so that a change in machine load hits all of them alike:

* ``python -c pass``: the interpreter's own start-up (the floor);
* ``python -c 'import pydantic'``: what tether's one heavy dependency costs alone;
* ``python -c 'import tether'``: the bar, ≤ ``--max-import-ms`` (150 ms; aim 100);
* ``python -c 'from tether import Job, LocalConfig, run'``: a script's first use,
  which loads the models and the local backend (reported, no bar);
* ``python -m tether --help`` and the ``tether --help`` console script: the bar,
  ≤ ``--max-help-ms`` (200 ms) each.

The children run without ``PYTHONDONTWRITEBYTECODE`` (as an installed tether does,
with its byte code cached) after two warm-up runs of each command. Medians over
``--repeats`` rounds (at least 15), ratios to the baselines, and the modules that
cost ``import tether`` and the first use most (``-X importtime``, self time) are
printed. Results go to ``bench/results/startup_bench.json``; the exit status is 1
when a bar is missed.

Usage::

    python bench/startup_bench.py [--repeats 21] [--max-import-ms 150]
                                  [--max-help-ms 200]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import finish, print_machine

RESULTS = Path(__file__).resolve().parent / "results" / "startup_bench.json"
SEED = 20261204


def _commands() -> dict[str, list[str]]:
    python = sys.executable
    script = Path(python).parent / "tether"
    console = str(script) if script.exists() else (shutil.which("tether") or "tether")
    return {
        "python -c pass": [python, "-c", "pass"],
        "import pydantic": [python, "-c", "import pydantic"],
        "import tether": [python, "-c", "import tether"],
        "first use": [python, "-c", "from tether import Job, LocalConfig, run"],
        "python -m tether --help": [python, "-m", "tether", "--help"],
        "tether --help": [console, "--help"],
    }


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed tether has its .pyc files
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    return env


def _time(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run of ``argv`` (its output thrown away)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited with {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def _top_imports(code: str, env: dict[str, str], count: int = 6) -> list[tuple[str, float]]:
    """The modules with the largest self time (ms) when ``code`` runs (-X importtime)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    found: list[tuple[str, float]] = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, _, name = line.removeprefix("import time:").split("|")
        found.append((name.strip(), int(own) / 1000))
    return sorted(found, key=lambda item: -item[1])[:count]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--max-import-ms", type=float, default=150.0)
    parser.add_argument("--max-help-ms", type=float, default=200.0)
    args = parser.parse_args()
    repeats = max(args.repeats, 15)

    machine = print_machine(Path(tempfile.gettempdir()))
    env = _env()
    commands = _commands()
    for argv in commands.values():  # byte code written, files in the page cache
        _time(argv, env)
        _time(argv, env)
    walls: dict[str, list[float]] = {name: [] for name in commands}
    cpus: dict[str, list[float]] = {name: [] for name in commands}
    rng = random.Random(SEED)
    for _ in range(repeats):
        order = list(commands)
        rng.shuffle(order)
        for name in order:
            seconds, cpu_seconds = _time(commands[name], env)
            walls[name].append(seconds * 1000)
            cpus[name].append(cpu_seconds * 1000)

    wall = {name: statistics.median(values) for name, values in walls.items()}
    cpu = {name: statistics.median(values) for name, values in cpus.items()}
    floor, pydantic = wall["python -c pass"], wall["import pydantic"]
    print(f"\nmedians of {repeats} fresh processes each (wall ms, CPU ms, wall / baselines):")
    for name in commands:
        print(
            f"  {name:<26} {wall[name]:7.1f} ms  cpu {cpu[name]:7.1f} ms  "
            f"{wall[name] / floor:5.2f}x pass  {wall[name] / pydantic:5.2f}x pydantic"
        )
    for code in ("import tether", "from tether import Job, LocalConfig, run"):
        top = ", ".join(f"{name} {ms:.1f}" for name, ms in _top_imports(code, env))
        print(f"  -X importtime of {code!r}, most self ms: {top}")

    bars = {
        "import tether": args.max_import_ms,
        "python -m tether --help": args.max_help_ms,
        "tether --help": args.max_help_ms,
    }
    missed = [name for name, bar in bars.items() if wall[name] > bar]
    for name, bar in bars.items():
        verdict = "MISSED" if name in missed else "met"
        print(f"bar: {name} median {wall[name]:.1f} ms <= {bar:g} ms: {verdict}")
    data = {
        "machine": machine,
        "repeats": repeats,
        "wall_ms": walls,
        "cpu_ms": cpus,
        "median_wall_ms": wall,
        "median_cpu_ms": cpu,
        "ratio_to_pass": {name: wall[name] / floor for name in commands},
        "ratio_to_pydantic": {name: wall[name] / pydantic for name in commands},
        "bars_ms": bars,
        "ok": not missed,
    }
    why = [f"{name} median {wall[name]:.1f} ms > {bars[name]:g} ms" for name in missed]
    return finish(data, RESULTS, why)


if __name__ == "__main__":
    sys.exit(main())
