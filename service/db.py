"""The database: engines, transactions, migrations."""

from __future__ import annotations

import asyncio
import collections
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.ext.compiler import compiles

from service import batching
from service.config import Settings

T = TypeVar("T")

# Any constant works; replicas only need to agree on it.
MIGRATION_LOCK_KEY = 0x5354_5058
NOTIFY_CHANNEL = "status_proxy_work"

# What a database that is down, restarting, locked or misconfigured raises; workers wait
# these out and the API answers 503, while anything else is a bug and is reported as one.
UNAVAILABLE: tuple[type[Exception], ...] = (sa.exc.DBAPIError, sa.exc.TimeoutError, OSError)
# SQLSTATE classes of a server that cannot serve now: connection exceptions, insufficient
# resources, operator intervention (shutdown, restart), system errors.
AWAY_SQLSTATES = ("08", "53", "57", "58")


def is_away(exc: BaseException) -> bool:
    """Whether an error says the database cannot be used right now (down, restarting,
    locked, out of connections), rather than that one statement or its data is wrong.
    The first is waited out; the second is one row's problem and must not stop a batch."""
    if isinstance(exc, OSError | TimeoutError | sa.exc.TimeoutError):
        return True
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if isinstance(sqlstate, str):  # PostgreSQL names the class of every error
        return sqlstate[:2] in AWAY_SQLSTATES
    return isinstance(exc, sa.exc.OperationalError)  # SQLite: locked, I/O, disk full


class unindexed(sa.sql.expression.FunctionElement[Any]):
    """A column the SQLite planner will not look up through an index (its documented unary
    ``+``; the column itself elsewhere). For conditions that only confirm rows found by
    their keys, such as ``id IN (...) AND state = 'active'``: without statistics SQLite
    rates any equality as selective, and would walk every active row of the state index
    instead of the twenty keys (measured: 145 µs a row instead of 25)."""

    inherit_cache = True

    def __init__(self, column: sa.ColumnElement[Any]) -> None:
        super().__init__(column)
        self.type = column.type


