"""``CachedBackend``: any backend, with runs recorded and never paid for twice.

On submit the job's cache key is computed (:mod:`tether.cache.key`). A recorded
entry is a *hit*: a new run folder gets the recorded files (hard links to the
store's blobs where possible) and the handle is finished at once. Otherwise the key
is *claimed* in the store: a run of the same key already going, in this process or
another, is shared (its saved handle record is in the claim); else the inner backend
runs the job and the claim holds its record. Whoever sees the shared run end (any
waiter, in any process) records the entry, when it succeeded or ``cache_failures``
is set, and releases the claim.
"""

from __future__ import annotations

import builtins
import contextlib
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import anyio
import anyio.to_thread
from pydantic import ConfigDict, Field, SerializeAsAny, field_validator

from .. import _plugins
from .._files import cache_home, default_runs_dir
from .._integrity import seal
from .._runs import chosen_run_id, make_run_dir, new_run_id, tail_lines
from .._wrapping import INNER_SCHEMA, WrapperConfig
from ..backend import Backend
from ..call import Call, encode_outcome
from ..config import BackendConfig
from ..errors import ConfigError, RecordError, SubmitError
from ..handle import RunHandle, Stream, check_stream
from ..job import Job
from ..records import write_record
from ..result import RunResult, RunState
from ._claims import PENDING_LIMIT, new_owner, owner_alive, planned_run
from ._faults import reason
from ._results import OUTCOME as _OUTCOME
from ._results import STORE_ERRORS as _STORE_ERRORS
from ._results import absolute as _absolute
from ._results import attempt as _attempt
from ._results import relative as _relative
from ._results import with_value as _with_value
from .key import KeyFunction, default_key
from .sqlite_store import SQLiteStore
from .store import CacheEntry, CacheStore, Claim, StoredFile


def _not_a_store(obj: object) -> str | None:
    if isinstance(obj, type) and issubclass(obj, CacheStore):
        return None
    return "is not a CacheStore subclass"


_plugins.register_check(_plugins.STORES, _not_a_store)


def store_from_spec(kind: str, path: Path | None) -> CacheStore:
    """The store registered as ``kind`` (``tether.stores`` entry points) at ``path``."""
    plugins = _plugins.discover(_plugins.STORES)
    cls = plugins.found.get(kind)
    if cls is None:
        known = ", ".join(sorted(plugins.found)) or "none"
        why = plugins.broken.get(kind)
        raise ConfigError(
            f"Cache store {kind!r} failed to load: {why}"
            if why
            else f"Unknown cache store {kind!r}; known stores: {known}."
        )
    if path is None:
        if cls is SQLiteStore:
            return SQLiteStore.default()
        path = cache_home() / f"store-{kind}"
    store: CacheStore = cls(path)
    return store


