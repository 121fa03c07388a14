"""A payment provider with its calls timed: ``paymentd_payment_provider_call_seconds``.

The composition root wraps the configured provider once (``wiring.open_resources``), so
every caller — the processor, reconcile and expire, the Stripe events path — is measured
without knowing it. Labels: the provider's name, the operation (the method) and its
outcome (``ok``, ``declined``, ``rejected``, ``unavailable``, ``cancelled``: the caller's
deadline — ``provider_timeout_seconds`` — or a shutdown cut the call short; ``error``:
anything else).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from daemon.payments.provider import (
    CreateRequest,
    PaymentProvider,
    ProviderDeclined,
    ProviderPayment,
    ProviderRef,
    ProviderRefund,
    ProviderRejected,
    ProviderUnavailable,
    RefundRequest,
)
from daemon.platform.metrics import Metrics

T = TypeVar("T")


class MeteredProvider:
    def __init__(self, inner: PaymentProvider, metrics: Metrics) -> None:
        self.inner = inner
        self.name = inner.name
        self._calls = metrics.payment_provider_calls

    async def _timed(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        outcome = "error"  # anything else: a bug, on its way up
        started = trio.current_time()
        try:
            result = await call()
            outcome = "ok"
            return result
        except ProviderDeclined:
            outcome = "declined"
            raise
        except ProviderRejected:
            outcome = "rejected"
            raise
        except ProviderUnavailable:
            outcome = "unavailable"
            raise
        except trio.Cancelled:
            outcome = "cancelled"
            raise
        finally:
            seconds = trio.current_time() - started
            self._calls.labels(self.name, operation, outcome).observe(seconds)

    async def create(self, req: CreateRequest) -> ProviderPayment:
        return await self._timed("create", lambda: self.inner.create(req))

    async def retrieve(self, ref: ProviderRef) -> ProviderPayment:
        return await self._timed("retrieve", lambda: self.inner.retrieve(ref))

    async def cancel(self, ref: ProviderRef, *, idempotency_key: str) -> ProviderPayment:
        return await self._timed(
            "cancel", lambda: self.inner.cancel(ref, idempotency_key=idempotency_key)
        )

    async def capture(
        self, ref: ProviderRef, *, amount: int | None, idempotency_key: str
    ) -> ProviderPayment:
        return await self._timed(
            "capture",
            lambda: self.inner.capture(ref, amount=amount, idempotency_key=idempotency_key),
        )

    async def refund(self, req: RefundRequest) -> ProviderRefund:
        return await self._timed("refund", lambda: self.inner.refund(req))

    async def retrieve_refund(self, refund_id: str) -> ProviderRefund:
        return await self._timed("retrieve_refund", lambda: self.inner.retrieve_refund(refund_id))

    async def aclose(self) -> None:
        await self.inner.aclose()


def unwrap(provider: PaymentProvider | None) -> PaymentProvider | None:
    """The provider itself (the Stripe events path needs Stripe's own calls)."""
    return provider.inner if isinstance(provider, MeteredProvider) else provider
