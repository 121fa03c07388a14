"""The SQL entry point's view of the daemon (migration 015, docs/sql-api.md).

``paymentd.create_payment`` runs inside another application's transaction, where the
daemon's config is out of reach; ``publish_settings`` writes what it needs (the provider,
the pending TTL, the idempotency window) into ``paymentd.settings`` and re-syncs
``paymentd.currencies`` from ``daemon.payments.currency`` (the one source of exponents),
at every daemon start.

``unsafe_callers`` names roles that may call the SECURITY DEFINER functions *and* create
objects in a schema on their fixed search_path (the daemon's tables' schema): such a role
can define e.g. ``format(text, bigint)`` there, which PostgreSQL prefers to pg_catalog's
``format(text, VARIADIC "any")``, and have it run with the owner's rights (the role that
ran the migrations). Checked at every start, logged as an error (docs/sql-api.md).
"""

from __future__ import annotations

import logging

from daemon.payments import currency
from daemon.platform.config import PaymentsConfig
from daemon.platform.db import Database, Executor

log = logging.getLogger(__name__)

# Not superusers (they need no hijack) and not the functions' owner; any schema that the
# definer functions' own search_path lists, except pg_catalog.
UNSAFE_CALLERS_SQL = """
SELECT DISTINCT r.rolname
FROM pg_proc p
JOIN pg_namespace pn ON pn.oid = p.pronamespace AND pn.nspname = 'paymentd'
CROSS JOIN LATERAL (
    SELECT trim(s) AS schema_name
    FROM unnest(p.proconfig) c,
         unnest(string_to_array(substring(c FROM '^search_path=(.*)$'), ',')) s
) path
JOIN pg_namespace n ON n.nspname = trim(both '"' FROM path.schema_name)
CROSS JOIN pg_roles r
WHERE p.prosecdef AND n.nspname <> 'pg_catalog'
  AND NOT r.rolsuper AND r.oid <> p.proowner
  AND has_function_privilege(r.oid, p.oid, 'EXECUTE')
  AND has_schema_privilege(r.oid, n.oid, 'CREATE')
ORDER BY r.rolname
"""


async def unsafe_callers(db: Executor) -> list[str]:
    """Roles that can call the SQL entry point and also shadow what it calls (see above)."""
    rows = await db.fetch(UNSAFE_CALLERS_SQL)
    return [r["rolname"] for r in rows]


async def publish_settings(db: Database, cfg: PaymentsConfig) -> None:
    codes = sorted(currency.EXPONENTS)
    async with db.transaction() as tx:
        await tx.execute(
            "UPDATE paymentd.settings SET provider = $1, pending_ttl_seconds = $2,"
            " idempotency_ttl_seconds = $3, updated_at = now()",
            cfg.provider,
            cfg.pending_ttl_seconds,
            cfg.idempotency_ttl_seconds,
        )
        await tx.execute(
            "INSERT INTO paymentd.currencies (code, exponent)"
            " SELECT * FROM unnest($1::text[], $2::smallint[])"
            " ON CONFLICT (code) DO UPDATE SET exponent = EXCLUDED.exponent"
            " WHERE currencies.exponent <> EXCLUDED.exponent",
            codes,
            [currency.EXPONENTS[c] for c in codes],
        )
        await tx.execute("DELETE FROM paymentd.currencies WHERE code <> ALL($1::text[])", codes)
    unsafe = await unsafe_callers(db)
    if unsafe:
        log.error(
            "SQL entry point: role(s) %s may call paymentd.create_payment and also CREATE in"
            " its schema, so they can run their own code with the owner's rights: REVOKE"
            " CREATE ON SCHEMA ... FROM them (docs/sql-api.md, grants)",
            ", ".join(unsafe),
        )
