"""Fan-out of many calls: ``map_calls`` and seeded ``Ensemble`` runs.

``map_calls(fn, items)`` runs ``fn(item, *args, **kwargs)`` for every item on any
backend that runs ``Call`` jobs and returns the values in input order. An
:class:`Ensemble` does the same for Monte Carlo work: member ``i`` gets the
``i``-th child of ``numpy.random.SeedSequence(seed)``, so the same root seed gives
bit-identical results on every backend and at any degree of parallelism, and
member ``i`` is the same whether the ensemble has 10 members or 10,000.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import anyio

from . import _html, _live
from ._live import LiveTable
from .backend import Backend
from .call import Call
from .config import BackendConfig
from .errors import ConfigError, MapError, RunFailedError
from .handle import RunHandle
from .result import RunResult


def _backend(backend: Backend[Any] | BackendConfig | None) -> Backend[Any]:
    if backend is None:
        from .backends.inline import InlineConfig

        return InlineConfig().create()
    if isinstance(backend, BackendConfig):
        return backend.create()
    return backend


def _default_concurrency(backend: Backend[Any]) -> int:
    """Enough runs in flight to keep the backend busy, without flooding it."""
    workers = getattr(backend.config, "workers", None)
    if isinstance(workers, int):
        return 2 * workers  # the inline pool queues the rest; two per worker keeps it fed
    return os.cpu_count() or 1


class _Progress:
    """How a fan-out shows its progress (``progress=``).

    None (the default): a live table inside a Jupyter kernel, a rich bar on stderr
    when stderr is a terminal, nothing otherwise. True: the table in a kernel, else
    the bar (even without a terminal). False: nothing.
    """

    def __init__(self, total: int, label: str, enabled: bool | None, column: str) -> None:
        self._bar: Any = None
        self._table: LiveTable | None = None
        if total and _live.wanted(enabled):
            self._table = LiveTable(label, map(str, range(total)), column=column)
        elif total and (enabled or (enabled is None and sys.stderr.isatty())):
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self._bar = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._task = self._bar.add_task(label, total=total)

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
        if self._table is not None:
            self._table.__enter__()
        return self

    def started(self, index: int, handle: RunHandle) -> None:
        """A call was submitted: its row shows the run id."""
        if self._table is not None:
            self._table.update(str(index), handle.state, detail=handle.run_id)

    def finished(self, index: int, result: RunResult) -> None:
        """A call ended (on its own or cancelled)."""
        if self._bar is not None:
            self._bar.advance(self._task)
        if self._table is not None:
            self._table.update(str(index), result.state, detail=_detail(result))

    def stopped(self, index: int, handle: RunHandle) -> None:
        """A run was cancelled by fail-fast or by our caller's cancellation."""
        if self._table is not None:
            self._table.update(str(index), handle.state)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
        if self._table is not None:
            self._table.close()


def _detail(result: RunResult) -> str:
    """A finished call's row: run id and duration, and the first line of its error."""
    text = result.run_id
    if result.duration is not None:
        text += f" · {result.duration:.1f} s"
    error = (result.error or "").strip()
    if error and not result.ok:
        text += " · " + error.splitlines()[0][:120]
    return text


