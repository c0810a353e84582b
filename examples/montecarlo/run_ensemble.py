"""pycwt-mod's Monte Carlo usage on tether: one ensemble, three backends, same bits.

Runs ``Ensemble(worker, N, seed=42, args=(5.0,))`` on

* ``InlineConfig(mode="sequential")``: one call at a time, in a background thread;
* ``InlineConfig(mode="processes", n_jobs=-1)``: a pool of worker processes;
* ``LocalConfig()``: every member a detached process of its own (so fewer members:
  member ``i`` of an ensemble is the same whatever its size, and the local values
  are compared with the first members of the others);

prints the time each took, checks that every value is bit-identical, then runs a
phase-randomisation significance test and its p-value. Exits with status 1 when
any two backends disagree.

    python examples/montecarlo/run_ensemble.py [--members 1000] [--local-members 20]
        [--surrogates 500] [--seed 42] [--n-jobs -1] [--no-local]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

# Worker processes import the workers by name ("mc_worker:worker"): make this folder
# importable here; tether sends this process's sys.path along to its workers.
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import mc_worker  # noqa: E402
import numpy as np  # noqa: E402

import tether  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=1000, help="ensemble size (inline)")
    parser.add_argument(
        "--local-members", type=int, default=20, help="ensemble size on the local backend"
    )
    parser.add_argument("--surrogates", type=int, default=500, help="significance test size")
    parser.add_argument("--seed", type=int, default=42, help="the root seed")
    parser.add_argument("--n-jobs", type=int, default=-1, help="worker processes (-1: all cores)")
    parser.add_argument("--no-local", action="store_true", help="skip the local backend")
    return parser.parse_args(argv)


async def timed(label: str, ensemble: tether.Ensemble, backend: object) -> np.ndarray:
    start = time.perf_counter()
    values = np.array(await ensemble.run(backend))
    seconds = time.perf_counter() - start
    print(f"{label:<34} {ensemble.n:>7} {seconds:>9.2f} {values.mean():>12.6f}")
    return values


def compare(label: str, values: np.ndarray, reference: np.ndarray) -> bool:
    same = np.array_equal(values, reference)
    verdict = "identical" if same else "DIFFERENT"
    print(f"{label}: {verdict} ({values.size} members)")
    if not same:
        where = np.flatnonzero(values != reference)
        print(
            f"  first difference at member {where[0]}: {values[where[0]]!r} != "
            f"{reference[where[0]]!r}"
        )
    return bool(same)


async def main(args: argparse.Namespace) -> int:
    sequential = tether.InlineConfig(mode="sequential")
    processes = tether.InlineConfig(mode="processes", n_jobs=args.n_jobs)
    ensemble = tether.Ensemble(mc_worker.worker, args.members, seed=args.seed, args=(5.0,))

    # Start the process pool (and import numpy in its workers) before timing anything.
    await tether.map_calls(
        mc_worker.worker, range(2 * processes.workers), args=(0.0,), backend=processes
    )

    print(f"{ensemble!r}: worker(seed, 5.0) = rng.normal() + 5.0")
    print(f"{'backend':<34} {'members':>7} {'seconds':>9} {'mean':>12}")
    by_thread = await timed("inline, sequential", ensemble, sequential)
    by_process = await timed(f"inline, processes (n_jobs={args.n_jobs})", ensemble, processes)
    checks = [compare("processes vs sequential", by_process, by_thread)]

    if not args.no_local:
        # Each member a detached process with its own run folder: keep them out of
        # ~/.local/state/tether/runs, in a folder that goes away at the end.
        with tempfile.TemporaryDirectory(prefix="tether-mc-") as runs:
            local = tether.LocalConfig(runs_dir=Path(runs))
            small = tether.Ensemble(
                mc_worker.worker, args.local_members, seed=args.seed, args=(5.0,)
            )
            by_local = await timed("local, one process per member", small, local)
        n = min(args.local_members, args.members)
        checks.append(compare(f"local vs first {n} of sequential", by_local[:n], by_thread[:n]))

    # The significance test: how often do surrogates that share only the spectra of
    # the two series reach the statistic the series themselves reach?
    signal1, signal2 = mc_worker.make_signals()
    observed = mc_worker.max_local_correlation(signal1, signal2)
    test = tether.Ensemble(
        mc_worker.significance_worker, args.surrogates, seed=args.seed, args=(signal1, signal2)
    )
    print()
    print(f"{test!r}: phase-randomised surrogates, max local correlation")
    surrogate_maxima = await timed("inline, processes", test, processes)
    again = await timed("inline, sequential", test, sequential)
    checks.append(compare("surrogates, processes vs sequential", surrogate_maxima, again))
    p_value = np.sum(surrogate_maxima >= observed) / len(surrogate_maxima)
    print(
        f"observed statistic {observed:.4f}; 95th percentile of the surrogates "
        f"{np.percentile(surrogate_maxima, 95):.4f}; p-value {p_value:.4f}"
    )

    print()
    if all(checks):
        print("identical: every backend gave bit-identical values")
        return 0
    print("DIFFERENT: some backends disagree (see above)")
    return 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args(None))))
