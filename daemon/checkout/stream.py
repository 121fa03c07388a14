"""What the checkout shows of a payment, and the per-payment status stream (SSE).

``view(payment)`` is the only thing a browser ever gets of a payment: amount, description,
status, the outcome once there is one — never the client secret, metadata or the callback
URL. ``StatusStream`` is the body of ``GET /checkout/<token>/events``: the payment's view
now, then again each time the event bus says that payment changed, ending with the
outcome. The bus wakes it (``payment_id`` on the processor's events); a keepalive comment
every ``keepalive`` seconds also re-reads the row, a backstop for a change the bus did not
carry (made by another process). The browser opens it once and never polls.
"""

from __future__ import annotations

import json
from contextlib import ExitStack, suppress
from types import TracebackType
from typing import Any

import trio
from quart.wrappers.response import ResponseBody

from daemon.payments import currency, store
from daemon.payments.store import Payment
from daemon.platform.db import Database
from daemon.platform.events import Event, EventBus, Subscription, TooManySubscribers

KEEPALIVE_SECONDS = 15.0
# The bus's subscriber slots are shared with the operators' stream and Prefer: wait;
# anyone holding a link may open these, so they get a bounded part of them.
PER_PAYMENT_STREAMS = 4
# What the customer came for: paid (or authorized, for a manual capture).
SUCCESS = frozenset({"succeeded", "requires_capture"})
FAILURE = frozenset({"failed", "canceled", "expired"})


class StreamSlots:
    """How many checkout streams are open, per payment and in all (one app's)."""

    def __init__(self, total: int, per_payment: int = PER_PAYMENT_STREAMS) -> None:
        self.total = total
        self.per_payment = per_payment
        self._open: dict[str, int] = {}

    def refusal(self, payment_id: str) -> str | None:
        """Why another stream may not open now, or None."""
        if sum(self._open.values()) >= self.total:
            return "too many checkout streams are open; try again later"
        if self._open.get(payment_id, 0) >= self.per_payment:
            return "too many streams are open for this payment: close another tab"
        return None

    def take(self, payment_id: str) -> None:
        self._open[payment_id] = self._open.get(payment_id, 0) + 1

    def give_back(self, payment_id: str) -> None:
        left = self._open.get(payment_id, 0) - 1
        if left > 0:
            self._open[payment_id] = left
        else:
            self._open.pop(payment_id, None)


def outcome(status: str) -> str | None:
    if status in SUCCESS:
        return "success"
    if status in FAILURE:
        return "failure"
    return None


def view(payment: Payment) -> dict[str, Any]:
    hosted = payment.hosted_url if payment.provider == "stripe" else None
    return {
        "id": payment.id,
        "status": payment.status,
        "amount": payment.amount,
        "currency": payment.currency,
        "amount_display": currency.format_amount(payment.amount, payment.currency),
        "description": payment.description,
        "failure_code": payment.failure_code,
        "failure_message": payment.failure_message,
        "outcome": outcome(payment.status),
        # Stripe's Checkout Session page, once the processor has made one.
        "hosted_url": hosted,
    }


def render(state: dict[str, Any]) -> bytes:
    return f"event: status\ndata: {json.dumps(state, separators=(',', ':'))}\n\n".encode()


async def _cancel_when_set(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


class StatusStream(ResponseBody):
    """One payment's view as Server-Sent Events (``event: status``), until its outcome.

    Subscribes before the first read, so no change between the read and the first wait
    can be missed. Like the admin stream, each wait's nursery lives inside one
    ``__anext__`` call (never across a yield to Quart).
    """

    def __init__(
        self,
        db: Database,
        bus: EventBus,
        payment_id: str,
        shutdown: trio.Event,
        slots: StreamSlots,
        keepalive: float = KEEPALIVE_SECONDS,
    ) -> None:
        self._db = db
        self._bus = bus
        self._payment_id = payment_id
        self._shutdown = shutdown
        self._keepalive = keepalive
        self._slots = slots
        self._stack = ExitStack()
        self._sub: Subscription | None = None
        self._last: dict[str, Any] | None = None
        self._done = False

    async def __aenter__(self) -> StatusStream:
        # The route refused when full; a stream losing a race for the last slot ends at once.
        if self._slots.refusal(self._payment_id) is None:
            with suppress(TooManySubscribers):
                self._sub = self._stack.enter_context(self._bus.subscribe())
                self._slots.take(self._payment_id)
                self._stack.callback(self._slots.give_back, self._payment_id)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stack.close()

    def __aiter__(self) -> StatusStream:
        return self

    async def _state(self) -> dict[str, Any] | None:
        payment = await store.get(self._db, self._payment_id)
        return None if payment is None else view(payment)

    def _send(self, state: dict[str, Any]) -> bytes:
        self._last = state
        self._done = state["outcome"] is not None
        return render(state)

    async def _wait_for_change(self, sub: Subscription) -> Event | None:
        found: Event | None = None
        with trio.move_on_after(self._keepalive):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_when_set, self._shutdown, nursery.cancel_scope)
                while found is None:
                    event = await sub.receive()
                    if event.kind == "dropped" or event.data.get("payment_id") == self._payment_id:
                        found = event
                nursery.cancel_scope.cancel()
        return found

    async def __anext__(self) -> bytes:
        sub = self._sub
        if sub is None or self._done or self._shutdown.is_set():
            raise StopAsyncIteration
        if self._last is None:
            state = await self._state()
            if state is None:
                raise StopAsyncIteration
            return self._send(state)
        while True:
            event = await self._wait_for_change(sub)
            if self._shutdown.is_set():
                raise StopAsyncIteration
            state = await self._state()
            if state is None:
                raise StopAsyncIteration
            if state != self._last:
                return self._send(state)
            if event is None:
                return b": keepalive\n\n"
