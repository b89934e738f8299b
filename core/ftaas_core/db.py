"""Database engine, sessions and schema migrations (Alembic, upgraded in place at start-up)."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from ftaas_core.settings import get_settings

MIGRATIONS = Path(__file__).with_name("migrations")
SQLITE_POOL_SIZE = 20
"""A file costs no server its connection slots: SQLite's pool is as large as the API's
threadpool, so no request waits for a connection."""


def make_engine(url: str) -> Engine:
    """An engine tuned for several processes sharing one database (API, workers, trainers).

    A server database gets ``database_pool_size`` + ``database_max_overflow`` connections per
    process, kept open so a busy API does not open and drop one per request, and new ones give
    up after ``database_connect_timeout_seconds`` rather than wait on a hung server forever.
    """
    if url.startswith("sqlite"):
        db_path = make_url(url).database
        # An in-memory database lives in one connection: SQLAlchemy pools it its own way.
        in_memory = not db_path or db_path == ":memory:"
        if not in_memory:
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            **({} if in_memory else {"pool_size": SQLITE_POOL_SIZE, "max_overflow": 10}),
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    settings = get_settings()
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
        connect_args={"connect_timeout": settings.database_connect_timeout_seconds},
    )


class Database:
    """One engine and its session factory."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose work is one transaction: committed on success, rolled back on error."""
        with self.sessions() as session, session.begin():
            yield session

    def migrate(self) -> None:
        """Bring the schema to the newest revision; safe when several processes start at once."""
        with _migration_lock(self), self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(7461636173)"))
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))


@contextmanager
def _migration_lock(db: Database) -> Iterator[None]:
    """SQLite has no advisory locks: serialise migrations with a lock file beside the database."""
    path = make_url(db.url).database if db.engine.dialect.name == "sqlite" else None
    if not path:
        yield
        return
    with open(f"{path}.migrate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@lru_cache
def get_database() -> Database:
    return Database(get_settings().sqlalchemy_url)
