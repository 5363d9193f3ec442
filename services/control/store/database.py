"""The metadata database: engine, Alembic migrations at start, transactions with retry."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from services.common.errors import Unavailable
from services.control.store.access import AccessRepository
from services.control.store.accounts import AccountRepository
from services.control.store.evaluations import EvaluationRepository
from services.control.store.events import EventRepository
from services.control.store.generations import GenerationRepository
from services.control.store.jobs import JobRepository
from services.control.store.models import ModelRepository
from services.control.store.shares import ShareRepository
from services.control.store.sweeps import SweepRepository
from services.control.store.usage import UsageRepository

log = logging.getLogger(__name__)

ALEMBIC_INI = Path(__file__).with_name("alembic.ini")
T = TypeVar("T")
# SQLite waits this long for a lock itself (busy_timeout) before a statement fails.
BUSY_TIMEOUT_S = 30.0
# Then a transaction that failed because the database was locked, full, or (PostgreSQL) not
# reachable is run again this many times, after these pauses, before the caller gets
# UNAVAILABLE: a failover or a long write elsewhere passes, a dead database is reported.
UNAVAILABLE_BACKOFF_S = (0.5, 1.0, 2.0)


def create_db_engine(url: str, busy_timeout_s: float = BUSY_TIMEOUT_S) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    # Handlers run in worker threads; the pool hands each thread its own connection.
    engine = create_engine(url, connect_args={"check_same_thread": False,
                                              "timeout": busy_timeout_s})
    file_backed = bool(parsed.database) and parsed.database != ":memory:"

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        if file_backed:
            # WAL: readers (List/Get/Watch) never block the reconciler's writes.
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    return engine


def migrate(engine: Engine) -> None:
    """Bring the schema to the latest Alembic revision (creates it on an empty database)."""
    cfg = AlembicConfig(str(ALEMBIC_INI))
    cfg.set_main_option("script_location", str(ALEMBIC_INI.parent / "migrations"))
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")


class Tx:
    """One transaction and the repositories bound to it."""

    def __init__(self, session: Session):
        self.session = session
        self.accounts = AccountRepository(session)
        self.jobs = JobRepository(session)
        self.models = ModelRepository(session)
        self.usage = UsageRepository(session)
        self.access = AccessRepository(session)
        self.events = EventRepository(session)
        self.evaluations = EvaluationRepository(session)
        self.generations = GenerationRepository(session)
        self.shares = ShareRepository(session)
        self.sweeps = SweepRepository(session)


class Store:
    def __init__(self, engine: Engine,
                 unavailable_backoff_s: tuple[float, ...] = UNAVAILABLE_BACKOFF_S):
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._backoff = unavailable_backoff_s

    @classmethod
    def open(cls, url: str, run_migrations: bool = True, busy_timeout_s: float = BUSY_TIMEOUT_S,
             unavailable_backoff_s: tuple[float, ...] = UNAVAILABLE_BACKOFF_S) -> "Store":
        engine = create_db_engine(url, busy_timeout_s)
        if run_migrations:
            migrate(engine)
        return cls(engine, unavailable_backoff_s)

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._sessions() as session, session.begin():
            yield Tx(session)

    def run(self, work: Callable[[Tx], T], attempts: int = 8) -> T:
        """Run `work` in a transaction; re-run it on fresh data when an optimistic lock lost,
        and after a pause when the database was locked or unreachable (then UNAVAILABLE).
        Each failed try was rolled back, so `work` runs again from the start."""
        pauses = iter(self._backoff)
        attempt = 0
        while True:
            attempt += 1
            try:
                with self.transaction() as tx:
                    return work(tx)
            except StaleDataError:
                if attempt >= attempts:
                    raise
                log.debug("concurrent update, retrying (attempt %d)", attempt)
            except DBAPIError as exc:
                if not _unavailable(exc):
                    raise
                pause = next(pauses, None)
                reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
                if pause is None:
                    log.error("the metadata database is unavailable: %s", reason)
                    raise Unavailable(f"the metadata database is unavailable ({reason}); "
                                      "nothing was changed, retry later") from exc
                log.warning("the metadata database is unavailable (%s); retrying in %.1f s",
                            reason, pause)
                time.sleep(pause)

    def close(self) -> None:
        self.engine.dispose()


# OperationalError messages of a database that is locked, full or unreachable (SQLite's, then
# PostgreSQL's), not of a bad statement.
_UNAVAILABLE_MESSAGES = ("database is locked", "database table is locked", "disk is full",
                         "disk i/o error", "unable to open database", "could not connect",
                         "connection refused", "server closed the connection",
                         "terminating connection", "the database system is")


def _unavailable(exc: DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    message = str(exc.orig).lower()
    return isinstance(exc, OperationalError) and any(m in message for m in _UNAVAILABLE_MESSAGES)