async def run_calls(
    calls: Sequence[Call],
    backend: Backend[Any] | BackendConfig | None = None,
    *,
    max_concurrency: int | None = None,
    keep_going: bool = False,
    progress: bool | None = None,
    label: str = "calls",
    column: str = "call",
) -> list[RunResult]:
    """Run prepared calls and return their results in order (the engine of ``map_calls``).

    Fail-fast (the default): at the first failure the runs still going are cancelled
    and the failure is raised (the call's own exception, or :class:`RunFailedError`).
    With ``keep_going=True`` every call runs, and :class:`MapError` is raised at the
    end if any failed.
    """
    target = _backend(backend)
    if "calls" not in target.capabilities:
        raise ConfigError(
            f"{type(target).__name__} does not run Call jobs: use InlineConfig or LocalConfig."
        )
    limit = _default_concurrency(target) if max_concurrency is None else max_concurrency
    if limit < 1:
        raise ConfigError(f"max_concurrency must be at least 1, not {limit}")
    results: list[RunResult | None] = [None] * len(calls)
    running: dict[int, RunHandle] = {}
    failure: list[RunResult] = []
    errors: list[BaseException] = []
    next_index = iter(range(len(calls)))

    async def worker(progress_bar: _Progress) -> None:
        for index in next_index:
            try:
                handle = await target.submit(calls[index])
            except Exception as exc:  # raised as itself below, not in an ExceptionGroup
                errors.append(exc)
                group.cancel_scope.cancel()
                return
            running[index] = handle
            progress_bar.started(index, handle)
            result = await handle.wait()  # if cancelled, the handle stays in `running`
            del running[index]
            results[index] = result
            progress_bar.finished(index, result)
            if not result.ok and not keep_going:
                failure.append(result)
                group.cancel_scope.cancel()
                return

    async def array(progress_bar: _Progress) -> None:
        # One array job: the backend's scheduler runs the members, we await them all.
        try:
            handles = await target.submit_array(calls, max_concurrency=max_concurrency)
        except Exception as exc:  # raised as itself below, not in an ExceptionGroup
            errors.append(exc)
            group.cancel_scope.cancel()
            return
        running.update(enumerate(handles))
        for index, handle in enumerate(handles):
            progress_bar.started(index, handle)

        async def member(index: int, handle: RunHandle) -> None:
            result = await handle.wait()
            del running[index]
            results[index] = result
            progress_bar.finished(index, result)
            if not result.ok and not keep_going:
                failure.append(result)
                group.cancel_scope.cancel()

        async with anyio.create_task_group() as members:
            for index, handle in enumerate(handles):
                members.start_soon(member, index, handle)

    with _Progress(len(calls), label, progress, column) as bar:
        try:
            async with anyio.create_task_group() as group:
                if "arrays" in target.capabilities and len(calls) > 1:
                    group.start_soon(array, bar)
                else:
                    for _ in range(min(limit, len(calls))):
                        group.start_soon(worker, bar)
        finally:
            if running:  # fail-fast, or our caller was cancelled: stop what still runs
                with anyio.CancelScope(shield=True):
                    async with anyio.create_task_group() as stopping:
                        for handle in list(running.values()):
                            stopping.start_soon(handle.cancel)
                for index, handle in list(running.items()):
                    bar.stopped(index, handle)
    if errors:
        raise errors[0]
    if failure:
        first = failure[0]
        if first.exception is not None:
            raise first.exception
        raise RunFailedError(first)
    done = [r for r in results if r is not None]
    if keep_going and any(not r.ok for r in done):
        raise MapError(done)
    return done


async def map_calls(
    fn: Callable[..., Any] | str,
    items: Iterable[Any],
    *,
    backend: Backend[Any] | BackendConfig | None = None,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    max_concurrency: int | None = None,
    keep_going: bool = False,
    progress: bool | None = None,
) -> list[Any]:
    """``[fn(item, *args, **kwargs) for item in items]``, run on ``backend``; values in order.

    Args:
        fn: a function, or a ``"pkg.mod:func"`` string.
        items: the first argument of each call.
        backend: a backend or config that runs ``Call`` jobs; default
            ``InlineConfig()`` (sequential, in a background thread).
        args: the same further positional arguments for every call.
        kwargs: the same further keyword arguments for every call.
        max_concurrency: runs in flight at once; default twice the inline pool's
            workers, else the number of cores.
        keep_going: run every call even after failures, then raise :class:`MapError`
            (which holds every result) if any failed.
        progress: show progress: None (default) shows a live table inside a
            Jupyter kernel and a bar on stderr when stderr is a terminal; True shows
            the table in a kernel, else the bar; False shows nothing.

    Raises:
        Exception: the first failing call's own exception (fail-fast).
        RunFailedError: for a run that failed without an exception of its own.
        MapError: with ``keep_going``, when any call failed (it holds every result).
    """
    extra = dict(kwargs or {})
    calls = [Call(fn, item, *args, **extra) for item in items]
    name = fn if isinstance(fn, str) else getattr(fn, "__name__", "calls")
    results = await run_calls(
        calls,
        backend,
        max_concurrency=max_concurrency,
        keep_going=keep_going,
        progress=progress,
        label=f"map {name}",
    )
    return [result.value for result in results]


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:
        raise ConfigError(
            "Ensemble seeds come from numpy's SeedSequence: pip install 'tether[numpy]'"
        ) from None
    return numpy


