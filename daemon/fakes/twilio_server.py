"""A fake Twilio Messaging API over real HTTP: create and list Message resources.

``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` takes Twilio's form body (``To``,
``From`` or ``MessagingServiceSid``, ``Body``) with HTTP Basic ``AccountSid:AuthToken``,
validates it the way Twilio does (error codes 20003, 20404, 21602, 21603, 21604, 21211,
21617) and answers 201 with a Message resource (``SM…`` sid, ``queued``, or ``accepted``
through a Messaging Service). ``GET`` on the same path lists them, most recent first, with
Twilio's filters (``To``, ``From``, ``DateSent``/``DateSent<``/``DateSent>``, whole days,
so a message not sent yet is not found by a date filter) and paging (``PageSize``,
``Page``, ``next_page_uri``). ``GET .../Messages/{Sid}.json`` fetches one.

Like Twilio, a message is ``queued`` first and ``sent`` (``date_sent`` set) a moment later
(``sent_after`` seconds); and the list may lag behind the creation (``list_lag``).

Tests inject failures with ``fail_next`` (an HTTP status with a Twilio error code, or a
delay; ``after_accept`` keeps the message and then fails or delays the answer, the case
where Twilio accepted an SMS the caller never heard about) and can hold every answer
after acceptance with ``hold``. ``GET /_fake/messages`` shows the accepted messages.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.utils
import logging
import operator
import re
import secrets
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode

import trio
from quart import Response, jsonify, request
from quart_trio import QuartTrio

from daemon.fakes.serving import serve_app

__all__ = ["FakeTwilio", "serve"]

log = logging.getLogger(__name__)

API = "/2010-04-01"
_E164 = re.compile(r"\+[1-9]\d{7,14}")
_MAX_BODY = 1600
_ERRORS = {
    20003: "Authenticate",
    20404: "The requested resource {path} was not found",
    20429: "Too Many Requests",
    21211: "Invalid 'To' Phone Number: {to}",
    21602: "Message body is required.",
    21603: "A 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21610: "Attempt to send to unsubscribed recipient",
    21617: "The concatenated message body exceeds the 1600 character limit.",
}


@dataclass
class _Failure:
    status: int | None
    code: int | None
    delay: float
    after_accept: bool
    on: Literal["send", "list", "any"]


def _rfc2822(when: dt.datetime) -> str:
    return email.utils.format_datetime(when.astimezone(dt.UTC).replace(microsecond=0))


class FakeTwilio:
    def __init__(
        self,
        account_sid: str = "AC" + "0" * 31 + "1",
        auth_token: str = "twilio-token",
        *,
        sent_after: float = 0.5,
        list_lag: float = 0.0,
    ) -> None:
        self.account_sid, self.auth_token = account_sid, auth_token
        self.sent_after, self.list_lag = sent_after, list_lag
        # Accepted messages, oldest first, with trio times for the status and list lag.
        self.messages: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self.hold: trio.Event | None = None  # when set to an unset Event: answers wait on it
        self._created: dict[str, float] = {}
        self._failures: list[_Failure] = []
        self._arrived = trio.Event()
        self.app = self._build_app()

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int | None = None,
        code: int | None = None,
        delay: float = 0.0,
        after_accept: bool = False,
        on: Literal["send", "list", "any"] = "send",
    ) -> None:
        """The next ``n`` matching requests fail with ``status`` (and Twilio error
        ``code``), or answer after ``delay`` seconds. ``after_accept``: a send is accepted
        (kept) first. With neither status nor delay: HTTP 503, code 20503."""
        if status is None and not delay:
            status, code = 503, code or 20503
        self._failures += [_Failure(status, code, delay, after_accept, on)] * n

    async def wait_messages(self, count: int, seconds: float = 30.0) -> list[dict[str, Any]]:
        """Wait until ``count`` messages were accepted; ``TimeoutError`` after ``seconds``."""
        with trio.move_on_after(seconds):
            while len(self.messages) < count:
                await self._arrived.wait()
            return self.messages[:count]
        raise TimeoutError(
            f"fake Twilio: {len(self.messages)} of {count} message(s) after {seconds:g} s "
            f"(requests seen: {self.requests})"
        )

    @property
    def messages_path(self) -> str:
        return f"{API}/Accounts/{self.account_sid}/Messages.json"

    # -- the resource, as Twilio shows it --------------------------------------------

    def _resource(self, m: dict[str, Any]) -> dict[str, Any]:
        out = dict(m)
        age = trio.current_time() - self._created[m["sid"]]
        if out["status"] in ("queued", "accepted") and age >= self.sent_after:
            out["status"] = "sent"
            out["date_sent"] = out["date_updated"] = _rfc2822(
                m["_created_at"] + dt.timedelta(seconds=self.sent_after)
            )
        out.pop("_created_at")
        return out

    def _listed(self, m: dict[str, Any]) -> bool:
        return trio.current_time() - self._created[m["sid"]] >= self.list_lag

    def _create(self, form: Any) -> tuple[dict[str, Any] | None, int, int | None]:
        """The new message, or None with the HTTP status and Twilio error code."""
        to = form.get("To", "")
        sender = form.get("From", "")
        service = form.get("MessagingServiceSid", "")
        body = form.get("Body", "")
        if not to:
            return None, 400, 21604
        if not (sender or service):
            return None, 400, 21603
        if not body:
            return None, 400, 21602
        if len(body) > _MAX_BODY:
            return None, 400, 21617
        if not _E164.fullmatch(to):
            return None, 400, 21211
        now = dt.datetime.now(dt.UTC)
        sid = "SM" + secrets.token_hex(16)
        stamp = _rfc2822(now)
        message = {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": body,
            "date_created": stamp,
            "date_sent": None,
            "date_updated": stamp,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": sender or None,
            "messaging_service_sid": service or None,
            "num_media": "0",
            "num_segments": str(1 + (len(body) - 1) // 153 if len(body) > 160 else 1),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "accepted" if service and not sender else "queued",
            "subresource_uris": {
                "media": f"{API}/Accounts/{self.account_sid}/Messages/{sid}/Media.json"
            },
            "to": to,
            "uri": f"{API}/Accounts/{self.account_sid}/Messages/{sid}.json",
            "_created_at": now,
        }
        self.messages.append(message)
        self._created[sid] = trio.current_time()
        self._arrived.set()
        self._arrived = trio.Event()
        return message, 201, None

    def _list(self, args: Any) -> dict[str, Any]:
        rows = [self._resource(m) for m in reversed(self.messages) if self._listed(m)]
        if args.get("To"):
            rows = [r for r in rows if r["to"] == args["To"]]
        if args.get("From"):
            rows = [r for r in rows if r["from"] == args["From"]]
        # Whole days, on date_sent: a message not sent yet matches no date filter.
        for key, keep in (("DateSent", operator.eq), ("DateSent<", operator.le),
                          ("DateSent>", operator.ge)):  # fmt: skip
            value = args.get(key)
            if value:
                day = dt.date.fromisoformat(value[:10])
                rows = [
                    r for r in rows
                    if r["date_sent"] is not None
                    and keep(email.utils.parsedate_to_datetime(r["date_sent"]).date(), day)
                ]  # fmt: skip
        size = min(max(int(args.get("PageSize", 50)), 1), 1000)
        page = int(args.get("Page", 0))
        chunk = rows[page * size : (page + 1) * size]
        query = {k: v for k, v in args.items() if k not in ("Page", "PageToken", "PageSize")}

        def uri(p: int) -> str:
            token = {"PageToken": f"PA{p * size}"} if p else {}
            params = {"PageSize": size, "Page": p, **token, **query}
            return f"{self.messages_path}?{urlencode(params)}"

        more = (page + 1) * size < len(rows)
        return {
            "end": page * size + max(len(chunk) - 1, 0),
            "first_page_uri": uri(0),
            "messages": chunk,
            "next_page_uri": uri(page + 1) if more else None,
            "page": page,
            "page_size": size,
            "previous_page_uri": uri(page - 1) if page else None,
            "start": page * size,
            "uri": uri(page),
        }

    # -- HTTP ----------------------------------------------------------------------

    def _authorised(self) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return (user, password) == (self.account_sid, self.auth_token)

    def _take_failure(self, kind: Literal["send", "list"]) -> _Failure | None:
        for i, f in enumerate(self._failures):
            if f.on in (kind, "any"):
                return self._failures.pop(i)
        return None

    def _build_app(self) -> Any:
        app = QuartTrio(__name__)

        def error(status: int, code: int, **fmt: str) -> Response:
            message = _ERRORS.get(code, "Error").format(**({"path": request.path, "to": ""} | fmt))
            resp = jsonify({
                "code": code, "message": message, "status": status,
                "more_info": f"https://www.twilio.com/docs/errors/{code}",
            })  # fmt: skip
            resp.status_code = status
            if status == 401:
                resp.headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
            return resp

        @app.before_request
        async def gate() -> Any:
            if request.path.startswith("/_fake/"):
                return None
            self.requests.append((request.method, request.full_path.rstrip("?")))
            if not self._authorised():
                return error(401, 20003)
            return None

        async def answer_after(failure: _Failure | None) -> Response | None:
            if failure is not None:
                await trio.sleep(failure.delay)
                if failure.status is not None:
                    return error(failure.status, failure.code or 20500)
            return None

        @app.route(f"{API}/Accounts/<sid>/Messages.json", methods=["GET", "POST"])
        async def messages(sid: str) -> Any:
            if sid != self.account_sid:
                return error(404, 20404)
            if request.method == "GET":
                failure = self._take_failure("list")
                if (failed := await answer_after(failure)) is not None:
                    return failed
                try:
                    return jsonify(self._list(request.args))
                except ValueError:
                    return error(400, 20001)
            failure = self._take_failure("send")
            before = failure if failure is not None and not failure.after_accept else None
            if (failed := await answer_after(before)) is not None:
                return failed
            form = await request.form
            message, status, code = self._create(form)
            if message is None:
                assert code is not None
                return error(status, code, to=form.get("To", ""))
            after = failure if failure is not None and failure.after_accept else None
            if (failed := await answer_after(after)) is not None:
                return failed
            if self.hold is not None:
                await self.hold.wait()
            resp = jsonify(self._resource(message))
            resp.status_code = 201
            return resp

        @app.get(f"{API}/Accounts/<sid>/Messages/<msid>.json")
        async def one(sid: str, msid: str) -> Any:
            found = [m for m in self.messages if m["sid"] == msid]
            if sid != self.account_sid or not found:
                return error(404, 20404)
            return jsonify(self._resource(found[0]))

        @app.get("/_fake/messages")
        async def shown() -> Any:
            return jsonify([self._resource(m) for m in self.messages])

        return app


async def serve(
    fake: FakeTwilio,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``fake`` until cancelled; report its base URL (``http://host:port``)."""
    await serve_app(fake.app, host, port, log, task_status=task_status)
