"""Schema set-up with psycopg (sync, one-shot): versioned migrations, PGMQ, queues.

Run by ``paymentd migrate`` and, unless disabled, at every daemon start. Safe to run
concurrently: a transaction-level advisory lock serialises runs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files

import psycopg
import psycopg.sql
from pgmq.install import install_pgmq_from_sql

log = logging.getLogger(__name__)

# Arbitrary constant: the advisory lock key for migrations ("paymentd" in ASCII, truncated).
_MIGRATION_LOCK = 0x7061796D656E74


class MigrationError(Exception):
    """The database could not be prepared; the message says what to fix."""


@dataclass(frozen=True)
class MigrationReport:
    applied: list[str]
    pgmq: str  # "extension", "sql <version>", or "present"
    queues: list[str]


def _migration_files() -> list[tuple[int, str, str]]:
    out = []
    for entry in files("daemon.platform.migrations").iterdir():
        m = re.fullmatch(r"(\d{3})_(\w+)\.sql", entry.name)
        if m:
            out.append((int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(out)


def _install_pgmq(conn: psycopg.Connection) -> str:
    present = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'pgmq'").fetchone()
    if present:
        return "present"
    available = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pgmq'").fetchone()
    if available:
        conn.execute("CREATE EXTENSION pgmq")
        return "extension"
    # The bundled SQL opens its own transaction block on the connection we pass.
    version = install_pgmq_from_sql(conn=conn)
    return f"sql {version}"


def migrate(
    url: str, *, queue_names: Sequence[str] | None = None, notify_throttle_ms: int = 100
) -> MigrationReport:
    """Apply migrations, install PGMQ, create the queues and enable their notifications.

    ``queue_names`` defaults to the daemon's declared queues (``daemon.wiring.QUEUES``).
    """
    if queue_names is None:
        from daemon.wiring import QUEUE_NAMES  # the declarations import every capability

        queue_names = QUEUE_NAMES
    try:
        conn = psycopg.connect(url, autocommit=False, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise MigrationError(f"cannot connect to database.url: {exc}".strip()) from None
    try:
        with conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS paymentd_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r[0] for r in conn.execute("SELECT version FROM paymentd_migrations")}
            applied = []
            for version, name, sql in _migration_files():
                if version in done:
                    continue
                log.info("applying migration %s", name)
                conn.execute(sql.encode())
                conn.execute(
                    "INSERT INTO paymentd_migrations (version, name) VALUES (%s, %s)",
                    (version, name),
                )
                applied.append(name)
            pgmq_how = _install_pgmq(conn)
            existing = {r[0] for r in conn.execute("SELECT queue_name FROM pgmq.list_queues()")}
            for q in queue_names:
                if q not in existing:
                    conn.execute("SELECT pgmq.create(%s)", (q,))
                # The throttle state table is UNLOGGED (empty after a crash):
                # re-enable at every start.
                conn.execute("SELECT pgmq.enable_notify_insert(%s, %s)", (q, notify_throttle_ms))
                conn.execute(_notify_at_commit(q))
        return MigrationReport(applied, pgmq_how, list(queue_names))
    except psycopg.Error as exc:
        raise MigrationError(f"database migration failed: {exc}".strip()) from exc
    finally:
        conn.close()


def _notify_at_commit(queue: str) -> psycopg.sql.Composed:
    """Make the queue's insert trigger run at commit (INITIALLY DEFERRED), not at insert.

    pgmq's trigger decides whether to NOTIFY when the row is inserted: inside its throttle
    window after another NOTIFY it stays silent, and the consumer covers the window with
    one re-read ``throttle`` after that NOTIFY. A transaction that inserts within the
    window but commits after the re-read (drift's fix waiting for a service lock, a SQL
    caller's own long transaction) left its message unannounced until the safety poll,
    five minutes later. Run at commit, the decision is made when the message becomes
    visible: either it notifies, or a NOTIFY less than ``throttle`` ago is still followed
    by its re-read. (It also holds pgmq's throttle row lock only while committing.)
    """
    table = psycopg.sql.Identifier(f"q_{queue}")
    return psycopg.sql.SQL(
        _NOTIFY_AT_COMMIT_FUNCTION
        + "DROP TRIGGER IF EXISTS trigger_notify_queue_insert_listeners ON pgmq.{t};"
        " CREATE CONSTRAINT TRIGGER trigger_notify_queue_insert_listeners"
        " AFTER INSERT ON pgmq.{t} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
        " EXECUTE PROCEDURE paymentd.pgmq_notify_at_commit()"
    ).format(t=table)


# pgmq's own trigger function, run with its owner's rights: at commit it runs as the
# session's role, which for the SQL entry point (docs/sql-api.md) has no access to pgmq's
# throttle table; the SECURITY DEFINER create_payment it called has returned by then.
_NOTIFY_AT_COMMIT_FUNCTION = (
    "CREATE OR REPLACE FUNCTION paymentd.pgmq_notify_at_commit() RETURNS trigger"
    " LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgmq AS $f$"
    " BEGIN"
    " UPDATE pgmq.notify_insert_throttle SET last_notified_at = clock_timestamp()"
    " WHERE queue_name = substring(TG_TABLE_NAME from 3)"
    " AND (throttle_interval_ms = 0 OR clock_timestamp() - last_notified_at"
    " >= throttle_interval_ms * INTERVAL '1 millisecond');"
    " IF FOUND THEN PERFORM pg_notify('pgmq.' || TG_TABLE_NAME || '.' || TG_OP, NULL); END IF;"
    " RETURN NEW;"
    " END $f$;"
    " REVOKE ALL ON FUNCTION paymentd.pgmq_notify_at_commit() FROM PUBLIC; "
)
