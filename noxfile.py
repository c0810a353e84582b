"""Developer and CI tasks: ``nox -s ci`` is what CI (and the README) runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"
DOCS_CODE = ("docs/_hooks.py", "docs/_griffe_roles.py")
LINTED = ("src", "tests", "bench", "examples", "noxfile.py", *DOCS_CODE)
# The example plugin is typed like tether itself: it is what plugin authors copy.
TYPED = ("src", "examples/custom_backend/tether_nohup.py", *DOCS_CODE)
# The docs site: broken links, anchors, nav entries and API references fail the build.
# Nothing is fetched at build time (see mkdocs.yml).
DOCS_BUILD = ("mkdocs", "build", "--strict", "--site-dir", "site")
DOCS_ENV = {"NO_MKDOCS_2_WARNING": "1"}  # material's banner about its successor


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The whole test suite (contract suite for every backend, CLI, core)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint and format check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", *LINTED)
    session.run("ruff", "format", "--check", *LINTED)


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    # .[docs]: the docs site's hook and griffe extension import mkdocs and griffe;
    # .[ui]: the dashboard is typed against Starlette and uvicorn.
    session.install("-e", ".[docs,ui]", "mypy>=1.11", "types-PyYAML")
    session.run("mypy", *TYPED)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the docs site into site/ with ``mkdocs build --strict`` (open site/index.html)."""
    session.install("-e", ".[docs]")
    session.run(*DOCS_BUILD, *session.posargs, env=DOCS_ENV)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks (see bench/README.md); each exits non-zero when it misses its bar.

    The Docker bench needs the engine (``nox -s services``) and the docker CLI; the
    Slurm bench needs a Slurm cluster (``nox -s services`` starts a one-node one) and
    takes about two minutes.
    """
    # musl-gcc builds the faster static supervisor (docs/local-backend.md), if apt can.
    session.run(
        "bash", "-c", "command -v musl-gcc || apt-get install -y musl-tools || true", external=True
    )
    # joblib is only a contender in the inline bench, never a dependency of tether.
    session.install("-e", ".[docker,dask,numpy]", "joblib")
    # Throughput first: the wait bench deletes 400 run folders at its end, and on
    # ext4 without a journal creating inodes right after mass deletion is slow.
    benches = [
        ["bench/local_throughput.py", *session.posargs],
        ["bench/wait_overhead.py"],
        ["bench/wait_scale.py"],
        ["bench/docker_latency.py"],
        ["bench/cache_bench.py"],
        ["bench/inline_bench.py"],
        ["bench/pipeline_bench.py"],
        ["bench/pipeline_scale.py"],
        ["bench/slurm_bench.py"],
        ["bench/dask_bench.py"],
        ["bench/startup_bench.py"],
        # Last: it makes and then deletes 11,000 run folders (see the note above).
        ["bench/ls_bench.py"],
    ]
    # Every bench runs, even after one misses its bar (a slow disk must not hide the
    # other figures); the session fails at the end if any missed.
    python = str(Path(session.bin) / "python")
    missed = []
    for argv in benches:
        session.log(f"python {' '.join(argv)}")
        if subprocess.run([python, *argv], check=False).returncode != 0:
            missed.append(argv[0])
    if missed:
        session.error(f"missed their bars: {', '.join(missed)}")


@nox.session(python=PYTHON)
def stress(session: nox.Session) -> None:
    """The contract suite, the CLI and the fault tests twice at once, as on a busy machine.

    Both copies must pass: a test that passes alone but fails beside another job is
    a bug. ``nox -s stress -- -x`` passes pytest options to both copies.
    """
    session.install("-e", ".[test]")
    python = str(Path(session.bin) / "python")
    suites = [
        "tests/contract",
        "tests/test_cli.py",
        "tests/test_local_faults.py",
        "tests/test_docker_faults.py",
        "tests/test_slurm.py",
        "tests/test_dask.py",
    ]
    argv = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *suites, *session.posargs]
    copies = [subprocess.Popen(argv) for _ in range(2)]
    codes = [copy.wait() for copy in copies]
    if any(codes):
        session.error(f"a copy failed under load (exit codes {codes})")


@nox.session(python=False)
def services(session: nox.Session) -> None:
    """Install (if missing) and start the real services the tests use: the Docker engine,
    a one-node Slurm cluster, and the headless Chromium of the dashboard's tests."""
    session.run("bash", "scripts/docker-engine.sh", external=True)
    session.run("bash", "scripts/slurm-cluster.sh", external=True)
    session.run("bash", "scripts/chromium.sh", external=True)


@nox.session(python=PYTHON)
def ci(session: nox.Session) -> None:
    """Everything CI checks, on a fresh machine: services, lint, types, the docs site,
    the whole suite.

    ``CI=1`` makes a test whose service is missing fail instead of skip.
    """
    # Both fail (and so does CI) when their service does not come up: never a skip.
    session.run("bash", "scripts/docker-engine.sh", external=True)
    session.run("bash", "scripts/slurm-cluster.sh", external=True)
    session.run("bash", "scripts/chromium.sh", external=True)
    session.install("-e", ".[dev,docs]")
    session.run("ruff", "check", *LINTED)
    session.run("ruff", "format", "--check", *LINTED)
    session.run("mypy", *TYPED)
    session.run(*DOCS_BUILD, env=DOCS_ENV)
    session.run("pytest", *session.posargs, env={"CI": "1"})
