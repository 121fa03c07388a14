"""Idempotency-Key, as Stripe does it: scoped per caller, kept 24 h, survives restarts.

``run(db, scope, key, operation, params, work)``:

1. *Claim* the key in its own short transaction: a fresh key is inserted ``running``. An
   existing one answers for itself: other parameters → ``idempotency-key-reused`` (422);
   still running → ``idempotency-key-in-use`` (409); finished → its stored status and
   body (a *replay*). Two concurrent first requests serialise on the primary key: the
   second sees the first's committed claim and gets 409.
2. Run ``work(tx)`` and mark the key ``finished`` with the answer **in the same
   transaction**: the effect (payment row, queue message) exists exactly when the stored
   answer does. A refusal from ``work`` (a ``PaymentsError``) is stored as its problem
   body, as Stripe stores errors; the effect rolls back.
3. Anything else (database gone, cancelled, a bug) rolls back and releases the claim, so
   the client may simply retry. A claim left by a process that died is taken over once
   older than the lock window (its work never committed: step 2 is atomic).

Parameters are compared by fingerprint: SHA-256 of the operation and the canonical JSON
of the validated parameters (so key order and defaults do not matter).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from daemon.payments.errors import PaymentsError
from daemon.platform.db import Conn, Database

MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Outcome:
    """A POST's answer: the status (HTTP's vocabulary) and body, stored for replays."""

    status: int
    body: dict[str, Any]
    resource_id: str | None = None
    replayed: bool = False


def fingerprint(operation: str, params: dict[str, Any]) -> bytes:
    canonical = json.dumps(
        {"operation": operation, "params": params}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode("utf-8")).digest()


def check_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable() or not key.isascii():
        raise PaymentsError(
            "invalid-request",
            f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable ASCII characters",
            field="Idempotency-Key",
        )
    return key


@dataclass(frozen=True)
class Settings:
    ttl_seconds: float = 24 * 3600.0
    lock_seconds: float = 60.0


async def run(
    db: Database,
    scope: str,
    key: str | None,
    operation: str,
    params: dict[str, Any],
    work: Callable[[Conn], Awaitable[Outcome]],
    settings: Settings = Settings(),
) -> Outcome:
    """``work`` in one transaction, at most once per (scope, key); see the module doc."""
    if key is None:
        try:
            async with db.transaction() as tx:
                return await work(tx)
        except PaymentsError as exc:
            return Outcome(exc.status, exc.body())
    check_key(key)
    digest = fingerprint(operation, params)
    locked_at = await _claim(db, scope, key, operation, digest, settings)
    if isinstance(locked_at, Outcome):
        return locked_at
    try:
        try:
            async with db.transaction() as tx:
                outcome = await work(tx)
                await _finish(tx, scope, key, locked_at, outcome)
                return outcome
        except PaymentsError as exc:
            refused = Outcome(exc.status, exc.body())
            async with db.transaction() as tx:
                await _finish(tx, scope, key, locked_at, refused)
            return refused
    except BaseException:
        await _release(db, scope, key, locked_at)
        raise


# What run_answered runs once the key is claimed: the statement (and its arguments)
# that writes the effect and finishes the key, and the answer it stores; made from the
# claim's locked_at. Plain Python without I/O (it runs between the two statements).
Prepare = Callable[[Any], tuple[str, tuple[Any, ...], Outcome]]


async def run_answered(
    db: Database,
    scope: str,
    key: str,
    operation: str,
    params: dict[str, Any],
    prepare: Prepare,
    settings: Settings = Settings(),
) -> Outcome:
    """``run`` with a key, for work that is one statement which also stores its answer.

    The statement from ``prepare(locked_at)`` writes the effect and finishes the key
    together (one statement is one transaction: the effect exists exactly when the
    stored answer does, as in step 2), and must return no row, having written nothing,
    when the claim was lost. It runs right after the claim, on the same connection in
    the same call to the database (``Database.fetchrow_then``): two round trips and one
    bridge crossing in all, where ``run`` takes five and seven. ``prepare`` cannot
    refuse: check the input before calling this.
    """
    check_key(key)
    digest = fingerprint(operation, params)
    claim = (scope, key, operation, digest, settings.ttl_seconds, settings.lock_seconds)
    locked: list[Any] = []  # the claim's locked_at, once claimed
    planned: list[Outcome] = []

    def then(claimed: Any) -> tuple[str, tuple[Any, ...]] | None:
        if claimed is None:
            return None
        locked.append(claimed["locked_at"])
        sql, args, outcome = prepare(claimed["locked_at"])
        planned.append(outcome)
        return sql, args

    while True:
        try:
            claimed, written = await db.fetchrow_then(CLAIM, claim, then)
        except BaseException:
            if locked:
                await _release(db, scope, key, locked[0])
            raise
        if claimed is not None:
            break
        held = await _held(db, scope, key, operation, digest)
        if held is not None:
            return held
        # Released between the two statements: as good as new, claim it again.
    locked_at, outcome = locked[0], planned[0]
    if written is None:
        await _release(db, scope, key, locked_at)
        raise RuntimeError(f"lost the claim on Idempotency-Key {key!r} before finishing")
    return outcome


async def _release(db: Database, scope: str, key: str, locked_at: Any) -> None:
    """Give an unfinished claim back, so the client may simply retry."""
    with trio.move_on_after(5, shield=True):
        with contextlib.suppress(Exception):  # else the lock window releases it
            await db.execute(
                "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2"
                " AND status = 'running' AND locked_at = $3",
                scope,
                key,
                locked_at,
            )


# A fresh key, or one expired or left running past the lock window by a dead process;
# $1 scope, $2 key, $3 operation, $4 fingerprint, $5 ttl, $6 lock window (seconds).
CLAIM = (
    "INSERT INTO idempotency_keys AS k (scope, key, operation, fingerprint, locked_at,"
    " expires_at) VALUES ($1, $2, $3, $4, clock_timestamp(),"
    " now() + make_interval(secs => $5))"
    " ON CONFLICT (scope, key) DO UPDATE SET operation = EXCLUDED.operation,"
    " fingerprint = EXCLUDED.fingerprint, status = 'running',"
    " locked_at = EXCLUDED.locked_at, response_status = NULL, response_body = NULL,"
    " resource_id = NULL, created_at = now(), finished_at = NULL,"
    " expires_at = EXCLUDED.expires_at"
    " WHERE k.expires_at <= now() OR (k.status = 'running'"
    " AND k.locked_at <= now() - make_interval(secs => $6)"
    " AND k.fingerprint = EXCLUDED.fingerprint)"
    " RETURNING locked_at"
)


async def _claim(
    db: Database, scope: str, key: str, operation: str, digest: bytes, settings: Settings
) -> Any:
    """The claim's ``locked_at`` if this request owns the key now, else its ``Outcome``."""
    row = await db.fetchrow(
        CLAIM,
        scope,
        key,
        operation,
        digest,
        settings.ttl_seconds,
        settings.lock_seconds,
    )
    if row is not None:
        return row["locked_at"]
    held = await _held(db, scope, key, operation, digest)
    if held is None:  # released between the two statements: as good as new
        return await _claim(db, scope, key, operation, digest, settings)
    return held