class CachedConfig(WrapperConfig):
    """Settings of a cached backend: the inner backend's config, the store, the policy."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"type": "cached", "backend": {"type": "local"}, "store": "sqlite"},
                {
                    "type": "cached",
                    "backend": {"type": "dummy", "duration": 1.0},
                    "store": "directory",
                    "store_path": "/tmp/tether-cache",
                    "cache_version": "v2",
                },
            ]
        }
    )

    type: Literal["cached"] = Field(
        "cached", description="Selects the caching wrapper in config files.", examples=["cached"]
    )
    backend: Annotated[SerializeAsAny[BackendConfig], INNER_SCHEMA] = Field(
        description="The inner backend's config, with its own 'type'; it runs the misses.",
        examples=[{"type": "local"}],
    )
    store: str = Field(
        "sqlite",
        description="Cache store kind: 'sqlite' (the embedded default), 'directory', or a "
        "plugin's name (tether.stores entry points).",
        examples=["sqlite"],
    )
    store_path: Path | None = Field(
        None,
        description="The store's file or folder; default ~/.cache/tether/cache.sqlite "
        "(sqlite) or ~/.cache/tether/store-<kind>.",
        examples=["~/.cache/tether/cache.sqlite"],
    )
    cache_version: str = Field(
        "",
        description="Part of every key: change it to invalidate what was recorded before.",
        examples=["v2"],
    )
    cache_failures: bool = Field(
        False,
        description="Also record failed, cancelled and timed-out runs (never lost ones).",
        examples=[False],
    )
    refresh: bool = Field(
        False, description="Always run, and replace the recorded entry.", examples=[False]
    )
    runs_dir: Path | None = Field(
        None,
        description="Where hits get their run folders; default the inner backend's "
        "runs_dir, else $TETHER_HOME/runs.",
        examples=["~/tether-runs"],
    )

    wrapper_name: ClassVar[str] = "cached backend"

    @field_validator("store")
    @classmethod
    def _store_kind(cls, kind: str) -> str:
        plugins = _plugins.discover(_plugins.STORES)
        if kind not in plugins.found:
            why = plugins.broken.get(kind)
            known = ", ".join(sorted(plugins.found)) or "none"
            raise ValueError(
                f"cache store {kind!r} failed to load: {why}"
                if why
                else f"unknown cache store {kind!r}; known stores: {known}"
            )
        return kind

    def create(self) -> CachedBackend:
        """The inner backend wrapped in a :class:`CachedBackend` with this store."""
        return CachedBackend(
            self.backend.create(),
            store_from_spec(self.store, self.store_path),
            cache_version=self.cache_version,
            cache_failures=self.cache_failures,
            refresh=self.refresh,
            runs_dir=self.runs_dir,
        )

    @classmethod
    def handle_class(cls) -> builtins.type[CachedRunHandle]:
        """Saved cached runs load into :class:`CachedRunHandle`."""
        return CachedRunHandle


@dataclass
class _Shared:
    """A run of a key that handles in this process share."""

    inner: RunHandle
    owner: str


#: (store location, key) → the run going in this process.
_SHARED: dict[tuple[str, str], _Shared] = {}


class CachedBackend(Backend[CachedConfig]):
    """Wraps ``inner`` so that a job already run (same key) is not run again."""

    def __init__(
        self,
        inner: Backend[Any],
        store: CacheStore | None = None,
        *,
        cache_version: str = "",
        cache_failures: bool = False,
        refresh: bool = False,
        runs_dir: Path | None = None,
        key: KeyFunction | None = None,
    ) -> None:
        self._inner = inner
        self._store = store if store is not None else SQLiteStore.default()
        self._key: KeyFunction = key or default_key
        super().__init__(
            CachedConfig(
                backend=inner.config,
                store=self._store.kind,
                store_path=self._store.location,
                cache_version=cache_version,
                cache_failures=cache_failures,
                refresh=refresh,
                runs_dir=runs_dir,
            )
        )
        self.capabilities = inner.capabilities  # type: ignore[misc]

    @property
    def inner(self) -> Backend[Any]:
        """The backend that runs the misses."""
        return self._inner

    @property
    def store(self) -> CacheStore:
        """Where entries are recorded."""
        return self._store

    async def key(self, job: Job) -> str:
        """The cache key of ``job`` on this backend (reads the job's input files)."""
        fields = await self._inner.cache_fields()
        return await anyio.to_thread.run_sync(self._key, job, fields, self.config.cache_version)

    async def submit(
        self, job: Job, *, refresh: bool | None = None, run_id: str | None = None
    ) -> CachedRunHandle:
        """A finished handle on a hit; else the shared run of the key, or a new one.

        ``refresh`` (default: the config's) runs the job even when recorded, and the
        new result replaces the entry. ``run_id`` names a new run of the inner backend
        (one with the ``find`` capability); see :meth:`find`.
        """
        refresh = self.config.refresh if refresh is None else refresh
        fields = await self._inner.cache_fields()
        # One worker-thread hop for the key (reads inputs) and the look-up.
        key, hit = await anyio.to_thread.run_sync(self._key_and_hit, job, fields, refresh)
        if hit is not None:
            return hit
        location = str(self._store.location)
        shared = _SHARED.get((location, key))
        if shared is not None:
            if not (await shared.inner.refresh()).is_terminal:
                return self._wrap(job, key, shared.inner, shared.owner, replace=refresh)
            # Ended, and concluded by another handle (reloaded, or in another process).
            _SHARED.pop((location, key), None)
        # With ``find``, the inner run's id is chosen now and put in the claim (in the
        # owner id), so a takeover after this process dies finds the run it started.
        finds = "find" in self._inner.capabilities
        planned = chosen_run_id(run_id, job.name) if finds else run_id
        owner = new_owner(planned if finds else None)
        resume = False  # True: the claim was a dead owner's; its run may exist
        concluded: set[tuple[str, float]] = set()
        delay = 0.02
        while True:
            claim = await anyio.to_thread.run_sync(self._store.claim, key, owner)
            if claim is None:
                break
            if claim.record is not None:
                if (claim.owner, claim.claimed) in concluded:
                    raise SubmitError(
                        f"Cache store '{location}' cannot drop the claim of an ended run "
                        f"of job {job.name!r} (see the warning): free space on its disk "
                        "and submit again."
                    )
                attached = await self._attach(job, key, claim, replace=refresh)
                if attached is not None:
                    return attached
                concluded.add((claim.owner, claim.claimed))
                continue  # that run had ended; it is concluded now: look again
            if not owner_alive(claim.owner) or time.time() - claim.claimed > PENDING_LIMIT:
                taken = planned_run(claim.owner) if finds else None
                thief = owner if taken is None else new_owner(taken)
                if await anyio.to_thread.run_sync(self._store.steal, key, claim, thief):
                    if taken is not None:  # carry on with the dead owner's run id
                        owner, planned, resume = thief, taken, True
                    break
                continue
            if not refresh:  # the other run may have ended and been recorded meanwhile
                hit = await anyio.to_thread.run_sync(self._restore, key, job)
                if hit is not None:
                    return hit
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.5)
        if not refresh:  # recorded between our look and our claim
            hit = await anyio.to_thread.run_sync(self._restore, key, job)
            if hit is not None:
                await anyio.to_thread.run_sync(self._store.release, key, owner)
                return hit
        try:
            # The dead owner may have started its run before it could record it.
            found = await self._inner.find(job, planned) if resume and planned else None
            if found is not None:
                inner = found
            elif planned is None:
                inner = await self._inner.submit(job)
            else:
                inner = await self._inner.submit(job, run_id=planned)  # type: ignore[call-arg]
            await anyio.to_thread.run_sync(self._store.set_record, key, owner, inner.to_record())
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._store.release, key, owner)
            raise
        _SHARED[(location, key)] = _Shared(inner, owner)
        return self._wrap(job, key, inner, owner, replace=refresh)

    async def find(self, job: Job, run_id: str) -> CachedRunHandle | None:
        """The inner run a miss of ``submit(job, run_id=run_id)`` started, shared again.

        When its submitter died before recording the run in its claim, the claim is
        taken over and given the run's record, so other submitters share it too.
        """
        inner = await self._inner.find(job, run_id)
        if inner is None:
            return None
        key = await self.key(job)
        owner = await anyio.to_thread.run_sync(self._adopt, key, inner)
        return self._wrap(job, key, inner, owner, replace=False)

    def _adopt(self, key: str, inner: RunHandle) -> str:
        """Own the claim of ``key`` for ``inner`` when free or stale; return the owner."""
        owner = new_owner()
        claim = self._store.claim(key, owner)
        if claim is not None:
            if claim.record is not None and claim.record.get("run_id") == inner.run_id:
                return claim.owner  # already shared through its claim
            if owner_alive(claim.owner) or not self._store.steal(key, claim, owner):
                return owner  # someone else runs the key: this run is concluded alone
        self._store.set_record(key, owner, inner.to_record())
        if not inner.state.is_terminal:
            _SHARED[(str(self._store.location), key)] = _Shared(inner, owner)
        return owner

    def _key_and_hit(
        self, job: Job, fields: dict[str, Any], refresh: bool
    ) -> tuple[str, CachedRunHandle | None]:
        key = self._key(job, fields, self.config.cache_version)
        return key, None if refresh else self._restore(key, job)

    async def _attach(
        self, job: Job, key: str, claim: Claim, *, replace: bool
    ) -> CachedRunHandle | None:
        """Share another process's run of ``key`` through its saved handle record.

        None when that run has ended already (its owner died before concluding it,
        or is concluding it now): it is concluded here (recorded if worth it, claim
        released), and the caller looks again, for a hit or a claim of its own.
        """
        from ..registry import handle_from_record

        assert claim.record is not None
        inner = handle_from_record(claim.record)
        handle = self._wrap(job, key, inner, claim.owner, replace=False)
        if (await handle.refresh()).is_terminal:
            return None
        handle._replace = replace
        return handle

    def _wrap(
        self, job: Job, key: str, inner: RunHandle, owner: str, *, replace: bool
    ) -> CachedRunHandle:
        return CachedRunHandle(
            run_id=inner.run_id,
            job=job,
            config=self.config,
            store=self._store,
            key=key,
            run_dir=inner.run_dir,
            inner=inner,
            owner=owner,
            replace=replace,
        )

    def _runs_dir(self) -> Path:
        configured = self.config.runs_dir or getattr(self._inner.config, "runs_dir", None)
        return Path(configured or default_runs_dir()).expanduser().absolute()

    def _restore(self, key: str, job: Job) -> CachedRunHandle | None:
        """A finished handle of the entry for ``key``, or None (a miss).

        Only the look-up and the blob checks happen now: the run folder (links to the
        entry's blobs and ``handle.json``) is made when something first needs it (the
        result, the logs, ``run_dir``, the record), so a hit nobody reads the files of
        costs one store look-up and no new file.
        """
        store = self._store
        entry = store.get(key)
        if entry is None:
            return None
        if not all(store.blobs.intact(f.digest, f.size, f.mtime_ns) for f in entry.files):
            with contextlib.suppress(*_STORE_ERRORS):  # a full disk: stays a miss anyway
                store.delete(key)  # a blob went missing or was changed on disk: a miss
            return None
        run_id = new_run_id(job.name)
        handle = CachedRunHandle(
            run_id=run_id,
            job=job,
            config=self.config,
            store=store,
            key=key,
            run_dir=self._runs_dir() / run_id,
            state=RunState(entry.result["state"]),
        )
        handle._pending_hit = _PendingHit(self, entry)
        return handle

    def _materialize(self, handle: CachedRunHandle, entry: CacheEntry) -> RunResult | None:
        """Make a hit's run folder from ``entry``; None (and a warning) if it cannot be."""
        store = self._store
        run_id, job = handle.run_id, handle.job
        try:
            run_dir = make_run_dir(self._runs_dir(), run_id)
        except SubmitError as exc:
            warnings.warn(
                f"cache: could not restore the recorded run of job {job.name!r}: {exc}; "
                "running it instead",
                RuntimeWarning,
                stacklevel=1,
            )
            return None
        try:
            for stored in entry.files:
                store.blobs.restore(stored.digest, run_dir / stored.path)
                if stored.path == _OUTCOME:
                    seal(run_dir / _OUTCOME)  # ours: the entry's blob, checked intact above
        except OSError as exc:
            shutil.rmtree(run_dir, ignore_errors=True)  # no half-restored run folder
            warnings.warn(
                f"cache: could not restore the recorded run of job {job.name!r} into "
                f"'{run_dir}': {reason(exc)}; running it instead",
                RuntimeWarning,
                stacklevel=1,
            )
            return None
        result = _with_value(_absolute(entry.result, run_id, run_dir), run_dir)
        handle._result, handle._pending_hit = result, None
        with contextlib.suppress(OSError):  # the folder has the files; the record is a bonus
            write_record(run_dir / "handle.json", handle.to_record(), sync=False)
        return result