@compiles(unindexed)
def _unindexed(element: unindexed, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(unindexed, "sqlite")
def _unindexed_sqlite(element: unindexed, compiler: Any, **kw: Any) -> str:
    return "+" + str(compiler.process(element.clauses, **kw))


def constant(value: str) -> sa.ColumnElement[str]:
    """A string written into the SQL, not bound: SQLite prepares a statement again on
    every run when a bound value stands where a partial index's condition could apply
    (``registrations.state``, ``ux_registrations_active``): measured 25-130 µs a run,
    five to twenty times the query itself. For constants of the code only."""
    if not value.replace("_", "").isalnum():
        raise ValueError(f"not a plain constant: {value!r}")
    return sa.literal_column(f"'{value}'", sa.String)


def by_task(
    upstream: sa.ColumnElement[Any], task_id: sa.ColumnElement[Any], keys: Iterable[tuple[str, str]]
) -> sa.ColumnElement[bool]:
    """Rows of these tasks, by (upstream, task id): ``task_id IN (…)`` per upstream, which
    the indexes that lead with ``task_id`` serve (a row-value IN would not, on SQLite)."""
    grouped: dict[str, list[str]] = {}
    for name, task in keys:
        grouped.setdefault(name, []).append(task)
    if not grouped:
        return sa.false()
    return sa.or_(
        *(
            sa.and_(task_id.in_(sorted(set(tasks))), upstream == name)
            for name, tasks in grouped.items()
        )
    )


def migrations_dir() -> Path:
    """Where the Alembic scripts are: inside the installed package, or at the repo's top."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise RuntimeError("the migrations folder is missing from this installation")


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


class Database:
    """Owns the engines; hands out write transactions and read connections."""

    def __init__(self, settings: Settings) -> None:
        url = make_url(settings.async_database_url)
        self.is_sqlite = url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            if url.database and url.database != ":memory:":
                Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = _sqlite_engine(url.render_as_string(False), "BEGIN IMMEDIATE")
            self.read_engine = _sqlite_engine(url.render_as_string(False), "BEGIN")
            on_disk = bool(url.database) and url.database != ":memory:"
            sync_url = url.set(drivername="sqlite").render_as_string(False)
            self.inline_engine: sa.Engine | None = (
                _inline_engine(sync_url, "BEGIN", read_only=True) if on_disk else None
            )
            self.inline_writer: sa.Engine | None = (
                _inline_engine(sync_url, "BEGIN IMMEDIATE", read_only=False) if on_disk else None
            )
        else:
            self.engine = create_async_engine(
                url, pool_size=10, max_overflow=10, pool_pre_ping=True
            )
            self.read_engine = self.engine
            self.inline_engine = self.inline_writer = None
        self._lookup_conn: Any = None  # SQLite: one raw read-only connection for lookup()
        # SQLite has one writer; queueing writers here keeps them off its busy handler.
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        # ... and grouping the API's writes lets it commit once for many requests.
        self.group: batching.GroupCommit | None = (
            batching.GroupCommit(self.write, is_away) if self.is_sqlite else None
        )
        self._heads = set(ScriptDirectory.from_config(alembic_config()).get_heads())

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Any]:
        """A transaction that commits on success and rolls back on error: an
        AsyncConnection, or on SQLite the same interface run inline on the event loop.
        This process is SQLite's only writer, its transactions are short and never wait
        on the network, and aiosqlite would cost several thread hops per statement."""
        if self.inline_writer is not None:
            async with self._write_lock or nullcontext():
                with self.inline_writer.begin() as sync_conn:
                    yield InlineConnection(sync_conn)
            return
        async with self._write_lock or nullcontext(), self.engine.begin() as conn:
            yield conn

    async def write_grouped(self, job: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``job(conn)`` in a write transaction and answer its result once committed.
        On SQLite, jobs submitted together share one transaction (``batching``), each in a
        SAVEPOINT, so that its error undoes only its own statements. On PostgreSQL each
        runs alone: the pool writes in parallel, and the server already flushes the WAL
        once for commits that arrive together."""
        if self.group is not None:
            return await self.group.run(job)
        async with self.write() as conn:
            return await job(conn)

    @asynccontextmanager
    async def read(self, quick: bool = True) -> AsyncIterator[Any]:
        """A connection for reads: an AsyncConnection, or for ``quick`` (indexed, few
        rows) reads on SQLite, the same interface run inline on the event loop. A WAL
        reader never waits for a writer, and such a read takes microseconds, far less
        than aiosqlite's hops to its thread and back (several per query)."""
        if quick and self.inline_engine is not None:
            with self.inline_engine.connect() as conn:
                yield InlineConnection(conn)
            return
        async with self.read_engine.connect() as conn:
            yield conn

    def insert_ignore(self, table: sa.Table, values: dict[str, Any]) -> Any:
        """``INSERT … ON CONFLICT DO NOTHING`` in this database's dialect."""
        dialect = sqlite if self.is_sqlite else postgresql
        return dialect.insert(table).values(**values).on_conflict_do_nothing()

    async def migrate(self) -> None:
        """Apply migrations up to head (under an advisory lock on PostgreSQL)."""
        async with self._write_lock or nullcontext(), self.engine.begin() as conn:
            if not self.is_sqlite:
                await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
            await conn.run_sync(_upgrade)

    async def notify(self, conn: Any, topic: str) -> None:
        """Tell workers in other processes that ``topic`` ("tasks", "events") has new work,
        when this transaction commits. PostgreSQL only: SQLite has a single process."""
        if not self.is_sqlite:
            await conn.execute(sa.select(sa.func.pg_notify(NOTIFY_CHANNEL, topic)))

    async def at_head(self) -> bool:
        """Whether the schema is at the newest migration."""
        async with self.read() as conn:
            rows = await conn.exec_driver_sql("SELECT version_num FROM alembic_version")
            current = {row[0] for row in rows}
        return current == self._heads

    async def lookup(self, sql: str, params: dict[str, Any]) -> Any:
        """The first row of one indexed SELECT written in SQL with ``:name`` parameters,
        for the API's hottest reads. On SQLite it runs on a raw read-only connection on
        the event loop, skipping SQLAlchemy's statement, transaction and result layers,
        which cost several times the query itself."""
        if self.inline_engine is not None:
            if self._lookup_conn is None:
                self._lookup_conn = self.inline_engine.raw_connection()
            return self._lookup_conn.execute(sql, params).fetchone()
        async with self.read() as conn:
            return (await conn.execute(sa.text(sql), params)).first()

    async def dispose(self) -> None:
        if self.group is not None:
            await self.group.close()
        if self._lookup_conn is not None:
            self._lookup_conn.close()
            self._lookup_conn = None
        for inline in (self.inline_engine, self.inline_writer):
            if inline is not None:
                inline.dispose()
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()


S = TypeVar("S", bound=sa.Executable)


def prepared(statement: S) -> S:
    """Mark a statement built once (its values bound at execution) to run on SQLite's
    driver directly, below SQLAlchemy's execution layer (statement cache lookup, cache
    key, parameter and result set-up), which costs more than SQLite running it
    (profiled: bench/README.md). The delivery worker's statements are such. Compiled
    once by SQLAlchemy, so the SQL is the same; on PostgreSQL, and through any other
    connection, it runs as any statement does."""
    _PREPARED[id(statement)] = (statement, None)
    return statement


_PREPARED: dict[int, tuple[Any, _Compiled | None]] = {}


class _Compiled:
    """A prepared statement compiled for SQLite: its SQL, where each value goes, and how
    its rows read. A list bound as ``IN (…)`` gets one ``?`` per item (SQL kept per
    length)."""

    def __init__(self, statement: Any, dialect: sa.Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        assert compiled.positiontup is not None  # SQLite's parameters are positional
        self.sql: str = compiled.string
        self.names: list[str] = list(compiled.positiontup)
        self.given = {name: bind.value for name, bind in compiled.binds.items()}
        self.processors = {
            name: processor
            for name, bind in compiled.binds.items()
            if (processor := bind.type.bind_processor(dialect)) is not None
        }
        # Lists bound as IN (…), in a fixed order: their lengths name a sized SQL text.
        self.expanding = tuple(sorted(n for n, bind in compiled.binds.items() if bind.expanding))
        self._sized: dict[tuple[int, ...], str] = {}
        described = (
            statement.column_descriptions
            if isinstance(statement, sa.Select)
            else getattr(statement, "returning_column_descriptions", [])
        )
        self.row: Any = None
        self.readers: list[Any] = []
        if described:
            self.row = collections.namedtuple("Row", [d["name"] for d in described])  # type: ignore[misc]
            self.readers = [d["type"].result_processor(dialect, None) for d in described]

    def values(self, parameters: dict[str, Any]) -> list[Any]:
        out: list[Any] = []
        for name in self.names:
            value = parameters[name] if name in parameters else self.given[name]
            processor = self.processors.get(name)
            if name in self.expanding:
                out.extend(map(processor, value) if processor else value)
            else:
                out.append(processor(value) if processor else value)
        return out

    def text(self, parameters: dict[str, Any]) -> str:
        if not self.expanding:
            return self.sql
        sizes = tuple(len(parameters[name]) for name in self.expanding)
        found = self._sized.get(sizes)
        if found is None:
            found = self.sql
            for name, size in zip(self.expanding, sizes, strict=True):
                if size == 0:
                    raise ValueError(f"an empty list for {name}: callers skip such statements")
                found = found.replace(f"__[POSTCOMPILE_{name}]", ", ".join("?" * size))
            self._sized[sizes] = found
        return found

    def rows(self, cursor: Any) -> list[Any]:
        if self.row is None:
            return []
        readers = self.readers
        if not any(readers):
            return [self.row._make(raw) for raw in cursor.fetchall()]
        return [
            self.row._make(
                read(value) if read else value for read, value in zip(readers, raw, strict=True)
            )
            for raw in cursor.fetchall()
        ]


class _Result:
    """What a prepared statement returns: its rows (attributes by column name) and the
    count of rows it changed."""

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def all(self) -> list[Any]:
        return self._rows

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        if len(self._rows) != 1:
            raise sa.exc.NoResultFound() if not self._rows else sa.exc.MultipleResultsFound()
        return self._rows[0]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


class InlineConnection:
    """AsyncConnection's execute() over a synchronous SQLite connection."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.dialect = conn.dialect

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        found = _PREPARED.get(id(statement))
        if found is None:
            return self._conn.execute(statement, parameters)
        compiled = found[1]
        if compiled is None:
            compiled = _Compiled(statement, self.dialect)
            _PREPARED[id(statement)] = (statement, compiled)
        return self._raw(compiled, parameters or {})

    def _raw(self, compiled: _Compiled, parameters: dict[str, Any] | list[dict[str, Any]]) -> Any:
        raw = self._conn.connection.driver_connection
        assert raw is not None
        try:
            if isinstance(parameters, list):
                assert not compiled.expanding, "a list bound as IN (…) takes one set of values"
                sql = compiled.sql
                cursor = raw.executemany(sql, [compiled.values(each) for each in parameters])
            else:
                sql = compiled.text(parameters)
                cursor = raw.execute(sql, compiled.values(parameters))
            return _Result(compiled.rows(cursor), cursor.rowcount)
        except sqlite3.Error as exc:
            # Wrapped as SQLAlchemy wraps it, so callers tell an away database from a bad row.
            raise sa.exc.DBAPIError.instance(sql, parameters, exc, sqlite3.Error) from exc

    async def exec_driver_sql(self, statement: str) -> Any:
        return self._conn.exec_driver_sql(statement)

    @asynccontextmanager
    async def begin_nested(self) -> AsyncIterator[None]:
        """A SAVEPOINT: released on success, rolled back to on error. Sent to the driver
        as written: SQLAlchemy's savepoint builds and compiles two statements, which cost
        as much as the commit that group commit saves (profiled)."""
        raw = self._conn.connection.driver_connection
        assert raw is not None
        raw.execute("SAVEPOINT job")
        try:
            yield
        except BaseException:
            raw.execute("ROLLBACK TO job")
            raw.execute("RELEASE job")
            raise
        raw.execute("RELEASE job")


def _inline_engine(url: str, begin: str, read_only: bool) -> sa.Engine:
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 5})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=5000",
                       "foreign_keys=ON"):  # fmt: skip
            dbapi_connection.execute(f"PRAGMA {pragma}")
        if read_only:
            dbapi_connection.execute("PRAGMA query_only=ON")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)  # reads: one snapshot; writes: the lock up front

    return engine


def _upgrade(connection: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _sqlite_engine(url: str, begin: str) -> AsyncEngine:
    engine = create_async_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, say when a transaction begins.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "journal_mode=WAL",
            "synchronous=NORMAL",
            "busy_timeout=30000",
            "foreign_keys=ON",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)

    return engine
