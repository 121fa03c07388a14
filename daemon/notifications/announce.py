"""What partners hear when an SMS ends: ``sms.sent`` / ``sms.failed``.

Called by the SMS store (``messages.finish``, ``messages.fail_unfinished``) inside the
transaction that records the final state. ``SmsOutcome`` is the events' ``data`` and
their documented schema (OpenAPI ``webhooks``).

The phone number is masked to its last three digits: a partner correlates the SMS with
the customer through ``client_id`` and ``service_id``, and webhook bodies end up in the
receivers' logs and queues, which we do not control; the last digits are enough for
support to tell which of a customer's numbers was used. For the same reason the text of
the SMS (it carries the client's name) is left out, and the phone is masked inside the
provider's error too (a refusal quotes the number).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field

from daemon.platform import outbox
from daemon.platform.db import Conn

MAX_ERROR_CHARS = 1000
VISIBLE_DIGITS = 3
# Seven digits or more, separators allowed: a phone number however a provider quotes it
# (as given, digits only, with the country code).
_NUMBER = re.compile(r"\+?\d(?:[ .()-]{0,2}\d){6,}")


class SmsOutcome(BaseModel):
    """An SMS to a customer that was sent (accepted by the provider) or gave up."""

    sms_id: int
    state: Literal["sent", "failed"]
    task_id: int | None = Field(description="the reconnection task it reports")
    service_id: int | None = Field(description="the UISP CRM service")
    client_id: int | None = Field(description="the UISP CRM client")
    phone: str = Field(
        description="the number, all but its last 3 digits masked", examples=["+** *** *** 222"]
    )
    provider: str | None = Field(description="the SMS provider (labsmobile, twilio, ...)")
    provider_ref: str | None = Field(description="the provider's id for the message")
    attempts: int
    error: str | None = Field(description="why it failed; null when sent")
    sent_at: dt.datetime | None


def mask_phone(phone: str) -> str:
    """Every digit but the last three as ``*`` (all of them when the number is short)."""
    digits = sum(c.isdigit() for c in phone)
    keep = VISIBLE_DIGITS if digits > 2 * VISIBLE_DIGITS else 0
    seen = 0
    out = []
    for c in phone:
        if c.isdigit():
            seen += 1
            out.append(c if seen > digits - keep else "*")
        else:
            out.append(c)
    return "".join(out)


def mask_numbers(text: str) -> str:
    """``text`` with every phone-like number in it masked (``mask_phone``)."""
    return _NUMBER.sub(lambda m: mask_phone(m.group()), text)


async def sms_finished(tx: Conn, row: Mapping[str, Any]) -> None:
    """Emit the outcome of the SMS ``row`` in ``tx``.

    ``row``: the ``sms_messages`` columns plus its task's ``service_id`` and ``client_id``
    (null without a task). Nothing for a skipped SMS (no provider): nothing was tried.
    """
    state = row["state"]
    if state not in ("sent", "failed"):
        return
    error = row["last_error"] if state == "failed" else None
    data = SmsOutcome(
        sms_id=row["id"],
        state=state,
        task_id=row["task_id"],
        service_id=row["service_id"],
        client_id=row["client_id"],
        phone=mask_phone(row["phone"]),
        provider=row["provider"],
        provider_ref=row["provider_ref"],
        attempts=row["attempts"],
        error=None if error is None else mask_numbers(error)[:MAX_ERROR_CHARS],
        sent_at=row["sent_at"],
    )
    await outbox.emit(tx, f"sms.{state}", data.model_dump(mode="json"), subject=f"sms:{row['id']}")
