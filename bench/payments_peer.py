"""The baseline for ``bench/payments_create.py``: FastAPI + uvicorn + asyncpg doing the same
durable create as paymentd's ``POST /api/v1/payments`` with an ``Idempotency-Key``.

The same statements on the same schema: claim the key (its own transaction), then one
transaction that inserts the payment, its first history row and its outbox event, sends
the queue message and stores the answer on the key; a repeated key answers the stored
body. What it leaves out is what paymentd adds around it: API-key lookup (this checks a
static bearer token, as paymentd's admin token), strict JSON parsing, currency table.

Run: ``python bench/payments_peer.py --port N --dsn URL`` (payments_create.py starts it).
"""

from __future__ import annotations

import argparse
import contextlib
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

TOKEN = "bench-token"


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

    async def init(conn: asyncpg.Connection) -> None:
        await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads,
                                  schema="pg_catalog")  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["pool"] = await asyncpg.create_pool(dsn, min_size=pool_size, max_size=pool_size,
                                                  init=init)  # fmt: skip
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
            json.dumps({"operation": "payments.create", "params": params}, sort_keys=True).encode()
        ).digest()
        scope = "admin"
        locked = await pool.fetchval(
            "INSERT INTO idempotency_keys AS k (scope, key, operation, fingerprint, locked_at)"
            " VALUES ($1, $2, 'payments.create', $3, clock_timestamp())"
            " ON CONFLICT (scope, key) DO NOTHING RETURNING locked_at",
            scope, idempotency_key, digest,
        )  # fmt: skip
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
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO payments (id, amount, currency, method, kind, capture_method,"
                " description, customer, metadata, created_by, provider, expires_at)"
                " VALUES ($1, $2, $3, $4, 'one_time', $5, $6, $7, $8::jsonb, 'api:admin',"
                " 'mock', now() + interval '1 day') RETURNING *",
                pid, params["amount"], params["currency"], params["method"],
                params["capture_method"], params["description"], params["customer"],
                params["metadata"],
            )  # fmt: skip
            await conn.execute(
                "INSERT INTO payment_events (payment_id, kind, to_status, actor)"
                " VALUES ($1, 'transition', 'created', 'api:admin')", pid,
            )  # fmt: skip
            out = {"id": pid, "status": "created", "amount": row["amount"],
                   "currency": row["currency"], "metadata": params["metadata"]}  # fmt: skip
            await conn.execute(
                "INSERT INTO events (id, type, subject, data) VALUES ($1, 'payment.created',"
                " $2, $3::jsonb)", "evt_" + secrets.token_hex(16), f"payment:{pid}", out,
            )  # fmt: skip
            await conn.execute("SELECT pgmq.send('payments', $1::jsonb)", {"payment_id": pid})
            body_out = {**out, "created_at": row["created_at"].isoformat()}
            await conn.execute(
                "UPDATE idempotency_keys SET status = 'finished', response_status = 201,"
                " response_body = $3::jsonb, resource_id = $4, finished_at = now()"
                " WHERE scope = $1 AND key = $2 AND locked_at = $5",
                scope, idempotency_key, body_out, pid, locked,
            )  # fmt: skip
        return body_out

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