_MATERIALIZING = threading.RLock()


@dataclass
class _PendingHit:
    """A hit whose run folder is not made yet: the backend that makes it, and the entry."""

    backend: CachedBackend
    entry: CacheEntry


class CachedRunHandle(RunHandle):
    """A hit (finished at once), or a run shared by every submission of its key."""

    backend_type: ClassVar[str] = "cached"

    def __init__(
        self,
        *,
        run_id: str,
        job: Job,
        config: CachedConfig,
        store: CacheStore,
        key: str,
        run_dir: Path | None,
        inner: RunHandle | None = None,
        owner: str = "",
        replace: bool = False,
        hit: RunResult | None = None,
        state: RunState | None = None,
    ) -> None:
        if state is None:
            state = hit.state if hit is not None else (inner.state if inner else RunState.LOST)
        super().__init__(run_id=run_id, job=job, config=config, state=state, run_dir=run_dir)
        self._pending_hit: _PendingHit | None = None
        self._cached = config
        self._store = store
        self._key = key
        self._inner = inner
        self._owner = owner
        self._replace = replace
        if hit is not None:
            self._result = hit

    @property
    def key(self) -> str:
        """The cache key of the run's job."""
        return self._key

    @property
    def run_dir(self) -> Path | None:
        """The run's folder; a hit's is made on first use (see ``CachedBackend``)."""
        self._materialize_now()
        return self._run_dir

    @property
    def last_result(self) -> RunResult | None:
        """The terminal result once observed (a hit's makes its run folder), else None."""
        self._materialize_now()
        return self._result

    def _materialize_now(self) -> RunResult | None:
        """Make a pending hit's run folder here, in the calling thread."""
        with _MATERIALIZING:  # the loop thread and a worker thread may both ask
            pending = self._pending_hit
            if pending is None:
                return self._result
            return pending.backend._materialize(self, pending.entry)

    async def _materialized(self) -> None:
        """Make a pending hit's run folder (in a worker thread), or run the job instead
        when that fails: the handle then follows that run, as on a miss."""
        pending = self._pending_hit
        if pending is None:
            return
        if await anyio.to_thread.run_sync(self._materialize_now) is not None:
            return
        self._pending_hit = None
        run = await pending.backend.submit(self._job, refresh=True)
        self._run_id, self._run_dir = run.run_id, run._run_dir
        self._inner, self._owner, self._replace = run._inner, run._owner, run._replace
        self._result = run._result
        self._state = run.state

    @property
    def hit(self) -> bool:
        """True when the result came from the cache (nothing ran)."""
        return self._inner is None

    @property
    def inner(self) -> RunHandle | None:
        """The inner backend's handle of the run (None for a hit)."""
        return self._inner

    async def _conclude(self, result: RunResult) -> None:
        """Record the ended run (when it is worth keeping), release the claim, finish.

        The store failing (a full disk, above all) never costs the run's result: the
        run finishes with it, the claim is released, and a warning says it was not
        recorded. Blobs stored before the failure belong to no entry: the store
        collects them later (:meth:`CacheStore.collect_blobs`).
        """
        keep = result.ok or (self._cached.cache_failures and result.state is not RunState.LOST)
        failed: BaseException | None = None
        if keep:  # recording also releases the claim
            failed = await anyio.to_thread.run_sync(_attempt, self._record, result)
        stuck: BaseException | None = None
        if failed is not None or not keep:
            stuck = await anyio.to_thread.run_sync(_attempt, self._release, None)
        location = (str(self._store.location), self._key)
        shared = _SHARED.get(location)
        if shared is not None and shared.inner.run_id == result.run_id:
            del _SHARED[location]
        self._finish(result)
        if failed is not None:
            message = (
                f"cache: could not record run {result.run_id}: {reason(failed)}; "
                "the result is returned but not cached"
            )
            if stuck is not None:
                message += f" (its claim stays until the store can be written: {reason(stuck)})"
            warnings.warn(message, RuntimeWarning, stacklevel=1)
        elif stuck is not None:
            warnings.warn(
                f"cache: could not release the claim of run {result.run_id}: {reason(stuck)}; "
                "the next submit of its job releases it",
                RuntimeWarning,
                stacklevel=1,
            )

    def _release(self, _: None) -> None:
        self._store.release(self._key, self._owner)

    def _record(self, result: RunResult) -> None:
        data, files = _relative(result, self.run_dir)
        stored = []
        for path in files:
            digest, size, mtime_ns = self._store.blobs.put(path)
            assert self.run_dir is not None
            relative = path.resolve().relative_to(self.run_dir.resolve()).as_posix()
            stored.append(StoredFile(relative, digest, size, mtime_ns))
        if isinstance(self._job, Call):  # the value (or exception) travels as a blob
            outcome = encode_outcome(result.ok, result.value, result.exception, result.traceback)
            with tempfile.NamedTemporaryFile(prefix="tether-outcome-") as tmp:
                tmp.write(outcome)
                tmp.flush()
                digest, size, mtime_ns = self._store.blobs.put(Path(tmp.name))
            stored.append(StoredFile(_OUTCOME, digest, size, mtime_ns))
        entry = CacheEntry(
            key=self._key,
            backend=self._cached.backend.type,
            name=self._job.name,
            result=data,
            files=stored,
        )
        self._store.put(entry, replace=self._replace, owner=self._owner)

    async def refresh(self) -> RunState:
        """The inner run's state; once it ended, it is recorded (see :meth:`_conclude`)."""
        if self._result is not None or self._inner is None:
            return self._state  # a pending hit too: terminal, whatever its folder
        state = await self._inner.refresh()
        if state.is_terminal:
            assert self._inner.last_result is not None
            await self._conclude(self._inner.last_result)
        else:
            self._set_state(state)
        return self._state

    async def _wait_done(self) -> RunResult:
        await self._materialized()
        if self._result is None:
            assert self._inner is not None
            await self._conclude(await self._inner.wait())
        assert self._result is not None
        return self._result

    async def cancel(self) -> None:
        """Cancel the inner run (every handle sharing it sees it end); a hit: nothing."""
        with anyio.CancelScope(shield=True):
            if self._inner is None or self._result is not None:
                return
            await self._inner.cancel()
            await self.refresh()

    async def logs(
        self, stream: Stream = "stdout", *, follow: bool = False
    ) -> AsyncGenerator[str, None]:
        """The inner run's lines; for a hit, the restored files'."""
        check_stream(stream)
        await self._materialized()
        if self._inner is not None:
            async for line in self._inner.logs(stream, follow=follow):
                yield line
            return
        assert self._result is not None
        path = self._result.stdout if stream == "stdout" else self._result.stderr
        if path is not None:
            async for line in tail_lines(path):
                yield line

    def _record_data(self) -> dict[str, Any]:
        if self._pending_hit is not None and self._materialize_now() is None:
            raise RecordError(
                f"Cannot record cache hit {self.run_id}: its run folder could not be made "
                "(see the warning); wait for the handle (it runs the job) and save it then."
            )
        data: dict[str, Any] = {
            "key": self._key,
            "store": self._store.spec(),
            "run_dir": None if self.run_dir is None else str(self.run_dir),
            "owner": self._owner,
            "replace": self._replace,
        }
        if self._inner is None:
            assert self._result is not None
            data["hit"] = self._result.model_dump(mode="json")
        else:
            data["inner"] = self._inner.to_record()
        return data

    @classmethod
    def _from_record(
        cls, run_id: str, job: Job, config: BackendConfig, data: dict[str, Any]
    ) -> CachedRunHandle:
        from ..registry import handle_from_record

        if not isinstance(config, CachedConfig):
            raise TypeError(f"expected a CachedConfig, got {type(config).__name__}")
        spec = data["store"]
        store = store_from_spec(str(spec["type"]), Path(spec["path"]))
        run_dir = None if data.get("run_dir") is None else Path(data["run_dir"])
        common: dict[str, Any] = {
            "run_id": run_id,
            "job": job,
            "config": config,
            "store": store,
            "key": str(data["key"]),
            "run_dir": run_dir,
            "owner": str(data.get("owner", "")),
            "replace": bool(data.get("replace", False)),
        }
        if "hit" in data:
            hit = _with_value(RunResult.model_validate(data["hit"]), run_dir)
            return cls(**common, hit=hit)
        return cls(**common, inner=handle_from_record(data["inner"]))
