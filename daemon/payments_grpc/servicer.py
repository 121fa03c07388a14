"""The payments API over gRPC (``paymentd.payments.v1.Payments``): a thin face over
``daemon.payments.service``, like the HTTP routes (``daemon.payments.routes``).

grpc.aio calls these methods as asyncio tasks on the trio-asyncio loop; each one reads
the call's metadata, then runs the trio side (``_Calls``: authenticate, call the service,
build the reply) through ``trio_asyncio.trio_as_aio``. When the client's deadline passes
or it cancels, grpc.aio cancels the asyncio task and trio-asyncio cancels the trio task
with it, so the service's transaction rolls back (an idempotency claim is released).

Errors keep the problem document's words: the status message is its ``detail``, the
trailing metadata ``problem-type`` its type; the code mapping is in the .proto's header
(``CODES`` here). A request refused by the service is an ``Outcome`` with a 4xx status
(stored, like any answer, for an idempotent replay), mapped by its problem type. The
database being unreachable is UNAVAILABLE (HTTP's 503); anything else is INTERNAL with
no more than "internal error" (the exception is logged).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
import trio_asyncio

from daemon.payments import idempotency
from daemon.payments import service as svc
from daemon.payments.errors import KINDS, TYPE_PREFIX, PaymentsError
from daemon.payments.idempotency import Outcome
from daemon.payments.service import Caller, PaymentService
from daemon.payments_grpc.gen import payments_pb2 as pb
from daemon.payments_grpc.gen import payments_pb2_grpc as pb_grpc
from daemon.platform import auth
from daemon.platform.db import DatabaseError
from daemon.platform.deps import Deps
from daemon.platform.http.admin import MAX_LIMIT
from daemon.platform.http.problem import Problem

log = logging.getLogger(__name__)

M = TypeVar("M")  # a generated message class

# problem kind → gRPC status code (documented in payments.proto).
CODES: dict[str, grpc.StatusCode] = {
    "invalid-amount": grpc.StatusCode.INVALID_ARGUMENT,
    "invalid-currency": grpc.StatusCode.INVALID_ARGUMENT,
    "invalid-request": grpc.StatusCode.INVALID_ARGUMENT,
    "payment-not-found": grpc.StatusCode.NOT_FOUND,
    "refund-not-found": grpc.StatusCode.NOT_FOUND,
    "invalid-state": grpc.StatusCode.FAILED_PRECONDITION,
    "amount-exceeds-refundable": grpc.StatusCode.FAILED_PRECONDITION,
    "amount-exceeds-capturable": grpc.StatusCode.FAILED_PRECONDITION,
    "payments-disabled": grpc.StatusCode.FAILED_PRECONDITION,
    "idempotency-key-reused": grpc.StatusCode.ALREADY_EXISTS,
    "idempotency-key-in-use": grpc.StatusCode.ABORTED,
}
assert set(CODES) == set(KINDS), "every payments error kind needs a gRPC code"


class Refused(Exception):
    """A call's answer is an error: the code, the message, the problem type."""

    def __init__(self, code: grpc.StatusCode, message: str, problem_type: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.problem_type = problem_type


def _refused_problem(body: dict[str, Any]) -> Refused:
    kind = str(body.get("type", "")).removeprefix(TYPE_PREFIX)
    code = CODES.get(kind, grpc.StatusCode.INTERNAL)
    return Refused(code, str(body.get("detail") or body.get("title")), str(body.get("type")))


def _refused_auth(problem: Problem) -> Refused:
    # 401 and the 503 of a daemon with no admin token alike: the caller is not let in.
    code = (
        grpc.StatusCode.PERMISSION_DENIED
        if problem.status == 403
        else grpc.StatusCode.UNAUTHENTICATED
    )
    # The HTTP API's auth problems are "about:blank" too: the status says it all.
    return Refused(code, str(problem), "about:blank")


def authorization(metadata: Sequence[tuple[str, Any]]) -> str | None:
    """The credential as an ``Authorization`` value: ``authorization`` or ``x-api-key``."""
    found = {k.lower(): v for k, v in metadata if isinstance(v, str)}
    if "authorization" in found:
        return str(found["authorization"])
    if "x-api-key" in found:
        return f"Bearer {found['x-api-key']}"
    return None


def _message(cls: type[M], values: dict[str, Any]) -> M:
    """A reply from a ``public()`` dict: None (and unknown members) left at the default."""
    names = {f.name for f in cls.DESCRIPTOR.fields}  # type: ignore[attr-defined]
    return cls(**{k: v for k, v in values.items() if k in names and v is not None})


def payment_message(public: dict[str, Any]) -> pb.Payment:
    return _message(pb.Payment, {**public, "failure_reason": public.get("failure_message")})


def refund_message(public: dict[str, Any]) -> pb.Refund:
    return _message(pb.Refund, public)


def _opt(value: str) -> str | None:
    return value or None


def _request_id(value: str) -> str | None:
    """The Idempotency-Key, checked here so the refusal names this face's field."""
    if not value:
        return None
    try:
        return idempotency.check_key(value)
    except PaymentsError:
        raise PaymentsError(
            "invalid-request",
            f"request_id must be 1-{idempotency.MAX_KEY_LENGTH} printable ASCII characters",
            field="request_id",
        ) from None


def _time(value: str, name: str) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise PaymentsError(
            "invalid-request", f"{name} must be an RFC 3339 time, got {value!r}", field=name
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


class _Calls:
    """The trio side of each method: authenticate, call the service, build the reply."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.service = PaymentService(deps.db, deps.config.payments, deps.events, deps.metrics)

    async def caller(self, credential: str | None, scope: str) -> Caller:
        try:
            principal = await auth.authenticate(self.deps, credential, [scope])
        except Problem as exc:
            raise _refused_auth(exc) from None
        who = principal.key_id or "admin"  # as daemon.payments.routes._caller
        return Caller(scope=who, actor=f"api:{who}")

    @staticmethod
    def _ok(outcome: Outcome) -> None:
        if outcome.status >= 400:
            raise _refused_problem(outcome.body)

    async def create(self, req: pb.CreatePaymentRequest, credential: str | None) -> pb.Payment:
        caller = await self.caller(credential, auth.PAYMENTS_WRITE)
        params = svc.CreateParams(
            amount=req.amount,
            currency=req.currency,
            # The HTTP API's default: a recurring payment is hosted.
            method=req.method or ("hosted_checkout" if req.kind == "recurring" else "intent"),
            kind=req.kind or "one_time",
            interval=_opt(req.interval),
            capture_method=req.capture_method or "automatic",
            description=_opt(req.description),
            customer=_opt(req.customer),
            metadata=dict(req.metadata),
            status_callback_url=_opt(req.status_callback_url),
            uisp_client_id=req.uisp_client_id or None,
        )
        outcome = await self.service.create(caller, params, _request_id(req.request_id))
        self._ok(outcome)
        body = outcome.body
        if req.wait_seconds > 0 and not outcome.replayed and outcome.resource_id:
            payment, _ = await self.service.wait(
                outcome.resource_id, svc.has_answer, float(req.wait_seconds)
            )
            body = payment.public()
        return payment_message(body)

    async def get(self, req: pb.GetPaymentRequest, credential: str | None) -> pb.Payment:
        await self.caller(credential, auth.PAYMENTS_READ)
        return payment_message((await self.service.get(req.id)).public())

    async def list(
        self, req: pb.ListPaymentsRequest, credential: str | None
    ) -> pb.ListPaymentsResponse:
        await self.caller(credential, auth.PAYMENTS_READ)
        limit = req.limit or 50
        if not 1 <= limit <= MAX_LIMIT:
            raise PaymentsError("invalid-request", f"limit must be 1-{MAX_LIMIT}", field="limit")
        page = await self.service.list_payments(
            status=_opt(req.status),
            customer=_opt(req.customer),
            created_gte=_time(req.created_from, "created_from"),
            created_lt=_time(req.created_to, "created_to"),
            cursor=_opt(req.cursor),
            limit=limit,
            parent=_opt(req.parent),
        )
        return pb.ListPaymentsResponse(
            payments=[payment_message(p.public()) for p in page.payments],
            next_cursor=page.next_cursor or "",
        )

    async def cancel(self, req: pb.CancelPaymentRequest, credential: str | None) -> pb.Payment:
        caller = await self.caller(credential, auth.PAYMENTS_WRITE)
        outcome = await self.service.cancel(caller, req.id, _request_id(req.request_id))
        self._ok(outcome)
        return payment_message(outcome.body)

    async def capture(self, req: pb.CapturePaymentRequest, credential: str | None) -> pb.Payment:
        caller = await self.caller(credential, auth.PAYMENTS_WRITE)
        outcome = await self.service.capture(
            caller, req.id, req.amount or None, _request_id(req.request_id)
        )
        self._ok(outcome)
        return payment_message(outcome.body)

    async def refund(self, req: pb.RefundPaymentRequest, credential: str | None) -> pb.Refund:
        caller = await self.caller(credential, auth.PAYMENTS_WRITE)
        outcome = await self.service.refund(
            caller, req.id, req.amount or None, _opt(req.reason), _request_id(req.request_id)
        )
        self._ok(outcome)
        return refund_message(outcome.body)

    async def get_refund(self, req: pb.GetRefundRequest, credential: str | None) -> pb.Refund:
        await self.caller(credential, auth.PAYMENTS_READ)
        return refund_message((await self.service.get_refund(req.id)).public())


class PaymentsServicer(pb_grpc.PaymentsServicer):
    """The asyncio side: metadata in, the trio call, the reply or the status out."""

    def __init__(self, deps: Deps) -> None:
        self._calls = _Calls(deps)

    async def _run(
        self,
        method: Callable[[Any, str | None], Awaitable[M]],
        request: Any,
        context: grpc.aio.ServicerContext,
    ) -> M:
        credential = authorization(context.invocation_metadata() or ())
        try:
            reply: M = await trio_asyncio.trio_as_aio(method)(request, credential)
            return reply
        except PaymentsError as exc:
            refused = _refused_problem(exc.body())
        except Refused as exc:
            refused = exc
        except DatabaseError as exc:
            # As HTTP's 503: the client may retry (with the same request_id).
            log.warning("gRPC %s: database unavailable: %s", method.__name__, exc)
            refused = Refused(
                grpc.StatusCode.UNAVAILABLE,
                "the database is unavailable; retry shortly",
                "about:blank",
            )
        except Exception:
            # grpcio would put the exception's text in the status; say nothing internal.
            log.exception("gRPC %s failed", method.__name__)
            refused = Refused(grpc.StatusCode.INTERNAL, "internal error", "about:blank")
        await context.abort(
            refused.code,
            refused.message,
            trailing_metadata=(("problem-type", refused.problem_type),),
        )
        raise AssertionError("context.abort returned")  # it raises

    async def Create(self, request: Any, context: Any) -> pb.Payment:
        return await self._run(self._calls.create, request, context)

    async def Get(self, request: Any, context: Any) -> pb.Payment:
        return await self._run(self._calls.get, request, context)

    async def List(self, request: Any, context: Any) -> pb.ListPaymentsResponse:
        return await self._run(self._calls.list, request, context)

    async def Cancel(self, request: Any, context: Any) -> pb.Payment:
        return await self._run(self._calls.cancel, request, context)

    async def Capture(self, request: Any, context: Any) -> pb.Payment:
        return await self._run(self._calls.capture, request, context)

    async def Refund(self, request: Any, context: Any) -> pb.Refund:
        return await self._run(self._calls.refund, request, context)

    async def GetRefund(self, request: Any, context: Any) -> pb.Refund:
        return await self._run(self._calls.get_refund, request, context)
