"""The SQL entry point's view of the daemon (migration 015, docs/sql-api.md).

``paymentd.create_payment`` runs inside another application's transaction, where the
daemon's config is out of reach; ``publish_settings`` writes what it needs (the provider,
the pending TTL, the idempotency window) into ``paymentd.settings`` and re-syncs
``paymentd.currencies`` from ``daemon.payments.currency`` (the one source of exponents),
at every daemon start.
"""

from __future__ import annotations

from daemon.payments import currency
from daemon.platform.config import PaymentsConfig
from daemon.platform.db import Database


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
