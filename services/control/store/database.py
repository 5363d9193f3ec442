"""The metadata database: engine, Alembic migrations at start, transactions with retry."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from services.control.store.access import AccessRepository
from services.control.store.accounts import AccountRepository
from services.control.store.evaluations import EvaluationRepository
from services.control.store.events import EventRepository
from services.control.store.generations import GenerationRepository
from services.control.store.jobs import JobRepository
from services.control.store.models import ModelRepository
from services.control.store.usage import UsageRepository

log = logging.getLogger(__name__)

ALEMBIC_INI = Path(__file__).with_name("alembic.ini")
T = TypeVar("T")


def create_db_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    # Handlers run in worker threads; the pool hands each thread its own connection.
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
    file_backed = bool(parsed.database) and parsed.database != ":memory:"

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
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


class Store:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str, run_migrations: bool = True) -> "Store":
        engine = create_db_engine(url)
        if run_migrations:
            migrate(engine)
        return cls(engine)

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._sessions() as session, session.begin():
            yield Tx(session)

    def run(self, work: Callable[[Tx], T], attempts: int = 8) -> T:
        """Run `work` in a transaction; re-run it on fresh data when an optimistic lock lost."""
        for attempt in range(1, attempts + 1):
            try:
                with self.transaction() as tx:
                    return work(tx)
            except StaleDataError:
                if attempt == attempts:
                    raise
                log.debug("concurrent update, retrying (attempt %d)", attempt)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.engine.dispose()
