"""The reconcile and expire jobs (``wiring.jobs``; ``paymentd payments reconcile|expire``).

- **reconcile**: payments ``pending``/``requires_action``/``processing``/``unknown``
  untouched for ``reconcile_after_seconds`` are re-fetched from the provider and driven
  on (an ``unknown`` one without a provider id is created again with the same
  idempotency key: the provider answers the first object if there was one). Each try
  is committed first with its next due time (doubling, capped at
  ``reconcile_backoff_max_seconds``), so a provider that stays down is asked less and
  less often and a crash never retries hot. Pending refunds are taken on too
  (``processor.run_refund``): re-fetched once the provider gave their id, created
  again with the same key only when it never did.
- **expire**: payments still waiting for the customer past their ``expires_at`` are
  cancelled at the provider, then marked ``expired``. If the provider refuses because
  the customer paid at the last moment, the payment is recorded as it really is.

Both take at most ``batch_size`` rows a run and are safe to run alongside the processor:
every change is made under the payment's row lock and checked by the state machine.
"""

from __future__ import annotations

import datetime as dt
import logging

from daemon.payments import provider as prov
from daemon.payments import states, store
from daemon.payments.processor import (
    ProcessorDeps,
    Run,
    apply,
    call_provider,
    drive,
    provider_for,
    reconcile_delay,
    run_refund,
)
from daemon.payments.provider import ProviderError, ProviderRejected

log = logging.getLogger(__name__)


async def reconcile(deps: ProcessorDeps) -> str:
    cfg = deps.cfg
    ids = await store.due_for_reconcile(
        deps.db, after_seconds=cfg.reconcile_after_seconds, limit=cfg.batch_size
    )
    moved = 0
    for payment_id in ids:
        async with deps.db.transaction() as tx:
            payment = await store.lock(tx, payment_id)
            if payment is None or payment.status not in states.RECONCILABLE:
                continue
            attempts = payment.reconcile_attempts + 1
            delay = reconcile_delay(cfg, attempts + 1)
            await store.update(
                tx,
                payment.id,
                reconcile_attempts=attempts,
                reconcile_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay),
            )
            before = payment.status
        after = await drive(deps, payment_id, actor="reconcile", refresh=True)
        if after is not None and after.status != before:
            moved += 1
    refund_ids = await store.pending_refunds_due(
        deps.db, after_seconds=cfg.reconcile_after_seconds, limit=cfg.batch_size
    )
    refunds_done = 0
    for refund_id in refund_ids:
        refund = await run_refund(deps, refund_id, actor="reconcile")
        if refund is not None and refund.status != "pending":
            refunds_done += 1
    return (
        f"re-fetched {len(ids)} payment(s), {moved} changed state;"
        f" {len(refund_ids)} pending refund(s) asked again, {refunds_done} finished"
    )


async def expire(deps: ProcessorDeps) -> str:
    ids = await store.due_for_expiry(deps.db, limit=deps.cfg.batch_size)
    expired = 0
    for payment_id in ids:
        if await expire_one(deps, payment_id):
            expired += 1
    return f"{expired} of {len(ids)} payment(s) past their time to live expired"


async def expire_one(deps: ProcessorDeps, payment_id: str) -> bool:
    """Cancel one overdue payment at the provider and mark it expired; True if it is now."""
    run = Run(deps, "expire")
    try:
        async with deps.db.transaction() as tx:
            payment = await store.lock(tx, payment_id)
            if payment is None or payment.status not in states.AWAITING_CUSTOMER:
                return False
            if payment.expires_at > dt.datetime.now(dt.UTC):
                return False
            if payment.status == "created" and payment.create_attempted_at is None:
                _, change = await store.transition(
                    tx, payment, "expired", run.actor, {"reason": "never reached the provider"}
                )
                run.changes.append(change)
                return True
            provider = provider_for(deps, payment)
            ref = payment.ref
            if provider is None or ref is None:
                # A create in flight (or lost): reconcile settles it first; next run.
                return False
            await store.add_event(tx, payment.id, "expire_requested", None, None, run.actor)
        key = prov.cancel_key(payment_id)
        try:
            obs = await call_provider(deps, lambda: provider.cancel(ref, idempotency_key=key))
        except ProviderRejected:
            obs = await call_provider(deps, lambda: provider.retrieve(ref))
        async with deps.db.transaction() as tx:
            locked = await store.lock(tx, payment_id)
            if locked is None:
                return False
            moved, changes = await apply(tx, locked, obs, run.actor, expiring=True)
            if not moved.final and obs.status in ("requires_payment_method", "requires_action"):
                log.warning("payment %s: the provider did not cancel it", payment_id)
        run.changes.extend(changes)
        return moved.status == "expired"
    except ProviderError as exc:
        log.warning("payment %s not expired yet: %s", payment_id, exc.message)
        return False
    finally:
        run.publish()