class Ensemble:
    """``n`` calls ``fn(seed_i, *args, **kwargs)`` with seeds spawned from one root seed.

    Member ``i`` gets child ``i`` of ``numpy.random.SeedSequence(seed)`` (as the
    ``SeedSequence`` itself, or a 64-bit int with ``seed_as="int"``), so results are
    identical on every backend and any ``n_jobs``; different root seeds give
    independent streams. Each member's ``Call`` carries ``seed={"root": seed,
    "member": i}``, which is in its saved handle, and its arguments (seed included)
    are in its cache key.

    Example (pycwt-mod's Monte Carlo usage)::

        def worker(seed, x):
            rng = np.random.default_rng(seed)
            return rng.normal() + x

        values = await Ensemble(worker, 1000, seed=42, args=(5.0,)).run(
            InlineConfig(mode="processes")
        )
    """

    def __init__(
        self,
        fn: Callable[..., Any] | str,
        n: int,
        seed: int | None = None,
        *,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        seed_as: Literal["sequence", "int"] = "sequence",
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"an ensemble needs n >= 1 members, not {n!r}")
        if seed_as not in ("sequence", "int"):
            raise ConfigError(f"seed_as must be 'sequence' or 'int', not {seed_as!r}")
        numpy = _numpy()
        if seed is None:  # fresh entropy, kept so the ensemble can be reproduced
            seed = int(numpy.random.SeedSequence().entropy)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"the root seed must be a non-negative int, not {seed!r}")
        self.fn = fn
        self.n = n
        self.seed = seed
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.seed_as = seed_as

    def seeds(self) -> list[Any]:
        """Each member's seed: ``SeedSequence`` children (or ints with ``seed_as="int"``)."""
        numpy = _numpy()
        children = numpy.random.SeedSequence(self.seed).spawn(self.n)
        if self.seed_as == "sequence":
            return list(children)
        return [int(child.generate_state(1, dtype=numpy.uint64)[0]) for child in children]

    def calls(self) -> list[Call]:
        """One ``Call`` per member, marked with its seed identity."""
        return [
            Call(self.fn, seed, *self.args, **self.kwargs).with_seed(
                {"root": self.seed, "member": index}
            )
            for index, seed in enumerate(self.seeds())
        ]

    async def run_results(
        self,
        backend: Backend[Any] | BackendConfig | None = None,
        *,
        max_concurrency: int | None = None,
        keep_going: bool = False,
        progress: bool | None = None,
    ) -> list[RunResult]:
        """Run every member; their ``RunResult`` objects in member order."""
        return await run_calls(
            self.calls(),
            backend,
            max_concurrency=max_concurrency,
            keep_going=keep_going,
            progress=progress,
            label=f"ensemble of {self.n} (seed {self.seed})",
            column="member",
        )

    async def run(
        self,
        backend: Backend[Any] | BackendConfig | None = None,
        *,
        max_concurrency: int | None = None,
        keep_going: bool = False,
        progress: bool | None = None,
    ) -> list[Any]:
        """Run every member; their return values in member order (see ``map_calls``)."""
        results = await self.run_results(
            backend, max_concurrency=max_concurrency, keep_going=keep_going, progress=progress
        )
        return [result.value for result in results]

    def run_sync(
        self,
        backend: Backend[Any] | BackendConfig | None = None,
        *,
        max_concurrency: int | None = None,
        keep_going: bool = False,
        progress: bool | None = None,
    ) -> list[Any]:
        """:meth:`run` for synchronous code, on the event loop of :mod:`tether.sync`: from a
        plain script, and also where a loop is running (a notebook cell without ``await``)."""
        from .sync import call

        return call(
            self.run,
            backend,
            max_concurrency=max_concurrency,
            keep_going=keep_going,
            progress=progress,
        )

    def _repr_html_(self) -> str:
        return _html.ensemble_html(self)

    def __repr__(self) -> str:
        name = self.fn if isinstance(self.fn, str) else getattr(self.fn, "__qualname__", "?")
        return f"Ensemble({name}, n={self.n}, seed={self.seed})"
