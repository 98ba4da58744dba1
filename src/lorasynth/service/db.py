"""Database engine, migrations and the SQLite settings erasure depends on.

SQLite (the default, `DIR/lorasynth.db`) runs in WAL mode with `secure_delete` on, and every
write transaction starts with BEGIN IMMEDIATE so concurrent writers wait on the busy timeout
instead of failing on a stale snapshot. Any other SQLAlchemy URL (PostgreSQL) works unchanged.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from lorasynth.errors import LorasynthError

DB_FILE = "lorasynth.db"
MIGRATIONS = Path(__file__).parent / "migrations"


def default_url(data_dir: str | os.PathLike[str]) -> str:
    return f"sqlite:///{Path(data_dir).resolve() / DB_FILE}"


def make_engine(url: str) -> Engine:
    """An engine with the per-connection settings the service relies on."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        pool_size=10,
        max_overflow=30,
        pool_timeout=30,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        # Deleted rows are overwritten with zeros, not just unlinked from the b-tree.
        cur.execute("PRAGMA secure_delete=ON")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        # NORMAL is durable across a process crash in WAL mode (only power loss can lose
        # the last commits), which is the failure the service is tested against.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        # Readers take a snapshot (deferred); writers take the write lock up front.
        readonly = conn.get_execution_options().get("readonly", False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

    return engine


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent; run at every start)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        try:
            command.upgrade(cfg, "head")
        except Exception as exc:  # alembic raises many kinds; the message is what helps
            raise LorasynthError(f"database migration failed ({engine.url!r}): {exc}") from exc
        conn.commit()


def checkpoint(engine: Engine) -> None:
    """Move the WAL into the database file and truncate it, so deleted rows survive nowhere.

    With secure_delete the database pages of deleted rows are zeroed; the old page images in
    the WAL are removed only by a TRUNCATE checkpoint, which needs no reader on an old
    snapshot: retry a few times if one is.
    """
    if not is_sqlite(engine):
        return
    import time

    for attempt in range(50):
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            busy, _log, _done = cur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            cur.close()
        finally:
            raw.close()
        if not busy:
            return
        time.sleep(0.02 * (attempt + 1))
    raise LorasynthError("could not checkpoint the SQLite WAL after an erasure (busy readers)")


class Database:
    """An engine plus a session factory; `session()` is a commit-or-rollback block."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.on_commit: Callable[[list], None] | None = None
        # SQLite has one writer at a time; queueing writers of this process on a lock is
        # fairer and faster than SQLite's busy-wait polling (which made p99 latency seconds).
        self._writer = threading.RLock() if is_sqlite(self.engine) else contextlib.nullcontext()
        self._factory = sessionmaker(self.engine, expire_on_commit=False)
        self._read_factory = sessionmaker(
            self.engine.execution_options(readonly=True), expire_on_commit=False
        )

    @classmethod
    def open(cls, data_dir: str | os.PathLike[str], url: str | None = None) -> Database:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        db = cls(url or default_url(data_dir))
        if is_sqlite(db.engine):
            # Persistent in the file: set once here, not on every new pooled connection.
            raw = db.engine.raw_connection()
            try:
                raw.cursor().execute("PRAGMA journal_mode=WAL")
            finally:
                raw.close()
        migrate(db.engine)
        return db

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A write block: commits at the end, or rolls back on an exception. Events put in
        `s.info["events"]` go to `on_commit` only once the commit has succeeded."""
        with self._writer, self._factory() as s:
            with s.begin():
                yield s
            events = s.info.pop("events", None)
        if events and self.on_commit is not None:
            self.on_commit(events)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only block: a consistent snapshot that never waits for writers."""
        with self._read_factory() as s, s.begin():
            yield s

    def checkpoint(self) -> None:
        checkpoint(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()
