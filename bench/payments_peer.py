"""The baseline for ``bench/payments_create.py``: FastAPI + uvicorn + asyncpg doing the same
durable create as paymentd's ``POST /api/v1/payments`` with an ``Idempotency-Key``.

The same statements on the same schema, taken from paymentd's own modules: the claim
(``idempotency.CLAIM``, its own transaction), then the one statement that stores the
answer on the key and, with it, the payment, its first history row, its outbox event and
the queue message (``store.INSERT_ANSWERED``); a repeated key answers the stored body.
The pool's release does what paymentd's does (a ROLLBACK only when a transaction was
left open) instead of asyncpg's default reset query, a round trip paymentd does not
make. What it leaves out is what paymentd adds around it: API-key lookup (this checks a
static bearer token, as paymentd's admin token), strict JSON parsing, currency table,
request ids, problem documents.

Run: ``python bench/payments_peer.py --port N --dsn URL`` (payments_create.py starts it).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any, Literal

import asyncpg
import uvicorn
from fastapi import FastAPI, Header, HTTPException, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from daemon.payments.idempotency import CLAIM
from daemon.payments.store import INSERT_ANSWERED

TOKEN = "bench-token"
# What paymentd's outbox event carries (store.Payment.announced).
ANNOUNCED = (
    "id", "status", "amount", "currency", "amount_captured", "amount_refunded", "method",
    "kind", "customer", "metadata", "uisp_client_id", "provider", "provider_ref",
    "failure_code",
)  # fmt: skip


def _iso(value: dt.datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


class CreatePayment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: StrictInt = Field(gt=0, le=10**12)
    currency: str = Field(min_length=3, max_length=3)
    description: str | None = None
    customer: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    capture_method: Literal["automatic", "manual"] = "automatic"
    method: Literal["intent", "hosted_checkout", "payment_link"] = "intent"


def build(dsn: str, pool_size: int) -> FastAPI:
    state: dict[str, Any] = {}

    async def reset(conn: asyncpg.Connection) -> None:
        if conn.is_in_transaction():
            await conn.execute("ROLLBACK")

    async def init(conn: asyncpg.Connection) -> None:
        await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads,
                                  schema="pg_catalog")  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["pool"] = await asyncpg.create_pool(dsn, min_size=pool_size, max_size=pool_size,
                                                  init=init, reset=reset)  # fmt: skip
        yield
        await state["pool"].close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/api/v1/payments", status_code=201)
    async def create(
        body: CreatePayment,
        response: Response,
        authorization: str = Header(""),
        idempotency_key: str | None = Header(None),
    ) -> Any:
        if not hmac.compare_digest(authorization.encode(), f"Bearer {TOKEN}".encode()):
            raise HTTPException(401)
        pool: asyncpg.Pool = state["pool"]
        params = body.model_dump()
        params["currency"] = params["currency"].upper()
        digest = hashlib.sha256(
            json.dumps({"operation": "payments.create", "params": params}, sort_keys=True,
                       separators=(",", ":")).encode()
        ).digest()  # fmt: skip
        scope = "admin"
        locked = await pool.fetchval(
            CLAIM, scope, idempotency_key, "payments.create", digest, 86400.0, 60.0
        )
        if locked is None:
            held = await pool.fetchrow(
                "SELECT fingerprint, status, response_status, response_body FROM"
                " idempotency_keys WHERE scope = $1 AND key = $2", scope, idempotency_key,
            )  # fmt: skip
            if bytes(held["fingerprint"]) != digest:
                raise HTTPException(422)
            if held["status"] == "running":
                raise HTTPException(409)
            response.status_code = held["response_status"]
            return held["response_body"]
        pid = "pay_" + secrets.token_hex(12)
        expires = locked + dt.timedelta(days=1)
        at, until = _iso(locked), _iso(expires)
        out = {
            "id": pid, "status": "created", "amount": params["amount"],
            "currency": params["currency"], "currency_exponent": 2,
            "amount_display": f"{params['amount'] / 100:.2f} {params['currency']}",
            "amount_captured": 0, "amount_refunded": 0, "amount_refundable": 0,
            "method": params["method"], "kind": "one_time", "interval": None,
            "capture_method": params["capture_method"], "description": params["description"],
            "customer": params["customer"], "metadata": params["metadata"],
            "status_callback_url": None, "uisp_client_id": None, "uisp_payment_id": None,
            "provider": "mock", "provider_ref": None, "client_secret": None,
            "hosted_url": None, "failure_code": None, "failure_message": None,
            "cancel_requested": False, "capture_requested": False, "created_at": at,
            "updated_at": at, "expires_at": until, "finished_at": None,
        }  # fmt: skip
        announced = {k: out[k] for k in ANNOUNCED}
        row = await pool.fetchrow(
            INSERT_ANSWERED,
            pid, params["amount"], params["currency"], params["method"], "one_time", None,
            params["capture_method"], params["description"], params["customer"],
            params["metadata"], None, None, "api:admin", "mock", locked, expires,
            scope, idempotency_key, locked, 201, out,
            "payments", "evt_" + secrets.token_hex(16), announced,
        )  # fmt: skip
        if row is None:
            raise HTTPException(500)
        return out

    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--dsn", required=True)
    p.add_argument("--pool", type=int, default=10)
    a = p.parse_args()
    uvicorn.run(build(a.dsn, a.pool), host="127.0.0.1", port=a.port, log_level="warning",
                access_log=False)  # fmt: skip


if __name__ == "__main__":
    main()
