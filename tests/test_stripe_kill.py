"""A real SIGKILL between our commit and Stripe's answer, on the Stripe provider: after a
restart exactly one PaymentIntent exists at Stripe (localstripe behind the front) and
the payment goes on to its final state.

The daemon is a subprocess (``paymentd run``); the front holds its PaymentIntent create
(``StripeFront.hold_next``) while the test kills it, in the two places a crash can fall:

- before Stripe saw the request (held, then dropped): nothing exists at Stripe; the
  restarted daemon creates it, once;
- after Stripe made the intent, before we heard back (the answer held): the restarted
  daemon asks again with the same idempotency key and Stripe (the front) replays the
  first intent instead of making a second.
"""

from __future__ import annotations

import secrets
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from daemon.fakes.stripe_front import StripeFront
from daemon.payments.provider import create_key
from daemon.platform.config import to_toml
from daemon.platform.db import Database
from tests.localstripe import LocalStripe
from tests.payments_harness import ADMIN, make_config, wait_for
from tests.stripe_fixtures import pay_intent, stripe_front_fixture
from tests.test_daemon_process import Notifications, daemon_process, free_port, listen, wait_exit
from tests.test_stripe_daemon import intents_for

__all__ = ["stripe_front_fixture"]

pytestmark = pytest.mark.slow

WHSEC = "whsec_kill_test_6c0ffee"


@pytest.fixture
async def notify_sockets() -> AsyncIterator[list[Notifications]]:
    made: list[Notifications] = []
    yield made
    for n in made:
        n.sock.close()


async def status_of(db: Database, payment_id: str, *wanted: str) -> str | None:
    status: str | None = await db.fetchval("SELECT status FROM payments WHERE id = $1", payment_id)
    return status if status in wanted else None


@pytest.mark.parametrize("stripe_saw_it", [False, True], ids=["before-stripe", "after-stripe"])
async def test_sigkill_while_the_intent_create_is_in_flight_then_restart_makes_one_intent(
    stripe_saw_it: bool,
    db_url: str,
    tmp_path: Path,
    aio_loop: None,
    front: StripeFront,
    localstripe: LocalStripe,
    notify_sockets: list[Notifications],
) -> None:
    port = free_port()
    # A provider timeout far longer than the test: the processor is still waiting for
    # Stripe when it dies.
    cfg = make_config(
        db_url, tmp_path, port=port, provider="stripe", stripe_api_key=front.api_key,
        stripe_base_url=front.base_url, stripe_webhook_secrets=(WHSEC,),
        provider_timeout_seconds=120.0,
    )  # fmt: skip
    config = tmp_path / "config.toml"
    config.write_text(to_toml(cfg))
    log = tmp_path / "daemon.log"
    base = f"http://127.0.0.1:{port}"
    front.webhook_url, front.webhook_secret = f"{base}/webhooks/stripe", WHSEC
    localstripe.register_webhook(f"kill-{secrets.token_hex(4)}", front.webhook_url, WHSEC)
    hold = front.hold_next("/v1/payment_intents", forward=stripe_saw_it)
    async with (
        Database.open(db_url, min_size=1, max_size=2) as db,
        httpx.AsyncClient(base_url=base, timeout=30) as http,
    ):
        notify = await listen(notify_sockets, tmp_path / "notify-1.sock")
        with daemon_process(config, notify.path, log) as proc:
            await notify.wait_for("READY=1")
            r = await http.post(
                "/api/v1/payments",
                json={"amount": 4200, "currency": "EUR", "description": "Fibra 600"},
                headers={**ADMIN, "Idempotency-Key": "kill-1"},
            )
            assert r.status_code == 201, r.text
            payment_id = r.json()["id"]
            with trio.fail_after(30):
                await hold.arrived.wait()  # the processor's create is at the front now
            proc.send_signal(signal.SIGKILL)
            assert await wait_exit(proc, 10) == -signal.SIGKILL
        hold.release()  # the dead daemon's request: dropped, or its answer lost
        row = await db.fetchrow(
            "SELECT status, create_attempted_at FROM payments WHERE id = $1", payment_id
        )
        assert row["status"] == "created" and row["create_attempted_at"] is not None
        assert hold.idempotency_key == create_key(payment_id)
        before = await intents_for(localstripe, payment_id)
        assert len(before) == (1 if stripe_saw_it else 0)

        notify2 = await listen(notify_sockets, tmp_path / "notify-2.sock")
        with daemon_process(config, notify2.path, log) as proc:
            await notify2.wait_for("READY=1")
            # The dead daemon's message comes back after its lease (2 s): created again.
            await wait_for(lambda: status_of(db, payment_id, "pending"), 30)
            [intent] = await intents_for(localstripe, payment_id)
            if stripe_saw_it:
                assert intent["id"] == before[0]["id"]  # the first one, replayed
            sent = [q for q in front.created("/v1/payment_intents")
                    if q.idempotency_key == create_key(payment_id)]  # fmt: skip
            assert len(sent) == 2  # the killed try and the restarted one, one key
            payment = (await http.get(f"/api/v1/payments/{payment_id}", headers=ADMIN)).json()
            assert (payment["provider_ref"], payment["client_secret"]) == (
                intent["id"], intent["client_secret"],
            )  # fmt: skip
            # The customer pays; Stripe's (localstripe's) webhook finishes it.
            with trio.fail_after(10):
                paid = await pay_intent(front, intent["id"])
            assert paid.status_code == 200, paid.text
            await wait_for(lambda: status_of(db, payment_id, "succeeded"), 30)
            proc.send_signal(signal.SIGTERM)
            assert await wait_exit(proc, 20) == 0
        assert len(await intents_for(localstripe, payment_id)) == 1
        assert await db.fetchval("SELECT count(*) FROM payments") == 1
    assert front.api_key not in log.read_text()
