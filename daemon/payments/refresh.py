"""Re-fetch one payment or refund from its provider and apply what it says.

What a Stripe event triggers (``daemon.payments.stripe_process``): the event only says
which object changed; this asks the provider for the object as it is now, then applies
the answer with the payments core's own ``processor.record`` (the state machine, the
history and the outbox, in one transaction under the row lock) — the same path as the
processor's own calls and reconciliation. Unlike the processor's ``drive``, a provider
error is raised to the caller, so the event is retried rather than marked done.

``refresh_refund`` re-fetches a refund with ``retrieve_refund`` (a create repeated with
the same key would replay Stripe's first, pending, answer) and finishes it through
``store.transition_refund``; reconcile does the same through ``processor.run_refund``.
"""

from __future__ import annotations

from daemon.payments import processor, store
from daemon.payments.processor import ProcessorDeps


async def refresh_payment(deps: ProcessorDeps, payment_id: str, actor: str) -> str:
    payment = await store.get(deps.db, payment_id)
    if payment is None:
        return f"no payment {payment_id}"
    ref, provider = payment.ref, processor.provider_for(deps, payment)
    if ref is None or provider is None:
        return f"{payment_id} has no provider object here yet"
    observed = await processor.call_provider(deps, lambda: provider.retrieve(ref))
    run = processor.Run(deps, actor)
    try:
        moved = await processor.record(run, payment_id, observed)
    finally:
        run.publish()
    after = moved.status if moved is not None else "gone"
    if after == payment.status:
        return f"{payment_id} stays {after} (provider: {observed.provider_status})"
    return f"{payment_id} {payment.status} → {after}"


async def refresh_refund(deps: ProcessorDeps, refund_id: str, actor: str) -> str:
    refund = await store.get_refund(deps.db, refund_id)
    if refund is None:
        return f"no refund {refund_id}"
    payment = await store.get(deps.db, refund.payment_id)
    provider = processor.provider_for(deps, payment) if payment is not None else None
    if refund.provider_ref is None or provider is None:
        return f"{refund_id} has no provider refund here yet"
    if refund.status != "pending":
        return f"{refund_id} is already {refund.status}"
    ref = refund.provider_ref
    observed = await processor.call_provider(deps, lambda: provider.retrieve_refund(ref))
    if observed.status == "pending":
        return f"{refund_id} still pending (provider: {observed.provider_status})"
    async with deps.db.transaction() as tx:
        await store.lock(tx, refund.payment_id)  # the payment's amounts change too
        locked = await store.lock_refund(tx, refund_id)
        if locked is None or locked.status != "pending":
            return f"{refund_id} is already {locked.status if locked else 'gone'}"
        _, changes = await store.transition_refund(
            tx,
            locked,
            observed.status,
            actor,
            provider_ref=observed.id,
            provider_status=observed.provider_status,
            failure_reason=observed.failure_reason,
        )
    for change in changes:
        change.publish(deps.events, deps.metrics)
    return f"{refund_id} pending → {observed.status}"
