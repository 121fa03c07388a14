"""A fake LabsMobile: ``POST /json/send`` and ``GET /json/balance`` over real HTTP.

It checks HTTP Basic credentials (401), validates the body the way LabsMobile does
(result codes 10/11/20/21/23/24/27, 35 when credit runs out), keeps every accepted
message in ``messages`` and shows them at ``GET /_sink/messages`` for the demo. Tests
inject failures with ``fail_next`` (an HTTP status, a LabsMobile code, or a delay).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import logging
from dataclasses import dataclass
from typing import Any

import trio
from quart import Response, jsonify, request
from quart_trio import QuartTrio

from daemon.fakes.serving import serve_app

__all__ = ["SmsSink", "serve"]

log = logging.getLogger(__name__)

_MESSAGES = {
    "0": "Message has been successfully sent.",
    "10": "Missing XML data in request.",
    "11": "Badly formed XML in request.",
    "20": "Message element not present in request.",
    "21": "Message is empty.",
    "23": "There are no recipients.",
    "24": "Too many recipients.",
    "27": "This message contained one or more invalid character(s).",
    "30": "There was an error while sending the message.",
    "35": "The account has no enough credit for this sending.",
}
_MAX_RECIPIENTS = 10000


@dataclass
class _Failure:
    status: int | None
    code: str | None
    delay: float


class SmsSink:
    def __init__(
        self, username: str = "sink@example.com", token: str = "sink-token", credits: int = 1000
    ) -> None:
        self.username, self.token, self.credits = username, token, credits
        self.messages: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self._failures: list[_Failure] = []
        self._subids = itertools.count(1)
        self._arrived = trio.Event()
        self.app = self._build_app()

    def fail_next(
        self, n: int = 1, *, status: int | None = None, code: str | None = None, delay: float = 0.0
    ) -> None:
        """The next ``n`` send/balance calls fail: with an HTTP ``status``, a LabsMobile
        ``code`` (HTTP 200), or after ``delay`` seconds (for client timeouts). With none
        given, HTTP 503."""
        if status is None and code is None and not delay:
            status = 503
        self._failures += [_Failure(status, code, delay)] * n

    async def wait_messages(self, count: int, seconds: float = 30.0) -> list[dict[str, Any]]:
        """Wait until ``count`` messages were accepted; return them.

        Bounded, so that a regression that drops an SMS fails its test with this error
        instead of hanging the suite: ``TimeoutError`` after ``seconds``.
        """
        with trio.move_on_after(seconds):
            while len(self.messages) < count:
                await self._arrived.wait()
            return self.messages[:count]
        raise TimeoutError(
            f"SMS sink: {len(self.messages)} of {count} message(s) after {seconds:g} s "
            f"(requests seen: {self.requests})"
        )

    def _authorised(self) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return (user, password) == (self.username, self.token)

    def _validate(self, body: Any) -> tuple[str, list[str]]:
        """LabsMobile's result code for a send body, and the recipients' MSISDNs."""
        if not isinstance(body, dict):
            return "10", []
        if "message" not in body:
            return "20", []
        message = body["message"]
        if not isinstance(message, str):
            return "11", []
        if not message.strip():
            return "21", []
        if "\x00" in message:
            return "27", []
        recipients = body.get("recipient")
        if not isinstance(recipients, list) or not recipients:
            return "23", []
        if len(recipients) > _MAX_RECIPIENTS:
            return "24", []
        msisdns = [r.get("msisdn") if isinstance(r, dict) else None for r in recipients]
        if not all(isinstance(m, str) and m.isdigit() for m in msisdns):
            return "11", []
        return "0", [str(m) for m in msisdns]

    def _build_app(self) -> Any:
        app = QuartTrio(__name__)

        def result(code: str, **extra: Any) -> Response:
            return jsonify({"code": code, "message": _MESSAGES.get(code, "Error."), **extra})

        @app.before_request
        async def gate() -> Any:
            if request.path.startswith("/_sink/"):
                return None
            self.requests.append((request.method, request.path))
            if not self._authorised():
                return Response("Unauthorized", 401, {"WWW-Authenticate": 'Basic realm="api"'})
            if self._failures:
                failure = self._failures.pop(0)
                await trio.sleep(failure.delay)
                if failure.status is not None:
                    return Response("Injected failure", failure.status)
                if failure.code is not None:
                    return result(failure.code)
            return None

        @app.post("/json/send")
        async def send() -> Any:
            body = await request.get_json(force=True, silent=True)
            code, msisdns = self._validate(body)
            if code != "0":
                return result(code)
            test = bool(body.get("test"))
            if not test and self.credits < len(msisdns):
                return result("35")
            if not test:
                self.credits -= len(msisdns)
            subid = str(body.get("subid") or f"sink-{next(self._subids)}")
            for msisdn in msisdns:
                self.messages.append(
                    {"msisdn": msisdn, "message": body["message"], "subid": subid,
                     "tpoa": body.get("tpoa"), "test": test}
                )  # fmt: skip
            self._arrived.set()
            self._arrived = trio.Event()
            return result("0", subid=subid)

        @app.get("/json/balance")
        async def balance() -> Any:
            # LabsMobile's balance answer has a numeric code, unlike send's string one.
            return jsonify({"code": 0, "credits": f"{self.credits:.2f}"})

        @app.get("/_sink/messages")
        async def messages() -> Any:
            return jsonify(self.messages)

        return app


async def serve(
    sink: SmsSink,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``sink`` until cancelled; report its base URL (``http://host:port``)."""
    await serve_app(sink.app, host, port, log, task_status=task_status)