async def _held(
    db: Database, scope: str, key: str, operation: str, digest: bytes
) -> Outcome | None:
    """The answer for a key someone else holds (None: it is gone, claim it again)."""
    held = await db.fetchrow(
        "SELECT operation, fingerprint, status, response_status, response_body, resource_id"
        " FROM idempotency_keys WHERE scope = $1 AND key = $2",
        scope,
        key,
    )
    if held is None:
        return None
    if bytes(held["fingerprint"]) != digest:
        used = held["operation"]
        detail = (
            f"Idempotency-Key {key!r} was used for another request"
            + (f" ({used})" if used != operation else " with other parameters")
            + "; use a new key for a new request"
        )
        return Outcome(**_body(PaymentsError("idempotency-key-reused", detail)))
    if held["status"] == "running":
        detail = f"a request with Idempotency-Key {key!r} is still running; retry shortly"
        return Outcome(**_body(PaymentsError("idempotency-key-in-use", detail)))
    return Outcome(
        held["response_status"], dict(held["response_body"]), held["resource_id"], replayed=True
    )


def _body(exc: PaymentsError) -> dict[str, Any]:
    return {"status": exc.status, "body": exc.body()}


async def _finish(tx: Conn, scope: str, key: str, locked_at: Any, outcome: Outcome) -> None:
    done = await tx.fetchval(
        "UPDATE idempotency_keys SET status = 'finished', response_status = $4,"
        " response_body = $5::jsonb, resource_id = $6, finished_at = now()"
        " WHERE scope = $1 AND key = $2 AND status = 'running' AND locked_at = $3"
        " RETURNING true",
        scope,
        key,
        locked_at,
        outcome.status,
        outcome.body,
        outcome.resource_id,
    )
    if not done:
        # Our claim lapsed and another request took the key over: our work must not
        # commit next to theirs.
        raise RuntimeError(f"lost the claim on Idempotency-Key {key!r} before finishing")


async def prune(db: Database, *, limit: int = 1000) -> int:
    """Delete expired keys (the retention job's part for payments)."""
    status = await db.execute(
        "DELETE FROM idempotency_keys WHERE ctid IN (SELECT ctid FROM idempotency_keys"
        " WHERE expires_at <= now() LIMIT $1)",
        limit,
    )
    return int(status.split()[-1])
